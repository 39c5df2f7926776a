"""The failures data layer: signatures kept at ingest, the fleet-wide failures view, run triage.

Write side (runs on the ingester's writer connection, inside its transaction):

- :class:`FailureBatch` keeps the ``signatures`` table (first/last run, occurrences) for every
  failed/errored result of a batch, and finds or makes the ids of their distinct texts
  (``failure_texts``, searched by full text: dashboard/failure_texts.py). The signatures
  themselves are computed earlier, while the file is validated (dashboard/signatures.py), and
  ``test_status.last_signature`` is folded by the ingester with the rest of ``test_status``.
- :func:`backfill_chunk` gives results stored before migration 5 their signatures, a chunk of
  result ids per transaction (see docs/triage.md for why it is not done inside the migration).

Read side (async, over :class:`dashboard.db.Database`): :func:`open_failures` (the ``/failures``
page and ``GET /api/failures``), :func:`get_signature`, :func:`run_changes` / :func:`job_changes`
(new / fixed / still failing), :func:`sick_hosts`, :func:`search_signatures` and
:func:`search_run_ids` (full text, over the distinct failure texts).

For other features (webhooks): :func:`signature_changes` says which signatures opened or closed
with a batch of runs, :func:`is_muted` whether a failure is muted. Both take a plain
``sqlite3.Connection``.

Nothing here scans ``results``: open signatures come from ``test_status`` (one row per minion
and test, the latest outcome), a signature's history from its texts (``failure_texts``, whose
results the partial index ``results_text`` finds: see :func:`newest_failures`).
"""

# SQL here is built only from constant column lists and '?' placeholders; values are always bound.
# ruff: noqa: S608

from __future__ import annotations

import asyncio
import re
import sqlite3
from collections import Counter, defaultdict
from collections.abc import Awaitable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from dashboard.db import run_transaction
from dashboard.dialect import (
    POSTGRES,
    SQL_CHUNK,
    SQLITE,
    analyze,
    chunks,
    dialect_of,
    grain_profile_sql,
    insert_many,
    insert_returning,
    per_key_sql,
)
from dashboard.failure_texts import store_texts, text_digest
from dashboard.migrations import SIGNATURE_SUMMARIES, statements_for
from dashboard.models import INT64_MAX, format_timestamp
from dashboard.queries import (
    FAILING,
    InputError,
    clamp_limit,
    decode_cursor,
    encode_cursor,
    loads,
)
from dashboard.signatures import failure_signature, is_signature
from dashboard.triage import MuteSet, active_mutes, load_mutes

VERDICTS = ("everywhere", "some-minions", "flaky")
PASSING = ("passed", "xpassed", "xfailed")
# A minion failing at least this many signatures that do not fail everywhere (and at least
# twice the fleet's median) is a sick host: the machine, not the tests.
SICK_HOST_MIN_SIGNATURES = 3
SICK_HOST_CANDIDATES = 50  # minions examined for it, those failing the most tests first
SEPARATING_GRAINS_SHOWN = 5
# Names listed per list (minions failing, passing, ..., tests) with an exact *_count beside:
LIST_CAP = 100  # on a signature's page and GET /api/failures/{signature}
ROW_LIST_CAP = 20  # in each row of /failures and GET /api/failures (the page shows the first 5)
SINCE_TESTS = 20  # a signature over more tests reads its failing-since over all its rows
SINCE_LOOKAHEAD = 5  # oldest failing streaks of a test read to find each signature's oldest
HISTORY_LIMIT = 100
FTS_TEXT_LIMIT = 1000  # newest matching failure texts a text search looks at
FTS_MATCH_LIMIT = 1000  # newest failures with those texts a search of runs looks at
HISTORY_TEXTS = 1000  # a signature's newest texts its history is read from
BACKFILL_CHUNK_IDS = 20_000
PREVIOUS_RUN_LOOKBACK = 500  # runs of one minion searched for the previous run of the same paths
STREAK_LOOKBACK = 100  # runs of one minion searched back for the start of a failing streak
RERUN_WINDOW_DAYS = 14  # a pass on a re-run (runs.rerun_of) this recent marks the test flaky

_UPSERT_SIGNATURE = """
    INSERT INTO signatures (signature, exception, message, location, first_seen, first_run_id, last_seen,
                            last_run_id, occurrences)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
    ON CONFLICT (signature) DO UPDATE SET
        first_run_id = CASE WHEN (excluded.first_seen, excluded.first_run_id) < (signatures.first_seen, signatures.first_run_id)
                       THEN excluded.first_run_id ELSE signatures.first_run_id END,
        first_seen = CASE WHEN excluded.first_seen < signatures.first_seen THEN excluded.first_seen
                     ELSE signatures.first_seen END,
        last_run_id = CASE WHEN (excluded.last_seen, excluded.last_run_id) > (signatures.last_seen, signatures.last_run_id)
                      THEN excluded.last_run_id ELSE signatures.last_run_id END,
        last_seen = CASE WHEN excluded.last_seen > signatures.last_seen THEN excluded.last_seen
                    ELSE signatures.last_seen END,
        occurrences = signatures.occurrences + excluded.occurrences
"""


# -- write side ------------------------------------------------------------------------------


class FailureBatch:
    """The failures side of one ingest transaction; :meth:`flush` before the commit."""

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn
        self.signatures: dict[str, list] = {}
        # digest -> failure_texts.id, read or made in this transaction (never kept longer: prune
        # deletes texts no result points at, dashboard/failure_texts.py).
        self.text_ids: dict[bytes, int] = {}

    def add_run(self, run_id: int, started_at: str, parts: dict[str, tuple[str, str, str]],
                occurrences: Mapping[str, int]) -> None:
        """Note a stored run's failures: how many of its result rows carry each signature."""
        for signature, count in occurrences.items():
            seen = self.signatures.get(signature)
            if seen is None:
                exception, message, location = parts[signature]
                self.signatures[signature] = [exception, message, location, started_at, run_id, started_at, run_id, count]
                continue
            if (started_at, run_id) < (seen[3], seen[4]):
                seen[3], seen[4] = started_at, run_id
            if (started_at, run_id) > (seen[5], seen[6]):
                seen[5], seen[6] = started_at, run_id
            seen[7] += count

    def text_ids_of(self, rows: Iterable[tuple]) -> dict[bytes, int]:
        """digest -> text id, holding at least the texts of the failing ``rows`` (the ingester's
        result rows: message, longrepr at 4 and 5, signature and text digest last); the batch's
        new texts are inserted, the others read, each once per transaction."""
        known = self.text_ids
        texts = {row[10]: (row[9], row[4], row[5]) for row in rows if row[10] is not None and row[10] not in known}
        if texts:
            store_texts(self.conn, texts, known)
        return known

    def flush(self) -> None:
        if self.signatures:
            insert_many(self.conn, _UPSERT_SIGNATURE, [(sig, *values) for sig, values in self.signatures.items()])
        self.signatures.clear()


# -- write side: the signature summaries (migration 8) -------------------------------------------

_UPSERT_SIGNATURE_MINION = (
    "INSERT INTO signature_minions (signature, minion_id, tests) VALUES (?, ?, ?) ON CONFLICT (signature, minion_id) "
    "DO UPDATE SET tests = signature_minions.tests + excluded.tests RETURNING tests"
)
_UPSERT_SIGNATURE_TOTALS = (
    "INSERT INTO signature_totals (signature, minions, pairs, code_flip_pairs) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (signature) DO UPDATE SET minions = signature_totals.minions + excluded.minions, "
    "pairs = signature_totals.pairs + excluded.pairs, "
    "code_flip_pairs = signature_totals.code_flip_pairs + excluded.code_flip_pairs"
)
# (table, key columns, counted column): summaries changed by plain deltas, rows at zero deleted.
_DELTA_TABLES = {
    "signature_tests": (("signature", "test_id"), "minions"),
    "signature_profiles": (("signature", "profile_id"), "minions"),
    "test_profiles": (("test_id", "profile_id"), "passing"),
}


class SignatureUpkeep:
    """Changes to the signature summaries, gathered from (minion, test) status changes and applied
    at once by :meth:`apply` in the caller's transaction. Work is done only for a status whose
    signature, code-flip mark or passing verdict changed: a failing streak opening or closing,
    a signature changing; nothing for a result that changes none of them."""

    def __init__(self) -> None:
        # (minion id, its grain profile, test id, old signature, old code-flipped, new signature, new code-flipped)
        self.pairs: list[tuple] = []
        self.deltas: dict[str, Counter] = {table: Counter() for table in _DELTA_TABLES}

    def status(self, minion_id: int, profile: int | None, test_id: int, old: str | None, old_flipped: bool,
               new: str | None, new_flipped: bool) -> None:
        if old != new or (old and old_flipped != new_flipped):
            self.pairs.append((minion_id, profile, test_id, old, old_flipped, new, new_flipped))

    def passing(self, test_id: int, profile: int | None, delta: int) -> None:
        # A minion without a profile yet is counted when it gets one (reprofile_minion).
        if delta and profile is not None:
            self.deltas["test_profiles"][(test_id, profile)] += delta

    def apply(self, conn) -> None:
        if not self.pairs and not any(self.deltas.values()):
            return
        minions: Counter = Counter()
        totals: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])  # minions, pairs, code-flip pairs
        profile_of: dict[int, int | None] = {}
        tests = self.deltas["signature_tests"]
        for minion_id, profile, test_id, old, old_flipped, new, new_flipped in self.pairs:
            profile_of[minion_id] = profile
            for signature, sign, flipped in ((old, -1, old_flipped), (new, 1, new_flipped)):
                if signature:
                    tests[(signature, test_id)] += sign
                    minions[(signature, minion_id)] += sign
                    totals[signature][1] += sign
                    totals[signature][2] += sign * int(bool(flipped))
        changed = [(signature, minion_id, delta) for (signature, minion_id), delta in minions.items() if delta]
        # The new count of each (signature, minion) says whether the minion started or stopped failing with it.
        gone = []
        for (signature, minion_id, delta), now in zip(
            changed, insert_returning(conn, _UPSERT_SIGNATURE_MINION, changed), strict=True
        ):
            present = int(now > 0) - int(now - delta > 0)
            if now <= 0:
                gone.append((signature, minion_id))
            if present:
                totals[signature][0] += present
                if profile_of[minion_id] is not None:
                    self.deltas["signature_profiles"][(signature, profile_of[minion_id])] += present
        if gone:
            conn.executemany("DELETE FROM signature_minions WHERE signature = ? AND minion_id = ?", gone)
        moved = [(signature, *counts) for signature, counts in totals.items() if any(counts)]
        if moved:
            insert_many(conn, _UPSERT_SIGNATURE_TOTALS, moved)
            conn.executemany("DELETE FROM signature_totals WHERE signature = ? AND pairs <= 0",
                             [(row[0],) for row in moved])
        for table, (keys, column) in _DELTA_TABLES.items():
            rows = [(*key, delta) for key, delta in self.deltas[table].items() if delta]
            if not rows:
                continue
            insert_many(
                conn,
                f"INSERT INTO {table} ({keys[0]}, {keys[1]}, {column}) VALUES (?, ?, ?) ON CONFLICT ({keys[0]}, "
                f"{keys[1]}) DO UPDATE SET {column} = {table}.{column} + excluded.{column}",
                rows,
            )
            conn.executemany(f"DELETE FROM {table} WHERE {keys[0]} = ? AND {keys[1]} = ? AND {column} <= 0",
                             [row[:2] for row in rows if row[2] < 0])
        self.pairs.clear()
        for counter in self.deltas.values():
            counter.clear()


