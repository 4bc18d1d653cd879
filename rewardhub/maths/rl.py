"""The maths of on-policy RL for language models: PPO (with a value head), GRPO and RLOO.

Every function here is a small pure function on tensors, with no model, optimiser or trainer state, so each
one can be tested against numbers worked out by hand. The conventions follow "The N Implementation Details
of RLHF with PPO" (Huang, Liu, von Werra, 2023/2024), which reproduces OpenAI's ``lm-human-preferences``:

* Tensors are laid out ``(B, T)``: ``B`` responses, ``T`` response positions (the prompt is not included).
* ``mask`` is 1 on real response tokens (up to and including EOS) and 0 on padding and on anything after
  EOS. It may be ``bool`` or floating point. Every reduction is over masked tokens only, and values outside
  the mask never reach a result (they are selected away with :func:`torch.where`, not multiplied by 0,
  so a ``nan``/``inf`` in padding cannot leak into a mean).
* The reward is the sequence score placed at the *last real* token, plus a per-token KL penalty against the
  reference policy on every real token (Ziegler et al. 2019; InstructGPT; TRL; verl's ``naive`` reward
  manager).

Functions that must inspect data values to fail clearly (empty masks where a statistic is undefined, groups
that do not divide the batch) raise :class:`ValueError`; the check costs one device sync, paid once per batch.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from rewardhub.maths.choices import KL_ESTIMATORS, LOSS_AGG_MODES

__all__ = [
    "KL_ESTIMATORS",
    "LOSS_AGG_MODES",
    "AdaptiveKLController",
    "FixedKLController",
    "adjusted_scores",
    "aggregate",
    "entropy_from_logits",
    "explained_variance",
    "gae",
    "grpo_advantages",
    "kl_penalty",
    "loss_token_weights",
    "masked_mean",
    "masked_var",
    "masked_whiten",
    "ppo_policy_loss",
    "ppo_value_loss",
    "rloo_advantages",
    "token_kl",
    "token_level_rewards",
]

# Bound on |log ratio| before exponentiating. exp(20) ~ 4.9e8 is finite in fp16/bf16/fp32, so a garbage
# log-prob on a padding position cannot turn into inf (and inf * 0 = nan in the backward pass). The same
# bound is used by verl (`core_algos.compute_policy_loss`, `kl_penalty`). A real token with |log ratio| > 20
# is so far off-policy that PPO clipping has already zeroed or capped its contribution.
_LOG_RATIO_BOUND = 20.0


# --------------------------------------------------------------------------------------------- masked stats


def _as_mask(mask: Tensor, like: Tensor) -> Tensor:
    if mask.shape != like.shape:
        raise ValueError(f"mask has shape {tuple(mask.shape)} but the values have shape {tuple(like.shape)}")
    return mask.bool()


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of ``x`` over the positions where ``mask`` is set.

    Args:
        x: Values, any shape (typically ``(B, T)``).
        mask: Same shape as ``x``; nonzero/True marks a position that counts.
        dim: Reduce over this dimension only (e.g. ``dim=1`` for a per-sequence mean, shape ``(B,)``).
            ``None`` reduces over everything and returns a scalar.

    Returns:
        The masked mean. Where the mask is empty (a row with no real token, or an all-zero mask) the result
        is **0**, not ``nan``: an empty minibatch then contributes a zero loss and no gradient instead of
        poisoning the optimiser state. Callers that need an error on empty data must check themselves.
    """
    m = _as_mask(mask, x)
    total = torch.where(m, x, torch.zeros((), dtype=x.dtype, device=x.device))
    if dim is None:
        return total.sum() / m.sum().clamp_min(1).to(x.dtype)
    return total.sum(dim) / m.sum(dim).clamp_min(1).to(x.dtype)


