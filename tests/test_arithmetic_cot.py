"""The ``arithmetic-cot`` task: step-by-step demonstrations, an imperfect teacher, disjoint splits."""

import random
import re

import pytest

from rewardhub.data import load_rows
from rewardhub.errors import ConfigError
from rewardhub_tasks.arithmetic_cot import build_arithmetic_cot, has_carry, split_of, step_value

STEP = re.compile(r"^(-?\d+)([+-])(\d+)=(-?\d+)$")


def steps_of(completion: str) -> tuple[list[tuple[int, str, int, int]], str]:
    """Parse ``a+b=c;c+d=e####e`` independently of the generator: the steps and the final answer."""
    body, final = completion.split("####")
    steps = []
    for text in body.split(";"):
        m = STEP.match(text)
        assert m, f"malformed step {text!r} in {completion!r}"
        steps.append((int(m[1]), m[2], int(m[3]), int(m[4])))
    return steps, final


def test_splits_are_disjoint_and_sized():
    splits = {s: build_arithmetic_cot(s) for s in ("train", "validation", "test")}
    assert [len(splits[s]) for s in ("train", "validation", "test")] == [2000, 200, 500]
    questions = {s: set(ds["expression"]) for s, ds in splits.items()}
    assert len(questions["train"]) == 2000  # distinct within a split
    assert not questions["train"] & questions["test"]
    assert not questions["train"] & questions["validation"]
    assert not questions["validation"] & questions["test"]
    # a bigger training set contains the smaller one (the teacher's choices depend only on the question)
    big = build_arithmetic_cot("train", train_size=3000, teacher_error=0.6)
    small = build_arithmetic_cot("train", teacher_error=0.6)
    assert big[:2000]["completion"] == small["completion"]


def test_clean_demonstrations_are_right_step_by_step():
    for split in ("train", "test"):
        for row in build_arithmetic_cot(split, operands=4, ops="+-"):
            steps, final = steps_of(row["completion"])
            assert len(steps) == 3
            numbers = [int(x) for x in re.findall(r"\d+", row["expression"])]
            ops = re.findall(r"[+-]", row["expression"])
            value = numbers[0]
            for (a, op, b, c), want_op, want_b in zip(steps, ops, numbers[1:]):
                assert (a, op, b) == (value, want_op, want_b)  # each step continues from the previous one
                value = value + b if op == "+" else value - b
                assert c == value
            assert final == row["answer"] == str(eval(row["expression"]))  # Python's own arithmetic
            assert row["demo_correct"] and row["demo_wrong_steps"] == 0


def test_teacher_errors_are_carried_forward_and_match_the_rate():
    rows = build_arithmetic_cot("train", train_size=5000, teacher_error=0.6)
    carry_steps = wrong_carry_steps = 0
    for row in rows:
        steps, final = steps_of(row["completion"])
        for i, (a, op, b, c) in enumerate(steps):
            if i:
                assert a == steps[i - 1][3]  # the wrong result is carried on, never silently fixed
            exact = a + b if op == "+" else a - b
            if has_carry(a, op, b):
                carry_steps += 1
                wrong_carry_steps += c != exact
                assert c in (exact, exact - 10)  # the mistake is a dropped carry, nothing else
            else:
                assert c == exact
        assert final == row["demo_answer"] == str(steps[-1][3])
        assert row["demo_correct"] == (final == row["answer"])
    rate = wrong_carry_steps / carry_steps
    assert abs(rate - 0.6) < 0.03, rate  # binomial sd over ~5000 carry steps is ~0.007
    assert 0.4 < sum(rows["demo_correct"]) / len(rows) < 0.6
    # held-out splits never carry the teacher's mistakes
    assert all(build_arithmetic_cot("test", teacher_error=0.6)["demo_correct"])
    assert all(build_arithmetic_cot("validation", teacher_error=1.0)["demo_correct"])


def test_digit_mistakes_change_one_digit_by_one():
    rows = build_arithmetic_cot("train", teacher_error=1.0, teacher_mistake="digit")
    for row in rows:
        steps, _ = steps_of(row["completion"])
        for a, op, b, c in steps:
            exact = a + b if op == "+" else a - b
            diff = abs(c - exact)
            assert diff > 0 and str(diff).strip("0") == "1" and set(str(diff)) <= {"1", "0"}
    rng = random.Random(0)
    assert step_value(19, "+", 1, None, rng) == 20 and step_value(19, "+", 1, "carry", rng) == 10
    assert step_value(40, "-", 3, "carry", rng) == 47  # the borrow is not taken


def test_any_order_gives_several_paths_with_the_same_answer():
    rows = build_arithmetic_cot("train", order="any")
    first_operands = {}
    for row in rows:
        steps, final = steps_of(row["completion"])
        numbers = sorted(int(x) for x in row["expression"].split("+"))
        used = sorted([steps[0][0], *(b for _, _, b, _ in steps)])
        assert used == numbers and final == row["answer"]
        first_operands[row["expression"].split("+")[0] == str(steps[0][0])] = True
    assert set(first_operands) == {True, False}  # some paths start elsewhere than the first operand


def test_split_hash_and_validation():
    assert split_of("37+48+19") == split_of("37+48+19")
    with pytest.raises(ConfigError) as err:
        build_arithmetic_cot("train", operands=1, ops="*", teacher_error=2, teacher_mistake="x", order="any")
    text = str(err.value)
    assert all(word in text for word in ("operands", "ops", "teacher_error", "teacher_mistake"))
    with pytest.raises(ConfigError, match="order='any'"):
        build_arithmetic_cot("train", ops="+-", order="any")
    with pytest.raises(ConfigError, match="distinct"):
        build_arithmetic_cot("test", operands=2, digits=1, test_size=50)


def test_registered_task_and_the_verifier_reads_every_final_answer():
    from rewardhub.plugins import build_registry
    from rewardhub_verifier.provider import VerifierReward

    task = build_registry().get("task", "arithmetic-cot").obj
    assert task.default_reward == "verifier" and task.splits[:2] == ("train", "test")
    rows = load_rows("arithmetic-cot", "train", {"teacher_error": 0.6, "operands": 4}, None)
    assert len(load_rows("arithmetic-cot:validation", None, {}, None)) == 200
    verifier = VerifierReward()
    try:
        from rewardhub.rewards import Sample, Status

        rewards = verifier([Sample(r["prompt"], r["completion"], dict(r)) for r in rows.select(range(300))])
        for r, row in zip(rewards, rows.select(range(300))):
            # the verdict follows the demonstration's *final* answer, not an intermediate number
            assert (r.status is Status.OK) == row["demo_correct"], (row["completion"], r)
    finally:
        verifier.close()
