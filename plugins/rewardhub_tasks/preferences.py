"""Synthetic preference pairs on the ``arithmetic`` task: chosen = the correct answer, rejected = a plausible
wrong one.

Rows are TRL preference rows (``prompt``, ``chosen``, ``rejected``) plus ``answer``, ``expression``,
``error`` (which mistake made the rejected answer) and ``margin`` (1.0; a column the reward-model loss can
use). They inherit the arithmetic task's disjoint train/test splits (a problem is in the test split iff a
stable hash of its expression says so), and the same arguments always give the same rows.

The wrong answers are the mistakes a learner makes, so telling them apart needs the arithmetic and not a
surface cue: an off-by-one or off-by-ten slip, a dropped carry or borrow, and one wrong digit. They keep the
sign and, where possible, the number of digits of the correct answer, so answer length gives nothing away.
"""

from __future__ import annotations

import random

ERROR_KINDS = ("off_by_one", "off_by_ten", "no_carry", "digit")


def _no_carry(expression: str, answer: int) -> int | None:
    """``a+b`` or ``a-b`` computed digit by digit without carrying/borrowing (None for other shapes)."""
    for op in "+-":
        left, sep, right = expression.partition(op)
        if sep and left.isdigit() and right.isdigit():
            a, b = left[::-1], right[::-1]
            if op == "-" and int(left) < int(right):
                return None
            digits = []
            for i in range(max(len(a), len(b))):
                x = int(a[i]) if i < len(a) else 0
                y = int(b[i]) if i < len(b) else 0
                digits.append((x + y) % 10 if op == "+" else (x - y) % 10)
            value = int("".join(str(d) for d in reversed(digits)))
            return value if value != answer else None
    return None


def wrong_answers(expression: str, answer: int, rng: random.Random) -> list[tuple[str, int]]:
    """Candidate (error kind, wrong value) pairs for one problem, deterministic given ``rng``."""
    out = [("off_by_one", answer + rng.choice((-1, 1))), ("off_by_ten", answer + rng.choice((-10, 10)))]
    carry = _no_carry(expression, answer)
    if carry is not None:
        out.append(("no_carry", carry))
    text = str(abs(answer))
    pos = rng.randrange(len(text))
    choices = [d for d in "0123456789" if d != text[pos] and not (pos == 0 and d == "0" and len(text) > 1)]
    if choices:
        digit = text[:pos] + rng.choice(choices) + text[pos + 1:]
        out.append(("digit", int(digit) * (-1 if answer < 0 else 1)))
    same_shape = [(k, v) for k, v in out
                  if v != answer and (v < 0) == (answer < 0) and len(str(abs(v))) == len(text)]
    return same_shape or [(k, v) for k, v in out if v != answer]


def build_arithmetic_preferences(
    split: str = "train",
    size: int | None = None,
    seed: int = 0,
    digits: int = 2,
    n_ops: int = 1,
    ops: str = "+-",
    style: str = "symbol",
    errors: str = ",".join(ERROR_KINDS),
):
    """Preference pairs over arithmetic problems (see the module docstring).

    Args:
        split: ``train`` or ``test``; disjoint, as in the arithmetic task.
        size: number of pairs (default 10,000 train / 500 test).
        seed: generator seed (problems and the choice of wrong answer).
        digits, n_ops, ops, style: passed to :func:`rewardhub_tasks.arithmetic.build_arithmetic`.
        errors: comma-separated mistakes to draw rejected answers from: off_by_one, off_by_ten, no_carry, digit.

    Returns:
        A ``datasets.Dataset`` with prompt, chosen, rejected, answer, expression, error, margin.
    """
    from datasets import Dataset

    from rewardhub.errors import ConfigError
    from rewardhub_tasks.arithmetic import build_arithmetic

    kinds = [k.strip() for k in errors.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in ERROR_KINDS]
    if not kinds or unknown:
        raise ConfigError(f"errors must name some of {', '.join(ERROR_KINDS)}, got {errors!r}")
    base = build_arithmetic(split=split, size=size, digits=digits, n_ops=n_ops, ops=ops, style=style, seed=seed)
    rng = random.Random(f"arithmetic-preferences/{split}/{seed}/{digits}/{n_ops}/{ops}/{style}/{errors}")
    rows = []
    for row in base:
        answer = int(row["answer"])
        candidates = [c for c in wrong_answers(row["expression"], answer, rng) if c[0] in kinds]
        if not candidates:  # e.g. only no_carry asked and this problem has no carry: fall back to a slip
            candidates = [("off_by_one", answer + rng.choice((-1, 1)))]
        kind, wrong = rng.choice(candidates)
        rows.append({"prompt": row["prompt"], "chosen": row["answer"], "rejected": str(wrong),
                     "answer": row["answer"], "expression": row["expression"], "error": kind, "margin": 1.0})
    return Dataset.from_list(rows)
