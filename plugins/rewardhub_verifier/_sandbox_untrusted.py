"""The solution's process: the only process that runs model-written code, and it decides nothing.

It is forked by the zygote (:mod:`rewardhub_verifier._sandbox_zygote`), which never held a test, an expected
output or another sample's code, so none of those is in its memory. It gets its own pid, mount and IPC
namespaces (pid 1 of its namespace: everything it starts dies with it), a fresh size-capped tmpfs on ``/tmp``
and ``/dev/shm`` and a fresh ``/proc`` (it sees only its own processes), then drops every capability, sets
no_new_privs and its limits, and only then reads the code from its code pipe.

Descriptors: 0 stdin, 1 stdout, 2 stderr (both captured by the worker), 3 the code (read to EOF), 4 requests
in, 5 answers out. Modes:

* ``serve`` (assert / HumanEval / call-based tests): run the code as ``__main__``, send a hello with the names
  of its top-level callables, imported modules and simple data values, then answer call requests from the
  test process (:mod:`rewardhub_verifier._sandbox_trusted`) with encoded values or exceptions
  (:mod:`rewardhub_verifier._sandbox_codec`). The code can rewrite anything in this process, this loop
  included: it can only change the *data* it sends, and the test process decides what that data is worth.
* ``run`` (stdin/stdout tests): run the program on its stdin; the worker compares the output.
* ``program`` (program-of-thought): run the program, then send ``str(solution())`` if it defines one.
"""

import _signal
import contextlib
import linecache
import os
import resource
import sys
import types

if __name__ != "__main__":  # imported on the host; when shipped, all parts share one namespace
    from rewardhub_verifier._sandbox_codec import CrossingError, decode, dumps, encode, loads
    from rewardhub_verifier._sandbox_sys import (
        _MAXFD,
        CLONE_NEWIPC,
        CLONE_NEWNS,
        EXIT_SETUP_FAILED,
        MS_NODEV,
        MS_NOSUID,
        _drop_capabilities,
        _mount,
        _unshare,
        _write_all,
    )

_os_exit = os._exit
#: the solution's whole environment (HOME and TMPDIR: its private /tmp)
SOLUTION_ENV = {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "TMPDIR": "/tmp", "LANG": "C.UTF-8",
                "PYTHONDONTWRITEBYTECODE": "1"}
_MAX_VALUE_BYTES = 1 << 20
_ENV_READY = False  # os.environ is SOLUTION_ENV already (set once by the zygote: solution_environment())
_STREAMS = None  # mode -> (sys.stdin, sys.stdout, sys.stderr) for fds 0-2, made once by the zygote (prepare_streams())


def solution_environment():
    """Make this process's environment the solution's (the zygote, once, with namespaces: /tmp is private)."""
    global _ENV_READY
    os.environ.clear()
    os.environ.update(SOLUTION_ENV)
    _ENV_READY = True


def _open_streams():
    return (open(0, closefd=False), open(1, "w", closefd=False),
            open(2, "w", buffering=1, closefd=False))


def prepare_streams():
    """Make the solution's ``sys.stdin``/``stdout``/``stderr`` once, in the zygote, for every solution process.

    They are what each solution process would make with ``open(0)``, ``open(1, "w")`` and ``open(2, "w",
    buffering=1)`` (by number, ``closefd=False``), made while fds 0-2 are what they are in a solution process
    (a pipe; stdin of a ``serve`` process: /dev/null), so that they record the same (seekable or not); the
    zygote's own fds 0-2 are put back afterwards. Made in each solution process, they cost it 70 copy-on-write
    page faults (codec lookup, three layers of io objects); here they are made once, never used by the zygote,
    and each solution process gets them as they were made: empty buffers, nothing read or written.
    """
    global _STREAMS
    saved, made = [], {}
    try:
        saved = [os.dup(fd) for fd in (0, 1, 2)]
        r, w = os.pipe()
        null = os.open("/dev/null", os.O_RDONLY)
        try:
            os.dup2(r, 0)
            os.dup2(w, 1)
            os.dup2(w, 2)
            made["pipe"] = _open_streams()
            os.dup2(null, 0)
            made["serve"] = (open(0, closefd=False), *made["pipe"][1:])  # noqa: SIM115
        finally:
            for fd in (r, w, null):
                os.close(fd)
    except OSError:
        made = {}
    finally:
        for fd, old in zip((0, 1, 2), saved):
            os.dup2(old, fd)
            os.close(old)
    if len(made) == 2 and len(saved) == 3:
        _STREAMS = made


