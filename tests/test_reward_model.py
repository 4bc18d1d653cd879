"""Reward-model training and the ``reward-model`` provider: held-out pairwise accuracy above chance, a model
that loads by path, normalised scores (mean 0 / std 1 on the calibration set), conformance, left truncation."""

import importlib
import json
import statistics
from pathlib import Path

import pytest
import torch

from rewardhub import Sample
from rewardhub.config import RewardModelConfig
from rewardhub.errors import ConfigError
from rewardhub.recipes.reward_model import (
    CALIBRATION_FILE,
    encode_scored,
    tokenize_rm_pairs,
    train_reward_model,
)
from rewardhub.testing import build_tokenizer, check_provider
from rewardhub_tasks.preferences import build_arithmetic_preferences


def provider_module():
    return importlib.import_module("rewardhub_reward_model")


def write_jsonl(path, rows):
    path.write_text("\n".join(json.dumps(dict(r)) for r in rows) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def trained_rm(tiny_model_path, tmp_path_factory):
    """One reward model trained on arithmetic preferences, shared by the provider tests.

    1,200 steps: a random 32-wide model needs them to tell a one-digit slip from the right sum (measured with
    transformers 5.24: 400 steps gave 0.535 held-out pairwise accuracy, near chance; 1,200 gave 0.655).
    """
    d = tmp_path_factory.mktemp("rm")
    train = write_jsonl(d / "train.jsonl", build_arithmetic_preferences("train", size=3000, errors="digit"))
    test = write_jsonl(d / "test.jsonl", build_arithmetic_preferences("test", size=200, errors="digit"))
    cfg = RewardModelConfig(model=str(tiny_model_path), data=train, eval_data=test, out=str(d / "out"),
                            max_steps=1200, batch_size=32, lr=3e-3, warmup_ratio=0.0, use_margin=False,
                            log_every=100, eval_every=0, save_every=0, eval_size=200, threads=1,
                            calibration_size=300)
    final = train_reward_model(cfg)
    return final, Path(final["model_path"]), train


def test_config_reports_every_problem():
    with pytest.raises(ConfigError) as err:
        RewardModelConfig(center_coef=-1, calibration_size=-2, max_steps=0).validate()
    assert all(s in str(err.value) for s in ("center_coef", "calibration_size", "max_steps"))


def test_tokenize_keeps_margin_and_cuts_the_prompt_from_the_left():
    tok = build_tokenizer()
    rows = [{"prompt": "123456789=", "chosen": "ab", "rejected": "c", "margin": 2.0}]

    class Rows(list):
        column_names = ["prompt", "chosen", "rejected", "margin"]

    [ex] = tokenize_rm_pairs(Rows(rows), tok, max_length=6)
    assert tok.decode(ex["chosen"]) == "89=ab<eos>" and tok.decode(ex["rejected"]) == "789=c<eos>"
    assert ex["margin"] == 2.0
    assert tok.decode(encode_scored(tok, "", "abc", 8)) == "abc<eos>"


def test_reward_model_learns_pairwise_preferences(trained_rm):
    final, model_path, _ = trained_rm
    print(f"held-out pairwise accuracy {final['accuracy']:.3f}, mean margin {final['margin']:.3f}")
    assert final["accuracy"] >= 0.6 and final["margin"] > 0
    assert (model_path / "config.json").exists() and (model_path / "tokenizer.json").exists()
    calibration = json.loads((model_path / CALIBRATION_FILE).read_text())
    assert calibration["count"] == 600 and calibration["std"] > 0


def test_saved_model_loads_by_path_and_scores_like_training(trained_rm):
    from rewardhub.models import load_model, load_tokenizer

    _, model_path, _ = trained_rm
    tok = load_tokenizer(str(model_path))
    model = load_model(str(model_path), kind="reward", tokenizer=tok).eval()
    with torch.no_grad():
        ids = torch.tensor([encode_scored(tok, "12+30=", "42", 64)])
        assert model(input_ids=ids).logits.shape == (1, 1)


def test_provider_normalises_to_mean_0_std_1_on_the_calibration_set(trained_rm):
    _, model_path, train = trained_rm
    provider = provider_module().RewardModelReward(path=str(model_path), batch_size=64)
    rows = [json.loads(line) for line in Path(train).read_text().splitlines()[:300]]
    samples = [Sample(r["prompt"], r[side], r) for r in rows for side in ("chosen", "rejected")]
    values = [r.value for r in provider(samples)]
    assert statistics.fmean(values) == pytest.approx(0.0, abs=1e-3)
    assert statistics.pstdev(values) == pytest.approx(1.0, abs=1e-3)
    raw = provider_module().RewardModelReward(path=str(model_path), normalize=False)
    assert raw([samples[0]])[0].value == pytest.approx(
        values[0] * provider.calibration["std"] + provider.calibration["mean"], abs=1e-4)
    # compare() is the Bradley-Terry probability on raw scores
    p = provider.compare(rows[0]["prompt"], rows[0]["chosen"], rows[0]["rejected"])
    assert 0.0 < p < 1.0


def test_provider_passes_the_conformance_check(trained_rm):
    _, model_path, _ = trained_rm
    provider = provider_module().RewardModelReward(path=str(model_path), max_length=64)
    results = check_provider(provider, [Sample("12+30=", "42", {}), Sample("12+30=", "43", {})])
    assert [r.status.value for r in results] == ["ok", "ok"]


def test_provider_truncates_long_prompts_from_the_left(trained_rm):
    _, model_path, _ = trained_rm
    provider = provider_module().RewardModelReward(path=str(model_path), max_length=16)
    long_prompt = "x" * 500 + "12+30="
    ids = provider.encode(Sample(long_prompt, "42", {}))
    assert len(ids) == 16 and provider.tokenizer.decode(ids).endswith("12+30=42<eos>")
    # the end of the prompt is what matters: same score as a prompt that only has that end
    short = "x" * (16 - len("12+30=42") - 1) + "12+30="
    a, b = provider([Sample(long_prompt, "42", {}), Sample(short, "42", {})])
    assert a.value == pytest.approx(b.value, abs=1e-5)


def test_provider_renders_conversational_rows_with_the_chat_template(trained_rm):
    _, model_path, _ = trained_rm
    provider = provider_module().RewardModelReward(path=str(model_path))
    messages = [{"role": "user", "content": "2+2?"}]
    ids = provider.encode(Sample("ignored", "4", {"prompt": messages}))
    assert provider.tokenizer.decode(ids) == "<|user|>2+2?<eos><|assistant|>4<eos>"


def test_provider_registers_as_reward_model():
    registered = {}
    provider_module().rewardhub_register_rewards(lambda name, obj, description="": registered.update({name: obj}))
    assert registered["reward-model"] is provider_module().RewardModelReward


def test_train_rm_cli(tiny_model_path, tmp_path):
    import argparse

    from rewardhub.cli import train_rm_cmd

    data = write_jsonl(tmp_path / "p.jsonl", build_arithmetic_preferences("train", size=40))
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    train_rm_cmd.add_parser(sub).set_defaults(handler=train_rm_cmd.run)
    args = parser.parse_args(["train-rm", "--model", str(tiny_model_path), "--data", data, "--out",
                              str(tmp_path / "out"), "--max-steps", "2", "--batch-size", "8", "--threads", "1"])
    assert train_rm_cmd.run(args) == 0
    assert (tmp_path / "out" / "model" / CALIBRATION_FILE).exists()


def test_lora_reward_model_is_merged_and_loads_by_path(tiny_model_path, tmp_path):
    from rewardhub.models import load_model

    data = write_jsonl(tmp_path / "p.jsonl", build_arithmetic_preferences("train", size=40))
    final = train_reward_model(RewardModelConfig(model=str(tiny_model_path), data=data, out=str(tmp_path / "o"),
                                                 max_steps=2, batch_size=8, lora_r=4, threads=1, center_coef=0.01))
    assert not (Path(final["model_path"]) / "adapter_config.json").exists()
    load_model(final["model_path"], kind="reward")


def test_length_grouped_scores_and_gradients_equal_one_padded_forward(tiny_model_path):
    """Scoring chosen and rejected replies of varied lengths in length groups gives the scores and gradients of
    one right-padded forward (the reference: ``score_sequences`` on the whole padded batch)."""
    from rewardhub.batching import length_groups
    from rewardhub.models import load_model, load_tokenizer
    from rewardhub.recipes.reward_model import collate_sequences, grouped_scores, score_sequences

    tokenizer = load_tokenizer(str(tiny_model_path))
    pad = tokenizer.pad_token_id
    lengths = [3, 40, 5, 60, 8, 30, 4, 50, 6, 45]
    seqs = [[(7 * i + j) % 40 + 5 for j in range(n)] + [tokenizer.eos_token_id] for i, n in enumerate(lengths)]
    assert len(length_groups(range(len(seqs)), seqs, length=len)) > 1  # it does split this batch
    model = load_model(str(tiny_model_path), kind="reward").float()

    def scores_and_grads(fn):
        model.zero_grad()
        scores = fn()
        (scores * torch.arange(1.0, len(seqs) + 1)).sum().backward()  # every score weighted differently
        return scores.detach(), {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}

    one = scores_and_grads(lambda: score_sequences(model, *collate_sequences(seqs, pad)))
    grouped = scores_and_grads(lambda: grouped_scores(model, seqs, pad, "cpu")[0])
    torch.testing.assert_close(grouped[0], one[0], rtol=1e-5, atol=1e-5)
    assert grouped[1].keys() == one[1].keys() and one[1]
    for key in one[1]:
        torch.testing.assert_close(grouped[1][key], one[1][key], rtol=1e-4, atol=1e-6)
    assert grouped_scores(model, seqs, pad, "cpu")[1] == sum(lengths) + len(lengths)  # real tokens only
