"""LoRA runs save a merged model that needs no base, the adapter beside it; --lora-target-modules; --chat-template."""

from __future__ import annotations

import json
import shutil

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from rewardhub.cli.main import main
from rewardhub.config import SFTConfig
from rewardhub.models import LoraOptions
from rewardhub.recipes.sft import train_sft

TEMPLATE = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}<eos>{% endfor %}" \
           "{% if add_generation_prompt %}[assistant] {% endif %}"


def sft_cfg(model, out, **kw) -> SFTConfig:
    return SFTConfig(**{"model": str(model), "out": str(out), "data_args": {"size": 64}, "max_steps": 3,
                        "batch_size": 8, "lr": 1e-2, "eval_size": 4, "eval_max_new_tokens": 4, "threads": 1,
                        "lora_r": 4, "lora_alpha": 8, **kw})


def test_target_modules_parse():
    assert LoraOptions.of(SFTConfig(lora_target_modules="all-linear")).target_modules == "all-linear"
    assert LoraOptions.of(SFTConfig(lora_target_modules=" q_proj, v_proj,")).target_modules == ["q_proj", "v_proj"]


def test_a_lora_run_saves_the_merged_model_which_loads_after_the_base_is_moved(tiny_model_path, tmp_path):
    base = tmp_path / "base"
    shutil.copytree(tiny_model_path, base)
    out = tmp_path / "run"
    train_sft(sft_cfg(base, out, lora_target_modules="q_proj,v_proj"))
    adapter_cfg = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert sorted(adapter_cfg["target_modules"]) == ["q_proj", "v_proj"]
    assert not (out / "model" / "adapter_config.json").exists()  # a plain model, not an adapter
    base_weights = AutoModelForCausalLM.from_pretrained(base).state_dict()
    shutil.move(base, tmp_path / "moved")  # the base is gone from where the run found it
    merged = AutoModelForCausalLM.from_pretrained(out / "model").state_dict()
    # the merge by hand: W + (alpha / r) * B @ A, for every adapted projection; the rest unchanged
    adapter = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    checked = 0
    for key, weight in base_weights.items():
        stem = key.removesuffix(".weight")
        a_key = next((k for k in adapter if k.endswith(f"{stem}.lora_A.weight")), None)
        if a_key is None:
            torch.testing.assert_close(merged[key], weight)
            continue
        b = adapter[a_key.replace("lora_A", "lora_B")]
        torch.testing.assert_close(merged[key], weight + (8 / 4) * b @ adapter[a_key], rtol=1e-5, atol=1e-6)
        checked += 1
    assert checked == 2 * 2  # q_proj and v_proj in each of the 2 layers
    assert any(not torch.equal(merged[k], base_weights[k]) for k in base_weights)  # the adapter trained


def test_merge_can_be_turned_off_and_the_flags_reach_the_run(tiny_model_path, tmp_path, capsys):
    out = tmp_path / "adapter-only"
    code = main(["sft", "--model", str(tiny_model_path), "--out", str(out), "--max-steps", "2", "--batch-size", "8",
                 "--eval-size", "4", "--data-arg", "size=64", "--threads", "1", "--lora-r", "4",
                 "--lora-target-modules", "o_proj", "--no-merge-lora"])
    assert code == 0, capsys.readouterr().err
    config = json.loads((out / "model" / "adapter_config.json").read_text())
    assert config["target_modules"] == ["o_proj"] and (out / "adapter" / "adapter_config.json").exists()


def test_chat_template_file_is_used_for_conversational_data_and_saved(tiny_model_path, tmp_path, capsys):
    template = tmp_path / "template.jinja"
    template.write_text(TEMPLATE)
    chats = tmp_path / "chats.jsonl"
    chats.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"{i}+1="},
                                                       {"role": "assistant", "content": str(i + 1)}]}) + "\n"
                             for i in range(16)))
    out = tmp_path / "chat"
    code = main(["sft", "--model", str(tiny_model_path), "--data", str(chats), "--out", str(out), "--max-steps", "2",
                 "--batch-size", "4", "--threads", "1", "--chat-template", str(template)])
    assert code == 0, capsys.readouterr().err
    saved = AutoTokenizer.from_pretrained(out / "model")
    assert saved.chat_template == TEMPLATE
    assert saved.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False) == "[user] hi<eos>"
    code = main(["sft", "--chat-template", str(tmp_path / "missing.jinja"), "--out", str(tmp_path / "x")])
    assert code == 2 and "is not a file" in capsys.readouterr().err
