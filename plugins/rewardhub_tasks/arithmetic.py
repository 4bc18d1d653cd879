"""The built-in ``arithmetic`` task: seeded, procedurally generated problems with disjoint splits.

Each row has ``prompt`` (e.g. ``"12+35="`` or ``"What is 12 plus 35?\\nAnswer: "``), ``completion`` (the
answer, for SFT), ``answer`` (the gold answer the verifier reads), and ``expression``/``n_ops``/``digits``
metadata. ``teacher_error`` makes the train split's answers come from an imperfect teacher that drops the
units-to-tens carry (or borrow), as ``arithmetic-cot``'s teacher does: SFT then copies a systematic mistake that
a reward can correct (the gold ``answer`` stays right).

Splits are disjoint by construction: a problem belongs to the test split iff a stable hash of its expression
falls in a fixed 1-in-``TEST_SHARE`` bucket, so no test problem can appear in training whatever the seeds and
sizes.
"""

from __future__ import annotations

import hashlib
import random

OP_WORDS = {"+": "plus", "-": "minus", "*": "times"}
TEST_SHARE = 10  # one problem in ten is reserved for the test split
DEFAULT_SIZES = {"train": 10_000, "test": 500}


def evaluate(operands: list[int], ops: list[str]) -> int:
    """Value of ``a0 op0 a1 op1 ...`` with the usual precedence (``*`` before ``+``/``-``)."""
    terms, signs = [operands[0]], []
    for op, value in zip(ops, operands[1:]):
        if op == "*":
            terms[-1] *= value
        else:
            signs.append(op)
            terms.append(value)
    total = terms[0]
    for sign, term in zip(signs, terms[1:]):
        total = total + term if sign == "+" else total - term
    return total


def is_test_problem(expression: str) -> bool:
    digest = hashlib.blake2b(expression.encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big") % TEST_SHARE == 0


def render(operands: list[int], ops: list[str], style: str) -> tuple[str, str]:
    """(expression, prompt) for one problem in the ``symbol`` or ``word`` style."""
    expression = str(operands[0]) + "".join(f"{op}{v}" for op, v in zip(ops, operands[1:]))
    if style == "symbol":
        return expression, f"{expression}="
    words = str(operands[0]) + "".join(f" {OP_WORDS[op]} {v}" for op, v in zip(ops, operands[1:]))
    return expression, f"What is {words}?\nAnswer: "


def teacher_answer(operands: list[int], ops: list[str], teacher_error: float, expression: str, seed: int) -> str:
    """The imperfect teacher's answer: left to right, each step that carries (or borrows) has the carry dropped
    with probability ``teacher_error`` (``arithmetic_cot``'s teacher, its working left out). Its randomness
    depends only on the question, so a row never changes with the dataset's size."""
    from rewardhub_tasks.arithmetic_cot import demonstration

    rng = random.Random(f"teacher/{expression}/{seed}/{teacher_error}")
    return str(demonstration(operands, ops, list(range(len(operands))), teacher_error, "carry", rng)[1])


def build_arithmetic(
    split: str = "train",
    size: int | None = None,
    digits: int = 2,
    n_ops: int = 1,
    ops: str = "+-",
    style: str = "symbol",
    teacher_error: float = 0.0,
    seed: int = 0,
):
    """Generate the ``arithmetic`` dataset.

    Args:
        split: ``train`` or ``test`` (disjoint).
        size: number of rows (default 10,000 train / 500 test, or 80% of the distinct problems when there are
            fewer). Rows are distinct within a split.
        digits: operands are drawn uniformly from ``0 .. 10**digits - 1``.
        n_ops: operations per problem (1 = two operands).
        ops: the operators to draw from, a subset of ``+-*``.
        style: ``symbol`` (``12+35=``), ``word`` (``What is 12 plus 35?``) or ``mixed`` (half each).
        teacher_error: probability, in ``[0, 1]``, that the ``completion`` of a train row drops the carry (or
            borrow) in a step that has one, carrying the wrong value on to the next step; needs ``ops`` within
            ``+-``. The test split, and ``answer``, are always right.
        seed: generator seed; the same arguments always give the same rows.

    Returns:
        A ``datasets.Dataset``; with ``teacher_error`` its rows also have ``demo_correct`` (whether the
        completion is the right answer).
    """
    from datasets import Dataset

    problems = []
    if split not in DEFAULT_SIZES:
        problems.append(f"split must be 'train' or 'test', got {split!r}")
    if not 1 <= digits <= 9:
        problems.append(f"digits must be in 1..9, got {digits}")
    if not 1 <= n_ops <= 8:
        problems.append(f"n_ops must be in 1..8, got {n_ops}")
    if not ops or set(ops) - set(OP_WORDS):
        problems.append(f"ops must be a non-empty subset of '+-*', got {ops!r}")
    if style not in ("symbol", "word", "mixed"):
        problems.append(f"style must be symbol, word or mixed, got {style!r}")
    if not 0 <= teacher_error <= 1:
        problems.append(f"teacher_error must be in [0, 1], got {teacher_error}")
    elif teacher_error and set(ops) - set("+-"):
        problems.append(f"teacher_error drops carries, so it needs ops within '+-', got {ops!r}")
    if problems:
        from rewardhub.errors import ConfigError

        raise ConfigError(problems, header="invalid arithmetic task options")
    want_test = split == "test"
    space = (10**digits) ** (n_ops + 1) * len(ops) ** n_ops
    capacity = space // TEST_SHARE if want_test else space - space // TEST_SHARE
    # the default size shrinks to what a small problem space holds (2-digit "+" has ~9,000 train problems);
    # a size asked for is kept or refused
    size = min(DEFAULT_SIZES[split], int(capacity * 0.8)) if size is None else size
    if size > capacity * 0.8:
        from rewardhub.errors import ConfigError

        raise ConfigError(
            f"{size} distinct {split} problems requested but only about {capacity} exist with digits={digits}, "
            f"n_ops={n_ops}, ops={ops!r}; lower size or raise digits/n_ops"
        )
    rng = random.Random(f"arithmetic/{split}/{seed}/{digits}/{n_ops}/{ops}/{style}")
    rows, seen = [], set()
    while len(rows) < size:
        operands = [rng.randrange(10**digits) for _ in range(n_ops + 1)]
        chosen_ops = [rng.choice(ops) for _ in range(n_ops)]
        expression, _ = render(operands, chosen_ops, "symbol")
        if expression in seen or is_test_problem(expression) != want_test:
            continue
        seen.add(expression)
        row_style = style if style != "mixed" else rng.choice(("symbol", "word"))
        _, prompt = render(operands, chosen_ops, row_style)
        answer = str(evaluate(operands, chosen_ops))
        row = {"prompt": prompt, "completion": answer, "answer": answer, "expression": expression,
               "n_ops": n_ops, "digits": digits}
        if teacher_error:
            row["completion"] = teacher_answer(operands, chosen_ops, teacher_error if split == "train" else 0.0,
                                               expression, seed)
            row["demo_correct"] = row["completion"] == answer
        rows.append(row)
    return Dataset.from_list(rows)
