"""The built-in ``arithmetic-cot`` task: multi-step arithmetic written out step by step, with an imperfect teacher.

A row's prompt is the expression (``37+48+19=``) and its ``completion`` is a demonstration that combines two
numbers per step and ends with the final answer after ``####`` (GSM8K's marker, which the verifier reads)::

    37+48+19=  ->  37+48=85;85+19=104####104

Why this task exists: ReFT's claim is that RL against an answer checker beats SFT *when completions carry
reasoning and the demonstrations leave a gap the reward can close*. So the demonstrations of the ``train``
split can come from an imperfect teacher (``teacher_error``): in a step that needs a units-to-tens carry (or
borrow) the teacher drops it with that probability (``teacher_mistake="carry"``), or writes one digit off by
one (``"digit"``), and carries its wrong intermediate result forward, so the demonstration stays internally
consistent and only its final answer (and the wrong step) gives it away. SFT copies the teacher's mistakes;
sampling still finds the right step often enough for the verifier to reward it. The gold ``answer`` column is
always right, and the ``validation`` and ``test`` splits always carry correct demonstrations.

``order="any"`` gives several valid reasoning paths per question (ReFT's own mechanism): each demonstration
combines the operands in a random order (``48+19=67;37+67=104``), so SFT sees one path per question and RL
can find others; it needs ``ops="+"`` (reordering a subtraction changes its value).

Splits are disjoint by construction: a stable hash of the expression puts every possible question in exactly
one of ``test`` (1 in 10), ``validation`` (1 in 10) and ``train``. The training set is a fixed, finite set of
``train_size`` questions (ReFT trains RL on the same questions SFT saw); the same options give the same rows.
"""

from __future__ import annotations

import hashlib
import random

SPLITS = ("train", "validation", "test")
MISTAKES = ("carry", "digit")
ORDERS = ("left", "any")


def split_of(expression: str) -> str:
    """The split a question belongs to, from a stable hash of its expression (1/10 test, 1/10 validation)."""
    bucket = int.from_bytes(hashlib.blake2b(expression.encode(), digest_size=4, person=b"cot").digest(), "big") % 10
    return "test" if bucket == 0 else "validation" if bucket == 1 else "train"


def has_carry(a: int, op: str, b: int) -> bool:
    """Whether ``a op b`` carries (``+``) or borrows (``-``) from the units into the tens."""
    if op == "+":
        return a % 10 + b % 10 >= 10
    return a % 10 < b % 10


def step_value(a: int, op: str, b: int, mistake: str | None, rng: random.Random) -> int:
    """``a op b``, or the value a weak teacher writes when it makes ``mistake`` in this step."""
    exact = a + b if op == "+" else a - b
    if mistake == "carry":  # the carry into the tens is dropped (a borrow is not taken)
        return exact - 10 if op == "+" else exact + 10
    if mistake == "digit":  # one digit of the result is one off
        digits = str(abs(exact))
        i = rng.randrange(len(digits))
        place = 10 ** (len(digits) - 1 - i)
        delta = place if digits[i] == "0" or (digits[i] != "9" and rng.random() < 0.5) else -place
        if i == 0 and digits[i] == "1" and delta < 0 and len(digits) > 1:
            delta = place  # keep the number of digits
        return exact + delta if exact >= 0 else exact - delta
    return exact


def demonstration(operands: list[int], ops: list[str], order: list[int], teacher_error: float, mistake: str,
                  rng: random.Random) -> tuple[str, int, int]:
    """(completion text, the answer it ends with, how many steps it got wrong) for one question.

    ``order`` lists the operand indices in the order they are combined (left to right: 0, 1, 2, ...). Each step
    combines the running value with the next operand; a step the teacher gets wrong carries its wrong value on.
    """
    in_order = order == sorted(order)  # a reordered path is only allowed for ops="+"
    value = operands[order[0]]
    steps, wrong = [], 0
    for index in order[1:]:
        op, b = ops[index - 1] if in_order else "+", operands[index]
        can_err = mistake == "digit" or has_carry(value, op, b)
        made = mistake if teacher_error > 0 and can_err and rng.random() < teacher_error else None
        result = step_value(value, op, b, made, rng)
        steps.append(f"{value}{op}{b}={result}")
        exact = value + b if op == "+" else value - b
        wrong += result != exact
        value = result
    return ";".join(steps) + f"####{value}", value, wrong


