"""Run math answer checks in worker processes with a hard wall-clock kill.

Why processes: sympy can take unbounded time (or memory) on adversarial answers, and the usual fix,
``signal.alarm``, only works on the main thread of the main interpreter (the math-verify / verl / TRL bug:
the ``ValueError`` it raises off the main thread was swallowed and every reward became 0). Threads cannot be
killed at all. So every check that needs sympy runs in a worker process; when one runs past ``timeout_s``
the worker is SIGKILLed, the check gets status ``timeout``, and a fresh worker takes its place. No signal
handler is ever installed, so the pool works from any thread.

Throughput:

* Cheap in-process fast path (``fast_path=True``): :func:`~rewardhub_verifier.math_answer.quick_check`
  (extraction, normalisation, string / exact-rational / multiple-choice comparison; no sympy, linear-time
  regexes) answers the obvious cases - most GSM8K-style integers - without touching the pool. Only what it
  cannot decide is sent to a worker.
* Workers are started up front, import sympy once and warm the parser before reporting ready.
* Items go out in chunks and come back in one message per chunk. The per-check deadline needs to know
  which item a worker is on and since when: the worker writes that into a small shared-memory array
  before each item (no message, no syscall). On a kill, items it had finished but not yet reported are
  simply re-queued.
* With the fast path on, ``check_many`` scans the batch in slices and dispatches work as soon as a chunk
  is ready, so the in-process scan overlaps with the workers' sympy work.
* The default start method is ``forkserver`` with this module preloaded in the server: a replacement worker
  is a fork of an already-warm, single-threaded server process (tens of ms), never a fork of the trainer
  (which may hold torch / CUDA threads). ``spawn`` works too (slower restarts: each worker re-imports sympy).

Failures are per item: a worker that dies (segfault, ``os._exit``, OOM kill) or raises ``MemoryError`` gives
that item status ``error`` with a detail, is replaced, and the rest of its chunk is re-queued.
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing as mp
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any

from rewardhub.rewards import Status
from rewardhub_verifier.math_answer import MathVerdict, check_answer, quick_check

__all__ = ["MathCheckPool", "PoolStats"]

#: gold values that the worker treats as test instructions when the pool was built with ``test_hooks=True``
HOOK_PREFIX = "__rewardhub_test_hook__:"


@dataclass
class PoolStats:
    """Counters since the pool was created."""

    checks: int = 0  # items passed to check_many
    fast_path: int = 0  # answered in-process by quick_check
    pooled: int = 0  # sent to a worker
    timeouts: int = 0  # checks killed at the deadline
    errors: int = 0  # checks whose worker crashed or raised
    restarts: int = 0  # workers replaced (after a timeout or a crash)

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


def _run_hook(gold: str) -> None:
    """Test-only behaviours, reachable only when the pool was created with ``test_hooks=True``."""
    action = gold[len(HOOK_PREFIX) :]
    if action.startswith("sleep:"):
        time.sleep(float(action.split(":", 1)[1]))
    elif action == "segfault":
        import signal

        os.kill(os.getpid(), signal.SIGSEGV)
    elif action == "memoryerror":
        raise MemoryError("test hook")
    elif action == "exit":
        os._exit(3)
    elif action.startswith("raise"):
        raise RuntimeError("test hook")


def _worker_main(conn: Connection, progress: Any, memory_limit_mb: int | None, test_hooks: bool) -> None:
    """Worker loop: receive a chunk ``[(index, completion, gold, rel_tol), ...]``, answer it in one message.

    Before each item the worker writes ``progress = [position in chunk, time.monotonic() at its start]``
    into shared memory, so the parent can enforce the per-item deadline without a message per item
    (``CLOCK_MONOTONIC`` is system-wide on Linux). Replies: ``("done", results)`` for a whole chunk, or
    ``("fatal", results)`` after a ``MemoryError`` - the worker exits and the parent re-queues the rest.
    A result is ``(index, status, extracted, detail)``.
    """
    if memory_limit_mb:
        try:
            import resource

            limit = int(memory_limit_mb) * 1024 * 1024
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        except (ImportError, ValueError, OSError):
            pass
    # warm up: the first sympy parse / evalf fills caches that would otherwise count against a deadline
    check_answer("\\boxed{\\frac{\\sqrt{2}}{2}}", "\\frac{1}{\\sqrt{2}}")
    check_answer("\\boxed{(x+1)^2}", "x^2+2x+1")
    conn.send("ready")
    while True:
        try:
            chunk = conn.recv()
        except (EOFError, OSError):
            return
        if chunk is None:
            return
        results = []
        kind = "done"
        for pos, (index, completion, gold, rel_tol) in enumerate(chunk):
            progress[1] = time.monotonic()
            progress[0] = pos
            try:
                if test_hooks and isinstance(gold, str) and gold.startswith(HOOK_PREFIX):
                    _run_hook(gold)
                    gold = "0"
                v = check_answer(completion, gold, rel_tol=rel_tol)
                results.append((index, v.status.value, v.extracted, v.detail))
            except MemoryError:
                results.append((index, Status.ERROR.value, None, "MemoryError in math check (worker replaced)"))
                kind = "fatal"
                break
            except Exception as exc:  # an unexpected bug for this input must not take the worker down
                results.append((index, Status.ERROR.value, None, f"{type(exc).__name__}: {exc}"[:300]))
        try:
            conn.send((kind, results))
        except (OSError, ValueError):
            return
        if kind == "fatal":
            os._exit(1)


class _Worker:
    __slots__ = ("chunk", "conn", "proc", "progress", "ready", "since")

    def __init__(self, proc: Any, conn: Connection, progress: Any) -> None:
        self.proc = proc
        self.conn = conn
        self.progress = progress  # shared [position in chunk, start time of that item]
        self.ready = False
        self.chunk: list[int] = []  # indices sent and not yet answered, in order
        self.since = time.monotonic()  # start-up time (for the start-up deadline)

    def current(self) -> tuple[int, float]:
        """(position in the chunk, monotonic start time) of the item the worker is on."""
        return int(self.progress[0]), float(self.progress[1])


@contextlib.contextmanager
def _main_module_hidden():
    """Start a worker without it re-running the user's script.

    ``spawn`` and ``forkserver`` children import the parent's ``__main__`` by path (``__mp_main__``) before
    they run their target; a plain script without an ``if __name__ == "__main__":`` guard would then train
    again inside every worker, which multiprocessing stops with a bootstrapping error (the worker "died
    during start-up"). The worker needs nothing from ``__main__`` (its target and arguments live in this
    module), so while it starts the main module's ``__file__``/``__spec__`` are hidden from the preparation
    data that tells the child what to import.
    """
    main = sys.modules.get("__main__")
    saved = {k: main.__dict__[k] for k in ("__file__", "__spec__") if main is not None and k in main.__dict__}
    if "__file__" in saved:
        del main.__dict__["__file__"]
    if "__spec__" in saved:
        main.__dict__["__spec__"] = None  # multiprocessing reads the attribute itself: None, not absent
    try:
        yield
    finally:
        if main is not None:
            main.__dict__.update(saved)


def _default_context() -> mp.context.BaseContext:
    if "forkserver" in mp.get_all_start_methods():
        return mp.get_context("forkserver")
    return mp.get_context("spawn")


class MathCheckPool:
    """A pool of warm worker processes that check math answers, each check under a hard deadline.

    Args:
        workers: number of worker processes.
        timeout_s: wall-clock limit per check; a check past it gets ``timeout`` and its worker is SIGKILLed
            and replaced. The other checks are unaffected.
        rel_tol: relative tolerance for numeric comparison (passed to ``check_answer``).
        fast_path: answer what :func:`~rewardhub_verifier.math_answer.quick_check` can decide (string,
            exact-rational and multiple-choice comparison; no sympy) in this process, without the pool.
        chunk_size: most items sent to a worker in one message.
        start_method: ``"forkserver"`` (default where available) or ``"spawn"``. Plain ``"fork"`` is
            refused: forking a trainer that holds torch threads can deadlock the child.
        memory_limit_mb: ``RLIMIT_AS`` of each worker (None: no limit); a runaway check then fails with
            ``MemoryError`` (status ``error``) instead of exhausting the machine.
        startup_timeout_s: how long a worker may take to start and warm up.
        test_hooks: for tests only: a gold answer starting with ``HOOK_PREFIX`` makes the worker sleep,
            crash or raise (``sleep:<seconds>``, ``segfault``, ``memoryerror``, ``exit``, ``raise``).

    Use as a context manager, or call :meth:`close`. ``check_many`` is serialised by a lock (one batch at
    a time); the pool itself installs no signal handlers and may be used from any thread.
    """

    def __init__(
        self,
        workers: int = 2,
        timeout_s: float = 2.0,
        *,
        rel_tol: float = 1e-6,
        fast_path: bool = True,
        chunk_size: int = 32,
        start_method: str | None = None,
        memory_limit_mb: int | None = 2048,
        startup_timeout_s: float = 60.0,
        test_hooks: bool = False,
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        if not (timeout_s > 0 and math.isfinite(timeout_s)):
            raise ValueError(f"timeout_s must be a positive number of seconds, got {timeout_s}")
        if start_method == "fork":
            raise ValueError(
                "start_method='fork' is unsafe in a process that may hold torch threads; use 'forkserver' or 'spawn'"
            )
        self.n_workers = workers
        self.timeout_s = float(timeout_s)
        self.rel_tol = rel_tol
        self.fast_path = fast_path
        self.chunk_size = max(1, int(chunk_size))
        self.memory_limit_mb = memory_limit_mb
        self.startup_timeout_s = startup_timeout_s
        self.test_hooks = test_hooks
        self.stats = PoolStats()
        if start_method is None:
            self._ctx = _default_context()
        else:
            self._ctx = mp.get_context(start_method)
        if self._ctx.get_start_method() == "forkserver":
            # the server imports sympy + the checker once; every worker (and replacement) is a fork of it
            self._ctx.set_forkserver_preload(["sympy", "sympy.parsing.sympy_parser", "rewardhub_verifier.math_pool"])
        self._lock = threading.Lock()
        self._closed = False
        self._startup_failures = 0
        self._workers: list[_Worker] = [self._spawn() for _ in range(workers)]
        self._wait_ready(self._workers)

    # ---------------------------------------------------------------------------------------------- workers

    def _spawn(self) -> _Worker:
        parent, child = self._ctx.Pipe(duplex=True)
        progress = self._ctx.RawArray("d", 2)
        proc = self._ctx.Process(
            target=_worker_main,
            args=(child, progress, self.memory_limit_mb, self.test_hooks),
            name="rewardhub-math-worker",
            daemon=True,
        )
        with _main_module_hidden():
            proc.start()
        child.close()  # so that the parent sees EOF when the worker dies
        return _Worker(proc, parent, progress)

    def _wait_ready(self, workers: Sequence[_Worker]) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        pending = [w for w in workers if not w.ready]
        while pending:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"math check workers did not start within {self.startup_timeout_s}s")
            for conn in wait([w.conn for w in pending], timeout=left):
                w = next(x for x in pending if x.conn is conn)
                try:
                    msg = conn.recv()
                except (EOFError, OSError) as exc:
                    raise RuntimeError(f"math check worker died during start-up (exit code {w.proc.exitcode})") from exc
                if msg == "ready":
                    w.ready = True
            pending = [w for w in pending if not w.ready]

    def _kill(self, w: _Worker) -> None:
        with contextlib.suppress(Exception):
            w.proc.kill()  # SIGKILL: a stuck sympy call cannot ignore it
        with contextlib.suppress(Exception):
            w.proc.join(timeout=5)
        with contextlib.suppress(Exception):
            w.conn.close()

    def _replace(self, w: _Worker) -> _Worker:
        self._kill(w)
        self.stats.restarts += 1
        new = self._spawn()
        self._workers[self._workers.index(w)] = new
        return new

    # ---------------------------------------------------------------------------------------------- checking

    def check(self, completion: str, gold: str) -> MathVerdict:
        """Check a single item (see :meth:`check_many`)."""
        return self.check_many([(completion, gold)])[0]

    def check_many(self, items: Sequence[tuple[str, str]]) -> list[MathVerdict]:
        """Check ``(completion, gold)`` pairs; one verdict per item, in order.

        Statuses: ``ok`` / ``wrong`` / ``no_answer`` from the checker, ``timeout`` when a check ran past
        ``timeout_s`` (its worker was killed), ``error`` when its worker crashed. With ``fast_path`` the
        items are scanned with ``quick_check`` in this process while the workers already run the rest.
        """
        if self._closed:
            raise RuntimeError("MathCheckPool is closed")
        items = [(str(c), str(g)) for c, g in items]
        results: list[MathVerdict | None] = [None] * len(items)
        with self._lock:
            self.stats.checks += len(items)
            if items:
                self._run(items, results)
        assert all(r is not None for r in results)
        return results  # type: ignore[return-value]

    def _scan(
        self, items: list[tuple[str, str]], start: int, stop: int, todo: deque[int], results: list[MathVerdict | None]
    ) -> None:
        """Answer what the in-process fast path can; queue the rest for the workers."""
        for i in range(start, stop):
            completion, gold = items[i]
            if self.fast_path and not (self.test_hooks and gold.startswith(HOOK_PREFIX)):
                v = quick_check(completion, gold, self.rel_tol)
                if v is not None:
                    results[i] = v
                    self.stats.fast_path += 1
                    continue
            todo.append(i)
            self.stats.pooled += 1

    def _run(self, items: list[tuple[str, str]], results: list[MathVerdict | None]) -> None:
        n = len(items)
        todo: deque[int] = deque()
        scanned = 0
        step = 64 if self.fast_path else n
        while True:
            if scanned < n:
                stop = min(n, scanned + step)
                self._scan(items, scanned, stop, todo, results)
                scanned = stop
            scanning = scanned < n
            busy = any(w.chunk for w in self._workers)
            if not scanning and not todo and not busy:
                return
            self._dispatch(items, todo, scanning)
            self._collect(todo, results, block=not scanning)
            if self._startup_failures > 3:
                self._fail_all(todo, results, "math check workers fail to start")

    def _dispatch(self, items: list[tuple[str, str]], todo: deque[int], scanning: bool) -> None:
        """Send chunks to idle workers (small batches are spread over all of them)."""
        for w in self._workers:
            if not (w.ready and not w.chunk and todo):
                continue
            if scanning:
                if len(todo) < 8:
                    return
                size = min(self.chunk_size, len(todo))
            else:
                size = max(1, min(self.chunk_size, math.ceil(len(todo) / self.n_workers)))
            idxs = [todo.popleft() for _ in range(size)]
            w.progress[0] = 0
            w.progress[1] = time.monotonic()
            try:
                w.conn.send([(i, items[i][0], items[i][1], self.rel_tol) for i in idxs])
            except (OSError, ValueError):
                todo.extendleft(reversed(idxs))
                self._replace(w)
                continue
            w.chunk = idxs

    def _collect(self, todo: deque[int], results: list[MathVerdict | None], block: bool) -> None:
        """Wait for replies (until the next deadline if ``block``), then enforce the deadlines."""
        watched = [w for w in self._workers if w.chunk or not w.ready]
        if not watched:
            return
        wait_s = 0.0
        if block:
            now = time.monotonic()
            deadlines = [w.current()[1] + self.timeout_s for w in watched if w.ready]
            deadlines += [w.since + self.startup_timeout_s for w in watched if not w.ready]
            wait_s = min(1.0, max(0.0, min(deadlines) - now) + 0.001)
        for conn in wait([w.conn for w in watched], timeout=wait_s):
            w = next(x for x in self._workers if x.conn is conn)
            try:
                msg = conn.recv()
            except (EOFError, OSError):
                self._on_death(w, todo, results)
                continue
            if msg == "ready":
                w.ready = True
                self._startup_failures = 0
                continue
            kind, answers = msg
            for index, status, extracted, detail in answers:
                results[index] = MathVerdict(Status(status), extracted, detail)
                if status == Status.ERROR.value:
                    self.stats.errors += 1
            rest = w.chunk[len(answers) :]
            w.chunk = []
            if kind == "fatal":  # the worker exits after reporting; its unstarted items go back to the queue
                todo.extendleft(reversed(rest))
                self._replace(w)
        now = time.monotonic()
        for w in list(self._workers):
            if w.ready and w.chunk:
                pos, started = w.current()
                if now - started > self.timeout_s:
                    self._on_timeout(w, pos, todo, results)
            elif not w.ready and now - w.since > self.startup_timeout_s:
                self._startup_failures += 1
                self._replace(w)

    def _on_timeout(self, w: _Worker, pos: int, todo: deque[int], results: list[MathVerdict | None]) -> None:
        """SIGKILL a worker whose current item is past the deadline; re-queue the rest of its chunk."""
        self._kill(w)
        final_pos, _ = w.current()  # stable now that the worker is dead
        chunk, w.chunk = w.chunk, []
        if final_pos == pos and pos < len(chunk):
            results[chunk[pos]] = MathVerdict(
                Status.TIMEOUT, None, f"math check timed out after {self.timeout_s:g}s (worker killed)"
            )
            self.stats.timeouts += 1
            requeue = chunk[:pos] + chunk[pos + 1 :]
        else:  # it moved on just before the kill: nobody is to blame, redo everything unreported
            requeue = chunk
        todo.extendleft(reversed(requeue))  # items it finished but had not reported yet are redone
        self._replace(w)

    def _on_death(self, w: _Worker, todo: deque[int], results: list[MathVerdict | None]) -> None:
        """A worker's pipe closed: blame the item it was on (if any), re-queue the rest, replace it."""
        with contextlib.suppress(Exception):
            w.proc.join(timeout=2)
        code = w.proc.exitcode
        chunk, w.chunk = w.chunk, []
        if not w.ready:
            self._startup_failures += 1
        elif chunk:
            pos = min(max(w.current()[0], 0), len(chunk) - 1)
            results[chunk[pos]] = MathVerdict(Status.ERROR, None, f"math check worker died (exit code {code})")
            self.stats.errors += 1
            chunk = chunk[:pos] + chunk[pos + 1 :]
        todo.extendleft(reversed(chunk))
        self._replace(w)

    def _fail_all(self, todo: deque[int], results: list[MathVerdict | None], detail: str) -> None:
        for i in [*todo, *(i for w in self._workers for i in w.chunk)]:
            results[i] = MathVerdict(Status.ERROR, None, detail)
            self.stats.errors += 1
        todo.clear()
        for w in self._workers:
            w.chunk = []

    # ---------------------------------------------------------------------------------------------- lifecycle

    def close(self) -> None:
        """Stop the workers (politely, then SIGKILL after a second)."""
        if self._closed:
            return
        self._closed = True
        for w in self._workers:
            with contextlib.suppress(Exception):
                w.conn.send(None)
        deadline = time.monotonic() + 1.0
        for w in self._workers:
            with contextlib.suppress(Exception):
                w.proc.join(timeout=max(0.0, deadline - time.monotonic()))
            if w.proc.is_alive():
                self._kill(w)
            with contextlib.suppress(Exception):
                w.conn.close()

    def __enter__(self) -> MathCheckPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        # not contextlib.suppress: at interpreter exit this module's globals may already be None
        try:  # noqa: SIM105
            self.close()
        except Exception:
            pass
