"""DPO never succeeds silently (issue 12): online DPO stops past --max-failure-rate as RL does, a run that forms
no pair at all stops saying why, --pairs auto says which source it chose and why, and data in a format DPO
cannot use as pairs (unpaired KTO rows) is refused by name before any model loads."""

import json
import logging
import time
from types import SimpleNamespace

import pytest

from rewardhub import PreferencePair, Reward, RewardProvider, Status
from rewardhub.cli.main import main
from rewardhub.config import DPOConfig
from rewardhub.errors import ConfigError, DataError, RewardProviderError, TrainingError
from rewardhub.recipes.dpo import (
    PAIRLESS_STEPS,
    OnlineTally,
    RoundCounts,
    check_pairs_formed,
    rank_and_pair,
    resolve_pair_source,
    train_dpo,
)
from rewardhub.rewards import check_failure_rate, too_many_failures


def write_jsonl(path, rows):
    path.write_text("\n".join(json.dumps(dict(r)) for r in rows) + "\n")
    return str(path)


def cfg(tiny_model_path, out, data, **kw):
    base = dict(model=str(tiny_model_path), data=data, out=str(out), max_steps=3, batch_size=4, lr=1e-3,
                warmup_ratio=0.0, log_every=1, eval_every=0, save_every=0, threads=1, resume=True,
                pairs="online", num_generations=2, max_new_tokens=4)
    base.update(kw)
    return DPOConfig(**base)


@pytest.fixture
def prompts(tmp_path):
    return write_jsonl(tmp_path / "prompts.jsonl", ({"prompt": f"{i}+1="} for i in range(16)))


@pytest.fixture
def kto(tmp_path):
    rows = [{"prompt": f"{i}+1=", "completion": str(i + 1 + i % 2), "label": i % 2 == 0} for i in range(48)]
    return write_jsonl(tmp_path / "kto.jsonl", rows)


class Length(RewardProvider):
    """A graded reward (the completion's length) that can be switched to fail on every sample."""

    def __init__(self):
        super().__init__()
        self.down = False

    def score(self, samples):
        if self.down:
            return [Reward.failed(Status.ERROR, "judge server down") for _ in samples]
        return [Reward(float(len(s.completion))) for s in samples]


class Constant(RewardProvider):
    """Every completion gets the same reward: every group ties."""

    def score(self, samples):
        return [Reward(1.0) for _ in samples]


class Stored(Constant):
    def preference_pairs(self):
        return [PreferencePair("1+1=", "2", "3")]


# ------------------------------------------------------------------------------------------------------------
# the failure-rate threshold
# ------------------------------------------------------------------------------------------------------------

def test_failure_rate_threshold_by_hand():
    # strictly past the rate: 2/8 = 0.25 is not > 0.25; 3/8 = 0.375 is
    assert not too_many_failures(2, 8, 0.25)
    assert too_many_failures(3, 8, 0.25)
    assert not too_many_failures(0, 8, 0.0) and too_many_failures(1, 8, 0.0)  # 0: any failure stops
    assert not too_many_failures(8, 8, 1.0)  # 1: never stops
    assert not too_many_failures(4, 8, 0.5) and too_many_failures(5, 8, 0.5)  # the default
    check_failure_rate(Constant(), 2, 8, 0.25, 4, "error: boom")  # goes on
    with pytest.raises(RewardProviderError) as err:
        check_failure_rate(Constant(), 3, 8, 0.25, 4, "error: boom")
    assert str(err.value).startswith("reward provider 'Constant' failed on 3 of 8 samples at step 4 "
                                     "(38% > max_failure_rate 0.25); first failure: error: boom.")
    assert "--max-failure-rate" in str(err.value)


