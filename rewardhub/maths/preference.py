"""Losses for learning from preference pairs: the DPO family and the Bradley-Terry reward-model loss.

Both start from the Bradley-Terry model of a preference, ``P(chosen > rejected) = sigmoid(r_c - r_r)``.
The reward model learns ``r`` directly (:func:`bradley_terry_loss`); DPO (Rafailov et al. 2023) substitutes
the implicit reward ``r = beta * log(pi / pi_ref)`` of the KL-regularised RLHF optimum, so the policy is
trained on the pairs with no reward model and no sampling (:func:`dpo_loss`).

All inputs are per-sequence tensors of shape ``(B,)``, one entry per preference pair, except
:func:`sequence_logps`, which turns ``(B, T, V)`` logits into those per-sequence log-probs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from rewardhub.logprobs import token_logprobs
from rewardhub.maths.choices import DPO_LOSS_TYPES

__all__ = ["DPO_LOSS_TYPES", "bradley_terry_loss", "dpo_loss", "sequence_logps"]


def sequence_logps(logits: Tensor, labels: Tensor, mask: Tensor, average: bool = False) -> Tensor:
    """Log-probability of each labelled sequence: the sum (or mean) of its token log-probs.

    Args:
        logits: ``(B, T, V)`` model outputs.
        labels: ``(B, T)`` target token ids, already aligned with ``logits`` (the caller shifts:
            ``logits[:, :-1]`` scores ``input_ids[:, 1:]``). Values under a 0 mask are ignored and may be
            ``-100``.
        mask: ``(B, T)``; 1 on the tokens to score (the response, not the prompt or padding).
        average: Return the mean per-token log-prob instead of the sum (what IPO and SimPO-style
            length-normalised objectives want).

    Returns:
        ``(B,)`` float32 log-probs. A row with an empty mask gives 0 in both modes.
    """
    if mask.shape != labels.shape:
        raise ValueError(f"mask has shape {tuple(mask.shape)} but labels have {tuple(labels.shape)}")
    m = mask.bool()
    per_token = token_logprobs(logits, torch.where(m, labels, torch.zeros_like(labels)))
    total = torch.where(m, per_token, torch.zeros((), dtype=per_token.dtype, device=per_token.device)).sum(-1)
    if average:
        return total / m.sum(-1).clamp_min(1).to(total.dtype)
    return total


def dpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    beta: float = 0.1,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-pair DPO-family loss on sequence log-probs.

    With ``h = (log pi(y_c) - log ref(y_c)) - (log pi(y_r) - log ref(y_r))``, the log-ratio margin:

    * ``"sigmoid"``, DPO (Rafailov et al. 2023): ``-log sigmoid(beta * h)``. With ``label_smoothing = e > 0``
      it is conservative DPO (cDPO, Mitchell 2023), which assumes each label is flipped with probability
      ``e``: ``-(1 - e) * log sigmoid(beta h) - e * log sigmoid(-beta h)``. ``e`` in ``[0, 0.5]``.
    * ``"robust"``, robust DPO (Chowdhury et al. 2024, "Provably Robust DPO"): an *unbiased* estimate of the
      clean-label loss under flip rate ``e``:
      ``((1 - e) * -log sigmoid(beta h) - e * -log sigmoid(-beta h)) / (1 - 2e)``. ``e`` in ``[0, 0.5)``.
    * ``"hinge"``, SLiC-style (Zhao et al. 2023): ``relu(1 - beta * h)``.
    * ``"ipo"``, IPO (Azar et al. 2023): ``(h - 1 / (2 * beta))^2``, a squared loss that regresses the margin
      to a finite target instead of pushing it to infinity, so it does not overfit deterministic preferences.
      IPO is defined on **average per-token** log-probs: as in TRL, the caller is responsible for passing
      length-normalised log-probs (``sequence_logps(..., average=True)``) when ``loss_type="ipo"``; this
      function cannot tell the two apart.

    Args:
        policy_chosen_logps: ``(B,)`` log pi(chosen | prompt) under the trained policy.
        policy_rejected_logps: ``(B,)`` log pi(rejected | prompt).
        ref_chosen_logps: ``(B,)`` the same under the frozen reference model.
        ref_rejected_logps: ``(B,)``.
        beta: Inverse temperature of the implicit reward (strength of the KL regularisation); 0.1 is the
            common default (TRL, OpenRLHF). For IPO it is the regularisation tau.
        loss_type: One of ``DPO_LOSS_TYPES``.
        label_smoothing: Assumed label-flip probability for ``"sigmoid"`` (cDPO) and ``"robust"``; must be 0
            for ``"hinge"`` and ``"ipo"``, which have no noise model (rejected instead of silently ignored).

    Returns:
        ``(losses, chosen_rewards, rejected_rewards)``, each ``(B,)``. ``losses`` carries the gradient (take
        ``.mean()``); the rewards ``beta * (policy - ref)`` are detached, for logging reward accuracy/margin.

    Raises:
        ValueError: Unknown loss type, ``beta <= 0``, label smoothing out of range, or shape mismatch.
    """
    if loss_type not in DPO_LOSS_TYPES:
        raise ValueError(f"unknown DPO loss_type {loss_type!r}; valid types are {', '.join(DPO_LOSS_TYPES)}")
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    if loss_type == "sigmoid" and not 0.0 <= label_smoothing <= 0.5:
        raise ValueError(f"label_smoothing for cDPO must be in [0, 0.5], got {label_smoothing}")
    if loss_type == "robust" and not 0.0 <= label_smoothing < 0.5:
        raise ValueError(
            f"label_smoothing for robust DPO must be in [0, 0.5) (it divides by 1 - 2e), "
            f"got {label_smoothing}"
        )
    if loss_type in ("hinge", "ipo") and label_smoothing != 0.0:
        raise ValueError(f"label_smoothing is not defined for loss_type={loss_type!r}; leave it at 0")
    shape = policy_chosen_logps.shape
    for name, t in (
        ("policy_rejected_logps", policy_rejected_logps),
        ("ref_chosen_logps", ref_chosen_logps),
        ("ref_rejected_logps", ref_rejected_logps),
    ):
        if t.shape != shape:
            raise ValueError(f"{name} has shape {tuple(t.shape)}, policy_chosen_logps {tuple(shape)}")

    chosen_logratio = policy_chosen_logps - ref_chosen_logps.detach()
    rejected_logratio = policy_rejected_logps - ref_rejected_logps.detach()
    h = chosen_logratio - rejected_logratio
    e = label_smoothing

    if loss_type == "sigmoid":
        losses = -(1 - e) * F.logsigmoid(beta * h) - e * F.logsigmoid(-beta * h)
    elif loss_type == "robust":
        losses = ((1 - e) * -F.logsigmoid(beta * h) - e * -F.logsigmoid(-beta * h)) / (1 - 2 * e)
    elif loss_type == "hinge":
        losses = torch.relu(1 - beta * h)
    else:  # ipo
        losses = (h - 1 / (2 * beta)) ** 2

    chosen_rewards = beta * chosen_logratio.detach()
    rejected_rewards = beta * rejected_logratio.detach()
    return losses, chosen_rewards, rejected_rewards