def reprofile_minion(conn, minion_id: int, old_profile: int | None) -> int | None:
    """Give a minion the grain profile of its (new) grains and move its counts from the old one.

    When its grains changed (rare), or it has no profile yet. Returns its profile id.
    """
    profile = grain_profile_sql(dialect_of(conn), "m.grains")
    conn.execute(
        f"INSERT INTO grain_profiles (grains) SELECT {profile} FROM minions m WHERE m.id = ? "
        "ON CONFLICT (grains) DO NOTHING",
        (minion_id,),
    )
    row = conn.execute(f"SELECT p.id FROM minions m JOIN grain_profiles p ON p.grains = {profile} WHERE m.id = ?",
                       (minion_id,)).fetchone()
    new = row[0] if row else None
    if new == old_profile:
        return new
    conn.execute("UPDATE minions SET grain_profile = ? WHERE id = ?", (new, minion_id))
    upkeep = SignatureUpkeep()
    for (test_id,) in conn.execute(
        "SELECT test_id FROM test_status WHERE minion_id = ? AND last_outcome IN ('passed', 'xpassed', 'xfailed')",
        (minion_id,),
    ).fetchall():
        upkeep.passing(test_id, old_profile, -1)
        upkeep.passing(test_id, new, 1)
    moves = upkeep.deltas["signature_profiles"]
    for (signature,) in conn.execute("SELECT signature FROM signature_minions WHERE minion_id = ?",
                                     (minion_id,)).fetchall():
        if old_profile is not None:
            moves[(signature, old_profile)] -= 1
        if new is not None:
            moves[(signature, new)] += 1
    upkeep.apply(conn)
    return new


def rebuild_signature_summaries(conn) -> None:
    """Refill the signature summaries and grain profiles (migration 8) from test_status and minions.

    In the caller's transaction. The ingester, the backfill and prune keep them by deltas; this
    is the reference they must equal (tests/functional/test_signature_summaries.py).
    """
    for statement in statements_for(SIGNATURE_SUMMARIES, dialect_of(conn)):
        conn.execute(statement)


def backfill_pending(conn: sqlite3.Connection) -> int:
    """The highest result id still waiting for a signature (0: the backfill is done)."""
    row = conn.execute("SELECT pending_upto FROM signature_backfill WHERE id = 1").fetchone()
    return int(row[0]) if row else 0


def backfill_chunk(conn: sqlite3.Connection, chunk_ids: int = BACKFILL_CHUNK_IDS) -> int:
    """Give signatures to the failed results among the next ``chunk_ids`` result ids (newest first).

    Runs in the caller's transaction; returns the result ids still pending after it (0 = done).
    Each failed result gets its signature, its text (``text_id``: dashboard/failure_texts.py) and
    its share of the ``signatures`` table; a ``test_status`` row whose latest run is among them
    gets ``last_signature``.
    """
    upto = backfill_pending(conn)
    if upto <= 0:
        return 0
    low = max(0, upto - chunk_ids)
    rows = conn.execute(
        "SELECT x.id, x.run_id, x.test_id, x.outcome, x.message, x.longrepr, t.nodeid, t.file, r.started_at, "
        "r.minion_id FROM results x JOIN tests t ON t.id = x.test_id JOIN runs r ON r.id = x.run_id "
        "WHERE x.id > ? AND x.id <= ? AND x.outcome IN ('failed', 'error') AND x.signature IS NULL",
        (low, upto),
    ).fetchall()
    if rows:
        batch = FailureBatch(conn)
        updates, status, texts = [], {}, {}
        by_run: dict[int, tuple[str, dict, list]] = {}
        for result_id, run_id, test_id, outcome, message, longrepr, nodeid, file, started_at, minion_id in rows:
            sig = failure_signature(nodeid, message, longrepr, file)
            digest = text_digest(sig.signature, message, longrepr)
            texts.setdefault(digest, (sig.signature, message, longrepr))
            updates.append((sig.signature, digest, result_id))
            _, parts, run_signatures = by_run.setdefault(run_id, (started_at, {}, []))
            parts.setdefault(sig.signature, (sig.exception, sig.message, sig.location))
            run_signatures.append(sig.signature)
            # failed outranks error as a test's outcome in a run (the ingester's precedence).
            key = (minion_id, test_id, run_id)
            if key not in status or outcome == "failed":
                status[key] = sig.signature
        store_texts(conn, texts, batch.text_ids)
        conn.executemany("UPDATE results SET signature = ?, text_id = ? WHERE id = ?",
                         [(signature, batch.text_ids[digest], result_id) for signature, digest, result_id in updates])
        for run_id, (started_at, parts, run_signatures) in by_run.items():
            batch.add_run(run_id, started_at, parts, Counter(run_signatures))
        batch.signatures and conn.executemany(
            _UPSERT_SIGNATURE, [(sig, *values) for sig, values in batch.signatures.items()]
        )
        _backfill_status(conn, status)
    conn.execute("UPDATE signature_backfill SET pending_upto = ? WHERE id = 1", (low,))
    return low


def _backfill_status(conn: sqlite3.Connection, status: dict[tuple[int, int, int], str]) -> None:
    """Give ``last_signature`` to the test_status rows whose latest run is the one of ``status``
    (keyed (minion, test, run)), and take the change into the signature summaries."""
    by_minion: dict[int, dict[int, tuple[int, str]]] = defaultdict(dict)
    for (minion_id, test_id, run_id), sig in status.items():
        by_minion[minion_id][test_id] = (run_id, sig)
    profiles = {}
    for chunk in chunks(sorted(by_minion)):
        profiles.update(conn.execute(
            f"SELECT id, grain_profile FROM minions WHERE id IN ({','.join('?' * len(chunk))})", chunk
        ).fetchall())
    updates, upkeep = [], SignatureUpkeep()
    for minion_id, wanted in by_minion.items():
        for chunk in chunks(sorted(wanted)):
            for test_id, last_run_id, outcome, signature, code_flips in conn.execute(
                "SELECT test_id, last_run_id, last_outcome, last_signature, code_flips FROM test_status "
                f"WHERE minion_id = ? AND test_id IN ({','.join('?' * len(chunk))})",
                (minion_id, *chunk),
            ).fetchall():
                run_id, sig = wanted[test_id]
                if last_run_id != run_id or outcome not in FAILING or signature == sig:
                    continue
                updates.append((sig, minion_id, test_id))
                flipped = bool(code_flips)
                upkeep.status(minion_id, profiles.get(minion_id), test_id, signature, flipped, sig, flipped)
    conn.executemany("UPDATE test_status SET last_signature = ? WHERE minion_id = ? AND test_id = ?", updates)
    upkeep.apply(conn)


def backfill_all(conn: sqlite3.Connection, chunk_ids: int = BACKFILL_CHUNK_IDS) -> int:
    """Run the whole backfill on a synchronous autocommit connection, one transaction per chunk.

    Returns the number of chunks run. The CLI's ``backfill-signatures`` and the benchmarks use it.
    """
    done = 0
    while backfill_pending(conn) > 0:
        run_transaction(conn, backfill_chunk, chunk_ids)
        done += 1
    if done:
        # The signatures' partial indexes were empty when last analyzed; test_status.last_signature
        # too (a plan by "no row has one" read 100,000 rows for the fleet page's sick hosts).
        analyze(conn, "results")
        analyze(conn, "test_status")
        if dialect_of(conn) == POSTGRES:
            # Every failed row was rewritten: until a vacuum marks their pages all-visible again,
            # each index-only read of them (the search's walk of the newest failures) visits the heap.
            conn.execute("VACUUM results")
    return done


async def backfill_in_background(db, chunk_ids: int = BACKFILL_CHUNK_IDS) -> int:
    """The app's start-up backfill: one short write transaction per chunk, so ingest goes on between them."""
    done = 0
    while await db.fetchval("SELECT pending_upto FROM signature_backfill WHERE id = 1", default=0) > 0:
        await db.write(backfill_chunk, chunk_ids)
        done += 1
    if done and getattr(db, "dialect", None) == POSTGRES:
        await db.write(analyze, "results")
        await db.write(analyze, "test_status")
    return done


# -- for other features: what opened/closed, what is muted ------------------------------------


@dataclass
class SignatureChange:
    """A signature that appeared on (opened) or left (closed) a minion with one run."""

    signature: str
    minion: str
    run_id: int
    previous_run_id: int | None
    tests: list[str]
    first_ever: bool = False  # opened: the signature's very first run is this one
    open_elsewhere: bool = False  # closed: some minion's latest outcome still carries it
    muted: bool = False


@dataclass
class SignatureChanges:
    opened: list[SignatureChange] = field(default_factory=list)
    closed: list[SignatureChange] = field(default_factory=list)


def _previous_same_paths(conn: sqlite3.Connection, minion_id: int, paths: str, started_at: str, run_id: int) -> int | None:
    row = conn.execute(
        "SELECT id FROM (SELECT id, paths FROM runs WHERE minion_id = ? AND (started_at, id) < (?, ?) "
        "ORDER BY started_at DESC, id DESC LIMIT ?) AS recent WHERE paths = ? LIMIT 1",
        (minion_id, started_at, run_id, PREVIOUS_RUN_LOOKBACK, paths),
    ).fetchone()
    return row[0] if row else None


def _run_signatures(conn: sqlite3.Connection, run_id: int) -> dict[str, list[str]]:
    found: dict[str, list[str]] = defaultdict(list)
    for signature, nodeid in conn.execute(
        "SELECT x.signature, t.nodeid FROM results x JOIN tests t ON t.id = x.test_id "
        "WHERE x.run_id = ? AND x.signature IS NOT NULL",
        (run_id,),
    ):
        if nodeid not in found[signature]:
            found[signature].append(nodeid)
    return found


