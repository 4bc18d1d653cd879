"""The policy, its value function, and the one forward pass PPO needs from them.

:class:`ActorCritic` bundles the causal LM (the policy), an optional separate critic trunk and the value head
in one ``nn.Module``, so accelerate prepares (DDP/FSDP-wraps) and checkpoints all of them together and one
optimizer steps them. Its ``forward`` returns, for the completion tokens of a left-padded batch, the
log-probs of the tokens under ``logits / temperature``, the values, and (optionally) the entropies.

Conventions (Huang et al., "The N implementation details of RLHF with PPO"; TRL):

* the value head is ``Linear(hidden, 1)`` on the last hidden state, initialised to zero weight and bias, so
  every value starts at 0 and the first advantages are the returns themselves;
* the value of completion token ``t`` is read at the position that *predicts* it (``P - 1 + t``), i.e. the
  state before the token is emitted, aligned with its log-prob.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from rewardhub.logprobs import accepts_logits_to_keep, token_logprobs
from rewardhub.maths.rl import entropy_from_logits


class ValueHead(nn.Module):
    """``Linear(hidden_size, 1)`` with zero weight and bias: outputs 0 for any input until trained."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.summary = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.summary.weight)
        nn.init.zeros_(self.summary.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """(B, T, H) hidden states -> (B, T) float32 values."""
        return self.summary(hidden.to(self.summary.weight.dtype)).squeeze(-1).float()


def hidden_size_of(model: Any) -> int:
    config = getattr(model, "config", None)
    size = getattr(config, "hidden_size", None) or getattr(getattr(config, "text_config", None), "hidden_size", None)
    if not size:
        raise ValueError(f"cannot find hidden_size in the config of {type(model).__name__} to size the value head")
    return int(size)


class ActorCritic(nn.Module):
    """Policy + (optional) value function, trained by one optimizer.

    Args:
        policy: the causal LM (possibly a peft model).
        value_head: a :class:`ValueHead`, or None for critic-free algorithms (GRPO, RLOO).
        critic: None to put the value head on the policy trunk; else a separate transformer trunk (a causal
            LM's ``base_model``, without LM head) whose last hidden state feeds the value head.
    """

    def __init__(self, policy: nn.Module, value_head: ValueHead | None = None, critic: nn.Module | None = None):
        super().__init__()
        if critic is not None and value_head is None:
            raise ValueError("a separate critic needs a value head")
        self.policy = policy
        self.value_head = value_head
        self.critic = critic

    @property
    def has_values(self) -> bool:
        return self.value_head is not None

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                completion_start: int, temperature: float = 1.0,
                with_entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Log-probs, values and entropies of the completion tokens ``input_ids[:, completion_start:]``.

        Args:
            input_ids: (B, P + T) left-padded prompt + completion (a :class:`~rewardhub.generation.Rollout`'s).
            attention_mask: (B, P + T).
            position_ids: (B, P + T), the generation's (``cumsum(mask) - 1``), so RoPE angles match sampling.
            completion_start: P.
            temperature: the sampling temperature; log-probs are ``log_softmax(logits / temperature)``.
            with_entropy: also return the (detached) entropy of each position's distribution.

        Returns:
            ``(logprobs (B, T) float32, values (B, T) float32 or None, entropy (B, T) or None)``; unmasked:
            the caller applies the completion mask.
        """
        T = input_ids.shape[1] - completion_start
        want_hidden = self.value_head is not None and self.critic is None
        # Only the T + 1 last positions' logits are needed: with a 100k+ vocabulary the prompt's logits would
        # dominate memory. `logits_to_keep` is transformers' own switch for that.
        extra = {"logits_to_keep": T + 1} if accepts_logits_to_keep(self.policy) else {}
        out = self.policy(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                          use_cache=False, output_hidden_states=want_hidden, **extra)
        logits = out.logits[:, -(T + 1): -1, :].float()
        if temperature != 1.0:
            logits = logits / temperature
        targets = input_ids[:, completion_start:]
        logprobs = token_logprobs(logits, targets)
        entropy = None
        if with_entropy:
            with torch.no_grad():
                entropy = entropy_from_logits(logits.detach())
        values = None
        if self.value_head is not None:
            if self.critic is None:
                hidden = out.hidden_states[-1]
            else:
                hidden = self.critic(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                               use_cache=False).last_hidden_state
            values = self.value_head(hidden[:, completion_start - 1: completion_start - 1 + T, :])
        return logprobs, values, entropy
