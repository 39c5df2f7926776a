"""The failures data layer: signatures kept at ingest, the fleet-wide failures view, run triage.

Write side (runs on the ingester's writer connection, inside its transaction):

- :class:`FailureBatch` keeps the ``signatures`` table (first/last run, occurrences) and the
  ``failure_text`` full-text index for every failed/errored result of a batch. The signatures
  themselves are computed earlier, while the file is validated (dashboard/signatures.py), and
  ``test_status.last_signature`` is folded by the ingester with the rest of ``test_status``.
- :func:`backfill_chunk` gives results stored before migration 5 their signatures, a chunk of
  result ids per transaction (see docs/triage.md for why it is not done inside the migration).

Read side (async, over :class:`dashboard.db.Database`): :func:`open_failures` (the ``/failures``
page and ``GET /api/failures``), :func:`get_signature`, :func:`run_changes` / :func:`job_changes`
(new / fixed / still failing), :func:`sick_hosts`, :func:`search_run_ids` (FTS).

For other features (webhooks): :func:`signature_changes` says which signatures opened or closed
with a batch of runs, :func:`is_muted` whether a failure is muted. Both take a plain
``sqlite3.Connection``.

Nothing here scans ``results``: open signatures come from ``test_status`` (one row per minion
and test, the latest outcome), history from the partial index ``results_signature``.
"""

# SQL here is built only from constant column lists and '?' placeholders; values are always bound.
# ruff: noqa: S608

from __future__ import annotations

import re
import sqlite3
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from dashboard.db import run_transaction
from dashboard.dialect import POSTGRES, analyze, dialect_of
from dashboard.models import format_timestamp
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
SQL_CHUNK = 500
# A minion failing at least this many signatures that do not fail everywhere (and at least
# twice the fleet's median) is a sick host: the machine, not the tests.
SICK_HOST_MIN_SIGNATURES = 3
SICK_HOST_CANDIDATES = 50  # minions examined for it, those failing the most tests first
SEPARATING_GRAINS_SHOWN = 5
GRAIN_SAMPLE = 1000  # minions per side used to rank grain values on a large fleet
HISTORY_LIMIT = 100
FTS_MATCH_LIMIT = 1000  # newest matching failures a text search looks at
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


