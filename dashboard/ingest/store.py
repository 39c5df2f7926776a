"""Storing: every write the ingester makes to the database lives here.

:func:`write_records` runs on the writer connection inside one transaction: runs, results,
jobs, and the summaries maintained with them: ``minions`` (newest run, counts of failing and
passing tests, when it turns late), ``test_status`` (per minion and test), ``file_status`` (per
minion and test file: the fleet matrix), ``test_totals`` (per test across minions),
``minion_grains`` (the newest run's grains, for grouping), ``counters``, and through
dashboard/failures.py ``signatures`` and the distinct failure texts (``failure_texts``, which the
search indexes: dashboard/failure_texts.py).
:func:`rebuild_fleet_summaries` refills the fleet summaries from test_status (the seeder).
The same code serves SQLite and PostgreSQL (dashboard/dialect.py translates; results go in by
:func:`dashboard.dialect.start_insert_results`: on PostgreSQL a COPY that runs on while the
summaries are folded; the summaries by multi-row statements, :func:`dashboard.dialect.insert_many`). Several ingesters may share one
PostgreSQL store: each transaction holds the writer lock, (minion, jid) is unique and a run is
inserted with ``ON CONFLICT DO NOTHING``, and the id caches only hold ids, which never change.
"""

from __future__ import annotations

import json
import operator
import sqlite3
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

from dashboard.db import STAGING_SCHEMA
from dashboard.dialect import (
    POSTGRES,
    chunks,
    dialect_of,
    insert_many,
    insert_many_returning,
    start_insert_results,
    store_rows,
)
from dashboard.failures import FailureBatch, SignatureUpkeep, reprofile_minion
from dashboard.ingest.records import JobRecord, RunRecord, utc_now
from dashboard.ingest.status import FAIL, PASS, PRECEDENCE, fold_status
from dashboard.lateness import failing_minion, late_after
from dashboard.migrations import (
    FLEET_COUNTS_SQL,
    FLEET_SUMMARIES,
    JOB_TOTALS_COLUMNS,
    JOB_TOTALS_SELECT,
    JOB_TOTALS_SQL,
    statements_for,
)
from dashboard.webhooks import outbox

# -- storage (runs on the writer connection, inside one transaction) ----------------------------


class IdCache:
    """name -> id of minions and nodeid -> id of tests; rows that are never deleted, so safe to keep.

    Only touched on the writer's thread. Cleared whenever a transaction rolls back, COMMIT failing
    included (ids created in a rolled-back transaction must not survive: SQLite reuses them).
    """

    def __init__(self) -> None:
        self.minions: dict[str, int] = {}
        self.tests: dict[str, int] = {}
        self.files: dict[int, str] = {}  # test id -> its file (tests.file)

    def clear(self) -> None:
        self.minions.clear()
        self.tests.clear()
        self.files.clear()


STATUS_COLUMNS = (
    "minion_id", "test_id", "last_run_id", "last_outcome", "last_started_at", "runs", "fails", "flips",
    "first_fail_at", "last_pass_at", "total_duration", "last_code_hash", "code_flips", "last_signature",
)  # fmt: skip
_status_values = operator.itemgetter(*STATUS_COLUMNS)  # a test_status row (dict) as its column values
# The test_status columns no index holds. SQLite rewrites every index holding a column an UPDATE
# sets, whatever its value: a row whose indexed columns kept their values (a test passing again,
# failing again the same way: most rows of a batch) is updated in these only, its index entries
# (flips, failing streak, signature: five indexes for a failing row) left alone.
STATUS_HOT_COLUMNS = ("last_run_id", "last_outcome", "last_started_at", "runs", "fails", "last_pass_at",
                      "total_duration", "last_code_hash")  # fmt: skip
_status_hot_values = operator.itemgetter(*STATUS_HOT_COLUMNS, "minion_id", "test_id")
_UPDATE_STATUS_HOT = (
    f"UPDATE test_status SET {', '.join(f'{column} = ?' for column in STATUS_HOT_COLUMNS)} "  # noqa: S608 (constant names)
    "WHERE minion_id = ? AND test_id = ?"
)
_INSERT_RUN = """
    INSERT INTO runs (minion_id, jid, fun, source, status, exitcode, passed, failed, skipped, xfailed,
                      xpassed, errors, started_at, finished_at, duration, returned_at, ingested_at,
                      paths, args, python_version, pytest_version, grains, message, signed, code_hash,
                      rerun_of)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
    ON CONFLICT (minion_id, jid) DO NOTHING
    RETURNING minion_id, jid, id
"""
# Summaries change by deltas: one upsert per touched test / (minion, file) per transaction.
_UPSERT_TEST_TOTALS = """
    INSERT INTO test_totals (test_id, minions, runs, fails, flips, code_flips, total_duration, avg_duration,
                             failing, passing, last_pass_at)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
    ON CONFLICT (test_id) DO UPDATE SET
        minions = test_totals.minions + excluded.minions,
        runs = test_totals.runs + excluded.runs,
        fails = test_totals.fails + excluded.fails,
        flips = test_totals.flips + excluded.flips,
        code_flips = test_totals.code_flips + excluded.code_flips,
        total_duration = test_totals.total_duration + excluded.total_duration,
        avg_duration = CASE WHEN test_totals.runs + excluded.runs > 0 THEN
            (test_totals.total_duration + excluded.total_duration) / (test_totals.runs + excluded.runs) END,
        failing = test_totals.failing + excluded.failing,
        passing = test_totals.passing + excluded.passing,
        last_pass_at = CASE WHEN test_totals.last_pass_at IS NULL OR excluded.last_pass_at > test_totals.last_pass_at
            THEN excluded.last_pass_at ELSE test_totals.last_pass_at END
"""
_UPSERT_FILE_STATUS = """
    INSERT INTO file_status (minion_id, file, tests, failing, passing, last_started_at) VALUES (?, ?, ?, ?, ?, ?)
    ON CONFLICT (minion_id, file) DO UPDATE SET
        tests = file_status.tests + excluded.tests,
        failing = file_status.failing + excluded.failing,
        passing = file_status.passing + excluded.passing,
        last_started_at = CASE WHEN file_status.last_started_at IS NULL
            OR excluded.last_started_at > file_status.last_started_at
            THEN excluded.last_started_at ELSE file_status.last_started_at END
"""
# Bound of a grain value kept for grouping.
GRAIN_VALUE_CHARS = 200


