"""Flakiness on the same minion and code: runs.code_hash, test_status.code_flips, migration 2, pages and API."""

from __future__ import annotations

import re
import sqlite3
from datetime import UTC, datetime, timedelta

import pytest

from dashboard.migrations import MIGRATIONS, _split
from dashboard.queries import FLAKY_SQL
from tests.functional.conftest import ADMIN, ingest, result_document, write_inbox
from tests.functional.ingest_support import drop_doc, make_doc, make_settings, rows, test_entry
from tests.functional.ingest_support import ingest as ingest_sync

NODEID = "tests/test_f.py::test_flaky"
CODE_A = "a" * 32
CODE_B = "b" * 32


@pytest.fixture
def settings(tmp_path):
    return make_settings(tmp_path)


def _history(settings, runs: list[tuple[str, str | None]], *, order: list[int] | None = None,
             minion: str = "web-1") -> dict:
    """Ingest one run per (outcome, code_hash) of one test, in ``order`` of arrival; its test_status row."""
    for index in order if order is not None else range(len(runs)):
        outcome, code_hash = runs[index]
        doc = make_doc(minion, f"202611280700000000{index:02d}", [test_entry(NODEID, outcome)],
                       started_at=f"2026-11-28T07:{index:02d}:00Z")
        if code_hash is not None:
            doc["result"]["code_hash"] = code_hash
        drop_doc(settings.inbox, doc)
        report = ingest_sync(settings)  # one pass per file: arrival order matters here
        assert report.ingested == 1 and report.quarantined == 0, report
    [row] = rows(settings, "SELECT * FROM test_status")
    return row


def test_code_hash_is_stored_with_the_run(settings):
    _history(settings, [("passed", CODE_A), ("passed", None)])
    assert [r["code_hash"] for r in rows(settings, "SELECT code_hash FROM runs ORDER BY started_at")] == [CODE_A, None]


def test_a_flip_on_the_same_code_counts_a_flip_across_a_code_change_does_not(settings):
    # pass(A) fail(A): flaky. fail(A) -> pass(B): a fix. pass(B) fail(B) pass(B): two more flaky flips.
    row = _history(settings, [("passed", CODE_A), ("failed", CODE_A), ("passed", CODE_B), ("failed", CODE_B),
                              ("passed", CODE_B)])
    assert (row["flips"], row["code_flips"], row["last_code_hash"]) == (4, 3, CODE_B)


def test_the_previous_verdict_counts_not_a_skip_in_between(settings):
    # The code changed while the test was skipped: the pass(A) -> fail(B) flip is not on the same code,
    # even though the run right before the failure (the skip) had code B too.
    row = _history(settings, [("passed", CODE_A), ("skipped", CODE_B), ("failed", CODE_B), ("skipped", CODE_B),
                              ("passed", CODE_B)])
    assert (row["flips"], row["code_flips"]) == (2, 1)


def test_unknown_code_never_counts(settings):
    row = _history(settings, [("passed", None), ("failed", None), ("passed", CODE_A), ("failed", None)])
    assert (row["flips"], row["code_flips"]) == (3, 0)


def test_out_of_order_arrival_rebuilds_code_flips(settings):
    runs = [("passed", CODE_A), ("failed", CODE_A), ("passed", CODE_B), ("failed", CODE_B)]
    row = _history(settings, runs, order=[0, 2, 3, 1])
    assert (row["flips"], row["code_flips"], row["last_code_hash"]) == (3, 2, CODE_B)


def test_a_bad_code_hash_is_quarantined_with_its_reason(settings):
    doc = make_doc("web-1", "20261128070000000001", [test_entry(NODEID)])
    doc["result"]["code_hash"] = "abc\ndef"
    drop_doc(settings.inbox, doc)
    report = ingest_sync(settings)
    assert (report.ingested, report.quarantined) == (0, 1)


# -- migration ----------------------------------------------------------------------------------


