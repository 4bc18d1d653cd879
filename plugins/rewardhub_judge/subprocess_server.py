"""``rewardhub serve`` in a child process, for scripts and tests that need a real server next to them.

Why: an example that trains against a judge, or a test of the generation-server path, needs a real HTTP server
process (not an in-process app: the point is the network path), started on a free port, waited for until the
model is loaded, and stopped on every exit path. Four places did that by hand; this is the one copy.
"""

from __future__ import annotations

import select
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path


class ServerStartError(RuntimeError):
    """The server did not print its address in time, or exited, or its /v1/models never answered."""


@contextmanager
def served(model: str, log_path: str | Path, *, served_name: str | None = None, threads: int = 1,
           extra_args: Sequence[str] = (), start_timeout: float = 300.0, answer_timeout: float = 60.0
           ) -> Iterator[str]:
    """Run ``rewardhub serve --model MODEL --host 127.0.0.1 --port 0``; yield its ``/v1`` base URL once
    ``/v1/models`` answers; stop it (terminate, then kill) when the block exits, however it exits.

    Args:
        model: a local model directory or a built-in name, as ``rewardhub serve --model`` takes it.
        log_path: where the server's stderr goes (the error messages point there).
        served_name: ``--served-name`` (the name clients put in ``model``); default: the server's own choice.
        threads: ``--threads`` (torch threads in the server).
        extra_args: more ``rewardhub serve`` options, e.g. ``["--no-weight-updates"]``.
        start_timeout: seconds to wait for the server to load the model and print its address.
        answer_timeout: seconds to wait, after that, for ``/v1/models`` to answer.
    """
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "rewardhub.cli.main", "serve", "--model", str(model), "--host", "127.0.0.1",
           "--port", "0", "--threads", str(threads), *(["--served-name", served_name] if served_name else []),
           *extra_args]
    with log_path.open("w") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True)
        try:
            yield _wait_until_answering(proc, log_path, start_timeout, answer_timeout)
        finally:
            stop(proc)


def _wait_until_answering(proc: subprocess.Popen, log_path: Path, start_timeout: float,
                          answer_timeout: float) -> str:
    ready, _, _ = select.select([proc.stdout], [], [], start_timeout)  # bounded: a silent server is given up on
    line = proc.stdout.readline() if ready else ""  # "serving 'M' at http://127.0.0.1:PORT/v1 ..." once loaded
    if "http://" not in line:
        raise ServerStartError(f"rewardhub serve did not start within {start_timeout:g}s (exit code "
                               f"{proc.poll()}); see {log_path}")
    url = line.split(" at ", 1)[1].split()[0]
    deadline = time.monotonic() + answer_timeout
    while True:
        try:
            with urllib.request.urlopen(f"{url}/models", timeout=2) as response:
                if response.status == 200:
                    return url
        except OSError:
            pass
        if time.monotonic() > deadline or proc.poll() is not None:
            raise ServerStartError(f"rewardhub serve at {url} is not answering /models; see {log_path}")
        time.sleep(0.1)


def stop(proc: subprocess.Popen, grace: float = 30.0) -> None:
    """Terminate ``proc`` (the server shuts down cleanly on SIGTERM); kill it if it has not exited in ``grace`` s."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
