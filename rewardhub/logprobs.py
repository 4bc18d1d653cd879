"""Token log-probabilities, computed one way for every recipe: sampling, RL's old/reference passes, the value
head's forward, and DPO's sequence log-probs.

Two things make them cheap: only the positions that are scored get logits (transformers' ``logits_to_keep``,
checked by :func:`accepts_logits_to_keep`), and :func:`token_logprobs` gathers the label's
logit and subtracts a logsumexp instead of materialising a full log-softmax.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

__all__ = ["accepts_logits_to_keep", "position_ids_of", "sequence_logprobs", "token_logprobs"]


def position_ids_of(attention_mask: torch.Tensor) -> torch.LongTensor:
    """(B, L) positions that skip left padding, so a padded prompt sees the same RoPE angles as unpadded."""
    return (attention_mask.long().cumsum(dim=1) - 1).clamp_(min=0)



def accepts_logits_to_keep(model: Any) -> bool:
    """Whether ``model.forward`` takes ``logits_to_keep``, directly or via a wrapper's **kwargs (peft).

    Lets the prefill compute the vocabulary projection for the last position only instead of (B, P, V).
    """
    m = model
    for _ in range(4):
        try:
            params = inspect.signature(m.forward).parameters
        except (TypeError, ValueError):
            return False
        if "logits_to_keep" in params:
            return True
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            return False
        get_base = getattr(m, "get_base_model", None)
        inner = get_base() if callable(get_base) else None
        if inner is None or inner is m:
            return False
        m = inner
    return False


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``log_softmax(logits)[..., label]``: the log-probability of each label token, float32.

    Computed as ``logits[label] - logsumexp(logits)``, so no second ``(B, T, V)`` tensor is materialised; low
    precision logits (bf16/fp16) are upcast one sequence at a time, since logsumexp in bf16 is too coarse
    (TRL's ``selective_log_softmax`` makes the same trade-off). Labels must already be aligned with the logits
    (``logits[:, :-1]`` predicts ``input_ids[:, 1:]``); negative labels (``-100`` padding) are read as token 0,
    so mask those positions out afterwards.

    Args:
        logits: ``(B, T, V)``.
        labels: ``(B, T)`` token ids.

    Returns:
        ``(B, T)`` float32 log-probs.
    """
    if logits.shape[:-1] != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} are not aligned")
    labels = labels.clamp_min(0)
    if logits.dtype in (torch.float32, torch.float64):
        picked = logits.gather(-1, labels[..., None]).squeeze(-1)
        return (picked - torch.logsumexp(logits, dim=-1)).float()
    rows = [row.float().log_softmax(dim=-1).gather(-1, idx[:, None]).squeeze(-1) for row, idx in zip(logits, labels)]
    return torch.stack(rows)


def sequence_logprobs(
    model: Any,
    input_ids: torch.LongTensor,
    attention_mask: torch.LongTensor,
    completion_start: int,
    temperature: float = 1.0,
    position_ids: torch.LongTensor | None = None,
) -> torch.Tensor:
    """Fresh forward pass: log-probs (B, T) of ``input_ids[:, completion_start:]`` under logits/temperature.

    Used by RL for old/reference log-probs; matches :attr:`~rewardhub.generation.Rollout.logprobs` when called with
    ``rollout.input_ids``, ``rollout.attention_mask``, ``rollout.prompt_length`` and the same temperature
    (the one in :attr:`SamplingParams.logprob_temperature`), with the model in eval mode (dropout off).
    Gradients flow if the caller has them enabled; the model's mode is left untouched.

    Args:
        model: causal LM.
        input_ids: (B, L) prompt (left-padded) + completion.
        attention_mask: (B, L) 1 for real tokens.
        completion_start: column where the completion starts (P); must be >= 1.
        temperature: logits are divided by it (> 0).
        position_ids: (B, L) positions; default ``cumsum(attention_mask) - 1`` clamped at 0.

    Returns:
        (B, L - completion_start) float32 log-probs, 0 where ``attention_mask`` is 0.
    """
    if not 1 <= completion_start <= input_ids.shape[1]:
        raise ValueError(
            f"completion_start must be in [1, {input_ids.shape[1]}] (a token needs a preceding position), "
            f"got {completion_start}"
        )
    if not temperature > 0:
        raise ValueError(
            f"temperature must be > 0 for log-probs (use 1.0 for greedy rollouts), got {temperature}"
        )
    if position_ids is None:
        position_ids = position_ids_of(attention_mask)
    T = input_ids.shape[1] - completion_start
    if T == 0:
        return torch.zeros((input_ids.shape[0], 0), dtype=torch.float32, device=input_ids.device)
    extra = {"logits_to_keep": T + 1} if accepts_logits_to_keep(model) else {}
    logits = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        use_cache=False,
        **extra,
    ).logits
    logits = logits[:, -(T + 1) : -1, :]
    if temperature != 1.0:
        logits = logits / temperature
    logp = token_logprobs(logits, input_ids[:, completion_start:])
    return logp * attention_mask[:, completion_start:].to(logp.dtype)
