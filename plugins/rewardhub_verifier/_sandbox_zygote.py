"""The zygote: a fork server that starts every solution process from memory that never held a job.

A process forked from the worker would inherit the worker's heap: the current row's tests and expected
outputs, and what is left of earlier samples' code, all readable by the solution (``gc.get_objects()``,
frames, ``ctypes.string_at``). So the worker starts this process once at start-up, *before it reads any job*
(a fresh small interpreter: :func:`zygote_exec_main`), and asks it (over a ``SOCK_SEQPACKET`` socket,
descriptors passed with ``SCM_RIGHTS``) for each solution process. The zygote receives only limits and
descriptors, never code or tests: the new process reads its code from its own pipe
(:mod:`rewardhub_verifier._sandbox_untrusted`).

For each request it clones a child into a new pid namespace as a child of the worker (``CLONE_PARENT``; with
namespaces: the worker waits for it) and answers with its pid; or (unsafe-local) forks one, answers with the pid
and a pidfd, and when the child exits reaps it and everything it left behind (the zygote is a subreaper) and
reports ``{"exit": pid, "status": wait status}``.
Shipped as source text with the other ``_sandbox_*`` parts.
"""

import _signal
import _socket
import array
import contextlib
import fcntl
import gc
import os
import select
import sys
import time

if __name__ != "__main__":  # imported on the host; when shipped, all parts share one namespace
    from rewardhub_verifier._sandbox_codec import dumps, loads
    from rewardhub_verifier._sandbox_sys import (
        PR_SET_CHILD_SUBREAPER,
        PR_SET_PDEATHSIG,
        _fork_new_pidns,
        _libc_handle,
        _nondumpable,
        _prctl,
    )
    from rewardhub_verifier._sandbox_untrusted import prepare_streams, solution_environment, untrusted_main

N_FDS = 6  # stdin, stdout, stderr, code, requests in, answers out
# (The zygote imports no json, socket or signal: what every solution process's page tables map and what its
# exit unmaps is the zygote's heap, so it holds only what a solution process needs; their C parts do here.)
_FD_BYTES = array.array("i").itemsize


_ANC_SPACE = _socket.CMSG_LEN(N_FDS * _FD_BYTES)


def _recv_fds(sock, bufsize):
    """``socket.recv_fds(sock, bufsize, N_FDS)`` on the C socket: (message, descriptors)."""
    fds = []
    msg, ancdata, _flags, _addr = sock.recvmsg(bufsize, _ANC_SPACE)
    for level, kind, data in ancdata:
        if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
            fds.extend(memoryview(data[:len(data) - (len(data) % _FD_BYTES)]).cast("i"))
    return msg, fds


def _send_fds(sock, data, fds):
    sock.sendmsg([data], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, array.array("i", fds))])


def _children():
    try:
        with open(f"/proc/self/task/{os.getpid()}/children") as f:
            return [int(p) for p in f.read().split()]
    except (OSError, ValueError):
        return []


def _reap_strays(keep):
    """Without a pid namespace: SIGKILL and reap every child that is not a live solution process."""
    for _ in range(2000):
        strays = [p for p in _children() if p not in keep]
        for pid in strays:
            with contextlib.suppress(OSError):
                os.kill(pid, _signal.SIGKILL)
        reaped = False
        for pid in strays:
            with contextlib.suppress(ChildProcessError, OSError):
                if os.waitpid(pid, os.WNOHANG)[0]:
                    reaped = True
        if not strays:
            return
        if not reaped:
            time.sleep(0.002)


_WARM_UP_CODE = """
import linecache
class _C:
    def m(self, a, *args, k=None, **kw):
        return [x * 2 for x in a if x], {k: v for k, v in kw.items()}, (lambda y: y)(args)
def _f(n, s=""):
    total = 0
    for i in range(n):
        if i % 2 == 0 and not s:
            total += i
        elif i > 3:
            break
        else:
            continue
    while total > 10:
        total //= 2
    try:
        assert total >= 0, f"{total!r:>3}"
    except (AssertionError, ValueError) as e:
        raise RuntimeError(str(e)) from None
    finally:
        pass
    with open(__file__ if False else "/dev/null") as fh:
        pass
    return sorted({total: 1, "a": [1.5, None, True]}.keys(), key=str)
_f(6)
_C().m([1, 0], 2, k=1, z=3)
"""


#: Imported once here, so that a solution importing them finds them loaded: ``from typing import List`` (common in
#: LeetCode-style completions) cost each solution process 4-5 ms of CPU, ``import math`` 0.4 ms (an extension
#: module to load). Only stdlib modules, imported before any job: nothing of a sample is in them.
PRELOADED_MODULES = ("math", "heapq", "bisect", "string", "copy", "typing")


def _warm_up(namespaces):
    """Do once here what each solution process would otherwise do first, copy-on-write, on its own pages.

    Compiling the first code of a process builds the compiler's lazily made state (a solution's first compile
    took 2 ms and 140 page faults, the next one 0.1 ms); this compiles and runs a fixed snippet of our own, so
    nothing of a sample is involved. The solution's environment, the same for every sample with namespaces,
    is set here once instead of in each child.
    """
    for name in PRELOADED_MODULES:
        with contextlib.suppress(Exception):
            __import__(name)
    with contextlib.suppress(Exception):
        exec(compile(_WARM_UP_CODE, "<zygote warm-up>", "exec"), {"__name__": "_warm_up"})
    if namespaces:
        solution_environment()
    prepare_streams()
    with contextlib.suppress(Exception):
        libc = _libc_handle()
        for name in ("unshare", "mount", "capset", "capget", "prctl"):  # looked up once, not in every child
            getattr(libc, name)
        gc.collect()
        libc.malloc_trim(0)  # free heap pages back to the kernel: fewer page tables for every clone to copy


