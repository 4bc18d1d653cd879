"""Supervisor and worker processes of :mod:`rewardhub_verifier.sandbox` (stdlib only, Python >= 3.8).

This file is never imported by the sandboxed processes: its *source text* is passed to the interpreter with
``python -I -S -c <source> ROLE CONFIG_JSON``, so a worker dropped to an unprivileged uid needs no read
access to the repository or to a virtual environment.

Process tree (root host, bubblewrap available)::

    trainer (CodeSandbox)                         host uid, host namespaces
      supervisor  (role "supervisor")             subreaper, waitpid loop, deadlines, restarts
        bwrap  (as uid 65534)                     --unshare-all: user/pid/net/ipc/uts/cgroup namespaces
          bwrap init (pid 1 of the namespace)
            worker  (role "worker")               warm interpreter, subreaper inside the namespace
              sample  (os.fork of the worker)     own process group, rlimits, own cwd, scrubbed env

Protocol: JSON lines. host -> supervisor: ``{"id", "code", "tests"}`` jobs and ``{"op": "stats"}``;
supervisor -> host: one result per job, ``{"op": "ready", ...}`` once at start and stats replies.
The supervisor forwards each job to an idle worker over the worker's stdin and reads the result from
its stdout; a sample never inherits those pipes.
"""

import contextlib
import ctypes
import gc
import json
import os
import resource
import secrets
import select
import shutil
import signal
import sys
import time
import traceback
import types

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
CLONE_NEWNET = 0x40000000
CLONE_NEWUSER = 0x10000000

EXIT_SETUP_FAILED = 121
_MAXFD = 65536

_libc = None


def _libc_call(name, *args):
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    rc = getattr(_libc, name)(*args)
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{name}: {os.strerror(err)}")


def _prctl(option, value):
    _libc_call("prctl", ctypes.c_int(option), ctypes.c_ulong(value), ctypes.c_ulong(0), ctypes.c_ulong(0),
               ctypes.c_ulong(0))


def _ns_id(kind):
    try:
        return os.readlink(f"/proc/self/ns/{kind}")
    except OSError:
        return ""


def _write_file(path, text):
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _read_oom_kills(path):
    if not path:
        return 0
    try:
        with open(path) as f:
            for line in f:
                if line.startswith("oom_kill "):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def _write_all(fd, data):
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


# ----------------------------------------------------------------------------------------------------------
# sample process (child of the worker): limits, then the harness
# ----------------------------------------------------------------------------------------------------------

# Bound now, before any user code runs: a solution that rebinds os.write / exec / compile cannot touch these.
_os_write = os.write
_os_exit = os._exit
_exec = exec
_compile = compile
_format_exc_only = traceback.format_exception_only


def _set_limits(cfg):
    mem = int(cfg["memory_mb"]) * 1024 * 1024
    cpu = int(cfg["cpu_s"])
    limits = [
        (resource.RLIMIT_AS, mem),
        (resource.RLIMIT_CPU, cpu),
        (resource.RLIMIT_FSIZE, int(cfg["fsize_mb"]) * 1024 * 1024),
        (resource.RLIMIT_NOFILE, int(cfg["nofile"])),
        (resource.RLIMIT_CORE, 0),
        (resource.RLIMIT_NPROC, int(cfg["nproc"])),
    ]
    for what, value in limits:
        hard = value + 1 if what == resource.RLIMIT_CPU else value
        resource.setrlimit(what, (value, hard))


