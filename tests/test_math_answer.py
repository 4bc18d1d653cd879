"""Math answer checker: extraction, normalisation, equivalence (pure functions, no processes)."""

from __future__ import annotations

import time

import pytest

from rewardhub.rewards import Status
from rewardhub_verifier.math_answer import (
    MathVerdict,
    answers_equivalent,
    check_answer,
    equivalence,
    extract_answer,
    normalize_answer,
    quick_check,
)

# (completion, gold, expected status) -- the full pipeline: extraction + normalisation + equivalence
CASES: list[tuple[str, str, Status]] = [
    # integers, GSM8K style
    ("The answer is 42.", "42", Status.OK),
    ("The answer is 41.", "42", Status.WRONG),
    ("She has 3 + 4 = 7 apples.\n#### 7", "7", Status.OK),
    ("#### 8", "7", Status.WRONG),
    ("So in total $\\boxed{18}$ dollars.", "18", Status.OK),
    ("\\boxed{-5}", "-5", Status.OK),
    ("\\boxed{-5}", "5", Status.WRONG),
    ("\\boxed{18.00}", "18", Status.OK),
    # decimals vs fractions
    ("\\boxed{0.5}", "\\frac{1}{2}", Status.OK),
    ("\\boxed{\\frac{1}{2}}", "0.5", Status.OK),
    ("\\boxed{0.75}", "3/4", Status.OK),
    ("\\boxed{0.33}", "\\frac{1}{3}", Status.WRONG),
    ("\\boxed{\\frac{2}{4}}", "\\frac{1}{2}", Status.OK),
    ("\\boxed{1.5}", "\\frac{3}{2}", Status.OK),
    # thousands separators
    ("\\boxed{1,234}", "1234", Status.OK),
    ("The total is 1,234,567.", "1234567", Status.OK),
    ("#### 12,000", "12000", Status.OK),
    ("\\boxed{1{,}000}", "1000", Status.OK),
    ("\\boxed{1,235}", "1234", Status.WRONG),
    # $ and %
    ("\\boxed{\\$18.50}", "18.5", Status.OK),
    ("\\boxed{50\\%}", "50", Status.OK),
    ("The answer is 25%.", "25", Status.OK),
    # units and \text{}
    ("\\boxed{5 \\text{ cm}}", "5", Status.OK),
    ("\\boxed{5 cm}", "5", Status.OK),
    ("The answer is 12 apples.", "12", Status.OK),
    ("\\boxed{5 \\text{ dollars}}", "5", Status.OK),
    ("\\boxed{3 \\text{ cm}^2}", "3", Status.OK),
    ("\\boxed{90^\\circ}", "90", Status.OK),
    ("\\boxed{45^{\\circ}}", "45", Status.OK),
    ("\\boxed{\\text{Monday}}", "Monday", Status.OK),
    # \dfrac, \tfrac, \frac12
    ("\\boxed{\\dfrac{3}{4}}", "\\frac{3}{4}", Status.OK),
    ("\\boxed{\\tfrac{3}{4}}", "0.75", Status.OK),
    ("\\boxed{\\frac12}", "0.5", Status.OK),
    # mixed numbers
    ("\\boxed{2\\frac{1}{2}}", "\\frac{5}{2}", Status.OK),
    ("The answer is 2 1/2.", "2.5", Status.OK),
    ("\\boxed{2\\frac{1}{2}}", "2", Status.WRONG),
    # radicals
    ("\\boxed{\\frac{\\sqrt{2}}{2}}", "\\frac{1}{\\sqrt{2}}", Status.OK),
    ("\\boxed{\\frac{1}{\\sqrt{2}}}", "\\frac{\\sqrt{2}}{2}", Status.OK),
    ("\\boxed{2\\sqrt{3}}", "\\sqrt{12}", Status.OK),
    ("\\boxed{\\sqrt{2}/2}", "1/\\sqrt{2}", Status.OK),
    ("\\boxed{\\sqrt{3}}", "\\sqrt{2}", Status.WRONG),
    ("\\boxed{\\sqrt[3]{8}}", "2", Status.OK),
    # pi
    ("\\boxed{\\frac{\\pi}{2}}", "\\pi/2", Status.OK),
    ("\\boxed{2\\pi}", "\\pi \\cdot 2", Status.OK),
    ("\\boxed{3.14159265}", "\\pi", Status.OK),
    ("\\boxed{3.14}", "\\pi", Status.WRONG),
    ("\\boxed{\\frac{3\\pi}{4}}", "\\frac{3}{4}\\pi", Status.OK),
    # powers
    ("\\boxed{2^{10}}", "1024", Status.OK),
    ("\\boxed{2^{10}}", "1000", Status.WRONG),
    ("\\boxed{10^{3}}", "1000", Status.OK),
    # symbolic
    ("\\boxed{(x+1)^2}", "x^2+2x+1", Status.OK),
    ("\\boxed{(x+1)^2}", "x^2+1", Status.WRONG),
    ("\\boxed{\\frac{x}{2}}", "\\frac{1}{2}x", Status.OK),
    ("\\boxed{\\sin^2 x + \\cos^2 x}", "1", Status.OK),
    ("\\boxed{y = 2x + 1}", "2x+1", Status.OK),
    ("\\boxed{x^2 + y^2 = 1}", "y^2 + x^2 = 1", Status.OK),
    ("\\boxed{x = 5}", "5", Status.OK),
    # tuples
    ("\\boxed{(1, 2)}", "(1,2)", Status.OK),
    ("\\boxed{(2, 1)}", "(1,2)", Status.WRONG),
    ("\\boxed{\\left(\\frac{1}{2}, 3\\right)}", "(0.5, 3)", Status.OK),
    ("\\boxed{(1, 2, 3)}", "(1,2)", Status.WRONG),
    # sets (order-insensitive)
    ("\\boxed{\\{1, 2\\}}", "\\{2, 1\\}", Status.OK),
    ("\\boxed{\\{1, 3\\}}", "\\{1, 2\\}", Status.WRONG),
    ("\\boxed{-2, 1}", "1, -2", Status.OK),
    # intervals (open vs closed must differ)
    ("\\boxed{[1, 2)}", "[1,2)", Status.OK),
    ("\\boxed{(1, 2)}", "[1,2)", Status.WRONG),
    ("\\boxed{(-\\infty, 3]}", "(-\\infty, 3]", Status.OK),
    ("\\boxed{(-\\infty, 3)}", "(-\\infty, 3]", Status.WRONG),
    ("\\boxed{\\left[\\frac{1}{2}, \\infty\\right)}", "[0.5, \\infty)", Status.OK),
    ("\\boxed{(-\\infty, 1) \\cup (2, \\infty)}", "(2,\\infty)\\cup(-\\infty,1)", Status.OK),
    # multiple choice
    ("The answer is (B).", "B", Status.OK),
    ("\\boxed{B}", "B", Status.OK),
    ("Answer: B) 42", "B", Status.OK),
    ("\\boxed{\\text{(C)}}", "C", Status.OK),
    ("The answer is (A).", "B", Status.WRONG),
    # "the answer is", "####", boxes
    ("Thus, the final answer is: 17.\nDone", "17", Status.OK),
    ("ANSWER: 3/4", "0.75", Status.OK),
    ("so \\boxed{\\frac{1}{\\sqrt{2}}} is it", "\\frac{\\sqrt{2}}{2}", Status.OK),
    ("first \\boxed{1} then \\boxed{2}", "2", Status.OK),
    ("\\fbox{7}", "7", Status.OK),
    ("\\boxed{\\frac{1}{2}} and more text 99", "\\frac{1}{2}", Status.OK),
    # last-number fallback
    ("I think 3 times 4 makes 12", "12", Status.OK),
    ("First 10, then -3.5", "-3.5", Status.OK),
    ("so x = 5 - 3 = 2", "2", Status.OK),
    # gold given as a worked solution
    ("\\boxed{72}", "Natalia sold 48/2 = 24 clips in May.\n#### 72", Status.OK),
    ("\\boxed{72}", "The result is $\\boxed{72}$.", Status.OK),
    # no answer
    ("I don't know.", "5", Status.NO_ANSWER),
    ("", "5", Status.NO_ANSWER),
    ("\\boxed{}", "5", Status.NO_ANSWER),
    # pathological, still decided quickly in-process
    ("\\boxed{1/0}", "1", Status.WRONG),
    ("\\boxed{9^{9^{9}}}", "1", Status.WRONG),
    ("\\boxed{10^{10^{10}}}", "10", Status.WRONG),
    ("\\boxed{" + "(" * 300 + "1" + ")" * 300 + "}", "1", Status.WRONG),
    ("\\boxed{__import__('os').system('true')}", "0", Status.WRONG),
    ("\\boxed{x.__class__}", "0", Status.WRONG),
    ("\\boxed{Pow(9, Pow(9, 9))}", "1", Status.WRONG),
    ("\\boxed{1e999999}", "1", Status.WRONG),
    ("\\boxed{exec(1)}", "1", Status.WRONG),
    ("\\boxed{().__class__}", "1", Status.WRONG),
]


