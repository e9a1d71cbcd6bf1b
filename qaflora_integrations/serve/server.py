"""Process startup: run the app under uvicorn, in the foreground or in a background thread.

``run_server`` is what ``qaflora serve`` calls. ``BackgroundServer`` serves an app
from a thread on 127.0.0.1 and a free port, for tests, benchmarks and notebooks
that want a real HTTP server next to their own code; it stops by itself when its
``with`` block ends.
"""

from __future__ import annotations

import socket
import threading
import time

import uvicorn
from fastapi import FastAPI
from qaflora import FusionEngine

from .app import create_app

LOOPBACK = "127.0.0.1"


def run_server(
    engine: FusionEngine,
    *,
    host: str = LOOPBACK,
    port: int = 8000,
    model_name: str | None = None,
    log_level: str = "info",
) -> None:
    """Serve ``engine`` until interrupted (Ctrl-C); the caller closes the engine afterwards."""
    uvicorn.run(create_app(engine, model_name=model_name), host=host, port=port, log_level=log_level)


class BackgroundServer:
    """A uvicorn server for ``app`` in a daemon thread, bound to loopback on a free port.

    with BackgroundServer(create_app(engine)) as server:
        OpenAI(base_url=server.base_url, api_key="unused").models.list()
    """

    def __init__(
        self, app: FastAPI, *, host: str = LOOPBACK, port: int = 0, log_level: str = "warning"
    ) -> None:
        self.app = app
        self.host = host
        self.requested_port = port
        self.log_level = log_level
        self.port: int | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("the server is not running")
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        """What OpenAI-compatible clients take as ``base_url``."""
        return f"{self.url}/v1"

    def start(self, timeout: float = 30.0) -> BackgroundServer:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.requested_port))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app, log_level=self.log_level, access_log=False, timeout_graceful_shutdown=2, lifespan="off"
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name="qaflora-http", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the HTTP server did not start on {self.host}:{self.port}")
            time.sleep(0.01)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
        self._server = self._thread = None

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
