"""PPO / GRPO / RLOO end to end on a tiny model: reward rises, resume is exact, reward failures are masked."""

import json
import re

import pytest
import torch
from conftest import load_weights, records

from rewardhub.cli.main import main
from rewardhub.config import RLConfig
from rewardhub.errors import ConfigError, RewardProviderError
from rewardhub.generation import TorchBackend
from rewardhub.recipes.rl import (
    LossSettings,
    RolloutBatch,
    group_advantages,
    ppo_advantages,
    rl_loss,
    rollout_forward,
    rows_with_gradient,
    sample_rollout,
    setup,
    train_rl,
)
from rewardhub.rewards import Reward, RewardProvider, Status


class Sevens(RewardProvider):
    """1.0 per "7" in the completion: dense enough for a random tiny model to find, easy to climb."""

    def score(self, samples):
        return [Reward(float(s.completion.count("7"))) for s in samples]


class FlakySevens(Sevens):
    """Times out on every 4th sample; fails on *every* sample from training call ``fail_all_from`` on."""

    def __init__(self, fail_all_from=None):
        super().__init__()
        self.calls, self.fail_all_from = 0, fail_all_from

    def score(self, samples):
        self.calls += 1
        out = super().score(samples)
        if self.fail_all_from is not None and self.calls >= self.fail_all_from:
            return [Reward.failed(Status.ERROR, "judge server down") for _ in samples]
        return [Reward.failed(Status.TIMEOUT, "slow") if i % 4 == 3 else r for i, r in enumerate(out)]


class HasSeven(RewardProvider):
    """1.0 when the completion contains a "7": sparse, so some groups score all alike (zero advantage).

    Every third call scores everything 0, so whole steps have no row that can move the weights.
    """

    def __init__(self):
        super().__init__()
        self.calls = 0

    def score(self, samples):
        self.calls += 1
        return [Reward(float("7" in s.completion and self.calls % 3 != 0)) for s in samples]


def cfg(tiny_model_path, out, **kw):
    base = dict(model=str(tiny_model_path), algo="grpo", data="arithmetic", data_args={"size": 128}, out=str(out),
                max_steps=30, batch_size=4, num_generations=4, max_new_tokens=6, lr=1e-2, warmup_ratio=0.0,
                lr_scheduler="constant", log_every=1, eval_every=0, save_every=0, eval_size=8, threads=1,
                completions_every=0, seed=0)
    base.update(kw)
    return RLConfig(**base)




def prompt_file(tmp_path, n=16):
    path = tmp_path / "prompts.jsonl"
    path.write_text("\n".join(json.dumps({"prompt": f"{i}+{i}="}) for i in range(n)))
    return str(path)


@pytest.mark.parametrize("algo", ["ppo", "grpo", "rloo"])
def test_reward_rises_and_parameters_change(algo, tiny_model_path, tmp_path):
    from transformers import AutoModelForCausalLM

    extra = {"batch_size": 16, "num_generations": 1} if algo == "ppo" else {}
    final = train_rl(cfg(tiny_model_path, tmp_path, algo=algo, **extra), provider=Sevens())
    rewards = [r["reward/mean"] for r in records(tmp_path)]
    assert len(rewards) == 30
    first, last = sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5
    assert last > first + 1.0, rewards
    assert final["after/reward_mean"] > final["before/reward_mean"] + 1.0
    before = AutoModelForCausalLM.from_pretrained(tiny_model_path).state_dict()
    after = load_weights(tmp_path)
    assert sum(not torch.equal(after[k], before[k]) for k in after) == len(after)
    assert (tmp_path / "model" / "value_head.pt").exists() == (algo == "ppo")
    row = set().union(*records(tmp_path))  # a step whose rows all had zero advantage runs no forward pass
    for key in ("kl/mean_per_seq", "kl/coef", "policy/entropy", "policy/loss", "policy/clipfrac", "policy/approx_kl",
                "completions/mean_length", "completions/eos_rate", "time/tokens_per_s", "time/generation",
                "time/scoring", "time/update", "reward/std", "reward/frac_ok"):
        assert key in row, key
    if algo == "ppo":
        assert {"value/loss", "value/clipfrac", "value/explained_variance"} <= set(row)


