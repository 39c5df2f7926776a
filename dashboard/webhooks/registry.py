"""Webhook definitions: validation, create, list, remove. Writes are ``*_tx`` functions for ``Database.write``."""

from __future__ import annotations

import json
import secrets
import sqlite3
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from dashboard.webhooks import EVENTS, FORMATS

MAX_URL = 2000
MAX_NAME = 100


class WebhookError(ValueError):
    """Bad input for a webhook (a 400 in the app, exit code 2 in the CLI)."""


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def check_url(url: Any) -> str:
    """The URL if it is an absolute http(s) URL with a host; WebhookError otherwise."""
    if not isinstance(url, str) or not url.strip():
        raise WebhookError("The webhook URL is empty.")
    url = url.strip()
    if len(url) > MAX_URL:
        raise WebhookError(f"The webhook URL is longer than {MAX_URL} characters.")
    if any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in url):
        raise WebhookError("The webhook URL contains spaces or control characters.")
    try:
        parts = urlsplit(url)
        port = parts.port  # raises ValueError for a port that is not a number in range
    except ValueError as err:
        raise WebhookError(f"The webhook URL is not a valid URL: {err}.") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise WebhookError(f"The webhook URL must start with http:// or https://, not {parts.scheme or 'nothing'}:.")
    if not parts.hostname:
        raise WebhookError("The webhook URL has no host name.")
    if parts.username is not None or parts.password is not None:
        raise WebhookError("The webhook URL must not carry a user name or password (user:pass@host).")
    if port == 0:
        raise WebhookError("The webhook URL's port must be between 1 and 65535.")
    return url


def check_format(value: Any) -> str:
    value = (value or "json").strip().lower() if isinstance(value, str) or value is None else value
    if value not in FORMATS:
        raise WebhookError(f"The format must be one of {', '.join(FORMATS)}, not {value!r}.")
    return value


def check_events(value: Any) -> list[str]:
    """A list of event names (a list, or a comma/space separated string); empty means all."""
    if value is None or value == "" or value == []:
        return list(EVENTS)
    if isinstance(value, str):
        value = value.replace(",", " ").split()
    if not isinstance(value, list | tuple) or not all(isinstance(item, str) for item in value):
        raise WebhookError("events must be a list of event names.")
    names: list[str] = []
    for item in value:
        for name in item.replace(",", " ").split():
            if name not in EVENTS:
                raise WebhookError(f"Unknown event {name!r}: choose from {', '.join(EVENTS)}.")
            if name not in names:
                names.append(name)
    return names or list(EVENTS)


def check_digest_hour(value: Any) -> int | None:
    if value is None or value == "":
        return None
    try:
        hour = int(value)
    except (TypeError, ValueError):
        raise WebhookError("The digest hour must be a whole number from 0 to 23 (UTC), or empty for none.") from None
    if not 0 <= hour <= 23:
        raise WebhookError("The digest hour must be from 0 to 23 (UTC).")
    return hour


def check_name(value: Any, url: str) -> str:
    if value is None or (isinstance(value, str) and not value.strip()):
        return (urlsplit(url).hostname or "webhook")[:MAX_NAME]
    if not isinstance(value, str) or len(value.strip()) > MAX_NAME or any(ord(ch) < 32 for ch in value):
        raise WebhookError(f"The name must be text of at most {MAX_NAME} characters.")
    return value.strip()


def redact_url(url: str) -> str:
    """The URL for display: long path segments (Slack-style tokens) shortened, no query string."""
    parts = urlsplit(url)
    segments = [seg if len(seg) <= 12 else seg[:4] + "…" for seg in parts.path.split("/")]
    shown = f"{parts.scheme}://{parts.netloc}{'/'.join(segments)}"
    return shown + ("?…" if parts.query else "")


def new_secret() -> str:
    return secrets.token_urlsafe(32)


def create_webhook_tx(conn: sqlite3.Connection, *, url: str, fmt: str = "json", events: Any = None,
                      name: str | None = None, digest_hour: Any = None) -> dict[str, Any]:
    """Validate and insert a webhook; returns it WITH its secret (the only time it is returned)."""
    url = check_url(url)
    fmt = check_format(fmt)
    wanted = check_events(events)
    hour = check_digest_hour(digest_hour)
    label = check_name(name, url)
    secret = new_secret()
    cursor = conn.execute(
        "INSERT INTO webhooks (name, url, format, events, secret, digest_hour, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (label, url, fmt, json.dumps(wanted), secret, hour, _now()),
    )
    row = conn.execute(f"SELECT {_PUBLIC} FROM webhooks WHERE id = ?", (cursor.lastrowid,)).fetchone()  # noqa: S608
    return {**_public(row), "url": url, "secret": secret}


