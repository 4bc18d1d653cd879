"""DPO end to end on a tiny model: exact reference log-probs, clear data errors, held-out preference accuracy
that rises, LoRA (adapter-disabled reference), online pairs ranked by a provider, provider-stored pairs, and an
exact resume."""

import json

import pytest
import torch
from conftest import load_weights

from rewardhub import PreferencePair, Reward, RewardProvider
from rewardhub.config import DPOConfig
from rewardhub.errors import ConfigError, DataError
from rewardhub.recipes.dpo import (
    Reference,
    collate_pairs,
    pair_texts,
    precompute_reference,
    resolve_pair_source,
    tokenize_pairs,
    train_dpo,
)
from rewardhub.testing import build_tokenizer
from rewardhub_tasks.arithmetic import build_arithmetic
from rewardhub_tasks.preferences import build_arithmetic_preferences


def write_jsonl(path, rows):
    path.write_text("\n".join(json.dumps(dict(r)) for r in rows) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def pref_files(tmp_path_factory):
    """Arithmetic preferences whose rejected answer has one wrong digit (learnable by the tiny model)."""
    d = tmp_path_factory.mktemp("prefs")
    train = write_jsonl(d / "train.jsonl", build_arithmetic_preferences("train", size=3000, errors="digit"))
    test = write_jsonl(d / "test.jsonl", build_arithmetic_preferences("test", size=200, errors="digit"))
    return train, test


def cfg(tiny_model_path, out, train, test=None, **kw):
    base = dict(model=str(tiny_model_path), data=train, eval_data=test, out=str(out), max_steps=12, batch_size=16,
                lr=1e-2, beta=0.1, warmup_ratio=0.0, log_every=4, eval_every=0, save_every=0, eval_size=200,
                threads=1, resume=True)
    base.update(kw)
    return DPOConfig(**base)



def test_config_reports_every_problem():
    with pytest.raises(ConfigError) as err:
        DPOConfig(pairs="magic", loss_type="kto", beta=0, num_generations=1).validate()
    text = str(err.value)
    assert all(s in text for s in ("pairs must be", "loss_type must be", "beta must be", "num_generations"))


def test_precomputed_reference_equals_a_fresh_forward_pass(tiny_model_path):
    from accelerate import Accelerator

    from rewardhub.models import load_model, load_tokenizer

    tok = load_tokenizer(str(tiny_model_path))
    rows = [*list(build_arithmetic_preferences("train", size=6)), {"prompt": "7*8=", "chosen": "56", "rejected": "5"}]
    examples = tokenize_pairs(rows, tok, max_length=64)
    model = load_model(str(tiny_model_path), tokenizer=tok).eval()
    precompute_reference(Reference(model, False, False), examples, batch_size=3, accelerator=Accelerator(cpu=True))

    fresh = load_model(str(tiny_model_path), tokenizer=tok).eval()
    for e in examples:
        for side in ("chosen", "rejected"):
            ids = torch.tensor([e["prompt"] + e[side]])
            with torch.no_grad():
                logp = fresh(input_ids=ids).logits[0, :-1].log_softmax(-1)
            n = len(e["prompt"])
            expected = sum(float(logp[t - 1, ids[0, t]]) for t in range(n, ids.shape[1]))
            assert e[f"ref_{side}"] == pytest.approx(expected, abs=1e-4)
    # the chosen and rejected rows share the prompt; replies end with EOS
    ids, _mask, loss_mask = collate_pairs(examples[:2], tok.pad_token_id)
    assert ids.shape[0] == 4 and int(loss_mask[0].sum()) == len(examples[0]["chosen"])
    assert examples[0]["chosen"][-1] == tok.eos_token_id


@pytest.mark.parametrize("row, message", [
    ({"prompt": "1+1=", "chosen": "", "rejected": "3"}, "row 1: `chosen` is empty"),
    ({"prompt": "1+1=", "chosen": "2", "rejected": "2"}, "row 1: chosen and rejected are identical"),
    ({"prompt": None, "chosen": "2", "rejected": "3"}, "row 1: the prompt is missing"),
    ({"prompt": "", "chosen": "2", "rejected": "3"}, "row 1: the prompt is missing"),
    ({"prompt": "1+1=", "chosen": "2", "rejected": None}, "row 1: `rejected` is empty"),
])
def test_bad_pair_data_names_the_row(row, message):
    good = {"prompt": "2+2=", "chosen": "4", "rejected": "5"}
    with pytest.raises(DataError, match=message):
        tokenize_pairs([good, row], build_tokenizer(), max_length=32)


def test_missing_prompt_column_is_a_clear_error(tiny_model_path, tmp_path):
    data = write_jsonl(tmp_path / "pairs.jsonl", [{"chosen": "4", "rejected": "5"}] * 3)
    with pytest.raises(DataError, match="prompt"):
        resolve_pair_source(cfg(tiny_model_path, tmp_path / "out", data, pairs="dataset"), None)


def test_conversational_pairs_render_with_the_chat_template():
    tok = build_tokenizer()
    row = {"prompt": [{"role": "user", "content": "2+2?"}], "chosen": [{"role": "assistant", "content": "4"}],
           "rejected": "5"}
    prompt, chosen, rejected = pair_texts(row, tok, 0)
    assert (prompt, chosen, rejected) == ("<|user|>2+2?<eos><|assistant|>", "4<eos>", "5<eos>")
    [ex] = tokenize_pairs([row], tok, max_length=32)
    assert tok.decode(ex["chosen"]) == "4<eos>"  # EOS from the template, not doubled


def test_offline_dpo_raises_heldout_preference_accuracy(tiny_model_path, tmp_path, pref_files):
    from transformers import AutoModelForCausalLM

    train, test = pref_files
    final = train_dpo(cfg(tiny_model_path, tmp_path, train, test, max_steps=400, batch_size=32, log_every=100))
    before, after = final["initial/logps/accuracy"], final["logps/accuracy"]
    print(f"held-out preference accuracy {before:.3f} -> {after:.3f}; "
          f"implicit-reward accuracy {final['rewards/accuracies']:.3f}, margin {final['rewards/margins']:.3f}")
    assert after >= before + 0.1
    assert final["rewards/accuracies"] >= 0.6 and final["rewards/margins"] > 0
    assert final["initial/rewards/margins"] == pytest.approx(0.0, abs=1e-4)  # policy == reference at the start
    before_w = AutoModelForCausalLM.from_pretrained(tiny_model_path).state_dict()
    after_w = load_weights(tmp_path)
    assert sum(not torch.equal(after_w[k], before_w[k]) for k in after_w) == len(after_w)


def test_lora_reference_is_the_adapter_disabled_base(tiny_model_path, tmp_path, pref_files):
    train, _ = pref_files
    common = dict(max_steps=8, lora_r=8, lora_alpha=16, batch_size=8)
    pre = train_dpo(cfg(tiny_model_path, tmp_path / "pre", train, **common))
    fly = train_dpo(cfg(tiny_model_path, tmp_path / "fly", train, precompute_ref=False, **common))
    from safetensors.torch import load_file

    a, b = (load_file(str(tmp_path / run / "adapter" / "adapter_model.safetensors")) for run in ("pre", "fly"))
    assert any("lora_B" in k and a[k].abs().sum() > 0 for k in a)  # the adapter trained
    for k in a:  # precomputed reference == adapter disabled on the fly, step after step
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)
    assert pre["train/loss"] == pytest.approx(fly["train/loss"], abs=1e-4)


