"""The sender: an asyncio task of the app (like the ingester) that composes and POSTs deliveries.

Every ``DISTMON_WEBHOOK_POLL`` seconds it asks two cheap read queries whether a job or group may
be due; only then does it open a write transaction to compose (:func:`outbox.compose_due`). Due
deliveries are leased in one transaction (``attempts`` counted at the lease, so a crash mid-send
still counts), sent concurrently across webhooks and in order within one, and their outcome
recorded. A failure (connection refused, timeout, non-2xx answer) is retried after
``DISTMON_WEBHOOK_RETRY_BASE * 2**(attempts-1)`` seconds, capped at ``DISTMON_WEBHOOK_RETRY_MAX``,
until ``DISTMON_WEBHOOK_MAX_ATTEMPTS``; then the delivery is ``failed`` (the page can retry it).
Nothing here raises out of the loop: a bad URL is a logged failed delivery, never a dead sender.

Headers of every POST: ``Content-Type: application/json``, ``User-Agent: distmon-webhook/1``,
``X-Distmon-Delivery`` (stable across retries: dedupe on it), ``X-Distmon-Event``,
``X-Distmon-Attempt`` and ``X-Distmon-Signature: sha256=<hex>`` over the exact body.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, NamedTuple

import httpx

from dashboard.config import Settings
from dashboard.db import Database
from dashboard.webhooks import outbox
from dashboard.webhooks.messages import sign_body

log = logging.getLogger(__name__)

USER_AGENT = "distmon-webhook/1"
# A lease outlives one attempt by a wide margin; after a crash the delivery is due again then.
LEASE_SECONDS = 60.0
CLAIM_LIMIT = 100
LATE_CHECK_SECONDS = 60.0
DIGEST_CHECK_SECONDS = 60.0
PRUNE_SECONDS = 3600.0


class Claimed(NamedTuple):
    id: int
    delivery_id: str
    event: str
    body: str
    attempts: int
    webhook_id: int
    url: str
    secret: str


class Outcome(NamedTuple):
    ok: bool
    status_code: int | None
    error: str | None


def claim_due_tx(conn: sqlite3.Connection, now: float, timeout: float = 10.0, limit: int = CLAIM_LIMIT) -> list[Claimed]:
    """Lease the due deliveries of enabled webhooks (oldest first); ``attempts`` counts this one.

    Deliveries of one webhook go one after the other, so the n-th one's lease covers n attempts.
    """
    rows = conn.execute(
        "SELECT d.id, d.delivery_id, d.event, d.body, d.attempts + 1, w.id, w.url, w.secret "
        "FROM deliveries d JOIN webhooks w ON w.id = d.webhook_id "
        "WHERE d.status = 'pending' AND d.next_attempt_at <= ? AND (d.lease_until IS NULL OR d.lease_until < ?) "
        "AND w.enabled = 1 ORDER BY d.id LIMIT ?",
        (now, now, limit),
    ).fetchall()
    position: dict[int, int] = {}
    leases = []
    for row in rows:
        position[row[5]] = position.get(row[5], 0) + 1
        leases.append((now + LEASE_SECONDS + timeout * position[row[5]], row[0]))
    conn.executemany("UPDATE deliveries SET attempts = attempts + 1, lease_until = ? WHERE id = ?", leases)
    return [Claimed(*row) for row in rows]


def release_leases_tx(conn: sqlite3.Connection) -> int:
    """At start: leases held by a process that died (SIGKILL mid-send) are released now.

    The app is the only sender of its database (one process, like the ingester's single writer);
    should another hold a lease at that moment, the receiver sees the same delivery id twice.
    """
    return conn.execute("UPDATE deliveries SET lease_until = NULL WHERE status = 'pending' AND lease_until IS NOT NULL"
                        ).rowcount


def backoff(attempts: int, base: float, cap: float) -> float:
    """Seconds before the next attempt after ``attempts`` failed ones."""
    return min(cap, base * (2 ** max(0, attempts - 1)))


def finish_tx(conn: sqlite3.Connection, claimed: Claimed, outcome: Outcome, settings: Settings, now: float) -> str:
    """Record one attempt's outcome; returns the delivery's new status."""
    if outcome.ok:
        conn.execute(
            "UPDATE deliveries SET status = 'delivered', lease_until = NULL, last_status_code = ?, last_error = NULL, "
            "delivered_at = ? WHERE id = ?",
            (outcome.status_code, outbox.iso(datetime.fromtimestamp(now, UTC)), claimed.id),
        )
        return "delivered"
    attempts = conn.execute("SELECT attempts FROM deliveries WHERE id = ?", (claimed.id,)).fetchone()
    attempts = attempts[0] if attempts else claimed.attempts
    status = "failed" if attempts >= settings.webhook_max_attempts else "pending"
    conn.execute(
        "UPDATE deliveries SET status = ?, lease_until = NULL, last_status_code = ?, last_error = ?, "
        "next_attempt_at = ? WHERE id = ?",
        (status, outcome.status_code, (outcome.error or "")[:500],
         now + backoff(attempts, settings.webhook_retry_base, settings.webhook_retry_max), claimed.id),
    )
    return status


async def post(client: httpx.AsyncClient, claimed: Claimed) -> Outcome:
    """POST one delivery; never raises (every failure becomes an Outcome with its error)."""
    body = claimed.body.encode("utf-8")
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "X-Distmon-Delivery": claimed.delivery_id,
        "X-Distmon-Event": claimed.event,
        "X-Distmon-Attempt": str(claimed.attempts),
        "X-Distmon-Signature": sign_body(claimed.secret, body),
    }
    try:
        response = await client.post(claimed.url, content=body, headers=headers)
    except httpx.HTTPError as err:
        return Outcome(False, None, f"{type(err).__name__}: {err}" if str(err) else type(err).__name__)
    except Exception as err:  # an URL httpx cannot even build a request for, a bug in a transport
        return Outcome(False, None, f"{type(err).__name__}: {err}")
    if 200 <= response.status_code < 300:
        return Outcome(True, response.status_code, None)
    snippet = response.text[:200].replace("\n", " ") if response.content else ""
    return Outcome(False, response.status_code, f"HTTP {response.status_code}{': ' + snippet if snippet else ''}")


class Sender:
    """State of one sender task: its HTTP client, when it last checked late minions and digests."""

    def __init__(self, db: Database, settings: Settings, client: httpx.AsyncClient | None = None):
        self.db = db
        self.settings = settings
        self.client = client
        self.next_late = 0.0
        self.next_digest = 0.0
        self.next_prune = time.monotonic() + PRUNE_SECONDS

    async def compose(self) -> int:
        """Compose due jobs/groups when the reads say something is due (the write lock only then)."""
        s = self.settings
        if not await outbox.anything_due(self.db, s.webhook_job_wait, s.webhook_group_window):
            return 0
        return await self.db.write(outbox.compose_due, s.webhook_job_wait, s.webhook_group_window, s.public_url)

    async def periodic(self) -> None:
        tick = time.monotonic()
        if tick >= self.next_late:
            self.next_late = tick + LATE_CHECK_SECONDS
            # Read first: the write (and its lock) only when a minion went late or came back.
            if await outbox.late_check_due(self.db):
                await self.db.write(outbox.check_late_tx, self.settings.public_url)
        if tick >= self.next_digest:
            self.next_digest = tick + DIGEST_CHECK_SECONDS
            now = datetime.now(UTC)
            due = await self.db.write(outbox.digests_due, now)
            if due:
                facts = await outbox.digest_facts(self.db, now)
                for webhook_id in due:
                    await self.db.write(outbox.queue_digest_tx, webhook_id, facts, self.settings.public_url, now)
        if tick >= self.next_prune:
            self.next_prune = tick + PRUNE_SECONDS
            await self.db.write(outbox.prune_tx)

    async def send_due(self) -> dict[str, int]:
        """Lease, send and record every due delivery; returns counts by new status."""
        claimed = await self.db.write(claim_due_tx, time.time(), self.settings.webhook_timeout)
        if not claimed:
            return {}
        by_hook: dict[int, list[Claimed]] = {}
        for item in claimed:
            by_hook.setdefault(item.webhook_id, []).append(item)
        results = await asyncio.gather(*(self._send_in_order(items) for items in by_hook.values()))
        counts: dict[str, int] = {}
        for statuses in results:
            for status in statuses:
                counts[status] = counts.get(status, 0) + 1
        return counts

    async def _send_in_order(self, items: Sequence[Claimed]) -> list[str]:
        statuses = []
        for item in items:
            outcome = await post(self.client, item)
            if outcome.ok and self.settings.test_crash_after_send:
                # Test hook: die after the receiver accepted, before that is recorded (the
                # receiver then sees the same delivery id again and must dedupe on it).
                os._exit(98)
            if not outcome.ok:
                log.warning("webhook %s: delivery %s (%s) attempt %d failed: %s", item.webhook_id, item.delivery_id,
                            item.event, item.attempts, outcome.error)
            status = await self.db.write(finish_tx, item, outcome, self.settings, time.time())
            if status == "failed":
                log.error("webhook %s: delivery %s given up after %d attempts: %s", item.webhook_id,
                          item.delivery_id, item.attempts, outcome.error)
            statuses.append(status)
        return statuses

    async def step(self) -> dict[str, Any]:
        """One round: periodic checks, compose, send. Used by the loop and by tests."""
        await self.periodic()
        composed = await self.compose()
        sent = await self.send_due()
        return {"composed": composed, **sent}


def http_client(settings: Settings) -> httpx.AsyncClient:
    # No redirects (a 3xx is a failure to look at, not a hop elsewhere); no proxy from the environment.
    return httpx.AsyncClient(timeout=settings.webhook_timeout, follow_redirects=False, trust_env=False)


async def run_sender(db: Database, settings: Settings, stop: asyncio.Event) -> None:
    """Compose and send until ``stop`` is set; never dies of an error (logs it and goes on)."""
    interval = max(0.05, float(settings.webhook_poll))
    async with http_client(settings) as client:
        sender = Sender(db, settings, client)
        try:
            released = await db.write(release_leases_tx)
        except Exception:
            log.exception("could not release old delivery leases; they expire on their own")
            released = 0
        if released:
            log.info("webhook sender: %d deliveries interrupted by the last stop are due again", released)
        while not stop.is_set():
            try:
                await sender.step()
                pause = interval
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("webhook sender round failed; retrying in %.1f s", max(interval, 1.0))
                pause = max(interval, 1.0)
            try:
                await asyncio.wait_for(stop.wait(), timeout=pause)
            except TimeoutError:
                pass
