"""One step's rollout as tensors, the advantage estimators on it, and the masked PPO-family loss.

The rollout loop (:mod:`rewardhub.recipes.rl`) fills a :class:`RolloutBatch`; everything here is a pure
function of tensors, so the masking rules can be tested directly:

* a sample whose reward *failed* (status ``timeout``/``error``/``pending``, ``valid = False``) has its
  whole sequence masked out: zero advantage, zero weight in every loss term, no part in group or batch
  statistics (``valid`` of :mod:`rl_math`), so its gradient is exactly zero;
* every loss is a mean over the real tokens of the minibatch (token-mean), tokens after EOS excluded.

PPO builds per-token rewards (score at the last token minus ``beta * KL`` on every token) and runs GAE
against the value head; GRPO and RLOO build one reward per sequence (score minus ``beta * summed KL`` when
the KL is in the reward) and compare completions of the same prompt.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch
from torch import Tensor

from rewardhub.maths.rl import (
    aggregate,
    gae,
    grpo_advantages,
    kl_penalty,
    masked_mean,
    masked_whiten,
    ppo_policy_loss,
    ppo_value_loss,
    rloo_advantages,
    token_level_rewards,
)


@dataclass
class RolloutBatch:
    """N sequences (prompt + completion) with what the update needs. T = completion width.

    Attributes:
        input_ids, attention_mask, position_ids: (N, P + T) as generated (left-padded prompts).
        completion_start: P.
        mask: (N, T) 1 on completion tokens up to and including EOS.
        valid: (N,) False where the reward source failed: masked out of the update.
        old_logprobs: (N, T) log-probs by a fresh eval-mode forward pass at rollout time.
        ref_logprobs: (N, T) under the reference model, or None when no KL term is used.
        old_values: (N, T) value-head outputs at rollout time (PPO), else None.
        advantages: (N, T) per token (PPO) or (N,) per sequence (GRPO/RLOO).
        returns: (N, T) value targets (PPO), else None.
    """

    input_ids: Tensor
    attention_mask: Tensor
    position_ids: Tensor
    completion_start: int
    mask: Tensor
    valid: Tensor
    old_logprobs: Tensor
    ref_logprobs: Tensor | None = None
    old_values: Tensor | None = None
    advantages: Tensor | None = None
    returns: Tensor | None = None

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    @property
    def train_mask(self) -> Tensor:
        """(N, T) bool: real completion tokens of samples with a usable reward."""
        return self.mask.bool() & self.valid.bool()[:, None]

    def select(self, index: Tensor) -> RolloutBatch:
        """The rows ``index`` of every tensor (a minibatch)."""
        picked = {f.name: getattr(self, f.name) for f in fields(self)}
        for name, value in picked.items():
            if isinstance(value, Tensor):
                picked[name] = value[index]
        return replace(self, **picked)


def adjusted_scores(values: Tensor, eos_reached: Tensor, valid: Tensor, missing_eos_penalty: float | None) -> Tensor:
    """Provider scores with TRL's ``missing_eos_penalty`` subtracted where no EOS was emitted; 0 if failed."""
    scores = values.float().clone()
    if missing_eos_penalty is not None:
        scores = scores - missing_eos_penalty * (~eos_reached.bool()).float()
    return torch.where(valid.bool(), scores, torch.zeros_like(scores))


def _whiten(x: Tensor, mask: Tensor, shift_mean: bool) -> Tensor:
    """:func:`masked_whiten`, but a no-op (instead of an error) with fewer than two masked entries."""
    if int(mask.bool().sum()) < 2:
        return torch.where(mask.bool(), x, torch.zeros_like(x))
    return masked_whiten(x, mask, shift_mean=shift_mean)


def token_kl(logprobs: Tensor, ref_logprobs: Tensor | None, mask: Tensor, estimator: str) -> Tensor:
    """(N, T) per-token KL(policy || reference) estimate, 0 outside ``mask`` (all 0 without a reference)."""
    if ref_logprobs is None:
        return torch.zeros_like(logprobs)
    return kl_penalty(logprobs, ref_logprobs, estimator, mask=mask)


def ppo_advantages(batch: RolloutBatch, scores: Tensor, kl: Tensor, kl_coef: float, gamma: float, lam: float,
                   whiten_rewards: bool = False, whiten_advantages: bool = True) -> tuple[Tensor, Tensor, Tensor]:
    """Per-token rewards, then GAE against the rollout-time values.

    Returns:
        ``(advantages, returns, rewards)``, each (N, T) and 0 outside ``batch.train_mask``.
    """
    m = batch.train_mask
    rewards = token_level_rewards(scores, kl, batch.mask, kl_coef)  # placement needs every row's last token
    rewards = torch.where(m, rewards, torch.zeros_like(rewards))
    if whiten_rewards:
        rewards = _whiten(rewards, m, shift_mean=False)
    advantages, returns = gae(rewards, batch.old_values, m, gamma=gamma, lam=lam)
    if whiten_advantages:
        advantages = _whiten(advantages, m, shift_mean=True)
    return advantages, returns, rewards