def test_resume_after_interrupt_gives_the_same_weights(tiny_model_path, tmp_path):
    # PPO with a value head, several epochs of minibatches and an adaptive KL: every piece of state matters.
    kw = dict(algo="ppo", max_steps=7, batch_size=4, num_generations=2, ppo_epochs=2, minibatch_size=4,
              adaptive_kl=True, kl_target=0.01, kl_horizon=100, save_every=3, lr_scheduler="cosine")
    train_rl(cfg(tiny_model_path, tmp_path / "straight", **kw), provider=Sevens())

    def interrupt(step, metrics):
        if step == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_rl(cfg(tiny_model_path, tmp_path / "resumed", **kw), callbacks=[interrupt], provider=Sevens())
    assert (tmp_path / "resumed" / "checkpoints" / "step-5" / "trainer_state.json").exists()
    train_rl(cfg(tiny_model_path, tmp_path / "resumed", **kw), provider=Sevens())
    a, b = load_weights(tmp_path / "straight"), load_weights(tmp_path / "resumed")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6)
    va, vb = (torch.load(tmp_path / d / "model" / "value_head.pt") for d in ("straight", "resumed"))
    for key in va:
        torch.testing.assert_close(va[key], vb[key], rtol=0, atol=1e-6)
    coef = [r["kl/coef"] for r in records(tmp_path / "straight")]
    assert coef[-1] != coef[0] and coef[-1] == pytest.approx(records(tmp_path / "resumed")[-1]["kl/coef"])


def test_value_head_starts_at_zero_and_old_logprobs_match_generation(tiny_model_path, tmp_path):
    c = cfg(tiny_model_path, tmp_path, algo="ppo", temperature=0.7, num_generations=2, data_args={"size": 64})
    run = setup(c, Sevens(), TorchBackend())
    _, prompts, rollout = sample_rollout(run, 1)
    assert len({len(p) for p in prompts}) > 1  # prompts of different lengths: left padding is exercised
    old, values, ref = rollout_forward(run, rollout)
    m = rollout.completion_mask.bool()
    torch.testing.assert_close(old[m], rollout.logprobs[m], rtol=0, atol=1e-5)
    assert torch.equal(values, torch.zeros_like(values))
    torch.testing.assert_close(ref[m], old[m], rtol=0, atol=1e-5)  # the reference is the same checkpoint


def test_lora_reference_is_the_adapter_free_base_and_separate_critic_saves(tiny_model_path, tmp_path):
    c = cfg(tiny_model_path, tmp_path, algo="ppo", lora_r=4, critic="separate", max_steps=2, num_generations=2)
    run = setup(c, Sevens(), TorchBackend())
    assert run.ref == "adapter" and run.net.critic is not None
    _, _, rollout = sample_rollout(run, 1)
    old, values, ref = rollout_forward(run, rollout)
    m = rollout.completion_mask.bool()
    torch.testing.assert_close(ref[m], old[m], rtol=0, atol=1e-6)  # LoRA B starts at 0: policy == base
    assert torch.equal(values, torch.zeros_like(values))
    train_rl(c, provider=Sevens())
    assert (tmp_path / "model" / "value_head.pt").exists() and (tmp_path / "critic" / "config.json").exists()


def _batch(valid, advantages=None, values=True):
    torch.manual_seed(0)
    n, t = len(valid), 5
    mask = torch.ones(n, t, dtype=torch.long)
    mask[0, 3:] = 0  # an early EOS: tokens after it are padding
    ids = torch.randint(0, 10, (n, 2 + t))
    return RolloutBatch(ids, torch.ones_like(ids), torch.arange(2 + t).expand(n, -1), 2, mask,
                        torch.tensor(valid), torch.randn(n, t) * mask, torch.randn(n, t) * mask,
                        torch.randn(n, t) * mask if values else None, advantages)


