"""TRL-style batched reward functions ``f(prompts, completions, **kwargs) -> list[float | None]`` as providers."""

import json
import math

import pytest
import torch
from conftest import records

from rewardhub.cli.main import main
from rewardhub.errors import ConfigError, RewardProviderError
from rewardhub.recipes.rl import RolloutBatch, group_advantages
from rewardhub.reward_resolution import (
    FunctionReward,
    TRLFunctionReward,
    WeightedReward,
    build_reward,
    is_trl_reward_function,
    reward_function,
)
from rewardhub.rewards import FAILURE_STATUSES, Sample, Status


def per_sample(completion, row):
    return 1.0


def per_sample_with_prompt(completion, row, prompt=None):
    return 1.0


def trl_plain(prompts, completions, **kwargs):
    return [float(len(c)) for c in completions]


def trl_completions_only(completions, **kwargs):
    return [1.0] * len(completions)


def trl_kwargs_only(**kwargs):
    return [1.0] * len(kwargs["completions"])


def trl_named_column(prompts, completions, answer):
    return [float(c.strip() == str(a)) for c, a in zip(completions, answer)]


def test_detection_by_signature():
    for fn in (per_sample, per_sample_with_prompt, lambda c, r: 0.0):
        assert not is_trl_reward_function(fn) and isinstance(reward_function(fn), FunctionReward)
    for fn in (trl_plain, trl_completions_only, trl_kwargs_only, trl_named_column):
        assert is_trl_reward_function(fn) and isinstance(reward_function(fn), TRLFunctionReward)


def test_a_batch_becomes_trl_keyword_arguments():
    seen = {}

    def f(prompts, completions, completion_ids, **kwargs):
        seen.update(prompts=prompts, completions=completions, completion_ids=completion_ids, **kwargs)
        return [0.0] * len(completions)

    samples = [Sample("<rendered>1+1=", "2", {"prompt": "1+1=", "answer": "2", "level": 1}, (5, 0)),
               Sample("<rendered>2+2=", "5", {"prompt": "2+2=", "answer": "4", "completion": "gold"}, None)]
    reward = TRLFunctionReward(f)
    assert [r.value for r in reward(samples)] == [0.0, 0.0]
    assert seen["prompts"] == ["1+1=", "2+2="]  # the data's prompt, as TRL passes it (not the rendered text)
    assert seen["completions"] == ["2", "5"]
    assert seen["completion_ids"] == [[5, 0], None]  # None: this completion was not sampled token by token
    assert seen["answer"] == ["2", "4"] and seen["level"] == [1, None]  # one list per column, None where absent
    assert "completion" not in seen and "prompt" not in seen  # TRL leaves those columns out too
    assert seen["trainer_state"] is None and callable(seen["log_metric"]) and callable(seen["log_extra"])

    # without **kwargs, only what the signature names
    got = {}

    def g(completions, answer):
        got.update(completions=completions, answer=answer)
        return [1] * len(completions)

    TRLFunctionReward(g)(samples)
    assert got == {"completions": ["2", "5"], "answer": ["2", "4"]}

    # conversational prompts: completions as assistant messages, like TRL
    chat = [Sample("rendered", "hi", {"prompt": [{"role": "user", "content": "hello"}]})]
    TRLFunctionReward(f)(chat)
    assert seen["prompts"] == [[{"role": "user", "content": "hello"}]]
    assert seen["completions"] == [[{"role": "assistant", "content": "hi"}]]


def test_values_none_and_nan_are_masked_failures():
    def f(prompts, completions, **kwargs):
        return [0.5, None, float("nan"), True, 3, False]

    rewards = TRLFunctionReward(f)([Sample("p", str(i)) for i in range(6)])
    assert [r.status for r in rewards] == [Status.OK, Status.ERROR, Status.ERROR, Status.OK, Status.OK,
                                           Status.WRONG]
    assert [r.value for r in rewards] == [0.5, 0.0, 0.0, 1.0, 3.0, 0.0]
    assert rewards[1].status in FAILURE_STATUSES and not rewards[1].usable
    assert "returned None" in rewards[1].detail and "masked" in rewards[1].detail
    # numpy / torch results are lists too
    tensor = TRLFunctionReward(lambda prompts, completions: torch.tensor([1.0, 2.0]))
    assert [r.value for r in tensor([Sample("p", "a"), Sample("p", "b")])] == [1.0, 2.0]


