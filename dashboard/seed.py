"""Deterministic bulk test data: N runs x M tests over K minions, inserted directly with executemany.

For benchmarks and query-plan checks, not for production. Summary tables (``minions``,
``test_status``, ``counters``, ``jobs``) are filled with what the ingester would have built from
the same runs (the same fold, dashboard/ingest/status.py), so every page shows the numbers it
would after a real ingest. Every run carries a ``code_hash``; the seeded code changes every
:data:`CODE_EVERY` jobs.

.. code-block:: python

    from dashboard.db import connect_sync
    from dashboard.seed import seed
    conn = connect_sync("/tmp/bench.sqlite")
    seed(conn, runs=20_000, tests=50, minions=50)   # 1,000,000 results, ~10 s

CLI Example:

.. code-block:: bash

    python -m dashboard seed --runs 20000 --tests 50 --minions 50
"""

from __future__ import annotations

import hashlib
import json
import random
import sqlite3
from datetime import UTC, datetime, timedelta
from typing import Any

from dashboard.db import run_transaction
from dashboard.dialect import analyze, insert_results, insert_rows, move_sequences, upsert_sql
from dashboard.failures import rebuild_signature_summaries
from dashboard.ingest.status import FAIL, fold_status
from dashboard.ingest.store import STATUS_COLUMNS, rebuild_fleet_summaries

RUN_COLUMNS = ("id", "minion_id", "jid", "fun", "source", "status", "exitcode", "passed", "failed", "skipped",
               "xfailed", "xpassed", "errors", "started_at", "finished_at", "duration", "returned_at", "ingested_at",
               "paths", "args", "python_version", "pytest_version", "grains", "message", "signed", "code_hash")
BATCH_RUNS = 1000
BATCH_RESULTS = 200_000  # rows held before an executemany: bounds memory with many tests per run
# The seeded test code changes every this many jobs (a new code_hash for every minion at once).
CODE_EVERY = 10
LONGREPR = (
    "def test_it():\n>       assert response.status == 200\nE       assert 503 == 200\n"
    "E        +  where 503 = <Response 503>.status\n\ntests/test_x.py:42: AssertionError"
)


def _ts(moment: datetime) -> str:
    # The ingester's stored form (dashboard/models.format_timestamp): microseconds and Z.
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _behaviour(test_index: int) -> str:
    """A fixed character per test: most pass, some flaky, some broken on a few minions, some skipped."""
    if test_index % 10 == 9:
        return "flaky"
    if test_index % 25 == 7:
        return "broken"
    if test_index % 17 == 3:
        return "skipped"
    if test_index % 23 == 11:
        return "xfail"
    return "pass"


def _outcome(rng: random.Random, behaviour: str, minion_index: int) -> str:
    if behaviour == "flaky":
        return "failed" if rng.random() < 0.15 else "passed"
    if behaviour == "broken":
        return ("error" if rng.random() < 0.3 else "failed") if minion_index % 7 == 0 else "passed"
    if behaviour == "skipped":
        return "skipped"
    if behaviour == "xfail":
        return "xfailed"
    return "passed"


def code_hash_of(job_index: int) -> str:
    """The seeded code fingerprint of a job: one version per :data:`CODE_EVERY` jobs."""
    return hashlib.sha256(f"seed-code-{job_index // CODE_EVERY}".encode()).hexdigest()[:32]


