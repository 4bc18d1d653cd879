"""The worker of the code sandbox: one warm interpreter that forks a sample per job and collects its result.

It reads jobs as JSON lines on stdin, forks a sample (:mod:`rewardhub_verifier._sandbox_sample`) for each,
captures and caps its output, enforces the wall-clock timeout, kills and reaps every process the sample
left behind, checks the nonces and writes one result line per job. It runs inside the sandbox, apart from
the supervisor (:mod:`rewardhub_verifier._sandbox_supervisor`) that owns the pool of workers. Shipped as
source text with the other ``_sandbox_*`` parts (see :mod:`rewardhub_verifier._sandbox_worker`).
"""

import contextlib
import gc
import json
import os
import secrets
import select
import shutil
import signal
import sys
import time

if __name__ != "__main__":  # imported on the host; when shipped, all parts share one namespace
    from rewardhub_verifier._sandbox_sample import _sample_main
    from rewardhub_verifier._sandbox_sys import (
        EXIT_SETUP_FAILED,
        PR_SET_CHILD_SUBREAPER,
        PR_SET_PDEATHSIG,
        _ns_id,
        _prctl,
        _read_oom_kills,
        _write_all,
    )


class _Capped:
    __slots__ = ("cap", "chunks", "size", "truncated")

    def __init__(self, cap):
        self.cap = cap
        self.chunks = []
        self.size = 0
        self.truncated = False

    def add(self, data):
        room = self.cap - self.size
        if len(data) > room:
            self.truncated = True
            data = data[:max(room, 0)]
        if data:
            self.chunks.append(data)
            self.size += len(data)

    def text(self):
        return b"".join(self.chunks).decode("utf-8", "replace")


