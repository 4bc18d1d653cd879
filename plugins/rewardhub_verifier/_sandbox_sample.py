"""The sample process of the code sandbox: a fork of a worker that runs one completion against its tests.

It sets the per-sample limits (process group, rlimits, scrubbed environment, own cwd, closed descriptors),
then runs the harness: the solution, then each test in a fresh copy of the builtins, writing a test's nonce
to the private result pipe only after that test ran to its end (the proof of completion). It is the only
code that shares a process with untrusted code, so it is kept apart from the worker loop that forks it.
Shipped as source text with the other ``_sandbox_*`` parts (see :mod:`rewardhub_verifier._sandbox_worker`).
"""

import contextlib
import os
import resource
import signal
import sys
import traceback
import types

if __name__ != "__main__":  # imported on the host; when shipped, all parts share one namespace
    from rewardhub_verifier._sandbox_sys import _MAXFD, EXIT_SETUP_FAILED, PR_SET_PDEATHSIG, _prctl


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
