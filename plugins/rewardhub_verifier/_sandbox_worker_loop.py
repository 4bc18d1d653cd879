"""The worker of the code sandbox: one warm interpreter that runs a sample's processes and collects verdicts.

It reads jobs as JSON lines on stdin and writes one result line per job. Per job it starts, never running any
job's code itself:

* the **solution's process(es)**, through the zygote (:mod:`rewardhub_verifier._sandbox_zygote`) so that they
  start from memory without tests or other samples' code (:mod:`rewardhub_verifier._sandbox_untrusted`);
* for assert / HumanEval / call-based rows, the **test process** (:mod:`rewardhub_verifier._sandbox_trusted`),
  forked from here into its own pid namespace; the verdicts come from it, on a pipe only it holds;
* for stdin/stdout rows, one solution process per test with that input; *this* process compares the output;
* for program-of-thought rows, one solution process; the printed or returned answer goes back to the host,
  which compares it with the gold answer (the gold answer never enters the sandbox).

Then it captures and caps the output, enforces the wall-clock limits, kills every process of the sample and
waits until they are gone. It is non-dumpable and keeps a capability only to create the namespaces; every
process that runs job code has dropped all capabilities first. Shipped as source text with the other
``_sandbox_*`` parts (see :mod:`rewardhub_verifier._sandbox_worker`).
"""

import contextlib
import gc
import json
import os
import resource
import select
import shutil
import signal
import socket
import sys
import time

if __name__ != "__main__":  # imported on the host; when shipped, all parts share one namespace
    from rewardhub_verifier._sandbox_sys import (
        EXIT_SETUP_FAILED,
        PR_SET_CHILD_SUBREAPER,
        PR_SET_PDEATHSIG,
        _cap_eff,
        _fork_new_pidns,
        _nondumpable,
        _ns_id,
        _prctl,
        _read_oom_kills,
        _write_all,
    )
    from rewardhub_verifier._sandbox_trusted import trusted_server_main
    from rewardhub_verifier._sandbox_zygote import zygote_main


class WorkerPoisoned(Exception):
    """The worker can no longer vouch for a clean state (zygote gone, a sample's process would not die)."""


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

    def bytes(self):
        return b"".join(self.chunks)

    def text(self):
        return self.bytes().decode("utf-8", "replace")


#: The zygote's ``-c`` program: it reads its real source from a pipe and compiles it with ``compile()``. With the
#: source itself as the ``-c`` argument, the parser's memory for it (megabytes) would stay allocated for as long
#: as that program runs, i.e. for the zygote's whole life, and the interpreter keeps its argv (as wide characters,
#: twice): all of it copied into every solution process's page tables. Name ``-c``'s own globals stay few.
_ZYGOTE_BOOT = (
    "import os, sys\n"
    "def _boot(fd):\n"
    "    chunks = []\n"
    "    while True:\n"
    "        data = os.read(fd, 1 << 16)\n"
    "        if not data:\n"
    "            break\n"
    "        chunks.append(data)\n"
    "    os.close(fd)\n"
    "    return compile(b''.join(chunks), '<rewardhub zygote>', 'exec')\n"
    "exec(_boot(int(sys.argv.pop(1))))\n"
)
#: The zygote's environment until it sets the solution's own (:func:`_warm_up`). ``LD_BIND_NOW``: the dynamic
#: linker resolves every symbol at start-up, once, instead of in each solution process at its first call of a
#: libc function the zygote never called itself (``setsid``, ``setrlimit``, ...), each costing it a symbol search
#: through every library and a copy-on-write page fault on the symbol table.
_ZYGOTE_ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "LD_BIND_NOW": "1"}


