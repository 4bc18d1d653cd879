"""``rewardhub train``: reward-driven training; the reward source picks the method (RLHF, ReFT, RLAIF, DPO)."""

from __future__ import annotations

from rewardhub.config import RL_PRESETS, DPOConfig, RLConfig, add_flags, read_yaml
from rewardhub.tiny_model import BUILTIN_TINY


def add_parser(sub):
    p = sub.add_parser(
        "train", help="train with a reward provider (--algo ppo|grpo|rloo|dpo --reward=X)",
        description="Train a policy against a reward provider: PPO (value head, GAE), GRPO or RLOO, or DPO on "
        "preference pairs (from the data, from the provider's stored preferences, or sampled online and ranked "
        "by the provider). The reward is resolved (and a typo rejected) before any model is loaded; by default "
        "it is the task's own reward. --max-steps counts RL (or DPO) steps; --sft-warmup-steps N first runs N "
        "SFT steps on --data into OUT/sft-warmup (the ReFT warm-up). With --algo dpo the defaults are "
        "DPOConfig's: --data arithmetic-preferences, --batch-size 8, --num-generations 4. With the built-in model "
        f"(the default), RL defaults to the ReFT demonstration: {RL_PRESETS[BUILTIN_TINY]}.")
    add_flags(p, RLConfig, DPOConfig)
    return p


def chosen_algo(args) -> str:
    """--algo from the command line, else from the YAML config, else the default (ppo)."""
    algo = getattr(args, "algo", None)
    if algo is None and getattr(args, "config", None):
        algo = read_yaml(args.config).get("algo")
    return str(algo or RLConfig.algo)


def run(args) -> int:
    from rewardhub.api import train_with_reward
    from rewardhub.cli.common import console, load_reward_config, print_outputs, print_summary

    dpo = chosen_algo(args) == "dpo"
    # The preset is the RL demonstration's; DPO keeps DPOConfig's own defaults (the help says so).
    cfg = load_reward_config(DPOConfig, args) if dpo else load_reward_config(RLConfig, args, RL_PRESETS)
    final = train_with_reward(cfg)
    print_summary(f"{cfg.algo} finished", final)
    if not dpo:
        _print_outcome(cfg, final, console)
    print_outputs(cfg.out, final)
    return 0


def _print_outcome(cfg: RLConfig, final: dict, console) -> None:
    """Held-out result before and after RL."""
    for key, unit in (("accuracy", "accuracy"), ("reward_mean", "mean reward")):
        before, after = final.get(f"before/{key}"), final.get(f"after/{key}")
        if before is not None and after is not None:
            n = int(final.get("after/n", 0))
            change = f"{100 * (after - before):+.1f} points" if key == "accuracy" else f"{after - before:+.3f}"
            shown = (lambda v: f"{v:.1%}") if key == "accuracy" else (lambda v: f"{v:.3f}")
            console.print(f"[bold]held-out {unit} on {n} problems: before RL {shown(before)} -> after RL "
                          f"{shown(after)} ({change})[/]", soft_wrap=True)
            break
