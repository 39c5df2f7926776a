"""Serve the dashboard with uvicorn and the limits that keep it answering under abuse.

``python -m dashboard serve --host 127.0.0.1 --port 8000`` is how every launcher starts the app
(``make up``, the systemd unit of ``distmon.host``, the fault suite): a bare
``uvicorn dashboard.app:app`` would trust ``X-Forwarded-For`` from 127.0.0.1 and let a client
hold a connection open for ever by sending its headers slowly.

.. code-block:: yaml

    DISTMON_TRUSTED_PROXIES: ''      # proxy headers believed only from these addresses (none: never)
    DISTMON_LIMIT_CONCURRENCY: 2048  # open connections at most; the next ones get a 503 and are closed
    DISTMON_REQUEST_TIMEOUT: 10      # seconds to send a whole request (headers and body)
    DISTMON_KEEP_ALIVE_TIMEOUT: 5    # seconds an idle keep-alive connection stays open

What each limit answers:

- ``X-Forwarded-For`` / ``X-Forwarded-Proto`` change the client address (the login limit's key)
  and the scheme only when the direct peer is in ``DISTMON_TRUSTED_PROXIES``; uvicorn's own
  default trusts 127.0.0.1, which is every local client.
- uvicorn has no timeout for a request still arriving (its keep-alive timer stops as soon as a
  byte comes): :class:`BoundedH11Protocol` closes a connection whose request is not complete
  ``request_timeout`` seconds after the connection opened or after its previous response.
- ``limit_concurrency``: a connection beyond it is answered ``503`` at once and closed, before it
  can hold a descriptor; the soft ``RLIMIT_NOFILE`` is raised (up to the hard limit) to leave
  room for them, the database and the inbox. The systemd unit sets ``LimitNOFILE`` to match.
- headers: a request head still incomplete after :data:`MAX_REQUEST_HEAD` bytes is a 400 (h11's
  ``max_incomplete_event_size``, set explicitly): what one slow connection makes the server
  buffer is bounded. (A longer head that arrives whole is parsed; the app caps each URL
  parameter at 4,096 characters.)
"""

from __future__ import annotations

import asyncio
import logging
import resource

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from dashboard.config import Settings
from dashboard.security import SECURITY_HEADERS

log = logging.getLogger("distmon.serve")

# Descriptors beyond the connections: SQLite (writer, readers, WAL, shm), inbox directories,
# the validation worker's pipes, log files.
SPARE_DESCRIPTORS = 512
MAX_REQUEST_HEAD = 16 * 1024  # h11's own default, pinned here
_BUSY_BODY = b"The dashboard is at its connection limit. Try again shortly.\n"
_BUSY_RESPONSE = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\n"
    + b"".join(name + b": " + value + b"\r\n" for name, value in SECURITY_HEADERS)
    + b"retry-after: 5\r\nconnection: close\r\ncontent-length: " + str(len(_BUSY_BODY)).encode() + b"\r\n\r\n"
    + _BUSY_BODY
)


class BoundedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a connection cap and a deadline for each request to arrive."""

    max_connections = 2048
    request_timeout = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._request_timer: asyncio.TimerHandle | None = None
        if len(self.connections) > self.max_connections:
            transport.write(_BUSY_RESPONSE)
            transport.close()
            return
        self._arm_request_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_request_timer()
        super().connection_lost(exc)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm_request_timer()  # the next request on this connection gets its own deadline

    def _arm_request_timer(self) -> None:
        self._cancel_request_timer()
        self._request_timer = self.loop.call_later(self.request_timeout, self._request_deadline)

    def _cancel_request_timer(self) -> None:
        timer = getattr(self, "_request_timer", None)
        if timer is not None:
            timer.cancel()
            self._request_timer = None

    def _request_deadline(self) -> None:
        self._request_timer = None
        # IDLE: the request head is not complete; SEND_BODY: its body is not. DONE: the app has it.
        if not self.transport.is_closing() and self.conn.their_state in (h11.IDLE, h11.SEND_BODY):
            self.transport.close()


def protocol_class(settings: Settings, max_connections: int) -> type[BoundedH11Protocol]:
    """A :class:`BoundedH11Protocol` subclass carrying these settings' limits."""
    return type(
        "DistmonH11Protocol",
        (BoundedH11Protocol,),
        {"max_connections": max_connections, "request_timeout": float(settings.request_timeout)},
    )


def raise_descriptor_limit(wanted: int) -> int:
    """Raise the soft RLIMIT_NOFILE towards ``wanted`` (never above the hard limit); return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    return soft


def uvicorn_config(settings: Settings, host: str, port: int, **options) -> uvicorn.Config:
    """The uvicorn configuration the dashboard runs with (``options`` pass through, e.g. log_level)."""
    descriptors = raise_descriptor_limit(settings.limit_concurrency + SPARE_DESCRIPTORS)
    max_connections = min(settings.limit_concurrency, descriptors - SPARE_DESCRIPTORS)
    if max_connections < settings.limit_concurrency:
        log.warning("only %d file descriptors: at most %d connections (DISTMON_LIMIT_CONCURRENCY is %d)",
                    descriptors, max_connections, settings.limit_concurrency)
    max_connections = max(max_connections, 16)
    trusted = ",".join(settings.trusted_proxies)
    from dashboard.app import create_app

    return uvicorn.Config(
        create_app(settings),
        host=host,
        port=port,
        http=protocol_class(settings, max_connections),
        proxy_headers=bool(trusted),
        forwarded_allow_ips=trusted or "",  # never uvicorn's default (127.0.0.1 and ::1)
        server_header=False,
        timeout_keep_alive=max(1, round(settings.keep_alive_timeout)),
        h11_max_incomplete_event_size=MAX_REQUEST_HEAD,
        **options,
    )


def serve(settings: Settings, host: str, port: int, **options) -> None:
    """Run the dashboard until SIGINT/SIGTERM."""
    uvicorn.Server(uvicorn_config(settings, host, port, **options)).run()
