"""MathCheckPool: checks in worker processes, hard wall-clock kill, crash isolation."""

from __future__ import annotations

import threading
import time

import pytest

from rewardhub.rewards import Status
from rewardhub_verifier.math_answer import MathVerdict
from rewardhub_verifier.math_pool import HOOK_PREFIX, MathCheckPool

TIMEOUT_S = 1.0


@pytest.fixture(scope="module")
def pool():
    with MathCheckPool(workers=2, timeout_s=TIMEOUT_S, test_hooks=True) as p:
        yield p


def _sleep(seconds: float) -> str:
    return f"{HOOK_PREFIX}sleep:{seconds}"


def test_order_and_statuses(pool: MathCheckPool) -> None:
    items = [
        ("\\boxed{\\frac{\\sqrt{2}}{2}}", "\\frac{1}{\\sqrt{2}}"),  # sympy, in a worker
        ("#### 72", "72"),  # fast path
        ("\\boxed{(x+1)^2}", "x^2+2x+1"),
        ("no answer here", "5"),
        ("\\boxed{(x+1)^2}", "x^2+1"),
        ("The answer is (B).", "B"),
    ]
    got = [v.status for v in pool.check_many(items)]
    assert got == [Status.OK, Status.OK, Status.OK, Status.NO_ANSWER, Status.WRONG, Status.OK]
    assert pool.check_many([]) == []


def test_many_items_keep_order(pool: MathCheckPool) -> None:
    items = [(f"\\boxed{{\\frac{{{i}}}{{\\sqrt{{2}}}}}}", f"\\frac{{{i}\\sqrt{{2}}}}{{2}}") for i in range(1, 150)]
    items += [(f"\\boxed{{\\sqrt{{{i}}}}}", f"{i}") for i in range(2, 40)]  # sqrt(i) != i for i >= 2
    verdicts = pool.check_many(items)
    assert [v.status for v in verdicts[:149]] == [Status.OK] * 149
    assert all(v.status is Status.WRONG for v in verdicts[149:])
    assert verdicts[5].extracted == "\\frac{6}{\\sqrt{2}}"


@pytest.mark.parametrize(
    ("completion", "gold", "allowed"),
    [
        ("\\boxed{9^{9^{9}}}", "1", {Status.WRONG, Status.TIMEOUT}),
        ("\\boxed{10^{10^{10}}}", "1", {Status.WRONG, Status.TIMEOUT}),
        ("\\boxed{1/0}", "1", {Status.WRONG}),
        ("\\boxed{}", "1", {Status.NO_ANSWER}),
        ("1" * 100_000, "1", {Status.WRONG}),
        ("\\boxed{" + "9" * 100_000 + "}", "1", {Status.WRONG}),
        ("x" * 100_000, "1", {Status.NO_ANSWER}),
        ("\\boxed{" + "(" * 5000 + "1" + ")" * 5000 + "}", "1", {Status.WRONG, Status.TIMEOUT}),
        ("\\boxed{" + "{" * 5000 + "1" + "}" * 5000 + "}", "2", {Status.WRONG, Status.TIMEOUT}),
    ],
)
def test_pathological_inputs_never_hang(pool: MathCheckPool, completion: str, gold: str, allowed: set) -> None:
    t0 = time.monotonic()
    (v,) = pool.check_many([(completion, gold)])
    assert v.status in allowed, v
    assert time.monotonic() - t0 < TIMEOUT_S + 2.0


def test_pathological_inputs_in_the_worker() -> None:
    """The same inputs with the in-process fast path off: everything goes through a worker."""
    items = [
        ("\\boxed{9^{9^{9}}}", "1"),
        ("\\boxed{1/0}", "1"),
        ("\\boxed{}", "1"),
        ("1" * 100_000, "1"),
        ("\\boxed{" + "(" * 5000 + "1" + ")" * 5000 + "}", "1"),
        ("\\boxed{2}", "2"),
    ]
    t0 = time.monotonic()
    with MathCheckPool(workers=2, timeout_s=TIMEOUT_S, fast_path=False) as p:
        got = [v.status for v in p.check_many(items)]
        assert p.stats.fast_path == 0
    assert got[0] in (Status.WRONG, Status.TIMEOUT)
    assert got[1:] == [Status.WRONG, Status.NO_ANSWER, Status.WRONG, Status.WRONG, Status.OK]
    assert time.monotonic() - t0 < 10


def test_slow_check_is_killed_and_the_pool_keeps_serving(pool: MathCheckPool) -> None:
    before = pool.stats.as_dict()
    t0 = time.monotonic()
    items = [
        ("\\boxed{1}", _sleep(30)),
        ("\\boxed{\\frac{1}{2}}", "0.5"),
        ("\\boxed{\\sqrt{8}}", "2\\sqrt{2}"),
        ("\\boxed{3}", "4"),
    ]
    verdicts = pool.check_many(items)
    elapsed = time.monotonic() - t0
    assert verdicts[0].status is Status.TIMEOUT
    assert "timed out" in verdicts[0].detail
    assert [v.status for v in verdicts[1:]] == [Status.OK, Status.OK, Status.WRONG]
    assert TIMEOUT_S <= elapsed < TIMEOUT_S + 3
    assert pool.stats.timeouts == before["timeouts"] + 1
    assert pool.stats.restarts == before["restarts"] + 1
    # the replacement worker answers correctly
    assert pool.check("\\boxed{\\frac{\\pi}{2}}", "\\pi/2").status is Status.OK


