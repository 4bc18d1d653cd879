"""Low-level process helpers shared by every role of the code sandbox (stdlib only, Python >= 3.8).

The supervisor, the worker and the sample all call into libc (``prctl``, ``unshare``), read namespace ids and
write to raw file descriptors; those few helpers and the numeric constants they use live here so that each
role's module holds only its own logic. Like every ``_sandbox_*`` part, this file is shipped as source text
(see :mod:`rewardhub_verifier._sandbox_worker`): it must stay stdlib-only and import nothing from the package.
"""

import ctypes
import os

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
