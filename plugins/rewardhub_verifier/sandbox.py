"""Sandboxed execution of generated Python code against tests (the code verifier's engine).

Security model (see ``_sandbox_worker.py`` for the process tree):

* A **supervisor** process (a child of the trainer) is a subreaper with a ``waitpid`` loop; it owns a pool of
  warm **workers**, replaces any that die or hang, retries the sample a lost worker was running once on a
  fresh one, and enforces a deadline per sample on top of the worker's own limits.
* Each **worker** is one long-lived interpreter inside one long-lived bubblewrap sandbox started as uid 65534
  (read-only ``/``, secrets dirs hidden, own user, pid, net, ipc and uts namespaces), non-dumpable, holding
  only CAP_SYS_ADMIN *inside* that user namespace, to create each sample's namespaces.
* The **solution's process** (model-written code) starts from a zygote whose memory never held a test, in its
  own pid, mount and IPC namespaces with a fresh size-capped ``/tmp``, ``/dev/shm`` and ``/proc``, with no
  capability left, no_new_privs, rlimits and a scrubbed environment. It decides nothing.
* The **verdict** is made out of its reach: asserts, HumanEval ``check`` and call-based tests run in a
  separate **test process** (own pid namespace, non-dumpable, no capabilities) that calls the solution's
  functions through a data-only channel (:mod:`rewardhub_verifier._sandbox_codec`: exact builtin values in
  and out, exceptions as type name and message); stdin/stdout tests are compared by the worker; a
  program-of-thought answer is compared with the gold answer on the host.
* **Fail closed:** without bubblewrap, or when it cannot create the namespaces, :class:`CodeSandbox` raises
  :class:`SandboxUnavailable` saying how to install it. ``backend="unsafe-local"`` runs code anyway, with
  rlimits, a uid drop and (as root) a network namespace only, and says so on every start.
"""

from __future__ import annotations

import glob
import json
import logging
import math
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rewardhub.rewards import Status
from rewardhub_verifier.sandbox_host import _cgroup_v1_roots, _interpreter_for

logger = logging.getLogger(__name__)

__all__ = ["BACKENDS", "CodeResult", "CodeSandbox", "SandboxUnavailable", "extract_code"]

#: ``auto``/``bwrap``: bubblewrap or refuse; ``unsafe-local``: no bubblewrap, lower isolation, said on each start
BACKENDS = ("auto", "bwrap", "unsafe-local")
INSTALL_HINT = ("install bubblewrap (Debian/Ubuntu: apt-get install bubblewrap; Fedora: dnf install bubblewrap) "
                "and make sure user namespaces are enabled")
WHY_BWRAP = ("the code verifier runs model-written code, and without bubblewrap's namespaces a sample can reach "
             "the host's files, /tmp, unix sockets and other samples")

#: the supervisor/worker script, in dependency order: shipped as the concatenation of these files' source text
_WORKER_SOURCE_PARTS = (
    "_sandbox_sys.py",
    "_sandbox_codec.py",
    "_sandbox_untrusted.py",
    "_sandbox_trusted.py",
    "_sandbox_zygote.py",
    "_sandbox_worker_loop.py",
    "_sandbox_supervisor.py",
    "_sandbox_worker.py",
)
#: the zygote's own, smaller script (see ``zygote_exec_main``): what a solution process needs, nothing more
_ZYGOTE_SOURCE_PARTS = (
    "_sandbox_sys.py",
    "_sandbox_codec.py",
    "_sandbox_untrusted.py",
    "_sandbox_zygote.py",
)
NOBODY = 65534
_SIGNAL_TIMEOUT = {signal.SIGXCPU}
_MEMORY_HINTS = ("MemoryError", "Cannot allocate memory", "out of memory", "std::bad_alloc")
_DEFAULT_HIDDEN = ("/root", "/home", "/run", "/var/tmp", "/mnt", "/media", "/srv")


class SandboxUnavailable(RuntimeError):
    """The isolation the code verifier requires cannot be had here; the message says what to install."""