def test_failed_samples_get_zero_advantage_and_zero_gradient():
    valid = [True, False, True, True, True, True, False, True]
    scores = torch.tensor([1.0, 5.0, 0.0, 2.0, 3.0, 1.0, 9.0, 0.0])
    for algo in ("grpo", "rloo"):
        b = _batch(valid, values=False)
        kl = torch.rand(8, 5) * b.mask
        b.advantages, _ = group_advantages(algo, b, scores, kl, 0.1, group_size=4)
        assert b.advantages[1] == 0 and b.advantages[6] == 0
        # the failed sample's (large) score does not shift its group's baseline
        b2 = _batch(valid, values=False)
        b2.advantages, _ = group_advantages(algo, b2, scores.clone().index_fill_(0, torch.tensor([1, 6]), -50.0),
                                            kl, 0.1, group_size=4)
        torch.testing.assert_close(b.advantages, b2.advantages)
        logp = b.old_logprobs.clone().requires_grad_(True)
        loss, _ = rl_loss(logp + 0.1, None, b, LossSettings(kl_loss_coef=0.1))
        loss.backward()
        assert torch.equal(logp.grad[1], torch.zeros(5)) and torch.equal(logp.grad[6], torch.zeros(5))
        assert logp.grad[0, 3:].abs().sum() == 0  # after EOS
        assert logp.grad[0, :3].abs().sum() > 0
    b = _batch(valid)
    b.advantages, b.returns, _ = ppo_advantages(b, scores, torch.rand(8, 5) * b.mask, 0.05, 1.0, 0.95)
    assert torch.equal(b.advantages[1], torch.zeros(5)) and torch.equal(b.returns[6], torch.zeros(5))
    logp = b.old_logprobs.clone().requires_grad_(True)
    values = b.old_values.clone().requires_grad_(True)
    loss, stats = rl_loss(logp, values, b, LossSettings())
    loss.backward()
    for g in (logp.grad, values.grad):
        assert torch.equal(g[1], torch.zeros(5)) and torch.equal(g[6], torch.zeros(5)) and g[0, :3].abs().sum() > 0
    assert "value/loss" in stats


def test_reward_failures_are_masked_counted_and_stop_the_run_past_the_threshold(tiny_model_path, tmp_path):
    data = prompt_file(tmp_path)
    final = train_rl(cfg(tiny_model_path, tmp_path / "ok", data=data, data_args={}, max_steps=3),
                     provider=FlakySevens())
    rows = records(tmp_path / "ok")
    assert all(r["reward/frac_timeout"] == 0.25 and r["reward/failed"] == 4 for r in rows)
    assert rows[-1]["provider/status/timeout"] == 12
    assert "model_path" in final
    with pytest.raises(RewardProviderError, match=r"failed on 16 of 16 samples at step 3 .*judge server down"):
        train_rl(cfg(tiny_model_path, tmp_path / "down", data=data, data_args={}, max_steps=5),
                 provider=FlakySevens(fail_all_from=3))
    assert (tmp_path / "down" / "checkpoints" / "step-2" / "trainer_state.json").exists()  # finished work kept


def test_value_lr_mult_gives_the_value_head_its_own_scheduled_learning_rate(tiny_model_path, tmp_path):
    c = cfg(tiny_model_path, tmp_path, algo="ppo", lr=1e-3, value_lr_mult=50.0, lr_scheduler="linear",
            warmup_ratio=0.0, max_steps=4)
    run = setup(c, Sevens(), TorchBackend())
    head = {id(p) for p in run.net.value_head.parameters()}
    groups = run.optimizer.param_groups
    assert sum(p.requires_grad for p in run.net.parameters()) == sum(len(g["params"]) for g in groups)
    (value_group,) = [g for g in groups if {id(p) for p in g["params"]} & head]
    assert {id(p) for p in value_group["params"]} == head
    assert value_group["lr"] == pytest.approx(5e-2) and groups[0]["lr"] == pytest.approx(1e-3)
    run.scheduler.step()  # one schedule for all groups: the ratio is kept as the rate decays
    assert value_group["lr"] == pytest.approx(50 * groups[0]["lr"]) and groups[0]["lr"] < 1e-3
    with pytest.raises(ConfigError, match="value_lr_mult"):
        RLConfig(value_lr_mult=-1.0).validate()


