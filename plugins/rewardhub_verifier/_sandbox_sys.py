"""Low-level process helpers shared by every role of the code sandbox (stdlib only, Python >= 3.8).

The supervisor, the worker and the sample all call into libc (``prctl``, ``unshare``), read namespace ids and
write to raw file descriptors; those few helpers and the numeric constants they use live here so that each
role's module holds only its own logic. Like every ``_sandbox_*`` part, this file is shipped as source text
(see :mod:`rewardhub_verifier._sandbox_worker`): it must stay stdlib-only and import nothing from the package.
"""

import ctypes
import os

PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
CLONE_PARENT = 0x00008000
CLONE_NEWNS = 0x00020000
CLONE_NEWIPC = 0x08000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
CLONE_NEWUSER = 0x10000000
MS_NOSUID, MS_NODEV, MS_NOEXEC = 0x2, 0x4, 0x8
_SIGCHLD = 17
_SYS_CLONE = {"x86_64": 56, "aarch64": 220}
_CAP_VERSION_3 = 0x20080522

EXIT_SETUP_FAILED = 121
_MAXFD = 65536

_libc = None


def _libc_handle():
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    return _libc


def _libc_call(name, *args):
    rc = getattr(_libc_handle(), name)(*args)
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


_clone_calls = {}


def _fork_new_pidns(sibling=False):
    """``fork()`` into a new pid namespace (the child is its pid 1); needs CAP_SYS_ADMIN in our user namespace.

    ``unshare(CLONE_NEWPID)`` works only once per process (and ``setns`` back is refused inside bubblewrap's
    nested user namespace), so this is the raw ``clone`` syscall with ``os.fork``'s interpreter bookkeeping
    (``PyOS_BeforeFork``/``AfterFork``) around it. Returns the child's pid in the parent and 0 in the child.
    The ctypes functions and arguments are made once: every object touched after the clone costs the child
    (and the parent) a copy-on-write fault. ``sibling``: ``CLONE_PARENT``, the child is our parent's child
    (our parent waits for it and gets its resource usage; we need not wake up when it exits).
    """
    global _libc
    call = _clone_calls.get(sibling)
    if call is None:
        if _libc is None:
            _libc = ctypes.CDLL(None, use_errno=True)
        machine = os.uname().machine  # (not platform.machine(): importing platform costs every zygote child)
        nr = _SYS_CLONE.get(machine)
        if nr is None:
            raise OSError(38, f"clone into a new pid namespace is not implemented for {machine}")
        syscall = ctypes.CFUNCTYPE(ctypes.c_long, ctypes.c_long, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                                   ctypes.c_ulong, ctypes.c_ulong, use_errno=True)(("syscall", _libc))
        api = ctypes.pythonapi
        hooks = []
        for name in ("PyOS_BeforeFork", "PyOS_AfterFork_Child", "PyOS_AfterFork_Parent"):
            fn = getattr(api, name)
            fn.restype, fn.argtypes = None, ()
            hooks.append(fn)
        flags = _SIGCHLD | CLONE_NEWPID | (CLONE_PARENT if sibling else 0)
        call = _clone_calls[sibling] = (syscall, (nr, flags, 0, 0, 0, 0), *hooks)
    syscall, args, before, after_child, after_parent = call
    before()
    pid = syscall(*args)
    if pid == 0:
        after_child()
        return 0
    err = ctypes.get_errno()
    after_parent()
    if pid < 0:
        raise OSError(err, f"clone(CLONE_NEWPID): {os.strerror(err)}")
    return pid


def _unshare(flags):
    _libc_call("unshare", ctypes.c_int(flags))


def _mount(source, target, fstype, flags, data=None):
    _libc_call("mount", source.encode(), target.encode(), fstype.encode() if fstype else None,
               ctypes.c_ulong(flags), data.encode() if data else None)


_CapHeader = ctypes.c_uint32 * 2  # (array types made once: making one costs more than the syscalls)
_CapData = ctypes.c_uint32 * 6


def _drop_capabilities():
    """Empty the ambient, effective, permitted and inheritable sets, set no_new_privs, and check it took.

    Raises OSError when any capability is left: the caller must not run untrusted code then.
    """
    libc = _libc_handle()
    libc.prctl(ctypes.c_int(PR_CAP_AMBIENT), ctypes.c_ulong(PR_CAP_AMBIENT_CLEAR_ALL), ctypes.c_ulong(0),
               ctypes.c_ulong(0), ctypes.c_ulong(0))
    header = _CapHeader(_CAP_VERSION_3, 0)
    data = _CapData()
    _libc_call("capset", header, data)
    _prctl(PR_SET_NO_NEW_PRIVS, 1)
    # Read back (ambient caps cannot outlive an empty permitted set: the kernel clears them with it).
    check = _CapData()
    _libc_call("capget", header, check)
    if any(check):
        raise OSError(1, f"capabilities left after dropping them: {list(check)}")


def _nondumpable():
    """No ptrace attach and no /proc/<pid>/{mem,fd,environ,maps} for anyone of our uid without a capability."""
    _prctl(PR_SET_DUMPABLE, 0)


def _cap_eff():
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return int(line.split()[1], 16)
    except (OSError, ValueError):
        pass
    return 0