class DigitCount(RewardProvider):
    """A character-count reward: how many digits the completion has."""

    def score(self, samples):
        return [Reward(float(sum(ch.isdigit() for ch in s.completion))) for s in samples]


def test_online_dpo_raises_the_provider_score(tiny_model_path, tmp_path):
    prompts = write_jsonl(tmp_path / "prompts.jsonl", ({"prompt": r["prompt"]} for r in build_arithmetic(size=64)))
    held_out = write_jsonl(tmp_path / "held.jsonl",
                           ({"prompt": r["prompt"]} for r in build_arithmetic("test", size=16)))
    final = train_dpo(cfg(tiny_model_path, tmp_path / "out", prompts, held_out, pairs="online", max_steps=25,
                          batch_size=8, num_generations=4, max_new_tokens=6, eval_max_new_tokens=6, lr=1e-2,
                          beta=0.1), provider=DigitCount())
    print(f"online DPO: held-out digits {final['initial/reward_mean']:.2f} -> {final['reward_mean']:.2f}")
    assert final["pair_source"] == "online"
    assert final["reward_mean"] >= final["initial/reward_mean"] + 1.0
    assert final["train/online/pairs"] > 0


def test_online_pairs_by_compare_skip_ties():
    from rewardhub.recipes.dpo import rank_and_pair

    prompts, rows = ["a", "b"], [{}, {}]
    completions = ["1", "22", "x", "333", "y", "z", "w", "v"]  # prompt b: no digits anywhere -> a tie
    ranked = rank_and_pair(DigitCount(), prompts, rows, completions, 4, "score")
    assert ranked.pairs == [("a", "333", "x")] and ranked.stats["online/skipped"] == 1
    assert ranked.counts.tied == 1 and ranked.counts.judged == 8 and ranked.counts.failed == 0
    ranked = rank_and_pair(DigitCount(), prompts, rows, completions, 4, "compare")
    assert ranked.pairs == [("a", "333", "x")] and ranked.counts.judged == 12  # 2 prompts x 6 comparisons