def _verdict(outcome: str | None) -> int:
    """1 for a failing latest outcome, 2 for a passing one, 0 for neither (skipped)."""
    return 1 if outcome in FAIL else (2 if outcome in PASS else 0)


def grain_values(grains: str | None) -> set[tuple[str, str]]:
    """(grain, value) pairs of a grains JSON object: scalars, and each scalar element of a list.

    The same text as the SQL backfill (dashboard/migrations.py FLEET_SUMMARIES) makes: strings as
    they are, numbers as JSON, booleans as ``true``/``false``; nested objects are not grouped by.
    """
    try:
        parsed = json.loads(grains or "{}")
    except ValueError:
        return set()
    if not isinstance(parsed, dict):
        return set()
    pairs = set()
    for name, value in parsed.items():
        for item in value if isinstance(value, list) else (value,):
            if isinstance(item, bool):
                text = "true" if item else "false"
            elif isinstance(item, str):
                text = item
            elif isinstance(item, int | float):
                text = json.dumps(item)
            else:
                continue
            # NUL as U+FFFD, the rule every stored text field follows (PostgreSQL text cannot hold NUL).
            pairs.add((name.replace("\x00", "\ufffd"), text[:GRAIN_VALUE_CHARS].replace("\x00", "\ufffd")))
    return pairs


def forget_pruned_status(conn: Any, pruned_runs_sql: str) -> None:
    """Take the test_status rows about to be deleted with their runs (their latest run is in
    ``pruned_runs_sql``, a SELECT of run ids) out of the fleet summaries; call it before the delete.

    In the prune's transaction (dashboard/retention.py). ``last_pass_at`` of a test stays the
    latest pass ever seen.
    """
    rows = conn.execute(
        f"SELECT ts.minion_id, ts.test_id, t.file, ts.runs, ts.fails, ts.flips, ts.code_flips, "  # noqa: S608
        f"ts.total_duration, ts.last_outcome, ts.last_signature, m.grain_profile FROM test_status ts "
        f"JOIN tests t ON t.id = ts.test_id JOIN minions m ON m.id = ts.minion_id "
        f"WHERE ts.last_run_id IN ({pruned_runs_sql})"
    ).fetchall()
    totals: dict[int, list] = {}
    files: dict[tuple[int, str], list] = {}
    minions: dict[int, list] = {}
    upkeep = SignatureUpkeep()
    for minion_id, test_id, file, runs, fails, flips, code_flips, duration, outcome, signature, profile in rows:
        verdict = _verdict(outcome)
        failing, passing = int(verdict == 1), int(verdict == 2)
        upkeep.status(minion_id, profile, test_id, signature, code_flips > 0, None, False)
        upkeep.passing(test_id, profile, -passing)
        for target, key, values in (
            (totals, test_id, (1, runs, fails, flips, code_flips, duration, failing, passing)),
            (files, (minion_id, file), (1, failing, passing)),
            (minions, minion_id, (1, failing, passing)),
        ):
            sums = target.setdefault(key, [0] * len(values))
            for index, value in enumerate(values):
                sums[index] += value
    conn.executemany(
        "UPDATE test_totals SET minions = minions - ?, runs = runs - ?, fails = fails - ?, flips = flips - ?, "
        "code_flips = code_flips - ?, total_duration = total_duration - ?, failing = failing - ?, "
        "passing = passing - ?, avg_duration = CASE WHEN runs - ? > 0 THEN (total_duration - ?) / (runs - ?) END "
        "WHERE test_id = ?",
        [(*t[:8], t[1], t[5], t[1], test_id) for test_id, t in totals.items()],
    )
    conn.executemany(
        "UPDATE file_status SET tests = tests - ?, failing = failing - ?, passing = passing - ? "
        "WHERE minion_id = ? AND file = ?",
        [(*c, minion_id, file) for (minion_id, file), c in files.items()],
    )
    conn.executemany(
        "UPDATE minions SET tests = tests - ?, failing = failing - ?, passing = passing - ? WHERE id = ?",
        [(*c, minion_id) for minion_id, c in minions.items()],
    )
    conn.execute("DELETE FROM file_status WHERE tests <= 0")
    conn.execute("DELETE FROM test_totals WHERE minions <= 0")
    upkeep.apply(conn)


def refresh_pruned_minions(conn: Any, minion_ids: list[int]) -> None:
    """After a prune moved these minions' newest run: their newest status, lateness and grains rows."""
    for minion_id in minion_ids:
        row = conn.execute(
            "SELECT m.first_seen, m.last_seen, m.runs, m.expected_interval, m.grains, r.status FROM minions m "
            "LEFT JOIN runs r ON r.id = m.last_run_id WHERE m.id = ?",
            (minion_id,),
        ).fetchone()
        if row is None:
            continue
        first_seen, last_seen, runs, configured, grains, status = row
        conn.execute(
            "UPDATE minions SET last_status = ?, late_after = ? WHERE id = ?",
            (status, late_after(first_seen, last_seen, runs, configured), minion_id),
        )
        profile = conn.execute("SELECT grain_profile FROM minions WHERE id = ?", (minion_id,)).fetchone()[0]
        reprofile_minion(conn, minion_id, profile)
        stored = {tuple(pair) for pair in conn.execute(
            "SELECT grain, value FROM minion_grains WHERE minion_id = ?", (minion_id,))}
        wanted = grain_values(grains)
        if stored != wanted:
            conn.execute("DELETE FROM minion_grains WHERE minion_id = ?", (minion_id,))
            conn.executemany(
                "INSERT INTO minion_grains (grain, value, minion_id) VALUES (?, ?, ?)",
                [(grain, value, minion_id) for grain, value in sorted(wanted)],
            )


def rebuild_fleet_summaries(conn: Any) -> None:
    """Refill minions' counts, file_status, test_totals, minion_grains and fleet_counts from what is stored.

    In the caller's transaction. For bulk loads (dashboard/seed.py); the ingester keeps them by deltas.
    """
    dialect = dialect_of(conn)
    for sql in (FLEET_SUMMARIES, FLEET_COUNTS_SQL, JOB_TOTALS_SQL):
        for statement in statements_for(sql, dialect):
            conn.execute(statement)