def signature_changes(conn: sqlite3.Connection, run_ids: Iterable[int], now: datetime | None = None) -> SignatureChanges:
    """Which signatures each of ``run_ids`` opened or closed on its minion.

    A run opens a signature its minion's previous run of the same paths did not have, and
    closes one that run had and it does not. ``first_ever`` marks a signature never seen
    before this run (a new failure for the fleet); ``open_elsewhere`` marks a closed signature
    that some minion still fails with (not fixed for the fleet yet); ``muted`` says an active
    mute covers it on that minion (webhooks send nothing for those).
    """
    changes = SignatureChanges()
    mutes = load_mutes(conn, now)
    for run_id in run_ids:
        run = conn.execute(
            "SELECT r.minion_id, r.paths, r.started_at, m.name, m.grains FROM runs r JOIN minions m ON m.id = r.minion_id "
            "WHERE r.id = ?",
            (run_id,),
        ).fetchone()
        if run is None:
            continue
        minion_id, paths, started_at, minion, grains = run
        previous = _previous_same_paths(conn, minion_id, paths, started_at, run_id)
        now_sigs = _run_signatures(conn, run_id)
        before = _run_signatures(conn, previous) if previous else {}
        grains_dict = loads(grains, {})
        for signature in sorted(now_sigs.keys() - before.keys()):
            first = conn.execute("SELECT first_run_id FROM signatures WHERE signature = ?", (signature,)).fetchone()
            changes.opened.append(SignatureChange(
                signature, minion, run_id, previous, now_sigs[signature], first_ever=bool(first and first[0] == run_id),
                muted=all(mutes.covers(signature, nodeid, grains_dict) for nodeid in now_sigs[signature]),
            ))
        for signature in sorted(before.keys() - now_sigs.keys()):
            still = conn.execute("SELECT 1 FROM test_status WHERE last_signature = ? LIMIT 1", (signature,)).fetchone()
            changes.closed.append(SignatureChange(
                signature, minion, run_id, previous, before[signature], open_elsewhere=bool(still),
                muted=all(mutes.covers(signature, nodeid, grains_dict) for nodeid in before[signature]),
            ))
    return changes


def is_muted(conn: sqlite3.Connection, signature: str | None, nodeid: str | None, minion: str,
             now: datetime | None = None) -> bool:
    """True when an active mute covers this failure (its signature or its test) on ``minion``."""
    row = conn.execute("SELECT grains FROM minions WHERE name = ?", (minion,)).fetchone()
    grains = loads(row[0], {}) if row else {}
    return load_mutes(conn, now).covers(signature, nodeid, grains)


# -- read side: the failures view --------------------------------------------------------------


_WORD = re.compile(r"(\w+)(\*?)", re.UNICODE)


def _words(text: str) -> list[tuple[str, bool]]:
    """The words of a search, each with whether it ends in ``*`` (a prefix)."""
    words = [(m.group(1), bool(m.group(2))) for m in _WORD.finditer(text or "")][:12]
    if not words:
        raise InputError("Give at least one word to search for.")
    return words


def fts_query(text: str) -> str:
    """A user's search text as a safe FTS5 query: every word must appear; ``word*`` matches a prefix.

    Whole words by default: a prefix query walks every term it could be and costs ten times more.
    """
    return " ".join(f'"{word}"' + ("*" if prefix else "") for word, prefix in _words(text))


# A search reads the newest FTS_TEXT_LIMIT matching texts (dashboard/failure_texts.py): FTS5 on
# SQLite, on PostgreSQL the texts' stored words (failure_texts.search, GIN-indexed).
_MATCHING_TEXTS_SQLITE = (
    "SELECT id, signature FROM failure_texts WHERE id IN (SELECT rowid FROM failure_text_search "
    "WHERE failure_text_search MATCH ? ORDER BY rowid DESC LIMIT ?)"
)
_MATCHING_TEXTS_POSTGRES = (
    "SELECT id, signature FROM failure_texts WHERE search @@ to_tsquery('simple', ?) ORDER BY id DESC LIMIT ?"
)
_NON_ALNUM = re.compile(r"[\W_]+")


def _tsquery(q: str) -> str:
    """A search as a PostgreSQL tsquery over ``failure_texts.search``: every word; a word the
    index holds as several (``test_case``) as those words in a row, as FTS5 reads a phrase."""
    terms = []
    for word, prefix in _words(q):
        parts = [part for part in _NON_ALNUM.split(word) if part]
        if parts:
            terms.append(" <-> ".join(parts) + (":*" if prefix else ""))
    return " & ".join(terms)


async def _matching_texts(db, q: str) -> list[dict]:
    """The newest :data:`FTS_TEXT_LIMIT` failure texts holding every word of ``q`` (id, signature)."""
    if getattr(db, "dialect", None) == POSTGRES:
        terms = _tsquery(q)
        if not terms:
            return []
        return await db.fetchall(_MATCHING_TEXTS_POSTGRES, (terms, FTS_TEXT_LIMIT))
    return await db.fetchall(_MATCHING_TEXTS_SQLITE, (fts_query(q), FTS_TEXT_LIMIT))


async def search_signatures(db, q: str) -> set[str]:
    """Signatures of the failure texts (message or traceback) that contain every word of ``q``."""
    return {row["signature"] for row in await _matching_texts(db, q)}


# The newest failing results with some texts, read per text (index results_text: text, then run
# newest first, then result id: a run's failures in document order) and merged: each text's
# newest ``share`` failures at a time, ``share`` doubling, until no text can still hold one newer
# than the wanted-th newest found so far. A text's next read starts right after its last row read.
_PER_TEXT = {
    SQLITE: "SELECT * FROM (SELECT ? AS text_id, run_id, id FROM results INDEXED BY results_text "
            "WHERE text_id = ? AND run_id <= ? AND (run_id < ? OR id > ?) ORDER BY run_id DESC, id LIMIT ?)",
    POSTGRES: "SELECT t.id AS text_id, x.run_id, x.id FROM (VALUES {values}) AS t (id, run_id, after) "
              "CROSS JOIN LATERAL (SELECT run_id, id FROM results WHERE text_id = t.id AND run_id <= t.run_id "
              "AND (run_id < t.run_id OR id > t.after) ORDER BY run_id DESC, id LIMIT ?) AS x",
}


def _newest_first(key: tuple[int, int]) -> tuple[int, int]:
    """Sort key of a (run id, result id): newest run first, a run's failures in document order."""
    return (-key[0], key[1])


async def _per_text(db, cuts: list[tuple[int, tuple[int, int]]], share: int) -> list[dict]:
    """(text_id, run_id, id) of each text's newest ``share`` failures after its cut (run id, result id)."""
    if getattr(db, "dialect", None) == POSTGRES:
        values = ",".join("(?::bigint, ?::bigint, ?::bigint)" for _ in cuts)
        return await db.fetchall(_PER_TEXT[POSTGRES].format(values=values),
                                 [*(v for text_id, (run_id, after) in cuts for v in (text_id, run_id, after)), share])
    rows: list[dict] = []
    for chunk in chunks(cuts, 400):  # SQLite allows 500 terms in a compound statement
        rows += await db.fetchall(" UNION ALL ".join(_PER_TEXT[SQLITE] for _ in chunk), [
            v for text_id, (run_id, after) in chunk for v in (text_id, text_id, run_id, run_id, after, share)])
    return rows


