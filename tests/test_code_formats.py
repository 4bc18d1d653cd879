"""The test formats code-RL datasets bring (MBPP asserts, HumanEval check, APPS/CodeContests/LiveCodeBench
input/output and call-based pairs) and program-of-thought math, run for real in the sandbox."""

from __future__ import annotations

import json
import shutil
import time

import pytest

from rewardhub import Sample, Status
from rewardhub_verifier.code_formats import parse_tests
from rewardhub_verifier.provider import VerifierReward
from rewardhub_verifier.sandbox import CodeSandbox


@pytest.fixture(scope="module")
def sb():
    if not shutil.which("bwrap"):
        pytest.skip("bubblewrap is not installed (apt-get install bubblewrap)")
    with CodeSandbox(workers=2, timeout_s=2.0) as box:
        yield box


def test_parse_tests_recognises_each_format():
    assert parse_tests(["assert f(1) == 1", "assert f(2) == 2"]).kind == "asserts"
    assert parse_tests("assert f(1) == 1").tests == ("assert f(1) == 1",)
    assert parse_tests(None).tests == ("pass",)
    he = parse_tests("def check(candidate):\n    assert candidate(1) == 2\n", entry_point="inc")
    assert (he.kind, he.entry_point) == ("check", "inc")
    io = parse_tests([{"input": "1 2\n", "output": "3\n"}, {"stdin": "2 2", "stdout": "4"}])
    assert io.kind == "io" and io.cases == (("1 2\n", "3\n"), ("2 2", "4"))
    apps = parse_tests(json.dumps({"inputs": ["1\n", "5\n"], "outputs": ["2\n", "10\n"]}))
    assert apps.kind == "io" and apps.total == 2
    cc = parse_tests({"input": ["3\n"], "output": ["6\n"]})
    assert cc.kind == "io" and cc.cases == (("3\n", "6\n"),)
    call = parse_tests({"inputs": [[1, 2], [3, 4]], "outputs": [3, 7], "fn_name": "add"})
    assert call.kind == "fncall" and call.cases == (([1, 2], 3), ([3, 4], 7))
    lcb = parse_tests([{"input": "[1, 2]\n3", "output": "[1, 2, 3]", "testtype": "functional"}], fn_name="push")
    assert lcb.kind == "fncall" and lcb.cases == (([[1, 2], 3], [1, 2, 3]),)
    with pytest.raises(ValueError):
        parse_tests([{"x": 1}])
    with pytest.raises(ValueError):
        parse_tests([{"input": "1", "output": "1", "testtype": "functional"}])  # no function name


def test_mbpp_asserts_with_setup_code(sb):
    code = "def remove_odd(xs):\n    return [x for x in xs if x % 2 == 0]\n"
    tests = ["assert remove_odd([1, 2, 3]) == [2]", "assert remove_odd(DATA) == [2, 4]",
             "assert remove_odd([5]) == [5]"]
    r = sb.run(code, tests, setup="DATA = [1, 2, 3, 4]")
    assert (r.passed, r.total, r.status) == (2, 3, Status.WRONG), r
    assert r.fraction == pytest.approx(2 / 3)


def test_humaneval_check_with_entry_point(sb):
    test = ("METADATA = {}\n\n\ndef check(candidate):\n    assert candidate([1.0, 2.0, 3.9], 0.3) is False\n"
            "    assert candidate([1.0, 2.8, 3.0], 0.3) is True\n")
    right = ("from typing import List\n\n\ndef has_close_elements(numbers: List[float], threshold: float) -> bool:\n"
             "    return any(abs(a - b) < threshold for i, a in enumerate(numbers) for b in numbers[i + 1:])\n")
    wrong = right.replace("< threshold", "> threshold")
    r_ok, r_bad, r_missing = sb.run_many([
        (right, test, {"entry_point": "has_close_elements"}),
        (wrong, test, {"entry_point": "has_close_elements"}),
        ("def other():\n    pass\n", test, {"entry_point": "has_close_elements"}),
    ])
    assert (r_ok.status, r_ok.passed, r_ok.total) == (Status.OK, 1, 1), r_ok
    assert r_bad.status == Status.WRONG and r_bad.passed == 0
    assert r_missing.status == Status.WRONG and "has_close_elements" in r_missing.detail


def test_stdin_stdout_pairs_whitespace_normalised(sb):
    code = "n = int(input())\nprint(*range(n))   \nprint()\n"
    cases = [{"input": "3\n", "output": "0 1 2"}, {"input": "2", "output": "0 1\n\n\n"},
             {"input": "1", "output": "0  "}, {"input": "4", "output": "0 1 2 4"}]
    r = sb.run(code, cases)
    assert (r.passed, r.total, r.status) == (3, 4, Status.WRONG), r
    assert "WrongAnswer" in r.detail
    assert sb.run(code, cases[:3]).status == Status.OK
    crash = sb.run("raise SystemExit(3)", cases[:1])
    assert crash.passed == 0 and "exit code 3" in crash.detail
    ok_exit = sb.run("print(0, 1, 2)\nimport sys\nsys.exit(0)", cases[:1])
    assert ok_exit.status == Status.OK  # a program may exit 0 after printing its answer