def seed(
    conn: sqlite3.Connection,
    *,
    runs: int = 20_000,
    tests: int = 50,
    minions: int = 50,
    files: int = 10,
    seed: int = 1,
    start: datetime | None = None,
    interval: timedelta = timedelta(hours=1),
    prefix: str = "",
) -> dict[str, Any]:
    """Insert ``runs`` runs (jobs of ``minions`` minions each) x ``tests`` results into a migrated DB.

    Deterministic for a given ``seed``. Meant for an empty database (``prefix`` keeps minion
    names apart when seeding twice). Returns {"runs", "results", "minions", "tests", "jobs"}.
    """
    rng = random.Random(seed)
    start = start or datetime(2026, 1, 1, tzinfo=UTC)
    now_text = _ts(datetime.now(UTC))
    minion_names = [f"{prefix}minion-{i:03d}" for i in range(minions)]
    nodeids = [
        f"tests/test_area_{i % files:02d}.py::TestCase{i // files}::test_case_{i:04d}" for i in range(tests)
    ]
    behaviours = [_behaviour(i) for i in range(tests)]
    base_durations = [0.002 + (i * 37 % 100) / 200 for i in range(tests)]
    grains_by_minion = [
        json.dumps({"os": "Debian" if i % 4 else "Ubuntu", "osrelease": "12" if i % 4 else "24.04",
                    "kernel": "Linux", "num_cpus": 2 + i % 4, "mem_total": 4096 * (1 + i % 3),
                    "saltversion": "3008.4", "id": name,
                    "roles": ["distmon-minion", ("web", "db", "cache")[i % 3]]}, sort_keys=True)
        for i, name in enumerate(minion_names)
    ]
    jobs_needed = -(-runs // minions) if minions else 0
    in_last_job = runs - (jobs_needed - 1) * minions  # minions that run in the last job

    def last_job_of(m_index: int) -> int:
        return jobs_needed - 1 if m_index < in_last_job else jobs_needed - 2

    def fill(conn: sqlite3.Connection) -> tuple[int, int]:
        minion_ids = []
        for name, grains in zip(minion_names, grains_by_minion, strict=True):
            first = _ts(start)
            cur = conn.execute(
                "INSERT INTO minions (name, first_seen, last_seen, grains) VALUES (?, ?, ?, ?)",
                (name, first, first, grains),
            )
            minion_ids.append(cur.lastrowid)
        test_ids = []
        for i, nodeid in enumerate(nodeids):
            cur = conn.execute(
                "INSERT INTO tests (nodeid, file, line) VALUES (?, ?, ?)",
                (nodeid, nodeid.split("::")[0], 10 + i),
            )
            test_ids.append(cur.lastrowid)
        next_run_id = (conn.execute("SELECT MAX(id) FROM runs").fetchone()[0] or 0) + 1
        # Only minions that have runs still to come keep their test_status rows in memory; a
        # minion's rows are written after its last run (10,000 minions x 500 tests stay small).
        # Each test fails at a line of its own file: one failure signature per failing test.
        longreprs = [LONGREPR.replace("tests/test_x.py:42", f"{nodeid.split('::')[0]}:{12 + i}")
                     for i, nodeid in enumerate(nodeids)]
        status: dict[tuple[int, int], dict] = {}
        status_rows: list[tuple] = []
        minion_state: dict[int, dict] = {}
        jobs = []
        run_rows, result_rows = [], []
        made = 0
        job_index = 0
        while made < runs:
            job_time = start + job_index * interval
            jid = job_time.strftime("%Y%m%d%H%M%S") + f"{job_index % 1_000_000:06d}"
            code_hash = code_hash_of(job_index)
            jobs.append((jid, "pytestrun.run", "*", "glob", json.dumps(minion_names), _ts(job_time)))
            for m_index, minion_id in enumerate(minion_ids):
                if made >= runs:
                    break
                run_id = next_run_id + made
                started = job_time + timedelta(seconds=m_index % 30)
                started_at = _ts(started)
                counts = dict.fromkeys(("passed", "failed", "skipped", "xfailed", "xpassed", "error"), 0)
                total = 0.0
                for t_index, test_id in enumerate(test_ids):
                    outcome = _outcome(rng, behaviours[t_index], m_index)
                    duration = round(base_durations[t_index] * (0.8 + 0.4 * rng.random()), 4)
                    total += duration
                    counts[outcome] += 1
                    failing = outcome in FAIL
                    result_rows.append((
                        started_at, run_id, test_id, "setup" if outcome == "error" else "call", outcome, duration,
                        "assert 503 == 200" if failing else None, longreprs[t_index] if failing else None,
                        "captured output\n" if failing else None, None, "[]", None, None,
                    ))  # fmt: skip
                    key = (minion_id, test_id)
                    status[key] = fold_status(
                        status.get(key), minion_id, test_id, run_id, started_at, outcome, duration, code_hash
                    )
                finished = started + timedelta(seconds=total)
                run_status = "failed" if counts["failed"] or counts["error"] else "passed"
                run_rows.append((
                    run_id, minion_id, jid, "pytestrun.run", "distmon", run_status, 0 if run_status == "passed" else 1,
                    counts["passed"], counts["failed"], counts["skipped"], counts["xfailed"], counts["xpassed"],
                    counts["error"], started_at, _ts(finished), round(total, 3), _ts(finished), now_text,
                    '["salt://sample_tests"]', "[]", "3.11.2", "9.2.0", grains_by_minion[m_index], None, 1, code_hash,
                ))  # fmt: skip
                state = minion_state.setdefault(minion_id, {"runs": 0, "first_seen": _ts(finished)})
                state["runs"] += 1
                state["last_seen"] = _ts(finished)
                state["last_run_id"] = run_id
                made += 1
                if job_index == last_job_of(m_index):
                    status_rows.extend(
                        tuple(row[column] for column in STATUS_COLUMNS)
                        for row in (status.pop((minion_id, test_id)) for test_id in test_ids)
                    )
                if len(run_rows) >= BATCH_RUNS or len(result_rows) >= BATCH_RESULTS:
                    _flush(conn, run_rows, result_rows, status_rows)
            job_index += 1
        _flush(conn, run_rows, result_rows, status_rows)
        assert not status, "every minion's last run was seen"
        conn.executemany(upsert_sql("jobs", ("jid", "fun", "tgt", "tgt_type", "targeted", "started_at"), ("jid",)), jobs)
        conn.executemany(
            "UPDATE minions SET runs = runs + ?, first_seen = ?, last_seen = ?, last_run_id = ? WHERE id = ?",
            [(s["runs"], s["first_seen"], s["last_seen"], s["last_run_id"], m) for m, s in minion_state.items()],
        )
        results = runs * tests
        conn.executemany(
            "INSERT INTO counters (name, value) VALUES (?, ?) "
            "ON CONFLICT (name) DO UPDATE SET value = counters.value + excluded.value",
            [("runs", runs), ("results", results), ("tests", tests)],
        )
        move_sequences(conn)  # PostgreSQL: the runs were inserted with their ids
        rebuild_fleet_summaries(conn)
        rebuild_signature_summaries(conn)  # grain profiles; the signature backfill fills the rest
        # Seeded rows carry no failure signatures nor texts: the backfill gives them theirs (at the
        # app's start, or `python -m dashboard backfill-signatures`), as for results older than
        # signatures; a fleet's few distinct texts are made once each there (70 for 103,352
        # failures at 10,000 minions x 500 tests), each failure only gets their id.
        conn.execute("UPDATE signature_backfill SET pending_upto = (SELECT MAX(id) FROM results) WHERE id = 1")
        return results, len(jobs)

    conn.execute("PRAGMA cache_size = -262144")  # 256 MB: index inserts of millions of rows stay in memory
    results, job_count = run_transaction(conn, fill)
    analyze(conn)
    return {"runs": runs, "results": results, "minions": minions, "tests": tests, "jobs": job_count}


def _flush(conn: sqlite3.Connection, run_rows: list, result_rows: list, status_rows: list) -> None:
    insert_rows(conn, "runs", RUN_COLUMNS, run_rows)
    # Each row is (its run's started_at, *RESULT_COLUMNS): PostgreSQL COPYs them into the partition
    # of that start, SQLite inserts them with one executemany.
    by_run: dict[int, tuple[str, list]] = {}
    for started_at, *row in result_rows:
        by_run.setdefault(row[0], (started_at, []))[1].append(row)
    insert_results(conn, list(by_run.values()))
    insert_rows(conn, "test_status", STATUS_COLUMNS, status_rows)
    run_rows.clear()
    result_rows.clear()
    status_rows.clear()
