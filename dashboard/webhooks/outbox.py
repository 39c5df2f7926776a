"""The outbox: what changed (written with the results), and the composer that turns it into deliveries.

Ingest side (called by the ingester's store on its writer connection, INSIDE the transaction that
stores the results, so what is noticed commits or rolls back with them):

- :func:`record_changes` — tests that started failing (``new_failure``) or pass again (``fixed``)
  on a minion, from the ``test_status`` transitions the store computes anyway (a failing streak
  opened or closed: see :func:`change_kind`).
- :func:`record_manifest` — a job manifest arrived: that job gets one message once every targeted
  minion returned or ``DISTMON_WEBHOOK_JOB_WAIT`` expired.
- :func:`record_quarantined` — files the ingester refused.

Composer side: :func:`compose_due` (one write transaction) turns due jobs and groups into one
``deliveries`` row per webhook and marks their events composed; :func:`check_late_tx` notices
minions late beyond their expected interval (once per silence) and those reporting again;
:func:`queue_digest_tx` and :func:`queue_ping_tx` queue a digest or a test message.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import uuid
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

from dashboard.models import format_timestamp
from dashboard.queries import parse_iso
from dashboard.webhooks import messages

log = logging.getLogger(__name__)

# Composed events and finished deliveries are kept this long (the digest reads the last day).
KEEP_DAYS = 30


class TestChange(NamedTuple):
    """One test's verdict changed on one minion in one run."""

    kind: str  # new_failure | fixed
    jid: str
    minion: str
    nodeid: str
    run_id: int
    message: str | None = None
    signature: str | None = None  # the failure's signature (dashboard/signatures.py), new failures only


def change_kind(was_failing: bool, is_failing: bool) -> str | None:
    """``new_failure`` when a failing streak opens, ``fixed`` when one closes, else None.

    "Failing" is ``test_status.first_fail_at`` being set: the latest pass/fail verdict of that test
    on that minion is a failure (skips in between change nothing). A test that fails the first
    time it runs on a minion is a new failure there.
    """
    if is_failing and not was_failing:
        return "new_failure"
    if was_failing and not is_failing:
        return "fixed"
    return None


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")




# -- ingest side (inside the ingester's transaction) --------------------------------------------


