"""Talking to an OpenAI-compatible judge: many requests in flight, each failure turned into a status.

Why asyncio: a judge call is network-bound (0.1 s to tens of seconds), and a training batch has dozens to
hundreds of completions. ``AsyncOpenAI`` keeps one connection pool and overlaps the requests; an
``asyncio.Semaphore`` caps how many are in flight so a local server is not flooded (measured in
``bench/bench_judge.py``). The OpenAI client already retries 408/409/429/5xx and connection errors with
backoff (``max_retries``), so no retry loop of our own is needed.

Why a private event loop on its own thread: the reward contract's ``score()`` is synchronous, and it may be
called from a thread that already runs an event loop (a notebook, an async server), where
``asyncio.run`` would fail. Submitting to a loop we own works in both cases, and keeps the client (bound to
the loop that first used it) and its connection pool alive across batches.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

from rewardhub.rewards import Status

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
    """Counters over every request this client sent (one request may include the client's own retries)."""

    requests: int = 0
    timeouts: int = 0
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
    """An ``AsyncOpenAI`` client behind a semaphore, driven from synchronous code through a :class:`LoopThread`.

    Args:
        base_url: the OpenAI-compatible endpoint, e.g. ``http://127.0.0.1:8000/v1``.
        api_key: sent as a bearer token (the client refuses to start without one, so pass a dummy for local servers).
        timeout: seconds per attempt (connect, read, write and pool alike).
        max_retries: the OpenAI client's retries of 408/409/429/5xx, timeouts and connection errors.
        concurrency: most requests in flight at once.
    """

    def __init__(self, base_url: str, api_key: str, timeout: float, max_retries: int, concurrency: int):
        import openai

        self.base_url, self.timeout, self.max_retries = base_url, timeout, max_retries
        self.stats = ClientStats()
        self._runner = LoopThread()
        self._semaphore = asyncio.Semaphore(concurrency)
        self._client = openai.AsyncOpenAI(base_url=base_url, api_key=api_key, timeout=timeout,
                                          max_retries=max_retries)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the client's loop and return its result (safe inside a running event loop)."""
        return self._runner.run(coro)

    async def chat(self, model: str, messages: list[dict[str, str]], temperature: float, max_tokens: int) -> Reply:
        """One chat completion. Raises :class:`JudgeFailure` (never another exception) when there is no reply."""
        async with self._semaphore:
            stats = self.stats
            stats._in_flight += 1
            stats.max_in_flight = max(stats.max_in_flight, stats._in_flight)
            start = time.perf_counter()
            try:
                response = await self._client.chat.completions.create(
                    model=model, messages=messages, temperature=temperature, max_tokens=max_tokens, n=1)
                return self._reply(response)
            except JudgeFailure:
                stats.errors += 1
                raise
            except Exception as exc:
                failure = self.failure(exc)
                if failure.status is Status.TIMEOUT:
                    stats.timeouts += 1
                else:
                    stats.errors += 1
                raise failure from exc
            finally:
                stats._in_flight -= 1
                stats.requests += 1
                stats.latency_total_s += time.perf_counter() - start

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
        """Map an exception from the OpenAI client to a status and a message that says what to check."""
        import openai

        tries = f"{self.max_retries + 1} attempt{'s' if self.max_retries else ''}"
        if isinstance(exc, openai.APITimeoutError):  # a subclass of APIConnectionError: test it first
            return JudgeFailure(Status.TIMEOUT, f"judge request timed out after {self.timeout:g}s per attempt "
                                f"({tries}); raise --reward-arg timeout=SECONDS or lower concurrency")
        if isinstance(exc, openai.APIConnectionError):
            return JudgeFailure(Status.ERROR, f"cannot connect to the judge at {self.base_url} ({tries}): "
                                f"{_cause(exc)}")
        if isinstance(exc, openai.APIStatusError):
            return JudgeFailure(Status.ERROR, f"judge at {self.base_url} answered HTTP {exc.status_code} "
                                f"({tries}): {_message(exc)}")
        return JudgeFailure(Status.ERROR, f"judge request failed: {type(exc).__name__}: {exc}")

    async def list_models(self) -> list[str]:
        """Model ids the endpoint serves (``GET /models``); raises :class:`JudgeFailure`."""
        try:
            page = await self._client.models.list()
            return [m.id for m in page.data]
        except Exception as exc:
            raise self.failure(exc) from exc

    def close(self) -> None:
        """Close the connection pool, then stop the loop thread. Safe to call twice."""
        if self._client is not None and not self._runner.loop.is_closed():
            try:
                self.run(self._client.close())
            finally:
                self._client = None
                self._runner.close()


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
