"""Loading policy, reference and reward models with their tokenizer, by path or hub id.

Everything goes through ``from_pretrained``: a hub id, a local checkpoint, or ``builtin:tiny-llama`` (built
offline by :mod:`rewardhub.tiny_model` on first use and then loaded from disk like any other checkpoint).
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rewardhub.errors import ConfigError, ModelLoadError

log = logging.getLogger(__name__)

DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass
class LoraOptions:
    """LoRA adapter settings (peft). ``r=0`` disables LoRA."""

    r: int = 0
    alpha: int = 32
    dropout: float = 0.0
    target_modules: str | list[str] = "all-linear"

    @classmethod
    def of(cls, cfg: Any) -> LoraOptions:
        """The LoRA settings of a training config (``lora_r``, ``lora_alpha``, ``lora_dropout``,
        ``lora_target_modules``: ``all-linear`` or comma-separated module names)."""
        names = str(getattr(cfg, "lora_target_modules", "all-linear"))
        targets = names if names.strip() == "all-linear" else [n.strip() for n in names.split(",") if n.strip()]
        return cls(cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, targets)


def resolve_model_path(name_or_path: str) -> str:
    """Map ``builtin:tiny-llama`` to its local directory (building it if needed); pass anything else through."""
    from rewardhub.tiny_model import BUILTIN_TINY, builtin_model_path

    if name_or_path == BUILTIN_TINY:
        return str(builtin_model_path())
    if name_or_path.startswith("builtin:"):
        raise ModelLoadError(f"unknown built-in model {name_or_path!r}; the built-in model is {BUILTIN_TINY!r}")
    check_model_available(name_or_path)
    return name_or_path


def _looks_like_path(name_or_path: str) -> bool:
    return name_or_path.startswith((".", "/", "~")) or Path(name_or_path).exists()


def check_model_available(name_or_path: str) -> None:
    """Fail fast (in seconds, not after a minute of retries) when a model can be neither read locally nor fetched.

    A local directory passes; a path that does not exist fails; a hub id passes when it is in the local cache
    or the Hub answers for it. Otherwise (``HF_HUB_OFFLINE=1`` set, the Hub unreachable, or no such model)
    it raises ModelLoadError saying so and what to do.
    """
    from rewardhub import hub

    if _looks_like_path(name_or_path):
        if not Path(name_or_path).expanduser().exists():
            raise ModelLoadError(f"cannot load model from {name_or_path!r}: the path does not exist; give a model "
                                 "directory (one with config.json), a hub id, or builtin:tiny-llama")
        return
    if hub.in_cache(name_or_path):
        return
    status, detail = hub.probe(name_or_path)
    todo = ("Pass a local model directory (--model path/to/model), or download the model first where the network "
            f"is reachable (`hf download {name_or_path}`), then run again")
    if status == hub.OFFLINE:
        raise ModelLoadError(f"model {name_or_path!r} is not a local directory and was not found in the local "
                             f"Hugging Face cache, and {detail} is set (no downloads); a hub id needs network "
                             f"access or a local cache. {todo}.")
    if status == hub.UNREACHABLE:
        raise ModelLoadError(f"model {name_or_path!r} is not a local directory or in the local Hugging Face cache, "
                             f"and the Hub cannot be reached ({detail}). {todo}.")
    if status == hub.MISSING:
        raise ModelLoadError(f"model {name_or_path!r} is not a local directory, and the Hub has no such model "
                             f"{'(' + detail + ') ' if detail else ''}(check the spelling; a private or gated model "
                             "needs `hf auth login`)")


#: Config fields that hold a model's context length, by architecture family (first one present wins).
CONTEXT_FIELDS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx",
                  "max_seq_len")


def model_context_length(name_or_path: str) -> tuple[int, str] | None:
    """(context length in tokens, the config field it came from) read from the model's config alone (no
    weights), or None when the config names none. ``builtin:tiny-llama`` is answered without building it."""
    from rewardhub.tiny_model import BUILTIN_TINY, TINY_CONFIG

    if name_or_path == BUILTIN_TINY:
        return TINY_CONFIG["max_position_embeddings"], "max_position_embeddings"
    from transformers import AutoConfig

    path = resolve_model_path(name_or_path)
    try:
        config = AutoConfig.from_pretrained(path)
    except Exception as exc:
        raise ModelLoadError(_load_hint(name_or_path, "config", exc)) from exc
    for cfg in (config, getattr(config, "text_config", None)):
        for name in CONTEXT_FIELDS:
            value = getattr(cfg, name, None) if cfg is not None else None
            if isinstance(value, int) and value > 0:
                return value, name
    return None


def check_context_length(name_or_path: str, max_length: int | None = None, max_new_tokens: int | None = None,
                         *, rl: bool = False) -> None:
    """ConfigError when the lengths asked for do not fit the model's context; reads only its config.

    Call it before the weights load. ``max_length`` alone (SFT, DPO, reward model): prompt + completion.
    ``rl=True``: RL rollouts keep ``max(1, max_length - max_new_tokens)`` prompt tokens and add up to
    ``max_new_tokens``, so that sum must fit. ``max_new_tokens`` alone (``eval``): at least one prompt token
    plus the generated ones.
    """
    found = model_context_length(name_or_path)
    if found is None:
        log.debug("no context length in the config of %s; --max-length not checked", name_or_path)
        return
    context, field_name = found
    where = f"the context of {name_or_path} ({context} tokens, {field_name} in its config)"
    problems = []
    if max_length is not None and max_length > context:
        problems.append(f"--max-length {max_length} is more than {where}; use --max-length {context} or less")
    elif rl and max_length is not None and max_new_tokens is not None:
        total = max(1, max_length - max_new_tokens) + max_new_tokens
        if total > context:
            problems.append(f"RL rollouts need prompt tokens + --max-new-tokens {max_new_tokens} = {total} tokens, "
                            f"more than {where} (prompts keep max(1, --max-length - --max-new-tokens) tokens); "
                            f"keep --max-new-tokens below --max-length {max_length}")
    elif max_length is None and max_new_tokens is not None and max_new_tokens >= context:
        problems.append(f"--max-new-tokens {max_new_tokens} leaves no room for the prompt in {where}; use "
                        f"--max-new-tokens {context - 1} or less")
    if problems:
        raise ConfigError(problems)


def check_lengths_fit(cfg: Any) -> None:
    """A training config's ``max_length`` (and, for RL, prompt + ``max_new_tokens``) against its model's context.

    Reads the model's config alone, so the recipes call it first thing, before data or weights load; it also
    fails fast on a ``model`` hub id that is neither local nor cached while the Hub is off or unreachable.
    """
    rl = getattr(cfg, "algo", None) in ("ppo", "grpo", "rloo")
    check_context_length(cfg.model, cfg.max_length, getattr(cfg, "max_new_tokens", None) if rl else None, rl=rl)


def load_tokenizer(name_or_path: str, chat_template: str | None = None):
    """Load a tokenizer and make it safe for RL: a pad token distinct from EOS, left padding for generation.

    ``chat_template``: a Jinja template file that becomes the tokenizer's chat template (a base model has
    none; conversational data needs one), saved with the final model like any tokenizer setting.
    """
    from transformers import AutoTokenizer

    path = resolve_model_path(name_or_path)
    try:
        tok = AutoTokenizer.from_pretrained(path)
    except Exception as exc:
        raise ModelLoadError(_load_hint(name_or_path, "tokenizer", exc)) from exc
    if chat_template is not None:
        try:
            tok.chat_template = Path(chat_template).expanduser().read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read --chat-template {chat_template}: {exc}") from None
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
    with warnings.catch_warnings():  # peft itself still calls transformers' deprecated name; nothing to act on
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
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
