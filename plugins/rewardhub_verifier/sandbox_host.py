"""Host-side probes for launching the code sandbox: which interpreter the unprivileged uid can run, and which
cgroup-v1 controllers the trainer may create groups in. Kept apart from :mod:`rewardhub_verifier.sandbox` (the
pool and its protocol) because they only read the host's filesystem, once, at start-up.
"""

from __future__ import annotations

import os
import stat
import sys


def _accessible_by_other(path: str) -> bool:
    """Whether uid 65534 (no groups) can reach and run ``path``: every parent dir o+x, the file o+rx."""
    real = os.path.realpath(path)
    try:
        st = os.stat(real)
    except OSError:
        return False
    if st.st_mode & 0o005 != 0o005:
        return False
    parent = os.path.dirname(real)
    while True:
        try:
            if not os.stat(parent).st_mode & stat.S_IXOTH:
                return False
        except OSError:
            return False
        if parent == "/":
            return True
        parent = os.path.dirname(parent)


def _interpreter_for(drop_uid: bool) -> tuple[str, str] | None:
    """(interpreter path, its prefix) usable by the worker, or None."""
    candidates = [(os.path.realpath(sys.executable), sys.base_prefix)]
    for sys_py in ("/usr/bin/python3", "/usr/local/bin/python3"):
        if os.path.exists(sys_py):
            real = os.path.realpath(sys_py)
            candidates.append((real, os.path.dirname(os.path.dirname(real))))
    for exe, prefix in candidates:
        if not os.access(exe, os.X_OK):
            continue
        if drop_uid and not (_accessible_by_other(exe) and _accessible_by_other(prefix)):
            continue
        return exe, prefix
    return None


def _cgroup_v1_roots(prefix: str) -> dict[str, str]:
    """Writable cgroup-v1 ``memory`` and ``pids`` directories (our own cgroup in each), probed by mkdir."""
    if os.geteuid() != 0:
        return {}
    current: dict[str, str] = {}
    try:
        with open("/proc/self/cgroup") as f:
            for line in f:
                _, ctrls, path = line.rstrip("\n").split(":", 2)
                for ctrl in ctrls.split(","):
                    current[ctrl] = path
    except (OSError, ValueError):
        return {}
    roots = {}
    for ctrl, limit_file in (("memory", "memory.limit_in_bytes"), ("pids", "pids.max")):
        mount = f"/sys/fs/cgroup/{ctrl}"
        if ctrl not in current or not os.path.exists(os.path.join(mount, "cgroup.procs")):
            continue
        base = os.path.normpath(mount + current[ctrl])
        probe = os.path.join(base, f"{prefix}_probe")
        try:
            os.mkdir(probe)
            try:
                if os.path.exists(os.path.join(probe, limit_file)):
                    roots[ctrl] = base
            finally:
                os.rmdir(probe)
        except OSError:
            continue
    return roots