def group_advantages(algo: str, batch: RolloutBatch, scores: Tensor, kl: Tensor, kl_coef: float, group_size: int,
                     scale_rewards: bool = True, whiten_rewards: bool = False) -> tuple[Tensor, Tensor]:
    """GRPO / RLOO advantages, one per sequence; failed samples are left out of their group.

    Returns:
        ``(advantages (N,), sequence rewards (N,))``; the reward is ``score - kl_coef * sum_t kl_t``.
    """
    valid = batch.valid.bool()
    rewards = scores - kl_coef * (kl * batch.mask).sum(dim=1)
    rewards = torch.where(valid, rewards, torch.zeros_like(rewards))
    if whiten_rewards:
        rewards = _whiten(rewards, valid, shift_mean=False)
    if algo == "grpo":
        adv = grpo_advantages(rewards, group_size, scale_by_std=scale_rewards, valid=valid)
    elif algo == "rloo":
        adv = rloo_advantages(rewards, group_size, valid=valid)
    else:
        raise ValueError(f"no group advantage estimator for algo {algo!r}")
    return adv, rewards


@dataclass
class LossSettings:
    clip_eps: float = 0.2
    clip_eps_high: float | None = None
    vf_coef: float = 0.1
    clip_value: float | None = 0.2
    kl_loss_coef: float = 0.0


def rows_with_gradient(mb: RolloutBatch, s: LossSettings, has_values: bool) -> Tensor:
    """(n,) bool: the rows whose terms in :func:`rl_loss` can move the weights; the update may skip the rest.

    A row without a usable token (failed reward, empty completion) is masked out of every term. Without a
    value loss and without a KL loss term, a row whose advantages are all exactly zero (a GRPO/RLOO group
    whose samples all scored the same) contributes ``max(-0 * r, -0 * clip(r)) = 0`` per token for *any*
    ratio ``r``, so its gradient is exactly zero in every epoch. Such rows are common in verifier-scored RL
    (all-wrong groups early, all-right ones late; DAPO's "zero-variance groups"), and their forward and
    backward passes are pure waste. Dropping them changes nothing else as long as the loss keeps its
    normaliser (the token count of the whole minibatch), which :func:`rewardhub.recipes.rl.minibatch_step`
    does.
    """
    live = mb.train_mask.any(dim=1)
    if has_values or (s.kl_loss_coef > 0 and mb.ref_logprobs is not None):
        return live
    adv = mb.advantages
    if adv is None:
        return live
    if adv.dim() == 1:
        return live & (adv != 0)
    return (mb.train_mask & (adv != 0)).any(dim=1)


def rl_loss(logprobs: Tensor, values: Tensor | None, mb: RolloutBatch, s: LossSettings,
            token_weights: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """Clipped policy loss (+ ``vf_coef`` x clipped value loss, + ``kl_loss_coef`` x k3 KL).

    Args:
        logprobs: (n, T) current log-probs of ``mb``'s completion tokens (with grad).
        values: (n, T) current values (with grad), or None without a critic.
        mb: the minibatch (advantages, old log-probs/values, returns, masks).
        s: coefficients and clip ranges.
        token_weights: (n, T) from :func:`loss_token_weights`: every term is then ``sum(weights * loss)``;
            ``None``: every term is the token-mean over ``mb``.

    Returns:
        ``(loss, stats)``; stats are detached token-means (whatever the weights). Rows with ``valid = False``
        get no gradient.
    """
    m = mb.train_mask
    adv = mb.advantages
    adv = torch.where(mb.valid.bool() if adv.dim() == 1 else m, adv, torch.zeros_like(adv))
    loss, pstats = ppo_policy_loss(logprobs, mb.old_logprobs, adv, m, s.clip_eps, s.clip_eps_high, token_weights)
    stats = {"policy/loss": pstats["loss_token_mean"], "policy/clipfrac": pstats["clipfrac"],
             "policy/approx_kl": pstats["approx_kl"], "policy/ratio_mean": pstats["ratio_mean"]}
    if values is not None and mb.returns is not None:
        vloss, vstats = ppo_value_loss(values, mb.old_values, mb.returns, m, s.clip_value, token_weights)
        loss = loss + s.vf_coef * vloss
        stats.update({"value/loss": vstats["loss_token_mean"], "value/clipfrac": vstats["value_clipfrac"]})
    if s.kl_loss_coef > 0 and mb.ref_logprobs is not None:
        kl_tok = kl_penalty(logprobs, mb.ref_logprobs, "k3", mask=m)
        loss = loss + s.kl_loss_coef * aggregate(kl_tok, m, token_weights)
        stats["kl/loss_term"] = masked_mean(kl_tok.detach(), m)
    return loss, stats
