"""Loading policy, reference and reward models with their tokenizer, by path or hub id.

Everything goes through ``from_pretrained``: a hub id, a local checkpoint, or ``builtin:tiny-llama`` (built
offline by :mod:`rewardhub.tiny_model` on first use and then loaded from disk like any other checkpoint).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rewardhub.errors import ModelLoadError

log = logging.getLogger(__name__)

DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass
class LoraOptions:
    """LoRA adapter settings (peft). ``r=0`` disables LoRA."""

    r: int = 0
    alpha: int = 32
    dropout: float = 0.0
    target_modules: str = "all-linear"


def resolve_model_path(name_or_path: str) -> str:
    """Map ``builtin:tiny-llama`` to its local directory (building it if needed); pass anything else through."""
    from rewardhub.tiny_model import BUILTIN_TINY, builtin_model_path

    if name_or_path == BUILTIN_TINY:
        return str(builtin_model_path())
    if name_or_path.startswith("builtin:"):
        raise ModelLoadError(f"unknown built-in model {name_or_path!r}; the built-in model is {BUILTIN_TINY!r}")
    return name_or_path


def load_tokenizer(name_or_path: str):
    """Load a tokenizer and make it safe for RL: a pad token distinct from EOS, left padding for generation."""
    from transformers import AutoTokenizer

    path = resolve_model_path(name_or_path)
    try:
        tok = AutoTokenizer.from_pretrained(path)
    except Exception as exc:
        raise ModelLoadError(_load_hint(name_or_path, "tokenizer", exc)) from exc
    if tok.eos_token_id is None:
        raise ModelLoadError(f"tokenizer of {name_or_path!r} has no EOS token; set eos_token in its tokenizer_config")
    if tok.pad_token_id is None or tok.pad_token_id == tok.eos_token_id:
        # Padding with EOS makes "stop here" indistinguishable from "nothing here" (a known PPO pitfall).
        tok.add_special_tokens({"pad_token": "<|rewardhub_pad|>"})
        log.info("added a dedicated pad token to the tokenizer of %s", name_or_path)
    tok.padding_side = "left"
    return tok


def load_model(name_or_path: str, *, dtype: str = "auto", device: str | None = None,
               gradient_checkpointing: bool = False, lora: LoraOptions | None = None,
               tokenizer=None, kind: str = "causal-lm", **kwargs: Any):
    """Load a causal LM (or a sequence classifier with ``kind="reward"``) ready for training.

    Args:
        name_or_path: hub id, local directory, or ``builtin:tiny-llama``.
        dtype: ``auto`` (float32 on CPU, the checkpoint's dtype elsewhere), ``float32``, ``bfloat16``, ``float16``.
        device: where to put the model; None leaves it to accelerate (CPU until prepared).
        gradient_checkpointing: trade compute for activation memory.
        lora: wrap the model in a peft LoRA adapter when ``lora.r > 0``.
        tokenizer: the tokenizer; if it gained a pad token, embeddings are resized to match.
        kind: ``causal-lm`` or ``reward`` (``AutoModelForSequenceClassification`` with one label).

    Raises:
        ModelLoadError: with what was tried and how to fix it.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    if dtype not in DTYPES:
        raise ModelLoadError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    path = resolve_model_path(name_or_path)
    torch_dtype = torch.float32 if dtype == "auto" and (device in (None, "cpu")) else dtype
    if isinstance(torch_dtype, str) and torch_dtype != "auto":
        torch_dtype = getattr(torch, torch_dtype)
    cls = AutoModelForSequenceClassification if kind == "reward" else AutoModelForCausalLM
    if kind == "reward":
        kwargs.setdefault("num_labels", 1)
    hf_logging.disable_progress_bar()
    try:
        model = cls.from_pretrained(path, dtype=torch_dtype, **kwargs)
    except Exception as exc:
        raise ModelLoadError(_load_hint(name_or_path, "model", exc)) from exc
    if tokenizer is not None:
        if len(tokenizer) > model.get_input_embeddings().num_embeddings:
            model.resize_token_embeddings(len(tokenizer))
        model.config.pad_token_id = tokenizer.pad_token_id
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.pad_token_id = tokenizer.pad_token_id
    if gradient_checkpointing:
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.20 renamed it
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if lora is not None and lora.r > 0:
        model = apply_lora(model, lora, task_type="SEQ_CLS" if kind == "reward" else "CAUSAL_LM")
    if device is not None:
        model.to(device)
    return model


def apply_lora(model, lora: LoraOptions, task_type: str = "CAUSAL_LM"):
    """Wrap ``model`` in a LoRA adapter; with it, the adapter-disabled base serves as the reference model."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                        target_modules=lora.target_modules, task_type=task_type)
    return get_peft_model(model, config)


def load_model_and_tokenizer(name_or_path: str, **kwargs):
    tokenizer = load_tokenizer(name_or_path)
    return load_model(name_or_path, tokenizer=tokenizer, **kwargs), tokenizer


def disable_dropout(model) -> None:
    """Set every dropout probability to 0: RL log-prob ratios must compare like with like."""
    import torch

    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


def _load_hint(name_or_path: str, what: str, exc: Exception) -> str:
    path = Path(name_or_path)
    if name_or_path.startswith((".", "/", "~")) or path.exists():
        if not path.exists():
            return f"cannot load {what} from {name_or_path!r}: the path does not exist"
        return f"cannot load {what} from {name_or_path!r}: {type(exc).__name__}: {exc}"
    return (f"cannot load {what} {name_or_path!r}: {type(exc).__name__}: {exc}. It is not a local directory; "
            "as a hub id it needs network access or a local cache. Use a local path or builtin:tiny-llama.")