class StoredPreferences(DigitCount):
    def preference_pairs(self):
        return [PreferencePair(f"{i}:", "1234", "abcd") for i in range(32)]


def test_pairs_from_the_provider(tiny_model_path, tmp_path):
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "1+1="}] * 4)
    auto = cfg(tiny_model_path, tmp_path / "auto", prompts)
    assert resolve_pair_source(auto, StoredPreferences())[0] == "provider"
    assert resolve_pair_source(auto, DigitCount())[0] == "online"
    final = train_dpo(cfg(tiny_model_path, tmp_path / "out", prompts, max_steps=10, batch_size=8),
                      provider=StoredPreferences())
    assert final["pair_source"] == "provider" and final["train_pairs"] == 32
    assert final["train/rewards/accuracies"] == 1.0 and final["train/rewards/margins"] > 0
    with pytest.raises(ConfigError, match="stores no preference pairs"):
        train_dpo(cfg(tiny_model_path, tmp_path / "none", prompts, pairs="provider"), provider=DigitCount())


def test_resume_after_interrupt_gives_the_same_weights(tiny_model_path, tmp_path, pref_files):
    train, _ = pref_files
    train_dpo(cfg(tiny_model_path, tmp_path / "straight", train, save_every=4))

    def interrupt(step, metrics):
        if step == 6:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_dpo(cfg(tiny_model_path, tmp_path / "resumed", train, save_every=4), callbacks=[interrupt])
    assert (tmp_path / "resumed" / "checkpoints" / "step-6" / "trainer_state.json").exists()
    train_dpo(cfg(tiny_model_path, tmp_path / "resumed", train, save_every=4))
    a, b = load_weights(tmp_path / "straight"), load_weights(tmp_path / "resumed")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6)


def test_gradient_accumulation_matches_a_bigger_batch(tiny_model_path, tmp_path, pref_files):
    train, _ = pref_files
    train_dpo(cfg(tiny_model_path, tmp_path / "big", train, max_steps=3, batch_size=16, lr=1e-3))
    train_dpo(cfg(tiny_model_path, tmp_path / "accum", train, max_steps=3, batch_size=4, grad_accum=4, lr=1e-3))
    a, b = load_weights(tmp_path / "big"), load_weights(tmp_path / "accum")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5)


def test_rpo_term_is_the_chosen_per_token_nll_by_hand():
    import torch

    from rewardhub.recipes.dpo import chosen_nll

    logps = torch.tensor([-3.0, -1.0])  # summed log-probs of two chosen replies
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])  # 3 and 1 reply tokens
    assert torch.allclose(chosen_nll(logps, mask, averaged=False), torch.tensor([1.0, 1.0]))
    assert torch.allclose(chosen_nll(torch.tensor([-0.5]), mask[:1], averaged=True), torch.tensor([0.5]))
