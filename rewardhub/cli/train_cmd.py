"""``rewardhub train``: reward-driven training; the reward source picks the method (RLHF, ReFT, RLAIF, DPO)."""

from __future__ import annotations

from rewardhub.config import TrainConfig, add_flags, load_config
from rewardhub.errors import RewardhubError


def add_parser(sub):
    p = sub.add_parser("train", help="train with a reward provider (--algo ppo|grpo|rloo|dpo --reward=X)",
                       description="Train a policy against a reward provider. The reward is resolved (and a "
                       "typo rejected) before any model is loaded.")
    add_flags(p, TrainConfig)
    return p


def run(args) -> int:
    from rewardhub.reward_resolution import build_reward, check_reward_spec

    cfg = load_config(TrainConfig, args)
    check_reward_spec(cfg.reward)  # fail fast: before any model or dataset is loaded
    provider = build_reward(cfg.reward, cfg.reward_args)
    try:
        raise RewardhubError(
            f"--algo {cfg.algo} is not available in this version yet; reward {provider.display_name} resolved "
            "fine. Use `rewardhub sft` for supervised training."
        )
    finally:
        provider.close()
