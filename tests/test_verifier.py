"""The `verifier` provider: math, code and custom checkers chosen per row, statuses and reward scheme."""

import json
import textwrap
import time

import pytest

from rewardhub import Sample, Status, hookimpl
from rewardhub.cli.main import main
from rewardhub.errors import UnknownNameError
from rewardhub.plugins import get_plugin_manager, register_verifier_file
from rewardhub.reward_resolution import build_reward
from rewardhub.testing import check_provider
from rewardhub_verifier.provider import VerifierReward


@pytest.fixture(scope="module")
def verifier():
    provider = build_reward("verifier", {"math_timeout_s": "2", "code_timeout_s": "2"})
    yield provider
    provider.close()


def test_math_rows_follow_the_reft_scheme(verifier):
    rows = [("The answer is \\boxed{\\frac{1}{2}}", "0.5"), ("so 12+35=47", "47"), ("I think 46", "47"),
            ("no idea", "47"), ("\\boxed{9^{9^{9}}}", "1"), ("\\boxed{}", "3")]
    rewards = verifier([Sample("q", c, {"answer": a}) for c, a in rows])
    assert [(r.value, r.status.value) for r in rewards[:4]] == [
        (1.0, "ok"), (1.0, "ok"), (0.1, "wrong"), (0.0, "no_answer")]
    assert rewards[4].status in (Status.WRONG, Status.TIMEOUT)
    assert rewards[5].status is Status.NO_ANSWER


def test_code_rows_get_partial_credit_and_loops_count_as_wrong(verifier):
    tests = ["assert add(1, 2) == 3", "assert add(2, 2) == 4", "assert add(0, 5) == 6"]
    t0 = time.time()
    rewards = verifier([
        Sample("q", "```python\ndef add(a, b):\n    return a + b\n```", {"tests": tests[:2]}),
        Sample("q", "def add(a, b):\n    return a + b", {"tests": tests}),
        Sample("q", "def add(a, b):\n    while True: pass", {"tests": tests}),
        Sample("q", "import os\nos._exit(0)", {"tests": tests}),
    ])
    assert time.time() - t0 < 30
    assert (rewards[0].value, rewards[0].status) == (1.0, Status.OK)
    assert rewards[1].value == pytest.approx(2 / 3) and rewards[1].status is Status.WRONG
    assert rewards[2].status is Status.WRONG and rewards[2].value == 0.0 and "timeout" in rewards[2].detail
    assert rewards[3].status is Status.WRONG and rewards[3].value == 0.0
    assert verifier.isolation  # says which isolation was in force


class CustomPlugin:
    @hookimpl
    def rewardhub_register_verifiers(self, register):
        register("shouts", lambda completion, row: completion.isupper())
        register("graded", lambda completion, row: len(completion) / 10)
        register("explodes", lambda completion, row: 1 / 0)


def test_custom_verifiers_by_row_column_and_option():
    pm = get_plugin_manager()
    pm.register(CustomPlugin(), name="custom_test")
    try:
        provider = VerifierReward()
        rewards = provider([Sample("q", "HELLO", {"verifier": "shouts"}), Sample("q", "hi", {"verifier": "shouts"}),
                            Sample("q", "x", {"verifier": "explodes"}), Sample("q", "x", {"verifier": "nope"}),
                            Sample("q", "x", {"other": 1})])
        assert [(r.value, r.status.value) for r in rewards[:2]] == [(1.0, "ok"), (0.0, "wrong")]
        assert rewards[2].status is Status.ERROR and "ZeroDivisionError" in rewards[2].detail
        assert rewards[3].status is Status.ERROR and "unknown verifier 'nope'" in rewards[3].detail
        assert rewards[4].status is Status.ERROR and "neither 'answer' nor 'tests'" in rewards[4].detail
        graded = provider([Sample("q", "x" * 5, {"verifier": "graded"}), Sample("q", "x" * 10, {"verifier": "graded"})])
        assert [(r.value, r.status.value) for r in graded] == [(0.5, "wrong"), (1.0, "ok")]
        forced = VerifierReward(checker="shouts")
        assert forced([Sample("q", "YES", {"answer": "no"})])[0].value == 1.0
        with pytest.raises(UnknownNameError, match="unknown checker"):
            VerifierReward(checker="nope")
    finally:
        pm.unregister(name="custom_test")


def test_verifier_from_a_file_through_the_cli(tmp_path, capsys, fresh_plugins):
    checks = tmp_path / "checks.py"
    checks.write_text(textwrap.dedent("""
        from rewardhub import verifier

        @verifier("ends_politely")
        def ends_politely(completion, row):
            return completion.rstrip().endswith("thank you.")
    """))
    data = tmp_path / "d.jsonl"
    data.write_text('{"completion": "ok, thank you.", "verifier": "ends_politely"}\n'
                    '{"completion": "no", "verifier": "ends_politely"}\n')
    out = tmp_path / "s.jsonl"
    assert main(["score", "--reward=verifier", "--verifier", str(checks), "--data", str(data),
                 "--output", str(out)]) == 0
    assert [json.loads(line)["reward"] for line in out.read_text().splitlines()] == [1.0, 0.0]
    register_verifier_file(checks)  # registering twice is harmless


def test_conformance(verifier):
    check_provider(verifier, [Sample("1+1=", "2", {"answer": "2"}), Sample("1+1=", "3", {"answer": "2"})])
