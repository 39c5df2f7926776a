"""dashboard.db (one writer, time-limited readers, WAL, migrations) and dashboard.retention on real files."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from datetime import timedelta

import pytest

from dashboard.db import Database, QueryTimeout, connect_sync
from dashboard.migrations import MIGRATIONS, current_version
from dashboard.retention import parse_age, prune
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
