"""SFT end to end on a tiny model: it learns, masks the prompt, accumulates correctly and resumes exactly."""

import json

import pytest
import torch
from conftest import load_weights

from rewardhub.config import SFTConfig
from rewardhub.recipes.sft import IGNORE, tokenize_sft, train_sft
from rewardhub.testing import build_tokenizer


def cfg(tiny_model_path, out, **kw):
    base = dict(model=str(tiny_model_path), data="arithmetic", data_args={"size": 512}, out=str(out),
                max_steps=12, batch_size=16, lr=3e-3, warmup_ratio=0.0, log_every=4, eval_every=0, save_every=0,
                eval_size=16, eval_max_new_tokens=4, threads=1)
    base.update(kw)
    return SFTConfig(**base)



def test_tokenize_masks_prompt_and_appends_eos():
    tok = build_tokenizer()
    [ex] = tokenize_sft([{"prompt": "12+3=", "completion": "15"}], tok, max_length=64)
    assert tok.decode(ex["input_ids"]) == "12+3=15<eos>"
    assert ex["labels"][:5] == [IGNORE] * 5 and ex["labels"][5:] == ex["input_ids"][5:]
    [cut] = tokenize_sft([{"prompt": "123456789=", "completion": "ab"}], tok, max_length=6)
    assert tok.decode(cut["input_ids"]) == "89=ab<eos>"  # the prompt is cut from the left


def test_sft_loss_falls_and_parameters_change(tiny_model_path, tmp_path):
    from transformers import AutoModelForCausalLM

    final = train_sft(cfg(tiny_model_path, tmp_path, max_steps=40))
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if r["kind"] == "train"]
    assert losses[-1] < losses[0] * 0.8
    assert 0.0 <= final["accuracy"] <= 1.0 and final["loss"] > 0
    before = AutoModelForCausalLM.from_pretrained(tiny_model_path).state_dict()
    after = load_weights(tmp_path)
    changed = [k for k in after if not torch.equal(after[k], before[k])]
    assert len(changed) == len(after)


def test_resume_after_interrupt_gives_the_same_weights(tiny_model_path, tmp_path):
    train_sft(cfg(tiny_model_path, tmp_path / "straight", save_every=4))

    def interrupt(step, metrics):
        if step == 6:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_sft(cfg(tiny_model_path, tmp_path / "resumed", save_every=4), callbacks=[interrupt])
    assert (tmp_path / "resumed" / "checkpoints" / "step-6" / "trainer_state.json").exists()
    train_sft(cfg(tiny_model_path, tmp_path / "resumed", save_every=4))
    a, b = load_weights(tmp_path / "straight"), load_weights(tmp_path / "resumed")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6)


def test_gradient_accumulation_matches_a_bigger_batch(tiny_model_path, tmp_path):
    train_sft(cfg(tiny_model_path, tmp_path / "big", max_steps=3, batch_size=16, grad_accum=1))
    train_sft(cfg(tiny_model_path, tmp_path / "accum", max_steps=3, batch_size=4, grad_accum=4))
    a, b = load_weights(tmp_path / "big"), load_weights(tmp_path / "accum")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5)


def test_sft_on_a_conversational_file(tiny_model_path, tmp_path):
    path = tmp_path / "chat.jsonl"
    rows = [{"messages": [{"role": "user", "content": f"{i}+1?"}, {"role": "assistant", "content": str(i + 1)}]}
            for i in range(20)]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    final = train_sft(cfg(tiny_model_path, tmp_path / "out", data=str(path), data_args={}, max_steps=3,
                          report_to="tensorboard"))
    assert "accuracy" not in final  # no answer column and no held-out set: nothing to measure
    assert (tmp_path / "out" / "model" / "config.json").exists()
    assert list((tmp_path / "out").rglob("events.out.tfevents.*")), "tensorboard tracker wrote no events"


def test_lora_and_gradient_checkpointing_runs_save_models_that_load_back(tiny_model_path, tmp_path):
    from rewardhub.models import load_model

    train_sft(cfg(tiny_model_path, tmp_path / "lora", max_steps=2, lora_r=4, gradient_checkpointing=True))
    model = load_model(str(tmp_path / "lora" / "model"))
    assert model.config.hidden_size == 32


def test_length_groups_split_rows_of_varied_length_and_keep_alike_ones_whole():
    from rewardhub.recipes.sft import length_groups

    examples = [{"input_ids": [1] * n} for n in (100, 12, 98, 10, 11, 97, 13, 99)]
    groups = length_groups(range(8), examples)
    assert sorted(i for g in groups for i in g) == list(range(8))  # every row once
    assert [sorted(g) for g in groups] == [[1, 3, 4, 6], [0, 2, 5, 7]]  # short rows apart from long ones
    alike = [{"input_ids": [1] * n} for n in (50, 52, 49, 51)]
    assert length_groups([3, 1, 0, 2], alike) == [[3, 1, 0, 2]]  # nothing worth splitting: one forward, as given
    assert length_groups(range(8), examples, max_groups=1) == [list(range(8))]


def test_length_groups_leave_loss_and_weights_unchanged(tiny_model_path, tmp_path, monkeypatch):
    """Forward/backward over length groups is the same update as one padded micro-batch, with less padding."""
    from rewardhub import batching
    from rewardhub.recipes import sft

    data = tmp_path / "varied.jsonl"
    lengths = [3, 40, 5, 60, 8, 30, 4, 50] * 8
    data.write_text("".join(json.dumps({"prompt": f"{i}+{i}=", "completion": "7" * n}) + "\n"
                            for i, n in enumerate(lengths)))
    forwards = {"grouped": [], "one": []}
    loss = sft.summed_token_loss
    runs = {}
    for name, groups in (("grouped", batching.MAX_LENGTH_GROUPS), ("one", 1)):
        monkeypatch.setattr(batching, "MAX_LENGTH_GROUPS", groups)
        monkeypatch.setattr(sft, "summed_token_loss",
                            lambda m, ids, mask, labels, name=name: forwards[name].append(mask.numel())
                            or loss(m, ids, mask, labels))
        losses = []
        train_sft(cfg(tiny_model_path, tmp_path / name, data=str(data), data_args={}, max_steps=3, batch_size=8,
                      eval_size=0), callbacks=[lambda step, m, out=losses: out.append(m["loss"])])
        runs[name] = losses
    assert len(forwards["grouped"]) > len(forwards["one"]) == 3  # it did split the micro-batches
    assert sum(forwards["grouped"]) < 0.8 * sum(forwards["one"])  # ... and padded fewer positions
    assert runs["grouped"] == pytest.approx(runs["one"], rel=1e-5)
    a, b = load_weights(tmp_path / "grouped"), load_weights(tmp_path / "one")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5)