class Zygote:
    """The worker's handle on its zygote: spawn requests, and the exit reports that come back."""

    def __init__(self, cfg, source=None):
        """Fork the zygote; with ``source`` (the zygote's own source text), the child execs a fresh interpreter
        running it (:func:`zygote_exec_main`), whose small heap makes every solution process cheaper. The source
        goes through a pipe (see :data:`_ZYGOTE_BOOT`)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        argv = None
        src_r = src_w = -1
        if source:
            src_r, src_w = os.pipe()
            argv = [sys.executable, "-I", "-S", "-B", "-c", _ZYGOTE_BOOT, str(src_r), "zygote",
                    str(theirs.fileno()), json.dumps(cfg)]
        pid = os.fork()
        if pid == 0:
            try:
                ours.close()
                keep = sorted({theirs.fileno(), src_r} - {-1})
                if src_w >= 0:
                    os.close(src_w)
                low = 3
                for fd in keep:
                    os.closerange(low, fd)
                    low = fd + 1
                os.closerange(low, 65536)
                devnull = os.open("/dev/null", os.O_RDWR)
                for fd in (0, 1):
                    os.dup2(devnull, fd)
                os.close(devnull)
                if argv:
                    for fd in keep:
                        os.set_inheritable(fd, True)
                    os.execve(argv[0], argv, _ZYGOTE_ENV)
                zygote_main(theirs, cfg)
            finally:
                os._exit(1)
        if source:
            os.close(src_r)
            try:
                _write_all(src_w, source.encode())
            except OSError:
                pass  # it died before reading: the first spawn request says so (WorkerPoisoned)
            finally:
                os.close(src_w)
        theirs.close()
        self.pid, self.sock = pid, ours
        self.exits = {}
        self.cpu_ms = 0.0  # CPU time of the solution processes waited for in the current job (wait4)
        self.minflt = 0  # their page faults (minor)
        self.siblings = set()  # solution processes that are our children (the zygote cloned with CLONE_PARENT)
        self.requests = {}  # (mode, cpu_s) -> encoded spawn request, with namespaces (no per-sample tmpdir)

    def _recv(self, timeout):
        ready, _, _ = select.select([self.sock], [], [], timeout)
        if not ready:
            return None
        msg, fds, _flags, _addr = socket.recv_fds(self.sock, 1 << 16, 1)
        if not msg:
            raise WorkerPoisoned("the zygote exited")
        data = json.loads(msg)
        if "exit" in data:
            self.exits[data["exit"]] = (data["status"], float(data.get("cpu_ms", 0.0)), int(data.get("minflt", 0)))
        return data, fds

    def spawn(self, mode, cfg, fds, tmpdir=None):
        """(pid, pidfd) of a new solution process; its descriptors 0-5 become ``fds`` (stdin, stdout, stderr,
        code, requests in, answers out)."""
        key = (mode, cfg.get("cpu_s")) if tmpdir is None else None
        request = self.requests.get(key)
        if request is None:
            request = json.dumps({"mode": mode, "cfg": cfg, "tmpdir": tmpdir}).encode()
            if key is not None and len(self.requests) < 64:
                self.requests[key] = request  # (the same for every sample of a mode and time limit)
        socket.send_fds(self.sock, [request], fds)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            got = self._recv(deadline - time.monotonic())
            if got is None:
                break
            data, passed = got
            if data.get("sibling") and type(data.get("pid")) is int and data["pid"] > 0:
                # Our own child (CLONE_PARENT): not reaped before we wait for it, so the pid is still its own.
                self.siblings.add(data["pid"])
                return data["pid"], os.pidfd_open(data["pid"])
            if "pid" in data and passed:
                return data["pid"], passed[0]
            if "error" in data:
                raise OSError(data["error"])
        raise WorkerPoisoned("the zygote did not answer")

    def wait_exit(self, pid, timeout=5.0, pidfd=None):
        if pid in self.siblings:
            if pidfd is not None and not select.select([pidfd], [], [], timeout)[0]:
                raise WorkerPoisoned("a solution process did not die")
            _pid, status, usage = os.wait4(pid, 0)
            self.siblings.discard(pid)
            self.cpu_ms += (usage.ru_utime + usage.ru_stime) * 1000
            self.minflt += usage.ru_minflt
            return status
        deadline = time.monotonic() + timeout
        while pid not in self.exits:
            gone = time.monotonic() > deadline or self._recv(max(deadline - time.monotonic(), 0)) is None
            if gone and pid not in self.exits:
                raise WorkerPoisoned("a solution process did not die")
        status, cpu_ms, minflt = self.exits.pop(pid)
        self.cpu_ms += cpu_ms
        self.minflt += minflt
        return status

    def drain(self):
        while self._recv(0) is not None:
            pass


class TestServer:
    """The worker's handle on its test process (:func:`trusted_server_main`), replaced whenever it asks to be,
    dies, or does not finish a sample in time."""

    def __init__(self, cfg, fork):
        self.cfg, self.fork = cfg, fork
        self.pid = None
        self.restart_requested = False
        self.cpu_ms = 0.0

    def start(self):
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        job_r, job_w = os.pipe()
        res_r, res_w = os.pipe()
        pid = self.fork()
        if pid == 0:
            ours.close()
            os.close(job_w)
            os.close(res_r)
            trusted_server_main(self.cfg, theirs, job_r, res_w)
        theirs.close()
        os.close(job_r)
        os.close(res_w)
        self.pid, self.ctl, self.job_w, self.res_r = pid, ours, job_w, res_r
        self.pidfd = os.pidfd_open(pid)
        self.buf = b""
        self.restart_requested = False

    def submit(self, job_id, body, req_w, resp_r):
        if self.pid is None:
            self.start()
        socket.send_fds(self.ctl, [json.dumps({"id": job_id, "len": len(body)}).encode()], [req_w, resp_r])
        return self.job_w

    def stop(self):
        if self.pid is None:
            return
        with contextlib.suppress(OSError):
            signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
        for fd in (self.pidfd, self.job_w, self.res_r):
            with contextlib.suppress(OSError):
                os.close(fd)
        self.ctl.close()
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, 0)
        self.pid = None


def _write_some(pending, fd):
    """Write to the (non-blocking) pipe ``fd`` what it takes of ``pending[fd]``, a memoryview, at most 64 KiB;
    once its reader is gone, nothing more is left to write."""
    try:
        n = os.write(fd, pending[fd][:1 << 16])
        pending[fd] = pending[fd][n:]
    except BlockingIOError:
        pass
    except OSError:  # the reader is gone
        pending[fd] = pending[fd][:0]


def _pump(reads, writes, deadline, stop_fds=()):
    """Move bytes until every read fd hit EOF, a stop fd became readable, or the deadline passed.

    ``reads``: fd -> _Capped; ``writes``: fd -> bytes (each write fd is closed once written). Returns True on
    the deadline.
    """
    open_reads = list(reads)
    pending = {fd: memoryview(data) for fd, data in writes.items()}
    for fd in pending:
        os.set_blocking(fd, False)
    while True:
        for fd in [fd for fd, view in pending.items() if not view]:
            os.close(fd)
            del pending[fd]
        if not open_reads and not stop_fds:
            return False
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        readable, writable, _ = select.select(open_reads + list(stop_fds), list(pending), [], remaining)
        for fd in writable:
            _write_some(pending, fd)
        stop = False
        for fd in readable:
            if fd in stop_fds:
                stop = True
                continue
            data = os.read(fd, 1 << 16)
            if data:
                reads[fd].add(data)
            else:
                open_reads.remove(fd)
        if stop or (not open_reads and not stop_fds):
            for fd in pending:
                os.close(fd)
            return False
    for fd in pending:
        os.close(fd)
    return True


def _readable(fd):
    return bool(select.select([fd], [], [], 0)[0])


def _read_rest(fd):
    os.set_blocking(fd, False)
    chunks = []
    with contextlib.suppress(BlockingIOError, OSError):
        while True:
            data = os.read(fd, 1 << 16)
            if not data:
                break
            chunks.append(data)
    os.set_blocking(fd, True)
    return b"".join(chunks)


def _drain(reads):
    for fd, buf in reads.items():
        os.set_blocking(fd, False)
        with contextlib.suppress(BlockingIOError, OSError):
            while True:
                data = os.read(fd, 1 << 16)
                if not data:
                    break
                buf.add(data)
        os.close(fd)


def _normalize_lines(text):
    lines = [line.rstrip() for line in text.replace("\r\n", "\n").split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def outputs_match(got, expected, compare="lines", float_tol=0.0):
    """Judge a stdout against the expected one: lines (trailing spaces and blank lines ignored) or tokens."""
    if compare == "exact":
        return got == expected
    if compare == "tokens" or float_tol:
        a, b = got.split(), expected.split()
        if len(a) != len(b):
            return False
        for x, y in zip(a, b):
            if x == y:
                continue
            if not float_tol:
                return False
            try:
                fx, fy = float(x), float(y)
            except ValueError:
                return False
            if not abs(fx - fy) <= float_tol * max(1.0, abs(fy)):
                return False
        return True
    return _normalize_lines(got) == _normalize_lines(expected)


class Worker:
    def __init__(self, cfg, zygote_source=None):
        self.cfg = cfg
        self.namespaces = bool(cfg.get("namespaces"))
        self.tmp_root = cfg.get("tmp_root") or "/tmp"
        self.counter = 0
        self.oom_file = os.environ.get("RH_OOM_FILE", "")
        self.oom_fd = -1
        if self.oom_file:
            with contextlib.suppress(OSError):
                self.oom_fd = os.open(self.oom_file, os.O_RDONLY | os.O_CLOEXEC)  # re-read with pread per job
        self.oom_kills = self._read_oom_kills()
        self.zygote = Zygote(cfg, zygote_source)  # before any job is read: its memory holds none
        self.tester = TestServer(cfg, self._fork_test_process)
        self.tester.start()

    # -- helpers ----------------------------------------------------------------------------------------------
    def _limits(self, timeout_s):
        cfg = dict(self.cfg)
        cfg["cpu_s"] = int(timeout_s) + 1
        return cfg

    def _fork_test_process(self):
        for _attempt in range(200):
            try:
                return _fork_new_pidns() if self.namespaces else os.fork()
            except (BlockingIOError, OSError) as exc:
                if getattr(exc, "errno", None) not in (11, 12):
                    raise
                time.sleep(0.01)
        raise OSError("fork failed (EAGAIN) for 2 s")

    def _sample_dir(self):
        if self.namespaces:
            return None
        self.counter += 1
        path = os.path.join(self.tmp_root, f"rh_sample_{os.getpid()}_{self.counter}_{os.urandom(4).hex()}")
        os.mkdir(path, 0o700)
        return path

    def _clean(self, path):
        if path:
            def onerror(func, p, exc_info):
                with contextlib.suppress(OSError):
                    os.chmod(os.path.dirname(p), 0o700)
                    os.chmod(p, 0o700)
                with contextlib.suppress(OSError):
                    if os.path.isdir(p) and not os.path.islink(p):
                        shutil.rmtree(p, ignore_errors=True)
                    else:
                        os.unlink(p)
            shutil.rmtree(path, onerror=onerror)

    def _read_oom_kills(self):
        if self.oom_fd >= 0:
            try:
                for line in os.pread(self.oom_fd, 1 << 16, 0).split(b"\n"):
                    if line.startswith(b"oom_kill "):
                        return int(line.split()[1])
                return 0
            except (OSError, ValueError):
                pass
        return _read_oom_kills(self.oom_file)

    def _oom(self):
        kills = self._read_oom_kills()
        oom = kills > self.oom_kills
        self.oom_kills = kills
        return oom

    def _finish_solution(self, pid, pidfd):
        """SIGKILL the solution's process (in a pid namespace: all of it) and wait until the zygote reaped it."""
        with contextlib.suppress(OSError):
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        try:
            return self.zygote.wait_exit(pid, pidfd=pidfd)
        finally:
            os.close(pidfd)

    @staticmethod
    def _status(status):
        if status is None:
            return None, None
        if os.WIFSIGNALED(status):
            return None, os.WTERMSIG(status)
        if os.WIFEXITED(status):
            return os.WEXITSTATUS(status), None
        return None, None

    # -- one job ----------------------------------------------------------------------------------------------
    def run(self, job):
        kind = job["kind"]
        self.zygote.cpu_ms = self.tester.cpu_ms = 0.0
        self.zygote.minflt = 0
        usage = resource.getrusage(resource.RUSAGE_SELF)
        if kind == "io":
            result = self.run_io(job)
        elif kind == "program":
            result = self.run_program(job)
        else:
            result = self.run_call(job)
        after = resource.getrusage(resource.RUSAGE_SELF)
        result["cpu_ms"] = {"solution": round(self.zygote.cpu_ms, 3), "tests": round(self.tester.cpu_ms, 3),
                            "worker": round((after.ru_utime + after.ru_stime - usage.ru_utime - usage.ru_stime)
                                            * 1000, 3)}
        result["solution_minflt"] = self.zygote.minflt
        return result

    def run_call(self, job):
        cfg = self._limits(job["timeout_s"])
        t0 = time.monotonic()
        tmpdir = self._sample_dir()
        code_r, code_w = os.pipe()
        req_r, req_w = os.pipe()
        resp_r, resp_w = os.pipe()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        devnull = os.open("/dev/null", os.O_RDONLY)
        try:
            pid, pidfd = self.zygote.spawn("serve", cfg, [devnull, out_w, err_w, code_r, req_r, resp_w], tmpdir)
        finally:
            for fd in (code_r, devnull, out_w, err_w, req_r, resp_w):
                os.close(fd)
        body = json.dumps(job).encode()
        try:
            job_w = self.tester.submit(job["id"], body, req_w, resp_r)
        except OSError:
            self.tester.stop()
            job_w = self.tester.submit(job["id"], body, req_w, resp_r)
        finally:
            os.close(req_w)
            os.close(resp_r)
        out, err = _Capped(int(job["max_output_bytes"])), _Capped(int(job["max_output_bytes"]))
        verdicts, timed_out, killed_at = self._pump_call(job, {out_r: out, err_r: err}, code_w, job_w, body,
                                                         pidfd, t0)
        exited_alone = killed_at is None and _readable(pidfd)
        status = self._finish_solution(pid, pidfd)
        _drain({out_r: out, err_r: err})
        self._clean(tmpdir)
        exit_code, sig = self._status(status) if exited_alone else (None, None)
        result = {"id": job["id"], "kind": "call", "total": int(job["total"]), "timed_out": timed_out,
                  "exit_code": exit_code, "signal": sig, "oom": self._oom(),
                  "stdout": out.text(), "stderr": err.text(), "truncated": out.truncated or err.truncated,
                  "elapsed": round(time.monotonic() - t0, 6)}
        if verdicts is None:  # the test process died or hung: replaced; the sample runs again (supervisor)
            return {"id": job["id"], "worker_lost": "the test process died or hung"}
        passed, failures, done, unsupported = set(), [], False, []
        for msg in verdicts:
            if "t" in msg:
                if msg.get("ok"):
                    passed.add(int(msg["t"]))
                elif len(failures) < 200:
                    failures.append([int(msg["t"]), str(msg.get("type", ""))[:100], str(msg.get("msg", ""))[:1000]])
            elif msg.get("finished"):
                done = True
                result["calls"] = msg.get("calls", 0)
            elif "unsupported" in msg:
                unsupported.append(str(msg["unsupported"])[:1000])
            elif "solution_error" in msg:
                result["solution_error"] = msg["solution_error"]
            elif "harness_error" in msg:
                result["infra_error"] = "test harness failed: " + str(msg["harness_error"])
        result.update(passed=len(passed), failures=failures, done=done, unsupported=unsupported)
        if exit_code == EXIT_SETUP_FAILED and not passed:
            result["infra_error"] = "solution process setup failed: " + err.text()[-500:]
        return result

    def _pump_call(self, job, reads, code_w, job_w, body, pidfd, t0):
        """Feed the code and the job, collect output and the verdict batch.

        At the deadline the solution's process is killed: a test process waiting on it then finishes at once
        (every later call fails). A test process that still does not finish within the grace is replaced.
        Returns (verdicts or None if the test process was lost, timed out, when the solution was killed).
        """
        tester = self.tester
        res_r = tester.res_r
        pending = {code_w: memoryview(job["code"].encode()), job_w: memoryview(body)}
        for fd in pending:
            os.set_blocking(fd, False)
        open_reads = list(reads)
        deadline = t0 + float(job["timeout_s"])
        grace = 1.0
        killed_at = None
        verdicts = None
        lost = False
        while verdicts is None and not lost:
            now = time.monotonic()
            if killed_at is None and now >= deadline:
                killed_at = now
                with contextlib.suppress(OSError):
                    signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            if killed_at is not None and now >= killed_at + grace:
                lost = True
                break
            limit = (deadline if killed_at is None else killed_at + grace) - now
            wanted = [fd for fd, view in pending.items() if view]
            readable, writable, _ = select.select([*open_reads, res_r, tester.pidfd], wanted, [], max(limit, 0))
            for fd in writable:
                _write_some(pending, fd)
                if fd == code_w and not pending[fd]:
                    os.close(code_w)  # EOF: the solution's process starts running the code
                    del pending[code_w]
            for fd in readable:
                if fd == res_r or fd == tester.pidfd:
                    if verdicts is not None:
                        continue  # already complete (the test process exits after a batch asking for it)
                    data = _read_rest(res_r) if fd == tester.pidfd else os.read(res_r, 1 << 16)
                    tester.buf += data
                    verdicts = self._verdicts(job["id"])
                    if verdicts is None and (fd == tester.pidfd or not data):
                        lost = True  # the test process died without finishing this sample
                        break
                elif fd in reads:
                    data = os.read(fd, 1 << 16)
                    if data:
                        reads[fd].add(data)
                    else:
                        open_reads.remove(fd)
        if code_w in pending:
            os.close(code_w)
        if lost or tester.restart_requested:
            tester.stop()
        return (None if lost else verdicts), killed_at is not None, killed_at

    def _verdicts(self, job_id):
        """The complete batch for ``job_id`` from the test process's buffer, or None while incomplete."""
        tester = self.tester
        lines = tester.buf.split(b"\n")
        out = []
        for i, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            if msg.get("done") == job_id:
                tester.buf = b"\n".join(lines[i + 1:])
                tester.restart_requested = bool(msg.get("restart"))
                tester.cpu_ms = float(msg.get("cpu_ms", 0.0))
                return out
            out.append(msg)
        return None

    def _run_once(self, mode, job, stdin_data, out_cap, timeout_s, want_answer=False):
        """One solution process on ``stdin_data``: (timed_out, exit code, signal, stdout, stderr, answer, s)."""
        cfg = self._limits(timeout_s)
        t0 = time.monotonic()
        tmpdir = self._sample_dir()
        code_r, code_w = os.pipe()
        in_r, in_w = os.pipe()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        ans_r, ans_w = os.pipe() if want_answer else (None, None)
        devnull = os.open("/dev/null", os.O_RDWR)
        fds = [in_r, out_w, err_w, code_r, devnull, ans_w if want_answer else devnull]
        try:
            pid, pidfd = self.zygote.spawn(mode, cfg, fds, tmpdir)
        finally:
            for fd in {code_r, in_r, out_w, err_w, devnull, ans_w} - {None}:
                os.close(fd)
        out, err, ans = _Capped(out_cap), _Capped(int(job["max_output_bytes"])), _Capped(1 << 16)
        reads = {out_r: out, err_r: err}
        if want_answer:
            reads[ans_r] = ans
        writes = {code_w: job["code"].encode(), in_w: stdin_data.encode()}
        timed_out = _pump(reads, writes, t0 + timeout_s, stop_fds=(pidfd,))
        status = self._finish_solution(pid, pidfd)
        _drain(reads)
        self._clean(tmpdir)
        exit_code, sig = self._status(status)
        return timed_out, exit_code, sig, out, err, ans.text(), time.monotonic() - t0

    def run_io(self, job):
        t0 = time.monotonic()
        cases = job["cases"]
        per_test = float(job["timeout_s"])
        passed, failures, stdout, stderr = 0, [], "", ""
        timed_out = truncated = False
        sig = exit_code = None
        for i, (stdin_data, expected) in enumerate(cases):
            cap = max(int(job["max_output_bytes"]), 2 * len(expected) + 65536)
            t_out, code, s, out, err, _ans, _dt = self._run_once("run", job, stdin_data, cap, per_test)
            if i == 0 or (not stderr and err.size):
                stdout, stderr = out.text()[: int(job["max_output_bytes"])], err.text()
            truncated = truncated or out.truncated
            if t_out:
                failures.append([i, "Timeout", f"no result within {per_test:g}s"])
                timed_out = True
                # Every later test would most likely hold the worker for the whole limit too.
                failures.extend([j, "Skipped", "not run after a timeout"] for j in range(i + 1, len(cases)))
                break
            if s is not None or code != 0:
                sig, exit_code = s, code
                failures.append([i, "RuntimeError", f"exit code {code}" if s is None else f"killed by signal {s}"])
                continue
            if out.truncated:
                failures.append([i, "OutputLimit", "output over the limit"])
                continue
            if outputs_match(out.text(), expected, job.get("compare", "lines"), float(job.get("float_tol", 0))):
                passed += 1
            else:
                got = out.text()
                failures.append([i, "WrongAnswer", f"expected {expected[:200]!r}, got {got[:200]!r}"])
        return {"id": job["id"], "kind": "io", "passed": passed, "total": len(cases), "failures": failures[:200],
                "done": not timed_out, "timed_out": timed_out, "signal": sig, "exit_code": exit_code,
                "oom": self._oom(), "stdout": stdout, "stderr": stderr, "truncated": truncated,
                "elapsed": round(time.monotonic() - t0, 6)}

    def run_program(self, job):
        timed_out, code, sig, out, err, ans, dt = self._run_once(
            "program", job, "", int(job["max_output_bytes"]), float(job["timeout_s"]), want_answer=True)
        answer, source = None, ""
        try:
            msg = json.loads(ans.splitlines()[0]) if ans.strip() else {}
        except ValueError:
            msg = {}
        if not timed_out and code == 0 and sig is None:
            if isinstance(msg.get("value"), str):
                answer, source = msg["value"], "solution()"
            else:
                lines = [line.strip() for line in out.text().splitlines() if line.strip()]
                if lines:
                    answer, source = lines[-1], "stdout"
        return {"id": job["id"], "kind": "program", "answer": answer, "answer_source": source,
                "timed_out": timed_out, "exit_code": code, "signal": sig, "oom": self._oom(),
                "stdout": out.text(), "stderr": err.text(), "truncated": out.truncated or err.truncated,
                "elapsed": round(dt, 6), "passed": 0, "total": 1, "failures": [], "done": answer is not None}


