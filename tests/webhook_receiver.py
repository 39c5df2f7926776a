"""A real HTTP webhook receiver on 127.0.0.1 for tests: records every POST, answers what it is told.

.. code-block:: python

    with WebhookReceiver() as receiver:          # a free port, or WebhookReceiver(port=...)
        ...                                      # point a webhook at receiver.url
        receiver.wait_for(1, timeout=10)
        message = receiver.received[0]           # .headers, .body, .json(), .delivery_id
        assert message.signature_ok(secret)

``receiver.status = 500`` makes it refuse; ``receiver.stop()`` then ``receiver.start()`` (same port)
models a receiver that is down for a while.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    def json(self):
        return json.loads(self.body)

    @property
    def delivery_id(self) -> str:
        return self.headers.get("x-distmon-delivery", "")

    def signature_ok(self, secret: str) -> bool:
        expected = "sha256=" + hmac.new(secret.encode(), self.body, hashlib.sha256).hexdigest()
        return hmac.compare_digest(expected, self.headers.get("x-distmon-signature", ""))


class WebhookReceiver:
    def __init__(self, port: int = 0):
        self.port = port
        self.status = 200
        self.received: list[Received] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def start(self) -> WebhookReceiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's naming)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                with receiver._lock:
                    receiver.received.append(Received(self.path, {k.lower(): v for k, v in self.headers.items()},
                                                      body, time.time()))
                    status = receiver.status
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> WebhookReceiver:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def accepted(self) -> list[Received]:
        """What was received while answering 2xx, in order."""
        with self._lock:
            return list(self.received)

    def distinct(self) -> dict[str, Received]:
        """Messages by delivery id (what a deduplicating receiver keeps)."""
        return {item.delivery_id: item for item in self.accepted()}

    def wait_for(self, count: int, timeout: float) -> list[Received]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and len(self.accepted()) < count:
            time.sleep(0.05)
        return self.accepted()