def refresh_job_totals(conn: Any, jids: list[str]) -> None:
    """Recount job_totals of these jids from their runs (after a prune deleted some of them)."""
    for chunk in chunks(sorted(set(jids))):
        marks = ",".join("?" * len(chunk))
        conn.execute(f"DELETE FROM job_totals WHERE jid IN ({marks})", chunk)  # noqa: S608
        conn.execute(f"INSERT INTO job_totals ({JOB_TOTALS_COLUMNS}) {JOB_TOTALS_SELECT} "  # noqa: S608
                     f"WHERE jid IN ({marks}) GROUP BY jid", chunk)


# A job's totals grow by each run stored: sums add, the longest run and the earliest start win.
_UPSERT_JOB_TOTALS = (
    f"INSERT INTO job_totals ({JOB_TOTALS_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "  # noqa: S608
    "ON CONFLICT (jid) DO UPDATE SET runs = job_totals.runs + excluded.runs, "
    "passed = job_totals.passed + excluded.passed, failed = job_totals.failed + excluded.failed, "
    "skipped = job_totals.skipped + excluded.skipped, xfailed = job_totals.xfailed + excluded.xfailed, "
    "xpassed = job_totals.xpassed + excluded.xpassed, errors = job_totals.errors + excluded.errors, "
    "max_duration = CASE WHEN job_totals.max_duration IS NULL OR excluded.max_duration > job_totals.max_duration "
    "THEN excluded.max_duration ELSE job_totals.max_duration END, "
    "started_at = CASE WHEN job_totals.started_at IS NULL OR excluded.started_at < job_totals.started_at "
    "THEN excluded.started_at ELSE job_totals.started_at END, "
    "fun = CASE WHEN job_totals.fun IS NULL OR excluded.fun < job_totals.fun THEN excluded.fun ELSE job_totals.fun END, "
    "rerun_of = CASE WHEN job_totals.rerun_of IS NULL OR excluded.rerun_of < job_totals.rerun_of "
    "THEN excluded.rerun_of ELSE job_totals.rerun_of END"
)


FleetCountKey = tuple[str, str, str, int]  # (grain, value, status, failing_minion) of fleet_counts


def fleet_contributions(conn: Any, minion_ids: list[int]) -> dict[FleetCountKey, list[int]]:
    """What these minions add to fleet_counts as stored now: key -> [minions, tests, failing, passing]."""
    minions: dict[int, tuple] = {}
    scopes: dict[int, list[tuple[str, str]]] = {}
    for chunk in chunks(sorted(minion_ids)):
        marks = ",".join("?" * len(chunk))
        # One statement for both (a round trip each on PostgreSQL): a minion's row once per grain.
        for minion_id, status, tests, failing, passing, grain, value in conn.execute(
            f"SELECT m.id, m.last_status, m.tests, m.failing, m.passing, g.grain, g.value FROM minions m "  # noqa: S608
            f"LEFT JOIN minion_grains g ON g.minion_id = m.id WHERE m.id IN ({marks})",
            chunk,
        ).fetchall():
            minions[minion_id] = (status or "", int(failing_minion(status, failing)), tests, failing, passing)
            if grain is not None:
                scopes.setdefault(minion_id, []).append((grain, value))
    sums: dict[FleetCountKey, list[int]] = {}
    for minion_id, (status, flag, tests, failing, passing) in minions.items():
        for grain, value in (("", ""), *scopes.get(minion_id, ())):
            total = sums.get((grain, value, status, flag))
            if total is None:
                total = sums[(grain, value, status, flag)] = [0, 0, 0, 0]
            total[0] += 1
            total[1] += tests
            total[2] += failing
            total[3] += passing
    return sums


class FleetCountsDelta:
    """Keeps fleet_counts equal to its rebuild (FLEET_COUNTS_SQL) across a change of some minions.

    Made before the change (it reads what those minions add now), :meth:`apply` after it (in the
    same transaction) adds the difference: a run that changes no status or count writes nothing.
    """

    def __init__(self, conn: Any, minion_ids: list[int]):
        self.conn = conn
        self.minion_ids = list(minion_ids)
        self.before = fleet_contributions(conn, self.minion_ids)

    def apply(self) -> None:
        after = fleet_contributions(self.conn, self.minion_ids)
        changes = []
        for key in self.before.keys() | after.keys():
            old, new = self.before.get(key, (0, 0, 0, 0)), after.get(key, (0, 0, 0, 0))
            delta = [n - o for n, o in zip(new, old, strict=True)]
            if any(delta):
                changes.append((*key, *delta))
        add_fleet_counts(self.conn, changes)


def add_fleet_counts(conn: Any, changes: list[tuple]) -> None:
    """Add (grain, value, status, failing_minion, minions, tests, failing, passing) rows to fleet_counts."""
    if not changes:
        return
    insert_many(
        conn,
        "INSERT INTO fleet_counts (grain, value, status, failing_minion, minions, tests, failing, passing) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (grain, value, status, failing_minion) DO UPDATE SET "
        "minions = fleet_counts.minions + excluded.minions, tests = fleet_counts.tests + excluded.tests, "
        "failing = fleet_counts.failing + excluded.failing, passing = fleet_counts.passing + excluded.passing",
        changes,
    )
    conn.executemany(
        "DELETE FROM fleet_counts WHERE grain = ? AND value = ? AND status = ? AND failing_minion = ? "
        "AND minions <= 0",
        [change[:4] for change in changes if change[4] < 0],
    )