def _set_limits(cfg):
    limits = [
        (resource.RLIMIT_AS, int(cfg["memory_mb"]) * 1024 * 1024),
        (resource.RLIMIT_CPU, int(cfg["cpu_s"])),
        (resource.RLIMIT_FSIZE, int(cfg["fsize_mb"]) * 1024 * 1024),
        (resource.RLIMIT_NOFILE, int(cfg["nofile"])),
        (resource.RLIMIT_CORE, 0),
        (resource.RLIMIT_NPROC, int(cfg["nproc"])),
    ]
    for what, value in limits:
        hard = value + 1 if what == resource.RLIMIT_CPU else value
        resource.setrlimit(what, (value, hard))


def _private_filesystems(cfg):
    """Own mount and IPC namespaces: fresh /tmp, /dev/shm (size-capped tmpfs) and /proc for this sample only."""
    _unshare(CLONE_NEWNS | CLONE_NEWIPC)
    opts = f"size={int(cfg['fsize_mb'])}m,nr_inodes=4096,mode=1777"
    _mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, opts)
    _mount("tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, opts)
    _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV)


def untrusted_main(cfg, mode, tmpdir):
    """Runs in the zygote's child, descriptors already in place (0-5). Never returns."""
    try:
        os.closerange(6, _MAXFD)
        # The zygote ignores it; a solution expects the default. (_signal: signal.signal converts to enums.)
        _signal.signal(_signal.SIGPIPE, _signal.SIG_DFL)
        # Its own session and process group: kill(0, ...) would otherwise reach the worker's group, the
        # zygote and the test process included (process groups span pid namespaces).
        os.setsid()
        if cfg.get("namespaces"):
            _private_filesystems(cfg)
            tmpdir = "/tmp"
        # (oom_score_adj 1000, so that the kernel picks us and not the worker if the memory cgroup runs out,
        # is inherited from the zygote.)
        if cfg.get("namespaces"):
            _drop_capabilities()
        os.chdir(tmpdir)
        os.umask(0o077)
        if not (_ENV_READY and tmpdir == "/tmp"):  # (the zygote has set it already, with namespaces)
            os.environ.clear()
            os.environ.update(SOLUTION_ENV, HOME=tmpdir, TMPDIR=tmpdir)
        _set_limits(cfg)
        chunks = []
        while True:
            data = os.read(3, 1 << 16)
            if not data:
                break
            chunks.append(data)
        os.close(3)
        code = b"".join(chunks).decode("utf-8", "replace")
        del chunks
        streams = _STREAMS and _STREAMS["serve" if mode == "serve" else "pipe"]
        sys.stdin, sys.stdout, sys.stderr = streams or _open_streams()
        del streams
        sys.argv = ["solution.py"]
    except BaseException as exc:
        with contextlib.suppress(BaseException):
            os.write(2, f"sandbox setup failed: {type(exc).__name__}: {exc}\n".encode())
        _os_exit(EXIT_SETUP_FAILED)
    if mode == "serve":
        _serve(code)
    elif mode == "program":
        _program(code)
    else:
        _run(code)


def _exec_main(code):
    """Run ``code`` as ``__main__``; returns (namespace, exception or None, exit code if it raised SystemExit)."""
    module = types.ModuleType("__main__")
    ns = module.__dict__
    ns["__builtins__"] = __builtins__ if isinstance(__builtins__, dict) else __builtins__.__dict__
    sys.modules["__main__"] = module
    linecache.cache["<solution>"] = (len(code), None, code.splitlines(True), "<solution>")
    try:
        exec(compile(code, "<solution>", "exec"), ns)
    except SystemExit as exc:
        return ns, exc, exc.code
    except BaseException as exc:
        return ns, exc, None
    return ns, None, None


def _print_exception(exc):
    import traceback

    with contextlib.suppress(BaseException):
        tb = exc.__traceback__
        text = "".join(traceback.format_exception(type(exc), exc, tb.tb_next if tb else None))
        sys.stderr.write(text[-4000:])


def _flush():
    for stream in (sys.stdout, sys.stderr):
        try:  # noqa: SIM105 - (contextlib.suppress: two more calls, per call of the tests)
            stream.flush()
        except BaseException:
            pass  # the solution may have replaced or closed its streams