def test_online_round_counts_failed_samples_and_comparisons():
    class FailsOn(RewardProvider):
        def score(self, samples):
            return [Reward.failed("timeout", "slow") if "x" in s.completion else Reward(float(len(s.completion)))
                    for s in samples]

    # prompt a: 2 of 4 samples fail, 2 usable and different -> a pair; prompt b: 3 fail -> starved
    completions = ["x", "1", "22", "x", "x", "x", "x", "333"]
    ranked = rank_and_pair(FailsOn(), ["a", "b"], [{}, {}], completions, 4, "score")
    assert ranked.counts == RoundCounts(pairs=1, prompts=2, tied=0, starved=1, failed=5, judged=8)
    assert ranked.first_failure == "timeout: slow"
    assert too_many_failures(ranked.counts.failed, ranked.counts.judged, 0.5)  # 5/8 > 0.5
    # compare: prompt b has one usable comparison of 6 (x vs x fails... all pairs with an x fail)
    ranked = rank_and_pair(FailsOn(), ["a", "b"], [{}, {}], completions, 4, "compare")
    assert ranked.counts.judged == 12 and ranked.counts.failed == 5 + 6  # a: 5 of 6 involve an x; b: all 6
    assert ranked.counts.starved == 1 and "could not score" in ranked.first_failure


def test_online_dpo_stops_past_max_failure_rate_and_keeps_finished_steps(tiny_model_path, tmp_path, prompts, caplog):
    provider = Length()

    def break_after(step, metrics):
        if step == 2:
            provider.down = True

    caplog.set_level(logging.INFO, logger="rewardhub.recipes.dpo")
    with pytest.raises(RewardProviderError) as err:
        train_dpo(cfg(tiny_model_path, tmp_path / "out", prompts, max_steps=5), provider=provider,
                  callbacks=[break_after])
    text = str(err.value)
    assert "failed on 8 of 8 samples at step 3" in text and "max_failure_rate 0.5" in text
    assert "first failure: error: judge server down" in text and "--max-failure-rate" in text
    assert (tmp_path / "out" / "checkpoints" / "step-2" / "trainer_state.json").exists()
    assert not (tmp_path / "out" / "model").exists()  # no model saved as if the run had finished
    assert "pairs: online, ranked by Length (--pairs online)" in caplog.text  # the API logs its choice


def test_cli_exits_non_zero_with_the_message_when_every_reward_fails(tiny_model_path, tmp_path, prompts, capsys):
    plugin = tmp_path / "broken.py"
    plugin.write_text("from rewardhub import Reward\n\n"
                      "def broken(completion, row):\n"
                      "    return Reward.failed('error', 'no answer column')\n")
    rc = main(["train", "--algo", "dpo", "--model", str(tiny_model_path), "--data", prompts, "--pairs", "auto",
               "--reward", f"{plugin}:broken", "--out", str(tmp_path / "out"), "--max-steps", "3",
               "--batch-size", "4", "--num-generations", "2", "--max-new-tokens", "4", "--threads", "1",
               "--log-every", "1"])
    out, err = capsys.readouterr()
    assert rc == 2
    assert "pairs: online, ranked by" in out and "(--data has prompts but no chosen/rejected)" in out
    assert "rewardhub train: error: reward provider" in err
    assert "failed on 8 of 8 samples at step 1" in err and "no answer column" in err and "--max-failure-rate" in err
    assert not (tmp_path / "out" / "model").exists()


# ------------------------------------------------------------------------------------------------------------
# a run that forms no pair
# ------------------------------------------------------------------------------------------------------------

def test_a_run_whose_samples_all_tie_stops_with_the_reason(tiny_model_path, tmp_path, prompts):
    with pytest.raises(TrainingError) as err:
        train_dpo(cfg(tiny_model_path, tmp_path / "out", prompts, max_steps=2), provider=Constant())
    text = str(err.value)
    assert "online DPO formed no preference pair in steps 1-2: of 8 prompts (2 completions each), 8 tied" in text
    assert "--num-generations, now 2" in text and "--temperature, now 1" in text
    assert not (tmp_path / "out" / "model").exists()