class _Batch:
    """One transaction's worth of summary state, flushed at its end."""

    def __init__(self, conn: sqlite3.Connection, ids: IdCache):
        self.conn = conn
        self.ids = ids
        # minion id -> test id -> its test_status row (None until folded: not stored yet). Every row
        # here is folded by the batch (they are loaded for its runs' tests) and written by flush.
        # Keyed per minion, not by (minion, test): no key tuple to build per result on the hot path.
        self.status: dict[int, dict[int, dict | None]] = {}
        # The stored row's (runs, fails, flips, code_flips, total_duration, verdict, signature) before this
        # batch folded into it, for rows that have one in the database: the summaries change by the difference.
        self.baseline: dict[tuple[int, int], tuple] = {}
        self.minions: dict[int, dict] = {}
        self.jobs: dict[str, list] = {}  # jid -> its runs' totals in this batch (job_totals)
        self.runs = 0
        self.results = 0
        self.new_tests = 0
        self.now = utc_now()
        self.failures = FailureBatch(conn)  # signatures and the failure text index
        # Tests whose failing streak opened or closed: the webhook outbox, in this same transaction.
        self.changes: list[outbox.TestChange] = []
        # Results wait here and go in with one bulk insert (COPY on PostgreSQL): (started_at, rows).
        self.pending_results: list[tuple[str, list[tuple]]] = []
        self.results_sent: Callable[[], None] | None = None  # waits for the sent rows (send_results)
        # Staged results (see stage_results): the batch's staging database, run id -> its rowid span there.
        self.staging: StagedBatch | None = None
        self.staged_runs: dict[int, tuple[int, int]] = {}
        self.staged_tests: dict[str, int] = {}

    # minions ------------------------------------------------------------------------------
    def minion_id(self, name: str, seen_at: str) -> int:
        known = self.ids.minions.get(name)
        if known is not None:
            return known
        row = self.conn.execute("SELECT id FROM minions WHERE name = ?", (name,)).fetchone()
        if row is None:
            row = self.conn.execute(
                "INSERT INTO minions (name, first_seen, last_seen) VALUES (?, ?, ?) RETURNING id",
                (name, seen_at, seen_at),
            ).fetchone()
            # Counted at once (no run, no grains yet): fleet_counts always equals its rebuild.
            add_fleet_counts(self.conn, [("", "", "", 0, 1, 0, 0, 0)])
        minion_id = row[0]
        self.ids.minions[name] = minion_id
        return minion_id

    _MINION_STATE = (
        "SELECT m.id, m.first_seen, m.last_seen, m.last_run_id, r.started_at, m.runs, m.expected_interval, m.grains, "
        "m.grain_profile FROM minions m LEFT JOIN runs r ON r.id = m.last_run_id WHERE m.id IN ({marks})"
    )

    def minion_state(self, minion_id: int) -> dict:
        state = self.minions.get(minion_id)
        if state is None:
            self.load_minions([minion_id])
            state = self.minions[minion_id]
        return state

    def load_minions(self, minion_ids: list[int]) -> None:
        """Read the stored state of these minions (those not read yet), one statement per 500."""
        wanted = sorted({minion_id for minion_id in minion_ids if minion_id not in self.minions})
        for chunk in chunks(wanted):
            for row in self.conn.execute(self._MINION_STATE.format(marks=",".join("?" * len(chunk))), chunk).fetchall():
                self.minions[row[0]] = {
                    "first_seen": row[1],
                    "last_seen": row[2],
                    "last_run_id": row[3],
                    "last_started": row[4],
                    "stored_runs": row[5],
                    "expected_interval": row[6],
                    "stored_grains": row[7],
                    "profile": row[8],
                    "runs": 0,
                    "grains": None,
                    "status": None,
                    "tests": 0,
                    "failing": 0,
                    "passing": 0,
                }

    def prefetch(self, records: list[RunRecord], run_ids: list[int | None]) -> None:
        """Before folding a batch: its new tests' ids, and the minions' and test_status rows its
        runs fold into, in a few statements for the whole batch instead of two per minion (on
        PostgreSQL each one a round trip)."""
        tests_of: dict[int, set[int]] = {}
        for record, run_id in zip(records, run_ids, strict=True):
            if run_id is None:
                continue
            minion_id = self.minion_id(record.minion, record.returned_at)
            tests = tests_of.setdefault(minion_id, set())
            if record.per_test:
                ids = self.test_ids(record)
                tests.update(ids[nodeid] for nodeid in record.per_test)
        self.load_minions(list(tests_of))
        wanted: set[tuple[int, int]] = set()
        for minion_id, test_ids in tests_of.items():
            rows = self.status.setdefault(minion_id, {})
            for test_id in test_ids - rows.keys():
                rows[test_id] = None
                wanted.add((minion_id, test_id))
        all_tests = sorted({test_id for _minion_id, test_id in wanted})
        for minions in chunks(sorted({minion_id for minion_id, _test_id in wanted})):
            for tests in chunks(all_tests):
                rows = self.conn.execute(
                    f"SELECT {', '.join(STATUS_COLUMNS)} FROM test_status "  # noqa: S608 (constant columns)
                    f"WHERE minion_id IN ({','.join('?' * len(minions))}) AND test_id IN ({','.join('?' * len(tests))})",
                    [*minions, *tests],
                ).fetchall()
                for row in rows:
                    if (row[0], row[1]) in wanted:  # not another minion's test of this batch
                        self._loaded(row)

    def _loaded(self, row: Any) -> None:
        stored = dict(zip(STATUS_COLUMNS, row, strict=True))
        key = (row[0], row[1])
        self.status[row[0]][row[1]] = stored
        self.baseline[key] = (
            stored["runs"], stored["fails"], stored["flips"], stored["code_flips"], stored["total_duration"],
            _verdict(stored["last_outcome"]), stored["last_signature"], stored["first_fail_at"],
        )  # fmt: skip

    # tests --------------------------------------------------------------------------------
    def test_ids(self, record: RunRecord) -> dict[str, int]:
        known = self.ids.tests
        if not known.keys() >= record.per_test.keys():
            missing = [nodeid for nodeid in record.per_test if nodeid not in known]
            before = self.conn.total_changes
            insert_many(
                self.conn,
                "INSERT INTO tests (nodeid, file, line) VALUES (?, ?, ?) ON CONFLICT (nodeid) DO NOTHING",
                [
                    (nodeid, record.per_test[nodeid][2] or nodeid.split("::", 1)[0], record.per_test[nodeid][3])
                    for nodeid in missing
                ],
            )
            self.new_tests += self.conn.total_changes - before
            for chunk in chunks(missing):
                marks = ",".join("?" * len(chunk))
                for test_id, nodeid, file in self.conn.execute(
                    f"SELECT id, nodeid, file FROM tests WHERE nodeid IN ({marks})",  # noqa: S608 (placeholders only)
                    chunk,
                ):
                    known[nodeid] = test_id
                    self.ids.files[test_id] = file
        return known

    def load_status(self, minion_id: int, test_ids: list[int]) -> None:
        rows = self.status.setdefault(minion_id, {})
        wanted = [tid for tid in test_ids if tid not in rows]
        for chunk in chunks(wanted):
            for tid in chunk:
                rows[tid] = None
            marks = ",".join("?" * len(chunk))
            for row in self.conn.execute(
                f"SELECT {', '.join(STATUS_COLUMNS)} FROM test_status "  # noqa: S608 (constant columns)
                f"WHERE minion_id = ? AND test_id IN ({marks})",
                [minion_id, *chunk],
            ):
                self._loaded(row)

    def recompute_status(self, minion_id: int, test_id: int, run_id: int) -> dict | None:
        """Rebuild a test_status row from the history up to run ``run_id`` (for out-of-order arrivals).

        Every result of this batch is in by now, the runs still to fold too: those have higher ids
        (they are inserted in folding order, after every stored run) and are left out here, or the
        fold would count them twice.
        """
        self.flush_results()
        row: dict | None = None
        current: list | None = None
        history = self.conn.execute(
            "SELECT r.id, r.started_at, res.outcome, res.duration, r.code_hash, res.signature FROM results res "
            "JOIN runs r ON r.id = res.run_id WHERE res.test_id = ? AND r.minion_id = ? AND r.id <= ? "
            "ORDER BY r.started_at, r.id",
            (test_id, minion_id, run_id),
        )
        for run_id, started_at, outcome, duration, code_hash, signature in history:
            if current and current[0] == run_id:
                if PRECEDENCE[outcome] < PRECEDENCE[current[2]]:
                    current[2] = outcome
                    current[5] = signature or current[5]
                current[3] += duration or 0.0
                continue
            if current:
                row = fold_status(row, minion_id, test_id, *current)
            current = [run_id, started_at, outcome, duration or 0.0, code_hash, signature]
        if current:
            row = fold_status(row, minion_id, test_id, *current)
        return row

    # runs ---------------------------------------------------------------------------------
    def insert_runs(self, records: list[RunRecord]) -> list[int | None]:
        """Insert the runs of this batch in one go; each one's new id, or None for a (minion, jid) already stored."""
        rows = []
        for record in records:
            counts = record.counts
            rows.append((
                self.minion_id(record.minion, record.returned_at), record.jid, record.fun, record.source,
                record.status, record.exitcode, counts["passed"], counts["failed"], counts["skipped"],
                counts["xfailed"], counts["xpassed"], counts["errors"], record.started_at, record.finished_at,
                record.duration, record.returned_at, self.now, record.paths, record.args, record.python_version,
                record.pytest_version, record.grains, record.message, record.signed, record.code_hash,
                record.rerun_of,
            ))  # fmt: skip
        # Matched back by (minion, jid): a second file of one (minion, jid) in the batch is a duplicate.
        inserted = {(minion_id, jid): run_id for minion_id, jid, run_id in insert_many_returning(self.conn, _INSERT_RUN, rows)}
        return [inserted.pop((row[0], row[1]), None) for row in rows]

    def add_results(self, record: RunRecord, run_id: int | None) -> None:
        """Queue the result rows of one new run (its row is in, by :meth:`insert_runs`) for :meth:`send_results`."""
        if run_id is None or not record.per_test:
            return
        ids = self.test_ids(record)
        # A failing row's text id: the batch's few distinct texts looked up (or made) once.
        texts = self.failures.text_ids_of(record.rows) if record.signature_parts else {}
        if record.staged:
            self._stage(record.staged, run_id, record.per_test, ids)
        else:
            self.pending_results.append((record.started_at, [
                (run_id, ids[nodeid], when, outcome, duration, message, longrepr, stdout, stderr, markers, sig,
                 texts[digest] if digest else None)
                for nodeid, when, outcome, duration, message, longrepr, stdout, stderr, markers, sig, digest
                in record.rows
            ]))  # fmt: skip

    def add_run(self, record: RunRecord, run_id: int | None) -> str:
        """Fold one run into the summaries (its results queued by :meth:`add_results`): 'ingested' or 'duplicate'."""
        if run_id is None:
            return "duplicate"
        minion_id = self.minion_id(record.minion, record.returned_at)
        self.runs += 1
        self._add_to_job(record)
        if record.per_test:
            ids = self.test_ids(record)
            self.results += record.result_count
            if record.signature_parts:
                self.failures.add_run(run_id, record.started_at, record.signature_parts, record.signature_counts)
            self._update_status(minion_id, run_id, record, ids)
        self._update_minion(minion_id, run_id, record)
        return "ingested"

    def _add_to_job(self, record: RunRecord) -> None:
        counts = record.counts
        job = self.jobs.get(record.jid)
        if job is None:
            self.jobs[record.jid] = [1, counts["passed"], counts["failed"], counts["skipped"], counts["xfailed"],
                                     counts["xpassed"], counts["errors"], record.duration, record.started_at,
                                     record.fun, record.rerun_of]
            return
        job[0] += 1
        for index, key in enumerate(("passed", "failed", "skipped", "xfailed", "xpassed", "errors"), 1):
            job[index] += counts[key]
        if record.duration is not None and (job[7] is None or record.duration > job[7]):
            job[7] = record.duration
        job[8] = min(job[8], record.started_at)
        job[9] = min(job[9], record.fun)
        if record.rerun_of and (job[10] is None or record.rerun_of < job[10]):
            job[10] = record.rerun_of

    def _update_status(self, minion_id: int, run_id: int, record: RunRecord, ids: dict[str, int]) -> None:
        per_test = record.per_test
        test_ids = [ids[nodeid] for nodeid in per_test]
        rows = self.status.get(minion_id)
        if rows is None or any(tid not in rows for tid in test_ids):
            self.load_status(minion_id, test_ids)
            rows = self.status[minion_id]
        started_at, code_hash = record.started_at, record.code_hash
        signature_of = record.test_signatures.get
        messages: dict[str, str] | None = None
        # Per result, on the hot path: locals only, and the outbox is asked only when the streak changed.
        for tid, (nodeid, (outcome, duration, _file, _line)) in zip(test_ids, per_test.items(), strict=True):
            row = rows[tid]
            if row is None:
                was_failing = False
                row = rows[tid] = fold_status(
                    row, minion_id, tid, run_id, started_at, outcome, duration, code_hash, signature_of(nodeid)
                )
            else:
                was_failing = bool(row["first_fail_at"])
                last_started = row["last_started_at"]
                if started_at < last_started or (started_at == last_started and run_id < row["last_run_id"]):
                    # An older run arrived after a newer one: rebuild from history (its results are in).
                    row = rows[tid] = self.recompute_status(minion_id, tid, run_id)
                else:
                    fold_status(row, minion_id, tid, run_id, started_at, outcome, duration, code_hash,
                                signature_of(nodeid))  # fmt: skip
            if bool(row and row["first_fail_at"]) == was_failing:
                continue
            is_failing = not was_failing
            kind = outbox.change_kind(was_failing, is_failing)
            if messages is None:
                messages = _failure_messages(record)
            failing = kind == "new_failure"
            self.changes.append(outbox.TestChange(kind, record.jid, record.minion, nodeid, run_id,
                                                  messages.get(nodeid) if failing else None,
                                                  signature_of(nodeid) if failing else None))

    def _update_minion(self, minion_id: int, run_id: int, record: RunRecord) -> None:
        state = self.minion_state(minion_id)
        state["runs"] += 1
        state["first_seen"] = min(state["first_seen"], record.returned_at)
        state["last_seen"] = max(state["last_seen"], record.returned_at)
        newest = state["last_run_id"] is None or (record.started_at, run_id) > (
            state["last_started"] or "",
            state["last_run_id"],
        )
        if newest:
            state["last_run_id"] = run_id
            state["last_started"] = record.started_at
            state["grains"] = record.grains
            state["status"] = record.status

    def add_job(self, record: JobRecord) -> None:
        outbox.record_manifest(self.conn, record.jid, self.now)
        self.conn.execute(
            "INSERT INTO jobs (jid, fun, tgt, tgt_type, targeted, started_at) VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (jid) DO UPDATE SET fun = excluded.fun, tgt = excluded.tgt, tgt_type = excluded.tgt_type, "
            "targeted = excluded.targeted, started_at = excluded.started_at",
            (record.jid, record.fun, record.tgt, record.tgt_type, record.targeted, record.started_at),
        )

    def _stage(self, staged: tuple[StagedBatch, int, int], run_id: int, tests: dict[str, Any], ids: dict[str, int]) -> None:
        data, first, count = staged
        if self.staging is not None and data is not self.staging:
            self.flush_results()  # records validated in different worker calls: one staging database at a time
        self.staging = data
        self.staged_runs[run_id] = (first, first + count - 1)
        for nodeid in tests.keys() - self.staged_tests.keys():
            self.staged_tests[nodeid] = ids[nodeid]

    def send_results(self) -> None:
        """Insert the queued result rows; on PostgreSQL the COPY runs on while this thread folds
        the summaries (see dashboard.dialect.start_insert_results), until :meth:`flush_results`."""
        if self.pending_results:
            self.results_sent = start_insert_results(self.conn, self.pending_results)
            self.pending_results = []

    def flush_results(self) -> None:
        """Every queued or sent result row is in (before anything reads results or the transaction ends)."""
        self.send_results()
        if self.results_sent is not None:
            sent, self.results_sent = self.results_sent, None
            sent()
        if self.staged_runs:
            insert_staged_results(self.conn, self.staging, self.staged_runs, self.staged_tests,
                                  self.failures.text_ids)
            self.staged_runs, self.staged_tests = {}, {}
            self.staging = None

    def flush(self) -> None:
        conn = self.conn
        updates, inserts, hot = [], [], []
        # PostgreSQL upserts every changed row whole (and skips unchanged index entries itself).
        split_hot = dialect_of(conn) != POSTGRES
        totals: dict[int, list] = {}
        files: dict[tuple[int, str], list] = {}
        file_of = self.ids.files
        upkeep = SignatureUpkeep()  # the failures view's summaries: only statuses that changed
        for key, row in self._folded():
            verdict = _verdict(row["last_outcome"])
            baseline = self.baseline.get(key)
            if baseline is not None:
                runs, fails, flips, code_flips, duration, was, signature, first_fail_at = baseline
                if split_hot and row["flips"] == flips and row["code_flips"] == code_flips and (
                        row["last_signature"] == signature and row["first_fail_at"] == first_fail_at):
                    hot.append(_status_hot_values(row))
                else:
                    updates.append(_status_values(row))
                new = 0
            else:
                inserts.append(_status_values(row))
                runs = fails = flips = code_flips = duration = was = 0
                signature = None
                new = 1
            failing = (verdict == 1) - (was == 1)
            passing = (verdict == 2) - (was == 2)
            minion_id, test_id = key
            if signature != row["last_signature"] or (signature and (code_flips > 0) != (row["code_flips"] > 0)):
                upkeep.status(minion_id, self.minions[minion_id]["profile"], test_id, signature, code_flips > 0,
                              row["last_signature"], row["code_flips"] > 0)
            if passing:
                upkeep.passing(test_id, self.minions[minion_id]["profile"], passing)
            total = totals.get(test_id)
            if total is None:
                total = totals[test_id] = [0, 0, 0, 0, 0, 0.0, 0, 0, None]
            total[0] += new
            total[1] += row["runs"] - runs
            total[2] += row["fails"] - fails
            total[3] += row["flips"] - flips
            total[4] += row["code_flips"] - code_flips
            total[5] += row["total_duration"] - duration
            total[6] += failing
            total[7] += passing
            if row["last_pass_at"] and (total[8] is None or row["last_pass_at"] > total[8]):
                total[8] = row["last_pass_at"]
            if new or failing or passing:
                cell_key = (minion_id, file_of[test_id])
                cell = files.get(cell_key)
                if cell is None:
                    cell = files[cell_key] = [0, 0, 0, None]
                cell[0] += new
                cell[1] += failing
                cell[2] += passing
                if cell[3] is None or row["last_started_at"] > cell[3]:
                    cell[3] = row["last_started_at"]
                state = self.minions[minion_id]
                state["tests"] += new
                state["failing"] += failing
                state["passing"] += passing
        self.flush_results()  # (on PostgreSQL the COPY went on while the loops above ran)
        store_rows(conn, "test_status", STATUS_COLUMNS, ("minion_id", "test_id"), inserts, updates)
        if hot:
            conn.executemany(_UPDATE_STATUS_HOT, hot)
        if totals:
            insert_many(
                conn,
                _UPSERT_TEST_TOTALS,
                [
                    (test_id, t[0], t[1], t[2], t[3], t[4], t[5], t[5] / t[1] if t[1] > 0 else None, t[6], t[7], t[8])
                    for test_id, t in totals.items()
                ],
            )
        if files:
            insert_many(conn, _UPSERT_FILE_STATUS, [(m, f, *cell) for (m, f), cell in files.items()])
        upkeep.apply(conn)
        fleet_counts = FleetCountsDelta(conn, list(self.minions))
        self._flush_minions()
        fleet_counts.apply()
        if self.jobs:
            insert_many(conn, _UPSERT_JOB_TOTALS, [(jid, *job) for jid, job in self.jobs.items()])
        insert_many(
            conn,
            "INSERT INTO counters (name, value) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET value = counters.value + excluded.value",
            [(name, value) for name, value in (("runs", self.runs), ("results", self.results), ("tests", self.new_tests)) if value],
        )
        self.failures.flush()
        outbox.record_changes(conn, self.changes, self.now)

    def _folded(self) -> Iterator[tuple[tuple[int, int], dict]]:
        """((minion id, test id), row) of every test_status row this batch folded."""
        for minion_id, rows in self.status.items():
            for test_id, row in rows.items():
                if row is not None:  # None: recompute_status found no history (nothing to write)
                    yield (minion_id, test_id), row

    def _flush_minions(self) -> None:
        """Every touched minion's row, in two statements whatever the number of minions (on
        PostgreSQL one round trip each), then the rare rewrites of its grains and profile."""
        conn = self.conn
        counted, moved = [], []
        for minion_id, state in self.minions.items():
            late = late_after(state["first_seen"], state["last_seen"], (state["stored_runs"] or 0) + state["runs"],
                              state["expected_interval"])  # fmt: skip
            values = (state["runs"], state["first_seen"], state["last_seen"], late, state["tests"], state["failing"],
                      state["passing"])  # fmt: skip
            if state["grains"] is None:
                counted.append((*values, minion_id))
            else:
                moved.append((*values, state["last_run_id"], state["status"], state["grains"], minion_id))
        if counted:
            conn.executemany(
                "UPDATE minions SET runs = runs + ?, first_seen = ?, last_seen = ?, late_after = ?, tests = tests + ?, "
                "failing = failing + ?, passing = passing + ? WHERE id = ?",
                counted,
            )
        if moved:
            conn.executemany(
                "UPDATE minions SET runs = runs + ?, first_seen = ?, last_seen = ?, late_after = ?, tests = tests + ?, "
                "failing = failing + ?, passing = passing + ?, last_run_id = ?, last_status = ?, grains = ? "
                "WHERE id = ?",
                moved,
            )
        for minion_id, state in self.minions.items():
            grains_changed = state["grains"] is not None and state["grains"] != state["stored_grains"]
            if grains_changed:
                # Grains rarely change: rewrite this minion's rows only when they did.
                conn.execute("DELETE FROM minion_grains WHERE minion_id = ?", (minion_id,))
                insert_many(
                    conn,
                    "INSERT INTO minion_grains (grain, value, minion_id) VALUES (?, ?, ?)",
                    [(grain, value, minion_id) for grain, value in sorted(grain_values(state["grains"]))],
                )
            if grains_changed or state["profile"] is None:
                state["profile"] = reprofile_minion(conn, minion_id, state["profile"])


