"""The test process: runs a row's tests and decides each verdict, out of the solution's reach.

Forked by the worker into its own pid namespace (so it can signal nothing outside), without capabilities and
non-dumpable (so the solution's process, same uid, can neither ptrace it nor open its ``/proc/<pid>/mem`` or
``fd``), it shares no memory with the solution: the tests call the solution's functions through proxies
(:class:`RemoteFunction`) that send the arguments as data to the solution's process
(:mod:`rewardhub_verifier._sandbox_untrusted`) and decode the answer into exact builtin values
(:mod:`rewardhub_verifier._sandbox_codec`). Frames, builtins, stdlib modules and objects of the solution's
making stay in the other process; the asserts run here with this interpreter's own, untouched ones.

Test code comes from the dataset, so this process is sandboxed too (limits, no capabilities, its own pid
namespace), but it is the one that writes verdicts to the worker, on a pipe only it holds: one JSON line per
test, then ``{"done": true}``.

Test kinds: ``asserts`` (each string is one test, run in a namespace made of the solution's names), ``check``
(HumanEval: the test code defines ``check(candidate)``, called with the proxy of ``entry_point``) and
``fncall`` (APPS/LiveCodeBench call-based: ``fn(*args) == expected`` per case).
"""

import builtins
import contextlib
import os
import sys

if __name__ != "__main__":  # imported on the host; when shipped, all parts share one namespace
    from rewardhub_verifier._sandbox_codec import CrossingError, decode, dumps, encode, loads
    from rewardhub_verifier._sandbox_sys import _MAXFD, _drop_capabilities, _write_all

_MAX_LINE = 32 * 1024 * 1024


class SandboxBoundaryError(Exception):
    """A value could not cross between the test process and the solution's process."""


class ArgumentCrossingError(SandboxBoundaryError):
    """A test passed the solution something that cannot cross: the row needs what the sandbox cannot give."""


class SolutionUnavailable(SandboxBoundaryError):
    """The solution's process stopped answering (it exited, crashed or broke the channel)."""


class RemoteError(Exception):
    """An exception raised in the solution's process whose type is not a builtin exception."""


_remote_types = {}


def _remote_exception(payload):
    try:
        name, message = payload
        name, message = str(name)[:100], str(message)[:2000]
    except (TypeError, ValueError):
        return RemoteError("malformed exception from the solution")
    cls = builtins.__dict__.get(name)
    if isinstance(cls, type) and issubclass(cls, Exception):
        try:
            return cls(message)
        except Exception:
            pass
    if not name.isidentifier():
        name = "RemoteError"
    cls = _remote_types.get(name)
    if cls is None:
        cls = _remote_types[name] = type(name, (RemoteError,), {"__module__": "solution"})
    return cls(message)


class Channel:
    """Requests to, answers from the solution's process: one JSON line each way, sizes capped."""

    def __init__(self, w_fd, r_fd):
        self.w, self.r = w_fd, r_fd
        self.buf = b""
        self.broken = ""
        self.unsupported = ""
        self.calls = 0

    def read(self):
        """One line; chunks are joined once (a pipe gives 64 KiB per read, and a line may be megabytes)."""
        end = self.buf.find(b"\n")
        chunks, size = [self.buf], len(self.buf)
        while end < 0:
            if size > _MAX_LINE:
                raise CrossingError("message from the solution too large")
            data = os.read(self.r, 1 << 16)  # a pipe holds 64 KiB; a bigger buffer is an mmap per read
            if not data:
                raise EOFError
            at = data.find(b"\n")
            if at >= 0:
                end = size + at
            chunks.append(data)
            size += len(data)
        buf = b"".join(chunks) if len(chunks) > 1 else self.buf
        line, self.buf = buf[:end], buf[end + 1:]
        return loads(line)

    def call(self, name, args, kwargs):
        if self.broken:
            raise SolutionUnavailable(self.broken)
        try:
            msg = {"call": name, "args": encode(list(args), "argument")}
            if kwargs:  # (none: the solution's process reads the default, an empty dict)
                msg["kwargs"] = encode(dict(kwargs), "argument")
            req = dumps(msg)
        except CrossingError as exc:
            self.unsupported = self.unsupported or f"a test passes {name}() {exc}"
            raise ArgumentCrossingError(str(exc)) from None
        self.calls += 1
        try:
            _write_all(self.w, (req + "\n").encode())
            reply = self.read()
        except (OSError, EOFError):
            self.broken = "the solution's process exited or stopped answering"
            raise SolutionUnavailable(self.broken) from None
        except CrossingError as exc:
            self.broken = f"the solution's process sent a malformed answer ({exc})"
            raise SolutionUnavailable(self.broken) from None
        if type(reply) is not dict:
            self.broken = "the solution's process sent a malformed answer"
            raise SolutionUnavailable(self.broken)
        if "ok" in reply:
            try:
                return decode(reply["ok"])
            except CrossingError as exc:
                raise SandboxBoundaryError(f"return value of {name}(): {exc}") from None
        if "exc" in reply:
            raise _remote_exception(reply["exc"])
        raise SandboxBoundaryError(f"{name}(): {str(reply.get('cross', 'malformed answer'))[:500]}")


