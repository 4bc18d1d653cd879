"""The judge's load control by hand: token-bucket schedules on a fake clock, the AIMD trajectory, slots.

No test here sleeps: the limiter gets a clock and a ``sleep`` that only advances that clock. (Against a
server, with timeouts and 429s, the same machinery is tested in ``test_judge.py``.)
"""

from __future__ import annotations

import asyncio

import pytest

from rewardhub_judge.client import JudgeClient, retry_after
from rewardhub_judge.limits import AIMD, RateLimiter, Slots, TokenBucket, estimate_tokens


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        await asyncio.sleep(0)  # let the other waiters run, as a real sleep would


def starts(limiter: RateLimiter, clock: FakeClock, costs: list[int], arrivals: list[float] | None = None):
    """When each request (arriving at ``arrivals``, all at 0 by default) is let through."""
    arrivals = arrivals or [0.0] * len(costs)
    out = []

    async def main():
        for cost, at in zip(costs, arrivals):
            if at > clock.now:
                clock.now = at
            await limiter.acquire(cost)
            out.append(round(clock.now, 6))

    asyncio.run(main())
    return out


def test_estimate_is_a_quarter_of_the_characters_plus_the_reply_budget():
    assert estimate_tokens("x" * 400, 512) == 612
    assert estimate_tokens("abc", 10) == 11  # rounded up


def test_bucket_refills_at_the_rate_and_holds_one_second():
    clock = FakeClock()
    bucket = TokenBucket(60, clock=clock)  # 1 a second, capacity 1
    assert bucket.capacity == 1.0 and bucket.delay(1) == 0.0
    bucket.take(1)
    assert bucket.delay(1) == pytest.approx(1.0)
    clock.now = 0.25
    assert bucket.delay(1) == pytest.approx(0.75)
    clock.now = 10.0
    assert bucket.delay(1) == 0.0 and bucket.level == 1.0  # saving up stops at the capacity
    big = TokenBucket(600, clock=clock)  # 10 a second
    big.take(25)  # more than the capacity: let through when full, the bucket goes into debt
    assert big.level == pytest.approx(-15.0) and big.delay(10) == pytest.approx(2.5)


def test_rpm_schedule_by_hand():
    clock = FakeClock()
    limiter = RateLimiter(rpm=120, clock=clock, sleep=clock.sleep)  # 2 a second, burst 2
    assert starts(limiter, clock, [1] * 5) == [0.0, 0.0, 0.5, 1.0, 1.5]
    assert limiter.stats.throttled_waits == 3 and limiter.stats.throttled_s == pytest.approx(1.5)
    # a pause refills the bucket: two go at once again, then one per 0.5 s
    assert starts(limiter, clock, [1] * 3, [5.0, 5.0, 5.0]) == [5.0, 5.0, 5.5]


def test_tpm_schedule_by_hand_with_usage_corrections():
    clock = FakeClock()
    limiter = RateLimiter(tpm=600, clock=clock, sleep=clock.sleep)  # 10 tokens a second, capacity 10
    assert starts(limiter, clock, [10, 10, 5]) == [0.0, 1.0, 1.5]
    limiter.correct(estimated=10, actual=4)  # the server counted less: 6 tokens come back
    assert limiter.tokens.level == pytest.approx(6.0)
    assert starts(limiter, clock, [10]) == [1.9]  # needs 4 more: 0.4 s
    limiter.correct(estimated=10, actual=30)  # more than estimated: 20 tokens of debt
    assert starts(limiter, clock, [10]) == [4.9]  # from -20 to 10: 3 s
    limiter.correct(estimated=10, actual=0)  # no usage reported: the estimate stands
    assert limiter.tokens.level == pytest.approx(0.0)