class Worker:
    def __init__(self, cfg):
        self.cfg = cfg
        self.in_pidns = bool(cfg.get("host_pidns")) and _ns_id("pid") != cfg["host_pidns"]
        cfg["in_pidns"] = self.in_pidns
        self.tmp_root = cfg["tmp_root"]
        self.private_tmp = bool(cfg.get("private_tmp"))
        self.counter = 0
        self.me = os.getpid()
        self.oom_file = os.environ.get("RH_OOM_FILE", "")
        self.oom_kills = _read_oom_kills(self.oom_file)

    # -- cleanup --------------------------------------------------------------------------------------------
    def _children(self):
        pids = []
        try:
            with open(f"/proc/self/task/{self.me}/children") as f:
                pids = [int(p) for p in f.read().split()]
        except (OSError, ValueError):
            pass
        return pids

    def kill_all(self, pgid):
        """SIGKILL every descendant, then reap until none is left (we are a subreaper: orphans come to us)."""
        statuses = {}
        for attempt in range(100000):
            with contextlib.suppress(OSError):
                os.killpg(pgid, signal.SIGKILL)
            if self.in_pidns:
                # Everything in our own pid namespace except its init and ourselves: the sample and any
                # process it spawned, whatever process group or session it moved to.
                with contextlib.suppress(OSError):
                    os.kill(-1, signal.SIGKILL)
            else:
                for pid in self._children():
                    with contextlib.suppress(OSError):
                        os.kill(pid, signal.SIGKILL)
            while True:
                try:
                    pid, status = os.waitpid(-1, os.WNOHANG)
                except ChildProcessError:
                    return statuses
                if pid == 0:
                    break
                statuses[pid] = status
            time.sleep(0.0005 if attempt < 20 else 0.005)
        return statuses

    def clean_tmp(self, tmpdir):
        def onerror(func, path, exc_info):
            try:
                os.chmod(os.path.dirname(path), 0o700)
                os.chmod(path, 0o700)
            except OSError:
                pass
            try:
                if os.path.isdir(path) and not os.path.islink(path):
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    os.unlink(path)
            except OSError:
                pass

        targets = [tmpdir]
        if self.private_tmp:
            # The whole /tmp is ours (a tmpfs inside the sandbox): drop whatever the sample left anywhere in it.
            with contextlib.suppress(OSError):
                targets = [os.path.join(self.tmp_root, n) for n in os.listdir(self.tmp_root)]
        for path in targets:
            try:
                if os.path.isdir(path) and not os.path.islink(path):
                    shutil.rmtree(path, onerror=onerror)
                else:
                    os.unlink(path)
            except OSError:
                pass

    # -- one job --------------------------------------------------------------------------------------------
    def run(self, job):
        cfg = self.cfg
        tests = job["tests"]
        nonces = [secrets.token_hex(16) for _ in tests]
        done_nonce = secrets.token_hex(16)
        self.counter += 1
        tmpdir = os.path.join(self.tmp_root, f"rh_sample_{os.getpid()}_{self.counter}_{secrets.token_hex(4)}")
        os.mkdir(tmpdir, 0o700)
        r_res, w_res = os.pipe()
        r_out, w_out = os.pipe()
        r_err, w_err = os.pipe()
        t0 = time.monotonic()
        pid = None
        for _attempt in range(200):
            try:
                pid = os.fork()
                break
            except BlockingIOError:  # EAGAIN: the process limit is momentarily full
                time.sleep(0.01)
        if pid is None:
            for fd in (r_res, w_res, r_out, w_out, r_err, w_err):
                os.close(fd)
            self.clean_tmp(tmpdir)
            return {"id": job["id"], "infra_error": "fork failed (EAGAIN) for 2 s"}
        if pid == 0:
            _sample_main(job, cfg, tmpdir, w_res, w_out, w_err, nonces, done_nonce)
        for fd in (w_res, w_out, w_err):
            os.close(fd)
        with contextlib.suppress(OSError):
            os.setpgid(pid, pid)
        res = _Capped(1 << 20)
        out = _Capped(int(cfg["max_output_bytes"]))
        err = _Capped(int(cfg["max_output_bytes"]))
        bufs = {r_res: res, r_out: out, r_err: err}
        try:
            pidfd = os.pidfd_open(pid)
        except (AttributeError, OSError):
            pidfd = None
        deadline = t0 + float(cfg["timeout_s"])
        timed_out = False
        open_fds = [r_res, r_out, r_err]
        exited = False
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                timed_out = True
                break
            watch = list(open_fds)
            if pidfd is not None:
                watch.append(pidfd)
            ready, _, _ = select.select(watch, [], [], remaining if pidfd is not None else min(remaining, 0.01))
            for fd in ready:
                if fd == pidfd:
                    exited = True
                    continue
                data = os.read(fd, 65536)
                if data:
                    bufs[fd].add(data)
                else:
                    open_fds.remove(fd)
            if exited or (not open_fds and pidfd is None):
                break
            if pidfd is None and os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                break
        statuses = self.kill_all(pid)
        # Every writer is dead now: drain what is left in the pipes, without blocking.
        for fd in open_fds:
            os.set_blocking(fd, False)
            try:
                while True:
                    data = os.read(fd, 65536)
                    if not data:
                        break
                    bufs[fd].add(data)
            except BlockingIOError:
                pass
        for fd in (r_res, r_out, r_err):
            os.close(fd)
        if pidfd is not None:
            os.close(pidfd)
        elapsed = time.monotonic() - t0
        self.clean_tmp(tmpdir)

        status = statuses.get(pid)
        exit_code = sig = None
        if status is not None:
            if os.WIFSIGNALED(status):
                sig = os.WTERMSIG(status)
            elif os.WIFEXITED(status):
                exit_code = os.WEXITSTATUS(status)
        passed_set = set()
        failures = []
        done = False
        expected = set(nonces)
        for line in b"".join(res.chunks).decode("ascii", "replace").splitlines():
            parts = line.split(" ")
            if len(parts) == 2 and parts[0] == "P" and parts[1] in expected:
                passed_set.add(parts[1])
            elif len(parts) == 2 and parts[0] == "D" and parts[1] == done_nonce:
                done = True
            elif len(parts) == 3 and parts[0] == "F" and len(failures) < 1000:
                failures.append([parts[1], parts[2][:100]])
        oom_kills = _read_oom_kills(self.oom_file)
        oom = oom_kills > self.oom_kills
        self.oom_kills = oom_kills
        if exit_code == EXIT_SETUP_FAILED and not done:
            return {"id": job["id"], "infra_error": "sample setup failed (rlimits/chdir) " + err.text()[:500]}
        return {
            "id": job["id"],
            "passed": len(passed_set),
            "total": len(tests),
            "done": done,
            "timed_out": timed_out and not done,
            "exit_code": exit_code,
            "signal": sig,
            "failures": failures,
            "stdout": out.text(),
            "stderr": err.text(),
            "truncated": out.truncated or err.truncated,
            "elapsed": round(elapsed, 6),
            "stray_processes": max(len(statuses) - 1, 0),
            "oom": oom,
        }


def worker_main(cfg):
    try:
        _prctl(PR_SET_CHILD_SUBREAPER, 1)
        subreaper = True
    except OSError:
        subreaper = False
    with contextlib.suppress(OSError):
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    worker = Worker(cfg)
    hello = {
        "op": "hello",
        "pid": os.getpid(),
        "uid": os.getuid(),
        "euid": os.geteuid(),
        "ns": {k: _ns_id(k) for k in ("net", "pid", "mnt", "user")},
        "subreaper": subreaper,
        "python": sys.version.split()[0],
        "tmp_writable": os.access(worker.tmp_root, os.W_OK),
        "cgroup_oom_file": bool(worker.oom_file) and os.path.exists(worker.oom_file),
    }
    _write_all(1, (json.dumps(hello) + "\n").encode())
    stdin = sys.stdin.buffer
    # Everything allocated so far is shared copy-on-write with every sample; keep the collector off it.
    gc.collect()
    gc.freeze()
    while True:
        line = stdin.readline()
        if not line:
            return
        job = json.loads(line)
        try:
            result = worker.run(job)
        except Exception as exc:
            result = {"id": job.get("id"), "infra_error": f"worker: {type(exc).__name__}: {exc}"}
        _write_all(1, (json.dumps(result) + "\n").encode())