def zygote_main(sock, cfg):
    """Serve spawn requests on ``sock`` until the worker closes it. Never returns."""
    namespaces = bool(cfg.get("namespaces"))
    with contextlib.suppress(OSError):
        _prctl(PR_SET_CHILD_SUBREAPER, 1)
    # Inherited by every solution process: under memory pressure the kernel kills one of those first (the
    # biggest), not the worker or the test process.
    with contextlib.suppress(OSError), open("/proc/self/oom_score_adj", "w") as f:
        f.write("1000")
    _warm_up(namespaces)
    # Every child touches this memory copy-on-write; a collector walking it would copy every page.
    gc.collect()
    gc.freeze()
    live = {}  # pidfd -> pid (without namespaces; with them, solution processes are the worker's children)
    while True:
        # With namespaces, nothing but the next request can wake us: wait for it in recvmsg itself. (Every write
        # from here to the next clone lands on a page shared with the last solution process.)
        ready = (sock,)
        if live:
            try:
                ready, _, _ = select.select([sock, *live], [], [])
            except InterruptedError:
                continue
        for fd in ready:
            if fd is sock:
                continue
            pid = live.pop(fd)
            os.close(fd)
            status, cpu_ms = 0, 0.0
            minflt = 0
            with contextlib.suppress(ChildProcessError):
                _pid, status, usage = os.wait4(pid, 0)
                cpu_ms = (usage.ru_utime + usage.ru_stime) * 1000
                minflt = usage.ru_minflt
            if not namespaces:
                with contextlib.suppress(OSError):
                    os.killpg(pid, _signal.SIGKILL)  # its session's group (it called setsid)
                _reap_strays(set(live.values()))
            with contextlib.suppress(OSError):
                sock.send(dumps({"exit": pid, "status": status, "cpu_ms": round(cpu_ms, 3),
                                 "minflt": minflt}).encode())
        if sock not in ready:
            continue
        try:
            msg, fds = _recv_fds(sock, 1 << 16)
        except OSError:
            msg, fds = b"", []
        if not msg:  # the worker is gone: take every solution process with us
            for fd in live:
                with contextlib.suppress(OSError):
                    _signal.pidfd_send_signal(fd, _signal.SIGKILL)
            os._exit(0)
        # The request (limits, mode) is read by the child: this process needs nothing of it.
        pid = None
        try:
            # With namespaces the child is the worker's (CLONE_PARENT): the worker waits for it, and this process
            # stays asleep until the next request (each of its wake-ups writes pages shared with the child).
            pid = _fork_new_pidns(sibling=True) if namespaces else os.fork()
        except OSError as exc:
            err = str(exc)
        if pid == 0:
            try:
                sock.detach()  # its number may be one of the targets below; untrusted_main closes the rest
                high = []
                for fd in fds:
                    high.append(fcntl.fcntl(fd, fcntl.F_DUPFD, 64))
                for target in range(len(high)):
                    os.dup2(high[target], target)
                req = loads(msg)
            except BaseException as exc:
                with contextlib.suppress(BaseException):
                    os.write(2, f"rewardhub sandbox: zygote child setup failed: {exc!r}\n".encode())
                os._exit(121)
            untrusted_main(req["cfg"], req["mode"], req.get("tmpdir") or "/tmp")
        for fd in fds:
            os.close(fd)
        if pid is None:
            sock.send(dumps({"error": err}).encode())
            continue
        if namespaces:
            sock.send(b'{"pid": %d, "sibling": true}' % pid)
            continue
        pidfd = os.pidfd_open(pid)
        live[pidfd] = pid
        _send_fds(sock, dumps({"pid": pid}).encode(), [pidfd])


def zygote_exec_main(argv):
    """The zygote as its own small interpreter: ``python -I -S -B -c <zygote source> zygote FD CONFIG_JSON``.

    The worker execs this (see ``Zygote`` in :mod:`rewardhub_verifier._sandbox_worker_loop`) before it reads
    any job. A fresh interpreter that compiled only the zygote's and the solution's parts (not the worker,
    test process and supervisor code) and imported only what a solution process needs has a heap of a third
    of the worker's: every clone copies fewer page tables and every solution process takes fewer
    copy-on-write faults. ``exec`` makes a process dumpable again, so it says it is not, first.
    """
    _nondumpable()
    with contextlib.suppress(OSError):
        _prctl(PR_SET_PDEATHSIG, _signal.SIGKILL)
    _signal.signal(_signal.SIGPIPE, _signal.SIG_IGN)  # the worker ignores it too; each solution resets it
    fd, cfg = int(argv[2]), loads(argv[3])
    try:
        zygote_main(_socket.socket(fileno=fd), cfg)
    finally:
        os._exit(1)


if __name__ == "__main__" and sys.argv[1:2] == ["zygote"]:  # shipped as the zygote's own source
    zygote_exec_main(sys.argv)