def test_config_reports_every_problem_at_once():
    with pytest.raises(ConfigError) as err:
        RLConfig(algo="rloo", num_generations=1, temperature=0.0, critic="other", max_failure_rate=2.0,
                 kl_estimator="k9").validate()
    text = str(err.value)
    for needle in ("num_generations", "temperature", "critic", "max_failure_rate", "kl_estimator"):
        assert needle in text
    assert RLConfig(algo="grpo").generations == 4 and RLConfig().generations == 1


def test_cli_trains_grpo_and_writes_metrics_and_completions(tiny_model_path, tmp_path, capsys):
    reward_file = tmp_path / "my_reward.py"
    reward_file.write_text("def sevens(completion, row):\n    return float(completion.count('7'))\n")
    out = tmp_path / "run"
    code = main(["train", "--algo", "grpo", "--reward", f"{reward_file}:sevens", "--model", str(tiny_model_path),
                 "--data-arg", "size=32", "--max-steps", "3", "--batch-size", "2", "--num-generations", "2",
                 "--max-new-tokens", "4", "--out", str(out), "--completions-every", "2", "--eval-size", "4",
                 "--threads", "1", "--log-every", "1", "--lr", "1e-3"])
    assert code == 0, capsys.readouterr().err
    assert len(records(out)) == 3 and len(records(out, "eval")) == 2
    table = [json.loads(line) for line in (out / "completions" / "step_00002.jsonl").read_text().splitlines()]
    assert len(table) == 4 and {"prompt", "completion", "reward", "status", "advantage"} <= set(table[0])
    assert re.search(r"grpo finished", capsys.readouterr().out)


def test_knobs_early_stop_component_metrics_and_kl_in_loss(tiny_model_path, tmp_path):
    from rewardhub.reward_resolution import build_reward

    mix = build_reward("length=1.0,exact-match=0.5")
    c = cfg(tiny_model_path, tmp_path / "ppo", algo="ppo", max_steps=2, ppo_epochs=4, minibatch_size=4,
            target_kl=1e-9, whiten_rewards=True, missing_eos_penalty=1.0, num_generations=2)
    train_rl(c, provider=mix)
    row = records(tmp_path / "ppo")[-1]
    assert row["update/early_stopped"] == 1 and row["update/epochs"] < 4  # approx KL > 1e-9 after one minibatch
    assert {"reward/length/mean", "reward/length/std", "reward/exact-match/mean"} <= set(row)
    assert row["reward/score_mean"] < row["reward/mean"]  # no completion emitted EOS yet: penalised
    c = cfg(tiny_model_path, tmp_path / "grpo", max_steps=2, kl_in_reward=False, kl_loss_coef=0.04,
            scale_rewards=False)
    train_rl(c, provider=Sevens())
    row = records(tmp_path / "grpo")[-1]
    assert "kl/loss_term" in row and "kl/mean_per_seq" in row
    c = cfg(tiny_model_path, tmp_path / "nokl", max_steps=1, kl_in_reward=False)
    assert train_rl(c, provider=Sevens())["model_path"]
    assert "kl/mean_per_seq" not in records(tmp_path / "nokl")[-1]  # no reference model loaded


