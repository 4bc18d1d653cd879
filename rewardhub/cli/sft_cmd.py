"""``rewardhub sft``: supervised fine-tuning, the warm-up every other method starts from."""

from __future__ import annotations

from rewardhub.cli.common import load_reward_config, print_outputs, print_summary
from rewardhub.config import SFTConfig, add_flags


def add_parser(sub):
    p = sub.add_parser("sft", help="supervised fine-tuning (completion-only loss)",
                       description="Supervised fine-tuning on prompt/completion, messages or text data. "
                       "Defaults: the built-in tiny model on the built-in arithmetic task. Held-out prompts are "
                       "answered greedily and scored with --reward (default: the task's own reward).")
    add_flags(p, SFTConfig)
    return p


def run(args) -> int:
    from rewardhub.recipes.sft import train_sft

    cfg = load_reward_config(SFTConfig, args)
    final = train_sft(cfg)
    print_summary("sft finished", final)
    print_outputs(cfg.out, final)
    return 0
