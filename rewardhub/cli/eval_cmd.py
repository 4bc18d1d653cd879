"""``rewardhub eval``: generate completions with a model, score them with a provider, report the result."""

from __future__ import annotations

from rewardhub.cli.common import console, print_summary
from rewardhub.config import EvalConfig, add_flags


def add_parser(sub):
    p = sub.add_parser("eval", help="generate with a model and score with a reward provider",
                       description="Generate a completion for each prompt (greedy by default), score it with a "
                       "reward provider, and print accuracy (for verifiers) and mean reward.")
    add_flags(p, EvalConfig)
    return p


def run(args) -> int:
    from rewardhub.api import evaluate

    values = dict(vars(args))
    config = values.pop("config", None)
    output = values.pop("output", None)
    result = evaluate(config=config, output=output or EvalConfig.output, **values)
    stats = {k: v for k, v in result.metrics.items() if k != "reward"}
    print_summary(f"{result.metrics['reward']}: {values.get('model', EvalConfig.model)} on "
                  f"{values.get('data', EvalConfig.data)}", stats)
    console.print(f"per-row results: {output or EvalConfig.output}")
    return 0
