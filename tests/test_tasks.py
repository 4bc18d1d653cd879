import pytest

from rewardhub.errors import ConfigError
from rewardhub_tasks.arithmetic import build_arithmetic, evaluate


def test_evaluate_respects_precedence_against_python():
    # independent reference: Python's own arithmetic on the rendered expression
    cases = [([2, 3, 4], ["+", "*"]), ([10, 3, 2], ["-", "-"]), ([7, 6, 5, 4], ["*", "-", "*"]), ([5, 5], ["-"])]
    for operands, ops in cases:
        expr = str(operands[0]) + "".join(f"{o}{v}" for o, v in zip(ops, operands[1:]))
        assert evaluate(operands, ops) == eval(expr)  # the expression is built from ints and +-* only


def test_same_seed_same_rows_and_answers_are_correct():
    a = build_arithmetic("train", size=300, n_ops=2, ops="+-*", seed=3)
    b = build_arithmetic("train", size=300, n_ops=2, ops="+-*", seed=3)
    assert a["prompt"] == b["prompt"]
    for row in a:
        assert row["answer"] == str(eval(row["expression"]))
        assert row["prompt"] == row["expression"] + "="
    assert build_arithmetic("train", size=300, n_ops=2, ops="+-*", seed=4)["prompt"] != a["prompt"]


def test_train_and_test_splits_are_disjoint_whatever_the_seeds():
    train = set(build_arithmetic("train", size=5000, seed=1)["expression"])
    test = set(build_arithmetic("test", size=500, seed=2)["expression"])
    assert len(train) == 5000 and len(test) == 500
    assert not train & test


def test_word_style_and_difficulty_knobs():
    rows = build_arithmetic("test", size=20, digits=3, n_ops=3, ops="+", style="word")
    for row in rows:
        assert row["prompt"].startswith("What is ") and row["prompt"].endswith("?\nAnswer: ")
        assert row["expression"].count("+") == 3
        assert all(len(x) <= 3 for x in row["expression"].split("+"))


def test_bad_options_are_reported_together():
    with pytest.raises(ConfigError) as err:
        build_arithmetic("valid", digits=0, ops="/")
    text = str(err.value)
    assert "split" in text and "digits" in text and "ops" in text


def test_too_many_rows_for_the_problem_space_is_an_error():
    with pytest.raises(ConfigError, match="distinct"):
        build_arithmetic("train", size=5000, digits=1)


def test_teacher_error_drops_carries_at_its_rate_and_only_in_train():
    rows = build_arithmetic("train", size=4000, ops="+", teacher_error=0.6)
    carries = dropped = 0
    for row in rows:
        a, b = map(int, row["expression"].split("+"))
        exact = a + b
        assert row["answer"] == str(exact)  # the gold answer is always right
        said = int(row["completion"])
        assert row["demo_correct"] == (said == exact)
        if a % 10 + b % 10 >= 10:  # the units carry: the only place the teacher errs
            carries += 1
            dropped += said != exact
            assert said in (exact, exact - 10)
        else:
            assert said == exact
    assert 0.55 < dropped / carries < 0.65
    # the same question gets the same teacher answer whatever the dataset's size
    small = {r["expression"]: r["completion"] for r in build_arithmetic("train", size=500, ops="+", teacher_error=0.6)}
    full = {r["expression"]: r["completion"] for r in rows}
    assert all(full[e] == c for e, c in small.items() if e in full)
    assert all(build_arithmetic("test", size=200, ops="+-", teacher_error=0.6)["demo_correct"])


def test_teacher_error_borrows_in_subtraction_and_errors_carry_on():
    rows = build_arithmetic("train", size=2000, n_ops=2, ops="-", teacher_error=1.0)
    for row in rows:
        a, b, c = map(int, row["expression"].split("-"))
        first = a - b + (10 if a % 10 < b % 10 else 0)  # borrow not taken: 10 too much
        second = first - c + (10 if first % 10 < c % 10 else 0)
        assert row["completion"] == str(second)


def test_teacher_error_needs_carry_ops():
    with pytest.raises(ConfigError, match="teacher_error"):
        build_arithmetic("train", size=10, ops="+*", teacher_error=0.5)
    with pytest.raises(ConfigError, match="teacher_error"):
        build_arithmetic("train", size=10, teacher_error=1.5)


def test_default_size_fits_a_small_problem_space():
    rows = build_arithmetic("train", ops="+")  # ~9,000 distinct 2-digit sums: the default 10,000 cannot be met
    assert len(rows) == int(0.8 * 9000) and len(set(rows["expression"])) == len(rows)
    assert len(build_arithmetic("test", ops="+")) == 500
    with pytest.raises(ConfigError, match="distinct"):
        build_arithmetic("train", size=10_000, ops="+")  # asked for explicitly: refused, not shrunk
