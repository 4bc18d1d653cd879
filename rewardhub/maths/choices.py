"""The named choices of the maths, defined once: config fields take these types, the maths validates against them.

``Literal`` types, so the config shows them in ``--help`` and checks them like any other typed value. Kept free
of torch so the command line can list them without importing it.
"""

from __future__ import annotations

from typing import Literal, get_args

#: The on-policy RL algorithms: PPO (value head + GAE), GRPO (group-normalised), RLOO (leave-one-out).
RLAlgo = Literal["ppo", "grpo", "rloo"]
#: How per-token RL losses add up (verl's ``loss_agg_mode`` names); see ``maths.rl.loss_token_weights``.
LossAgg = Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"]
#: Estimators of KL(policy || reference) per token (Schulman's k1, k2, k3); see ``maths.rl.kl_penalty``.
KLEstimator = Literal["k1", "k2", "k3"]
#: DPO losses; see ``maths.preference.dpo_loss``.
DPOLoss = Literal["sigmoid", "robust", "hinge", "ipo"]

RL_ALGOS: tuple[str, ...] = get_args(RLAlgo)
LOSS_AGG_MODES: tuple[str, ...] = get_args(LossAgg)
KL_ESTIMATORS: tuple[str, ...] = get_args(KLEstimator)
DPO_LOSS_TYPES: tuple[str, ...] = get_args(DPOLoss)
