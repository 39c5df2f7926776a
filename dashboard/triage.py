"""Triage actions: known issues on signatures, mutes (signature or test, all minions or a grain
match, always with an expiry), and the audit log of who did what when.

Every action is one function taking a ``sqlite3.Connection`` inside a write transaction (the app
runs them through ``Database.write``, the CLI ``python -m dashboard triage ...`` on its own
connection) and writes its ``triage_log`` row in that same transaction: an action without its
audit entry cannot happen.

Muted failures stay visible (marked) on every page; they leave the "failing now" figures, the
sick-host count and (through :func:`dashboard.failures.is_muted`) alerts.

.. code-block:: python

    await db.write(add_mute, "alice", kind="signature", target="3f2a...", expires="7d",
                   grain="osrelease", grain_value="11", reason="known kernel bug")
"""

from __future__ import annotations

import json
import re
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from dashboard.models import format_timestamp
from dashboard.signatures import is_signature

MUTE_KINDS = ("signature", "test")
MAX_MUTE_DAYS = 365
DEFAULT_MUTE = "7d"
MAX_NOTE_CHARS = 2000
MAX_URL_CHARS = 2000
MAX_NODEID_CHARS = 1000
MAX_GRAIN_CHARS = 200
_DURATION = re.compile(r"^(\d{1,4})\s*([mhdw])$")
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_GRAIN_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,100}$")


class TriageError(ValueError):
    """A triage request that cannot be done as asked (shown to the user as a 400 with this text)."""


def _now(now: datetime | None = None) -> datetime:
    return now or datetime.now(UTC)


def parse_expiry(value: str | None, now: datetime | None = None) -> str:
    """An expiry as a stored timestamp: ``7d``/``12h``/``30m``/``2w`` from now, or a date / ISO time.

    It must lie in the future and at most :data:`MAX_MUTE_DAYS` days ahead.
    """
    now = _now(now)
    text = (value or DEFAULT_MUTE).strip().lower()
    match = _DURATION.match(text)
    if match:
        moment = now + timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
    else:
        try:
            moment = datetime.fromisoformat(text.upper().replace("Z", "+00:00"))
        except ValueError:
            raise TriageError(f"Expiry {value!r}: give a duration (30m, 12h, 7d, 2w) or a date (YYYY-MM-DD).") from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
    if moment <= now:
        raise TriageError("The expiry must be in the future.")
    if moment > now + timedelta(days=MAX_MUTE_DAYS):
        raise TriageError(f"A mute lasts at most {MAX_MUTE_DAYS} days.")
    return format_timestamp(moment)


def check_url(url: str | None) -> str | None:
    """An issue link: http(s) only (a ``javascript:`` link would run in the viewer's session)."""
    url = (url or "").strip()
    if not url:
        return None
    if len(url) > MAX_URL_CHARS:
        raise TriageError(f"The link is longer than {MAX_URL_CHARS} characters.")
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc or any(c in url for c in "\r\n\t "):
        raise TriageError("The link must be an http:// or https:// URL.")
    return url


def _check_signature(signature: str) -> str:
    signature = (signature or "").strip().lower()
    if not is_signature(signature):
        raise TriageError("A signature is 16 hexadecimal digits.")
    return signature


def _log(conn: sqlite3.Connection, username: str, action: str, *, signature: str | None = None,
         test: str | None = None, detail: dict | None = None, now: datetime | None = None) -> int:
    cursor = conn.execute(
        "INSERT INTO triage_log (at, username, action, signature, test, detail) VALUES (?, ?, ?, ?, ?, ?)",
        (format_timestamp(_now(now)), username, action, signature, test, json.dumps(detail or {}, sort_keys=True)),
    )
    return cursor.lastrowid