def build_arithmetic_cot(
    split: str = "train",
    operands: int = 3,
    digits: int = 2,
    ops: str = "+",
    train_size: int = 2000,
    validation_size: int = 200,
    test_size: int = 500,
    teacher_error: float = 0.0,
    teacher_mistake: str = "carry",
    order: str = "left",
    seed: int = 0,
):
    """Generate the ``arithmetic-cot`` dataset (see the module docstring).

    Args:
        split: ``train``, ``validation`` or ``test`` (disjoint).
        operands: numbers per question (2..8); a completion has ``operands - 1`` steps.
        digits: operands are drawn uniformly from ``0 .. 10**digits - 1``.
        ops: operators to draw from, a non-empty subset of ``+-``.
        train_size, validation_size, test_size: rows of each split (distinct questions).
        teacher_error: probability that the teacher gets a step wrong, in ``[0, 1]`` (train split only).
        teacher_mistake: ``carry`` (drops the units-to-tens carry or borrow; only steps that have one) or
            ``digit`` (writes one digit of the step's result one off; any step).
        order: ``left`` (combine left to right) or ``any`` (each demonstration combines the operands in a random
            order: several valid paths per question; needs ``ops="+"``).
        seed: generator seed; the same arguments always give the same rows.

    Returns:
        A ``datasets.Dataset`` with ``prompt``, ``completion`` (the demonstration), ``answer`` (always right),
        ``expression``, ``n_ops``, ``digits``, ``demo_answer`` and ``demo_correct`` (whether the demonstration's
        final answer is right) and ``demo_wrong_steps``.
    """
    from datasets import Dataset

    from rewardhub.errors import ConfigError

    problems = []
    if split not in SPLITS:
        problems.append(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    if not 2 <= operands <= 8:
        problems.append(f"operands must be in 2..8, got {operands}")
    if not 1 <= digits <= 6:
        problems.append(f"digits must be in 1..6, got {digits}")
    if not ops or set(ops) - set("+-"):
        problems.append(f"ops must be a non-empty subset of '+-', got {ops!r}")
    for name, value in (("train_size", train_size), ("validation_size", validation_size), ("test_size", test_size)):
        if value < 1:
            problems.append(f"{name} must be >= 1, got {value}")
    if not 0 <= teacher_error <= 1:
        problems.append(f"teacher_error must be in [0, 1], got {teacher_error}")
    if teacher_mistake not in MISTAKES:
        problems.append(f"teacher_mistake must be one of {', '.join(MISTAKES)}, got {teacher_mistake!r}")
    if order not in ORDERS:
        problems.append(f"order must be one of {', '.join(ORDERS)}, got {order!r}")
    elif order == "any" and ops != "+":
        problems.append(f"order='any' reorders operands, which only keeps the value for ops='+', got {ops!r}")
    if problems:
        raise ConfigError(problems, header="invalid arithmetic-cot task options")
    size = {"train": train_size, "validation": validation_size, "test": test_size}[split]
    space = (10**digits) ** operands * len(ops) ** (operands - 1)
    capacity = space * (8 if split == "train" else 1) // 10
    if size > capacity * 0.8:
        raise ConfigError(f"{size} distinct {split} questions requested but only about {capacity} exist with "
                          f"operands={operands}, digits={digits}, ops={ops!r}; lower the size or raise digits")
    rng = random.Random(f"arithmetic-cot/{split}/{seed}/{operands}/{digits}/{ops}")
    error = teacher_error if split == "train" else 0.0
    rows, seen = [], set()
    while len(rows) < size:
        numbers = [rng.randrange(10**digits) for _ in range(operands)]
        chosen_ops = [rng.choice(ops) for _ in range(operands - 1)]
        expression = str(numbers[0]) + "".join(f"{op}{v}" for op, v in zip(chosen_ops, numbers[1:]))
        if expression in seen or split_of(expression) != split:
            continue
        seen.add(expression)
        gold = numbers[0]
        for op, v in zip(chosen_ops, numbers[1:]):
            gold = gold + v if op == "+" else gold - v
        # The teacher's randomness depends only on the question and the options, so a row never changes with size.
        teacher = random.Random(f"{expression}/{seed}/{error}/{teacher_mistake}/{order}")
        path = list(range(operands))
        if order == "any":
            teacher.shuffle(path)
        completion, demo_answer, wrong_steps = demonstration(numbers, chosen_ops, path, error, teacher_mistake,
                                                             teacher)
        rows.append({"prompt": f"{expression}=", "completion": completion, "answer": str(gold),
                     "expression": expression, "n_ops": operands - 1, "digits": digits,
                     "demo_answer": str(demo_answer), "demo_correct": demo_answer == gold,
                     "demo_wrong_steps": wrong_steps})
    return Dataset.from_list(rows)