@dataclass(frozen=True)
class CodeResult:
    """Outcome of running one completion's code against its tests.

    ``status`` is ``ok`` (all tests passed), ``wrong`` (anything the code did wrong: failed asserts,
    exceptions, memory, killed, no code), ``no_answer`` (no code found), ``timeout`` (the wall-clock or
    CPU limit was hit), or ``error`` (*only* a failure of the sandbox itself; such a sample should be masked).
    ``reason`` refines it: ``passed``, ``wrong``, ``timeout``, ``memory``, ``error`` (an exception in the
    solution/tests, or with ``status=error`` a sandbox failure), ``killed``, ``no_code``, and with
    ``status=error`` ``unsupported`` (the row's tests need what cannot cross the sandbox boundary) or
    ``bad_tests`` (the tests could not be read). ``answer`` is a program's answer (program-of-thought runs).
    """

    passed: int
    total: int
    status: Status
    reason: str
    detail: str = ""
    stdout: str = ""
    output_truncated: bool = False
    elapsed_s: float = 0.0
    answer: str | None = None

    @property
    def fraction(self) -> float:
        """Partial credit: passed / total (0.0 when there is no test)."""
        return self.passed / self.total if self.total else 0.0


# ------------------------------------------------------------------------------------------------------------
# code extraction
# ------------------------------------------------------------------------------------------------------------

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+.-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)
_PY_TAGS = {"python", "py", "python3", "py3"}


def extract_code(text: str) -> str:
    """The code of a completion: the last ```python block, else the last ``` block, else the bare text.

    An unterminated last fence (a truncated generation) counts as a block running to the end of the text.
    """
    blocks = [(m.group(1).lower(), m.group(2)) for m in _FENCE.finditer(text)]
    for tag, body in reversed(blocks):
        if tag in _PY_TAGS:
            return body
    if blocks:
        return blocks[-1][1]
    return text


# ------------------------------------------------------------------------------------------------------------
# launch planning
# ------------------------------------------------------------------------------------------------------------


def _worker_source(parts: Sequence[str] = _WORKER_SOURCE_PARTS) -> str:
    """Source text of the supervisor/worker script (see ``_sandbox_worker.py``): its parts, concatenated."""
    here = Path(__file__).parent
    return "\n\n".join(here.joinpath(name).read_text() for name in parts)


@dataclass
class _Plan:
    name: str  # bwrap | unshare | plain
    sup_cfg: dict[str, Any]
    uid_label: str
    tmp_root_host: str | None  # host dir for sample temp dirs (non-bwrap backends), removed on close
    notes: list[str]


# ------------------------------------------------------------------------------------------------------------
# the sandbox
# ------------------------------------------------------------------------------------------------------------