def test_none_is_masked_out_of_the_grpo_update():
    """The usable flags of the rewards are RL's ``valid``: a None sample gets advantage 0, leaves its group's
    baseline alone."""
    def f(prompts, completions, **kwargs):
        return [None if c == "skip" else float(c) for c in completions]

    completions = ["1", "skip", "0", "2", "3", "1", "skip", "0"]
    rewards = TRLFunctionReward(f)([Sample("p", c) for c in completions])
    valid = torch.tensor([r.usable for r in rewards])
    assert valid.tolist() == [True, False, True, True, True, True, False, True]
    n, t = 8, 4
    mask = torch.ones(n, t, dtype=torch.long)
    ids = torch.zeros(n, 2 + t, dtype=torch.long)
    batch = RolloutBatch(ids, torch.ones_like(ids), torch.arange(2 + t).expand(n, -1), 2, mask, valid,
                         torch.zeros(n, t), torch.zeros(n, t), None, None)
    scores = torch.tensor([r.value for r in rewards])
    adv, _ = group_advantages("grpo", batch, scores, torch.zeros(n, t), 0.0, group_size=4)
    assert adv[1] == 0 and adv[6] == 0
    expected = torch.tensor([1.0, 0.0, 2.0])  # group 1 without the masked sample: mean 1, std 1
    torch.testing.assert_close(adv[[0, 2, 3]], (expected - 1.0) / (1.0 + 1e-4))


def test_contract_violations_name_the_function():
    samples = [Sample("p", "a"), Sample("p", "b")]

    def short(prompts, completions, **kwargs):
        return [1.0]

    def words(prompts, completions, **kwargs):
        return [1.0, "high"]

    def scalar(prompts, completions, **kwargs):
        return 1.0

    with pytest.raises(RewardProviderError, match=r"'short' returned 1 rewards for 2 completions"):
        TRLFunctionReward(short)(samples)
    with pytest.raises(RewardProviderError, match=r"'words' returned str 'high' for completion 1"):
        TRLFunctionReward(words)(samples)
    with pytest.raises(RewardProviderError, match=r"'scalar' returned float; it must return one reward per"):
        TRLFunctionReward(scalar)(samples)


def test_exceptions_and_missing_columns_fail_the_batch_with_the_reason():
    def boom(prompts, completions, **kwargs):
        raise KeyError("gold")

    rewards = TRLFunctionReward(boom)([Sample("p", "a"), Sample("p", "b")])
    assert all(r.status is Status.ERROR and "'boom' raised KeyError" in r.detail for r in rewards)
    rewards = TRLFunctionReward(trl_named_column)([Sample("p", "a", {"prompt": "p", "gold": "1"})])
    assert rewards[0].status is Status.ERROR
    assert "takes 'answer', which is neither a TRL argument" in rewards[0].detail and "gold" in rewards[0].detail


def test_log_metric_and_async_functions():
    def f(prompts, completions, log_metric, **kwargs):
        log_metric("format_ok", 0.5)
        return [1.0] * len(completions)

    reward = TRLFunctionReward(f)
    reward([Sample("p", "a")])
    assert reward.metrics()["log/format_ok"] == 0.5

    async def af(prompts, completions, **kwargs):
        return [2.0 for _ in completions]

    assert TRLFunctionReward(af)([Sample("p", "a")])[0].value == 2.0