def record_changes(conn: sqlite3.Connection, changes: Iterable[TestChange], now: str) -> int:
    """Insert the changes of one ingest transaction; returns how many."""
    rows = [(c.kind, c.jid, c.minion, c.nodeid, c.run_id, (c.message or "")[:500] or None, c.signature, now)
            for c in changes]
    if rows:
        conn.executemany(
            "INSERT INTO outbox_events (kind, jid, minion, nodeid, run_id, detail, signature, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
    return len(rows)


def record_manifest(conn: sqlite3.Connection, jid: str, now: str) -> None:
    """A job manifest was stored: the job waits for its minions before its one message."""
    conn.execute("INSERT INTO outbox_jobs (jid, state, created_at) VALUES (?, 'waiting', ?) ON CONFLICT (jid) DO NOTHING",
                 (jid, now))


def record_quarantined(conn: sqlite3.Connection, items: Iterable[tuple[str, str]], now: str) -> int:
    """Files the ingester quarantined, as (inbox entry, reason)."""
    rows = [("quarantined", None, None, entry[:300], None, reason[:500], now) for entry, reason in items]
    if rows:
        conn.executemany(
            "INSERT INTO outbox_events (kind, jid, minion, nodeid, run_id, detail, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
    return len(rows)


# -- muting ------------------------------------------------------------------------------------


def _mute_filter(conn: sqlite3.Connection, now: datetime) -> Callable[[str, str | None, str | None], bool]:
    """``muted(nodeid, minion, signature)``: True when an active triage mute (of the test or of the
    failure's signature, on all minions or those whose grains match) covers that failure."""
    from dashboard.triage import load_mutes

    mutes = load_mutes(conn, now)
    if not mutes:
        return lambda nodeid, minion, signature: False
    grains: dict[str, dict] = {}

    def muted(nodeid: str, minion: str | None, signature: str | None) -> bool:
        if minion not in grains:
            row = conn.execute("SELECT grains FROM minions WHERE name = ?", (minion,)).fetchone()
            try:
                grains[minion] = json.loads(row[0]) if row and row[0] else {}
            except ValueError:
                grains[minion] = {}
        return mutes.covers(signature, nodeid, grains[minion])

    return muted


# -- composing -----------------------------------------------------------------------------------


class Hook(NamedTuple):
    id: int
    format: str
    events: list[str]


def _hooks(conn: sqlite3.Connection) -> list[Hook]:
    return [Hook(row[0], row[1], json.loads(row[2] or "[]"))
            for row in conn.execute("SELECT id, format, events FROM webhooks WHERE enabled = 1 ORDER BY id")]


def queue_message(conn: sqlite3.Connection, hooks: Iterable[Hook], facts: dict[str, Any], subject: str | None,
                  base_url: str, now: datetime) -> int:
    """One delivery per webhook that wants part of ``facts``; returns how many were queued."""
    queued = 0
    created = iso(now)
    for hook in hooks:
        picked = messages.select(facts, hook.events)
        if picked is None:
            continue
        delivery_id = str(uuid.uuid4())
        body = messages.render(picked, hook.format, delivery_id, created, base_url)
        conn.execute(
            "INSERT INTO deliveries (delivery_id, webhook_id, event, subject, summary, body, next_attempt_at, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (delivery_id, hook.id, facts["event"], (subject or "")[:300] or None, messages.summary(picked)[:300],
             body.decode("utf-8"), now.timestamp(), created),
        )
        queued += 1
    return queued


def _net_changes(rows: list[tuple], muted) -> tuple[list[dict], list[dict]]:
    """Events (id, kind, minion, nodeid, detail, signature) -> (new failures, fixed), aggregated per test.

    Several changes of one test on one minion in a group cancel out when it ends where it began.
    """
    per_pair: dict[tuple[str, str], list[tuple]] = {}
    for row in sorted(rows, key=lambda r: r[0]):
        per_pair.setdefault((row[2], row[3]), []).append(row)
    new: dict[str, dict] = {}
    fixed: dict[str, dict] = {}
    for (minion, nodeid), seq in per_pair.items():
        first, last = seq[0][1], seq[-1][1]
        if first != last:
            continue  # failed then fixed (or the reverse) within the group: no change to tell
        if last == "new_failure":
            message = next((r[4] for r in reversed(seq) if r[4]), None)
            signature = next((r[5] for r in reversed(seq) if r[5]), None)
            if muted(nodeid, minion, signature):
                continue  # muted in triage: nothing is sent about it
            item = new.setdefault(nodeid, {"nodeid": nodeid, "minions": [], "message": message, "signature": signature})
        else:
            item = fixed.setdefault(nodeid, {"nodeid": nodeid, "minions": []})
        item["minions"].append(minion)
    for item in (*new.values(), *fixed.values()):
        item["minions"].sort()
    order = lambda item: (-len(item["minions"]), item["nodeid"])  # noqa: E731
    return sorted(new.values(), key=order), sorted(fixed.values(), key=order)


def _mark_new_signatures(conn: sqlite3.Connection, new: list[dict], jids: list[str]) -> None:
    """``new_signature``: the failure's signature first appeared in this message's job(s) anywhere in the
    fleet (a new failure mode), as opposed to a known one reaching more minions."""
    for item in new:
        item["new_signature"] = False
        if item.get("signature"):
            row = conn.execute("SELECT r.jid FROM signatures s JOIN runs r ON r.id = s.first_run_id "
                               "WHERE s.signature = ?", (item["signature"],)).fetchone()
            item["new_signature"] = bool(row and row[0] in jids)


def _returned(conn: sqlite3.Connection, jids: list[str]) -> list[str]:
    names: set[str] = set()
    for jid in jids:
        names.update(row[0] for row in conn.execute(
            "SELECT m.name FROM runs r JOIN minions m ON m.id = r.minion_id WHERE r.jid = ?", (jid,)))
    return sorted(names)


def _rerun_of(conn: sqlite3.Connection, jid: str) -> str | None:
    row = conn.execute("SELECT rerun_of FROM runs WHERE jid = ? AND rerun_of IS NOT NULL LIMIT 1", (jid,)).fetchone()
    return row[0] if row else None


def _mark_composed(conn: sqlite3.Connection, ids: list[int], now: str) -> None:
    conn.executemany("UPDATE outbox_events SET composed_at = ? WHERE id = ?", [(now, i) for i in ids])


def _compose_job(conn, hooks, jid: str, job: tuple | None, expired: bool, muted, base_url: str, now: datetime) -> int:
    fun, tgt, targeted_json = job if job else (None, None, "[]")
    targeted = sorted(json.loads(targeted_json or "[]"))
    returned = _returned(conn, [jid])
    events = conn.execute(
        "SELECT id, kind, minion, nodeid, detail, signature FROM outbox_events WHERE jid = ? AND composed_at IS NULL "
        "AND kind IN ('new_failure', 'fixed')",
        (jid,),
    ).fetchall()
    new, fixed = _net_changes(events, muted)
    _mark_new_signatures(conn, new, [jid])
    missing = sorted(set(targeted) - set(returned)) if expired else []
    facts = {"event": "job", "jid": jid, "fun": fun, "tgt": tgt, "targeted": targeted, "returned": returned,
             "missing": missing, "rerun_of": _rerun_of(conn, jid), "new_failures": new, "fixed": fixed}
    queued = queue_message(conn, hooks, facts, jid, base_url, now) if (new or fixed or missing) else 0
    stamp = iso(now)
    _mark_composed(conn, [row[0] for row in events], stamp)
    conn.execute("UPDATE outbox_jobs SET state = 'done', composed_at = ? WHERE jid = ?", (stamp, jid))
    return queued


def _compose_group(conn, hooks, rows: list[tuple], muted, base_url: str, now: datetime) -> int:
    """Events without a waiting manifest (another job's late results, scheduled runs, quarantine)."""
    changes = [(r[0], r[1], r[3], r[4], r[5], r[7]) for r in rows if r[1] in ("new_failure", "fixed")]
    jids = sorted({r[2] for r in rows if r[2] and r[1] in ("new_failure", "fixed")})
    new, fixed = _net_changes(changes, muted)
    _mark_new_signatures(conn, new, jids)
    quarantined = [{"file": r[4], "reason": r[5]} for r in rows if r[1] == "quarantined"]
    facts: dict[str, Any] = {"event": "group", "jid": jids[0] if len(jids) == 1 else None, "jids": jids,
                             "targeted": [], "returned": _returned(conn, jids), "missing": [],
                             "rerun_of": _rerun_of(conn, jids[0]) if len(jids) == 1 else None,
                             "new_failures": new, "fixed": fixed, "quarantined": quarantined}
    queued = 0
    if new or fixed or quarantined:
        queued = queue_message(conn, hooks, facts, ",".join(jids)[:300] or "quarantine", base_url, now)
    _mark_composed(conn, [r[0] for r in rows], iso(now))
    return queued


def compose_due(conn: sqlite3.Connection, job_wait: float, group_window: float, base_url: str,
                now: datetime | None = None) -> int:
    """Compose every due job and group into deliveries (run it inside a write transaction)."""
    now = now or datetime.now(UTC)
    hooks = _hooks(conn)
    muted = _mute_filter(conn, now)
    queued = 0
    waiting = conn.execute(
        "SELECT o.jid, o.created_at, j.fun, j.tgt, j.targeted, j.started_at, j.jid IS NOT NULL "
        "FROM outbox_jobs o LEFT JOIN jobs j ON j.jid = o.jid WHERE o.state = 'waiting'"
    ).fetchall()
    for jid, created_at, fun, tgt, targeted_json, started_at, has_job in waiting:
        due, expired = job_due(targeted_json, started_at, created_at, _returned(conn, [jid]), now, job_wait)
        if not due:
            continue
        queued += _compose_job(conn, hooks, jid, (fun, tgt, targeted_json) if has_job else None, expired, muted,
                               base_url, now)
    rows = conn.execute(
        "SELECT e.id, e.kind, e.jid, e.minion, e.nodeid, e.detail, e.created_at, e.signature FROM outbox_events e "
        "WHERE e.composed_at IS NULL AND (e.jid IS NULL OR e.jid NOT IN "
        "(SELECT jid FROM outbox_jobs WHERE state = 'waiting')) ORDER BY e.id"
    ).fetchall()
    if rows:
        oldest = min(parse_iso(r[6]) or now for r in rows)
        if now >= oldest + timedelta(seconds=group_window):
            queued += _compose_group(conn, hooks, [tuple(r) for r in rows], muted, base_url, now)
    return queued


def job_due(targeted_json: str | None, started_at: str | None, created_at: str | None, returned: list[str],
            now: datetime, job_wait: float) -> tuple[bool, bool]:
    """(due, wait expired) for a job with a manifest: every targeted minion returned, or the wait is over."""
    targeted = set(json.loads(targeted_json or "[]"))
    since = parse_iso(started_at) or parse_iso(created_at) or now
    # Waited from the later of the job's start and the manifest's arrival: a manifest that
    # reaches the host late still gives its minions the whole wait.
    since = max(since, parse_iso(created_at) or since)
    expired = now >= since + timedelta(seconds=job_wait)
    return expired or targeted <= set(returned), expired


async def anything_due(db, job_wait: float, group_window: float, now: datetime | None = None) -> bool:
    """Whether :func:`compose_due` has work, read on reader connections (no write lock while jobs wait)."""
    now = now or datetime.now(UTC)
    oldest = parse_iso(await db.fetchval(
        "SELECT MIN(created_at) FROM outbox_events WHERE composed_at IS NULL AND (jid IS NULL OR jid NOT IN "
        "(SELECT jid FROM outbox_jobs WHERE state = 'waiting'))"))
    if oldest is not None and (now - oldest).total_seconds() >= group_window:
        return True
    waiting = await db.fetchall(
        "SELECT o.jid, o.created_at, j.targeted, j.started_at FROM outbox_jobs o LEFT JOIN jobs j ON j.jid = o.jid "
        "WHERE o.state = 'waiting' LIMIT 1000")
    for job in waiting:
        returned = [row["name"] for row in await db.fetchall(
            "SELECT m.name FROM runs r JOIN minions m ON m.id = r.minion_id WHERE r.jid = ?", (job["jid"],))]
        if job_due(job["targeted"], job["started_at"], job["created_at"], returned, now, job_wait)[0]:
            return True
    return False


# -- late minions ----------------------------------------------------------------------------------


def late_changes(rows: list[dict], alerted: dict[int, str], now: datetime) -> tuple[list[dict], list[dict]]:
    """(newly late, reporting again) among minion rows (queries' _MINION_SQL), given who was told about."""
    from dashboard.queries import _minion_state  # the fleet page's own lateness rule

    late, back = [], []
    for row in rows:
        state = _minion_state(row, now)
        told = alerted.get(row["id"])
        if state["late"] and told != row["last_seen"]:
            late.append({"id": row["id"], "minion": row["name"], "last_seen": row["last_seen"],
                         "silent_for": state["silent_for"], "expected_interval": state["expected_interval"]})
        elif told is not None and not state["late"]:
            back.append({"id": row["id"], "minion": row["name"], "last_seen": row["last_seen"]})
    return late, back


def _late_candidates_sql() -> str:
    """The minions that may be late or back: past their stored ``late_after`` (index
    minions_late_after; the ingester stores it by the same rule) or told about before. Not every
    minion: at 10,000 of them that read took ~0.5 s every minute."""
    from dashboard.queries import _MINION_SQL

    return f"{_MINION_SQL} WHERE m.late_after < ? OR m.id IN (SELECT minion_id FROM late_alerts)"  # noqa: S608


def check_late_tx(conn: sqlite3.Connection, base_url: str, now: datetime | None = None) -> int:
    """Tell once per silence that a minion is late (the fleet page's rule), and when it reports again."""
    now = now or datetime.now(UTC)
    cursor = conn.execute(_late_candidates_sql(), (format_timestamp(now),))
    names = [c[0] for c in cursor.description]
    rows = [dict(zip(names, values, strict=True)) for values in cursor.fetchall()]
    alerted = {row[0]: row[1] for row in conn.execute("SELECT minion_id, last_seen FROM late_alerts")}
    late, back = late_changes(rows, alerted, now)
    if not late and not back:
        return 0
    stamp = iso(now)
    conn.executemany("INSERT INTO late_alerts (minion_id, last_seen, alerted_at) VALUES (?, ?, ?) "
                     "ON CONFLICT (minion_id) DO UPDATE SET last_seen = excluded.last_seen, "
                     "alerted_at = excluded.alerted_at", [(item["id"], item["last_seen"], stamp) for item in late])
    conn.executemany("DELETE FROM late_alerts WHERE minion_id = ?", [(item["id"],) for item in back])
    facts = {"event": "minion_late", "late": [{k: v for k, v in item.items() if k != "id"} for item in late],
             "back": [{k: v for k, v in item.items() if k != "id"} for item in back]}
    subject = ",".join(item["minion"] for item in late + back)
    return queue_message(conn, _hooks(conn), facts, subject, base_url, now)


async def late_check_due(db, now: datetime | None = None) -> bool:
    """Whether :func:`check_late_tx` has anything to tell, read on reader connections (no write lock)."""
    now = now or datetime.now(UTC)
    rows = await db.fetchall(f"{_late_candidates_sql()} LIMIT 1000000", (format_timestamp(now),), timeout=30)
    alerted = {row["minion_id"]: row["last_seen"]
               for row in await db.fetchall("SELECT minion_id, last_seen FROM late_alerts LIMIT 1000000")}
    late, back = late_changes(rows, alerted, now)
    return bool(late or back)


def prune_tx(conn: sqlite3.Connection, now: datetime | None = None) -> None:
    """Forget composed events and finished deliveries older than :data:`KEEP_DAYS`."""
    cutoff = now or datetime.now(UTC)
    cutoff -= timedelta(days=KEEP_DAYS)
    conn.execute("DELETE FROM outbox_events WHERE composed_at IS NOT NULL AND created_at < ?", (iso(cutoff),))
    conn.execute("DELETE FROM outbox_jobs WHERE state = 'done' AND created_at < ?", (iso(cutoff),))
    conn.execute("DELETE FROM deliveries WHERE status != 'pending' AND created_at < ?", (iso(cutoff),))


# -- digest and test messages ----------------------------------------------------------------------


async def digest_facts(db, now: datetime | None = None) -> dict[str, Any]:
    """What the daily digest says (read on reader connections, outside any write)."""
    from dashboard.queries import late_minion_names

    now = now or datetime.now(UTC)
    since = iso(now - timedelta(days=1))
    failing = await db.fetchall(
        "SELECT t.nodeid, COUNT(*) AS minions FROM test_status ts JOIN tests t ON t.id = ts.test_id "
        "WHERE ts.first_fail_at IS NOT NULL GROUP BY ts.test_id, t.nodeid ORDER BY minions DESC, t.nodeid LIMIT 10",
        timeout=30,
    )
    failing_tests = await db.fetchval(
        "SELECT COUNT(DISTINCT test_id) FROM test_status WHERE first_fail_at IS NOT NULL", default=0, timeout=30)
    counts = {row["kind"]: row["n"] for row in await db.fetchall(
        "SELECT kind, COUNT(DISTINCT nodeid) AS n FROM outbox_events WHERE created_at >= ? GROUP BY kind", (since,))}
    flaky = await db.fetchall(
        "SELECT t.nodeid, SUM(ts.code_flips) AS flips FROM test_status ts JOIN tests t ON t.id = ts.test_id "
        "WHERE ts.flips > 0 AND ts.code_flips > 0 GROUP BY ts.test_id, t.nodeid ORDER BY flips DESC, t.nodeid LIMIT 5",
        timeout=30,
    )
    flaky_count = await db.fetchval(
        "SELECT COUNT(DISTINCT test_id) FROM test_status WHERE flips > 0 AND code_flips > 0", default=0, timeout=30)
    late = await late_minion_names(db, now)
    return {"event": "digest", "digest": {
        "date": now.strftime("%Y-%m-%d"), "failing_tests": failing_tests, "failing": failing,
        "new": counts.get("new_failure", 0), "fixed": counts.get("fixed", 0), "flaky": flaky_count,
        "flaky_tests": flaky, "late": late}}


def digests_due(conn: sqlite3.Connection, now: datetime) -> list[int]:
    today = now.strftime("%Y-%m-%d")
    return [row[0] for row in conn.execute(
        "SELECT id FROM webhooks WHERE enabled = 1 AND digest_hour IS NOT NULL AND digest_hour <= ? "
        "AND (last_digest_on IS NULL OR last_digest_on < ?)", (now.hour, today))]


def queue_digest_tx(conn: sqlite3.Connection, webhook_id: int, facts: dict, base_url: str, now: datetime) -> int:
    """Queue today's digest for one webhook, unless another process queued it already."""
    today = now.strftime("%Y-%m-%d")
    claimed = conn.execute(
        "UPDATE webhooks SET last_digest_on = ? WHERE id = ? AND (last_digest_on IS NULL OR last_digest_on < ?)",
        (today, webhook_id, today)).rowcount
    if not claimed:
        return 0
    hooks = [hook for hook in _hooks(conn) if hook.id == webhook_id]
    return queue_message(conn, hooks, facts, today, base_url, now)


def queue_ping_tx(conn: sqlite3.Connection, webhook_id: int, base_url: str, now: datetime | None = None) -> int:
    """A test message to one webhook (it goes through the outbox like every other)."""
    row = conn.execute("SELECT id, format, events FROM webhooks WHERE id = ?", (webhook_id,)).fetchone()
    if row is None:
        return 0
    hook = Hook(row[0], row[1], json.loads(row[2] or "[]"))
    return queue_message(conn, [hook], {"event": "ping"}, "test", base_url, now or datetime.now(UTC))
