"""The zygote: a fork server that starts every solution process from memory that never held a job.

A process forked from the worker would inherit the worker's heap: the current row's tests and expected
outputs, and what is left of earlier samples' code, all readable by the solution (``gc.get_objects()``,
frames, ``ctypes.string_at``). So the worker forks this process once at start-up, *before it reads any job*,
and asks it (over a ``SOCK_SEQPACKET`` socket, descriptors passed with ``SCM_RIGHTS``) for each solution
process. The zygote receives only limits and descriptors, never code or tests: the new process reads its code
from its own pipe (:mod:`rewardhub_verifier._sandbox_untrusted`).

For each request it clones a child into a new pid namespace (with namespaces) or forks one (unsafe-local),
answers with the child's pid and a pidfd, and when the child exits reaps it (and, without a pid namespace,
everything it left behind: the zygote is a subreaper) and reports ``{"exit": pid, "status": wait status}``.
Shipped as source text with the other ``_sandbox_*`` parts.
"""

import contextlib
import fcntl
import gc
import json
import os
import select
import signal
import socket
import time

if __name__ != "__main__":  # imported on the host; when shipped, all parts share one namespace
    from rewardhub_verifier._sandbox_sys import PR_SET_CHILD_SUBREAPER, _fork_new_pidns, _prctl
    from rewardhub_verifier._sandbox_untrusted import untrusted_main

N_FDS = 6  # stdin, stdout, stderr, code, requests in, answers out


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
                os.kill(pid, signal.SIGKILL)
        reaped = False
        for pid in strays:
            with contextlib.suppress(ChildProcessError, OSError):
                if os.waitpid(pid, os.WNOHANG)[0]:
                    reaped = True
        if not strays:
            return
        if not reaped:
            time.sleep(0.002)


def zygote_main(sock, cfg):
    """Serve spawn requests on ``sock`` until the worker closes it. Never returns."""
    namespaces = bool(cfg.get("namespaces"))
    with contextlib.suppress(OSError):
        _prctl(PR_SET_CHILD_SUBREAPER, 1)
    # Inherited by every solution process: under memory pressure the kernel kills one of those first (the
    # biggest), not the worker or the test process.
    with contextlib.suppress(OSError), open("/proc/self/oom_score_adj", "w") as f:
        f.write("1000")
    # Every child touches this memory copy-on-write; a collector walking it would copy every page.
    gc.collect()
    gc.freeze()
    live = {}  # pidfd -> pid
    while True:
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
            with contextlib.suppress(ChildProcessError):
                _pid, status, usage = os.wait4(pid, 0)
                cpu_ms = (usage.ru_utime + usage.ru_stime) * 1000
            if not namespaces:
                with contextlib.suppress(OSError):
                    os.killpg(pid, signal.SIGKILL)  # its session's group (it called setsid)
                _reap_strays(set(live.values()))
            with contextlib.suppress(OSError):
                sock.send(json.dumps({"exit": pid, "status": status, "cpu_ms": round(cpu_ms, 3)}).encode())
        if sock not in ready:
            continue
        try:
            msg, fds, _flags, _addr = socket.recv_fds(sock, 1 << 16, N_FDS)
        except OSError:
            msg, fds = b"", []
        if not msg:  # the worker is gone: take every solution process with us
            for fd in live:
                with contextlib.suppress(OSError):
                    signal.pidfd_send_signal(fd, signal.SIGKILL)
            os._exit(0)
        req = json.loads(msg)
        pid = None
        try:
            pid = _fork_new_pidns() if namespaces else os.fork()
        except OSError as exc:
            err = str(exc)
        if pid == 0:
            try:
                sock.detach()  # its number may be one of the targets below; untrusted_main closes the rest
                high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 64) for fd in fds]
                for target, fd in enumerate(high):
                    os.dup2(fd, target)
            except BaseException as exc:
                with contextlib.suppress(BaseException):
                    os.write(2, f"rewardhub sandbox: zygote child setup failed: {exc!r}\n".encode())
                os._exit(121)
            untrusted_main(req["cfg"], req["mode"], req.get("tmpdir") or "/tmp")
        for fd in fds:
            os.close(fd)
        if pid is None:
            sock.send(json.dumps({"error": err}).encode())
            continue
        pidfd = os.pidfd_open(pid)
        live[pidfd] = pid
        socket.send_fds(sock, [json.dumps({"pid": pid}).encode()], [pidfd])
