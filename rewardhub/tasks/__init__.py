"""Built-in procedural tasks, registered through the same ``rewardhub_register_tasks`` hook plugins use.

A task is a dataset builder plus the reward that fits it, so ``--data arithmetic`` needs nothing else.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from rewardhub.hookspecs import hookimpl


@dataclass(frozen=True)
class Task:
    """A named dataset builder.

    Args:
        build: ``build(split: str, **options) -> datasets.Dataset``; options come from ``--data-arg``.
        default_reward: the reward spec that fits the task (e.g. ``"verifier"``).
        splits: the splits ``build`` accepts; the first is the training split, the second held-out.
    """

    build: Callable
    default_reward: str = "verifier"
    splits: tuple[str, ...] = ("train", "test")


@hookimpl
def rewardhub_register_tasks(register):
    from rewardhub.tasks.arithmetic import build_arithmetic
    from rewardhub.tasks.preferences import build_arithmetic_preferences

    register(
        "arithmetic",
        Task(build=build_arithmetic, default_reward="verifier"),
        description="seeded word/symbol arithmetic, adjustable digits and operations, gold in `answer`",
    )
    register(
        "arithmetic-preferences",
        Task(build=build_arithmetic_preferences, default_reward="reward-model"),
        description="arithmetic prompt/chosen/rejected pairs: the correct answer beats a plausible wrong one",
    )