def worker_main(cfg, zygote_source=None):
    try:
        _prctl(PR_SET_CHILD_SUBREAPER, 1)
        subreaper = True
    except OSError:
        subreaper = False
    with contextlib.suppress(OSError):
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    _nondumpable()
    # Writes to a process that died (a solution's code pipe) must fail with EPIPE, not kill the worker.
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    cfg["namespaces"] = bool(cfg.get("namespaces")) and bool(_cap_eff() & (1 << 21))
    # What every solution and test process needs, imported once here (then shared copy-on-write) instead of
    # once per sample: linecache pulls in tokenize and re, a few milliseconds each time.
    import linecache  # noqa: F401
    import traceback  # noqa: F401
    worker = Worker(cfg, zygote_source)
    hello = {
        "op": "hello",
        "pid": os.getpid(),
        "uid": os.getuid(),
        "euid": os.geteuid(),
        "ns": {k: _ns_id(k) for k in ("net", "pid", "mnt", "user")},
        "subreaper": subreaper,
        "namespaces": cfg["namespaces"],
        "python": sys.version.split()[0],
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
        except WorkerPoisoned as exc:
            _write_all(1, (json.dumps({"id": job.get("id"), "worker_lost": f"poisoned: {exc}"}) + "\n").encode())
            os._exit(1)
        except Exception as exc:
            result = {"id": job.get("id"), "infra_error": f"worker: {type(exc).__name__}: {exc}"}
        _write_all(1, (json.dumps(result) + "\n").encode())
        worker.zygote.drain()