# -- staged results (SQLite with the validation worker) -------------------------------------------
# Binding a result row's 11 values from Python costs the writer more than SQLite's own insert of
# it (~4 of ~6.5 us). With a validation worker, the worker binds them instead, into an in-memory SQLite database sent back
# serialized with the batch; the writer loads it into its attached staging schema and inserts
# every row with one INSERT ... SELECT, joining the run and test ids it assigned. Nothing is
# written to disk: a crash loses only memory, and the files stay in the inbox until committed.
_STAGED_COLUMNS = ("phase", "outcome", "duration", "message", "longrepr", "stdout", "stderr", "markers", "signature")
# A run's rows are a range of the staging table's rowids (numbered from 1 in document order), so
# no per-row run key is bound; a row names its test by a small key, the position of its node id
# in the batch's list (StagedBatch), not by the text: less to copy, an integer join. A failing
# row names its failure text the same way (the position of its digest; NULL for other rows).
_STAGING_TABLE = f"CREATE TABLE rows (test_key INTEGER NOT NULL, text_key INTEGER, {', '.join(_STAGED_COLUMNS)})"
_INSERT_STAGED = (
    f"INSERT INTO results (run_id, test_id, {', '.join(_STAGED_COLUMNS)}, text_id) "  # noqa: S608 (constant names)
    f"SELECT r.run_id, t.test_id, {', '.join('s.' + c for c in _STAGED_COLUMNS)}, {{text_id}} "
    f"FROM temp.staged_runs r CROSS JOIN {STAGING_SCHEMA}.rows s ON s.rowid BETWEEN r.first AND r.last "
    f"CROSS JOIN temp.staged_test_keys t ON t.test_key = s.test_key ORDER BY r.run_id, s.rowid"  # ids as without staging
)
# A text id is looked up for a failing row only (a batch without failures looks up nothing).
_INSERT_STAGED_TEXTS = _INSERT_STAGED.format(text_id="CASE WHEN s.text_key IS NOT NULL THEN (SELECT x.text_id FROM "
                                             "temp.staged_text_keys x WHERE x.text_key = s.text_key) END")