def _sample_main(job, cfg, tmpdir, res_fd, out_fd, err_fd, nonces, done_nonce):
    """Runs in the forked child. Never returns."""
    try:
        os.setpgid(0, 0)
        devnull = os.open("/dev/null", os.O_RDONLY)
        os.dup2(devnull, 0)
        os.dup2(out_fd, 1)
        os.dup2(err_fd, 2)
        # Everything the worker holds (its job pipes, pidfds, ...) is closed; only 0-2 and the result pipe stay.
        os.closerange(3, res_fd)
        os.closerange(res_fd + 1, _MAXFD)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        if not cfg.get("in_pidns"):  # in a pid namespace the supervisor tears the whole namespace down instead
            with contextlib.suppress(OSError):
                _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        os.chdir(tmpdir)
        os.umask(0o077)
        os.environ.clear()
        os.environ.update({"PATH": "/usr/bin:/bin", "HOME": tmpdir, "TMPDIR": tmpdir, "LANG": "C.UTF-8",
                           "PYTHONDONTWRITEBYTECODE": "1"})
        _set_limits(cfg)
        sys.stdin = open(0, closefd=False)  # noqa: SIM115
        sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
        sys.argv = ["solution.py"]
    except BaseException:
        _os_exit(EXIT_SETUP_FAILED)
    _harness(job["code"], job["tests"], res_fd, nonces, done_nonce)


def _report_failure(res_fd, index, exc, source):
    name = type(exc).__name__
    with contextlib.suppress(OSError):
        _os_write(res_fd, f"F {index} {name}\n".encode())
    try:
        where = "solution" if index < 0 else f"test {index}"
        text = "".join(_format_exc_only(type(exc), exc)).strip()
        if index >= 0 and isinstance(exc, AssertionError) and not str(exc):
            text = f"AssertionError: {source.strip()[:300]}"
        _os_write(2, f"[{where}] {text[:2000]}\n".encode("utf-8", "replace"))
    except BaseException:
        pass


def _harness(code, tests, res_fd, nonces, done_nonce):
    import builtins
    import linecache

    pristine = dict(builtins.__dict__)
    module = types.ModuleType("__main__")
    ns = module.__dict__
    ns["__builtins__"] = dict(pristine)
    sys.modules["__main__"] = module
    linecache.cache["<solution>"] = (len(code), None, code.splitlines(True), "<solution>")
    try:
        _exec(_compile(code, "<solution>", "exec"), ns)
    except BaseException as exc:
        _report_failure(res_fd, -1, exc, code)
        _finish(res_fd, done_nonce)
    for i, test in enumerate(tests):
        name = f"<test {i}>"
        linecache.cache[name] = (len(test), None, test.splitlines(True), name)
        # A solution cannot leave patched builtins behind for the tests to call.
        ns["__builtins__"] = dict(pristine)
        try:
            _exec(_compile(test, name, "exec"), ns)
        except BaseException as exc:
            _report_failure(res_fd, i, exc, test)
            continue
        try:
            _os_write(res_fd, f"P {nonces[i]}\n".encode())
        except OSError:
            break
    _finish(res_fd, done_nonce)


def _finish(res_fd, done_nonce):
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(BaseException):
            stream.flush()
    with contextlib.suppress(BaseException):
        _os_write(res_fd, f"D {done_nonce}\n".encode())
    _os_exit(0)


# ----------------------------------------------------------------------------------------------------------
# worker: one warm interpreter that forks a sample per job
# ----------------------------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------------------------
# supervisor: subreaper that owns the worker pool
# ----------------------------------------------------------------------------------------------------------


class _WorkerSlot:
    def __init__(self, index):
        self.index = index
        self.pid = None
        self.stdin = None
        self.stdout = None
        self.inbuf = b""
        self.outbuf = b""
        self.state = "dead"  # dead | starting | idle | busy
        self.job = None
        self.deadline = 0.0
        self.hello = None
        self.started_at = 0.0
        self.cgroups = []