def set_known_issue(conn: sqlite3.Connection, username: str, signature: str, note: str, url: str | None = None,
                    now: datetime | None = None) -> dict[str, Any]:
    """Attach (or replace) the known-issue note and link of a signature."""
    signature = _check_signature(signature)
    note = (note or "").strip()
    if not note:
        raise TriageError("Write a note: what is known about this failure.")
    if len(note) > MAX_NOTE_CHARS:
        raise TriageError(f"The note is longer than {MAX_NOTE_CHARS} characters.")
    url = check_url(url)
    if conn.execute("SELECT 1 FROM signatures WHERE signature = ?", (signature,)).fetchone() is None:
        raise TriageError(f"No failure has signature {signature}.")
    at = format_timestamp(_now(now))
    conn.execute(
        "INSERT INTO known_issues (signature, note, url, created_by, created_at, updated_by, updated_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (signature) DO UPDATE SET note = excluded.note, url = excluded.url, "
        "updated_by = excluded.updated_by, updated_at = excluded.updated_at",
        (signature, note, url, username, at, username, at),
    )
    _log(conn, username, "known-issue", signature=signature, detail={"note": note, "url": url}, now=now)
    return {"signature": signature, "note": note, "url": url}


def remove_known_issue(conn: sqlite3.Connection, username: str, signature: str, now: datetime | None = None) -> bool:
    signature = _check_signature(signature)
    removed = conn.execute("DELETE FROM known_issues WHERE signature = ?", (signature,)).rowcount
    if removed:
        _log(conn, username, "known-issue-removed", signature=signature, now=now)
    return bool(removed)


def add_mute(conn: sqlite3.Connection, username: str, *, kind: str, target: str, expires: str | None = None,
             grain: str | None = None, grain_value: str | None = None, reason: str = "",
             now: datetime | None = None) -> dict[str, Any]:
    """Mute a signature or a test, on every minion or on those whose ``grain`` matches ``grain_value``.

    A list grain (roles) matches when it contains the value. Returns the mute as stored.
    """
    if kind not in MUTE_KINDS:
        raise TriageError(f"Mute a 'signature' or a 'test', not {kind!r}.")
    target = (target or "").strip()
    signature = test = None
    if kind == "signature":
        target = signature = _check_signature(target)
        if conn.execute("SELECT 1 FROM signatures WHERE signature = ?", (target,)).fetchone() is None:
            raise TriageError(f"No failure has signature {target}.")
    else:
        if not target or len(target) > MAX_NODEID_CHARS:
            raise TriageError("Give the test id (nodeid) to mute.")
        if conn.execute("SELECT 1 FROM tests WHERE nodeid = ?", (target,)).fetchone() is None:
            raise TriageError(f"No test {target!r} has been seen.")
        test = target
    grain = (grain or "").strip() or None
    grain_value = (grain_value or "").strip() if grain else None
    if grain is not None:
        if not _GRAIN_NAME.match(grain):
            raise TriageError("A grain name is letters, digits and _ . : - (at most 100).")
        if not grain_value or len(grain_value) > MAX_GRAIN_CHARS:
            raise TriageError(f"Give the grain's value to match (at most {MAX_GRAIN_CHARS} characters).")
    reason = (reason or "").strip()[:MAX_NOTE_CHARS]
    expires_at = parse_expiry(expires, now)
    at = format_timestamp(_now(now))
    mute_id = conn.execute(
        "INSERT INTO mutes (kind, target, grain, grain_value, reason, created_by, created_at, expires_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (kind, target, grain, grain_value, reason, username, at, expires_at),
    ).lastrowid
    mute = {"id": mute_id, "kind": kind, "target": target, "grain": grain, "grain_value": grain_value,
            "reason": reason, "created_by": username, "created_at": at, "expires_at": expires_at}
    _log(conn, username, "mute", signature=signature, test=test,
         detail={k: mute[k] for k in ("id", "kind", "target", "grain", "grain_value", "reason", "expires_at")}, now=now)
    return mute


def remove_mute(conn: sqlite3.Connection, username: str, mute_id: int, now: datetime | None = None) -> dict[str, Any]:
    """End a mute now (it stays in the table, with who removed it and when)."""
    row = conn.execute(
        "SELECT id, kind, target, removed_at FROM mutes WHERE id = ?", (int(mute_id),)
    ).fetchone()
    if row is None:
        raise TriageError(f"No mute {mute_id}.")
    if row[3] is not None:
        raise TriageError(f"Mute {mute_id} was already removed.")
    at = format_timestamp(_now(now))
    conn.execute("UPDATE mutes SET removed_by = ?, removed_at = ? WHERE id = ?", (username, at, row[0]))
    kind, target = row[1], row[2]
    _log(conn, username, "unmute", signature=target if kind == "signature" else None,
         test=target if kind == "test" else None, detail={"id": row[0], "kind": kind, "target": target}, now=now)
    return {"id": row[0], "removed_by": username, "removed_at": at}