_INSERT_STAGED = _INSERT_STAGED.format(text_id="NULL")


def stage_results(outcomes: list) -> None:
    """In the validation worker, for a SQLite store: put the result rows of this batch's runs into a
    serialized in-memory database (``RunRecord.staged``) and keep in ``rows`` only what the writer
    still reads of the failed/error rows: node id, phase, outcome, message, and the signature and
    digest of the text; longrepr once per distinct text of the batch (for a new text's row)."""
    runs = [record for record in outcomes if isinstance(record, RunRecord) and record.rows]
    if not runs:
        return
    # Binding a value costs far more than SQLite's insert of it: a row without text or signature
    # (most passes) binds its 6 values, the others all 12. Explicit rowids keep each run's rows
    # in document order in one rowid range.
    plain: list[tuple] = []
    full: list[tuple] = []
    add_plain, add_full = plain.append, full.append
    keys: dict[str, int] = {}
    text_keys: dict[bytes, int] = {}
    rowid = 0
    spans = []
    # The failing rows go back to the writer pickled: each distinct text's strings once a batch
    # (pickle writes an object seen before as a reference), not once a row.
    shared: dict[bytes, tuple[str | None, str | None]] = {}
    for record in runs:
        first = rowid + 1
        failing = []
        for row in record.rows:
            rowid += 1
            nodeid, phase, outcome, duration, message, longrepr, stdout, stderr, markers, signature, digest = row
            key = keys.get(nodeid)
            if key is None:
                key = keys[nodeid] = len(keys) + 1
            if message is None and longrepr is None and stdout is None and stderr is None and signature is None:
                add_plain((rowid, key, phase, outcome, duration, markers))
                continue
            text_key = None
            if digest is not None:
                text_key = text_keys.get(digest)
                if text_key is None:
                    text_key = text_keys[digest] = len(text_keys) + 1
            add_full((rowid, key, text_key, phase, outcome, duration, message, longrepr, stdout, stderr, markers,
                      signature))  # fmt: skip
            if outcome in FAIL:  # a signature is only on these
                if digest is not None:
                    message, longrepr = shared.setdefault(digest, (message, longrepr))
                failing.append((nodeid, phase, outcome, None, message, longrepr, None, None, None, signature, digest))
        spans.append((first, rowid - first + 1))
        record.rows = failing
    batch = StagedBatch(_staging_database(plain, full), tuple(keys), tuple(text_keys))
    for record, (first, count) in zip(runs, spans, strict=True):
        record.staged = (batch, first, count)