class Supervisor:
    def __init__(self, cfg):
        self.cfg = cfg
        self.slots = [_WorkerSlot(i) for i in range(int(cfg["workers"]))]
        self.queue = []
        self.qhead = 0
        self.out = b""
        self.host_in = b""
        self.host_eof = False
        self.reaped_orphans = 0
        self.unreaped_workers = set()
        self.cgroups_to_remove = set()
        self.spawns = 0
        self.restarts = 0
        self.spawn_failures = 0
        self.next_spawn_at = 0.0
        self.ready_sent = False
        self.grace = float(cfg.get("grace_s", 3.0))
        self.handshake_s = float(cfg.get("handshake_s", 15.0))

    # -- worker lifecycle -----------------------------------------------------------------------------------
    def make_cgroups(self, slot):
        """A fresh memory and pids cgroup (v1) per worker start: the backstop behind the rlimits."""
        dirs = []
        self.spawns += 1
        for ctrl, base in sorted(self.cfg.get("cgroups", {}).items()):
            path = os.path.join(base, f"{self.cfg['cgroup_prefix']}_w{slot.index}_{self.spawns}")
            try:
                os.mkdir(path)
                if ctrl == "memory":
                    limit = str(int(self.cfg["cgroup_memory_bytes"]))
                    _write_file(os.path.join(path, "memory.limit_in_bytes"), limit)
                    if os.path.exists(os.path.join(path, "memory.memsw.limit_in_bytes")):
                        _write_file(os.path.join(path, "memory.memsw.limit_in_bytes"), limit)
                elif ctrl == "pids":
                    _write_file(os.path.join(path, "pids.max"), str(int(self.cfg["cgroup_pids_max"])))
            except OSError as exc:
                os.write(2, f"rewardhub sandbox: cgroup {path}: {exc}\n".encode())
                self.remove_cgroup(path)
                continue
            dirs.append((ctrl, path))
        return dirs

    def remove_cgroup(self, path):
        try:
            os.rmdir(path)
        except FileNotFoundError:
            pass
        except OSError:
            self.cgroups_to_remove.add(path)
            return False
        self.cgroups_to_remove.discard(path)
        return True

    def spawn(self, slot):
        cfg = self.cfg
        cgroups = self.make_cgroups(slot)
        r_in, w_in = os.pipe()
        r_out, w_out = os.pipe()
        argv = list(cfg["worker_argv"])
        env = dict(cfg["worker_env"])
        for ctrl, path in cgroups:
            if ctrl == "memory":
                env["RH_OOM_FILE"] = os.path.join(path, "memory.oom_control")
        pid = os.fork()
        if pid == 0:
            try:
                os.setsid()
                os.dup2(r_in, 0)
                os.dup2(w_out, 1)
                os.closerange(3, _MAXFD)
                for _ctrl, path in cgroups:
                    _write_file(os.path.join(path, "cgroup.procs"), "0")
                if cfg.get("unshare") == "net":
                    _libc_call("unshare", ctypes.c_int(CLONE_NEWNET))
                elif cfg.get("unshare") == "user+net":
                    uid, gid = os.getuid(), os.getgid()
                    _libc_call("unshare", ctypes.c_int(CLONE_NEWUSER | CLONE_NEWNET))
                    with open("/proc/self/setgroups", "w") as f:
                        f.write("deny")
                    with open("/proc/self/uid_map", "w") as f:
                        f.write(f"{uid} {uid} 1")
                    with open("/proc/self/gid_map", "w") as f:
                        f.write(f"{gid} {gid} 1")
                if cfg.get("drop_uid") is not None:
                    os.setgroups([])
                    os.setgid(int(cfg["drop_gid"]))
                    os.setuid(int(cfg["drop_uid"]))
                _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # after setuid, which clears it
                os.execve(argv[0], argv, env)
            except BaseException as exc:
                try:
                    os.write(2, f"rewardhub sandbox: cannot start worker: {exc}\n".encode())
                finally:
                    os._exit(127)
        os.close(r_in)
        os.close(w_out)
        os.set_blocking(w_in, False)
        os.set_blocking(r_out, False)
        slot.pid, slot.stdin, slot.stdout = pid, w_in, r_out
        slot.cgroups = [path for _ctrl, path in cgroups]
        slot.inbuf = slot.outbuf = b""
        slot.state = "starting"
        slot.started_at = time.monotonic()
        slot.hello = None

    def kill_slot(self, slot):
        if slot.pid is not None:
            self.unreaped_workers.add(slot.pid)
            with contextlib.suppress(OSError):
                os.killpg(slot.pid, signal.SIGKILL)
            with contextlib.suppress(OSError):
                os.kill(slot.pid, signal.SIGKILL)
        for fd in (slot.stdin, slot.stdout):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        slot.stdin = slot.stdout = None
        slot.state = "dead"
        slot.pid = None
        self.cgroups_to_remove.update(slot.cgroups)
        slot.cgroups = []

    def slot_failed(self, slot, reason, result=None):
        """The worker died or hung: report its job (if any), and replace it."""
        job = slot.job
        was_starting = slot.state == "starting"
        self.kill_slot(slot)
        slot.job = None
        if job is not None:
            self.emit(result or {"id": job["id"], "worker_lost": reason})
        if was_starting:
            self.spawn_failures += 1
            self.next_spawn_at = time.monotonic() + min(0.05 * 2 ** self.spawn_failures, 2.0)
            if not self.ready_sent and self.spawn_failures >= 3:
                self.emit({"op": "ready", "ok": False, "error": reason, "workers": []})
                self.ready_sent = True
                self.host_eof = True
        self.restarts += 1

    # -- I/O --------------------------------------------------------------------------------------------------
    def emit(self, obj):
        self.out += (json.dumps(obj) + "\n").encode()

    def reap(self):
        for path in list(self.cgroups_to_remove):
            self.remove_cgroup(path)
        while True:
            try:
                pid, _status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            for slot in self.slots:
                if slot.pid == pid:
                    # Its stdout EOF usually tells us first; if not, handle the death here.
                    if slot.state == "busy":
                        self.slot_failed(slot, "worker process died")
                    else:
                        self.kill_slot(slot)
                        self.restarts += 1
                    break
            else:
                if pid in self.unreaped_workers:
                    self.unreaped_workers.discard(pid)
                else:
                    self.reaped_orphans += 1

    def handle_host_line(self, line):
        msg = json.loads(line)
        if msg.get("op") == "stats":
            self.emit({
                "op": "stats",
                "reaped_orphans": self.reaped_orphans,
                "restarts": self.restarts,
                "worker_pids": [s.pid for s in self.slots if s.pid is not None],
                "queued": len(self.queue) - self.qhead,
            })
        else:
            self.queue.append(msg)

    def handle_worker_line(self, slot, line):
        msg = json.loads(line)
        if slot.state == "starting":
            slot.hello = msg
            slot.state = "idle"
            self.spawn_failures = 0
            if not self.ready_sent and all(s.state == "idle" for s in self.slots):
                self.emit({"op": "ready", "ok": True, "workers": [s.hello for s in self.slots]})
                self.ready_sent = True
            return
        if slot.job is not None and msg.get("id") == slot.job["id"]:
            slot.job = None
            slot.state = "idle"
            self.emit(msg)

    def dispatch(self):
        for slot in self.slots:
            if self.qhead >= len(self.queue):
                break
            if slot.state != "idle":
                continue
            job = self.queue[self.qhead]
            self.queue[self.qhead] = None
            self.qhead += 1
            slot.job = job
            slot.state = "busy"
            slot.deadline = time.monotonic() + float(self.cfg["timeout_s"]) + self.grace
            slot.outbuf += (json.dumps(job) + "\n").encode()
        if self.qhead > 1024 and self.qhead * 2 > len(self.queue):
            self.queue = self.queue[self.qhead:]
            self.qhead = 0

    def run(self):
        for fd in (0, 1):
            os.set_blocking(fd, False)
        for slot in self.slots:
            self.spawn(slot)
        while True:
            now = time.monotonic()
            if self.host_eof:  # the host closed our stdin (close() or it died): stop everything now
                break
            for slot in self.slots:
                if slot.state == "dead" and not self.host_eof and now >= self.next_spawn_at:
                    self.spawn(slot)
                elif slot.state == "starting" and now - slot.started_at > self.handshake_s:
                    self.slot_failed(slot, "worker did not start in time")
                elif slot.state == "busy" and now > slot.deadline:
                    self.slot_failed(slot, "worker missed its deadline", {"id": slot.job["id"],
                                                                          "worker_lost": "deadline"})
            self.dispatch()
            rlist = [] if self.host_eof else [0]
            wlist = [1] if self.out else []
            timeout = 0.25
            for slot in self.slots:
                if slot.stdout is not None:
                    rlist.append(slot.stdout)
                if slot.outbuf and slot.stdin is not None:
                    wlist.append(slot.stdin)
                if slot.state == "busy":
                    timeout = min(timeout, max(slot.deadline - now, 0.0) + 0.001)
            try:
                readable, writable, _ = select.select(rlist, wlist, [], timeout)
            except InterruptedError:
                continue
            if 1 in writable:
                try:
                    n = os.write(1, self.out[:1 << 20])
                    self.out = self.out[n:]
                except BlockingIOError:
                    pass
                except BrokenPipeError:
                    return
            if 0 in readable:
                try:
                    data = os.read(0, 1 << 20)
                except BlockingIOError:
                    data = None
                if data == b"":
                    self.host_eof = True
                elif data:
                    self.host_in += data
                    *lines, self.host_in = self.host_in.split(b"\n")
                    for line in lines:
                        if line.strip():
                            self.handle_host_line(line)
            for slot in self.slots:
                if slot.stdin is not None and slot.stdin in writable and slot.outbuf:
                    try:
                        n = os.write(slot.stdin, slot.outbuf)
                        slot.outbuf = slot.outbuf[n:]
                    except BlockingIOError:
                        pass
                    except OSError:
                        self.slot_failed(slot, "worker pipe closed")
                        continue
                if slot.stdout is not None and slot.stdout in readable:
                    try:
                        data = os.read(slot.stdout, 1 << 20)
                    except BlockingIOError:
                        continue
                    except OSError:
                        data = b""
                    if not data:
                        self.slot_failed(slot, "worker exited")
                        continue
                    slot.inbuf += data
                    *lines, slot.inbuf = slot.inbuf.split(b"\n")
                    for line in lines:
                        if line.strip():
                            self.handle_worker_line(slot, line)
            self.reap()
        self.shutdown()

    def shutdown(self):
        for slot in self.slots:
            self.kill_slot(slot)
        deadline = time.monotonic() + 5.0
        children = True
        while time.monotonic() < deadline and (children or self.cgroups_to_remove):
            for path in list(self.cgroups_to_remove):
                self.remove_cgroup(path)
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                children = False
                pid = 0
            if pid == 0:
                time.sleep(0.005)
        if self.out:
            os.set_blocking(1, True)
            with contextlib.suppress(OSError):
                _write_all(1, self.out)


def supervisor_main(cfg):
    # No PR_SET_PDEATHSIG here: it fires when the *thread* that started us exits, and the trainer may create
    # the sandbox from a short-lived thread. The host's death closes our stdin instead, and EOF shuts us down.
    try:
        _prctl(PR_SET_CHILD_SUBREAPER, 1)
    except OSError as exc:
        os.write(2, f"rewardhub sandbox: PR_SET_CHILD_SUBREAPER failed: {exc}\n".encode())
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    Supervisor(cfg).run()


def main(argv):
    role, cfg = argv[1], json.loads(argv[2])
    if role == "worker":
        worker_main(cfg)
    elif role == "supervisor":
        supervisor_main(cfg)
    else:
        raise SystemExit(f"unknown role {role!r}")


if __name__ == "__main__":
    main(sys.argv)