@pytest.mark.parametrize(("completion", "gold", "expected"), CASES)
def test_check_answer_table(completion: str, gold: str, expected: Status) -> None:
    t0 = time.perf_counter()
    verdict = check_answer(completion, gold)
    assert isinstance(verdict, MathVerdict)
    assert verdict.status is expected, (completion, gold, verdict)
    assert time.perf_counter() - t0 < 2.0


def test_table_size() -> None:
    assert len(CASES) >= 60
    assert {s for _, _, s in CASES} == {Status.OK, Status.WRONG, Status.NO_ANSWER}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("\\boxed{\\frac{1}{\\sqrt{2}}}", "\\frac{1}{\\sqrt{2}}"),
        ("a \\boxed{x^{2^{3}}} b", "x^{2^{3}}"),
        ("\\boxed{1} then \\boxed{\\{1,2\\}}", "\\{1,2\\}"),
        ("truncated \\boxed{3} and \\boxed{\\frac{1}{2}", "3"),  # last box unbalanced -> earlier one
        ("\\boxed 5$", "5"),
        ("\\boxed{}", None),
        ("\\boxed{ }", None),
        ("#### 1,234\nmore", "1,234"),
        ("The answer is $\\frac{1}{2}$. Next sentence 9.", "$\\frac{1}{2}$"),
        ("the answer is 3.5.", "3.5"),
        ("Final answer: **7**", "7"),
        ("I got -3.5 and then 3/4", "3/4"),
        ("Total 1,234,567 items.", "1,234,567"),
        ("the points (1,2) and 7", "7"),
        ("10-3", "3"),
        ("no numbers here", None),
        ("", None),
    ],
)
def test_extract_answer(text: str, expected: str | None) -> None:
    assert extract_answer(text) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("$5$", "5"),
        ("\\(5\\)", "5"),
        ("\\left( 1, 2 \\right]", "( 1, 2 ]"),
        ("1,234,567", "1234567"),
        ("(1,2)", "(1,2)"),
        ("\\$1,234.50", "1234.50"),
        ("50\\%", "50"),
        ("30 degrees", "30"),
        ("45^{\\circ}", "45"),
        ("5 \\text{ cm}", "5"),
        ("4 km/h", "4"),
        ("5 m", "5"),
        ("5x", "5x"),
        ("3x^2", "3x^2"),
        ("\\dfrac{1}{2}", "\\frac{1}{2}"),
        ("\\tfrac12", "\\frac{1}{2}"),
        ("2\\frac{1}{2}", "5/2"),
        ("-2\\frac{1}{2}", "-5/2"),
        ("2 1/2", "5/2"),
        ("x = 5", "5"),
        ("x^2 + y^2 = 1", "x^2 + y^2 = 1"),
        ("7.", "7"),
        ("  \\boxed{5}  ", "5"),
        ("1\\,000", "1000"),
        ("\\text{(B)}", "(B)"),
    ],
)
def test_normalize_answer(raw: str, expected: str) -> None:
    assert normalize_answer(raw) == expected