class StagedBatch(NamedTuple):
    """A batch's staged result rows: the serialized database, and the node ids and failure text
    digests its test and text keys stand for (key 1 first)."""

    database: bytes
    nodeids: tuple[str, ...]
    text_digests: tuple[bytes, ...] = ()


def insert_staged_results(
    conn: sqlite3.Connection, staging: StagedBatch, runs: dict[int, tuple[int, int]], test_ids: dict[str, int],
    text_ids: dict[bytes, int] | None = None,
) -> None:
    """Insert the staged rows of the runs in ``runs`` (run id -> its first and last staged rowid) in
    one statement; ``test_ids`` holds at least their tests (nodeid -> test id), ``text_ids`` at
    least their failure texts (digest -> text id)."""
    conn.deserialize(staging.database, name=STAGING_SCHEMA)
    conn.execute("CREATE TEMP TABLE IF NOT EXISTS staged_runs (run_id INTEGER PRIMARY KEY, first INTEGER NOT NULL, "
                 "last INTEGER NOT NULL)")  # fmt: skip
    conn.execute("CREATE TEMP TABLE IF NOT EXISTS staged_test_keys (test_key INTEGER PRIMARY KEY, test_id INTEGER NOT NULL)")
    conn.execute("CREATE TEMP TABLE IF NOT EXISTS staged_text_keys (text_key INTEGER PRIMARY KEY, text_id INTEGER NOT NULL)")
    # The mapping rows belong to the transaction: a rollback takes them away with everything else.
    conn.executemany("INSERT INTO temp.staged_runs VALUES (?, ?, ?)", [(run_id, *span) for run_id, span in runs.items()])
    key_of = {nodeid: key for key, nodeid in enumerate(staging.nodeids, 1)}
    conn.executemany("INSERT INTO temp.staged_test_keys VALUES (?, ?)",
                     [(key_of[nodeid], test_id) for nodeid, test_id in test_ids.items()])  # fmt: skip
    text_ids = text_ids or {}
    conn.executemany("INSERT INTO temp.staged_text_keys VALUES (?, ?)",
                     [(key, text_ids[digest]) for key, digest in enumerate(staging.text_digests, 1)
                      if digest in text_ids])  # fmt: skip
    conn.execute(_INSERT_STAGED_TEXTS if staging.text_digests else _INSERT_STAGED)
    conn.execute("DELETE FROM temp.staged_runs")
    conn.execute("DELETE FROM temp.staged_test_keys")
    conn.execute("DELETE FROM temp.staged_text_keys")
    conn.deserialize(_EMPTY_STAGING, name=STAGING_SCHEMA)  # free the batch's copy