def test_kill_mid_chunk_redoes_the_unreported_items() -> None:
    """Results come back per chunk: items finished before the killed one are re-queued, not lost."""
    items = [(f"\\boxed{{\\sqrt{{{i * i}}}}}", str(i)) for i in range(2, 5)]
    items.insert(2, ("\\boxed{1}", _sleep(30)))
    with MathCheckPool(workers=1, timeout_s=0.5, test_hooks=True, chunk_size=8) as p:
        verdicts = p.check_many(items)
        assert p.stats.timeouts == 1 and p.stats.restarts == 1
    assert [v.status for v in verdicts] == [Status.OK, Status.OK, Status.TIMEOUT, Status.OK]


def test_spawn_start_method() -> None:
    with MathCheckPool(workers=1, timeout_s=0.5, start_method="spawn", test_hooks=True) as p:
        verdicts = p.check_many([("\\boxed{1}", _sleep(30)), ("\\boxed{\\sqrt{4}}", "2")])
    assert [v.status for v in verdicts] == [Status.TIMEOUT, Status.OK]


def test_a_check_just_under_the_timeout_passes(pool: MathCheckPool) -> None:
    (v,) = pool.check_many([("\\boxed{5}", _sleep(TIMEOUT_S / 4))])
    assert v.status is Status.WRONG  # hook gold becomes "0"


def test_timeouts_in_the_same_batch_are_independent(pool: MathCheckPool) -> None:
    items = [("\\boxed{1}", _sleep(30)), ("\\boxed{1}", _sleep(30))] + [
        (f"\\boxed{{\\sqrt{{{i * i}}}}}", str(i)) for i in range(2, 12)
    ]
    t0 = time.monotonic()
    verdicts = pool.check_many(items)
    assert [v.status for v in verdicts[:2]] == [Status.TIMEOUT, Status.TIMEOUT]
    assert all(v.status is Status.OK for v in verdicts[2:])
    assert time.monotonic() - t0 < 2 * TIMEOUT_S + 3


@pytest.mark.parametrize("hook", ["segfault", "memoryerror", "exit"])
def test_worker_crash_gives_error_for_that_item_only(pool: MathCheckPool, hook: str) -> None:
    restarts = pool.stats.restarts
    items = [("\\boxed{\\sqrt{4}}", "2"), ("\\boxed{1}", HOOK_PREFIX + hook), ("\\boxed{\\sqrt{9}}", "3")]
    verdicts = pool.check_many(items)
    assert verdicts[1].status is Status.ERROR
    assert verdicts[1].detail
    assert verdicts[0].status is Status.OK and verdicts[2].status is Status.OK
    assert pool.stats.restarts == restarts + 1
    assert pool.check("\\boxed{\\sqrt{16}}", "4").status is Status.OK


def test_exception_in_check_is_error_without_restart(pool: MathCheckPool) -> None:
    restarts = pool.stats.restarts
    (v,) = pool.check_many([("\\boxed{1}", HOOK_PREFIX + "raise")])
    assert v.status is Status.ERROR and "RuntimeError" in v.detail
    assert pool.stats.restarts == restarts


def test_works_off_the_main_thread(pool: MathCheckPool) -> None:
    """No signal.alarm anywhere: a pool used from a worker thread still enforces its timeout."""
    out: list[list[MathVerdict]] = []
    th = threading.Thread(
        target=lambda: out.append(pool.check_many([("\\boxed{1}", _sleep(30)), ("\\boxed{\\sqrt{4}}", "2")]))
    )
    th.start()
    th.join(timeout=TIMEOUT_S + 10)
    assert not th.is_alive()
    assert [v.status for v in out[0]] == [Status.TIMEOUT, Status.OK]


def test_stats_and_fast_path(pool: MathCheckPool) -> None:
    before = pool.stats.as_dict()
    pool.check_many([("#### 5", "5"), ("#### 6", "5"), ("\\boxed{\\sqrt{4}}", "2")])
    after = pool.stats.as_dict()
    assert after["checks"] - before["checks"] == 3
    assert after["fast_path"] - before["fast_path"] == 2
    assert after["pooled"] - before["pooled"] == 1


def test_close_and_validation() -> None:
    with pytest.raises(ValueError):
        MathCheckPool(workers=0)
    with pytest.raises(ValueError):
        MathCheckPool(start_method="fork")
    p = MathCheckPool(workers=1, timeout_s=1.0)
    procs = [w.proc for w in p._workers]
    p.close()
    p.close()  # idempotent
    assert all(not proc.is_alive() for proc in procs)
    with pytest.raises(RuntimeError):
        p.check_many([("1", "1")])