def _request_lines(fd):
    """The test process's requests, one line at a time (the last one may lack its newline); EOF ends it."""
    buf = b""
    while True:
        end = buf.find(b"\n")
        if end < 0:
            chunks, size = [buf], len(buf)
            while end < 0:
                data = os.read(fd, 1 << 16)
                if not data:
                    if size:
                        yield b"".join(chunks)
                    return
                at = data.find(b"\n")
                if at >= 0:
                    end = size + at
                chunks.append(data)
                size += len(data)
            buf = b"".join(chunks)
        line, buf = buf[:end + 1], buf[end + 1:]
        yield line


def _exit_status(exc, code):
    if exc is None:
        return 0
    if isinstance(exc, SystemExit):
        if code is None:
            return 0
        return code if isinstance(code, int) else 1
    _print_exception(exc)
    return 1


def _run(code):
    _ns, exc, code_ = _exec_main(code)
    status = _exit_status(exc, code_)
    _flush()
    _os_exit(status & 0xFF)


def _program(code):
    ns, exc, code_ = _exec_main(code)
    status = _exit_status(exc, code_)
    answer = None
    if status == 0 and callable(ns.get("solution")):
        try:
            answer = {"value": str(ns["solution"]())[:10000]}
        except BaseException as e:
            _print_exception(e)
            status = 1
    _flush()
    if status == 0:
        with contextlib.suppress(BaseException):
            _write_all(5, (dumps(answer or {"done": True}) + "\n").encode())
    _os_exit(status & 0xFF)


def _exc_payload(exc):
    return {"exc": [type(exc).__name__[:100], str(exc)[:2000]]}


def _hello(ns, exc):
    callables, modules, values = [], {}, {}
    budget = _MAX_VALUE_BYTES
    for name, value in list(ns.items()):
        if name.startswith("__") or not isinstance(name, str):
            continue
        if isinstance(value, types.ModuleType):
            modules[name] = str(getattr(value, "__name__", name))
        elif callable(value):
            callables.append(name)
        else:
            try:
                enc = encode(value)
                size = len(dumps(enc))
            except (CrossingError, ValueError, TypeError, RecursionError):
                continue
            if size <= budget:
                budget -= size
                values[name] = enc
    hello = {"callables": callables, "modules": modules, "values": values}
    if exc is not None:  # sys.exit() too: a solution that stops before the tests passes none of them
        hello["error"] = _exc_payload(exc)["exc"]
    return hello


def _resolve(ns, name):
    """``f`` or ``Cls().method`` (a fresh instance per call: LeetCode/LiveCodeBench's ``Solution``)."""
    if "()." in name:
        cls_name, method = name.split("().", 1)
        return getattr(ns[cls_name](), method)
    return ns[name]


def _serve(code):
    ns, exc, _code = _exec_main(code)
    if exc is not None:
        # No test will run: say why and stop (dropping what the code allocated, e.g. after a MemoryError).
        if not isinstance(exc, SystemExit):
            _print_exception(exc)
        error = _exc_payload(exc)["exc"]
        ns.clear()
        del exc
        _flush()
        _write_all(5, (dumps({"hello": {"error": error}}) + "\n").encode())
        _os_exit(0)
    _flush()
    _write_all(5, (dumps({"hello": _hello(ns, None)}) + "\n").encode())
    for line in _request_lines(4):
        try:
            req = loads(line)
            fn = _resolve(ns, req["call"])
            args = decode(req.get("args", ["l", []]))
            kwargs = decode(req.get("kwargs", ["d", []]))
        except BaseException as e:
            reply = {"exc": ["NameError" if isinstance(e, KeyError) else type(e).__name__, str(e)[:2000]]}
        else:
            try:
                result = fn(*args, **kwargs)
            except BaseException as e:
                reply = _exc_payload(e)
            else:
                try:
                    reply = {"ok": encode(result, "return value")}
                except (CrossingError, RecursionError) as e:
                    reply = {"cross": str(e)}
        _flush()
        try:
            data = dumps(reply)
        except (ValueError, TypeError, RecursionError) as e:
            data = dumps({"cross": f"return value cannot be serialised: {e}"})
        _write_all(5, (data + "\n").encode())
    _flush()
    _os_exit(0)