def delete_webhook_tx(conn: sqlite3.Connection, webhook_id: int) -> bool:
    """Remove a webhook and its delivery log; False when there is none."""
    return conn.execute("DELETE FROM webhooks WHERE id = ?", (webhook_id,)).rowcount > 0


def set_enabled_tx(conn: sqlite3.Connection, webhook_id: int, enabled: bool) -> bool:
    return conn.execute("UPDATE webhooks SET enabled = ? WHERE id = ?", (int(enabled), webhook_id)).rowcount > 0


# Never the secret: everything that lists or shows webhooks reads these columns only.
_PUBLIC = "id, name, url, format, events, enabled, digest_hour, last_digest_on, created_at"
PUBLIC_COLUMNS = _PUBLIC


def _public(row) -> dict[str, Any]:
    data = dict(zip([c.strip() for c in _PUBLIC.split(",")], tuple(row), strict=True))
    data["events"] = json.loads(data["events"] or "[]")
    data["enabled"] = bool(data["enabled"])
    # Listings show the URL shortened: a chat webhook URL carries its own token in the path.
    data["url"] = redact_url(data["url"])
    return data


def public_webhook(row: dict) -> dict[str, Any]:
    """A webhooks row (dict from a reader) as shown to admins: no secret."""
    return _public(tuple(row[c.strip()] for c in _PUBLIC.split(",")))


def list_webhooks_sync(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    return [_public(row) for row in conn.execute(f"SELECT {_PUBLIC} FROM webhooks ORDER BY id")]  # noqa: S608


async def list_webhooks(db) -> list[dict[str, Any]]:
    rows = await db.fetchall(f"SELECT {_PUBLIC} FROM webhooks ORDER BY id LIMIT 1000")  # noqa: S608
    return [public_webhook(row) for row in rows]


async def get_webhook(db, webhook_id: int) -> dict[str, Any] | None:
    row = await db.fetchone(f"SELECT {_PUBLIC} FROM webhooks WHERE id = ?", (webhook_id,))  # noqa: S608
    return public_webhook(row) if row else None


_DELIVERY_COLUMNS = (
    "d.id, d.delivery_id, d.webhook_id, w.name AS webhook, d.event, d.subject, d.summary, d.status, d.attempts, "
    "d.next_attempt_at, d.last_status_code, d.last_error, d.created_at, d.delivered_at"
)


async def list_deliveries(db, webhook_id: int | None = None, limit: int = 50) -> list[dict[str, Any]]:
    """The delivery log, newest first (no bodies)."""
    where, params = ("WHERE d.webhook_id = ?", [webhook_id]) if webhook_id is not None else ("", [])
    return await db.fetchall(
        f"SELECT {_DELIVERY_COLUMNS} FROM deliveries d JOIN webhooks w ON w.id = d.webhook_id {where} "  # noqa: S608
        "ORDER BY d.id DESC LIMIT ?",
        [*params, limit],
    )


def list_deliveries_sync(conn: sqlite3.Connection, webhook_id: int | None = None, limit: int = 50) -> list[dict]:
    where, params = ("WHERE d.webhook_id = ?", [webhook_id]) if webhook_id is not None else ("", [])
    cursor = conn.execute(
        f"SELECT {_DELIVERY_COLUMNS} FROM deliveries d JOIN webhooks w ON w.id = d.webhook_id {where} "  # noqa: S608
        "ORDER BY d.id DESC LIMIT ?",
        [*params, limit],
    )
    names = [c[0] for c in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor]


def retry_delivery_tx(conn: sqlite3.Connection, delivery_id: int, now: float) -> bool:
    """Send a delivery again now (a given-up one too); its id and body stay the same."""
    return conn.execute(
        "UPDATE deliveries SET status = 'pending', next_attempt_at = ?, lease_until = NULL "
        "WHERE id = ? AND status != 'delivered'",
        (now, delivery_id),
    ).rowcount > 0