def _staging_database(plain: list[tuple], full: list[tuple]) -> bytes:
    staging = sqlite3.connect(":memory:")
    try:
        staging.execute(_STAGING_TABLE)
        staging.executemany("INSERT INTO rows (rowid, test_key, phase, outcome, duration, markers) "
                            "VALUES (?, ?, ?, ?, ?, ?)", plain)  # fmt: skip
        staging.executemany(
            f"INSERT INTO rows (rowid, test_key, text_key, {', '.join(_STAGED_COLUMNS)}) "  # noqa: S608 (constant names)
            f"VALUES ({', '.join('?' * (len(_STAGED_COLUMNS) + 3))})",
            full,
        )
        staging.commit()
        return staging.serialize()
    finally:
        staging.close()


_EMPTY_STAGING = _staging_database([], [])


def _failure_messages(record: RunRecord) -> dict[str, str]:
    """nodeid -> its first failure message in the run (for webhook messages)."""
    found: dict[str, str] = {}
    for row in record.rows:
        if row[2] in ("failed", "error") and row[4] and row[0] not in found:
            found[row[0]] = row[4]
    return found


def write_quarantine_notices(conn: sqlite3.Connection, items: list[tuple[str, str]]) -> int:
    """The webhook outbox's notices of quarantined files, as (inbox entry, reason)."""
    return outbox.record_quarantined(conn, items, utc_now())


def _sort_key(record: RunRecord | JobRecord) -> tuple:
    if isinstance(record, JobRecord):
        return (0, "", "", record.jid)
    return (1, record.minion, record.started_at, record.jid)


def write_records(conn: sqlite3.Connection, records: list[RunRecord | JobRecord], ids: IdCache) -> list[str]:
    """Store ``records`` in the current transaction; one outcome per record ('ingested' | 'duplicate' | 'manifest').

    Run it through ``run_transaction(..., on_rollback=ids.clear)``: ids it caches belong to rows
    of this transaction until it commits.
    """
    batch = _Batch(conn, ids)
    outcomes: dict[int, str] = {}
    # Oldest first per minion, so "latest" summaries are built in order within a batch.
    order = sorted(range(len(records)), key=lambda i: _sort_key(records[i]))
    # Every run row first, in one statement: ids in that order.
    runs = [records[i] for i in order if isinstance(records[i], RunRecord)]
    inserted = batch.insert_runs(runs)
    batch.prefetch(runs, inserted)
    for run, run_id in zip(runs, inserted, strict=True):
        batch.add_results(run, run_id)
    batch.send_results()  # on PostgreSQL the server loads them while the loop below folds the summaries
    run_ids = iter(inserted)
    for index in order:
        record = records[index]
        if isinstance(record, JobRecord):
            batch.add_job(record)
            outcomes[index] = "manifest"
        else:
            outcomes[index] = batch.add_run(record, next(run_ids))
    batch.flush()
    return [outcomes[i] for i in range(len(records))]
