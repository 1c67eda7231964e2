"""Running the app on uvicorn: in the foreground (``vlp serve``) or in a background thread (tests,
benchmarks), always with an optional deadline after which the server stops by itself."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import uvicorn

LOCALHOST = "127.0.0.1"


def _server(app: Any, host: str, port: int, log_level: str) -> uvicorn.Server:
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=False,
                            timeout_graceful_shutdown=5, lifespan="off")  # fmt: skip
    return uvicorn.Server(config)


def _stop_later(server: uvicorn.Server, seconds: float | None) -> None:
    if seconds is not None:
        timer = threading.Timer(seconds, lambda: setattr(server, "should_exit", True))
        timer.daemon = True
        timer.start()


def run(app: Any, host: str = LOCALHOST, port: int = 8000, stop_after: float | None = None,
        log_level: str = "warning") -> None:  # fmt: skip
    """Serve ``app`` until Ctrl-C (or for ``stop_after`` seconds)."""
    server = _server(app, host, port, log_level)
    _stop_later(server, stop_after)
    server.run()


class BackgroundServer:
    """``app`` on ``127.0.0.1`` at a free port in a daemon thread; stops on ``close()`` / leaving the
    ``with`` block, and by itself after ``stop_after`` seconds whatever the caller does."""

    def __init__(self, app: Any, stop_after: float = 120.0, start_timeout: float = 20.0) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((LOCALHOST, 0))  # the kernel picks a free port; uvicorn serves this very socket
        self.port = sock.getsockname()[1]
        self.url = f"http://{LOCALHOST}:{self.port}"
        self.server = _server(app, LOCALHOST, self.port, "error")
        _stop_later(self.server, stop_after)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + start_timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"the server did not start on {self.url} within {start_timeout:g} s")
            time.sleep(0.02)

    def close(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)

    def __enter__(self) -> BackgroundServer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


__all__ = ["LOCALHOST", "BackgroundServer", "run"]