def _chunks(items: list, size: int = SQL_CHUNK) -> Iterable[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# -- write side ------------------------------------------------------------------------------


class FailureBatch:
    """The failures side of one ingest transaction; :meth:`flush` before the commit."""

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn
        self.signatures: dict[str, list] = {}
        self.runs_with_failures: list[int] = []

    def add_run(self, run_id: int, started_at: str, parts: dict[str, tuple[str, str, str]], rows: list[tuple]) -> None:
        """Note a stored run's failures; ``rows`` are the ingester's result rows (signature last)."""
        occurrences = Counter(row[-1] for row in rows if row[-1])
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
        self.runs_with_failures.append(run_id)

    def flush(self) -> None:
        if self.signatures:
            self.conn.executemany(_UPSERT_SIGNATURE, [(sig, *values) for sig, values in self.signatures.items()])
        # PostgreSQL searches through a GIN index on results itself (migration 5): nothing to copy.
        for chunk in _chunks(self.runs_with_failures if dialect_of(self.conn) != POSTGRES else []):
            marks = ",".join("?" * len(chunk))
            # Read back through the results_run index: the rows were inserted moments ago.
            self.conn.execute(
                f"INSERT INTO failure_text (rowid, message, longrepr) SELECT id, message, longrepr FROM results "
                f"WHERE run_id IN ({marks}) AND signature IS NOT NULL",
                chunk,
            )
        self.signatures.clear()
        self.runs_with_failures.clear()


def remove_from_search(conn: sqlite3.Connection, run_ids_sql: str, params: Iterable = ()) -> None:
    """Drop the failures of the runs selected by ``run_ids_sql`` from the FTS index (before deleting them)."""
    if dialect_of(conn) == POSTGRES:
        return  # the GIN index follows the rows
    conn.execute(
        "INSERT INTO failure_text (failure_text, rowid, message, longrepr) "
        f"SELECT 'delete', id, message, longrepr FROM results WHERE run_id IN ({run_ids_sql}) AND signature IS NOT NULL",
        tuple(params),
    )


def backfill_pending(conn: sqlite3.Connection) -> int:
    """The highest result id still waiting for a signature (0: the backfill is done)."""
    row = conn.execute("SELECT pending_upto FROM signature_backfill WHERE id = 1").fetchone()
    return int(row[0]) if row else 0


def backfill_chunk(conn: sqlite3.Connection, chunk_ids: int = BACKFILL_CHUNK_IDS) -> int:
    """Give signatures to the failed results among the next ``chunk_ids`` result ids (newest first).

    Runs in the caller's transaction; returns the result ids still pending after it (0 = done).
    Each failed result gets its signature, its FTS entry and its share of the ``signatures``
    table; a ``test_status`` row whose latest run is among them gets ``last_signature``.
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
        updates, status = [], {}
        by_run: dict[int, tuple[str, dict, list]] = {}
        for result_id, run_id, test_id, outcome, message, longrepr, nodeid, file, started_at, minion_id in rows:
            sig = failure_signature(nodeid, message, longrepr, file)
            updates.append((sig.signature, result_id))
            _, parts, run_rows = by_run.setdefault(run_id, (started_at, {}, []))
            parts.setdefault(sig.signature, (sig.exception, sig.message, sig.location))
            run_rows.append((sig.signature,))
            # failed outranks error as a test's outcome in a run (the ingester's precedence).
            key = (minion_id, test_id, run_id)
            if key not in status or outcome == "failed":
                status[key] = sig.signature
        conn.executemany("UPDATE results SET signature = ? WHERE id = ?", updates)
        for run_id, (started_at, parts, run_rows) in by_run.items():
            batch.add_run(run_id, started_at, parts, run_rows)
        batch.signatures and conn.executemany(
            _UPSERT_SIGNATURE, [(sig, *values) for sig, values in batch.signatures.items()]
        )
        if dialect_of(conn) != POSTGRES:
            conn.executemany(
                "INSERT INTO failure_text (rowid, message, longrepr) SELECT id, message, longrepr FROM results WHERE id = ?",
                [(result_id,) for _, result_id in updates],
            )
        conn.executemany(
            "UPDATE test_status SET last_signature = ? WHERE minion_id = ? AND test_id = ? AND last_run_id = ? "
            "AND last_outcome IN ('failed', 'error')",
            [(sig, minion_id, test_id, run_id) for (minion_id, test_id, run_id), sig in status.items()],
        )
    conn.execute("UPDATE signature_backfill SET pending_upto = ? WHERE id = 1", (low,))
    return low


def backfill_all(conn: sqlite3.Connection, chunk_ids: int = BACKFILL_CHUNK_IDS) -> int:
    """Run the whole backfill on a synchronous autocommit connection, one transaction per chunk.

    Returns the number of chunks run. The CLI's ``backfill-signatures`` and the benchmarks use it.
    """
    chunks = 0
    while backfill_pending(conn) > 0:
        run_transaction(conn, backfill_chunk, chunk_ids)
        chunks += 1
    if chunks:
        # The signatures' partial indexes were empty when last analyzed; test_status.last_signature
        # too (a plan by "no row has one" read 100,000 rows for the fleet page's sick hosts).
        analyze(conn, "results")
        analyze(conn, "test_status")
    return chunks


async def backfill_in_background(db, chunk_ids: int = BACKFILL_CHUNK_IDS) -> int:
    """The app's start-up backfill: one short write transaction per chunk, so ingest goes on between them."""
    chunks = 0
    while await db.fetchval("SELECT pending_upto FROM signature_backfill WHERE id = 1", default=0) > 0:
        await db.write(backfill_chunk, chunk_ids)
        chunks += 1
    if chunks and getattr(db, "dialect", None) == POSTGRES:
        await db.write(analyze, "results")
        await db.write(analyze, "test_status")
    return chunks


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


# The newest failures matching a search: FTS5 on SQLite, the GIN-indexed tsvector on PostgreSQL.
_MATCHES_SQLITE = "SELECT rowid AS id FROM failure_text WHERE failure_text MATCH ? ORDER BY rowid DESC LIMIT ?"
_MATCHES_POSTGRES = (
    "SELECT id FROM results WHERE signature IS NOT NULL AND to_tsvector('simple', coalesce(message, '') || ' ' || "
    "coalesce(longrepr, '')) @@ to_tsquery('simple', ?) ORDER BY id DESC LIMIT ?"
)


def _matches(db, q: str) -> tuple[str, tuple]:
    if getattr(db, "dialect", None) == POSTGRES:
        terms = " & ".join(word + (":*" if prefix else "") for word, prefix in _words(q))
        return _MATCHES_POSTGRES, (terms, FTS_MATCH_LIMIT)
    return _MATCHES_SQLITE, (fts_query(q), FTS_MATCH_LIMIT)


async def search_signatures(db, q: str) -> set[str]:
    """Signatures of the newest failures whose message or traceback contain every word of ``q``."""
    matches, params = _matches(db, q)
    rows = await db.fetchall(
        f"SELECT DISTINCT x.signature FROM ({matches}) f JOIN results x ON x.id = f.id WHERE x.signature IS NOT NULL",
        params,
    )
    return {row["signature"] for row in rows}


async def search_run_ids(db, q: str) -> list[int]:
    """Runs (newest matches first, at most :data:`FTS_MATCH_LIMIT` failures looked at) whose failures match ``q``."""
    matches, params = _matches(db, q)
    rows = await db.fetchall(f"SELECT DISTINCT x.run_id FROM ({matches}) f JOIN results x ON x.id = f.id", params)
    return [row["run_id"] for row in rows]


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
    """:func:`separating_grains` over grain features already extracted (one set per minion).

    Beyond :data:`GRAIN_SAMPLE` minions on a side, candidates are ranked on an evenly spread
    sample of that side; the values shown are then counted exactly over all of it.
    """
    if not failing:
        return []
    sample_fail = failing[:: max(1, len(failing) // GRAIN_SAMPLE)]
    sample_pass = passing[:: max(1, len(passing) // GRAIN_SAMPLE)]
    on_failing, on_passing = Counter(), Counter()
    values_of: dict[str, Counter] = defaultdict(Counter)
    for features in sample_fail:
        on_failing.update(features)
        for name, value in features:
            values_of[name][value] += 1
    for features in sample_pass:
        on_passing.update(features)
        for name, value in features:
            values_of[name][value] += 1
    n_fail, n_pass = len(sample_fail), len(sample_pass)
    identifying = {name for name, values in values_of.items()
                   if sum(values.values()) >= 3 and all(count == 1 for count in values.values())}
    ranked = []
    for (name, value), count in on_failing.items():
        if name in identifying:
            continue
        passing_count = on_passing.get((name, value), 0)
        score = count / n_fail - (passing_count / n_pass if n_pass else 0.0)
        if score > 0 and (n_pass or count == n_fail):
            ranked.append((score, count, name, value, passing_count))
    ranked.sort(key=lambda item: (-item[0], -item[1], item[2], item[3]))
    ranked = ranked[:shown]
    if len(sample_fail) < len(failing) or len(sample_pass) < len(passing):
        n_fail, n_pass = len(failing), len(passing)
        exact = []
        for _, _, name, value, _ in ranked:
            count = sum(1 for features in failing if (name, value) in features)
            passing_count = sum(1 for features in passing if (name, value) in features)
            exact.append((count / n_fail - (passing_count / n_pass if n_pass else 0.0), count, name, value,
                          passing_count))
        ranked = sorted(exact, key=lambda item: (-item[0], -item[1], item[2], item[3]))
    return [
        {"grain": name, "value": value, "failing": count, "passing": passing_count, "failing_of": n_fail,
         "passing_of": n_pass, "score": round(score, 3),
         "label": f"{name}={value}: {count} of {n_fail} failing, {passing_count} of {n_pass} passing"}
        for score, count, name, value, passing_count in ranked
    ]


@dataclass
class _Fleet:
    """What one failures view reads once: open rows, the tests' other rows, names, grains, mutes."""

    open_rows: list[dict]
    other_rows: list[dict]
    minion_names: dict[int, str]
    grains: dict[int, dict]
    nodeids: dict[int, str]
    mutes: MuteSet
    # test id -> minion ids where the test failed in a run and passed when that run was re-run.
    rerun_passes: dict[int, set[int]] = field(default_factory=dict)


async def passed_on_rerun(db, now: datetime | None = None) -> dict[int, set[int]]:
    """Tests that failed in a run and passed on its re-run on the same minion (test id -> minion ids).

    A re-run (``pytestrun.run rerun_of=<jid>``, the shipped reactor or ``salt-run distmon.rerun``)
    runs the same code again on the same machine: a failure that passes there is flaky, not broken.
    Only re-runs of the last ``RERUN_WINDOW_DAYS`` count (index ``runs_rerun_of``; re-runs are few).
    """
    since = format_timestamp((now or datetime.now(UTC)) - timedelta(days=RERUN_WINDOW_DAYS))
    rows = await db.fetchall(
        "SELECT DISTINCT ok.test_id, rr.minion_id FROM runs rr "
        "JOIN runs orig ON orig.minion_id = rr.minion_id AND orig.jid = rr.rerun_of "
        "JOIN results ok ON ok.run_id = rr.id AND ok.outcome IN ('passed', 'xpassed', 'xfailed') "
        "JOIN results bad ON bad.run_id = orig.id AND bad.test_id = ok.test_id "
        "AND bad.outcome IN ('failed', 'error') "
        "WHERE rr.rerun_of IS NOT NULL AND rr.started_at >= ? LIMIT 100000",
        (since,),
    )
    found: dict[int, set[int]] = defaultdict(set)
    for row in rows:
        found[row["test_id"]].add(row["minion_id"])
    return dict(found)


async def _load_fleet(db, signatures: set[str] | None = None) -> _Fleet:
    if signatures is None:
        open_rows = await db.fetchall(
            "SELECT last_signature AS signature, minion_id, test_id, last_outcome, last_run_id, last_started_at, "
            "first_fail_at, code_flips, flips FROM test_status WHERE last_signature IS NOT NULL LIMIT 200000"
        )
    else:
        open_rows = []
        for chunk in _chunks(sorted(signatures)):
            open_rows += await db.fetchall(
                "SELECT last_signature AS signature, minion_id, test_id, last_outcome, last_run_id, last_started_at, "
                f"first_fail_at, code_flips, flips FROM test_status WHERE last_signature IN ({','.join('?' * len(chunk))})",
                chunk,
            )
    test_ids = sorted({row["test_id"] for row in open_rows})
    other_rows: list[dict] = []
    nodeids: dict[int, str] = {}
    for chunk in _chunks(test_ids):
        marks = ",".join("?" * len(chunk))
        other_rows += await db.fetchall(
            f"SELECT minion_id, test_id, last_outcome, last_signature, last_run_id FROM test_status "
            f"WHERE test_id IN ({marks}) AND last_signature IS NULL",
            chunk,
        )
        for row in await db.fetchall(f"SELECT id, nodeid FROM tests WHERE id IN ({marks})", chunk):
            nodeids[row["id"]] = row["nodeid"]
    names = {row["id"]: row["name"] for row in await db.fetchall("SELECT id, name FROM minions LIMIT 100000")}
    involved = sorted({row["minion_id"] for row in open_rows} | {row["minion_id"] for row in other_rows})
    grains: dict[int, dict] = {}
    for chunk in _chunks(involved):
        for row in await db.fetchall(
            f"SELECT id, grains FROM minions WHERE id IN ({','.join('?' * len(chunk))})", chunk
        ):
            grains[row["id"]] = loads(row["grains"], {})
    mutes = await active_mutes(db)
    rerun_passes = await passed_on_rerun(db)
    return _Fleet(open_rows, other_rows, names, grains, nodeids, mutes, rerun_passes)


def _build_rows(fleet: _Fleet, info: dict[str, dict]) -> list[dict]:
    by_sig: dict[str, list[dict]] = defaultdict(list)
    for row in fleet.open_rows:
        by_sig[row["signature"]].append(row)
    passing_by_test: dict[int, set[int]] = defaultdict(set)
    ran_by_test: dict[int, set[int]] = defaultdict(set)
    for row in fleet.other_rows:
        if row["last_outcome"] in PASSING:
            passing_by_test[row["test_id"]].add(row["minion_id"])
        ran_by_test[row["test_id"]].add(row["minion_id"])
    failing_by_test: dict[int, set[int]] = defaultdict(set)
    for row in fleet.open_rows:
        failing_by_test[row["test_id"]].add(row["minion_id"])
    features: dict[int, set] = {}

    def features_of(minion_id: int) -> set:
        # Once per minion, not once per minion and signature (10,000 minions x 70 signatures).
        found = features.get(minion_id)
        if found is None:
            found = features[minion_id] = _grain_features(fleet.grains.get(minion_id, {}))
        return found

    results = []
    for signature, rows in by_sig.items():
        tests = sorted({row["test_id"] for row in rows})
        failing = {row["minion_id"] for row in rows}
        # Passing: the same tests' latest outcome passed there, and none of them fails with this signature.
        passing = set().union(*(passing_by_test[t] for t in tests)) - failing
        # Minions failing these tests with another signature are neither (failing differently).
        other_failing = set().union(*(failing_by_test[t] for t in tests)) - failing - passing
        muted_pairs = [
            row for row in rows
            if fleet.mutes.covers(signature, fleet.nodeids.get(row["test_id"]), fleet.grains.get(row["minion_id"], {}))
        ]
        muted_keys = {(row["minion_id"], row["test_id"]) for row in muted_pairs}
        active_minions = {row["minion_id"] for row in rows if (row["minion_id"], row["test_id"]) not in muted_keys}
        passed_on_rerun_at = set().union(*(fleet.rerun_passes.get(t, set()) for t in tests))
        if passed_on_rerun_at or any(row["code_flips"] for row in rows):
            verdict = "flaky"
        elif not passing:
            verdict = "everywhere"
        else:
            verdict = "some-minions"
        meta = info.get(signature, {})
        fail_starts = [row["first_fail_at"] for row in rows if row["first_fail_at"]]
        names = fleet.minion_names
        results.append({
            "signature": signature,
            "exception": meta.get("exception"),
            "message": meta.get("message"),
            "location": meta.get("location"),
            "tests": sorted(fleet.nodeids.get(t, f"#{t}") for t in tests),
            "minions_failing": sorted(names.get(m, f"#{m}") for m in failing),
            "minions_passing": sorted(names.get(m, f"#{m}") for m in passing),
            "minions_failing_otherwise": sorted(names.get(m, f"#{m}") for m in other_failing),
            "minions_muted": sorted(names.get(m, f"#{m}") for m in failing - active_minions),
            "failing_now": len(active_minions),
            "verdict": verdict,
            "minions_passed_on_rerun": sorted(names.get(m, f"#{m}") for m in passed_on_rerun_at),
            "first_seen": meta.get("first_seen"),
            "first_run": meta.get("first_run_id"),
            "last_seen": meta.get("last_seen"),
            "last_run": meta.get("last_run_id"),
            "failing_since": min(fail_starts) if fail_starts else None,
            "occurrences": meta.get("occurrences"),
            "grains": _separating(
                [features_of(m) for m in sorted(failing)], [features_of(m) for m in sorted(passing)]
            ) if verdict != "everywhere" else [],
            "known_issue": None,
            "muted": not active_minions,
            "_minion_ids": failing,
            "_failing_pairs": [(row["minion_id"], row["test_id"]) for row in rows],
        })
    return results


async def _signature_info(db, signatures: list[str]) -> dict[str, dict]:
    info: dict[str, dict] = {}
    for chunk in _chunks(signatures):
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
    for chunk in _chunks(signatures):
        for row in await db.fetchall(
            "SELECT signature, note, url, created_by, created_at, updated_by, updated_at FROM known_issues "
            f"WHERE signature IN ({','.join('?' * len(chunk))})",
            chunk,
        ):
            found[row.pop("signature")] = row
    return found


async def _code_changes(db, rows: list[dict]) -> None:
    """Say, for each row, whether its first failing run came with a code_hash change on that minion."""
    run_ids = sorted({row["first_run"] for row in rows if row.get("first_run")})
    found: dict[int, dict] = {}
    for chunk in _chunks(run_ids):
        for row in await db.fetchall(
            "SELECT r.id, r.code_hash, m.name AS minion, r.started_at, "
            "(SELECT p.code_hash FROM runs p WHERE p.minion_id = r.minion_id AND (p.started_at, p.id) < (r.started_at, r.id) "
            " ORDER BY p.started_at DESC, p.id DESC LIMIT 1) AS previous_hash "
            f"FROM runs r JOIN minions m ON m.id = r.minion_id WHERE r.id IN ({','.join('?' * len(chunk))})",
            chunk,
        ):
            found[row["id"]] = row
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
    return (1 if row["muted"] else 0, -row["failing_now"], -len(row["minions_failing"]), row["signature"])


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
    """
    limit = clamp_limit(limit)
    if verdict and verdict not in VERDICTS:
        raise InputError(f"Unknown verdict {verdict!r}; one of: {', '.join(VERDICTS)}.")
    after = decode_cursor(cursor, (int, int, int, str))
    wanted = await search_signatures(db, q) if q else None
    fleet = await _load_fleet(db)
    rows = _build_rows(fleet, {})
    sick = await sick_hosts(db)
    summary = {
        "signatures": len(rows),
        "failing_now": sum(1 for row in rows if not row["muted"]),
        "muted": sum(1 for row in rows if row["muted"]),
        "failing_pairs_now": sum(row["failing_now"] for row in rows),
        "by_verdict": dict(Counter(row["verdict"] for row in rows if not row["muted"])),
        # Tests that failed and then passed on a re-run lately, open or not (flaky by re-run).
        "passed_on_rerun": len(fleet.rerun_passes),
    }
    if wanted is not None:
        rows = [row for row in rows if row["signature"] in wanted]
    if verdict:
        rows = [row for row in rows if row["verdict"] == verdict]
    if minion:
        rows = [row for row in rows if minion in row["minions_failing"]]
    if test:
        needle = test.lower()
        rows = [row for row in rows if any(needle in nodeid.lower() for nodeid in row["tests"])]
    rows.sort(key=_sort_key)
    if after:
        key = tuple(after)
        rows = [row for row in rows if _sort_key(row) > key]
    page, more = rows[:limit], len(rows) > limit
    signatures = [row["signature"] for row in page]
    info = await _signature_info(db, signatures)
    known = await _known_issues(db, signatures)
    for row in page:
        meta = info.get(row["signature"], {})
        for key in ("exception", "message", "location", "first_seen", "last_seen", "occurrences"):
            row[key] = meta.get(key)
        row["first_run"], row["last_run"] = meta.get("first_run_id"), meta.get("last_run_id")
        row["known_issue"] = known.get(row["signature"])
        row.pop("_minion_ids")
        row.pop("_failing_pairs")
    await _code_changes(db, page)
    return {
        "failures": page,
        "next": encode_cursor(*_sort_key(page[-1])) if more and page else None,
        "summary": summary,
        "sick_hosts": sick,
    }


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
    rows = await db.fetchall(
        "SELECT ts.minion_id, ts.test_id, ts.last_signature, t.nodeid FROM test_status ts "
        "JOIN tests t ON t.id = ts.test_id "
        f"WHERE ts.minion_id IN ({','.join('?' * len(ids))}) AND ts.last_signature IS NOT NULL",
        ids,
    )
    mutes = await active_mutes(db)
    tests_of: dict[str, set[int]] = defaultdict(set)
    for row in rows:
        tests_of[row["last_signature"]].add(row["test_id"])
    # Tests some minion passes (one query; each EXISTS stops at the first passing row).
    passing_tests: set[int] = set()
    for chunk in _chunks(sorted(set().union(*tests_of.values()))):
        passing_tests.update(row["id"] for row in await db.fetchall(
            f"SELECT t.id FROM tests t WHERE t.id IN ({','.join('?' * len(chunk))}) AND EXISTS (SELECT 1 FROM "
            "test_status ts WHERE ts.test_id = t.id AND ts.last_outcome IN ('passed', 'xpassed', 'xfailed'))",
            chunk,
        ))
    # A signature none of whose tests passes anywhere fails everywhere: the test's (or the code's) fault.
    everywhere = {signature for signature, test_ids in tests_of.items() if not test_ids & passing_tests}
    local: dict[int, set[str]] = defaultdict(set)
    grains: dict[int, dict] = {}
    for row in rows:
        if row["last_signature"] in everywhere:
            continue
        if mutes:
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
    for chunk in _chunks(signatures):
        rows += await db.fetchall(
            "SELECT ts.last_signature, t.nodeid, m.grains FROM test_status ts JOIN tests t ON t.id = ts.test_id "
            f"JOIN minions m ON m.id = ts.minion_id WHERE ts.last_signature IN ({','.join('?' * len(chunk))})",
            chunk,
        )
    for chunk in _chunks(nodeids):
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


async def get_signature(db, signature: str) -> dict[str, Any] | None:
    """One signature: its open row (or its last known state), history, every minion's latest outcome,
    one full traceback, the pass rate over time, known issue, mutes and the triage log."""
    if not is_signature(signature):
        raise InputError("A signature is 16 hexadecimal digits.")
    meta = await db.fetchone(
        "SELECT signature, exception, message, location, first_seen, first_run_id, last_seen, last_run_id, occurrences "
        "FROM signatures WHERE signature = ?",
        (signature,),
    )
    if meta is None:
        return None
    fleet = await _load_fleet(db, {signature})
    rows = _build_rows(fleet, {signature: meta})
    history = await db.fetchall(
        "SELECT x.id, x.run_id, x.phase, x.outcome, x.message, t.nodeid, r.started_at, r.jid, r.code_hash, "
        "m.name AS minion FROM results x JOIN runs r ON r.id = x.run_id JOIN minions m ON m.id = r.minion_id "
        "JOIN tests t ON t.id = x.test_id WHERE x.signature = ? ORDER BY x.run_id DESC LIMIT ?",
        (signature, HISTORY_LIMIT),
    )
    sample = None
    if history:
        sample = await db.fetchone(
            "SELECT x.id, x.run_id, x.message, x.longrepr, x.stdout, x.stderr, t.nodeid, m.name AS minion, r.started_at "
            "FROM results x JOIN tests t ON t.id = x.test_id JOIN runs r ON r.id = x.run_id "
            "JOIN minions m ON m.id = r.minion_id WHERE x.id = ?",
            (history[0]["id"],),
        )
    if rows:
        row = rows[0]
        row.pop("_minion_ids")
        row.pop("_failing_pairs")
        test_ids = sorted({r["test_id"] for r in fleet.open_rows})
        state = "open"
    else:
        row = {"signature": signature, "exception": meta["exception"], "message": meta["message"],
               "location": meta["location"], "tests": sorted({h["nodeid"] for h in history}),
               "minions_failing": [], "minions_passing": [], "minions_failing_otherwise": [], "minions_muted": [],
               "failing_now": 0, "verdict": None, "grains": [], "muted": False, "failing_since": None}
        test_ids = [t["id"] for t in await db.fetchall(
            f"SELECT id FROM tests WHERE nodeid IN ({','.join('?' * len(row['tests'][:SQL_CHUNK]))})",
            row["tests"][:SQL_CHUNK],
        )] if row["tests"] else []
        state = "closed"
    row.update(first_seen=meta["first_seen"], first_run=meta["first_run_id"], last_seen=meta["last_seen"],
               last_run=meta["last_run_id"], occurrences=meta["occurrences"], state=state)
    await _code_changes(db, [row])
    latest: list[dict] = []
    for chunk in _chunks(test_ids):
        latest += await db.fetchall(
            "SELECT m.name AS minion, t.nodeid, ts.last_outcome, ts.last_signature, ts.last_run_id, ts.last_started_at, "
            "ts.first_fail_at, ts.code_flips FROM test_status ts JOIN minions m ON m.id = ts.minion_id "
            f"JOIN tests t ON t.id = ts.test_id WHERE ts.test_id IN ({','.join('?' * len(chunk))}) LIMIT 20000",
            chunk,
        )
    latest.sort(key=lambda r: (r["last_signature"] != signature, r["last_outcome"] in PASSING, r["minion"], r["nodeid"]))
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
    for chunk in _chunks(run_ids[:SQL_CHUNK]):
        runs += await db.fetchall(
            f"SELECT id, minion_id, paths AS paths_json, started_at FROM runs WHERE id IN ({','.join('?' * len(chunk))})",
            chunk,
        )
    # The previous run of the same paths of each, in one query (walks runs_minion_started back).
    previous: dict[int, dict | None] = {}
    for chunk in _chunks([run["id"] for run in runs]):
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
    for chunk in _chunks(wanted):
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
    for run_chunk in _chunks(cand_runs):
        for test_chunk in _chunks(cand_tests):
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
