"""Talking to an OpenAI-compatible judge: many requests in flight, each failure turned into a status.

Why asyncio: a judge call is network-bound (0.1 s to tens of seconds), and a training batch has dozens to
hundreds of completions. ``AsyncOpenAI`` keeps one connection pool and overlaps the requests (measured in
``bench/bench_judge.py``).

Load control (:mod:`rewardhub_judge.limits`): each attempt takes a concurrency slot (AIMD between 1 and
``concurrency``), then waits for the ``rpm``/``tpm`` budgets, then is sent. Retries are ours, not the OpenAI
client's (it is built with ``max_retries=0``), so that every 429, 5xx and timeout is seen by AIMD and every
attempt is counted against the rate limits; they follow the same rules as the OpenAI client: 408/409/429/5xx,
timeouts and connection errors are retried, ``x-should-retry`` overrides, ``Retry-After``/``retry-after-ms``
is honoured up to two minutes, otherwise exponential backoff from 0.5 s to 8 s with jitter.

Cancellation: an attempt's timeout is a deadline on the whole request (``asyncio.timeout``, with the HTTP
client's own per-read timeout as a backstop). When it fires, the request's task is cancelled, and the HTTP
stack closes that connection (httpcore closes a connection whose response was not read, under a shield, on
any exception or cancellation) before the attempt leaves its slot, so the server sees the disconnect and a
new request never starts while an abandoned one still holds its slot. ``rewardhub serve`` stops generating
when its client disconnects (:mod:`rewardhub_judge.server`), as vLLM does.

Why a private event loop on its own thread: the reward contract's ``score()`` is synchronous, and it may be
called from a thread that already runs an event loop (a notebook, an async server), where
``asyncio.run`` would fail. Submitting to a loop we own works in both cases, and keeps the client (bound to
the loop that first used it) and its connection pool alive across batches.
"""

from __future__ import annotations

import asyncio
import email.utils
import math
import random
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

from rewardhub.rewards import Status
from rewardhub_judge.limits import AIMD, RateLimiter, Slots, estimate_tokens

T = TypeVar("T")


class JudgeFailure(Exception):
    """A request that got no usable reply: ``status`` is ``timeout`` or ``error``, ``detail`` says why."""

    def __init__(self, status: Status, detail: str):
        super().__init__(detail)
        self.status, self.detail = status, detail


@dataclass(frozen=True)
class Reply:
    """One judge reply: its text, why generation stopped, and the tokens it cost."""

    text: str
    finish_reason: str | None
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass
class ClientStats:
    """Counters over every request this client made (one request may take several attempts)."""

    requests: int = 0
    attempts: int = 0
    retries: int = 0
    timeouts: int = 0
    cancelled: int = 0
    rate_limited: int = 0
    errors: int = 0
    latency_total_s: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    max_in_flight: int = 0
    _in_flight: int = field(default=0, repr=False)

    @property
    def latency_mean_s(self) -> float:
        return self.latency_total_s / self.requests if self.requests else 0.0


class LoopThread:
    """An asyncio event loop running forever on a daemon thread; :meth:`run` waits for a coroutine on it."""

    def __init__(self, name: str = "rewardhub-judge"):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        if threading.current_thread() is self.thread:
            coro.close()
            raise RuntimeError("the judge's event loop cannot wait on itself; call score() from another thread")
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def close(self) -> None:
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        if not self.thread.is_alive():
            self.loop.close()


