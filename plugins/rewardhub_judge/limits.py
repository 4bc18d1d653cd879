"""Load control for the judge: request and token rate limits, and adaptive (AIMD) concurrency.

Rate limits (``rpm``, ``tpm``) are token buckets. A bucket holds up to ``capacity`` units and refills at
``rate_per_minute / 60`` units per second; a request takes its cost when the bucket holds it. The capacity is
one second's worth (at least one request, and at least one largest request for tokens is let through when the
bucket is full, leaving it in debt), because hosted endpoints enforce per-minute limits over shorter windows
("60,000 per minute" as 1,000 per second): a full minute's burst at start would be refused. A request's
token cost is estimated before it is sent, from the prompt's length (``len(text) / 4`` tokens, rounded up, the
usual rule of thumb for English) plus ``max_tokens``; when the reply reports ``usage`` the difference is
given back (or charged) so the bucket follows what the server counted.

Concurrency is AIMD, additive increase and multiplicative decrease, between 1 and the configured cap: the
limit halves when the judge shows congestion (HTTP 429, a 5xx, a timeout) and grows by one after a window of
successes (as many successes as the current limit, so by about one per round trip). Why AIMD: the judge is a
shared bottleneck whose capacity we cannot see (other clients, its batch size, its hardware), which is
exactly TCP's situation, and AIMD is the policy TCP has used for that since 1988: Chiu and Jain showed it is
the linear policy that converges to full, fair use of such a link from any start. As in TCP, a burst of
failures from one congestion event halves the limit once: failures of requests sent before the last decrease
are not counted again.

Everything takes an injectable ``clock`` (and the limiter a ``sleep``), so the schedules are tested by hand
with no real waiting.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass


def estimate_tokens(text: str, max_tokens: int) -> int:
    """What a request may cost: ``ceil(len(text) / 4)`` prompt tokens plus the reply's ``max_tokens``."""
    return math.ceil(len(text) / 4) + max_tokens


class TokenBucket:
    """``rate_per_minute`` units a minute, at most ``capacity`` saved up; the level may go negative (debt).

    A cost above the capacity is let through when the bucket is full, so no request waits forever.
    """

    def __init__(self, rate_per_minute: float, capacity: float | None = None,
                 clock: Callable[[], float] = time.monotonic):
        if not rate_per_minute > 0:
            raise ValueError(f"rate must be > 0, got {rate_per_minute}")
        self.rate = rate_per_minute / 60.0  # units per second
        self.capacity = float(capacity) if capacity is not None else max(1.0, self.rate)
        self.clock = clock
        self.level = self.capacity
        self.stamp = clock()

    def _refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
        self.stamp = now

    def delay(self, cost: float, now: float | None = None) -> float:
        """Seconds until ``cost`` can be taken (0: now)."""
        now = self.clock() if now is None else now
        self._refill(now)
        need = min(cost, self.capacity)
        return max(0.0, (need - self.level) / self.rate)

    def take(self, cost: float, now: float | None = None) -> None:
        self._refill(self.clock() if now is None else now)
        self.level -= cost

    def give(self, amount: float) -> None:
        """Return ``amount`` (negative: charge it), e.g. the difference between the estimate and the usage."""
        self.level = min(self.capacity, self.level + amount)


@dataclass
class LimiterStats:
    throttled_waits: int = 0
    throttled_s: float = 0.0


class RateLimiter:
    """Requests per minute and tokens per minute (either may be None: no limit), waited for in FIFO order."""

    def __init__(self, rpm: float | None = None, tpm: float | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep):
        self.requests = TokenBucket(rpm, clock=clock) if rpm else None
        self.tokens = TokenBucket(tpm, clock=clock) if tpm else None
        self.clock, self.sleep = clock, sleep
        self.stats = LimiterStats()
        self._lock: asyncio.Lock | None = None

    @property
    def active(self) -> bool:
        return self.requests is not None or self.tokens is not None

    def delay(self, tokens: int, now: float) -> float:
        waits = [b.delay(c, now) for b, c in ((self.requests, 1), (self.tokens, tokens)) if b is not None]
        return max(waits, default=0.0)

    async def acquire(self, tokens: int) -> float:
        """Wait until one request of ``tokens`` estimated tokens fits both budgets, take it; seconds waited."""
        if not self.active:
            return 0.0
        if self._lock is None:
            self._lock = asyncio.Lock()  # FIFO: the first to wait is the first served
        waited = 0.0
        async with self._lock:
            while True:
                now = self.clock()
                wait = self.delay(tokens, now)
                if wait <= 0:
                    for bucket, cost in ((self.requests, 1), (self.tokens, tokens)):
                        if bucket is not None:
                            bucket.take(cost, now)
                    break
                if waited == 0.0:
                    self.stats.throttled_waits += 1
                waited += wait
                self.stats.throttled_s += wait
                await self.sleep(wait)
        return waited

    def correct(self, estimated: int, actual: int) -> None:
        """The server counted ``actual`` tokens for a request charged ``estimated``: settle the difference."""
        if self.tokens is not None and actual > 0:
            self.tokens.give(estimated - actual)


class AIMD:
    """A concurrency limit between 1 and ``cap``: halve on congestion, +1 after ``limit`` successes.

    ``adaptive=False`` keeps the limit at ``cap``. :meth:`epoch` is read when a request is sent and passed
    back with its outcome, so failures from before the last decrease do not halve the limit again.
    """

    def __init__(self, cap: int, adaptive: bool = True):
        self.cap, self.adaptive = cap, adaptive
        self.limit = cap
        self.successes = 0
        self.decreases = 0
        self._epoch = 0

    def epoch(self) -> int:
        return self._epoch

    def success(self) -> None:
        if not self.adaptive or self.limit >= self.cap:
            return
        self.successes += 1
        if self.successes >= self.limit:
            self.limit += 1
            self.successes = 0

    def congestion(self, epoch: int | None = None) -> bool:
        """A 429, 5xx or timeout of a request sent in ``epoch``; True when it halved the limit."""
        if not self.adaptive or (epoch is not None and epoch != self._epoch):
            return False
        self.limit = max(1, self.limit // 2)
        self.successes = 0
        self.decreases += 1
        self._epoch += 1
        return True


class Slots:
    """At most ``aimd.limit`` holders at once; a slot stays busy until its holder exits, whatever happens.

    The holder's body includes closing its HTTP request (a timed-out request is cancelled inside the slot,
    and the cancellation closes the connection before the slot is released), so a new request never starts
    while an abandoned one still occupies the judge.
    """

    def __init__(self, aimd: AIMD):
        self.aimd = aimd
        self.busy = 0
        self.max_busy = 0
        self._waiters: list[asyncio.Future] = []

    async def __aenter__(self) -> Slots:
        while self.busy >= self.aimd.limit:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
        self.busy += 1
        self.max_busy = max(self.max_busy, self.busy)
        return self

    async def __aexit__(self, *exc) -> None:
        self.busy -= 1  # synchronous: a cancelled holder cannot skip it
        self.wake()

    def wake(self) -> None:
        """Let the waiters (oldest first) re-check the limit: after a release, or after the limit grew."""
        for waiter in self._waiters[:max(0, self.aimd.limit - self.busy)]:
            if not waiter.done():
                waiter.set_result(None)
