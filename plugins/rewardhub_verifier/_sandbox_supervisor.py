"""The supervisor of the code sandbox: a subreaper that owns the pool of warm workers.

It starts each worker (in its own cgroups, namespaces and uid as configured), forwards the host's jobs to
idle workers, relays their results, enforces a deadline per job on top of the worker's own timeout, and
replaces any worker that dies, hangs or fails to start. It runs on the host side of the sandbox boundary,
apart from the worker loop (:mod:`rewardhub_verifier._sandbox_worker_loop`). Shipped as source text with the
other ``_sandbox_*`` parts (see :mod:`rewardhub_verifier._sandbox_worker`).
"""

import contextlib
import ctypes
import json
import os
import select
import signal
import time

if __name__ != "__main__":  # imported on the host; when shipped, all parts share one namespace
    from rewardhub_verifier._sandbox_sys import (
        _MAXFD,
        CLONE_NEWNET,
        CLONE_NEWUSER,
        PR_SET_CHILD_SUBREAPER,
        PR_SET_PDEATHSIG,
        _libc_call,
        _prctl,
        _write_all,
        _write_file,
    )


_RAW = " raw"  # a job's line as the host sent it (no job field has this name: it is not an identifier)


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
        self.retried = 0
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
            self.retry_or_emit(job, result or {"id": job["id"], "worker_lost": reason})
        if was_starting:
            self.spawn_failures += 1
            self.next_spawn_at = time.monotonic() + min(0.05 * 2 ** self.spawn_failures, 2.0)
            if not self.ready_sent and self.spawn_failures >= 3:
                self.emit({"op": "ready", "ok": False, "error": reason, "workers": []})
                self.ready_sent = True
                self.host_eof = True
        self.restarts += 1

    def retry_or_emit(self, job, result):
        """A job whose worker was lost (or failed on its own) runs once more on a fresh worker, then counts."""
        if int(job.get("attempt", 0)) < int(self.cfg.get("retries", 1)):
            job["attempt"] = int(job.get("attempt", 0)) + 1
            self.retried += 1
            self.queue.insert(self.qhead, job)
            return
        result["attempts"] = int(job.get("attempt", 0)) + 1
        self.emit(result)

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
                "retried": self.retried,
                "worker_pids": [s.pid for s in self.slots if s.pid is not None],
                "queued": len(self.queue) - self.qhead,
            })
        else:
            msg[_RAW] = line  # forwarded as it came (one encoding less per job), unless it is retried
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
            job, slot.job = slot.job, None
            slot.state = "idle"
            if "infra_error" in msg or "worker_lost" in msg:
                self.retry_or_emit(job, msg)
            else:
                self.out += line + b"\n"  # the line as the worker wrote it (it parses: it is valid JSON)

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
            slot.deadline = time.monotonic() + float(job.get("budget_s", self.cfg["timeout_s"])) + self.grace
            raw = job.pop(_RAW, None)
            slot.outbuf += raw + b"\n" if raw is not None else (json.dumps(job) + "\n").encode()
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
                    data = os.read(0, 1 << 16)
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
                        data = os.read(slot.stdout, 1 << 16)
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