async def newest_failures(db, text_ids: Iterable[int], wanted: int) -> list[tuple[int, int]]:
    """(run id, result id) of the newest ``wanted`` failing results whose text is one of
    ``text_ids``, newest run first: a search's runs, a signature's history. Never a scan of
    results: each round reads at most ``share`` index entries per text still open (:data:`_PER_TEXT`)."""
    text_ids = sorted(set(text_ids))
    if not text_ids or wanted <= 0:
        return []
    cut = dict.fromkeys(text_ids, (INT64_MAX, -1))  # (run id, result id) of each text's last row read
    found: list[tuple[int, int]] = []
    share = -(-wanted // len(text_ids))
    open_texts = text_ids
    while open_texts:
        read: dict[int, list[tuple[int, int]]] = defaultdict(list)
        for row in await _per_text(db, [(text_id, cut[text_id]) for text_id in open_texts], share):
            read[row["text_id"]].append((row["run_id"], row["id"]))
        still = []
        for text_id in open_texts:
            rows = read.get(text_id, [])
            found += rows
            if len(rows) == share:  # a full share: it may hold more, after its last row read
                cut[text_id] = rows[-1]
                still.append(text_id)
        if len(found) >= wanted:
            # A text whose last row read is not newer than the wanted-th newest so far is done.
            last = _newest_first(sorted(found, key=_newest_first)[wanted - 1])
            still = [text_id for text_id in still if _newest_first(cut[text_id]) < last]
        open_texts, share = still, share * 2
    return sorted(found, key=_newest_first)[:wanted]


async def search_run_ids(db, q: str) -> list[int]:
    """Runs whose failures match ``q``, newest first: those of the newest :data:`FTS_MATCH_LIMIT`
    failing results whose text holds every word of ``q``."""
    text_ids = [row["id"] for row in await _matching_texts(db, q)]
    return list(dict.fromkeys(run_id for run_id, _ in await newest_failures(db, text_ids, FTS_MATCH_LIMIT)))


async def signature_history(db, signature: str, limit: int = HISTORY_LIMIT) -> list[dict]:
    """The newest ``limit`` failing results with ``signature`` (from its :data:`HISTORY_TEXTS`
    newest texts: index failure_texts_signature), newest first, with their run, minion and test."""
    texts = [row["id"] for row in await db.fetchall(
        "SELECT id FROM failure_texts WHERE signature = ? ORDER BY id DESC LIMIT ?", (signature, HISTORY_TEXTS))]
    ids = [result_id for _, result_id in await newest_failures(db, texts, limit)]
    if not ids:
        return []
    history = await db.fetchall(
        "SELECT x.id, x.run_id, x.phase, x.outcome, x.message, t.nodeid, r.started_at, r.jid, r.code_hash, "
        "m.name AS minion FROM results x JOIN runs r ON r.id = x.run_id JOIN minions m ON m.id = r.minion_id "
        f"JOIN tests t ON t.id = x.test_id WHERE x.id IN ({_marks(ids)})",
        ids,
    )
    return sorted(history, key=lambda row: _newest_first((row["run_id"], row["id"])))


def _grain_features(grains: dict[str, Any]) -> set[tuple[str, str]]:
    features = set()
    for name, value in grains.items():
        if isinstance(value, list) and (name.endswith("version") or name.endswith("_info")):
            # A version as a list (pythonversion [3, 11, 2, 'final', 0]): one value, "3.11.2".
            features.add((name, ".".join(str(part) for part in value[:3])))
        elif isinstance(value, list):
            # A list grain (roles, ...) separates by each of its elements.
            features.update((name, str(item)) for item in value if isinstance(item, str | int | float | bool))
        elif isinstance(value, str | int | float | bool):
            features.add((name, str(value)))
    return features


def separating_grains(failing: list[dict], passing: list[dict], shown: int = SEPARATING_GRAINS_SHOWN) -> list[dict]:
    """Grain values more common among the failing minions' grains than among the passing ones, best first.

    Ranked by (share of failing minions with it) - (share of passing minions with it); a value
    on every failing minion and no passing one scores 1. A grain whose value differs on every
    minion (an id, an address, mem_total on a varied fleet) names machines, it explains nothing:
    it is left out once there are three minions or more to compare.
    """
    return _separating([_grain_features(g) for g in failing], [_grain_features(g) for g in passing], shown)


def _separating(failing: list[set], passing: list[set], shown: int = SEPARATING_GRAINS_SHOWN) -> list[dict]:
    """:func:`separating_grains` over grain features already extracted (one set per minion)."""
    return _separating_counted(Counter(frozenset(f) for f in failing), Counter(frozenset(f) for f in passing), shown)


def _separating_counted(failing: Counter, passing: Counter, shown: int = SEPARATING_GRAINS_SHOWN) -> list[dict]:
    """:func:`separating_grains` over minions grouped by their grain features: {frozenset of
    features: how many minions}. Counts are exact whatever the fleet's size: a large fleet has
    few distinct grain profiles (dashboard/dialect.MACHINE_GRAINS are not part of them)."""
    n_fail, n_pass = sum(failing.values()), sum(passing.values())
    if not n_fail:
        return []
    on_failing: dict[tuple[str, str], int] = {}
    on_passing: dict[tuple[str, str], int] = {}
    for side, counts in ((failing, on_failing), (passing, on_passing)):
        for features, minions in side.items():
            for feature in features:
                counts[feature] = counts.get(feature, 0) + minions
    # How many compared minions have each value of a grain: a grain whose every value is on one
    # minion only names machines.
    per_grain: dict[str, list[int]] = defaultdict(list)
    for feature in on_failing.keys() | on_passing.keys():
        per_grain[feature[0]].append(on_failing.get(feature, 0) + on_passing.get(feature, 0))
    identifying = {name for name, counts in per_grain.items() if sum(counts) >= 3 and max(counts) == 1}
    ranked = []
    for (name, value), count in on_failing.items():
        if name in identifying:
            continue
        passing_count = on_passing.get((name, value), 0)
        score = count / n_fail - (passing_count / n_pass if n_pass else 0.0)
        if score > 0 and (n_pass or count == n_fail):
            ranked.append((score, count, name, value, passing_count))
    ranked.sort(key=lambda item: (-item[0], -item[1], item[2], item[3]))
    return [
        {"grain": name, "value": value, "failing": count, "passing": passing_count, "failing_of": n_fail,
         "passing_of": n_pass, "score": round(score, 3),
         "label": f"{name}={value}: {count} of {n_fail} failing, {passing_count} of {n_pass} passing"}
        for score, count, name, value, passing_count in ranked[:shown]
    ]


async def passed_on_rerun(db, now: datetime | None = None) -> dict[int, set[int]]:
    """Tests that failed in a run and passed on its re-run on the same minion (test id -> minion ids).

    A re-run (``pytestrun.run rerun_of=<jid>``, the shipped reactor or ``salt-run distmon.rerun``)
    runs the same code again on the same machine: a failure that passes there is flaky, not broken.
    Only re-runs of the last ``RERUN_WINDOW_DAYS`` count (index ``runs_rerun_of``; re-runs are few).
    """
    since = format_timestamp((now or datetime.now(UTC)) - timedelta(days=RERUN_WINDOW_DAYS))
    # The re-runs first, on their own: joined in one query, SQLite without statistics on runs chose
    # to scan every result (2 s at 1,000,000 results) to find none.
    reruns = [row["id"] for row in await db.fetchall(
        "SELECT id FROM runs WHERE rerun_of IS NOT NULL AND started_at >= ? LIMIT 100000", (since,))]
    found: dict[int, set[int]] = defaultdict(set)
    for chunk in chunks(reruns):
        for row in await db.fetchall(
            "SELECT DISTINCT ok.test_id, rr.minion_id FROM runs rr "
            "JOIN runs orig ON orig.minion_id = rr.minion_id AND orig.jid = rr.rerun_of "
            "JOIN results ok ON ok.run_id = rr.id AND ok.outcome IN ('passed', 'xpassed', 'xfailed') "
            "JOIN results bad ON bad.run_id = orig.id AND bad.test_id = ok.test_id "
            f"AND bad.outcome IN ('failed', 'error') WHERE rr.id IN ({_marks(chunk)})",
            chunk,
        ):
            found[row["test_id"]].add(row["minion_id"])
    return dict(found)


def _marks(items: list) -> str:
    return ",".join("?" * len(items))


async def _open_signatures(db, only: list[str] | None = None) -> dict[str, dict]:
    """Every open signature (or those of ``only``) from the summaries: failing minions and pairs,
    code-flipped pairs, and its tests with how many minions pass each now (``test_totals``)."""
    found: dict[str, dict] = {}
    tests: list[dict] = []
    if only is None:
        rows = await db.fetchall(
            "SELECT signature, minions, pairs, code_flip_pairs FROM signature_totals WHERE pairs > 0 LIMIT 100000")
        tests = await db.fetchall(
            "SELECT st.signature, st.test_id, t.nodeid, COALESCE(tt.passing, 0) AS passing FROM signature_tests st "
            "JOIN tests t ON t.id = st.test_id LEFT JOIN test_totals tt ON tt.test_id = st.test_id LIMIT 1000000")
    else:
        rows = []
        for chunk in chunks(only):
            rows += await db.fetchall(
                "SELECT signature, minions, pairs, code_flip_pairs FROM signature_totals "
                f"WHERE pairs > 0 AND signature IN ({_marks(chunk)})", chunk)
            tests += await db.fetchall(
                "SELECT st.signature, st.test_id, t.nodeid, COALESCE(tt.passing, 0) AS passing FROM signature_tests st "
                "JOIN tests t ON t.id = st.test_id LEFT JOIN test_totals tt ON tt.test_id = st.test_id "
                f"WHERE st.signature IN ({_marks(chunk)})", chunk)
    for row in rows:
        found[row["signature"]] = {**row, "test_ids": [], "nodeids": [], "passing_by_test": []}
    for row in tests:
        summary = found.get(row["signature"])
        if summary is not None:
            summary["test_ids"].append(row["test_id"])
            summary["nodeids"].append(row["nodeid"])
            summary["passing_by_test"].append(row["passing"])
    return found


_PASSING_SQL = "('passed', 'xpassed', 'xfailed')"


def _passing_where(test_ids: list[int]) -> tuple[str, list]:
    """SQL (alias ``p``) for minions whose latest outcome of one of ``test_ids`` passes and that do
    not fail the signature (bound first) on another of them: the signature's passing minions."""
    return (f"p.test_id IN ({_marks(test_ids)}) AND p.last_outcome IN {_PASSING_SQL} AND NOT EXISTS "
            "(SELECT 1 FROM signature_minions sm WHERE sm.signature = ? AND sm.minion_id = p.minion_id)",
            list(test_ids))


async def _passing_count(db, signature: str, summary: dict) -> int:
    """How many minions pass this signature's tests (exact). One test: from test_totals."""
    if len(summary["test_ids"]) <= 1 or not any(summary["passing_by_test"]):
        return sum(summary["passing_by_test"])
    where, params = _passing_where(summary["test_ids"])
    row = await db.fetchone(f"SELECT COUNT(DISTINCT p.minion_id) AS n FROM test_status p WHERE {where}",
                            (*params, signature))
    return row["n"] if row else 0


async def _muted_view(db, signature: str, summary: dict, mutes: MuteSet) -> tuple[set[int], set[int]]:
    """(failing minion ids, those with every failure muted) of a signature an active mute may cover.

    Only for signatures a mute names (or one of whose tests it names): mutes are few.
    """
    rows = await db.fetchall(
        "SELECT ts.minion_id, t.nodeid, m.grains FROM test_status ts JOIN tests t ON t.id = ts.test_id "
        "JOIN minions m ON m.id = ts.minion_id WHERE ts.last_signature = ?",
        (signature,),
    )
    failing, active = set(), set()
    grains: dict[int, dict] = {}
    for row in rows:
        failing.add(row["minion_id"])
        if row["minion_id"] not in grains:
            grains[row["minion_id"]] = loads(row["grains"], {})
        if not mutes.covers(signature, row["nodeid"], grains[row["minion_id"]]):
            active.add(row["minion_id"])
    return failing, failing - active


def _mute_targets(mutes: MuteSet) -> tuple[set[str], set[str]]:
    return ({m.target for m in mutes.mutes if m.kind == "signature"}, {m.target for m in mutes.mutes if m.kind == "test"})


async def _verdict_rows(db, open_sigs: dict[str, dict], rerun_passes: dict[int, set[int]],
                        mutes: MuteSet) -> list[dict]:
    """One summary row per open signature: verdict, failing now, muted; no per-minion lists yet."""
    muted_sigs, muted_tests = _mute_targets(mutes) if mutes else (set(), set())
    rows = []
    for signature, summary in open_sigs.items():
        reruns = set().union(*(rerun_passes.get(t, set()) for t in summary["test_ids"]))
        if reruns or summary["code_flip_pairs"]:
            verdict = "flaky"
        elif not any(summary["passing_by_test"]) or await _passing_count(db, signature, summary) == 0:
            verdict = "everywhere"
        else:
            verdict = "some-minions"
        failing_now, muted_ids = summary["minions"], set()
        if signature in muted_sigs or muted_tests.intersection(summary["nodeids"]):
            failing, muted_ids = await _muted_view(db, signature, summary, mutes)
            failing_now = len(failing) - len(muted_ids)
        rows.append({"signature": signature, "verdict": verdict, "failing_now": failing_now,
                     "muted": failing_now == 0, "minions_failing_count": summary["minions"],
                     "_summary": summary, "_muted_ids": muted_ids, "_reruns": reruns})
    return rows


async def _names(db, minion_ids: Iterable[int]) -> list[str]:
    names = []
    for chunk in chunks(sorted(minion_ids)):
        names += [row["name"] for row in await db.fetchall(
            f"SELECT name FROM minions WHERE id IN ({_marks(chunk)})", chunk)]
    return sorted(names)


async def _profile_features(db, profile_ids: set[int], cache: dict[int, frozenset]) -> None:
    wanted = sorted(p for p in profile_ids if p is not None and p not in cache)
    for chunk in chunks(wanted):
        for row in await db.fetchall(f"SELECT id, grains FROM grain_profiles WHERE id IN ({_marks(chunk)})", chunk):
            grains = loads(row["grains"], {})
            cache[row["id"]] = frozenset(_grain_features(grains if isinstance(grains, dict) else {}))


async def _row_grains(db, signature: str, summary: dict, page: _PageLists) -> list[dict]:
    """Separating grains of one signature, counted over grain profiles (signature_profiles, test_profiles)."""
    failing = page.failing_profiles.get(signature, {})
    test_ids = summary["test_ids"]
    if len(test_ids) == 1:
        passing = page.passing_profiles.get(test_ids[0], {})
    else:
        where, params = _passing_where(test_ids)
        passing = {row["profile_id"]: row["n"] for row in await db.fetchall(
            f"SELECT m.grain_profile AS profile_id, COUNT(DISTINCT p.minion_id) AS n FROM test_status p "
            f"JOIN minions m ON m.id = p.minion_id WHERE {where} GROUP BY m.grain_profile", (*params, signature))}
    await _profile_features(db, set(failing) | set(passing), page.features)
    return _separating_counted(_merge(failing, page.features), _merge(passing, page.features))


def _merge(counts: dict[int, int], cache: dict[int, frozenset]) -> Counter:
    merged: Counter = Counter()
    for profile, minions in counts.items():
        merged[cache.get(profile, frozenset())] += minions
    return merged


async def _per_key(db, part: str, keys: list, key_type: str, *params: Any) -> list[dict]:
    """``part`` (a bounded SELECT naming its key ``{key}``) for each of ``keys``, in one statement
    per 100 keys (dialect.per_key_sql): one round trip, not one per key."""
    rows: list[dict] = []
    postgres = getattr(db, "dialect", None) == POSTGRES
    for chunk in chunks(keys, 100):
        sql = per_key_sql(POSTGRES if postgres else SQLITE, part, len(chunk), key_type)
        values = [chunk, *params] if postgres else [value for key in chunk for value in (key, *params)]
        rows += await db.fetchall(sql, values)
    return rows


@dataclass
class _PageLists:
    """What the rows of one page need, read for all of them at once."""

    failing_names: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    passing_names: dict[int, list[str]] = field(default_factory=lambda: defaultdict(list))
    since: dict[tuple[str, int], str] = field(default_factory=dict)
    failing_profiles: dict[str, dict[int, int]] = field(default_factory=lambda: defaultdict(dict))
    passing_profiles: dict[int, dict[int, int]] = field(default_factory=lambda: defaultdict(dict))
    features: dict[int, frozenset] = field(default_factory=dict)


async def _in_chunks(db, sql: str, keys: list) -> list[dict]:
    """``sql`` (with ``{marks}`` for an IN list) over ``keys``, SQL_CHUNK keys a statement."""
    rows: list[dict] = []
    for chunk in chunks(keys):
        rows += await db.fetchall(sql.format(marks=_marks(chunk)), chunk)
    return rows


T = TypeVar("T")


async def _together(db, *reads: Awaitable[T]) -> list[T]:
    """Independent reads of one page: at once on PostgreSQL (round trips overlap, each on its own
    reader); one after the other on SQLite, where the readers are threads of this process and
    running them at once cost more than it saved (10k minions: /api/failures p50 ~60 -> ~85 ms)."""
    if getattr(db, "dialect", None) == POSTGRES:
        return list(await asyncio.gather(*reads))
    return [await read for read in reads]


async def _page_lists(db, rows: list[dict], cap: int) -> _PageLists:
    page = _PageLists()
    signatures = [row["signature"] for row in rows]
    # Single-test signatures whose test passes somewhere (test_totals.passing): a test failing on
    # every minion has no passing minion or profile to list, and looking would read all its rows.
    single = sorted({row["_summary"]["test_ids"][0] for row in rows
                     if len(row["_summary"]["test_ids"]) == 1 and row["_summary"]["passing_by_test"][0] > 0})
    pairs = [(t, row["signature"]) for row in rows for t in row["_summary"]["test_ids"][:SINCE_TESTS]]
    # Five reads that do not depend on each other (at once on PostgreSQL: _together).
    failing_names, passing_names, since, failing_profiles, passing_profiles = await _together(
        db,
        _per_key(db, "SELECT sm.signature, m.name FROM signature_minions sm JOIN minions m ON m.id = sm.minion_id "
                 "WHERE sm.signature = {key} ORDER BY sm.minion_id LIMIT ?", signatures, "text", cap),
        _per_key(db, "SELECT p.test_id, m.name FROM test_status p JOIN minions m ON m.id = p.minion_id "
                 f"WHERE p.test_id = {{key}} AND p.last_outcome IN {_PASSING_SQL} LIMIT ?", single, "bigint", cap),
        # The oldest open streaks of each test, in test_status_failing's order: the first with the
        # signature is its failing-since. (Filtering by signature in SQL made both planners sort every
        # failing pair of the signature instead.) A test shared by many signatures may need more.
        _per_key(db, "SELECT test_id, last_signature, first_fail_at FROM test_status WHERE test_id = {key} "
                 "AND first_fail_at IS NOT NULL ORDER BY first_fail_at LIMIT ?", sorted({t for t, _ in pairs}),
                 "bigint", SINCE_LOOKAHEAD),
        _in_chunks(db, "SELECT signature, profile_id, minions FROM signature_profiles WHERE signature IN ({marks})",
                   signatures),
        _in_chunks(db, "SELECT test_id, profile_id, passing FROM test_profiles WHERE test_id IN ({marks})", single),
    )
    for row in failing_names:
        page.failing_names[row["signature"]].append(row["name"])
    for row in passing_names:
        page.passing_names[row["test_id"]].append(row["name"])
    for row in since:
        page.since.setdefault((row["last_signature"], row["test_id"]), row["first_fail_at"])
    for row in failing_profiles:
        page.failing_profiles[row["signature"]][row["profile_id"]] = row["minions"]
    for row in passing_profiles:
        page.passing_profiles[row["test_id"]][row["profile_id"]] = row["passing"]
    for test_id, signature in pairs:
        if (signature, test_id) not in page.since:
            found = await db.fetchone(
                "SELECT MIN(first_fail_at) AS since FROM test_status WHERE test_id = ? AND last_signature = ?",
                (test_id, signature))
            if found and found["since"]:
                page.since[(signature, test_id)] = found["since"]
    return page


async def _failing_since(db, signature: str, test_ids: list[int], page: _PageLists) -> str | None:
    """The oldest open failing streak with this signature."""
    if len(test_ids) > SINCE_TESTS:
        row = await db.fetchone("SELECT MIN(first_fail_at) AS since FROM test_status WHERE last_signature = ?",
                                (signature,))
        return row["since"] if row else None
    starts = [page.since[(signature, t)] for t in test_ids if (signature, t) in page.since]
    return min(starts) if starts else None


async def _fill_rows(db, rows: list[dict], other_sigs: dict[int, set[str]], cap: int) -> list[dict]:
    """The per-minion lists (capped at ``cap``, with exact ``*_count``), separating grains and
    failing-since of summary rows: only for the rows of a page, read for all of them at once."""
    page = await _page_lists(db, rows, cap)
    return [await _fill_row(db, row, other_sigs, page, cap) for row in rows]


async def _fill_row(db, row: dict, other_sigs: dict[int, set[str]], page: _PageLists, cap: int) -> dict:
    signature, summary = row["signature"], row.pop("_summary")
    test_ids = summary["test_ids"]
    failing_names = page.failing_names.get(signature, [])
    if len(test_ids) == 1:
        passing_count = summary["passing_by_test"][0]
        passing_names = page.passing_names.get(test_ids[0], [])
    else:
        passing_count = await _passing_count(db, signature, summary)
        where, params = _passing_where(test_ids)
        passing_names = [r["name"] for r in await db.fetchall(
            f"SELECT DISTINCT m.name FROM test_status p JOIN minions m ON m.id = p.minion_id WHERE {where} LIMIT ?",
            (*params, signature, cap))] if passing_count else []
    # Minions failing these tests with another signature: neither failing nor passing for this one.
    others = sorted(set().union(*(other_sigs.get(t, set()) for t in test_ids)) - {signature})
    otherwise: list[str] = []
    if others:
        where, params = _passing_where(test_ids)
        otherwise = [r["name"] for r in await db.fetchall(
            "SELECT DISTINCT m.name FROM test_status ts JOIN minions m ON m.id = ts.minion_id "
            f"WHERE ts.last_signature IN ({_marks(others[:SQL_CHUNK])}) AND ts.test_id IN ({_marks(test_ids)}) "
            "AND NOT EXISTS (SELECT 1 FROM signature_minions f WHERE f.signature = ? AND f.minion_id = ts.minion_id) "
            f"AND NOT EXISTS (SELECT 1 FROM test_status p WHERE p.minion_id = ts.minion_id AND {where}) LIMIT 100000",
            (*others[:SQL_CHUNK], *test_ids, signature, *params, signature))]
    reruns = row.pop("_reruns")
    muted_ids = row.pop("_muted_ids")
    nodeids = sorted(summary["nodeids"])
    row.update({
        "tests": nodeids[:cap], "tests_count": len(nodeids),
        "minions_failing": sorted(failing_names), "minions_passing": sorted(passing_names),
        "minions_passing_count": passing_count,
        "minions_failing_otherwise": sorted(otherwise)[:cap], "minions_failing_otherwise_count": len(otherwise),
        "minions_muted": (await _names(db, muted_ids))[:cap], "minions_muted_count": len(muted_ids),
        "minions_passed_on_rerun": (await _names(db, reruns))[:cap],
        "failing_since": await _failing_since(db, signature, test_ids, page),
        "grains": await _row_grains(db, signature, summary, page) if row["verdict"] != "everywhere" else [],
        "known_issue": None,
        "_test_ids": test_ids,
    })
    return row


def _tests_shared(open_sigs: dict[str, dict]) -> dict[int, set[str]]:
    """test id -> the open signatures failing it, for tests that more than one signature fails."""
    by_test: dict[int, set[str]] = defaultdict(set)
    for signature, summary in open_sigs.items():
        for test_id in summary["test_ids"]:
            by_test[test_id].add(signature)
    return {test_id: sigs for test_id, sigs in by_test.items() if len(sigs) > 1}


async def _signature_info(db, signatures: list[str]) -> dict[str, dict]:
    info: dict[str, dict] = {}
    for chunk in chunks(signatures):
        marks = ",".join("?" * len(chunk))
        for row in await db.fetchall(
            "SELECT signature, exception, message, location, first_seen, first_run_id, last_seen, last_run_id, "
            f"occurrences FROM signatures WHERE signature IN ({marks})",
            chunk,
        ):
            info[row["signature"]] = row
    return info


async def _known_issues(db, signatures: list[str]) -> dict[str, dict]:
    found: dict[str, dict] = {}
    for chunk in chunks(signatures):
        for row in await db.fetchall(
            "SELECT signature, note, url, created_by, created_at, updated_by, updated_at FROM known_issues "
            f"WHERE signature IN ({','.join('?' * len(chunk))})",
            chunk,
        ):
            found[row.pop("signature")] = row
    return found


async def _code_changes(db, rows: list[dict]) -> None:
    """Say, for each row, whether its first failing run came with a code_hash change on that minion."""
    _note_code_changes(rows, await _first_runs(db, [row.get("first_run") for row in rows]))


async def _first_runs(db, run_ids: Iterable[int | None]) -> dict[int, dict]:
    """run id -> its code_hash, minion, start and the code_hash of that minion's run before it."""
    run_ids = sorted({run_id for run_id in run_ids if run_id})
    found: dict[int, dict] = {}
    for chunk in chunks(run_ids):
        for row in await db.fetchall(
            "SELECT r.id, r.code_hash, m.name AS minion, r.started_at, "
            "(SELECT p.code_hash FROM runs p WHERE p.minion_id = r.minion_id AND (p.started_at, p.id) < (r.started_at, r.id) "
            " ORDER BY p.started_at DESC, p.id DESC LIMIT 1) AS previous_hash "
            f"FROM runs r JOIN minions m ON m.id = r.minion_id WHERE r.id IN ({','.join('?' * len(chunk))})",
            chunk,
        ):
            found[row["id"]] = row
    return found


def _note_code_changes(rows: list[dict], found: dict[int, dict]) -> None:
    for row in rows:
        first = found.get(row.get("first_run"))
        change = None
        if first is not None:
            row["first_minion"] = first["minion"]
            if first["code_hash"] and first["previous_hash"]:
                change = {"changed": first["code_hash"] != first["previous_hash"],
                          "from": first["previous_hash"], "to": first["code_hash"]}
        row["code_change"] = change
        if change is None:
            row["code_note"] = "code_hash unknown around the first failure"
        elif change["changed"]:
            row["code_note"] = (f"first failed right after a code change ({change['from'][:12]} → {change['to'][:12]})")
        else:
            row["code_note"] = "first failed on unchanged code (same code_hash as the run before)"


def _sort_key(row: dict) -> tuple:
    # Muted rows after the others; then most minions failing now; then the signature (stable order).
    return (1 if row["muted"] else 0, -row["failing_now"], -row["minions_failing_count"], row["signature"])


async def _no_search() -> None:
    return None


async def _summary_rows(db) -> tuple[dict[str, dict], dict[int, set[int]], list[dict]]:
    """(open signatures, tests passed on a re-run, one verdict row per open signature)."""
    open_sigs = await _open_signatures(db)
    rerun_passes = await passed_on_rerun(db)
    return open_sigs, rerun_passes, await _verdict_rows(db, open_sigs, rerun_passes, await active_mutes(db))


async def open_failures(
    db,
    *,
    verdict: str | None = None,
    minion: str | None = None,
    test: str | None = None,
    q: str | None = None,
    limit: int | None = None,
    cursor: str | None = None,
) -> dict[str, Any]:
    """One row per open signature across the fleet, most minions first, with verdicts and grains.

    Filters: ``verdict`` (everywhere | some-minions | flaky), ``minion`` (fails on it), ``test``
    (substring of an affected test id), ``q`` (words in a failure message or traceback, FTS).
    Returns ``{"failures": [...], "next": cursor or None, "summary": {...}, "sick_hosts": [...]}``.
    Reads the signature summaries (migration 8) for every open signature, and per-minion lists,
    grains and dates only for the rows of the page.
    """
    limit = clamp_limit(limit)
    if verdict and verdict not in VERDICTS:
        raise InputError(f"Unknown verdict {verdict!r}; one of: {', '.join(VERDICTS)}.")
    after = decode_cursor(cursor, (int, int, int, str))
    if q:
        _words(q)  # a search without a word is refused before any query
    # The search, the summaries and the sick hosts read apart from each other (at once on PostgreSQL).
    wanted, (open_sigs, rerun_passes, rows), sick = await _together(
        db, search_signatures(db, q) if q else _no_search(), _summary_rows(db), sick_hosts(db))
    summary = {
        "signatures": len(rows),
        "failing_now": sum(1 for row in rows if not row["muted"]),
        "muted": sum(1 for row in rows if row["muted"]),
        "failing_pairs_now": sum(row["failing_now"] for row in rows),
        "by_verdict": dict(Counter(row["verdict"] for row in rows if not row["muted"])),
        # Tests that failed and then passed on a re-run lately, open or not (flaky by re-run).
        "passed_on_rerun": len(rerun_passes),
    }
    if wanted is not None:
        rows = [row for row in rows if row["signature"] in wanted]
    if verdict:
        rows = [row for row in rows if row["verdict"] == verdict]
    if minion:
        on_minion = {r["signature"] for r in await db.fetchall(
            "SELECT sm.signature FROM signature_minions sm JOIN minions m ON m.id = sm.minion_id WHERE m.name = ?",
            (minion,))}
        rows = [row for row in rows if row["signature"] in on_minion]
    if test:
        needle = test.lower()
        rows = [row for row in rows if any(needle in nodeid.lower() for nodeid in row["_summary"]["nodeids"])]
    rows.sort(key=_sort_key)
    if after:
        key = tuple(after)
        rows = [row for row in rows if _sort_key(row) > key]
    page, more = rows[:limit], len(rows) > limit
    signatures = [row["signature"] for row in page]
    # The per-minion lists, and the signatures' own texts, first runs and notes (at once on PostgreSQL).
    page, (info, first_runs), known = await _together(
        db,
        _fill_rows(db, page, _tests_shared(open_sigs), ROW_LIST_CAP), _texts_and_first_runs(db, signatures),
        _known_issues(db, signatures))
    _describe(page, info, known)
    _note_code_changes(page, first_runs)
    return {
        "failures": page,
        "next": encode_cursor(*_sort_key(page[-1])) if more and page else None,
        "summary": summary,
        "sick_hosts": sick,
    }


async def _texts_and_first_runs(db, signatures: list[str]) -> tuple[dict[str, dict], dict[int, dict]]:
    info = await _signature_info(db, signatures)
    return info, await _first_runs(db, [row["first_run_id"] for row in info.values()])


def _describe(page: list[dict], info: dict[str, dict], known: dict[str, dict]) -> None:
    """Signature text, first/last runs and known issue of the rows of a page (then :func:`_note_code_changes`)."""
    for row in page:
        meta = info.get(row["signature"], {})
        for key in ("exception", "message", "location", "first_seen", "last_seen", "occurrences"):
            row[key] = meta.get(key)
        row["first_run"], row["last_run"] = meta.get("first_run_id"), meta.get("last_run_id")
        row["known_issue"] = known.get(row["signature"])
        row.pop("_test_ids", None)


def _histogram_median(histogram: list[tuple[int, int]]) -> float:
    """The median of values given as (value, how many) pairs."""
    total = sum(count for _, count in histogram)
    if not total:
        return 0
    seen = 0
    for value, count in sorted(histogram):
        seen += count
        if seen * 2 >= total:
            return value
    return 0


async def sick_hosts(db) -> list[dict]:
    """Minions failing many unrelated signatures at once: the machine, not the tests.

    A minion is sick when at least :data:`SICK_HOST_MIN_SIGNATURES` (and twice the fleet's
    median of failing tests per minion) open signatures fail on it that do not fail everywhere
    (some minion passes their tests), its muted failures left out. Read from the summaries for
    any fleet size: only the :data:`SICK_HOST_CANDIDATES` minions failing the most tests, and at
    least that many (``minions.failing``), are looked at.
    """
    # The fleet's median of failing tests per minion (an upper bound of its signatures), from a histogram.
    histogram = await db.fetchall("SELECT failing, COUNT(*) AS minions FROM minions GROUP BY failing LIMIT 100000")
    median = _histogram_median([(row["failing"] or 0, row["minions"]) for row in histogram])
    threshold = max(SICK_HOST_MIN_SIGNATURES, 2 * median)
    # The most failing ones first, a bounded number: the banner names the worst, not all of them.
    candidate_rows = await db.fetchall(
        "SELECT id, name FROM minions WHERE failing >= ? ORDER BY failing DESC, id LIMIT ?",
        (threshold, SICK_HOST_CANDIDATES),
    )
    candidates = {row["id"]: row["name"] for row in candidate_rows}
    if not candidates:
        return []
    ids = list(candidates)
    mutes = await active_mutes(db)
    if not mutes:  # no failure to leave out: count each candidate's signatures some minion passes, in SQL
        counted = await db.fetchall(
            "SELECT sm.minion_id, COUNT(*) AS signatures FROM signature_minions sm "
            f"WHERE sm.minion_id IN ({_marks(ids)}) AND sm.signature IN (SELECT st.signature FROM signature_tests st "
            "JOIN test_totals tt ON tt.test_id = st.test_id WHERE tt.passing > 0) GROUP BY sm.minion_id",
            ids,
        )
        return sorted(
            ({"minion": candidates[row["minion_id"]], "signatures": row["signatures"], "fleet_median": median}
             for row in counted if row["signatures"] >= threshold),
            key=lambda item: (-item["signatures"], item["minion"]),
        )
    # Which of their failures are muted: their failing rows, with test ids.
    rows = await db.fetchall(
        "SELECT ts.minion_id, ts.test_id, ts.last_signature, t.nodeid FROM test_status ts "
        "JOIN tests t ON t.id = ts.test_id "
        f"WHERE ts.minion_id IN ({_marks(ids)}) AND ts.last_signature IS NOT NULL",
        ids,
    )
    tests_of: dict[str, set[int]] = defaultdict(set)
    for row in rows:
        tests_of[row["last_signature"]].add(row["test_id"])
    # Tests some minion passes now (test_totals.passing, kept at ingest).
    passing_tests: set[int] = set()
    for chunk in chunks(sorted(set().union(*tests_of.values()))):
        passing_tests.update(row["test_id"] for row in await db.fetchall(
            f"SELECT test_id FROM test_totals WHERE test_id IN ({_marks(chunk)}) AND passing > 0", chunk))
    # A signature none of whose tests passes anywhere fails everywhere: the test's (or the code's) fault.
    everywhere = {signature for signature, test_ids in tests_of.items() if not test_ids & passing_tests}
    local: dict[int, set[str]] = defaultdict(set)
    grains: dict[int, dict] = {}
    for row in rows:
        if row["last_signature"] in everywhere:
            continue
        if row["minion_id"] not in grains:
            found = await db.fetchone("SELECT grains FROM minions WHERE id = ?", (row["minion_id"],))
            grains[row["minion_id"]] = loads(found["grains"] if found else None, {})
        if mutes.covers(row["last_signature"], row["nodeid"], grains[row["minion_id"]]):
            continue
        local[row["minion_id"]].add(row["last_signature"])
    return sorted(
        ({"minion": candidates[m], "signatures": len(sigs), "fleet_median": median}
         for m, sigs in local.items() if len(sigs) >= threshold),
        key=lambda item: (-item["signatures"], item["minion"]),
    )


async def muted_failing_pairs(db) -> int:
    """How many (minion, test) pairs failing now are muted (left out of "failing now" figures).

    Reads only the rows of muted signatures and tests: nothing at all while no mute is active.
    """
    mutes = await active_mutes(db)
    if not mutes:
        return 0
    signatures = sorted({m.target for m in mutes.mutes if m.kind == "signature"})
    nodeids = sorted({m.target for m in mutes.mutes if m.kind == "test"})
    rows: list[dict] = []
    for chunk in chunks(signatures):
        rows += await db.fetchall(
            "SELECT ts.last_signature, t.nodeid, m.grains FROM test_status ts JOIN tests t ON t.id = ts.test_id "
            f"JOIN minions m ON m.id = ts.minion_id WHERE ts.last_signature IN ({','.join('?' * len(chunk))})",
            chunk,
        )
    for chunk in chunks(nodeids):
        rows += await db.fetchall(
            "SELECT ts.last_signature, t.nodeid, m.grains FROM tests t JOIN test_status ts ON ts.test_id = t.id "
            f"JOIN minions m ON m.id = ts.minion_id WHERE t.nodeid IN ({','.join('?' * len(chunk))}) "
            "AND ts.last_outcome IN ('failed', 'error') AND (ts.last_signature IS NULL OR ts.last_signature NOT IN "
            f"({','.join('?' * len(signatures)) or 'NULL'}))",
            (*chunk, *signatures),
        )
    return sum(1 for row in rows if mutes.covers(row["last_signature"], row["nodeid"], loads(row["grains"], {})))


# -- read side: one signature ------------------------------------------------------------------


def _bucket(moment: str, hourly: bool) -> str:
    return moment[:13] + ":00" if hourly else moment[:10]


async def pass_rate_over_time(db, test_ids: list[int], per_test: int = 300) -> list[dict]:
    """Pass rate of ``test_ids`` across the fleet per day (per hour when the history spans < 2 days)."""
    outcomes: list[tuple[str, str, int]] = []
    for test_id in test_ids[:3]:  # the latest results of its first tests: a bounded read
        outcomes += [
            (row["started_at"], row["outcome"], row["run_id"])
            for row in await db.fetchall(
                "SELECT r.started_at, x.outcome, x.run_id FROM results x JOIN runs r ON r.id = x.run_id "
                "WHERE x.test_id = ? ORDER BY x.run_id DESC LIMIT ?",
                (test_id, per_test),
            )
        ]
    if not outcomes:
        return []
    times = sorted(o[0] for o in outcomes)
    hourly = times[0][:10] >= times[-1][:10] or (times[-1][:10] > times[0][:10] and _days_between(times[0], times[-1]) < 2)
    buckets: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for started_at, outcome, run_id in outcomes:
        bucket = buckets[_bucket(started_at, hourly)]
        if outcome in PASSING:
            bucket[0] += 1
        elif outcome in FAILING:
            bucket[1] += 1
        bucket[2] = max(bucket[2], run_id)
    return [
        {"bucket": key, "started_at": key, "passed": p, "failed": f, "pass_rate": p / (p + f) if p + f else None,
         "run_id": last, "status": "passed" if not f else "failed"}
        for key, (p, f, last) in sorted(buckets.items())
    ]


def _days_between(a: str, b: str) -> float:
    try:
        start = datetime.fromisoformat(a.replace("Z", "+00:00"))
        end = datetime.fromisoformat(b.replace("Z", "+00:00"))
    except ValueError:
        return 0.0
    return (end - start).total_seconds() / 86400


async def _signatures_sharing(db, test_ids: list[int]) -> dict[int, set[str]]:
    """test id -> the open signatures failing it, for ``test_ids``."""
    by_test: dict[int, set[str]] = defaultdict(set)
    for chunk in chunks(test_ids):
        for row in await db.fetchall(
            f"SELECT signature, test_id FROM signature_tests WHERE test_id IN ({_marks(chunk)})", chunk
        ):
            by_test[row["test_id"]].add(row["signature"])
    return by_test


# The signature page's list of latest outcomes, filtered by ``outcome``: failing with this
# signature, passing, or the rest (failing otherwise, skipped).
LATEST_OUTCOMES = ("signature", "passing", "other")
LATEST_SCAN_BUDGET = 2000  # test_status rows a filtered page reads at most (it may come back short)
_LATEST_COLUMNS = ("SELECT m.name AS minion, t.nodeid, ts.minion_id, ts.test_id, ts.last_outcome, ts.last_signature, "
                   "ts.last_run_id, ts.last_started_at, ts.first_fail_at, ts.code_flips FROM test_status ts "
                   "JOIN minions m ON m.id = ts.minion_id JOIN tests t ON t.id = ts.test_id ")


def latest_cursor(cursor: str | None) -> list[int] | None:
    """Decode the latest-outcomes cursor: [section, key, key] (0: failing with it, by minion then
    test; 1: the others, by test then minion), or raise InputError."""
    values = decode_cursor(cursor, (int, int, int))
    if values is not None and values[0] not in (0, 1):
        raise InputError("Invalid cursor.")
    return values


async def _latest_outcomes(db, signature: str, test_ids: list[int], limit: int, after: list[int] | None,
                           outcome: str | None) -> tuple[list[dict], str | None]:
    """One page of minions' latest outcomes of these tests, those failing with this signature
    first, and the cursor of the next page.

    Keyset paging over indexes: the failing rows through ``signature_minions`` (signature,
    minion_id) joined to each minion's signed ``test_status`` rows; the others one test at a
    time through ``test_status_test``. A page reads about ``limit`` rows, whatever the fleet.
    """
    section, first, second = after or (0, -1, -1)
    rows: list[dict] = []
    if section == 0 and outcome in (None, "signature"):
        rows = await db.fetchall(
            _LATEST_COLUMNS + "JOIN signature_minions sm ON sm.minion_id = ts.minion_id "
            "AND ts.last_signature = sm.signature WHERE sm.signature = ? "
            # A range on sm's key (not an OR of two) keeps the walk in index order, with no sort.
            "AND sm.minion_id >= ? AND (sm.minion_id > ? OR ts.test_id > ?) ORDER BY sm.minion_id, ts.test_id LIMIT ?",
            (signature, first, first, second, limit + 1),
        )
        section, first, second = 1, -1, -1
    if outcome == "signature":
        test_ids = []
    wanted = {"passing": f"AND ts.last_outcome IN {_PASSING_SQL} ",
              "other": f"AND ts.last_outcome NOT IN {_PASSING_SQL} "}.get(outcome or "", "")
    budget = LATEST_SCAN_BUDGET
    stopped_at = None  # (test id, minion id) where a filtered page spent its budget
    for test_id in test_ids:
        if len(rows) > limit:
            break
        if test_id < first:
            continue
        after_minion, upto = second if test_id == first else -1, INT64_MAX
        if wanted:
            # A filter may skip most rows: read at most the budget's worth of index entries, and
            # end the page (maybe short) where they end.
            scan = await db.fetchone(
                "SELECT MAX(minion_id) AS upto, COUNT(*) AS n FROM (SELECT minion_id FROM test_status "
                "WHERE test_id = ? AND minion_id > ? ORDER BY minion_id LIMIT ?) AS scanned",
                (test_id, after_minion, budget),
            )
            if not scan or not scan["n"]:
                continue
            budget -= scan["n"]
            if budget <= 0:
                upto, stopped_at = scan["upto"], (test_id, scan["upto"])
        rows += await db.fetchall(
            _LATEST_COLUMNS + "WHERE ts.test_id = ? AND ts.minion_id > ? AND ts.minion_id <= ? "
            "AND (ts.last_signature IS NULL OR ts.last_signature <> ?) " + wanted + "ORDER BY ts.minion_id LIMIT ?",
            (test_id, after_minion, upto, signature, limit + 1 - len(rows)),
        )
        if stopped_at:
            break
    following = None
    if len(rows) > limit:
        rows = rows[:limit]
        last = rows[-1]
        following = (encode_cursor(0, last["minion_id"], last["test_id"]) if last["last_signature"] == signature
                     else encode_cursor(1, last["test_id"], last["minion_id"]))
    elif stopped_at:
        following = encode_cursor(1, *stopped_at)
    for row in rows:
        del row["minion_id"], row["test_id"]
    return rows, following


async def _latest_count(db, test_ids: list[int]) -> int:
    """How many (minion, test) latest outcomes these tests have in all (test_totals)."""
    total = 0
    for chunk in chunks(test_ids):
        row = await db.fetchone(f"SELECT SUM(minions) AS n FROM test_totals WHERE test_id IN ({_marks(chunk)})", chunk)
        total += (row["n"] or 0) if row else 0
    return total


async def get_signature(db, signature: str, *, cursor: str | None = None,
                        outcome: str | None = None) -> dict[str, Any] | None:
    """One signature: its open row (or its last known state), history, every minion's latest outcome
    (paged by ``cursor``, filtered by ``outcome``: one of LATEST_OUTCOMES), one full traceback, the
    pass rate over time, known issue, mutes and the triage log."""
    if not is_signature(signature):
        raise InputError("A signature is 16 hexadecimal digits.")
    after = latest_cursor(cursor)
    if outcome and outcome not in LATEST_OUTCOMES:
        raise InputError(f"outcome is one of {', '.join(LATEST_OUTCOMES)}.")
    meta = await db.fetchone(
        "SELECT signature, exception, message, location, first_seen, first_run_id, last_seen, last_run_id, occurrences "
        "FROM signatures WHERE signature = ?",
        (signature,),
    )
    if meta is None:
        return None
    open_sigs = await _open_signatures(db, [signature])
    rows = await _verdict_rows(db, open_sigs, await passed_on_rerun(db), await active_mutes(db)) if open_sigs else []
    history = await signature_history(db, signature)
    sample = None
    if history:
        sample = await db.fetchone(
            "SELECT x.id, x.run_id, x.message, x.longrepr, x.stdout, x.stderr, t.nodeid, m.name AS minion, r.started_at "
            "FROM results x JOIN tests t ON t.id = x.test_id JOIN runs r ON r.id = x.run_id "
            "JOIN minions m ON m.id = r.minion_id WHERE x.id = ?",
            (history[0]["id"],),
        )
    if rows:
        test_ids = sorted(open_sigs[signature]["test_ids"])
        [row] = await _fill_rows(db, rows, await _signatures_sharing(db, test_ids), LIST_CAP)
        row.pop("_test_ids")
        state = "open"
    else:
        row = {"signature": signature, "exception": meta["exception"], "message": meta["message"],
               "location": meta["location"], "tests": sorted({h["nodeid"] for h in history}),
               "minions_failing": [], "minions_passing": [], "minions_failing_otherwise": [], "minions_muted": [],
               "minions_failing_count": 0, "minions_passing_count": 0, "minions_failing_otherwise_count": 0,
               "minions_muted_count": 0, "failing_now": 0, "verdict": None, "grains": [], "muted": False,
               "failing_since": None}
        row["tests_count"] = len(row["tests"])
        test_ids = [t["id"] for t in await db.fetchall(
            f"SELECT id FROM tests WHERE nodeid IN ({','.join('?' * len(row['tests'][:SQL_CHUNK]))})",
            row["tests"][:SQL_CHUNK],
        )] if row["tests"] else []
        state = "closed"
    row.update(first_seen=meta["first_seen"], first_run=meta["first_run_id"], last_seen=meta["last_seen"],
               last_run=meta["last_run_id"], occurrences=meta["occurrences"], state=state)
    await _code_changes(db, [row])
    latest, latest_next = await _latest_outcomes(db, signature, sorted(test_ids), LIST_CAP, after, outcome or None)
    known = (await _known_issues(db, [signature])).get(signature)
    mutes = await db.fetchall(
        "SELECT id, kind, target, grain, grain_value, reason, created_by, created_at, expires_at, removed_by, removed_at "
        "FROM mutes WHERE (kind = 'signature' AND target = ?) OR (kind = 'test' AND target IN "
        f"({','.join('?' * len(row['tests'][:SQL_CHUNK])) or 'NULL'})) ORDER BY id DESC LIMIT 100",
        (signature, *row["tests"][:SQL_CHUNK]),
    )
    now = format_timestamp(datetime.now(UTC))
    for mute in mutes:
        mute["active"] = mute["removed_at"] is None and mute["expires_at"] > now
    log = await db.fetchall(
        "SELECT id, at, username, action, signature, test, detail FROM triage_log WHERE signature = ? "
        "ORDER BY id DESC LIMIT 100",
        (signature,),
    )
    for entry in log:
        entry["detail"] = loads(entry["detail"], {})
    row["known_issue"] = known
    return {
        **row,
        "history": history,
        "sample": sample,
        "latest": latest,
        "latest_count": max(await _latest_count(db, test_ids), len(latest)),
        "latest_outcome": outcome or None,
        "next": latest_next,
        "chart": await pass_rate_over_time(db, test_ids),
        "mutes": mutes,
        "log": log,
    }


# -- read side: new / fixed / still failing --------------------------------------------------


async def _previous_run(db, run: dict) -> dict | None:
    row = await db.fetchone(
        "SELECT id, started_at FROM (SELECT id, paths, started_at FROM runs WHERE minion_id = ? "
        "AND (started_at, id) < (?, ?) ORDER BY started_at DESC, id DESC LIMIT ?) AS recent WHERE paths = ? LIMIT 1",
        (run["minion_id"], run["started_at"], run["id"], PREVIOUS_RUN_LOOKBACK, run["paths_json"]),
    )
    return row


_ORDER = {"failed": 0, "error": 1, "passed": 2, "xpassed": 3, "xfailed": 4, "skipped": 5}


async def _verdicts(db, run_id: int) -> dict[str, tuple[str, str | None, int]]:
    """nodeid -> (worst outcome, its signature, test id) in one run."""
    found: dict[str, tuple[str, str | None, int]] = {}
    for row in await db.fetchall(
        "SELECT t.nodeid, x.test_id, x.outcome, x.signature FROM results x JOIN tests t ON t.id = x.test_id "
        "WHERE x.run_id = ? LIMIT 20000",
        (run_id,),
    ):
        seen = found.get(row["nodeid"])
        if seen is None or _ORDER.get(row["outcome"], 9) < _ORDER.get(seen[0], 9):
            found[row["nodeid"]] = (row["outcome"], row["signature"] or (seen[1] if seen else None), row["test_id"])
    return found


def _compare(now: dict, before: dict | None) -> tuple[list, list, list]:
    """(new, still failing, fixed) keys, from two {key: (outcome, ...)} maps; ``before`` None: no previous run."""
    new, still = [], []
    for key, verdict in sorted(now.items()):
        if verdict[0] not in FAILING:
            continue
        if before is not None and before.get(key, ("",))[0] in FAILING:
            still.append(key)
        else:
            new.append(key)
    fixed = sorted(k for k, v in (before or {}).items() if v[0] in FAILING and k in now and now[k][0] in PASSING)
    return new, still, fixed


async def run_changes(db, run_id: int) -> dict[str, Any] | None:
    """New / still failing (since when) / fixed for one run, against its minion's previous run of the same paths."""
    run = await db.fetchone(
        "SELECT id, minion_id, paths AS paths_json, started_at FROM runs WHERE id = ?", (run_id,)
    )
    if run is None:
        return None
    previous = await _previous_run(db, run)
    now = await _verdicts(db, run_id)
    before = await _verdicts(db, previous["id"]) if previous else None
    new_ids, still_ids, fixed = _compare(now, before)
    starts = await _streak_starts(db, run, {now[n][2] for n in still_ids})
    new = [{"nodeid": n, "outcome": now[n][0], "signature": now[n][1]} for n in new_ids]
    still = [{"nodeid": n, "outcome": now[n][0], "signature": now[n][1], "since": starts.get(now[n][2])}
             for n in still_ids]
    return {
        "previous_run": previous["id"] if previous else None,
        "previous_started_at": previous["started_at"] if previous else None,
        "new": new,
        "still_failing": still,
        "fixed": fixed,
        "counts": {"new": len(new), "still_failing": len(still), "fixed": len(fixed)},
    }


async def _streak_starts(db, run: dict, test_ids: set[int]) -> dict[int, dict]:
    """Per test id: the first run of the failing streak ``run`` is part of on its minion.

    Exact from ``test_status`` when ``run`` is the test's latest on that minion; else looked for
    in the minion's previous :data:`STREAK_LOOKBACK` runs (``complete`` False when it goes back further).
    """
    if not test_ids:
        return {}
    ids = sorted(test_ids)[:SQL_CHUNK]
    marks = ",".join("?" * len(ids))
    starts: dict[int, dict] = {}
    for row in await db.fetchall(
        f"SELECT test_id, last_run_id, first_fail_at FROM test_status WHERE minion_id = ? AND test_id IN ({marks})",
        (run["minion_id"], *ids),
    ):
        if row["last_run_id"] == run["id"] and row["first_fail_at"]:
            first = await db.fetchone(
                "SELECT id FROM runs WHERE minion_id = ? AND started_at = ? ORDER BY id LIMIT 1",
                (run["minion_id"], row["first_fail_at"]),
            )
            starts[row["test_id"]] = {"run_id": first["id"] if first else None, "started_at": row["first_fail_at"],
                                      "complete": True}
    rest = [test_id for test_id in ids if test_id not in starts]
    if not rest:
        return starts
    runs = await db.fetchall(
        "SELECT id, started_at FROM runs WHERE minion_id = ? AND (started_at, id) <= (?, ?) "
        "ORDER BY started_at DESC, id DESC LIMIT ?",
        (run["minion_id"], run["started_at"], run["id"], STREAK_LOOKBACK),
    )
    outcomes: dict[tuple[int, int], str] = {}
    for row in await db.fetchall(
        f"SELECT run_id, test_id, outcome FROM results WHERE test_id IN ({','.join('?' * len(rest))}) "
        f"AND run_id IN ({','.join('?' * len(runs))})",
        (*rest, *(r["id"] for r in runs)),
    ):
        key = (row["run_id"], row["test_id"])
        if key not in outcomes or _ORDER.get(row["outcome"], 9) < _ORDER.get(outcomes[key], 9):
            outcomes[key] = row["outcome"]
    for test_id in rest:
        start = None
        for past in runs:  # newest first
            outcome = outcomes.get((past["id"], test_id))
            if outcome in PASSING:
                break
            if outcome in FAILING:
                start = {"run_id": past["id"], "started_at": past["started_at"]}
        else:
            if start:
                start["complete"] = len(runs) < STREAK_LOOKBACK
            starts[test_id] = start
            continue
        if start:
            starts[test_id] = {**start, "complete": True}
    return starts


async def job_changes(db, run_ids: list[int]) -> dict[str, Any]:
    """New / still failing / fixed summed over a job's runs, and per run.

    One query for the previous run of each, one for the outcomes of all of them.
    """
    per_run: dict[int, dict[str, int]] = {}
    totals = {"new": 0, "still_failing": 0, "fixed": 0}
    runs = []
    for chunk in chunks(run_ids[:SQL_CHUNK]):
        runs += await db.fetchall(
            f"SELECT id, minion_id, paths AS paths_json, started_at FROM runs WHERE id IN ({','.join('?' * len(chunk))})",
            chunk,
        )
    # The previous run of the same paths of each, in one query (walks runs_minion_started back).
    previous: dict[int, dict | None] = {}
    for chunk in chunks([run["id"] for run in runs]):
        for row in await db.fetchall(
            "SELECT r.id, (SELECT p.id FROM runs p WHERE p.minion_id = r.minion_id AND "
            "(p.started_at, p.id) < (r.started_at, r.id) AND p.paths = r.paths "
            "ORDER BY p.started_at DESC, p.id DESC LIMIT 1) AS previous "
            f"FROM runs r WHERE r.id IN ({','.join('?' * len(chunk))})",
            chunk,
        ):
            previous[row["id"]] = {"id": row["previous"]} if row["previous"] else None
    wanted = [run["id"] for run in runs] + [p["id"] for p in previous.values() if p]
    # Only failing rows come back (a job page must not pull every result of every minion), then
    # the current outcomes of the tests that failed the time before (are they fixed?).
    verdicts: dict[int, dict[int, tuple[str]]] = defaultdict(dict)
    for chunk in chunks(wanted):
        for row in await db.fetchall(
            f"SELECT run_id, test_id, outcome FROM results WHERE run_id IN ({','.join('?' * len(chunk))}) "
            "AND outcome IN ('failed', 'error')",
            chunk,
        ):
            verdicts[row["run_id"]][row["test_id"]] = (row["outcome"],)
    candidates: set[tuple[int, int]] = set()
    for run in runs:
        before = previous[run["id"]]
        if before:
            candidates.update((run["id"], t) for t in verdicts.get(before["id"], {}) if t not in verdicts[run["id"]])
    cand_runs, cand_tests = sorted({r for r, _ in candidates}), sorted({t for _, t in candidates})
    for run_chunk in chunks(cand_runs):
        for test_chunk in chunks(cand_tests):
            for row in await db.fetchall(
                f"SELECT run_id, test_id, outcome FROM results WHERE run_id IN ({','.join('?' * len(run_chunk))}) "
                f"AND test_id IN ({','.join('?' * len(test_chunk))})",
                (*run_chunk, *test_chunk),
            ):
                key = (row["run_id"], row["test_id"])
                if key not in candidates:
                    continue
                seen = verdicts[key[0]].get(key[1])
                if seen is None or _ORDER.get(row["outcome"], 9) < _ORDER.get(seen[0], 9):
                    verdicts[key[0]][key[1]] = (row["outcome"],)
    for run in runs:
        before = previous[run["id"]]
        new, still, fixed = _compare(verdicts.get(run["id"], {}), verdicts.get(before["id"], {}) if before else None)
        counts = {"new": len(new), "still_failing": len(still), "fixed": len(fixed)}
        per_run[run["id"]] = counts
        for key in totals:
            totals[key] += counts[key]
    return {"totals": totals, "per_run": per_run}


async def run_failure_marks(db, run: dict) -> dict[str, dict]:
    """Per failed result id of a run page: its signature, known issue and whether it is muted on that minion."""
    signatures = sorted({f["signature"] for f in run.get("failures", []) if f.get("signature")})
    known = await _known_issues(db, signatures)
    mutes = await active_mutes(db)
    grains = run.get("minion_grains") or run.get("grains") or {}
    marks = {}
    for failure in run.get("failures", []):
        signature = failure.get("signature")
        marks[failure["id"]] = {
            "signature": signature,
            "known_issue": known.get(signature) if signature else None,
            "muted": mutes.covers(signature, failure["nodeid"], grains),
        }
    return marks


def minion_failing_filter(rows: list[dict], mutes: MuteSet, grains: dict) -> None:
    """Mark a minion's failing tests that are muted (in place: ``row["muted"]``)."""
    for row in rows:
        row["muted"] = mutes.covers(row.get("last_signature"), row.get("nodeid"), grains)


__all__ = [
    "FailureBatch", "SignatureChange", "SignatureChanges", "backfill_all", "backfill_chunk", "backfill_in_background",
    "backfill_pending", "get_signature", "is_muted", "job_changes", "open_failures", "run_changes",
    "search_run_ids", "separating_grains", "signature_changes", "sick_hosts",
]