def test_apps_json_and_codecontests_dict(sb):
    code = "import sys\nprint(sum(map(int, sys.stdin.read().split())))\n"
    apps = json.dumps({"inputs": ["1 2\n", "5 5 5\n"], "outputs": ["3\n", "15\n"]})
    cc = {"input": ["10 -3\n"], "output": ["7\n"]}
    r1, r2 = sb.run_many([(code, apps), (code, cc)])
    assert r1.status == Status.OK and r1.total == 2 and r2.status == Status.OK, (r1, r2)


def test_per_test_time_limit_and_stop_after_timeout(sb):
    code = "n = int(input())\nwhile n > 1:\n    pass\nprint(n)\n"
    cases = [{"input": "1", "output": "1"}, {"input": "5", "output": "5"}, {"input": "1", "output": "1"}]
    t0 = time.monotonic()
    r = sb.run(code, cases, time_limit_s=0.5)
    assert time.monotonic() - t0 < 2.0
    assert (r.passed, r.total, r.status) == (1, 3, Status.TIMEOUT), r


def test_call_based_apps_and_leetcode_style(sb):
    apps = {"inputs": [[1, 2], [[1], 2]], "outputs": [[3], [[1, 2]]], "fn_name": "combine"}
    code = "def combine(a, b):\n    return a + b if isinstance(a, int) else a + [b]\n"
    r = sb.run(code, apps)
    assert r.status == Status.OK, r.detail  # APPS's convention: the expected value may be wrapped in a list
    lcb = [{"input": "[2, 7, 11, 15]\n9", "output": "[0, 1]", "testtype": "functional"},
           {"input": "[3, 3]\n6", "output": "[0, 1]", "testtype": "functional"}]
    leetcode = ("class Solution:\n    def twoSum(self, nums, target):\n        seen = {}\n"
                "        for i, x in enumerate(nums):\n            if target - x in seen:\n"
                "                return [seen[target - x], i]\n            seen[x] = i\n")
    r = sb.run(leetcode, lcb, fn_name="twoSum")
    assert r.status == Status.OK, r.detail
    r = sb.run(leetcode.replace("return [seen[target - x], i]", "return [i, seen[target - x]]"), lcb,
               fn_name="twoSum")
    assert r.passed == 0 and "WrongAnswer" in r.detail


def test_provider_reads_entry_point_and_io_columns():
    if not shutil.which("bwrap"):
        pytest.skip("bubblewrap is not installed")
    provider = VerifierReward(code_timeout_s=2)
    try:
        rewards = provider([
            Sample("q", "def inc(x):\n    return x + 1\n",
                   {"tests": "def check(candidate):\n    assert candidate(1) == 2\n", "entry_point": "inc"}),
            Sample("q", "print(int(input()) + 1)", {"tests": [{"input": "1", "output": "2"},
                                                              {"input": "2", "output": "4"}]}),
            Sample("q", "def f(g):\n    return g(1)\n", {"tests": ["assert f(lambda x: x) == 1"]}),
        ])
        assert (rewards[0].value, rewards[0].status) == (1.0, Status.OK)
        assert rewards[1].value == pytest.approx(0.5) and rewards[1].status is Status.WRONG
        assert rewards[2].status is Status.ERROR and "cannot cross" in rewards[2].detail  # masked: the row's
    finally:
        provider.close()


# -------------------------------------------------------------------------------- program-of-thought (P-CoT)


def test_program_checker_right_wrong_and_no_answer():
    if not shutil.which("bwrap"):
        pytest.skip("bubblewrap is not installed")
    provider = VerifierReward(code_timeout_s=2)
    gsm = {"verifier": "program", "answer": "Natalia sold 48/2 = 24 clips in May.\n#### 72"}
    programs = [
        "```python\ndef solution():\n    april = 48\n    may = april / 2\n    return april + may\n```",  # 72.0
        "clips = 48 + 48 // 2\nprint('total:')\nprint(clips)\n",  # last printed line
        "def solution():\n    return 48 + 48 * 2\n",  # 144: wrong
        "def solution():\n    return 1 / 0\n",  # crashes: no answer
        "while True:\n    pass\n",  # hangs: no answer
        "I think the answer is 72.",  # not a program: no answer, never a pass
        "import math\ndef solution():\n    import builtins\n    builtins.str = lambda v: '72'\n    return 71\n",
    ]
    try:
        rewards = provider([Sample("q", p, gsm) for p in programs])
        got = [(r.value, r.status) for r in rewards]
        assert got[0] == (1.0, Status.OK) and got[1] == (1.0, Status.OK), rewards[:2]
        assert got[2] == (0.1, Status.WRONG)
        assert got[3] == (0.0, Status.NO_ANSWER) and got[4] == (0.0, Status.NO_ANSWER)
        assert got[5][0] < 1.0 and got[5][1] is not Status.OK
        # A program that patches its own builtins only changes (or breaks) what it reports: the gold answer
        # never enters the sandbox, and the comparison runs on the host. Its fault, never a masked error.
        assert rewards[6].status is not Status.ERROR
        fractions = provider([Sample("q", "def solution():\n    from fractions import Fraction\n"
                                          "    return Fraction(3, 4)\n", {"verifier": "program", "answer": "0.75"})])
        assert fractions[0].status is Status.OK, fractions[0]
        forced = VerifierReward(checker="program", code_timeout_s=2)
        assert forced([Sample("q", "print(2 + 2)", {"answer": "4"})])[0].status is Status.OK
        forced.close()
    finally:
        provider.close()
