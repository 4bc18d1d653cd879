"""The ``tasks`` plugin: the built-in procedural tasks, registered through ``rewardhub_register_tasks`` like
any third-party package's.

A task (:class:`rewardhub.Task`, part of the plugin contract) is a dataset builder plus the reward that fits
it, so ``--data arithmetic`` needs nothing else. One module per task: ``arithmetic``, ``arithmetic_cot``
(step-by-step solutions from an imperfect teacher) and ``preferences`` (chosen/rejected pairs).
"""

from __future__ import annotations

from rewardhub import Task, hookimpl


@hookimpl
def rewardhub_register_tasks(register):
    from rewardhub_tasks.arithmetic import build_arithmetic
    from rewardhub_tasks.arithmetic_cot import build_arithmetic_cot
    from rewardhub_tasks.preferences import build_arithmetic_preferences

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