def _grain_matches(grains: dict[str, Any], name: str, value: str) -> bool:
    actual = grains.get(name)
    if isinstance(actual, list):
        return any(str(item) == value for item in actual)
    return actual is not None and str(actual) == value


@dataclass(frozen=True)
class Mute:
    id: int
    kind: str
    target: str
    grain: str | None
    grain_value: str | None
    expires_at: str


class MuteSet:
    """The active mutes, for matching failures: ``covers(signature, nodeid, grains)``."""

    def __init__(self, mutes: list[Mute]):
        self.mutes = mutes
        self._by_target: dict[tuple[str, str], list[Mute]] = {}
        for mute in mutes:
            self._by_target.setdefault((mute.kind, mute.target), []).append(mute)

    def __bool__(self) -> bool:
        return bool(self.mutes)

    def covering(self, signature: str | None, nodeid: str | None, grains: dict[str, Any]) -> list[Mute]:
        found = []
        for key in (("signature", signature), ("test", nodeid)):
            if key[1] is None:
                continue
            for mute in self._by_target.get(key, ()):
                if mute.grain is None or _grain_matches(grains or {}, mute.grain, mute.grain_value or ""):
                    found.append(mute)
        return found

    def covers(self, signature: str | None, nodeid: str | None, grains: dict[str, Any]) -> bool:
        """True when an active mute of this signature or this test applies to a minion with ``grains``."""
        return bool(self._by_target) and bool(self.covering(signature, nodeid, grains))


_ACTIVE_SQL = (
    "SELECT id, kind, target, grain, grain_value, expires_at FROM mutes "
    "WHERE removed_at IS NULL AND expires_at > ? ORDER BY id LIMIT 10000"
)


def load_mutes(conn: sqlite3.Connection, now: datetime | None = None) -> MuteSet:
    """The mutes active at ``now`` (default: now), from a synchronous connection."""
    rows = conn.execute(_ACTIVE_SQL, (format_timestamp(_now(now)),)).fetchall()
    return MuteSet([Mute(*tuple(row)) for row in rows])


async def active_mutes(db, now: datetime | None = None) -> MuteSet:
    """The mutes active at ``now``, through the app's reader pool."""
    rows = await db.fetchall(_ACTIVE_SQL, (format_timestamp(_now(now)),))
    return MuteSet([Mute(r["id"], r["kind"], r["target"], r["grain"], r["grain_value"], r["expires_at"]) for r in rows])


async def list_mutes(db, *, include_inactive: bool = False, limit: int = 200) -> list[dict[str, Any]]:
    now = format_timestamp(_now())
    sql = ("SELECT id, kind, target, grain, grain_value, reason, created_by, created_at, expires_at, removed_by, "
           "removed_at FROM mutes")
    params: list[Any] = []
    if not include_inactive:
        sql += " WHERE removed_at IS NULL AND expires_at > ?"
        params.append(now)
    rows = await db.fetchall(sql + " ORDER BY id DESC LIMIT ?", (*params, limit))
    for row in rows:
        row["active"] = row["removed_at"] is None and row["expires_at"] > now
    return rows


async def triage_log(db, *, limit: int = 200, before: int | None = None) -> list[dict[str, Any]]:
    """The audit log, newest first."""
    sql = "SELECT id, at, username, action, signature, test, detail FROM triage_log"
    params: list[Any] = []
    if before:
        sql += " WHERE id < ?"
        params.append(before)
    rows = await db.fetchall(sql + " ORDER BY id DESC LIMIT ?", (*params, limit))
    for row in rows:
        try:
            row["detail"] = json.loads(row["detail"])
        except ValueError:
            row["detail"] = {}
    return rows