def test_both_limits_the_stricter_one_decides():
    clock = FakeClock()
    limiter = RateLimiter(rpm=60, tpm=6000, clock=clock, sleep=clock.sleep)  # 1 req/s; 100 tokens/s
    # 1 and 2: one per second (rpm); 3 is above the token capacity: it waits for a full bucket, leaves 150 of
    # debt; 4 then waits for the tokens, (150 + 50) / 100 = 2 s, longer than the rpm's 1 s
    assert starts(limiter, clock, [50, 50, 250, 50]) == [0.0, 1.0, 2.0, 4.0]
    assert RateLimiter().active is False and starts(RateLimiter(), clock, [10**9]) == [clock.now]


def test_aimd_trajectory_by_hand():
    aimd = AIMD(8)
    trajectory = [aimd.limit]
    e0 = aimd.epoch()
    assert aimd.congestion(e0) and aimd.limit == 4  # a 429: halve
    assert not aimd.congestion(e0) and aimd.limit == 4  # another failure sent before the halving: not again
    for _ in range(4):
        aimd.success()
    trajectory.append(aimd.limit)  # 4 successes at limit 4: +1
    for _ in range(4):
        aimd.success()
    trajectory.append(aimd.limit)  # 4 of the 5 needed at limit 5: still 5
    aimd.success()
    trajectory.append(aimd.limit)  # 6
    aimd.congestion(aimd.epoch())
    trajectory.append(aimd.limit)  # 3
    aimd.congestion(aimd.epoch())
    aimd.congestion(aimd.epoch())
    trajectory.append(aimd.limit)  # 1, then it stays at 1
    aimd.congestion(aimd.epoch())
    trajectory.append(aimd.limit)
    aimd.success()
    trajectory.append(aimd.limit)  # 1 success at limit 1: 2
    assert trajectory == [8, 5, 5, 6, 3, 1, 1, 2]
    assert aimd.decreases == 5
    for _ in range(100):
        aimd.success()
    assert aimd.limit == 8  # never above the cap
    fixed = AIMD(4, adaptive=False)
    fixed.congestion(fixed.epoch())
    assert fixed.limit == 4


def test_slots_stay_busy_until_the_holder_exits_even_when_cancelled():
    aimd = AIMD(2)
    slots = Slots(aimd)
    order = []

    async def hold(name: str, seconds: float):
        async with slots:
            order.append(("in", name, slots.busy))
            try:
                await asyncio.sleep(seconds)
            finally:
                await asyncio.sleep(0.01)  # closing the connection takes a moment: the slot is still held
                order.append(("out", name, slots.busy))

    async def main():
        first = asyncio.ensure_future(hold("a", 10))
        second = asyncio.ensure_future(hold("b", 0.02))
        await asyncio.sleep(0.005)
        third = asyncio.ensure_future(hold("c", 0.0))
        await asyncio.sleep(0.005)
        assert slots.busy == 2  # c waits
        aimd.congestion(aimd.epoch())  # the limit drops to 1 with 2 busy: nobody starts until 0 are busy
        first.cancel()  # a is abandoned (timed out); it holds its slot until its cleanup is done
        await asyncio.gather(first, second, third, return_exceptions=True)

    asyncio.run(main())
    assert [o[:2] for o in order] == [("in", "a"), ("in", "b"), ("out", "a"), ("out", "b"), ("in", "c"),
                                      ("out", "c")]
    assert slots.max_busy == 2 and slots.busy == 0


def test_retry_after_headers():
    assert retry_after({"retry-after-ms": "250"}) == 0.25
    assert retry_after({"retry-after": "3"}) == 3.0
    assert retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) < 0  # a date in the past
    assert retry_after({}) is None and retry_after({"retry-after": "soon"}) is None


def test_backoff_without_retry_after_doubles_from_half_a_second_to_eight():
    client = JudgeClient.__new__(JudgeClient)
    client._jitter = lambda: 0.0
    assert [client._backoff(None, n) for n in (1, 2, 3, 4, 5, 6)] == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0]
    client._jitter = lambda: 1.0
    assert client._backoff(None, 1) == 0.375 and client._backoff(0.01, 3) == 0.01
