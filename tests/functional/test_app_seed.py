"""dashboard.seed (the benchmarks' data): deterministic, and its summary tables agree with what
the ingester's own rules build from the same results."""

from __future__ import annotations

import hashlib

import pytest

from dashboard import ingest
from dashboard.db import connect_sync
from dashboard.seed import seed


def digest(conn) -> str:
    h = hashlib.sha256()
    for table in ("minions", "tests", "runs", "results", "test_status", "jobs"):
        columns = "*" if table != "runs" else "id, minion_id, jid, status, passed, failed, started_at, duration"
        if table == "minions":
            columns = "id, name, first_seen, last_seen, last_run_id, runs, grains"
        for row in conn.execute(f"SELECT {columns} FROM {table} ORDER BY 1, 2"):  # noqa: S608
            h.update(repr(tuple(row)).encode())
    return h.hexdigest()


@pytest.fixture
def seeded_conn(tmp_path):
    conn = connect_sync(tmp_path / "seed.sqlite")
    summary = seed(conn, runs=240, tests=30, minions=8)
    yield conn, summary
    conn.close()


def test_seed_counts_and_determinism(seeded_conn, tmp_path):
    conn, summary = seeded_conn
    assert summary == {"runs": 240, "results": 7200, "minions": 8, "tests": 30, "jobs": 30}
    assert conn.execute("SELECT COUNT(*) FROM results").fetchone()[0] == 7200
    counters = dict(conn.execute("SELECT name, value FROM counters").fetchall())
    assert counters == {"runs": 240, "results": 7200, "tests": 30}
    # Run counts follow the counting rule of the result format.
    mismatched = conn.execute(
        "SELECT COUNT(*) FROM runs r WHERE r.failed != (SELECT COUNT(*) FROM results x WHERE x.run_id = r.id "
        "AND x.outcome = 'failed') OR r.errors != (SELECT COUNT(*) FROM results x WHERE x.run_id = r.id "
        "AND x.outcome = 'error')"
    ).fetchone()[0]
    assert mismatched == 0
    other = connect_sync(tmp_path / "again.sqlite")
    try:
        seed(other, runs=240, tests=30, minions=8)
        assert digest(other) == digest(conn)
    finally:
        other.close()


def test_seed_summaries_match_the_ingesters_rules(seeded_conn):
    conn, _ = seeded_conn
    # Rebuild test_status from the results with the ingester's own fold, oldest first.
    rebuilt: dict[tuple[int, int], dict] = {}
    rows = conn.execute(
        "SELECT r.minion_id, x.test_id, r.id, r.started_at, x.outcome, x.duration FROM results x "
        "JOIN runs r ON r.id = x.run_id ORDER BY r.started_at, r.id"
    )
    for minion_id, test_id, run_id, started_at, outcome, duration in rows:
        key = (minion_id, test_id)
        rebuilt[key] = ingest.fold_status(rebuilt.get(key), minion_id, test_id, run_id, started_at, outcome, duration)
    columns = ("last_run_id", "last_outcome", "last_started_at", "runs", "fails", "flips", "first_fail_at",
               "last_pass_at")
    stored = {
        (row["minion_id"], row["test_id"]): row
        for row in conn.execute(f"SELECT minion_id, test_id, {', '.join(columns)}, total_duration FROM test_status")  # noqa: S608
    }
    assert stored.keys() == rebuilt.keys()
    for key, row in stored.items():
        for column in columns:
            assert row[column] == rebuilt[key][column], (key, column)
        assert row["total_duration"] == pytest.approx(rebuilt[key]["total_duration"])
    assert sum(row["flips"] for row in stored.values()) > 0  # the flaky tests flip
    minions = conn.execute(
        "SELECT m.runs, m.last_run_id, (SELECT COUNT(*) FROM runs r WHERE r.minion_id = m.id), "
        "(SELECT id FROM runs r WHERE r.minion_id = m.id ORDER BY started_at DESC, id DESC LIMIT 1) FROM minions m"
    ).fetchall()
    assert all(row[0] == row[2] == 30 and row[1] == row[3] for row in minions)