class JudgeClient:
    """An ``AsyncOpenAI`` client behind rate limits and AIMD slots, driven from synchronous code.

    Args:
        base_url: the OpenAI-compatible endpoint, e.g. ``http://127.0.0.1:8000/v1``.
        api_key: sent as a bearer token (the client refuses to start without one, so pass a dummy for local servers).
        timeout: seconds per attempt, the whole request (connect, send, wait, read).
        max_retries: retries of 408/409/429/5xx, timeouts and connection errors, with backoff.
        concurrency: most requests in flight at once (AIMD's ceiling).
        adaptive: AIMD between 1 and ``concurrency``; False keeps ``concurrency`` fixed.
        rpm, tpm: requests and tokens per minute (None or 0: no limit).
        clock, sleep, jitter: injectable for tests (``time.monotonic``, ``asyncio.sleep``, ``random.random``).
    """

    def __init__(self, base_url: str, api_key: str, timeout: float, max_retries: int, concurrency: int,
                 adaptive: bool = True, rpm: float | None = None, tpm: float | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 jitter: Callable[[], float] = random.random):
        import openai

        self.base_url, self.timeout, self.max_retries = base_url, timeout, max_retries
        self.stats = ClientStats()
        self.aimd = AIMD(concurrency, adaptive)
        self.slots = Slots(self.aimd)
        self.limiter = RateLimiter(rpm or None, tpm or None, clock=clock, sleep=sleep)
        self._sleep, self._jitter = sleep, jitter
        self._runner = LoopThread()
        self._client = openai.AsyncOpenAI(base_url=base_url, api_key=api_key, timeout=timeout, max_retries=0)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the client's loop and return its result (safe inside a running event loop)."""
        return self._runner.run(coro)

    async def chat(self, model: str, messages: list[dict[str, str]], temperature: float, max_tokens: int) -> Reply:
        """One chat completion, retried; raises :class:`JudgeFailure` (nothing else) when there is no reply."""
        stats = self.stats
        estimate = estimate_tokens("".join(str(m.get("content", "")) for m in messages), max_tokens)
        start = time.perf_counter()
        attempt = 0
        try:
            while True:
                attempt += 1
                outcome = await self._attempt(model, messages, temperature, max_tokens, estimate, attempt)
                if isinstance(outcome, Reply):
                    self.aimd.success()
                    self.slots.wake()
                    return outcome
                failure, retry_in = outcome
                if retry_in is None or attempt > self.max_retries:
                    failure = self._final(failure, attempt)
                    if failure.status is Status.TIMEOUT:
                        stats.timeouts += 1
                    else:
                        stats.errors += 1
                    raise failure
                stats.retries += 1
                await self._sleep(retry_in)
        finally:
            stats.requests += 1
            stats.latency_total_s += time.perf_counter() - start

    async def _attempt(self, model: str, messages: list[dict[str, str]], temperature: float, max_tokens: int,
                       estimate: int, attempt: int) -> Reply | tuple[JudgeFailure, float | None]:
        """One HTTP request inside a slot: a reply, or the failure and the seconds to wait before a retry
        (None: do not retry). The slot is released only after the request has finished or been closed."""
        stats = self.stats
        async with self.slots:
            await self.limiter.acquire(estimate)
            epoch = self.aimd.epoch()
            stats.attempts += 1
            stats._in_flight += 1
            stats.max_in_flight = max(stats.max_in_flight, stats._in_flight)
            try:
                async with asyncio.timeout(self.timeout):
                    response = await self._client.chat.completions.create(
                        model=model, messages=messages, temperature=temperature, max_tokens=max_tokens, n=1)
                reply = self._reply(response)
                self.limiter.correct(estimate, reply.prompt_tokens + reply.completion_tokens)
                return reply
            except JudgeFailure as failure:
                return failure, None
            except Exception as exc:
                failure, retry_in, congested = self._classify(exc, attempt)
                if failure.status is Status.TIMEOUT:
                    stats.cancelled += 1  # the cancelled request's connection is closed by now
                if congested:
                    self.aimd.congestion(epoch)
                return failure, retry_in
            finally:
                stats._in_flight -= 1

    def _classify(self, exc: BaseException, attempt: int = 1) -> tuple[JudgeFailure, float | None, bool]:
        """The failure, the wait before a retry (None: not retryable) and whether it signals congestion."""
        import openai

        failure = self.failure(exc)
        if isinstance(exc, (TimeoutError, openai.APITimeoutError)):
            return failure, self._backoff(None, attempt), True
        if isinstance(exc, openai.APIConnectionError):
            return failure, self._backoff(None, attempt), False
        if isinstance(exc, openai.APIStatusError):
            code, headers = exc.status_code, exc.response.headers
            should = headers.get("x-should-retry")
            congested = (code in (408, 429) or code >= 500) and should != "false"
            if code == 429:
                self.stats.rate_limited += 1
            retryable = should == "true" or (should != "false" and (code in (408, 409, 429) or code >= 500))
            if not retryable:
                return failure, None, congested
            after = retry_after(headers)
            if after is not None and after > MAX_RETRY_AFTER_S:
                return JudgeFailure(Status.ERROR, f"{failure.detail} (the judge asked to retry after {after:g}s, "
                                    f"more than {MAX_RETRY_AFTER_S}s; lower rpm/tpm)"), None, congested
            return failure, self._backoff(after, attempt), congested
        return failure, None, False

    def _backoff(self, retry_after_s: float | None, attempt: int) -> float:
        """Retry-After when the server gave one, else 0.5 s doubling per attempt up to 8 s, minus 0-25% jitter."""
        if retry_after_s is not None and retry_after_s > 0:
            return retry_after_s
        return min(INITIAL_RETRY_S * 2.0 ** min(attempt - 1, 10), MAX_RETRY_S) * (1 - 0.25 * self._jitter())

    def _final(self, failure: JudgeFailure, attempts: int) -> JudgeFailure:
        tries = f"{attempts} attempt{'s' if attempts != 1 else ''}"
        return JudgeFailure(failure.status, failure.detail.replace("{tries}", tries))

    def _reply(self, response: Any) -> Reply:
        if not getattr(response, "choices", None):
            raise JudgeFailure(Status.ERROR, "judge returned no choices")
        choice = response.choices[0]
        usage = getattr(response, "usage", None)
        prompt_tokens = int(getattr(usage, "prompt_tokens", 0) or 0)
        completion_tokens = int(getattr(usage, "completion_tokens", 0) or 0)
        self.stats.prompt_tokens += prompt_tokens
        self.stats.completion_tokens += completion_tokens
        text = choice.message.content if choice.message is not None else None
        return Reply(text or "", choice.finish_reason, prompt_tokens, completion_tokens)

    def failure(self, exc: BaseException) -> JudgeFailure:
        """Map an exception from the OpenAI client to a status and a message that says what to check.

        The message holds ``{tries}``, filled in with the number of attempts by :meth:`chat`.
        """
        import openai

        if isinstance(exc, (TimeoutError, openai.APITimeoutError)):  # a subclass of APIConnectionError: first
            return JudgeFailure(Status.TIMEOUT, f"judge request timed out after {self.timeout:g}s per attempt "
                                "({tries}); raise --reward-arg timeout=SECONDS or lower concurrency")
        if isinstance(exc, openai.APIConnectionError):
            return JudgeFailure(Status.ERROR, f"cannot connect to the judge at {self.base_url} ({{tries}}): "
                                f"{_cause(exc)}")
        if isinstance(exc, openai.APIStatusError):
            return JudgeFailure(Status.ERROR, f"judge at {self.base_url} answered HTTP {exc.status_code} "
                                f"({{tries}}): {_message(exc)}")
        return JudgeFailure(Status.ERROR, f"judge request failed: {type(exc).__name__}: {exc}")

    async def list_models(self) -> list[str]:
        """Model ids the endpoint serves (``GET /models``, one attempt); raises :class:`JudgeFailure`."""
        try:
            async with asyncio.timeout(self.timeout):
                page = await self._client.models.list()
            return [m.id for m in page.data]
        except Exception as exc:
            raise self._final(self.failure(exc), 1) from exc

    def close(self) -> None:
        """Close the connection pool, then stop the loop thread. Safe to call twice."""
        if self._client is not None and not self._runner.loop.is_closed():
            try:
                self.run(self._client.close())
            finally:
                self._client = None
                self._runner.close()


#: Retry timing, as the OpenAI client's: backoff from 0.5 s doubling to 8 s; Retry-After honoured up to 2 min.
INITIAL_RETRY_S = 0.5
MAX_RETRY_S = 8.0
MAX_RETRY_AFTER_S = 120.0


def retry_after(headers: Any) -> float | None:
    """Seconds the server asked to wait: ``retry-after-ms``, else ``retry-after`` (seconds or an HTTP date)."""
    if headers is None:
        return None
    for name, divisor in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            delay = float(value) / divisor
        except ValueError:
            continue
        return delay if math.isfinite(delay) else None
    value = headers.get("retry-after")
    try:
        parsed = email.utils.parsedate_tz(value) if value else None
        return float(email.utils.mktime_tz(parsed) - time.time()) if parsed else None
    except (TypeError, ValueError, OverflowError):
        return None


def _message(exc: Any) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        error = body.get("error", body)
        message = error.get("message") if isinstance(error, dict) else error
        if message:
            return str(message)[:300]
    return str(getattr(exc, "message", exc))[:300]


def _cause(exc: BaseException) -> str:
    cause = exc.__cause__ or exc.__context__
    return f"{type(cause).__name__}: {cause}" if cause else str(exc)