def test_rewards_that_fail_under_the_rate_but_leave_no_pair_stop_too(tiny_model_path, tmp_path, prompts):
    provider = Length()
    provider.down = True
    with pytest.raises(RewardProviderError, match=r"had fewer than two usable rewards \(the provider failed on 16 "
                                                  r"of 16 samples; first failure: error: judge server down\)"):
        train_dpo(cfg(tiny_model_path, tmp_path / "out", prompts, max_steps=2, max_failure_rate=1.0),
                  provider=provider)


def test_the_pair_count_survives_a_resume(tiny_model_path, tmp_path, prompts):
    """Steps 1-2 tie, the run is interrupted; the resumed step 3 still knows no pair was ever formed."""
    def interrupt(step, metrics):
        if step == 2:
            raise KeyboardInterrupt

    c = cfg(tiny_model_path, tmp_path / "out", prompts, max_steps=3)
    with pytest.raises(KeyboardInterrupt):
        train_dpo(c, provider=Constant(), callbacks=[interrupt])
    with pytest.raises(TrainingError, match="steps 1-3: of 12 prompts"):
        train_dpo(c, provider=Constant())


def test_when_a_pairless_run_stops():
    def ctx(steps, pairs, max_steps=100):
        tally = OnlineTally()
        tally.steps, tally.counts = steps, RoundCounts(pairs=pairs, prompts=4 * steps, tied=4 * steps - pairs,
                                                       judged=16 * steps)
        return SimpleNamespace(tally=tally, cfg=DPOConfig(max_steps=max_steps), provider=Constant())

    check_pairs_formed(ctx(PAIRLESS_STEPS - 1, 0), PAIRLESS_STEPS - 1)  # one empty step (or a few) is fine
    check_pairs_formed(ctx(500, 3), 500)  # pairs early, ties later: a converged policy, fine
    with pytest.raises(TrainingError):
        check_pairs_formed(ctx(PAIRLESS_STEPS, 0), PAIRLESS_STEPS)
    with pytest.raises(TrainingError):
        check_pairs_formed(ctx(2, 0, max_steps=2), 2)  # a shorter run: all of its steps


# ------------------------------------------------------------------------------------------------------------
# --pairs auto says what it chose; formats DPO cannot use are refused by name
# ------------------------------------------------------------------------------------------------------------

def test_auto_says_which_source_it_chose_and_why(tiny_model_path, tmp_path, prompts):
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": "1+1=", "chosen": "2", "rejected": "3"}])
    sft = write_jsonl(tmp_path / "sft.jsonl", [{"prompt": "1+1=", "completion": "2"}])
    auto = dict(pairs="auto")
    assert resolve_pair_source(cfg(tiny_model_path, tmp_path, pairs, **auto), None).line == \
        "pairs: dataset (--data has prompt/chosen/rejected columns)"
    assert resolve_pair_source(cfg(tiny_model_path, tmp_path, pairs, pairs="auto", reward="human"), Stored()).line == \
        "pairs: provider (--reward=human stores preferences)"
    assert resolve_pair_source(cfg(tiny_model_path, tmp_path, prompts, **auto), None).line == \
        "pairs: online, ranked by exact-match (--data has prompts but no chosen/rejected)"
    chosen = resolve_pair_source(cfg(tiny_model_path, tmp_path, sft, pairs="auto", reward="length"), None)
    assert chosen.source == "online" and chosen.line == (
        "pairs: online, ranked by length (--data has prompt/completion (SFT) columns but no chosen/rejected; "
        "the completion column is ignored)")
    ranked = resolve_pair_source(cfg(tiny_model_path, tmp_path, prompts, pairs="auto", rank_with="compare"),
                                 Constant())
    assert ranked.line == "pairs: online, ranked by pairwise compare() of Constant (--data has prompts but no " \
                          "chosen/rejected)"