class RemoteFunction:
    """Stands in for a solution function: calling it calls the real one in the solution's process."""

    __slots__ = ("__name__", "__qualname__", "_channel")

    def __init__(self, channel, name):
        self._channel = channel
        self.__name__ = self.__qualname__ = name

    def __call__(self, *args, **kwargs):
        return self._channel.call(self.__name__, args, kwargs)

    def __repr__(self):
        return f"<solution function {self.__name__}>"


def _namespace(channel, hello, pristine, allowed=()):
    """The tests' globals: the solution's names as proxies, stdlib modules and data values.

    A solution name that would shadow a builtin (a top-level ``def sorted``, ``len = ...``) is left out, unless
    the row names it as the function under test: the tests' ``sorted``, ``len`` or ``AssertionError`` are this
    interpreter's own, never the solution's.
    """
    ns = {"__name__": "__main__", "__builtins__": dict(pristine)}

    def bindable(name):
        return isinstance(name, str) and name.isidentifier() and (name not in pristine or name in allowed)
    stdlib = getattr(sys, "stdlib_module_names", ())
    for alias, modname in dict(hello.get("modules", {})).items():
        root = str(modname).split(".")[0]
        if bindable(alias) and root in stdlib:
            with contextlib.suppress(Exception):
                __import__(str(modname))
                ns[str(alias)] = sys.modules[str(modname)]
    for name, enc in dict(hello.get("values", {})).items():
        if bindable(name):
            with contextlib.suppress(CrossingError):
                ns[name] = decode(enc)
    for name in list(hello.get("callables", [])):
        if bindable(name):
            ns[name] = RemoteFunction(channel, name)
    return ns


def _deep_lists(v):
    if type(v) in (list, tuple):
        return [_deep_lists(x) for x in v]
    if type(v) is dict:
        return {k: _deep_lists(x) for k, x in v.items()}
    return v


def _fncall_ok(out, expected):
    """APPS's rule: equal with tuples read as lists, or equal to the sole element of a one-item expected list."""
    out, expected = _deep_lists(out), _deep_lists(expected)
    if out == expected:
        return True
    return type(expected) is list and len(expected) == 1 and out == expected[0]


_HARNESS_CODE = set()  # ids of the code objects the harness itself compiled (the tests, the setup)


class _Taint:
    """Set by an audit hook when the tests compile or run code of their own (``eval``, ``exec``), unpickle
    or unmarshal: then data from the solution may have become code here, so this process is replaced after
    the sample instead of serving the next one."""

    active = False
    why = ""


def _audit(event, args):
    if not _Taint.active or _Taint.why:
        return
    if event == "compile" or event in ("pickle.find_class", "marshal.loads"):
        _Taint.why = event
    elif event == "exec" and args and id(args[0]) not in _HARNESS_CODE:
        _Taint.why = "exec"


