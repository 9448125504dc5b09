"""A real HTTP webhook receiver on loopback (stdlib http.server in a thread) that records every POST."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Call:
    path: str
    headers: dict[str, str]
    body: bytes
    json: Any = field(default=None)


class WebhookReceiver:
    """Start with ``start()``; ``url(path)`` to hand out; ``wait_for(predicate)`` to await a call; ``stop()``.

    Answers ``status``; ``plan(...)`` queues answers for the next calls first: a status code, or (status, headers),
    e.g. ``plan(500, (302, {"Location": "http://169.254.169.254/"}))``. ``port`` 0 takes a free one.
    """

    def __init__(self, status: int = 200, port: int = 0) -> None:
        self.status = status
        self.planned: list[tuple[int, dict[str, str]]] = []
        self.calls: list[Call] = []
        self._changed = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                try:
                    parsed = json.loads(body)
                except ValueError:
                    parsed = None
                call = Call(self.path, {k.lower(): v for k, v in self.headers.items()}, body, parsed)
                # Recorded before answering: once the sender has its answer, the call is in ``calls``.
                with receiver._changed:
                    receiver.calls.append(call)
                    receiver._changed.notify_all()
                    status, headers = receiver.planned.pop(0) if receiver.planned else (receiver.status, {})
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="webhook-receiver", daemon=True)

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def plan(self, *answers: int | tuple[int, dict[str, str]]) -> "WebhookReceiver":
        with self._changed:
            self.planned.extend(a if isinstance(a, tuple) else (a, {}) for a in answers)
        return self

    def start(self) -> "WebhookReceiver":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def calls_to(self, path: str) -> list[Call]:
        with self._changed:
            return [c for c in self.calls if c.path == path]

    def wait_for(self, path: str, count: int = 1, timeout: float = 120.0) -> list[Call]:
        """The calls to ``path`` once there are ``count`` of them; AssertionError after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                calls = [c for c in self.calls if c.path == path]
                if len(calls) >= count:
                    return calls
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"expected {count} webhook call(s) to {path} within {timeout} s, got {len(calls)}")
                self._changed.wait(left)
