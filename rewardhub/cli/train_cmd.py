"""``rewardhub train``: reward-driven training; the reward source picks the method (RLHF, ReFT, RLAIF, DPO)."""

from __future__ import annotations

from rewardhub.config import RL_ALGOS, RLConfig, add_flags, load_config
from rewardhub.errors import RewardhubError


def add_parser(sub):
    p = sub.add_parser("train", help="train with a reward provider (--algo ppo|grpo|rloo|dpo --reward=X)",
                       description="Train a policy against a reward provider: PPO (value head, GAE), GRPO or "
                       "RLOO. The reward is resolved (and a typo rejected) before any model is loaded.")
    add_flags(p, RLConfig)
    return p


def run(args) -> int:
    from rewardhub.cli.common import print_summary
    from rewardhub.reward_resolution import build_reward, check_reward_spec

    cfg = load_config(RLConfig, args)
    check_reward_spec(cfg.reward)  # fail fast: before any model or dataset is loaded
    provider = build_reward(cfg.reward, cfg.reward_args)
    try:
        if cfg.algo not in RL_ALGOS:
            raise RewardhubError(
                f"--algo {cfg.algo} is not available in this version yet; reward {provider.display_name} resolved "
                f"fine. Use --algo {'|'.join(RL_ALGOS)}, or `rewardhub sft` for supervised training."
            )
        from rewardhub.algorithms.ppo import train_rl

        final = train_rl(cfg, provider=provider)
        print_summary(f"{cfg.algo} finished: {cfg.out}", final)
        return 0
    finally:
        provider.close()