def test_equivalence_reports_the_path() -> None:
    assert equivalence("0.5", "\\frac{1}{2}") == (True, "rational")
    assert equivalence("1,234", "1234") == (True, "string")
    ok, why = equivalence("9^{9^{9}}", "1")
    assert not ok and "too large" in why
    assert answers_equivalent("(x+1)^2", "x^2+2x+1")
    assert not answers_equivalent("x", "y")
    assert not answers_equivalent("", "0")


def test_rel_tol() -> None:
    assert answers_equivalent("0.3333333", "1/3", rel_tol=1e-6)
    assert not answers_equivalent("0.3333", "1/3", rel_tol=1e-6)
    assert answers_equivalent("0.3333", "1/3", rel_tol=1e-3)


def test_quick_check_needs_no_sympy_for_plain_cases() -> None:
    assert quick_check("#### 72", "72") == MathVerdict(Status.OK, "72", "string")
    assert quick_check("#### 71", "72").status is Status.WRONG  # type: ignore[union-attr]
    assert quick_check("nothing", "72").status is Status.NO_ANSWER  # type: ignore[union-attr]
    assert quick_check("\\boxed{\\sqrt{2}}", "\\frac{2}{\\sqrt{2}}") is None  # sympy needed


def test_huge_input_is_cheap() -> None:
    t0 = time.perf_counter()
    big = "x" * 100_000
    assert check_answer(big, "5").status is Status.NO_ANSWER
    assert check_answer("\\boxed{" + "1+" * 50_000 + "1}", "5").status is Status.WRONG
    assert check_answer("7 " * 50_000, "7").status is Status.OK
    assert time.perf_counter() - t0 < 2.0