def _v1_database(path) -> None:
    """A database at schema version 1 with one run and its summaries, as the shipped code left it."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        version, sql = MIGRATIONS[0]
        assert version == 1
        for statement in _split(sql):
            conn.execute(statement)
        conn.execute("PRAGMA user_version = 1")
        conn.execute("INSERT INTO minions (id, name, first_seen, last_seen, runs) VALUES "
                     "(1, 'old-1', '2026-01-01T00:00:00.000000Z', '2026-01-01T00:00:00.000000Z', 1)")
        conn.execute("INSERT INTO tests (id, nodeid, file, line) VALUES (1, ?, 'tests/test_f.py', 3)", (NODEID,))
        conn.execute("INSERT INTO runs (id, minion_id, jid, fun, status, started_at, ingested_at, failed) VALUES "
                     "(1, 1, '20260101000000000001', 'pytestrun.run', 'failed', '2026-01-01T00:00:00.000000Z', "
                     "'2026-01-01T00:00:01.000000Z', 1)")
        conn.execute("INSERT INTO results (run_id, test_id, phase, outcome) VALUES (1, 1, 'call', 'failed')")
        conn.execute("INSERT INTO test_status (minion_id, test_id, last_run_id, last_outcome, last_started_at, runs, "
                     "fails, flips, first_fail_at, last_pass_at) VALUES (1, 1, 1, 'failed', "
                     "'2026-01-01T00:00:00.000000Z', 5, 3, 2, '2026-01-01T00:00:00.000000Z', "
                     "'2025-12-31T00:00:00.000000Z')")
    finally:
        conn.close()


@pytest.mark.sqlite_only
@pytest.mark.anyio
async def test_a_version_1_database_with_data_upgrades_at_app_start(tmp_path, make_app):
    _v1_database(tmp_path / "distmon.sqlite")
    async with make_app(tmp_path) as app:
        assert await app.db.fetchval("PRAGMA user_version") == MIGRATIONS[-1][0] >= 2
        [old] = await app.db.fetchall("SELECT runs, fails, flips, code_flips, last_code_hash FROM test_status")
        assert old == {"runs": 5, "fails": 3, "flips": 2, "code_flips": 0, "last_code_hash": None}
        assert await app.db.fetchval("SELECT code_hash FROM runs WHERE id = 1") is None
        # The old row goes on folding: a pass after its failing streak is a flip, of unknown code.
        start = datetime(2026, 1, 2, tzinfo=UTC)
        for index, (outcome, code) in enumerate([("passed", CODE_A), ("failed", CODE_A)]):
            doc = result_document("old-1", f"2026010200000000000{index}", start + timedelta(hours=index),
                                  [{"nodeid": NODEID, "outcome": outcome}])
            doc["result"]["code_hash"] = code
            write_inbox(app.settings.inbox, doc)
            await ingest(app)
        [row] = await app.db.fetchall("SELECT runs, flips, code_flips, last_code_hash FROM test_status")
        assert row == {"runs": 7, "flips": 4, "code_flips": 1, "last_code_hash": CODE_A}
        indexes = {r["name"] for r in await app.db.fetchall("SELECT name FROM sqlite_master WHERE type = 'index'")}
        assert "test_status_code_flips" in indexes


# -- pages and API --------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_flaky_page_and_api_rank_by_flips_on_the_same_code(tmp_path, make_app):
    fixed = "tests/test_g.py::test_fixed_twice"  # many flips, each across a code change
    flaky = "tests/test_g.py::test_really_flaky"  # fewer flips, all on the same code
    fixed_runs = [("passed", "A"), ("failed", "B"), ("passed", "C"), ("failed", "D"), ("passed", "E")]
    flaky_runs = [("passed", "A"), ("failed", "A"), ("passed", "A"), ("passed", "A"), ("passed", "A")]
    async with make_app(tmp_path) as app:
        start = datetime(2026, 11, 1, tzinfo=UTC)
        for index in range(5):
            doc = result_document("web-1", f"202611010000000000{index:02d}", start + timedelta(hours=index), [
                {"nodeid": fixed, "outcome": fixed_runs[index][0]},
                {"nodeid": flaky, "outcome": flaky_runs[index][0]},
            ])
            doc["result"]["code_hash"] = (fixed_runs[index][1] + flaky_runs[index][1]) * 16
            write_inbox(app.settings.inbox, doc)
        await ingest(app)
        assert (await app.register(*ADMIN)).status_code == 303
        assert (await app.login(*ADMIN)).status_code == 303

        api = (await app.http.get("/api/flaky")).json()["tests"]
        by_nodeid = {row["nodeid"]: row for row in api}
        # Every run's hash differs (fixed's code changes every run), so neither counts on the same code...
        assert by_nodeid[fixed]["flips"] == 4 and by_nodeid[fixed]["code_flips"] == 0
        assert by_nodeid[flaky]["flips"] == 2 and by_nodeid[flaky]["code_flips"] == 0

        # ... on web-2 only the flaky test runs, on unchanged code: it must now rank first.
        for index in range(5):
            doc = result_document("web-2", f"202611010000000001{index:02d}", start + timedelta(hours=index),
                                  [{"nodeid": flaky, "outcome": flaky_runs[index][0]}])
            doc["result"]["code_hash"] = CODE_A
            write_inbox(app.settings.inbox, doc)
        await ingest(app)
        api = (await app.http.get("/api/flaky")).json()["tests"]
        assert [(r["nodeid"], r["minion"], r["code_flips"], r["flips"]) for r in api] == [
            (flaky, "web-2", 2, 2),  # ranked by flips on the same code ...
            (fixed, "web-1", 0, 4),  # ... then by all flips
            (flaky, "web-1", 0, 2),
        ]

        page = (await app.http.get("/flaky")).text
        first_row = page.split("<tbody>")[1].split("</tr>")[0]
        assert flaky.split("::")[1] in first_row
        assert 'class="num code-flips">2<' in first_row and 'class="num flips">2<' in first_row

        detail = (await app.http.get("/api/tests", params={"nodeid": flaky})).json()
        assert (detail["flips"], detail["code_flips"]) == (4, 2)
        assert {m["minion"]: m["code_flips"] for m in detail["minions"]} == {"web-1": 0, "web-2": 2}
        html = (await app.http.get("/tests", params={"nodeid": flaky})).text
        assert "2 flips on the same minion and code" in html
        assert re.findall(r'class="num code-flips">(\d+)<', html) == ["0", "2"]


# -- the seeder and the query plan ------------------------------------------------------------------


def test_seeded_code_flips_match_the_ingesters_fold_and_the_flaky_query_uses_the_index(tmp_path):
    from dashboard import ingest as ingest_module
    from dashboard.db import connect_sync
    from dashboard.seed import seed

    conn = connect_sync(tmp_path / "seeded.sqlite")
    try:
        seed(conn, runs=400, tests=20, minions=4)
        rebuilt: dict[tuple[int, int], dict] = {}
        for minion_id, test_id, run_id, started_at, outcome, duration, code_hash in conn.execute(
            "SELECT r.minion_id, x.test_id, r.id, r.started_at, x.outcome, x.duration, r.code_hash FROM results x "
            "JOIN runs r ON r.id = x.run_id ORDER BY r.started_at, r.id"
        ):
            key = (minion_id, test_id)
            rebuilt[key] = ingest_module.fold_status(rebuilt.get(key), minion_id, test_id, run_id, started_at, outcome,
                                               duration, code_hash)
        stored = {(r["minion_id"], r["test_id"]): r for r in conn.execute("SELECT * FROM test_status")}
        assert stored.keys() == rebuilt.keys()
        for key, row in stored.items():
            for column in ("flips", "code_flips", "last_code_hash"):
                assert row[column] == rebuilt[key][column], (key, column)
        flips, code_flips = conn.execute("SELECT sum(flips), sum(code_flips) FROM test_status").fetchone()
        assert 0 < code_flips < flips  # the seeded code changes: some flips are across a change
        assert conn.execute("SELECT count(DISTINCT code_hash) FROM runs").fetchone()[0] > 1

        plan = " ".join(row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {FLAKY_SQL}", (50,)))
        assert "INDEX test_status_code_flips" in plan and "TEMP B-TREE" not in plan, plan
        detail = " ".join(row[3] for row in conn.execute(
            "EXPLAIN QUERY PLAN SELECT ts.flips, ts.code_flips FROM test_status ts JOIN minions m ON m.id = ts.minion_id "
            "WHERE ts.test_id = ? ORDER BY m.name LIMIT 1000", (1,)))
        assert "INDEX test_status_test" in detail, detail
    finally:
        conn.close()