def test_rows_with_gradient_are_the_ones_whose_loss_can_move_the_weights():
    valid = [True, False, True, True]
    b = _batch(valid, advantages=torch.tensor([0.5, 1.0, 0.0, -0.0]), values=False)
    assert rows_with_gradient(b, LossSettings(), has_values=False).tolist() == [True, False, False, False]
    # a KL loss term moves every usable row; a value loss too (but a failed row never)
    assert rows_with_gradient(b, LossSettings(kl_loss_coef=0.1), has_values=False).tolist() == [
        True, False, True, True]
    assert rows_with_gradient(b, LossSettings(), has_values=True).tolist() == [True, False, True, True]
    # per-token advantages: nonzero only after EOS (masked) does not count
    adv = torch.zeros(4, 5)
    adv[0, 4] = 1.0  # row 0's EOS is at t=2: t=4 is padding
    adv[2, 1] = -0.3
    b = _batch(valid, advantages=adv, values=False)
    assert rows_with_gradient(b, LossSettings(), has_values=False).tolist() == [False, False, True, False]
    # and the claim itself: a skipped row's gradient is exactly zero, whatever the ratio
    b = _batch(valid, advantages=torch.tensor([0.5, 1.0, 0.0, 0.0]), values=False)
    logp = (b.old_logprobs + torch.randn(4, 5)).requires_grad_(True)
    rl_loss(logp, None, b, LossSettings())[0].backward()
    assert torch.equal(logp.grad[1:], torch.zeros(3, 5)) and logp.grad[0, :3].abs().sum() > 0


@pytest.mark.parametrize("algo", ["grpo", "rloo"])
def test_skipping_zero_advantage_rows_gives_the_same_weights(algo, tiny_model_path, tmp_path):
    # several epochs, minibatches and accumulation chunks, so whole chunks are skipped (one row is kept)
    kw = dict(algo=algo, max_steps=6, batch_size=4, num_generations=4, ppo_epochs=2, minibatch_size=8,
              grad_accum=2, lr=3e-3, kl_in_reward=False)
    train_rl(cfg(tiny_model_path, tmp_path / "skip", **kw), provider=HasSeven())
    train_rl(cfg(tiny_model_path, tmp_path / "full", skip_zero_advantage=False, **kw), provider=HasSeven())
    skipped = [r["update/frac_rows_skipped"] for r in records(tmp_path / "skip")]
    assert 1.0 in skipped and any(0 < f < 1 for f in skipped), skipped  # whole steps and single rows skipped
    assert all(r["update/frac_rows_skipped"] == 0 for r in records(tmp_path / "full"))
    a, b = load_weights(tmp_path / "skip"), load_weights(tmp_path / "full")
    assert any(r["reward/std"] > 0 for r in records(tmp_path / "skip"))  # something was trained
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6)
    first = lambda out: records(out)[0]  # noqa: E731
    assert first(tmp_path / "skip")["reward/mean"] == first(tmp_path / "full")["reward/mean"]


@pytest.mark.parametrize("mode", ["seq-mean-token-mean", "seq-mean-token-sum-norm"])
def test_loss_aggregation_does_not_depend_on_how_the_minibatch_is_split(mode, tiny_model_path, tmp_path):
    # sequences of different lengths (EOS allowed) split over accumulation chunks: same weights as one chunk
    kw = dict(max_steps=3, batch_size=4, num_generations=4, grad_accum=1, lr=3e-3, loss_agg=mode,
              kl_in_reward=False, max_new_tokens=8)
    train_rl(cfg(tiny_model_path, tmp_path / "one", **kw), provider=Sevens())
    train_rl(cfg(tiny_model_path, tmp_path / "four", **{**kw, "grad_accum": 4}), provider=Sevens())
    a, b = load_weights(tmp_path / "one"), load_weights(tmp_path / "four")
    for key in a:
        # chunks sum in another order, and AdamW divides tiny gradients by their tiny RMS: at 1e-6 one element
        # of 2048 was seen 1.07e-6 off; a per-chunk normaliser changes the update itself, not its rounding
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-5)
    # and the mode matters: the token-mean run ends elsewhere
    train_rl(cfg(tiny_model_path, tmp_path / "tok", **{**kw, "loss_agg": "token-mean"}), provider=Sevens())
    c = load_weights(tmp_path / "tok")
    assert any(not torch.allclose(a[k], c[k], atol=1e-6) for k in a)
    with pytest.raises(ConfigError, match="loss_agg"):
        RLConfig(loss_agg="seq-mean").validate()
