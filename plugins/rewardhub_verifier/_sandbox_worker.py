"""Supervisor and worker processes of :mod:`rewardhub_verifier.sandbox` (stdlib only, Python >= 3.9).

This file and its sibling parts are never imported by the sandboxed processes: their *source text* is
passed to the interpreter with ``python -I -S -c <source> ROLE CONFIG_JSON``, so a worker dropped to an
unprivileged uid needs no read access to the repository or to a virtual environment.

Process tree (root host, bubblewrap available)::

    trainer (CodeSandbox)                         host uid, host namespaces; compares P-CoT answers
      supervisor  (role "supervisor")             subreaper, waitpid loop, deadlines, restarts, one retry
        bwrap  (as uid 65534, --cap-add SYS_ADMIN) --unshare-all: user/pid/net/ipc/uts/cgroup namespaces
          bwrap init (pid 1 of the namespace)
            worker  (role "worker")               non-dumpable; runs no job code; compares stdin/stdout
              zygote                              own small interpreter started before any job: no test or code
              solution process (per sample)       cloned by the zygote (CLONE_PARENT: the worker's child);
                                                  own pid/mount/IPC ns, fresh /tmp /dev/shm /proc, no caps
              test process (persistent)           own pid ns, no caps: runs the tests, decides the verdicts

Protocol: JSON lines. host -> supervisor: jobs (``{"id", "kind", "code", ...}``) and ``{"op": "stats"}``;
supervisor -> host: one result per job, ``{"op": "ready", ...}`` once at start and stats replies.
The supervisor forwards each job to an idle worker over the worker's stdin and reads the result from
its stdout; no job process inherits those pipes. Solution <-> test process: the data-only channel of
:mod:`rewardhub_verifier._sandbox_codec`.

The code is split by role into ``_sandbox_sys`` (libc and fd helpers), ``_sandbox_codec`` (the channel's
value encoding), ``_sandbox_untrusted`` (the solution's process), ``_sandbox_trusted`` (the test process),
``_sandbox_zygote``, ``_sandbox_worker_loop`` (the worker), ``_sandbox_supervisor`` and this entry module;
:data:`~rewardhub_verifier.sandbox._WORKER_SOURCE_PARTS` lists them in dependency order, and the
source sent to the interpreter is their concatenation. Imported on the host, each part imports what it uses
from the others (guarded by ``__name__ != "__main__"``); shipped, they share the one ``__main__`` namespace.
"""

import json
import sys

if __name__ != "__main__":  # imported on the host; when shipped, all parts share one namespace
    from rewardhub_verifier._sandbox_supervisor import supervisor_main
    from rewardhub_verifier._sandbox_worker_loop import worker_main


def main(argv):
    role, cfg = argv[1], json.loads(argv[2])
    if role == "worker":  # argv[3]: the zygote's own source (see zygote_exec_main)
        worker_main(cfg, argv[3] if len(argv) > 3 else None)
    elif role == "supervisor":  # argv[3:]: the worker's command line (each part its own argument: size limits)
        if len(argv) > 3:
            cfg["worker_argv"] = argv[3:]
        supervisor_main(cfg)
    else:
        raise SystemExit(f"unknown role {role!r}")


if __name__ == "__main__":
    main(sys.argv)
