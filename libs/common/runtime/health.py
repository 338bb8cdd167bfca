"""Per-process HTTP endpoints for operators: /metrics, /healthz, /readyz.

Served from a daemon thread by the standard library's WSGI server around
prometheus-client's own app, so a busy event loop cannot make a probe lie
about metrics, and a stuck one is caught by the liveness check below.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

# The loop must have run within this many seconds for /healthz to say "ok".
LOOP_STALL_S = 30.0

StartResponse = Callable[..., Any]


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


class Health:
    """Liveness = the event loop still turns; readiness = the service says so."""

    def __init__(self) -> None:
        self.ready = False
        self._beat = time.monotonic()
        self._server: WSGIServer | None = None
        self._task: asyncio.Task[None] | None = None
        self._metrics = make_wsgi_app()

    async def _heartbeat(self) -> None:
        while True:
            self._beat = time.monotonic()
            await asyncio.sleep(1.0)

    def alive(self) -> bool:
        return time.monotonic() - self._beat < LOOP_STALL_S

    def app(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        if path in ("/healthz", "/readyz"):
            ok = self.alive() and (path == "/healthz" or self.ready)
            status = "200 OK" if ok else "503 Service Unavailable"
            start_response(status, [("Content-Type", "text/plain")])
            return [b"ok\n" if ok else b"not ready\n"]
        if path == "/metrics":
            result: Iterable[bytes] = self._metrics(environ, start_response)
            return result
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found\n"]

    def serve(self, host: str, port: int) -> int:
        """Start serving; returns the bound port (0 picks a free one)."""
        self._task = asyncio.get_running_loop().create_task(self._heartbeat())
        server = make_server(host, port, self.app, ThreadingWSGIServer, handler_class=_Quiet)
        self._server = server
        threading.Thread(target=server.serve_forever, daemon=True, name="health").start()
        return int(server.server_address[1])

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
