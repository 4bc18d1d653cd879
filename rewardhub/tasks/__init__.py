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
        default_reward: the reward spec that fits the task (e.g. ``"verifier"``): ``--reward`` when the user
            names none, and what every recipe's held-out evaluation on the task scores with.
        splits: the splits ``build`` accepts; the first is the training split, the second held-out.
    """

    build: Callable
    default_reward: str = "verifier"
    splits: tuple[str, ...] = ("train", "test")


@hookimpl
def rewardhub_register_tasks(register):
    from rewardhub.tasks.arithmetic import build_arithmetic
    from rewardhub.tasks.arithmetic_cot import build_arithmetic_cot
    from rewardhub.tasks.preferences import build_arithmetic_preferences

    register(
        "arithmetic",
        Task(build=build_arithmetic, default_reward="verifier"),
        description="seeded word/symbol arithmetic, adjustable digits and operations, gold in `answer`",
    )
    register(
        "arithmetic-cot",
        Task(build=build_arithmetic_cot, default_reward="verifier", splits=("train", "test", "validation")),
        description="multi-step arithmetic written out step by step (`37+48=85;85+19=104####104`), an imperfect "
        "teacher option (teacher_error), disjoint train/validation/test",
    )
    register(
        "arithmetic-preferences",
        # the verifier judges a policy's answers to these prompts (the rows keep the gold `answer`); a reward
        # model trained on the pairs is the other way to score them (--reward=reward-model --reward-arg path=...)
        Task(build=build_arithmetic_preferences, default_reward="verifier"),
        description="arithmetic prompt/chosen/rejected pairs: the correct answer beats a plausible wrong one",
    )