class CodeSandbox:
    """A pool of sandboxed Python workers that run (code, tests) samples.

    Args:
        workers: worker processes (one sample each at a time); ~ the number of cores to use.
        timeout_s: wall-clock limit per sample (solution + all its tests).
        memory_mb: address-space limit per sample (RLIMIT_AS).
        max_output_bytes: cap on the captured stdout and on stderr, each.
        max_processes: RLIMIT_NPROC per sample (enforced only when running as an unprivileged uid).
        disk_mb: RLIMIT_FSIZE per file, and the size of the private /tmp of a bubblewrap worker.
        max_open_files: RLIMIT_NOFILE per sample.
        backend: ``"auto"`` or ``"bwrap"``: bubblewrap with per-sample namespaces, else
            :class:`SandboxUnavailable` (fail closed). ``"unsafe-local"``: no bubblewrap; rlimits, a uid drop
            and (as root) a network namespace only; the host's /tmp, /dev/shm and unix sockets stay reachable,
            samples share a pid namespace. Announced with a warning on every start.
        hide_paths: extra host paths hidden (empty tmpfs) inside a bubblewrap worker; by default /root,
            /home, /run, /var/tmp, /mnt, /media, /srv and the current working directory are hidden.
        sandbox_uid: the unprivileged uid/gid workers run as when the host is root.
    """

    def __init__(
        self,
        workers: int = 2,
        timeout_s: float = 5.0,
        memory_mb: int = 512,
        max_output_bytes: int = 64_000,
        *,
        max_processes: int = 64,
        disk_mb: int = 64,
        max_open_files: int = 128,
        backend: str = "auto",
        hide_paths: Sequence[str] = (),
        sandbox_uid: int = NOBODY,
    ) -> None:
        if workers < 1:
            raise ValueError("workers must be >= 1")
        if backend not in BACKENDS:
            raise ValueError(f"unknown sandbox backend {backend!r}; choose one of {', '.join(BACKENDS)}")
        self.workers = int(workers)
        self.timeout_s = float(timeout_s)
        self.memory_mb = int(memory_mb)
        self.max_output_bytes = int(max_output_bytes)
        self.max_processes = int(max_processes)
        self.disk_mb = int(disk_mb)
        self.max_open_files = int(max_open_files)
        self.backend = backend
        self.hide_paths = tuple(hide_paths)
        self.sandbox_uid = int(sandbox_uid)
        self._lock = threading.RLock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._buf = b""
        self._next_id = 0
        self._plan: _Plan | None = None
        self._isolation = ""
        self._facts: dict[str, Any] = {}
        self._tmp_roots: list[str] = []
        self._cgroup_dirs: list[str] = []  # path prefixes of the per-worker cgroups (removed on close)
        self._closed = False
        self._worker_source = _worker_source()
        self._zygote_source = _worker_source(_ZYGOTE_SOURCE_PARTS)
        self._start()

    # -- public -----------------------------------------------------------------------------------------------
    @property
    def isolation(self) -> str:
        """What is in force, e.g. ``bwrap+netns+pidns+uid65534+rlimits`` or ``rlimits only``."""
        return self._isolation

    @property
    def isolation_facts(self) -> dict[str, Any]:
        """Measured facts behind :attr:`isolation` (backend, netns, pidns, uid, private_fs, python, ...)."""
        return dict(self._facts)

    @property
    def supervisor_pid(self) -> int | None:
        """Host pid of the supervisor process (every sandbox process descends from it)."""
        return self._proc.pid if self._proc is not None else None

    def run(self, code: str, tests: Any, **spec: Any) -> CodeResult:
        """Run one completion against its tests (any format of :func:`~rewardhub_verifier.code_formats.parse_tests`;
        ``entry_point``, ``fn_name``, ``setup`` and ``time_limit_s`` are passed on)."""
        return self.run_many([(code, tests, spec)])[0]

    def run_many(self, items: Sequence[tuple[Any, ...]]) -> list[CodeResult]:
        """Run every ``(completion, tests)`` or ``(completion, tests, spec)``; results in the input order."""
        jobs = []
        for item in items:
            completion, tests = item[0], item[1]
            spec = dict(item[2]) if len(item) > 2 and item[2] else {}
            jobs.append(self._job(completion, tests, spec))
        return self._run_jobs(jobs)

    def run_program(self, completion: str, timeout_s: float | None = None) -> CodeResult:
        """Run a program-of-thought completion; ``answer`` is ``str(solution())`` or its last printed line."""
        return self.run_programs([completion], timeout_s)[0]

    def run_programs(self, completions: Sequence[str], timeout_s: float | None = None) -> list[CodeResult]:
        """:meth:`run_program` for many completions, in parallel over the workers."""
        jobs = []
        for completion in completions:
            code = extract_code(completion or "")
            if not code.strip():
                jobs.append(CodeResult(0, 1, Status.NO_ANSWER, "no_code", "no code found in the completion"))
            else:
                jobs.append({"kind": "program", "code": code, "timeout_s": float(timeout_s or self.timeout_s),
                             "budget_s": float(timeout_s or self.timeout_s), "total": 1})
        return self._run_jobs(jobs)

    def _job(self, completion: str, tests: Any, spec: dict[str, Any]) -> dict[str, Any] | CodeResult:
        from rewardhub_verifier.code_formats import parse_tests

        try:
            parsed = parse_tests(tests, entry_point=spec.get("entry_point"), fn_name=spec.get("fn_name"),
                                 setup=spec.get("setup"))
        except (ValueError, TypeError) as exc:
            return CodeResult(0, 0, Status.ERROR, "bad_tests", f"the row's tests cannot be read: {exc}")
        code = extract_code(completion or "")
        if not code.strip():
            return CodeResult(0, parsed.total, Status.NO_ANSWER, "no_code", "no code found in the completion")
        limit = float(spec.get("time_limit_s") or self.timeout_s)
        job: dict[str, Any] = {"code": code, "total": parsed.total, "timeout_s": limit, "budget_s": limit}
        if parsed.kind == "io":
            job.update(kind="io", cases=[list(c) for c in parsed.cases], budget_s=limit * len(parsed.cases) + 1,
                       compare=spec.get("compare", "lines"), float_tol=float(spec.get("float_tol", 0.0)))
        elif parsed.kind == "fncall":
            job.update(kind="call", tests_kind="fncall", fn_name=parsed.fn_name,
                       cases=[list(c) for c in parsed.cases])
        else:
            job.update(kind="call", tests_kind=parsed.kind, tests=list(parsed.tests), setup=parsed.setup,
                       entry_point=parsed.entry_point)
        return job

    def _run_jobs(self, jobs: Sequence[dict[str, Any] | CodeResult]) -> list[CodeResult]:
        with self._lock:
            if self._closed:
                raise RuntimeError("CodeSandbox is closed")
            results: list[CodeResult | None] = [None] * len(jobs)
            pending: dict[int, tuple[int, int]] = {}
            lines = []
            for index, job in enumerate(jobs):
                if isinstance(job, CodeResult):
                    results[index] = job
                    continue
                job_id = self._next_id
                self._next_id += 1
                pending[job_id] = (index, int(job["total"]))
                lines.append(json.dumps(dict(job, id=job_id, max_output_bytes=self.max_output_bytes)))
            if pending:
                self._exchange(lines, pending, results)
            return [r for r in results if r is not None]

    def stats(self) -> dict[str, Any]:
        """Supervisor counters: reaped_orphans, restarts, worker_pids (host pids), queued."""
        with self._lock:
            self._ensure_running()
            self._send(b'{"op": "stats"}\n')
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                for msg in self._recv(deadline - time.monotonic()):
                    if msg.get("op") == "stats":
                        return msg
            raise RuntimeError("sandbox supervisor did not answer")

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._stop_supervisor()
            for root in self._tmp_roots:
                shutil.rmtree(root, ignore_errors=True)
            self._tmp_roots.clear()
            for prefix in self._cgroup_dirs:  # normally already removed by the supervisor
                parent, name = os.path.split(prefix)
                for leftover in glob.glob(os.path.join(glob.escape(parent), glob.escape(name) + "_w*")):
                    try:
                        os.rmdir(leftover)
                    except OSError:
                        logger.warning("rewardhub code sandbox: could not remove cgroup %s", leftover)

    def __enter__(self) -> CodeSandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:  # best effort; close() is the contract
        try:
            if not self._closed and self._proc is not None:
                self._proc.kill()
                self._proc.wait(timeout=1)
        except Exception:
            pass

    # -- planning and start-up --------------------------------------------------------------------------------
    def _candidates(self) -> list[tuple[str, str, tuple[str, str] | None, bool]]:
        """(backend, why it is impossible or "", interpreter, drop uid) for each backend to try, best first."""
        names = ["unshare", "plain"] if self.backend == "unsafe-local" else ["bwrap"]
        root = os.geteuid() == 0
        out = []
        for name in names:
            interp = _interpreter_for(drop_uid=root)
            drop = root
            if interp is None and root and name == "plain":
                interp = _interpreter_for(drop_uid=False)
                drop = False
            if interp is None:
                out.append((name, "no Python interpreter reachable by the unprivileged sandbox uid", None, drop))
            elif name == "bwrap" and not shutil.which("bwrap"):
                out.append((name, "bubblewrap (bwrap) is not installed", None, drop))
            else:
                out.append((name, "", interp, drop))
        return out

    def _make_plan(self, name: str, interp: tuple[str, str], drop: bool) -> _Plan:
        exe, prefix = interp
        notes: list[str] = []
        host_pidns = os.readlink("/proc/self/ns/pid")
        worker_cfg: dict[str, Any] = {
            "memory_mb": self.memory_mb,
            "cpu_s": math.ceil(self.timeout_s) + 1,
            "fsize_mb": self.disk_mb,
            "nofile": self.max_open_files,
            "nproc": self.max_processes,
            "timeout_s": self.timeout_s,
            "max_output_bytes": self.max_output_bytes,
            "host_pidns": host_pidns,
            "namespaces": name == "bwrap",
        }
        tmp_root_host = None
        if name == "bwrap":
            worker_cfg.update(tmp_root="/tmp", private_tmp=True)
        else:
            tmp_root_host = tempfile.mkdtemp(prefix="rewardhub_sandbox_")
            self._tmp_roots.append(tmp_root_host)
            if drop:
                os.chown(tmp_root_host, self.sandbox_uid, self.sandbox_uid)
            os.chmod(tmp_root_host, 0o700)
            worker_cfg.update(tmp_root=tmp_root_host, private_tmp=False)
        py_argv = [exe, "-I", "-S", "-B", "-c", self._worker_source, "worker", json.dumps(worker_cfg),
                   self._zygote_source]
        if name == "bwrap":
            # CAP_SYS_ADMIN is granted inside the sandbox's own user namespace only (it means nothing on the
            # host): the worker needs it to give each sample its own pid/mount/IPC namespaces, and every
            # process that runs job code drops it first. /tmp and /dev are read-only for the worker and the
            # test process; each solution process mounts its own fresh /tmp and /dev/shm.
            argv = [shutil.which("bwrap") or "bwrap", "--unshare-all", "--unshare-user", "--disable-userns",
                    "--cap-add", "CAP_SYS_ADMIN", "--die-with-parent", "--new-session", "--ro-bind", "/", "/",
                    "--dev", "/dev", "--proc", "/proc", "--size", "1048576", "--tmpfs", "/tmp",
                    "--remount-ro", "/tmp", "--remount-ro", "/dev"]
            hidden = list(_DEFAULT_HIDDEN) + list(self.hide_paths)
            cwd = os.getcwd()
            if cwd != "/" and not any(cwd == h or cwd.startswith(h + "/") for h in hidden):
                hidden.append(cwd)
            # Under /tmp, /proc or /dev a path is already hidden by that mount's own fresh, read-only tmpfs (and
            # bwrap could not create a mount point there): a checkout under /tmp would fail to start otherwise.
            own_mounts = ("/tmp", "/proc", "/dev")
            hidden = [h for h in (os.path.normpath(h) for h in hidden) if os.path.isdir(h) and h != "/"
                      and not any(h == m or h.startswith(m + "/") for m in own_mounts)]
            for h in hidden:
                argv += ["--tmpfs", h]
            rebind = [p for p in {prefix, os.path.dirname(exe)}
                      if any(p == h or p.startswith(h + "/") for h in hidden)]
            for p in sorted(rebind):
                argv += ["--ro-bind", p, p]
            for h in hidden:
                argv += ["--remount-ro", h]
            argv += ["--hostname", "sandbox", "--chdir", "/tmp", "--", *py_argv]
            notes.append("hidden: " + ", ".join(hidden))
        else:
            argv = py_argv
        sup_cfg: dict[str, Any] = {
            "workers": self.workers,
            "timeout_s": self.timeout_s,
            "grace_s": 3.0,
            "worker_argv": argv,
            "worker_env": {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": "/tmp"},
            "drop_uid": self.sandbox_uid if drop else None,
            "drop_gid": self.sandbox_uid if drop else None,
            "unshare": None,
            "retries": 1,
        }
        if name == "unshare":
            sup_cfg["unshare"] = "net" if os.geteuid() == 0 else "user+net"
        prefix = f"rewardhub_sbx_{os.getpid()}_{os.urandom(3).hex()}"
        roots = _cgroup_v1_roots(prefix)
        if roots:
            sup_cfg.update(cgroups=roots, cgroup_prefix=prefix, cgroup_pids_max=self.max_processes + 16,
                           cgroup_memory_bytes=(self.memory_mb + self.disk_mb + 128) * 1024 * 1024)
            self._cgroup_dirs.extend(os.path.join(r, prefix) for r in roots.values())
        else:
            notes.append("no writable cgroup (v1 memory/pids): memory of several processes is not capped")
        uid_label = f"uid{self.sandbox_uid}" if drop else ("" if os.geteuid() == 0 else f"uid{os.geteuid()}")
        return _Plan(name, sup_cfg, uid_label, tmp_root_host, notes)

    def _start(self) -> None:
        failures: list[str] = []
        for name, impossible, interp, drop in self._candidates():
            if impossible or interp is None:
                failures.append(f"{name}: {impossible}")
                continue
            plan = self._make_plan(name, interp, drop)
            ready = self._launch(plan)
            if ready is None or not ready.get("ok"):
                why = "no answer" if ready is None else ready.get("error", "failed")
                failures.append(f"{name}: workers did not start ({why})")
                self._stop_supervisor()
                continue
            if name == "bwrap" and not all(h.get("namespaces") for h in ready["workers"]):
                failures.append("bwrap: started, but the per-sample namespaces cannot be created in it")
                self._stop_supervisor()
                continue
            self._plan = plan
            self._describe(plan, ready["workers"])
            if plan.name != "bwrap":
                msg = (f"rewardhub code sandbox is UNSAFE-LOCAL (asked for with backend/sandbox=unsafe-local): "
                       f"isolation in force is {self._isolation!r}; no bubblewrap, so samples can reach the "
                       f"host's /tmp, /dev/shm and unix sockets and share a pid namespace"
                       + (f" (unavailable: {'; '.join(failures)})" if failures else ""))
                warnings.warn(msg, RuntimeWarning, stacklevel=3)
                logger.warning(msg)
                print(msg, file=sys.stderr, flush=True)
            else:
                logger.info("rewardhub code sandbox: %s", self._isolation)
            return
        self.close()
        if self.backend == "unsafe-local":
            raise SandboxUnavailable("no sandbox backend could start: " + "; ".join(failures))
        raise SandboxUnavailable(
            f"the code verifier refuses to run code without bubblewrap ({'; '.join(failures)}). Why: {WHY_BWRAP}. "
            f"Fix: {INSTALL_HINT}. To run it anyway at lower isolation, ask for it explicitly: "
            f"--reward-arg sandbox=unsafe-local (CodeSandbox(backend='unsafe-local')).")

    def _describe(self, plan: _Plan, hellos: list[dict[str, Any]]) -> None:
        host_ns = {k: os.readlink(f"/proc/self/ns/{k}") for k in ("net", "pid", "mnt", "user")}
        netns = all(h["ns"]["net"] != host_ns["net"] for h in hellos)
        pidns = all(h["ns"]["pid"] != host_ns["pid"] for h in hellos)
        private_fs = plan.name == "bwrap" and all(h["ns"]["mnt"] != host_ns["mnt"] for h in hellos)
        parts = []
        if plan.name == "bwrap":
            parts.append("bwrap")
        if netns:
            parts.append("netns")
        if pidns:
            parts.append("pidns")
        sample_ns = plan.name == "bwrap" and all(h.get("namespaces") for h in hellos)
        if sample_ns:
            parts.append("sample-ns")  # per sample: own pid/mount/IPC namespaces, fresh /tmp, /dev/shm, /proc
        if plan.uid_label:
            parts.append(plan.uid_label)
        cgroup = bool(plan.sup_cfg.get("cgroups")) and all(h.get("cgroup_oom_file") for h in hellos)
        if cgroup:
            parts.append("cgroup")
        if parts:
            parts.append("rlimits")
            iso = "+".join(parts)
        else:
            iso = "rlimits only"
        caveats = []
        if not netns and parts:
            caveats.append("no network namespace")
        if plan.name != "bwrap" and parts:
            caveats.append("no bubblewrap: filesystem protected only by permissions")
        if not plan.uid_label and os.geteuid() == 0 and "pids" not in plan.sup_cfg.get("cgroups", {}):
            caveats.append("runs as root: fork bombs are NOT contained")
        if caveats:
            iso += f" ({'; '.join(caveats)})"
        if plan.name != "bwrap":
            iso = "unsafe-local: " + iso
        self._isolation = iso
        self._facts = {
            "backend": plan.name,
            "netns": netns,
            "pidns": pidns,
            "private_fs": private_fs,
            "sample_ns": sample_ns,
            "cgroup": cgroup,
            "uid": plan.sup_cfg["drop_uid"] if plan.sup_cfg["drop_uid"] is not None else os.geteuid(),
            "unprivileged": plan.sup_cfg["drop_uid"] is not None or os.geteuid() != 0,
            "python": hellos[0].get("python") if hellos else None,
            "host_tmp_root": plan.tmp_root_host,
            "notes": list(plan.notes),
        }

    def _launch(self, plan: _Plan) -> dict[str, Any] | None:
        # The worker's command line follows as separate arguments: in the config it would exceed the kernel's
        # limit on one argument (MAX_ARG_STRLEN, 128 KiB).
        sup_cfg = dict(plan.sup_cfg)
        worker_argv = sup_cfg.pop("worker_argv")
        argv = [os.path.realpath(sys.executable), "-I", "-S", "-B", "-c", self._worker_source, "supervisor",
                json.dumps(sup_cfg), *worker_argv]
        self._proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=None, close_fds=True,
            start_new_session=True, env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}, cwd="/",
        )
        assert self._proc.stdout is not None and self._proc.stdin is not None
        os.set_blocking(self._proc.stdout.fileno(), False)
        os.set_blocking(self._proc.stdin.fileno(), False)
        self._buf = b""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                msgs = self._recv(deadline - time.monotonic())
            except EOFError:
                return None
            for msg in msgs:
                if msg.get("op") == "ready":
                    return msg
            if self._proc.poll() is not None and not msgs:
                return None
        return None

    def _ensure_running(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            return
        if self._plan is None:
            raise SandboxUnavailable("sandbox is not running")
        logger.warning("rewardhub code sandbox: supervisor died; restarting it")
        self._stop_supervisor()
        ready = self._launch(self._plan)
        if ready is None or not ready.get("ok"):
            self._stop_supervisor()
            raise SandboxUnavailable("sandbox supervisor could not be restarted")

    def _stop_supervisor(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        for stream in (proc.stdin, proc.stdout):
            try:
                if stream is not None:
                    stream.close()
            except OSError:
                pass
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except OSError:
                proc.kill()
            proc.wait()

    # -- I/O with the supervisor ------------------------------------------------------------------------------
    def _send(self, data: bytes) -> None:
        assert self._proc is not None and self._proc.stdin is not None
        fd = self._proc.stdin.fileno()
        view = memoryview(data)
        while view:
            select.select([], [fd], [], 1.0)
            try:
                n = os.write(fd, view)
                view = view[n:]
            except BlockingIOError:
                continue

    def _recv(self, timeout: float) -> list[dict[str, Any]]:
        assert self._proc is not None and self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        ready, _, _ = select.select([fd], [], [], max(timeout, 0.0))
        if not ready:
            return []
        try:
            data = os.read(fd, 1 << 16)  # (a pipe holds 64 KiB; a larger buffer costs an mmap per read)
        except BlockingIOError:
            return []
        if not data:
            raise EOFError("sandbox supervisor closed its output")
        self._buf += data
        *lines, self._buf = self._buf.split(b"\n")
        return [json.loads(line) for line in lines if line.strip()]

    def _exchange(self, lines: list[str], jobs: dict[int, tuple[int, int]],
                  results: list[CodeResult | None]) -> None:
        try:
            self._ensure_running()
        except SandboxUnavailable as exc:
            for index, total in jobs.values():
                results[index] = CodeResult(0, total, Status.ERROR, "error", f"sandbox unavailable: {exc}")
            return
        assert self._proc is not None and self._proc.stdin is not None
        out = ("\n".join(lines) + "\n").encode()
        in_fd = self._proc.stdin.fileno()
        out_fd = self._proc.stdout.fileno() if self._proc.stdout is not None else -1
        pending = dict(jobs)
        # The supervisor answers every job itself (worker deadline = timeout + grace); this is the backstop.
        silence_limit = self.timeout_s + 30.0
        last_progress = time.monotonic()
        failure = ""
        while pending:
            wlist = [in_fd] if out else []
            try:
                readable, writable, _ = select.select([out_fd], wlist, [], 0.5)
            except (OSError, ValueError) as exc:
                failure = f"select failed: {exc}"
                break
            if writable:
                try:
                    n = os.write(in_fd, out[: 1 << 20])
                    out = out[n:]
                except BlockingIOError:
                    pass
                except OSError as exc:
                    failure = f"supervisor pipe broken: {exc}"
                    break
            if readable:
                try:
                    msgs = self._recv(0)
                except EOFError as exc:
                    failure = str(exc)
                    break
                for msg in msgs:
                    job_id = msg.get("id")
                    if job_id in pending:
                        index, total = pending.pop(job_id)
                        results[index] = _to_result(msg, total)
                        last_progress = time.monotonic()
            if time.monotonic() - last_progress > silence_limit:
                failure = f"sandbox supervisor silent for {silence_limit:.0f}s"
                break
        if pending:
            logger.error("rewardhub code sandbox: %s; restarting it", failure)
            self._stop_supervisor()
            for index, total in pending.values():
                results[index] = CodeResult(0, total, Status.ERROR, "error", f"sandbox failure: {failure}")


def _failure_text(failures: list[Any]) -> str:
    lines = []
    for f in failures[:20]:
        index, kind, msg = ([*list(f), "", "", ""])[:3]
        lines.append(f"[test {index}] {kind}: {msg}".rstrip(": ").strip())
    return "\n".join(lines)


def _to_result(msg: dict[str, Any], total: int) -> CodeResult:
    """One worker result line -> :class:`CodeResult`; only the sandbox's own failures become ``error``."""
    if "infra_error" in msg:
        return CodeResult(0, total, Status.ERROR, "error", f"sandbox failure: {msg['infra_error']}")
    if "worker_lost" in msg:
        tries = msg.get("attempts", 1)
        if msg["worker_lost"] == "deadline":
            return CodeResult(0, total, Status.TIMEOUT, "timeout",
                              f"the sample's worker missed its deadline ({tries} attempts)")
        # Lost again on a fresh worker: the same sample did it twice, so it is the sample's doing.
        return CodeResult(0, total, Status.WRONG, "killed",
                          f"worker lost while running, on {tries} fresh workers: {msg['worker_lost']}")
    stderr: str = msg.get("stderr", "")
    extra = dict(stdout=msg.get("stdout", ""), output_truncated=bool(msg.get("truncated")),
                 elapsed_s=float(msg.get("elapsed", 0.0)))
    if msg.get("kind") == "program":
        answer = msg.get("answer")
        if answer is not None:
            return CodeResult(0, 1, Status.OK, "answered", f"answer from {msg.get('answer_source')}",
                              answer=answer, **extra)
        why = ("timeout" if msg.get("timed_out") else "memory" if msg.get("oom") else
               f"exit code {msg.get('exit_code')}" if msg.get("signal") is None else f"signal {msg.get('signal')}")
        return CodeResult(0, 1, Status.NO_ANSWER, "timeout" if msg.get("timed_out") else "no_answer",
                          f"the program gave no answer ({why})\n{stderr[-1500:]}".strip(), **extra)
    passed, total = int(msg["passed"]), int(msg["total"])
    failures = msg.get("failures", [])
    fail_types = [f[1] for f in failures]
    sig = msg.get("signal")
    exit_code = msg.get("exit_code")
    detail = "\n".join(x for x in (_failure_text(failures), stderr[-2000:]) if x)
    if msg.get("unsupported"):
        return CodeResult(passed, total, Status.ERROR, "unsupported",
                          "the row's tests need what cannot cross the sandbox boundary: "
                          + "; ".join(msg["unsupported"][:3]), **extra)
    if passed == total and total:
        return CodeResult(passed, total, Status.OK, "passed", detail, **extra)
    if msg.get("timed_out") or sig in _SIGNAL_TIMEOUT or "Timeout" in fail_types:
        how = "CPU time limit" if sig in _SIGNAL_TIMEOUT else "wall-clock timeout"
        return CodeResult(passed, total, Status.TIMEOUT, "timeout", f"{how}\n{detail}".strip(), **extra)
    if msg.get("oom") or "MemoryError" in fail_types or (sig is not None and any(h in stderr for h in _MEMORY_HINTS)):
        return CodeResult(passed, total, Status.WRONG, "memory", detail or "out of memory", **extra)
    if sig is not None:
        name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)
        return CodeResult(passed, total, Status.WRONG, "killed", f"killed by {name}\n{detail}".strip(), **extra)
    if msg.get("solution_error") or any(t not in ("AssertionError", "WrongAnswer") for t in fail_types):
        return CodeResult(passed, total, Status.WRONG, "error", detail, **extra)
    if not msg.get("done"):
        return CodeResult(passed, total, Status.WRONG, "error",
                          f"the tests did not finish (exit code {exit_code})\n{detail}".strip(), **extra)
    return CodeResult(passed, total, Status.WRONG, "wrong", detail, **extra)