def test_file_spec_mixes_with_other_providers(tmp_path):
    file = tmp_path / "trl_rewards.py"
    file.write_text("def fives(prompts, completions, **kwargs):\n"
                    "    return [None if c == '' else float(c.count('5')) for c in completions]\n")
    mix = build_reward(f"{file}:fives=1.0,length=0.1")
    assert isinstance(mix, WeightedReward) and isinstance(mix.components[0][1], TRLFunctionReward)
    a, b = mix([Sample("p", "55", {"prompt": "p"}), Sample("p", "", {"prompt": "p"})])
    assert a.status is Status.OK and math.isclose(a.value, 2.0 + 0.1 * a.parts["length"])
    assert b.status is Status.ERROR and "'fives' returned None" in b.detail  # the None masks the whole sample
    assert isinstance(build_reward(f"{file}:fives"), TRLFunctionReward)


def test_python_api_takes_functions_lists_and_weighted_mappings():
    single = build_reward(trl_plain)
    assert isinstance(single, TRLFunctionReward) and single.name == "trl_plain"
    listed = build_reward([trl_plain, per_sample, "length"])  # TRL's reward_funcs list: weights 1
    assert isinstance(listed, WeightedReward) and [t.name for t, _ in listed.components] == [
        "trl_plain", "per_sample", "length"]
    assert isinstance(listed.components[1][1], FunctionReward)
    mix = build_reward({trl_plain: 2.0, "length": 0.1}, {"length.scale": 10})
    r = mix([Sample("p", "abc")])[0]
    assert r.parts["trl_plain"] == 3.0 and math.isclose(r.value, 2.0 * 3.0 + 0.1 * r.parts["length"])
    with pytest.raises(ConfigError, match="names 'trl_plain' twice"):
        build_reward([trl_plain, trl_plain])


def test_trl_function_in_grpo_end_to_end_mixed_with_length(tiny_model_path, tmp_path, capsys):
    """``--reward="file.py:f=1.0,length=0.1"``: the TRL function sees the sampled token ids and the data's
    columns; its None samples are masked and counted."""
    log = tmp_path / "calls.jsonl"
    file = tmp_path / "trl_reward.py"
    file.write_text(
        "import json\n"
        f"LOG = {str(log)!r}\n"
        "def sevens(prompts, completions, completion_ids, answer, **kwargs):\n"
        "    with open(LOG, 'a') as f:\n"
        "        f.write(json.dumps({'n': len(completions), 'ids': completion_ids, 'answer': answer,\n"
        "                            'prompts': prompts}) + '\\n')\n"
        "    return [None if i % 4 == 3 else float(c.count('7')) for i, c in enumerate(completions)]\n")
    out = tmp_path / "run"
    code = main(["train", "--algo", "grpo", "--reward", f"{file}:sevens=1.0,length=0.1", "--model",
                 str(tiny_model_path), "--data-arg", "size=32", "--max-steps", "2", "--batch-size", "2",
                 "--num-generations", "2", "--max-new-tokens", "4", "--out", str(out), "--eval-size", "4",
                 "--threads", "1", "--log-every", "1", "--lr", "1e-3", "--completions-every", "0",
                 "--sft-warmup-steps", "0", "--max-failure-rate", "0.5"])
    assert code == 0, capsys.readouterr().err
    rows = records(out)
    assert len(rows) == 2 and all(r["reward/failed"] == 1 for r in rows)  # 1 of 4 samples per step: None
    assert {f"reward/{file}:sevens/mean", "reward/length/mean"} <= set(rows[-1])
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    train_calls = [c for c in calls if c["ids"][0] is not None]
    assert len(train_calls) == 2 and all(c["n"] == 4 for c in train_calls)
    assert all(1 <= len(ids) <= 4 and all(isinstance(t, int) for t in ids) for ids in train_calls[0]["ids"])
    assert all(isinstance(a, str) for a in train_calls[0]["answer"])  # the arithmetic task's answer column
    assert train_calls[0]["prompts"][0] == train_calls[0]["prompts"][1]  # a group: one prompt, G completions
