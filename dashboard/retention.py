"""Retention: delete runs (and their results) older than an age, keeping the summaries usable.

.. code-block:: bash

    python -m dashboard prune --older-than 90d

What stays consistent after a prune:

- ``counters`` ``runs`` and ``results`` go down by what was deleted;
- ``minions.runs`` goes down, ``minions.last_run_id`` / ``grains`` point at the newest run left
  (NULL when none is left; the minion itself and its first/last seen times are kept), and its
  newest status, lateness and grains rows follow;
- ``test_status`` rows whose latest run was deleted (the test did not run on that minion inside
  the kept window) are removed; other rows keep their lifetime counters (runs, fails, flips,
  total_duration count everything ever ingested, not only what is retained); the fleet
  summaries (``minions`` counts, ``file_status``, ``test_totals``) lose what the removed rows
  contributed (dashboard/ingest/store.py);
- a failure text (``failure_texts``, dashboard/failure_texts.py) no kept result points at any more
  is deleted, and with it its entry in the search index: search only ever finds kept failures.

Runs are deleted in chunks, one short write transaction each, so the app's ingester and its
logins never wait long behind a prune. On PostgreSQL ``results`` is partitioned by month of the
run's start: every month wholly older than the cutoff is dropped as a table first (no row by row
delete), then the runs go as above.
"""

from __future__ import annotations

import re
import sqlite3
from datetime import UTC, datetime, timedelta

from dashboard.db import Database
from dashboard.dialect import POSTGRES
from dashboard.failure_texts import drop_unreferenced_texts, texts_of_runs
from dashboard.ingest.store import (
    FleetCountsDelta,
    forget_pruned_status,
    refresh_job_totals,
    refresh_pruned_minions,
)
from dashboard.models import format_timestamp

PRUNE_CHUNK = 500
_AGE = re.compile(r"^\s*(\d+)\s*([smhdw]?)\s*$", re.IGNORECASE)
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks", "": "days"}


def parse_age(text: str) -> timedelta:
    """``"90d"`` -> 90 days. Units: s, m, h, d (default), w. Raises ValueError on anything else."""
    match = _AGE.match(text or "")
    if not match:
        raise ValueError(f"not an age: {text!r} (examples: 90d, 12h, 2w)")
    amount, unit = int(match.group(1)), match.group(2).lower()
    try:
        return timedelta(**{_UNITS[unit]: amount})
    except OverflowError:
        raise ValueError(f"age too large: {text!r}") from None


def _prune_chunk(conn: sqlite3.Connection, cutoff: str) -> int:
    run_ids = [
        row[0]
        for row in conn.execute(
            "SELECT id FROM runs WHERE started_at < ? ORDER BY started_at LIMIT ?", (cutoff, PRUNE_CHUNK)
        )
    ]
    if not run_ids:
        return 0
    conn.execute("CREATE TEMP TABLE IF NOT EXISTS prune_runs (id INTEGER PRIMARY KEY)")
    conn.execute("DELETE FROM prune_runs")
    conn.executemany("INSERT INTO prune_runs (id) VALUES (?)", [(run_id,) for run_id in run_ids])
    results = conn.execute("SELECT count(*) FROM results WHERE run_id IN (SELECT id FROM prune_runs)").fetchone()[0]
    per_minion = conn.execute(
        "SELECT minion_id, count(*) FROM runs WHERE id IN (SELECT id FROM prune_runs) GROUP BY minion_id"
    ).fetchall()
    fleet_counts = FleetCountsDelta(conn, [minion_id for minion_id, _count in per_minion])
    jids = [row[0] for row in conn.execute("SELECT DISTINCT jid FROM runs WHERE id IN (SELECT id FROM prune_runs)")]
    texts = texts_of_runs(conn, "SELECT id FROM prune_runs")
    conn.execute("DELETE FROM results WHERE run_id IN (SELECT id FROM prune_runs)")
    drop_unreferenced_texts(conn, texts)  # and with them their search entries
    forget_pruned_status(conn, "SELECT id FROM prune_runs")  # the fleet summaries, before the rows go
    conn.execute("DELETE FROM test_status WHERE last_run_id IN (SELECT id FROM prune_runs)")
    conn.execute("DELETE FROM runs WHERE id IN (SELECT id FROM prune_runs)")
    for minion_id, count in per_minion:
        conn.execute(
            "UPDATE minions SET runs = CASE WHEN runs > ?1 THEN runs - ?1 ELSE 0 END, "
            "last_run_id = (SELECT id FROM runs WHERE minion_id = ?2 ORDER BY started_at DESC, id DESC LIMIT 1) "
            "WHERE id = ?2",
            (count, minion_id),
        )
        conn.execute(
            "UPDATE minions SET grains = coalesce((SELECT grains FROM runs WHERE runs.id = minions.last_run_id), grains) "
            "WHERE id = ?",
            (minion_id,),
        )
    refresh_pruned_minions(conn, [minion_id for minion_id, _count in per_minion])
    fleet_counts.apply()
    refresh_job_totals(conn, jids)
    _decrement_counters(conn, {"runs": len(run_ids), "results": results})
    return len(run_ids)


def _decrement_counters(conn, amounts: dict[str, int]) -> None:
    conn.executemany(
        "UPDATE counters SET value = CASE WHEN value > ?1 THEN value - ?1 ELSE 0 END WHERE name = ?2",
        [(amount, name) for name, amount in amounts.items() if amount],
    )


def _month_after(month: str) -> str:
    year, number = int(month[:4]), int(month[5:7])
    return f"{year + number // 12:04d}-{number % 12 + 1:02d}"


def _drop_expired_partitions(conn, cutoff: str) -> int:
    """PostgreSQL: drop each monthly ``results`` partition wholly older than ``cutoff``; returns
    how many results went with them (the runs themselves are deleted afterwards as usual)."""
    dropped = 0
    texts: set[int] = set()  # the failure texts of the dropped rows: deleted when nothing else points at them
    partitions = conn.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = 'results'::regclass AND c.relname ~ '^results_p[0-9]{4}_[0-9]{2}$' ORDER BY c.relname"
    ).fetchall()
    for (name,) in partitions:
        month = f"{name[9:13]}-{name[14:16]}"
        if _month_after(month) > cutoff:
            break
        # The name comes from pg_class and matched the pattern above: safe to splice in.
        count = conn.execute(f'SELECT count(*) FROM "{name}"').fetchone()[0]  # noqa: S608
        texts.update(row[0] for row in conn.execute(
            f'SELECT DISTINCT text_id FROM "{name}" WHERE text_id IS NOT NULL'))  # noqa: S608
        conn.execute(f'DROP TABLE "{name}"')
        dropped += count
    drop_unreferenced_texts(conn, texts)
    _decrement_counters(conn, {"results": dropped})
    return dropped


async def prune(db: Database, older_than: timedelta) -> int:
    """Delete runs that started more than ``older_than`` ago; returns how many runs were deleted."""
    cutoff = format_timestamp(datetime.now(UTC) - older_than)
    if getattr(db, "dialect", None) == POSTGRES:
        await db.write(_drop_expired_partitions, cutoff)
    deleted = 0
    while True:
        count = await db.write(_prune_chunk, cutoff)
        deleted += count
        if count < PRUNE_CHUNK:
            return deleted