def masked_var(x: Tensor, mask: Tensor, unbiased: bool = True) -> Tensor:
    """Variance of ``x`` over all masked positions (a scalar).

    Args:
        x: Values, any shape.
        mask: Same shape as ``x``.
        unbiased: Apply Bessel's correction ``n / (n - 1)``, as TRL's ``masked_var`` does by default.

    Returns:
        Scalar variance.

    Raises:
        ValueError: Fewer than 1 masked element (or fewer than 2 with ``unbiased=True``): the variance is
            undefined, and silently returning 0 or inf would make whitening blow up or do nothing.
    """
    m = _as_mask(mask, x)
    n = int(m.sum())
    if n < (2 if unbiased else 1):
        raise ValueError(
            f"masked_var needs at least {2 if unbiased else 1} masked element(s), got {n}; "
            "check that the batch has real response tokens"
        )
    mean = masked_mean(x, m)
    var = masked_mean((x - mean) ** 2, m)
    if unbiased:
        var = var * (n / (n - 1))
    return var


def masked_whiten(x: Tensor, mask: Tensor, shift_mean: bool = True) -> Tensor:
    """Normalise ``x`` to unit variance (and, by default, zero mean) over the masked positions.

    Used twice in PPO (Huang et al., "N implementation details", details on reward/advantage whitening):
    advantages are whitened with ``shift_mean=True``; rewards are optionally whitened with
    ``shift_mean=False``, which rescales them but keeps their mean, so the overall reward level (e.g. a
    net-negative KL-penalised episode) is not turned into a zero-mean signal (lm-human-preferences, TRL).

    Follows lm-human-preferences and TRL exactly: ``(x - mean) * rsqrt(var + 1e-8)`` with unbiased
    variance, and with ``shift_mean=False`` the *original* mean is added back:
    ``(x - mean) * rsqrt(var + 1e-8) + mean``.

    Args:
        x: Values, e.g. advantages ``(B, T)``.
        mask: Same shape as ``x``.
        shift_mean: ``True`` for zero-mean output (advantages), ``False`` to keep the mean (rewards).

    Returns:
        Whitened tensor of the same shape, 0 outside the mask.
    """
    m = _as_mask(mask, x)
    mean = masked_mean(x, m)
    var = masked_var(x, m, unbiased=True)
    whitened = (x - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(m, whitened, torch.zeros((), dtype=x.dtype, device=x.device))


# ------------------------------------------------------------------------------------------- KL and rewards


def kl_penalty(
    logprobs: Tensor, ref_logprobs: Tensor, estimator: str = "k1", mask: Tensor | None = None
) -> Tensor:
    """Per-token estimate of KL(pi || ref) from tokens sampled from pi.

    With ``log_ratio = logp - logq`` (``p`` the policy, ``q`` the reference) and
    ``r = q/p = exp(-log_ratio)``, the three estimators of Schulman, "Approximating KL Divergence"
    (2020, joschu.net) are:

    * ``k1 = log_ratio``: unbiased, high variance, can be negative per token. The classic RLHF per-token
      penalty (InstructGPT, TRL, OpenRLHF's default).
    * ``k2 = 0.5 * log_ratio**2``: biased but low variance, always >= 0.
    * ``k3 = (r - 1) - log r``: unbiased and always >= 0 (since ``log r <= r - 1``); GRPO's KL term.

    Args:
        logprobs: ``(B, T)`` log-probs of the sampled tokens under the policy.
        ref_logprobs: ``(B, T)`` log-probs of the same tokens under the reference model.
        estimator: One of ``"k1"``, ``"k2"``, ``"k3"``.
        mask: Optional ``(B, T)``; if given, the result is 0 outside it.

    Returns:
        ``(B, T)`` per-token KL estimates.

    Raises:
        ValueError: Unknown estimator.
    """
    if estimator not in KL_ESTIMATORS:
        raise ValueError(
            f"unknown KL estimator {estimator!r}; valid estimators are {', '.join(KL_ESTIMATORS)}"
        )
    log_ratio = logprobs - ref_logprobs
    if estimator == "k1":
        kl = log_ratio
    elif estimator == "k2":
        kl = 0.5 * log_ratio**2
    else:
        # log r = -log_ratio, so k3 = expm1(log r) - log r; expm1 keeps precision when pi ~ ref.
        log_r = (-log_ratio).clamp(-_LOG_RATIO_BOUND, _LOG_RATIO_BOUND)
        kl = torch.expm1(log_r) - log_r
    if mask is not None:
        kl = torch.where(_as_mask(mask, kl), kl, torch.zeros((), dtype=kl.dtype, device=kl.device))
    return kl


def _last_token_index(mask: Tensor) -> Tensor:
    """Index of the last set position in each row of a ``(B, T)`` mask; raises on empty rows."""
    m = mask.bool()
    empty = ~m.any(dim=1)
    if bool(empty.any()):
        rows = empty.nonzero().flatten().tolist()
        raise ValueError(
            f"rows {rows} of the response mask are empty: a score needs at least one real response token "
            "(keep the EOS token inside the mask)"
        )
    positions = torch.arange(m.shape[1], device=m.device).expand_as(m)
    return torch.where(m, positions, -1).max(dim=1).values


def adjusted_scores(values: Tensor, eos_reached: Tensor, valid: Tensor, missing_eos_penalty: float | None) -> Tensor:
    """Provider scores with TRL's ``missing_eos_penalty`` subtracted where no EOS was emitted; 0 if failed."""
    scores = values.float().clone()
    if missing_eos_penalty is not None:
        scores = scores - missing_eos_penalty * (~eos_reached.bool()).float()
    return torch.where(valid.bool(), scores, torch.zeros_like(scores))


def token_kl(logprobs: Tensor, ref_logprobs: Tensor | None, mask: Tensor, estimator: str) -> Tensor:
    """(N, T) per-token KL(policy || reference) estimate, 0 outside ``mask`` (all 0 without a reference)."""
    if ref_logprobs is None:
        return torch.zeros_like(logprobs)
    return kl_penalty(logprobs, ref_logprobs, estimator, mask=mask)


def token_level_rewards(scores: Tensor, kl: Tensor, mask: Tensor, kl_coef: float) -> Tensor:
    """Build PPO's per-token reward: a KL penalty on every real token plus the score at the last one.

    ``r_t = -kl_coef * kl_t`` on real tokens, and the sequence score (reward model, verifier, judge) is added
    at the last real token, which is the EOS token when the response finished (Ziegler et al. 2019;
    InstructGPT; Huang et al. "N+ implementation details": reward taken at EOS; verl ``naive`` reward
    manager: ``reward[i, valid_len - 1]``). Padding gets 0.

    Args:
        scores: ``(B,)`` one scalar score per response.
        kl: ``(B, T)`` per-token KL estimate (see :func:`kl_penalty`).
        mask: ``(B, T)`` response mask. Need not be a contiguous prefix; the last set position is used.
        kl_coef: The KL coefficient beta (e.g. ``AdaptiveKLController.value``).

    Returns:
        ``(B, T)`` rewards.

    Raises:
        ValueError: A row has no real token (there is nowhere to put its score), or shapes disagree.
    """
    m = _as_mask(mask, kl)
    if scores.shape != (kl.shape[0],):
        raise ValueError(f"scores must have shape ({kl.shape[0]},), got {tuple(scores.shape)}")
    last = _last_token_index(m)
    rewards = torch.where(m, -kl_coef * kl, torch.zeros((), dtype=kl.dtype, device=kl.device))
    rows = torch.arange(kl.shape[0], device=kl.device)
    rewards[rows, last] += scores.to(rewards.dtype)
    return rewards


# ------------------------------------------------------------------------------------------------ advantages


def gae(
    rewards: Tensor, values: Tensor, mask: Tensor, gamma: float = 1.0, lam: float = 0.95
) -> tuple[Tensor, Tensor]:
    """Generalised Advantage Estimation (Schulman et al. 2016) over response tokens.

    Reverse recursion over real tokens::

        delta_t = r_t + gamma * V_{t+1} - V_t
        A_t     = delta_t + gamma * lam * A_{t+1}

    with ``V = 0`` and ``A = 0`` after the last real token (the episode ends at EOS; the value head's output
    on padding is never used). Masked positions are skipped, not treated as steps: the running value and
    advantage are carried through them unchanged, so a hole in the mask (e.g. tool output in a multi-turn
    rollout, as in verl's ``compute_gae_advantage_return``) makes the next *real* token count as ``t + 1``.
    For the usual right-padded mask this is exactly the textbook definition.

    Defaults: ``gamma=1`` (no discounting within a response, InstructGPT / TRL / OpenRLHF / verl) and
    ``lam=0.95`` (InstructGPT, TRL, ReFT); OpenRLHF and verl default to ``lam=1``.

    Args:
        rewards: ``(B, T)`` per-token rewards (see :func:`token_level_rewards`).
        values: ``(B, T)`` value-head predictions ``V_t`` (detached; from rollout time).
        mask: ``(B, T)`` response mask.
        gamma: Discount factor.
        lam: GAE lambda (bias/variance trade-off; 1 = Monte-Carlo returns minus baseline).

    Returns:
        ``(advantages, returns)``, both ``(B, T)`` and 0 outside the mask; ``returns = advantages + values``
        on real tokens (the value-head target). Advantages are *not* whitened: call :func:`masked_whiten`.
    """
    m = _as_mask(mask, rewards)
    if values.shape != rewards.shape:
        raise ValueError(f"values have shape {tuple(values.shape)}, rewards {tuple(rewards.shape)}")
    rewards, values = rewards.detach(), values.detach()
    zero = torch.zeros((), dtype=rewards.dtype, device=rewards.device)
    next_value = torch.zeros(rewards.shape[0], dtype=rewards.dtype, device=rewards.device)
    next_adv = torch.zeros_like(next_value)
    advantages = torch.zeros_like(rewards)
    for t in reversed(range(rewards.shape[1])):
        real = m[:, t]
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        adv_t = delta + gamma * lam * next_adv
        next_adv = torch.where(real, adv_t, next_adv)
        next_value = torch.where(real, values[:, t], next_value)
        advantages[:, t] = torch.where(real, adv_t, zero)
    returns = torch.where(m, advantages + values, zero)
    return advantages, returns


def _group_view(scores: Tensor, group_size: int, valid: Tensor | None) -> tuple[Tensor, Tensor]:
    if scores.dim() != 1:
        raise ValueError(f"scores must be 1-D (N,), got shape {tuple(scores.shape)}")
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    n = scores.shape[0]
    if n % group_size != 0:
        raise ValueError(
            f"{n} scores do not split into groups of {group_size}: scores must be laid out as consecutive "
            "groups of group_size completions of the same prompt"
        )
    if valid is None:
        valid = torch.ones_like(scores, dtype=torch.bool)
    elif valid.shape != scores.shape:
        raise ValueError(f"valid has shape {tuple(valid.shape)}, scores {tuple(scores.shape)}")
    return scores.view(-1, group_size), valid.bool().view(-1, group_size)


def grpo_advantages(
    scores: Tensor,
    group_size: int,
    scale_by_std: bool = True,
    eps: float = 1e-4,
    valid: Tensor | None = None,
) -> Tensor:
    """GRPO's group-relative advantage (Shao et al. 2024, DeepSeekMath), one value per completion.

    ``A_i = (s_i - mean_g) / (std_g + eps)`` where ``g`` is the group of ``group_size`` completions sampled
    for the same prompt; with ``scale_by_std=False`` it is just ``s_i - mean_g`` (Dr. GRPO, Liu et al. 2025,
    argue std-scaling over-weights near-unanimous groups). The advantage is broadcast over all tokens of the
    completion by the caller (:func:`ppo_policy_loss` accepts ``(B,)`` advantages).

    The std is the **unbiased** sample std (divides by ``k - 1``), matching TRL's ``GRPOTrainer`` which calls
    ``torch.std`` with its default correction, so our numbers agree with the most common reference. A group
    with all-equal scores has std 0 and gets advantage 0 (``0 / eps``). ``eps=1e-4`` is TRL's value.

    Args:
        scores: ``(N,)`` scores laid out as ``N / group_size`` consecutive groups.
        group_size: Completions per prompt (TRL ``num_generations``).
        scale_by_std: Divide by the group std.
        eps: Added to the std before dividing.
        valid: Optional ``(N,)`` bool. Invalid samples (a reward source that timed out or crashed, see
            ``rewardhub.rewards.Status``) are left out of their group's mean and std and get advantage 0, so
            infrastructure failures neither train the policy nor shift the baseline of the others. A group
            with a single valid sample gets advantage 0 for it (no baseline to compare against).

    Returns:
        ``(N,)`` advantages.

    Raises:
        ValueError: ``N`` is not a multiple of ``group_size``, or shapes disagree.
    """
    s, v = _group_view(scores, group_size, valid)
    zero = torch.zeros((), dtype=s.dtype, device=s.device)
    k = v.sum(dim=1, keepdim=True).to(s.dtype)
    s_valid = torch.where(v, s, zero)
    mean = s_valid.sum(dim=1, keepdim=True) / k.clamp_min(1)
    centred = torch.where(v, s - mean, zero)
    if scale_by_std:
        var = (centred**2).sum(dim=1, keepdim=True) / (k - 1).clamp_min(1)
        centred = centred / (var.sqrt() + eps)
    return centred.reshape(-1)


def rloo_advantages(scores: Tensor, group_size: int, valid: Tensor | None = None) -> Tensor:
    """REINFORCE Leave-One-Out advantage (Kool et al. 2019; Ahmadian et al. 2024, "Back to Basics").

    ``A_i = s_i - mean_{j != i} s_j``: each completion's baseline is the mean score of the *other*
    completions of the same prompt, which keeps the baseline independent of ``s_i`` (so the policy-gradient
    estimate stays unbiased). Algebraically ``A_i = k / (k - 1) * (s_i - mean_g)`` for ``k`` valid samples.

    Args:
        scores: ``(N,)`` scores laid out as ``N / group_size`` consecutive groups.
        group_size: Completions per prompt.
        valid: Optional ``(N,)`` bool; invalid samples are excluded from the others' baselines and get 0.

    Returns:
        ``(N,)`` advantages; 0 for every sample of a group with fewer than 2 valid samples (no baseline).

    Raises:
        ValueError: ``N`` is not a multiple of ``group_size``, or shapes disagree.
    """
    s, v = _group_view(scores, group_size, valid)
    zero = torch.zeros((), dtype=s.dtype, device=s.device)
    k = v.sum(dim=1, keepdim=True).to(s.dtype)
    total = torch.where(v, s, zero).sum(dim=1, keepdim=True)
    baseline = (total - s) / (k - 1).clamp_min(1)
    adv = torch.where(v & (k >= 2), s - baseline, zero)
    return adv.reshape(-1)


# ---------------------------------------------------------------------------------------------------- losses



def loss_token_weights(mask: Tensor, mode: str, n_tokens: float, n_seqs: float, max_tokens: int) -> Tensor:
    """``(B, T)`` weights such that ``sum(weights * token_loss)`` is the minibatch loss under ``mode``.

    The normalisers are those of the *whole* minibatch (all accumulation chunks, all processes), passed in,
    so splitting a minibatch into chunks, or leaving rows out whose loss is zero, does not change the
    gradient:

    * ``token-mean`` (DAPO; TRL ``dapo``): every token weighs ``1 / n_tokens``, long answers count more.
    * ``seq-mean-token-mean`` (the original GRPO; TRL ``grpo``): each sequence's token-mean, then the mean
      over ``n_seqs`` sequences: a token of a short answer weighs more (the length bias Dr. GRPO points out).
    * ``seq-mean-token-sum``: each sequence's token sum, mean over sequences.
    * ``seq-mean-token-sum-norm`` (Dr. GRPO; TRL ``dr_grpo``): token sum over ``n_seqs * max_tokens``, a
      constant, so neither the length nor the batch's token count rescales a token's gradient.

    Args:
        mask: ``(B, T)`` tokens that count (completion tokens of usable samples).
        mode: one of :data:`LOSS_AGG_MODES`.
        n_tokens: masked tokens in the whole minibatch.
        n_seqs: sequences with at least one masked token in the whole minibatch.
        max_tokens: the generation budget (``max_new_tokens``), for ``seq-mean-token-sum-norm``.
    """
    m = mask.float()
    if mode == "token-mean":
        return m / max(n_tokens, 1.0)
    if mode == "seq-mean-token-mean":
        return m / m.sum(dim=1, keepdim=True).clamp_min(1.0) / max(n_seqs, 1.0)
    if mode == "seq-mean-token-sum":
        return m / max(n_seqs, 1.0)
    if mode == "seq-mean-token-sum-norm":
        return m / (max(n_seqs, 1.0) * max_tokens)
    raise ValueError(f"loss aggregation must be one of {', '.join(LOSS_AGG_MODES)}, got {mode!r}")


def aggregate(token_loss: Tensor, mask: Tensor, token_weights: Tensor | None) -> Tensor:
    """The token-mean of ``token_loss`` over ``mask``, or ``sum(token_weights * token_loss)`` when weights are given."""
    if token_weights is None:
        return masked_mean(token_loss, mask)
    m = _as_mask(mask, token_loss)
    zero = torch.zeros((), dtype=token_loss.dtype, device=token_loss.device)
    return torch.where(m, token_loss * token_weights, zero).sum()


def ppo_policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_eps: float = 0.2,
    clip_eps_high: float | None = None,
    token_weights: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO's clipped surrogate policy loss (Schulman et al. 2017), averaged over real tokens.

    ``ratio = exp(logp - logp_old)``; per token ``max(-A * ratio, -A * clip(ratio, 1 - eps, 1 + eps_high))``
    (the pessimistic bound), then the mean over all masked tokens of the batch ("token-mean", as in TRL's
    PPO and DAPO; every token weighs the same regardless of its response's length).

    Args:
        logprobs: ``(B, T)`` log-probs of the sampled tokens under the current policy (with grad).
        old_logprobs: ``(B, T)`` log-probs at rollout time (detached).
        advantages: ``(B, T)`` per-token advantages (PPO with a critic) or ``(B,)`` per-sequence advantages
            (GRPO/RLOO, critic-free), which are broadcast over the tokens of each sequence.
        mask: ``(B, T)`` response mask.
        clip_eps: Lower (and by default upper) clip range.
        clip_eps_high: Separate upper clip range ("clip-higher", DAPO, Yu et al. 2025) to leave room for
            raising low-probability tokens; ``None`` means ``clip_eps``.
        token_weights: ``(B, T)`` weight of each token's loss; the loss is then ``sum(weights * loss)``
            instead of the token-mean (see :func:`loss_token_weights` for the aggregation modes).

    Returns:
        ``(loss, stats)``. ``loss`` is a scalar with grad. ``stats`` holds detached scalar tensors (call
        ``.item()`` when logging, so no device sync is forced here):

        * ``clipfrac``: fraction of tokens where the clipped term was the active one.
        * ``approx_kl``: ``0.5 * mean((logp - logp_old)^2)`` (k2; TRL's ``approxkl``).
        * ``approx_kl_k3``: mean of the unbiased non-negative k3 estimator (CleanRL's ``approx_kl``).
        * ``ratio_mean``: mean importance ratio (should stay near 1).
        * ``loss_token_mean``: the loss as a token-mean, whatever ``token_weights`` (for logging).
    """
    m = _as_mask(mask, logprobs)
    if old_logprobs.shape != logprobs.shape:
        raise ValueError(
            f"old_logprobs have shape {tuple(old_logprobs.shape)}, logprobs {tuple(logprobs.shape)}"
        )
    if advantages.dim() == 1:
        if advantages.shape[0] != logprobs.shape[0]:
            raise ValueError(f"(B,) advantages have {advantages.shape[0]} rows, logprobs {logprobs.shape[0]}")
        advantages = advantages[:, None].expand_as(logprobs)
    elif advantages.shape != logprobs.shape:
        raise ValueError(f"advantages must be (B,) or {tuple(logprobs.shape)}, got {tuple(advantages.shape)}")
    high = clip_eps if clip_eps_high is None else clip_eps_high
    advantages = advantages.detach()
    old_logprobs = old_logprobs.detach()

    log_ratio = (logprobs - old_logprobs).clamp(-_LOG_RATIO_BOUND, _LOG_RATIO_BOUND)
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_eps, 1.0 + high)
    token_loss = torch.maximum(unclipped, clipped)
    loss = aggregate(token_loss, m, token_weights)

    with torch.no_grad():
        log_ratio = log_ratio.detach()
        stats = {
            "loss_token_mean": masked_mean(token_loss.detach(), m),
            "clipfrac": masked_mean((clipped > unclipped).to(logprobs.dtype), m),
            "approx_kl": 0.5 * masked_mean(log_ratio**2, m),
            "approx_kl_k3": masked_mean(torch.expm1(log_ratio) - log_ratio, m),
            "ratio_mean": masked_mean(ratio.detach(), m),
        }
    return loss, stats


def ppo_value_loss(
    values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor, clip_value: float | None = 0.2,
    token_weights: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Clipped value-function loss (PPO2 / lm-human-preferences / TRL).

    ``loss = 0.5 * mean(max((v - R)^2, (v_clip - R)^2))`` with ``v_clip = v_old + clip(v - v_old, -c, c)``:
    the value head may not move more than ``c`` from its rollout-time prediction without paying the larger
    of the two errors. (Huang et al. note value clipping is a detail of the reference implementation, not
    clearly beneficial; ``clip_value=None`` turns it off.)

    Args:
        values: ``(B, T)`` current value-head outputs (with grad).
        old_values: ``(B, T)`` value-head outputs at rollout time.
        returns: ``(B, T)`` targets from :func:`gae`.
        mask: ``(B, T)`` response mask.
        clip_value: Clip range ``c`` (TRL ``cliprange_value=0.2``; OpenRLHF uses 0.5); ``None`` disables it.
        token_weights: as in :func:`ppo_policy_loss` (``None``: token-mean).

    Returns:
        ``(loss, stats)``; ``stats["value_clipfrac"]`` is the (detached) fraction of tokens where the clipped
        error was the larger one.
    """
    m = _as_mask(mask, values)
    old_values, returns = old_values.detach(), returns.detach()
    err = (values - returns) ** 2
    if clip_value is None:
        return 0.5 * aggregate(err, m, token_weights), {"value_clipfrac": torch.zeros((), device=values.device),
                                                        "loss_token_mean": 0.5 * masked_mean(err.detach(), m)}
    clipped_values = old_values + torch.clamp(values - old_values, -clip_value, clip_value)
    err_clipped = (clipped_values - returns) ** 2
    token_loss = torch.maximum(err, err_clipped)
    loss = 0.5 * aggregate(token_loss, m, token_weights)
    with torch.no_grad():
        clipfrac = masked_mean((err_clipped > err).to(values.dtype), m)
    return loss, {"value_clipfrac": clipfrac, "loss_token_mean": 0.5 * masked_mean(token_loss.detach(), m)}


# ------------------------------------------------------------------------------------------ logits and logs


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Entropy of the categorical distribution at each position, ``H = logsumexp(z) - sum_v p_v z_v``.

    The log-sum-exp form never exponentiates large logits, and terms with ``p_v = 0`` (e.g. ``-inf``
    logits from a vocabulary mask) are dropped explicitly instead of producing ``0 * -inf = nan``.

    Args:
        logits: ``(B, T, V)`` (any leading shape; the last dim is the vocabulary).

    Returns:
        ``(B, T)`` entropies in nats, in the logits' dtype.
    """
    log_p = torch.log_softmax(logits, dim=-1)
    p = log_p.exp()
    # Zero the log *before* multiplying: where(p > 0, p * log_p, 0) would still back-propagate 0 * -inf.
    safe_log_p = torch.where(p > 0, log_p, torch.zeros((), dtype=logits.dtype, device=logits.device))
    return -(p * safe_log_p).sum(dim=-1)


def explained_variance(values: Tensor, returns: Tensor, mask: Tensor) -> Tensor:
    """How much of the variance of the returns the value head explains: ``1 - Var(R - V) / Var(R)``.

    1 is a perfect critic, 0 is no better than predicting the mean, negative is worse than that (a standard
    PPO health metric, CleanRL ``losses/explained_variance``). Population variances over masked tokens.

    Args:
        values: ``(B, T)`` value predictions.
        returns: ``(B, T)`` return targets.
        mask: ``(B, T)`` response mask.

    Returns:
        Detached scalar; ``nan`` when the returns have zero variance (or fewer than one masked token), since
        the ratio is then undefined.
    """
    m = _as_mask(mask, values)
    values, returns = values.detach(), returns.detach()
    if not bool(m.any()):
        return torch.tensor(math.nan, device=values.device)
    var_returns = masked_var(returns, m, unbiased=False)
    if float(var_returns) == 0.0:
        return torch.tensor(math.nan, device=values.device)
    return 1.0 - masked_var(returns - values, m, unbiased=False) / var_returns


# --------------------------------------------------------------------------------------------- KL control


class FixedKLController:
    """A constant KL coefficient; same interface as :class:`AdaptiveKLController`.

    Args:
        coef: The KL coefficient beta (TRL 0.05, InstructGPT 0.02, verl 0.001).
    """

    def __init__(self, coef: float):
        if coef < 0:
            raise ValueError(f"the KL coefficient must be >= 0, got {coef}")
        self.value = float(coef)

    def update(self, current_kl: float | Tensor, n_steps: int) -> None:
        """Do nothing: the coefficient is fixed."""


class AdaptiveKLController:
    """Adaptive KL coefficient of Ziegler et al. 2019 ("Fine-Tuning LMs from Human Preferences"), as in TRL.

    After each batch, ``e = clip(KL / target - 1, -0.2, 0.2)`` and ``beta *= 1 + e * n_steps / horizon``:
    beta rises when the policy drifts further from the reference than ``target`` nats and falls when it
    stays closer. The clip bounds the change per update; ``horizon`` sets how many samples (``n_steps`` is
    the batch size in TRL / lm-human-preferences) it takes to move beta appreciably.

    Args:
        init_coef: Initial beta (lm-human-preferences / TRL: 0.2).
        target: Target KL in nats (TRL: 6).
        horizon: Adaptation horizon (TRL: 10000).
    """

    def __init__(self, init_coef: float, target: float, horizon: float):
        if init_coef < 0:
            raise ValueError(f"init_coef must be >= 0, got {init_coef}")
        if target <= 0:
            raise ValueError(f"the target KL must be > 0, got {target}")
        if horizon <= 0:
            raise ValueError(f"horizon must be > 0, got {horizon}")
        self.value = float(init_coef)
        self.target = float(target)
        self.horizon = float(horizon)

    def update(self, current_kl: float | Tensor, n_steps: int) -> None:
        """Move beta toward keeping ``current_kl`` at the target.

        Args:
            current_kl: Mean KL(pi || ref) per sequence measured on the last batch.
            n_steps: Samples in that batch.
        """
        proportional_error = min(max(float(current_kl) / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + proportional_error * n_steps / self.horizon