def bradley_terry_loss(
    chosen_scores: Tensor,
    rejected_scores: Tensor,
    margin: Tensor | float | None = None,
    center_coef: float = 0.0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Pairwise reward-model loss: ``-log sigmoid(r_c - r_r - margin)``, averaged over pairs.

    This is the negative log-likelihood of the human preference under the Bradley-Terry model (InstructGPT's
    RM loss; TRL ``RewardTrainer``). ``margin`` (Llama 2) asks for a larger gap on pairs rated as more
    clearly different. ``center_coef`` adds ``center_coef * mean((r_c + r_r)^2)`` (TRL's
    ``center_rewards_coefficient``, Eisenstein et al. 2023): BT is invariant to a constant shift of all
    rewards, so this pins the scale's free offset near 0 and keeps scores comparable across checkpoints.

    Args:
        chosen_scores: ``(B,)`` (or ``(B, 1)``, as a ``num_labels=1`` classifier returns) rewards of the
            chosen responses.
        rejected_scores: Same shape, rewards of the rejected responses.
        margin: Optional ``(B,)`` tensor or a scalar; subtracted from the reward gap.
        center_coef: Weight of the centring term; 0 disables it.

    Returns:
        ``(loss, stats)``: scalar loss with grad; ``stats`` holds detached scalars ``accuracy`` (fraction of
        pairs with ``r_c > r_r``; a tie counts as wrong) and ``margin`` (mean ``r_c - r_r``, without the
        requested margin subtracted).
    """
    chosen, rejected = chosen_scores, rejected_scores
    if chosen.shape != rejected.shape:
        raise ValueError(
            f"chosen_scores {tuple(chosen.shape)} and rejected_scores {tuple(rejected.shape)} differ"
        )
    if chosen.dim() == 2 and chosen.shape[1] == 1:
        chosen, rejected = chosen.squeeze(1), rejected.squeeze(1)
    if chosen.dim() != 1:
        raise ValueError(f"scores must be (B,) or (B, 1), got {tuple(chosen_scores.shape)}")

    gap = chosen - rejected
    logits = gap if margin is None else gap - margin
    loss = -F.logsigmoid(logits).mean()
    if center_coef:
        loss = loss + center_coef * ((chosen + rejected) ** 2).mean()
    with torch.no_grad():
        stats = {"accuracy": (gap > 0).float().mean(), "margin": gap.detach().mean()}
    return loss, stats
