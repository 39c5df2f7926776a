"""dashboard.db (one writer, time-limited readers, WAL, migrations) and dashboard.retention on real files."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from datetime import timedelta

import pytest

from dashboard.db import Database, QueryTimeout, connect_sync, run_transaction
from dashboard.dialect import (
    DATABASE_ERRORS,
    insert_many,
    insert_many_returning,
    start_insert_results,
    store_rows,
)
from dashboard.ingest import ingest_pending
from dashboard.migrations import MIGRATIONS, current_version
from dashboard.retention import parse_age, prune
from tests.db_backend import database_location
from tests.functional.ingest_support import (
    counters,
    drop_doc,
    ingest,
    make_doc,
    make_settings,
    rows,
    test_entry,
)

RUNAWAY = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"
LATEST = MIGRATIONS[-1][0]


def run(coro):
    return asyncio.run(coro)


def test_open_creates_migrates_and_uses_wal(tmp_path):
    path = tmp_path / "deep" / "er" / "distmon.sqlite"

    async def scenario():
        async with Database(path) as db:
            return (
                await db.fetchval("PRAGMA user_version"),
                await db.fetchval("PRAGMA journal_mode"),
                await db.fetchval("PRAGMA foreign_keys"),
                await db.fetchval("SELECT count(*) FROM sqlite_master WHERE name = 'test_status'"),
            )

    assert run(scenario()) == (LATEST, "wal", 1, 1)


def test_an_older_database_is_upgraded_at_start(tmp_path):
    path = tmp_path / "old.sqlite"
    old = sqlite3.connect(path)
    old.execute("CREATE TABLE leftover (x)")  # a version-0 file with something in it already
    old.close()
    conn = connect_sync(path)
    assert current_version(conn) == LATEST
    assert conn.execute("SELECT count(*) FROM sqlite_master WHERE name IN ('runs', 'leftover')").fetchone()[0] == 2
    assert conn.isolation_level is None and conn.row_factory is sqlite3.Row
    conn.close()
    assert current_version(connect_sync(path)) == LATEST  # idempotent


def test_write_commits_returns_and_rolls_back_on_error(tmp_path):
    async def scenario():
        async with Database(tmp_path / "db.sqlite") as db:
            def add(conn, name, value):
                conn.execute("INSERT INTO counters (name, value) VALUES (?, ?)", (name, value))
                return conn.in_transaction

            assert await db.write(add, "a", 1) is True

            def add_then_fail(conn):
                add(conn, "b", 2)
                raise RuntimeError("boom")

            with pytest.raises(RuntimeError, match="boom"):
                await db.write(add_then_fail)
            # Many concurrent writes: serialized on the one writer, none lost.
            await asyncio.gather(*(db.write(add, f"n{i}", i) for i in range(50)))
            return (
                await db.fetchall("SELECT name, value FROM counters WHERE name IN ('a', 'b')"),
                await db.fetchval("SELECT count(*) FROM counters"),
                await db.fetchone("SELECT value FROM counters WHERE name = 'missing'"),
                await db.fetchval("SELECT value FROM counters WHERE name = 'missing'", default=-1),
            )

    assert run(scenario()) == ([{"name": "a", "value": 1}], 51, None, -1)


def test_a_write_without_foreign_key_checks_turns_them_back_on_after(tmp_path):
    # check_foreign_keys=False (the ingester's writes): SQLite skips the checks for that one
    # transaction only, also when it fails; every other write is checked.
    def dangling(conn, fail=False):
        conn.execute("INSERT INTO results (run_id, test_id, phase, outcome, duration) "
                     "VALUES (999999, 999999, 'call', 'passed', 0)")
        if fail:
            raise RuntimeError("boom")

    async def scenario():
        async with Database(tmp_path / "db.sqlite") as db:
            with pytest.raises(RuntimeError, match="boom"):
                await db.write(dangling, True, check_foreign_keys=False)
            with pytest.raises(sqlite3.IntegrityError, match="FOREIGN KEY"):
                await db.write(dangling)
            await db.write(dangling, check_foreign_keys=False)
            with pytest.raises(sqlite3.IntegrityError, match="FOREIGN KEY"):
                await db.write(dangling)
            return await db.fetchval("SELECT count(*) FROM results")

    assert run(scenario()) == 1


def _insert_dangling_result(conn):
    """A result of a run that does not exist, checked only at COMMIT: COMMIT itself fails."""
    conn.execute("PRAGMA defer_foreign_keys = ON")
    conn.execute(
        "INSERT INTO results (run_id, test_id, phase, outcome, duration) VALUES (999999, 999999, 'call', 'passed', 0)"
    )


def test_a_failing_commit_is_rolled_back_and_the_writer_keeps_writing(tmp_path):
    rolled_back = []

    async def scenario():
        async with Database(tmp_path / "db.sqlite") as db:
            with pytest.raises(sqlite3.IntegrityError, match="FOREIGN KEY"):
                await db.write(_insert_dangling_result, on_rollback=lambda: rolled_back.append("writer"))
            # Without the ROLLBACK the writer would still be inside that transaction.
            await db.write(lambda conn: conn.execute("INSERT INTO counters (name, value) VALUES ('after', 1)"))
            return await db.fetchval("SELECT count(*) FROM results"), await db.fetchval("SELECT value FROM counters")

    assert run(scenario()) == (0, 1)
    assert rolled_back == ["writer"]


def test_a_failing_commit_on_a_cli_connection_is_rolled_back(tmp_path):
    conn = connect_sync(tmp_path / "db.sqlite")
    rolled_back = []
    with pytest.raises(sqlite3.IntegrityError, match="FOREIGN KEY"):
        run_transaction(conn, _insert_dangling_result, on_rollback=lambda: rolled_back.append("cli"))
    assert not conn.in_transaction and rolled_back == ["cli"]
    run_transaction(conn, lambda c: c.execute("INSERT INTO counters (name, value) VALUES ('after', 1)"))
    assert conn.execute("SELECT count(*) FROM results").fetchone()[0] == 0
    conn.close()


@pytest.mark.sqlite_only
def test_ingest_ids_do_not_outlive_a_failed_commit(tmp_path, monkeypatch):
    """A minion inserted by a transaction whose COMMIT failed must not keep its (reused) id in the cache."""
    settings = make_settings(tmp_path)
    # The trap below is a deferred foreign key: keep SQLite's checks on for the ingester's writes.
    unchecked_write = Database.write

    async def checked_write(self, fn, *args, check_foreign_keys=True, **kwargs):
        return await unchecked_write(self, fn, *args, **kwargs)

    monkeypatch.setattr(Database, "write", checked_write)
    conn = connect_sync(settings.db_path)
    # A deferred foreign key broken by one jid: that file's transaction fails at COMMIT, not before.
    conn.execute("CREATE TABLE trap (run_id INTEGER REFERENCES runs(id) DEFERRABLE INITIALLY DEFERRED)")
    conn.execute(
        "CREATE TRIGGER spring_trap AFTER INSERT ON runs WHEN NEW.jid = '20261128070000000901' "
        "BEGIN INSERT INTO trap VALUES (-1); END"
    )
    conn.close()

    async def scenario():
        async with Database(settings.db_path) as db:
            drop_doc(settings.inbox, make_doc("web-new", "20261128070000000901"))
            failed = await ingest_pending(db, settings)
            # web-new's row was rolled back; SQLite hands its id to the next minion inserted.
            drop_doc(settings.inbox, make_doc("web-other", "20261128070000000902"))
            other = await ingest_pending(db, settings)
            drop_doc(settings.inbox, make_doc("web-new", "20261128070000000903"))
            again = await ingest_pending(db, settings)
            return failed, other, again

    failed, other, again = run(scenario())
    assert (failed.ingested, failed.quarantined) == (0, 1)
    assert (other.ingested, other.deferred, again.ingested) == (1, 0, 1)
    filed = rows(settings, "SELECT r.jid, m.name FROM runs r JOIN minions m ON m.id = r.minion_id ORDER BY r.jid")
    assert filed == [
        {"jid": "20261128070000000902", "name": "web-other"},
        {"jid": "20261128070000000903", "name": "web-new"},
    ]


def test_reads_are_time_limited_and_read_only(tmp_path):
    async def scenario():
        async with Database(tmp_path / "db.sqlite", readers=2, read_timeout=0.2) as db:
            with pytest.raises(QueryTimeout):
                await db.fetchall(RUNAWAY)
            with pytest.raises(sqlite3.OperationalError, match="readonly"):
                await db.fetchall("INSERT INTO counters VALUES ('x', 1)")
            # The interrupted reader is healthy again.
            assert await db.fetchval("SELECT 41 + 1") == 42
            assert await db.fetchval("SELECT 42", timeout=5) == 42

    run(scenario())


def test_readers_never_see_database_is_locked_while_another_process_writes(tmp_path):
    path = tmp_path / "db.sqlite"
    connect_sync(path).close()
    holding = threading.Event()
    release = threading.Event()

    def other_process_writer():
        conn = connect_sync(path)
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO counters VALUES ('other', 1)")
        holding.set()
        release.wait(5)
        conn.execute("COMMIT")
        conn.close()

    async def scenario():
        async with Database(path) as db:
            thread = threading.Thread(target=other_process_writer)
            thread.start()
            await asyncio.to_thread(holding.wait, 5)
            # WAL: reads go on while the other connection holds the write lock.
            reads = await asyncio.gather(*(db.fetchval("SELECT count(*) FROM counters") for _ in range(20)))
            # Our writer waits (busy_timeout) instead of failing, and gets in once released.
            write = asyncio.ensure_future(db.write(lambda c: c.execute("INSERT INTO counters VALUES ('ours', 2)")))
            await asyncio.sleep(0.3)
            assert not write.done()
            release.set()
            await write
            await asyncio.to_thread(thread.join)
            return reads, await db.fetchval("SELECT count(*) FROM counters")

    reads, final = run(scenario())
    assert reads == [0] * 20 and final == 2


# -- retention --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [("90d", timedelta(days=90)), ("12h", timedelta(hours=12)), ("2w", timedelta(weeks=2)), ("30", timedelta(days=30)),
     (" 5m ", timedelta(minutes=5)), ("45s", timedelta(seconds=45))],
)  # fmt: skip
def test_parse_age(text, expected):
    assert parse_age(text) == expected


@pytest.mark.parametrize("text", ["", "d", "-1d", "1.5d", "1y", "9" * 30 + "d", "ninety days"])
def test_parse_age_rejects_nonsense(text):
    with pytest.raises(ValueError):
        parse_age(text)


def test_prune_deletes_old_runs_and_keeps_summaries_consistent(tmp_path):
    settings = make_settings(tmp_path)
    tests = [test_entry("t.py::test_old_only", "failed"), test_entry("t.py::test_always")]
    drop_doc(settings.inbox, make_doc("web-1", "20200101000000000001", tests, started_at="2020-01-01T00:00:00Z"))
    drop_doc(settings.inbox, make_doc("web-1", "20200101000000000002", tests, started_at="2020-01-02T00:00:00Z"))
    drop_doc(settings.inbox, make_doc("web-2", "20200101000000000003", tests, started_at="2020-01-03T00:00:00Z"))
    drop_doc(settings.inbox, make_doc("web-1", "29990101000000000001", [test_entry("t.py::test_always")], started_at="2999-01-01T00:00:00Z"))
    assert ingest(settings).ingested == 4

    async def scenario():
        async with Database(settings.db_path) as db:
            return await prune(db, timedelta(days=30)), await prune(db, timedelta(days=30))

    assert run(scenario()) == (3, 0)
    assert rows(settings, "SELECT jid FROM runs") == [{"jid": "29990101000000000001"}]
    assert counters(settings) == {"runs": 1, "results": 1, "tests": 2}
    assert rows(settings, "SELECT count(*) AS n FROM results")[0]["n"] == 1
    minions = {
        r["name"]: r
        for r in rows(settings, "SELECT m.name, m.runs, m.last_run_id, r.jid FROM minions m LEFT JOIN runs r ON r.id = m.last_run_id")
    }
    assert (minions["web-1"]["runs"], minions["web-1"]["jid"]) == (1, "29990101000000000001")
    assert (minions["web-2"]["runs"], minions["web-2"]["last_run_id"]) == (0, None)
    # Only the test that still ran on web-1 inside the window keeps a status row.
    status = rows(settings, "SELECT m.name, t.nodeid FROM test_status s JOIN minions m ON m.id = s.minion_id JOIN tests t ON t.id = s.test_id")
    assert status == [{"name": "web-1", "nodeid": "t.py::test_always"}]


def test_bulk_writes_store_what_one_statement_per_row_would(tmp_path):
    # dashboard.dialect's bulk writes (multi-row statements on PostgreSQL, chunked under its
    # 65,535 parameters; executemany on SQLite), on whichever engine this pass runs.
    conn = connect_sync(database_location(tmp_path))
    upsert = ("INSERT INTO counters (name, value) VALUES (?, ?) "
              "ON CONFLICT (name) DO UPDATE SET value = counters.value + excluded.value")
    many = [(f"n{i:05d}", i) for i in range(40_000)]  # 80,000 parameters: two statements on PostgreSQL
    try:
        run_transaction(conn, insert_many, upsert, many)
        run_transaction(conn, insert_many, upsert, [("n00001", 10), ("fresh", 7)])
        returned = run_transaction(conn, insert_many_returning,
                                   "INSERT INTO counters (name, value) VALUES (?, ?) ON CONFLICT (name) DO NOTHING "
                                   "RETURNING name, value",
                                   [("n00002", 99), ("new-a", 1), ("new-b", 2), ("new-a", 3)])
        run_transaction(conn, store_rows, "counters", ("name", "value"), ("name",), [("stored", 5)],
                        [("n00003", -3), ("fresh", 70)])
        values = dict(conn.execute("SELECT name, value FROM counters").fetchall())
    finally:
        conn.close()
    assert sorted(returned) == [("new-a", 1), ("new-b", 2)]  # a key already stored or twice in the rows: once
    assert len(values) == 40_000 + 4
    assert (values["n00000"], values["n00001"], values["n00002"], values["n39999"]) == (0, 11, 2, 39_999)
    assert (values["fresh"], values["n00003"], values["stored"], values["new-a"]) == (70, -3, 5, 1)


def test_results_sent_ahead_are_in_once_waited_for_and_their_error_surfaces_there(tmp_path):
    conn = connect_sync(database_location(tmp_path))

    def store_run(conn):
        minion = conn.execute("INSERT INTO minions (name, first_seen, last_seen) VALUES ('m', 't', 't') "
                              "RETURNING id").fetchone()[0]
        run = conn.execute("INSERT INTO runs (minion_id, jid, fun, source, status, started_at, returned_at, "
                           "ingested_at) VALUES (?, 'j1', 'f', 'distmon', 'passed', '2026-05-01T00:00:00Z', 't', 't') "
                           "RETURNING id", (minion,)).fetchone()[0]
        test = conn.execute("INSERT INTO tests (nodeid, file) VALUES ('t.py::a', 't.py') RETURNING id").fetchone()[0]
        return run, test

    def send_and_wait(conn, result_rows):
        done = start_insert_results(conn, [("2026-05-01T00:00:00Z", result_rows)])
        conn.execute("INSERT INTO counters (name, value) VALUES ('sent', 1)")  # waits for the COPY on PostgreSQL
        done()
        return conn.execute("SELECT count(*) FROM results").fetchone()[0]

    try:
        run, test = run_transaction(conn, store_run)
        row = (run, test, "call", "passed", 0.5, None, None, None, None, "[]", None, None)
        assert run_transaction(conn, send_and_wait, [row, row]) == 2
        with pytest.raises(DATABASE_ERRORS):  # a result of no run: the foreign key refuses it
            run_transaction(conn, send_and_wait, [(run + 1000, test, *row[2:])])
        assert conn.execute("SELECT count(*) FROM results").fetchone()[0] == 2
        assert conn.execute("SELECT count(*) FROM counters WHERE name = 'sent'").fetchone()[0] == 1
    finally:
        conn.close()