def test_unpaired_kto_data_is_refused_before_the_model_loads(tmp_path, kto):
    for pairs in ("auto", "dataset"):
        t0 = time.perf_counter()
        with pytest.raises(DataError) as err:  # the model does not exist: a DataError means it never loaded
            train_dpo(cfg("/nonexistent/model", tmp_path / pairs, kto, pairs=pairs))
        assert time.perf_counter() - t0 < 10
        assert str(err.value) == (
            f"--data {kto} is in the unpaired (KTO) format (prompt, completion, label): DPO needs pairs (prompt, "
            "chosen, rejected). Convert to pairs, or use --pairs online to sample and rank completions for these "
            "prompts (the completion/label columns are then ignored)")
    online = resolve_pair_source(cfg("/nonexistent/model", tmp_path, kto, pairs="online", reward="length"), None)
    assert online.source == "online" and online.line == (
        "pairs: online, ranked by length (--pairs online; the completion/label columns are ignored)")


def test_a_non_boolean_label_column_is_not_kto(tmp_path):
    graded = write_jsonl(tmp_path / "graded.jsonl", [{"prompt": "1+1=", "completion": "2", "label": "arith"}])
    chosen = resolve_pair_source(cfg("/nonexistent/model", tmp_path, graded, pairs="auto", reward="length"), None)
    assert chosen.source == "online"


def test_cli_refuses_kto_data_and_sft_data_given_as_pairs(tmp_path, kto, capsys):
    rc = main(["train", "--algo", "dpo", "--data", kto, "--out", str(tmp_path / "out"), "--reward", "length"])
    assert rc == 2
    assert "rewardhub train: error: --data" in capsys.readouterr().err
    sft = write_jsonl(tmp_path / "sft.jsonl", [{"prompt": "1+1=", "completion": "2"}])
    with pytest.raises(DataError, match=r"prompt-completion \(SFT\) format \(prompt, completion\): DPO needs pairs.*"
                                        r"--pairs online.*the completion column is then ignored.*rewardhub sft"):
        resolve_pair_source(cfg("/nonexistent/model", tmp_path, sft, pairs="dataset"), None)
    chat = write_jsonl(tmp_path / "chat.jsonl", [{"messages": [{"role": "user", "content": "hi"}]}])
    with pytest.raises(DataError, match=r"conversational \(messages\) format"):
        resolve_pair_source(cfg("/nonexistent/model", tmp_path, chat, pairs="auto"), None)


def test_empty_data_and_a_bad_rate_are_refused(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(DataError):
        resolve_pair_source(cfg("/nonexistent/model", tmp_path, str(empty), pairs="auto"), None)
    with pytest.raises(ConfigError, match=r"max_failure_rate must be in \[0, 1\]"):
        DPOConfig(max_failure_rate=1.5).validate()


@pytest.mark.slow
def test_two_processes_stop_at_the_same_step_with_the_same_reason(tiny_model_path, tmp_path, prompts):
    """The counts are summed over processes: both stop (no hang in a collective), exit 2, and say why."""
    import os
    import subprocess
    import sys

    rewards = tmp_path / "rewards.py"
    rewards.write_text("from rewardhub import Reward\n\n"
                       "def constant(completion, row):\n    return 1.0\n\n"
                       "def broken(completion, row):\n    return Reward.failed('error', 'server down')\n")
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    for name, needle in (("constant", "formed no preference pair in steps 1-2: of 8 prompts"),
                         ("broken", "failed on 8 of 8 samples at step 1")):
        result = subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
             str(29500 + os.getpid() % 1000), "-m", "rewardhub.cli.main", "train", "--algo", "dpo", "--model",
             str(tiny_model_path), "--data", prompts, "--reward", f"{rewards}:{name}", "--max-steps", "2",
             "--batch-size", "2", "--num-generations", "2", "--max-new-tokens", "4", "--out", str(tmp_path / name)],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode != 0
        assert result.stderr.count(needle) == 2, result.stderr[-3000:]  # both processes, the same reason


def test_an_empty_prompt_is_named_before_the_model_loads(tmp_path):
    holes = write_jsonl(tmp_path / "holes.jsonl", [{"prompt": "1+1="}, {"prompt": ""}])
    for pairs in ("auto", "online"):
        with pytest.raises(DataError, match="row 1 lacks"):
            resolve_pair_source(cfg("/nonexistent/model", tmp_path, holes, pairs=pairs), None)
