"""``rewardhub train``: reward-driven training; the reward source picks the method (RLHF, ReFT, RLAIF, DPO)."""

from __future__ import annotations

from rewardhub.config import DPOConfig, RLConfig, add_flags, load_config, read_yaml
from rewardhub.testing import BUILTIN_TINY

#: Defaults for the built-in tiny model (the default job): a warm-up so a random model can earn reward,
#: short answers, and a small, fast run. Any flag or YAML key overrides them.
PRESETS = {BUILTIN_TINY: {"sft_warmup_steps": 1000, "max_new_tokens": 8, "batch_size": 256, "max_steps": 100,
                          "temperature": 0.7, "lr": 3e-5, "warmup_ratio": 0.2, "kl_coef": 0.01, "value_lr_mult": 100.0}}


def add_parser(sub):
    p = sub.add_parser(
        "train", help="train with a reward provider (--algo ppo|grpo|rloo|dpo --reward=X)",
        description="Train a policy against a reward provider: PPO (value head, GAE), GRPO or RLOO, or DPO on "
        "preference pairs (from the data, from the provider's stored preferences, or sampled online and ranked "
        "by the provider). The reward is resolved (and a typo rejected) before any model is loaded. With "
        "--algo dpo the defaults are DPOConfig's: --data arithmetic-preferences, --reward exact-match, "
        "--batch-size 8, --num-generations 4. With the built-in model (the default), RL defaults to a "
        f"1000-step SFT warm-up and a short run: {PRESETS[BUILTIN_TINY]}.")
    add_flags(p, RLConfig, DPOConfig)
    return p


def chosen_algo(args) -> str:
    """--algo from the command line, else from the YAML config, else the default (ppo)."""
    algo = getattr(args, "algo", None)
    if algo is None and getattr(args, "config", None):
        algo = read_yaml(args.config).get("algo")
    return str(algo or RLConfig.algo)


def run(args) -> int:
    from rewardhub.cli.common import print_summary
    from rewardhub.plugins import register_verifier_file
    from rewardhub.reward_resolution import build_reward, check_reward_spec

    cfg = load_config(DPOConfig if chosen_algo(args) == "dpo" else RLConfig, args, PRESETS)
    for file in cfg.verifier_files:
        register_verifier_file(file)
    check_reward_spec(cfg.reward)  # fail fast: before any model or dataset is loaded
    provider = build_reward(cfg.reward, cfg.reward_args)
    try:
        if cfg.algo == "dpo":
            from rewardhub.algorithms.dpo import train_dpo

            final = train_dpo(cfg, provider=provider)
        else:
            from rewardhub.algorithms.ppo import train_rl
            from rewardhub.algorithms.warmup import sft_warmup

            if cfg.sft_warmup_steps:
                cfg.model = sft_warmup(cfg)
            final = train_rl(cfg, provider=provider)
        print_summary(f"{cfg.algo} finished: {cfg.out}", final)
        return 0
    finally:
        provider.close()
