"""Serving an ASGI app (FastAPI) with uvicorn: a socket bound first, a server, and a daemon-thread runner.

Two things every HTTP-facing plugin needs: a socket bound *before* uvicorn starts, so ``port=0`` picks a free
port with no race between choosing it and listening on it, and a server that can be started, waited for and
stopped from Python (tests, examples, notebooks). The judge plugin's OpenAI-compatible server
(``rewardhub serve``) and the feedback store's API (in its tests) both use it.

Why it is in the core: it knows no reward source, only ASGI and sockets, and plugins depend on the core
alone, never on each other, so a helper two plugins share lives here.
"""

from __future__ import annotations

import socket
import threading
import time


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening-ready socket on ``host:port`` (port 0: a free one, read back with ``getsockname``)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def make_server(app, log_level: str = "warning"):
    """A uvicorn server for ``app``; run it with ``server.run(sockets=[bind_socket(...)])``."""
    import uvicorn

    return uvicorn.Server(uvicorn.Config(app, log_level=log_level, lifespan="off", access_log=False))


class AppThread:
    """Serve an ASGI app on ``host:port`` from a daemon thread; ``url`` is ``http://host:port`` + ``base_path``.

    Usable as a context manager: the server is up inside the block and shut down (and joined) after it.
    """

    base_path = ""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0):
        self.host = host
        self.sock = bind_socket(host, port)
        self.port = self.sock.getsockname()[1]
        self.server = make_server(app)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       name=f"uvicorn-{self.port}", daemon=True)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}{self.base_path}"

    def start(self, timeout: float = 30.0) -> AppThread:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"server on {self.url} did not start within {timeout:g}s")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        if self.thread.is_alive():
            self.thread.join(timeout=10)
        self.sock.close()

    def __enter__(self) -> AppThread:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