def trusted_server_main(cfg, ctl, job_r, res_w):
    """The persistent test process of one worker: one sample after the other until told (or made) to stop.

    Per sample: a header on ``ctl`` with the channel descriptors to that sample's solution process, the job on
    ``job_r``, and one batch of result lines back on ``res_w``. It is not forked per sample because a fork
    costs more than the tests (copy-on-write faults); each sample's tests get a fresh namespace and a fresh
    copy of the builtins, and the process is replaced when :class:`_Taint` fires, when it has served
    ``max_samples`` samples, or when it does not finish in time. Never returns.
    """
    import gc
    import resource
    import socket

    try:
        keep = {ctl.fileno(), job_r, res_w}
        devnull = os.open("/dev/null", os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        for fd in range(3, max(keep) + 1):
            if fd not in keep:
                with contextlib.suppress(OSError):
                    os.close(fd)
        os.closerange(max(keep) + 1, _MAXFD)
        os.setsid()
        if cfg.get("namespaces"):
            _drop_capabilities()
        mem = max(int(cfg["memory_mb"]) * 2, 1024) * 1024 * 1024
        for what, value in ((resource.RLIMIT_AS, mem), (resource.RLIMIT_CORE, 0),
                            (resource.RLIMIT_FSIZE, int(cfg["fsize_mb"]) * 1024 * 1024),
                            (resource.RLIMIT_NOFILE, int(cfg["nofile"]))):
            resource.setrlimit(what, (value, value))
        os.chdir("/")
        sys.addaudithook(_audit)
    except BaseException as exc:
        with contextlib.suppress(BaseException):
            _write_all(res_w, (dumps({"setup_error": f"{type(exc).__name__}: {exc}"}) + "\n").encode())
        os._exit(121)
    pristine = dict(builtins.__dict__)
    gc.collect()
    gc.freeze()
    cpu0 = 0.0
    served, max_samples = 0, int(cfg.get("test_process_samples", 500))
    reader = os.fdopen(job_r, "rb", buffering=1 << 16)
    while True:
        try:
            header, fds, _flags, _addr = socket.recv_fds(ctl, 1 << 16, 2)
        except OSError:
            os._exit(0)
        if not header:
            os._exit(0)
        head = loads(header)
        job = loads(reader.read(int(head["len"])))
        req_w, resp_r = fds
        out = []
        _Taint.why, _Taint.active = "", False
        try:
            _harness(job, Channel(req_w, resp_r), out, pristine)
        except BaseException as exc:
            out.append({"harness_error": f"{type(exc).__name__}: {str(exc)[:500]}"})
        _Taint.active = False
        _HARNESS_CODE.clear()
        os.close(req_w)
        os.close(resp_r)
        served += 1
        restart = bool(_Taint.why) or served >= max_samples
        usage = resource.getrusage(resource.RUSAGE_SELF)
        cpu = (usage.ru_utime + usage.ru_stime) * 1000
        out.append({"done": head["id"], "restart": restart, "taint": _Taint.why, "cpu_ms": round(cpu - cpu0, 3)})
        cpu0 = cpu
        _write_all(res_w, ("\n".join(dumps(o) for o in out) + "\n").encode())
        if restart:
            os._exit(0)
        del job, out
        if served % 64 == 0:  # a full collection costs more than a small sample; the young generations suffice
            gc.collect()


def _emit(out, obj):
    out.append(obj)


def _describe(exc, source=""):
    name = type(exc).__name__
    text = str(exc)
    if isinstance(exc, AssertionError) and not text:
        text = source.strip()[:300]
    return name, text[:1000]


def _flag_unsupported(channel, res_w):
    """A test needed to pass something that cannot cross: the row, not the solution, is at fault."""
    if channel.unsupported:
        _emit(res_w, {"unsupported": channel.unsupported[:1000]})
        channel.unsupported = ""


_COMPILED = {}  # (source, name) -> code object: the same row's tests come back for every completion of a group
_COMPILED_MAX = 512


def _compile(source, name):
    """Compile a test (or the setup) of the row; code objects are immutable, so they are kept for later samples
    of this process (a GRPO group runs the same tests for each of its completions)."""
    key = (source, name)
    code = _COMPILED.get(key)
    if code is None:
        code = compile(source, name, "exec")
        if len(source) <= 1 << 16:
            if len(_COMPILED) >= _COMPILED_MAX:
                _COMPILED.clear()
            _COMPILED[key] = code
    _HARNESS_CODE.add(id(code))
    return code


def _harness(job, channel, res_w, pristine):
    """Run one sample's tests, appending result dicts to ``res_w`` (a list)."""
    try:
        first = channel.read()
        hello = first["hello"] if type(first) is dict and type(first.get("hello")) is dict else None
    except (EOFError, OSError, CrossingError):
        hello = None
    n_tests = len(job["cases"]) if job["tests_kind"] == "fncall" else len(job.get("tests") or [])
    if hello is None or hello.get("error"):
        # The solution did not run to its end (it raised, exited or died): no test runs, none passes.
        if hello is None:
            error = ["SolutionUnavailable", "the solution's process ended before it was ready"]
        else:
            err = _remote_exception(hello["error"])
            error = [type(err).__name__, str(err)[:1000]]
        _emit(res_w, {"solution_error": error})
        for i in range(n_tests):
            _emit(res_w, {"t": i, "ok": False, "type": error[0], "msg": "the solution did not run to its end"})
        _emit(res_w, {"finished": True, "calls": 0})
        return
    ns = _namespace(channel, hello, pristine, {job.get("entry_point"), job.get("fn_name")})
    kind = job["tests_kind"]
    setup = job.get("setup") or ""
    tests = list(job.get("tests") or [])
    compiled = []
    for i, test in enumerate(tests):
        try:
            compiled.append(_compile(test, f"<test {i}>"))
        except BaseException as exc:
            compiled.append(exc)
    try:
        setup_code = _compile(setup, "<test setup>") if setup else None
    except BaseException as exc:
        setup_code = exc
    _Taint.active = True  # from here on, only the harness's own code objects may be compiled or run
    if setup_code is not None:
        try:
            if isinstance(setup_code, BaseException):
                raise setup_code
            exec(setup_code, ns)
        except BaseException as exc:
            _emit(res_w, {"unsupported": "the row's test setup code raised {}: {}".format(*_describe(exc))})
    if kind == "fncall":
        name = job["fn_name"]
        target = name if name in ns or "()." in name else (f"Solution().{name}" if "Solution" in ns else name)
        for i, (args, expected) in enumerate(job["cases"]):
            try:
                out = channel.call(target, args if type(args) is list else [args], {})
                ok = _fncall_ok(out, expected)
                _emit(res_w, {"t": i, "ok": ok} if ok else {"t": i, "ok": False, "type": "WrongAnswer",
                                                             "msg": f"{name}(...) returned {out!r:.200}"})
            except BaseException as exc:
                name_, text = _describe(exc)
                _emit(res_w, {"t": i, "ok": False, "type": name_, "msg": text})
            _flag_unsupported(channel, res_w)
        _emit(res_w, {"finished": True, "calls": channel.calls})
        return
    for i, test in enumerate(tests):
        code = compiled[i]
        if isinstance(code, BaseException):
            kind_, text = _describe(code)
            _emit(res_w, {"unsupported": f"test {i} does not compile: {kind_}: {text}"})
            _emit(res_w, {"t": i, "ok": False, "type": "SyntaxError", "msg": "test does not compile"})
            continue
        try:
            exec(code, ns)
            if kind == "check":
                check = ns.get("check")
                if not callable(check):
                    _emit(res_w, {"unsupported": "the test code defines no check(candidate) function"})
                    raise NameError("check")
                entry = job.get("entry_point") or ""
                candidate = ns.get(entry)
                if not isinstance(candidate, RemoteFunction):
                    raise NameError(f"the solution defines no function {entry!r}")
                check(candidate)
        except BaseException as exc:
            name_, text = _describe(exc, test)
            _emit(res_w, {"t": i, "ok": False, "type": name_, "msg": text})
        else:
            _emit(res_w, {"t": i, "ok": True})
        _flag_unsupported(channel, res_w)
    _emit(res_w, {"finished": True, "calls": channel.calls})
