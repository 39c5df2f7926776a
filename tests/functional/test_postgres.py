"""What only the PostgreSQL backend has: several ingesters on one store, partitions dropped by
prune, the time limit as statement_timeout, and `migrate-to` from a SQLite store.

These run on the session's real PostgreSQL server (tests/db_backend.py) whatever --db-backend
says; the rest of the functional suite runs on PostgreSQL with --db-backend=postgres.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from dashboard.app import create_app
from dashboard.db import Database, QueryTimeout, connect_sync
from dashboard.retention import prune
from tests.db_backend import fresh_postgres_url, on_postgres
from tests.functional.conftest import ADMIN, AppClient, seed_through_ingester
from tests.functional.conftest import make_settings as make_app_settings
from tests.functional.ingest_support import drop_doc, make_doc, make_settings, test_entry

REPO_ROOT = Path(__file__).resolve().parents[2]
# Already run against the real server in the default pass; the PostgreSQL pass need not repeat them.
pytestmark = pytest.mark.skipif(on_postgres(), reason="PostgreSQL-only tests: run in the default pass")


def _value(url: str, sql: str, params=()):
    conn = connect_sync(url)
    try:
        return conn.execute(sql, params).fetchone()[0]
    finally:
        conn.close()


def _without_clock(value):
    """``value`` without ``silent_for`` (seconds since a minion's last run: it grows between two calls)."""
    if isinstance(value, dict):
        return {key: _without_clock(item) for key, item in value.items() if key != "silent_for"}
    if isinstance(value, list):
        return [_without_clock(item) for item in value]
    return value


def _ingest_process(url: str, host: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "DISTMON_DB": url, "DISTMON_INBOX": str(host / "inbox"),
           "DISTMON_ARCHIVE": str(host / "archive"), "DISTMON_QUARANTINE": str(host / "quarantine"),
           "DISTMON_REQUIRE_SIGNATURE": "0"}
    return subprocess.Popen([sys.executable, "-m", "dashboard", "ingest", "--once"], env=env, cwd=host,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_two_ingesters_with_their_own_inboxes_store_every_run_exactly_once(tmp_path):
    url = fresh_postgres_url()
    hosts = {name: tmp_path / name for name in ("host-a", "host-b")}
    sent = set()
    for index in range(40):
        minion = f"web-{index % 4}"
        jid = f"202611280700000{index:05d}"
        doc = make_doc(minion, jid, [test_entry("tests/test_a.py::test_one"),
                                     test_entry(f"tests/test_a.py::test_{index % 3}", "failed" if index % 5 else "passed")],
                       started_at=f"2026-11-28T07:{index:02d}:00Z")
        sent.add((minion, jid))
        home = hosts["host-a"] if index % 4 < 2 else hosts["host-b"]
        drop_doc(home / "inbox", doc)
        if index % 3 == 0:  # the same file reached both storage hosts (a returner's retry after a fail-over)
            other = hosts["host-b"] if home == hosts["host-a"] else hosts["host-a"]
            drop_doc(other / "inbox", doc)

    procs = [_ingest_process(url, host) for host in hosts.values()]
    outputs = [proc.communicate(timeout=120) for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], outputs

    conn = connect_sync(url)
    try:
        stored = {(row[0], row[1]) for row in conn.execute(
            "SELECT m.name, r.jid FROM runs r JOIN minions m ON m.id = r.minion_id")}
        assert stored == sent
        assert conn.execute("SELECT count(*) FROM runs").fetchone()[0] == len(sent)
        assert conn.execute("SELECT count(*) FROM minions").fetchone()[0] == 4
        assert conn.execute("SELECT count(*) FROM tests").fetchone()[0] == 4
        counters = dict(conn.execute("SELECT name, value FROM counters").fetchall())
        assert counters["runs"] == len(sent) and counters["results"] == 2 * len(sent) and counters["tests"] == 4
        assert conn.execute("SELECT sum(runs) FROM minions").fetchone()[0] == len(sent)
        assert conn.execute("SELECT sum(runs) FROM test_status").fetchone()[0] == 2 * len(sent)
    finally:
        conn.close()
    # Every file left both inboxes: stored once, the second copy archived as a duplicate.
    assert [path for host in hosts.values() for path in (host / "inbox").glob("*/*.json")] == []


def test_prune_drops_the_partitions_of_old_months_and_keeps_the_summaries_consistent(tmp_path):
    settings = make_settings(tmp_path, db_path=fresh_postgres_url())
    now = datetime.now(UTC)
    starts = [now - timedelta(days=200), now - timedelta(days=170), now - timedelta(hours=1)]
    for index, started in enumerate(starts):
        # The oldest run fails its own way: its failure text goes with its partition.
        tests = [test_entry("tests/test_a.py::test_two", "failed", message="only long ago")] if index == 0 else None
        drop_doc(settings.inbox, make_doc("web-1", f"2026112807000000090{index}", tests,
                                          started_at=started.strftime("%Y-%m-%dT%H:%M:%SZ")))
    from tests.functional.ingest_support import ingest

    assert ingest(settings).ingested == 3
    url = settings.db_path
    partitions_sql = ("SELECT count(*) FROM pg_inherits WHERE inhparent = 'results'::regclass "
                      "AND inhrelid::regclass::text LIKE ?")
    old_month = "results_p" + starts[0].strftime("%Y_%m")
    assert _value(url, partitions_sql, (old_month,)) == 1

    async def run() -> int:
        async with Database(url) as db:
            return await prune(db, timedelta(days=90))

    assert _value(url, "SELECT count(*) FROM failure_texts") == 2
    assert asyncio.run(run()) == 2
    assert _value(url, partitions_sql, (old_month,)) == 0  # dropped whole, not emptied row by row
    assert _value(url, "SELECT message FROM failure_texts") == "failed: reason"  # the newest run points at it
    assert _value(url, partitions_sql, ("results_p" + starts[2].strftime("%Y_%m"),)) == 1
    assert _value(url, "SELECT count(*) FROM results") == 2
    assert _value(url, "SELECT value FROM counters WHERE name = 'results'") == 2
    assert _value(url, "SELECT value FROM counters WHERE name = 'runs'") == 1
    assert _value(url, "SELECT runs FROM minions") == 1


def test_reads_are_time_limited_read_only_and_writes_roll_back():
    async def scenario() -> None:
        async with Database(fresh_postgres_url(), readers=2, read_timeout=0.2) as db:
            with pytest.raises(QueryTimeout):
                await db.fetchval("SELECT pg_sleep(2)")
            assert await db.fetchval("SELECT 1 FROM pg_sleep(0.3)", timeout=5) == 1  # a longer limit, once
            with pytest.raises(QueryTimeout):
                await db.fetchval("SELECT pg_sleep(2)")  # and the default is back
            with pytest.raises(Exception, match="read-only"):
                await db.fetchall("INSERT INTO counters (name, value) VALUES ('x', 1)")

            def insert_then_fail(conn):
                conn.execute("INSERT INTO counters (name, value) VALUES ('y', 1)")
                raise RuntimeError("boom")

            with pytest.raises(RuntimeError):
                await db.write(insert_then_fail)
            assert await db.fetchval("SELECT count(*) FROM counters WHERE name = 'y'") == 0
            new_id = await db.write(lambda conn: conn.execute(
                "INSERT INTO minions (name, first_seen, last_seen) VALUES (?, ?, ?) RETURNING id",
                ("m-1", "2026-11-28T07:00:00Z", "2026-11-28T07:00:00Z")).fetchone()[0])
            assert await db.fetchval("SELECT name FROM minions WHERE id = ?", (new_id,)) == "m-1"

    asyncio.run(scenario())


@pytest.mark.anyio
async def test_migrate_to_copies_a_sqlite_store_and_the_pages_show_the_same(tmp_path):
    sqlite_path = tmp_path / "source.sqlite"
    source_settings = make_app_settings(tmp_path / "source", db=str(sqlite_path))
    app = create_app(source_settings)
    # Searches too: the failure texts come along and PostgreSQL indexes them itself.
    pages = ("/api/runs", "/api/fleet", "/api/flaky", "/api/slowest", "/api/runs?q=flaky", "/api/failures?q=broken")
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as http:
            client = AppClient(app, source_settings, http)
            await seed_through_ingester(client)
            assert (await client.register(*ADMIN)).status_code == 303
            assert (await client.login(*ADMIN)).status_code == 303
            before = {page: (await http.get(page)).json() for page in pages}
            assert before["/api/runs?q=flaky"]["runs"] and before["/api/failures?q=broken"]["failures"]
            run_id = before["/api/runs"]["runs"][0]["id"]
            before_run = (await http.get(f"/api/runs/{run_id}")).json()

    url = fresh_postgres_url()
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    migrated = subprocess.run([sys.executable, "-m", "dashboard", "--db", str(sqlite_path), "migrate-to", url],
                              env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert migrated.returncode == 0, migrated.stderr
    assert "copied" in migrated.stdout.splitlines()[-1]

    source = connect_sync(sqlite_path)
    try:
        for table in ("minions", "tests", "runs", "results", "test_status", "jobs", "counters", "users", "signatures",
                      "failure_texts"):
            assert _value(url, f"SELECT count(*) FROM {table}") == source.execute(  # noqa: S608
                f"SELECT count(*) FROM {table}").fetchone()[0], table  # noqa: S608
    finally:
        source.close()
    again = subprocess.run([sys.executable, "-m", "dashboard", "--db", str(sqlite_path), "migrate-to", url],
                           env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert again.returncode == 2 and "already holds" in again.stderr

    target_settings = make_app_settings(tmp_path / "target", db=url)
    app = create_app(target_settings)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as http:
            client = AppClient(app, target_settings, http)
            # The admin's account came along: the same password logs in on PostgreSQL.
            assert (await client.login(*ADMIN)).status_code == 303
            for page in pages:
                assert _without_clock((await http.get(page)).json()) == _without_clock(before[page]), page
            assert (await http.get(f"/api/runs/{run_id}")).json() == before_run
            # New ids continue after the copied ones.
            new_id = await app.state.db.write(lambda conn: conn.execute(
                "INSERT INTO minions (name, first_seen, last_seen) VALUES ('new', 'x', 'x') RETURNING id").fetchone()[0])
            assert new_id > max(m["id"] for m in await app.state.db.fetchall("SELECT id FROM minions WHERE name <> 'new'"))


def test_a_connection_the_server_dropped_is_replaced_on_the_next_call():
    url = fresh_postgres_url()

    async def scenario() -> None:
        async with Database(url, readers=1) as db:
            writer_pid = db._writer_thread.conn.raw.info.backend_pid
            reader_pid = db._all_pg_readers[0].conn.raw.info.backend_pid
            _value(url, "SELECT count(pg_terminate_backend(pid)) FROM unnest(ARRAY[?, ?]::int[]) AS pid",
                   (writer_pid, reader_pid))
            with pytest.raises(Exception, match="terminat|closed|connection"):
                await db.write(lambda conn: conn.execute("INSERT INTO counters (name, value) VALUES ('a', 1)"))
            await db.write(lambda conn: conn.execute("INSERT INTO counters (name, value) VALUES ('b', 1)"))
            with pytest.raises(Exception, match="terminat|closed|connection"):
                await db.fetchall("SELECT name FROM counters")
            assert [row["name"] for row in await db.fetchall("SELECT name FROM counters ORDER BY name")] == ["b"]

    asyncio.run(scenario())


@pytest.mark.anyio
async def test_seed_fills_a_postgres_store_whose_pages_answer(tmp_path):
    url = fresh_postgres_url()
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    seeded = subprocess.run([sys.executable, "-m", "dashboard", "--db", url, "seed", "--runs", "120", "--tests", "20",
                             "--minions", "6"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert seeded.returncode == 0, seeded.stderr
    assert _value(url, "SELECT count(*) FROM results") == 2400
    assert _value(url, "SELECT count(*) FROM runs WHERE status = 'failed'") > 0
    # The bulk load left statistics (ANALYZE) and the run ids' sequence past the seeded ids.
    assert _value(url, "SELECT count(*) FROM pg_stats WHERE tablename = 'runs'") > 0
    assert _value(url, "SELECT nextval(pg_get_serial_sequence('runs', 'id'))") > _value(url, "SELECT max(id) FROM runs")

    settings = make_app_settings(tmp_path / "app", db=url)
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as http:
            client = AppClient(app, settings, http)
            assert (await client.register(*ADMIN)).status_code == 303
            assert (await client.login(*ADMIN)).status_code == 303
            runs = (await http.get("/api/runs")).json()["runs"]
            assert runs and runs[0]["minion"].startswith("minion-")
            fleet = (await http.get("/api/fleet")).json()
            assert fleet
            for page in ("/", "/runs", "/runs?status=failed", f"/runs/{runs[0]['id']}", "/flaky", "/slowest",
                         "/api/slowest", "/tests?q=test_case_00"):
                response = await http.get(page)
                assert response.status_code == 200, (page, response.text[:300])
