"""``rewardhub train-rm``: train a Bradley-Terry reward model on preference pairs (for ``--reward=reward-model``)."""

from __future__ import annotations

from rewardhub.cli.common import print_outputs, print_summary
from rewardhub.config import RewardModelConfig, add_flags, load_config


def add_parser(sub):
    p = sub.add_parser("train-rm", help="train a reward model on prompt/chosen/rejected pairs (Bradley-Terry)",
                       description="Train a one-output sequence classifier on preference pairs (prompt, "
                       "chosen, rejected; or chosen/rejected with an implicit prompt, extracted as their longest "
                       "common prefix) with the Bradley-Terry loss (optional margin column, optional centring). "
                       "Reports held-out pairwise accuracy and stores score calibration next to the model, so "
                       "`rewardhub train --reward=reward-model --reward-arg path=OUT/model` gets scores with "
                       "mean 0 / std 1.")
    add_flags(p, RewardModelConfig)
    return p


def run(args) -> int:
    from rewardhub.recipes.reward_model import train_reward_model

    cfg = load_config(RewardModelConfig, args)
    final = train_reward_model(cfg)
    print_summary("reward model finished", final)
    print_outputs(cfg.out, final)
    return 0
