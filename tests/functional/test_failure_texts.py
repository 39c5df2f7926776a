"""Failure texts (migration 10, dashboard/failure_texts.py): each distinct failure text stored and
indexed once, search through the texts, on both engines; the migration from a store at version 9."""

from __future__ import annotations

import asyncio
import sqlite3

import pytest

from dashboard import failures
from dashboard.db import Database, run_transaction
from dashboard.dialect import POSTGRES, SQLITE, connect_postgres
from dashboard.failure_texts import text_digest
from dashboard.migrations import MIGRATIONS, _apply, _bootstrap, current_version, migrate, statements_for
from dashboard.signatures import failure_signature
from tests.db_backend import on_postgres, server
from tests.functional.ingest_support import (
    drop_doc,
    ingest,
    make_doc,
    make_settings,
    prune_store,
    rows,
    test_entry,
)

TRACEBACK = (
    "def test_health():\n>       assert response.status == 200\nE       assert 503 == 200\n"
    "E        +  where 503 = <Response 503>.status\n\ntests/test_api.py:12: AssertionError"
)
TIMEOUT = "E   TimeoutError: timed out talking to db_primary\n\ntests/test_db.py:30: TimeoutError"


def _failing(nodeid: str, longrepr: str, message: str = "assert 503 == 200", outcome: str = "failed") -> dict:
    return test_entry(nodeid, outcome, message=message, longrepr=longrepr)


def _ingest_runs(settings, runs: list[tuple[str, str, list[dict]]]) -> None:
    for minion, jid, tests in runs:
        drop_doc(settings.inbox, make_doc(minion, jid, tests, started_at=f"2026-11-28T07:{jid[-2:]}:00Z"))
    assert ingest(settings).ingested == len(runs)


async def _search(settings, q: str) -> tuple[set[str], list[int]]:
    async with Database(settings.db_path) as db:
        return await failures.search_signatures(db, q), await failures.search_run_ids(db, q)


def test_a_failure_text_repeated_by_many_results_is_stored_once(tmp_path):
    settings = make_settings(tmp_path)
    health = _failing("tests/test_api.py::test_health", TRACEBACK)
    _ingest_runs(settings, [
        ("web-1", "20261128070000000001", [test_entry("tests/test_api.py::test_ok"), health]),
        ("web-2", "20261128070000000002", [health, _failing("tests/test_db.py::test_db", TIMEOUT, "timed out")]),
        ("web-1", "20261128070000000003", [health]),
    ])
    texts = rows(settings, "SELECT id, signature, message, longrepr FROM failure_texts ORDER BY id")
    assert [(t["message"], t["longrepr"]) for t in texts] == [("assert 503 == 200", TRACEBACK), ("timed out", TIMEOUT)]
    results = rows(settings, "SELECT x.text_id, x.signature FROM results x JOIN runs r ON r.id = x.run_id "
                             "ORDER BY r.jid, x.id")
    assert [r["text_id"] for r in results] == [None, texts[0]["id"], texts[0]["id"], texts[1]["id"], texts[0]["id"]]
    # A text belongs to the signature of its results.
    assert all(r["signature"] == next(t["signature"] for t in texts if t["id"] == r["text_id"])
               for r in results if r["text_id"])


def test_search_finds_words_joined_by_dots_and_underscores_on_both_engines(tmp_path):
    settings = make_settings(tmp_path)
    _ingest_runs(settings, [
        ("web-1", "20261128070000000001", [_failing("tests/test_api.py::test_health", TRACEBACK)]),
        ("db-1", "20261128070000000002", [_failing("tests/test_db.py::test_db", TIMEOUT, "timed out")]),
    ])
    [health_run, db_run] = [r["id"] for r in rows(settings, "SELECT id FROM runs ORDER BY jid")]
    [health_sig] = {r["signature"] for r in rows(settings, "SELECT signature FROM failure_texts WHERE longrepr LIKE ?",
                                                 ("%response.status%",))}
    # "response.status" is two words on PostgreSQL too (its 'simple' parser would keep one token).
    for q in ("response status", "response.status", "Response 503", "respon*"):
        assert asyncio.run(_search(settings, q)) == ({health_sig}, [health_run]), q
    # An underscore joins words as FTS5 reads them: "db_primary" is the phrase "db primary".
    assert asyncio.run(_search(settings, "db_primary"))[1] == [db_run]
    assert asyncio.run(_search(settings, "primary"))[1] == [db_run]
    assert asyncio.run(_search(settings, "nowhere"))[1] == []


def test_search_of_runs_reads_the_newest_failures_whether_its_words_are_common_or_rare(tmp_path, monkeypatch):
    # A small limit: the 3 newest matching failures.
    monkeypatch.setattr(failures, "FTS_MATCH_LIMIT", 3)
    settings = make_settings(tmp_path)
    common = _failing("tests/test_api.py::test_health", TRACEBACK)
    rare = _failing("tests/test_db.py::test_db", TIMEOUT, "timed out")
    runs = [("web-1", f"202611280700000000{i:02d}", [common] + ([rare] if i in (1, 2) else [])) for i in range(1, 9)]
    _ingest_runs(settings, runs)
    run_ids = [r["id"] for r in rows(settings, "SELECT id FROM runs ORDER BY id")]
    # Common: in every run, the newest three.
    assert asyncio.run(_search(settings, "503"))[1] == run_ids[::-1][:3]
    # Rare: only in the two oldest runs; found whatever the newer ones hold.
    assert asyncio.run(_search(settings, "talking"))[1] == [run_ids[1], run_ids[0]]


def test_a_signature_history_spans_its_texts_newest_first(tmp_path):
    # One signature, a text per run (the count in the message differs: masked in the signature,
    # not in the text), and another signature failing more recently in between.
    settings = make_settings(tmp_path)
    other = _failing("tests/test_db.py::test_db", TIMEOUT, "timed out")
    runs = []
    for i in range(1, 9):
        counted = _failing("tests/test_dns.py::test_resolve", "E   AssertionError\n\ntests/test_dns.py:8: AssertionError",
                           f"AssertionError: resolver returned {i} records")
        runs.append(("web-1", f"202611280700000000{i:02d}", ([counted] if i <= 5 else []) + ([other] if i >= 3 else [])))
    _ingest_runs(settings, runs)
    run_ids = [r["id"] for r in rows(settings, "SELECT id FROM runs ORDER BY jid")]
    [signature] = {r["signature"] for r in rows(settings, "SELECT signature FROM failure_texts WHERE message LIKE ?",
                                                ("%resolver%",))}
    assert len(rows(settings, "SELECT id FROM failure_texts WHERE signature = ?", (signature,))) == 5

    async def history(limit: int) -> list[tuple[int, str]]:
        async with Database(settings.db_path) as db:
            return [(row["run_id"], row["message"]) for row in await failures.signature_history(db, signature, limit)]

    # Five texts, newest first, past the newer failures of the other signature.
    assert asyncio.run(history(100)) == [(run_ids[i - 1], f"AssertionError: resolver returned {i} records")
                                         for i in (5, 4, 3, 2, 1)]
    # Fewer wanted than texts (a share of one each, then cut), and more than one failure per run.
    assert [run for run, _ in asyncio.run(history(2))] == [run_ids[4], run_ids[3]]
    assert [run for run, _ in asyncio.run(history(3))] == [run_ids[4], run_ids[3], run_ids[2]]


def test_newest_failures_of_a_text_failing_several_times_a_run_are_read_past_the_ties(tmp_path):
    settings = make_settings(tmp_path)
    params = [_failing(f"tests/test_api.py::test_health[{i}]", TRACEBACK) for i in range(3)]
    _ingest_runs(settings, [("web-1", f"2026112807000000000{i}", params) for i in range(1, 4)])
    [text_id] = [r["id"] for r in rows(settings, "SELECT id FROM failure_texts")]
    stored = [(r["run_id"], r["id"]) for r in rows(settings, "SELECT run_id, id FROM results ORDER BY run_id DESC, id")]

    async def newest(wanted: int) -> list[tuple[int, int]]:
        async with Database(settings.db_path) as db:
            return await failures.newest_failures(db, [text_id], wanted)

    # One text, three failures a run (newest run first, a run's in document order): a share of
    # one, then two, then four, each read going on right after the last row, inside a run too.
    for wanted in (1, 2, 4, 9, 20):
        assert asyncio.run(newest(wanted)) == stored[:wanted], wanted


def test_newest_failures_read_a_common_text_further_and_stop_as_soon_as_none_can_be_newer(tmp_path, monkeypatch):
    settings = make_settings(tmp_path)
    common = _failing("tests/test_api.py::test_health", TRACEBACK)
    rare = _failing("tests/test_db.py::test_db", TIMEOUT, "timed out")
    _ingest_runs(settings, [("web-1", f"202611280700000000{i:02d}", [common] + ([rare] if i <= 2 else []))
                            for i in range(1, 9)])
    run_ids = [r["id"] for r in rows(settings, "SELECT id FROM runs ORDER BY jid")]
    text_ids = [r["id"] for r in rows(settings, "SELECT id FROM failure_texts")]
    rounds = []
    per_text = failures._per_text

    async def counted(db, cuts, share):
        rounds.append((len(cuts), share))
        return await per_text(db, cuts, share)

    monkeypatch.setattr(failures, "_per_text", counted)

    async def newest(wanted: int) -> list[int]:
        async with Database(settings.db_path) as db:
            return [run_id for run_id, _ in await failures.newest_failures(db, text_ids, wanted)]

    # A share of two each (8, 7 and 2, 1): the rare text cannot hold a newer one, the common may.
    assert asyncio.run(newest(4)) == run_ids[::-1][:4]
    assert rounds == [(2, 2), (1, 4)]


def test_prune_keeps_a_text_other_results_still_point_at(tmp_path):
    settings = make_settings(tmp_path)
    health = _failing("tests/test_api.py::test_health", TRACEBACK)
    drop_doc(settings.inbox, make_doc("web-1", "20261128070000000001", [health, _failing("tests/test_db.py::test_db",
                                      TIMEOUT, "timed out")], started_at="2020-01-01T00:00:00Z"))
    drop_doc(settings.inbox, make_doc("web-1", "20261128070000000002", [health], started_at="2099-01-01T00:00:00Z"))
    assert ingest(settings).ingested == 2
    assert prune_store(settings) == 1
    assert [t["longrepr"] for t in rows(settings, "SELECT longrepr FROM failure_texts")] == [TRACEBACK]
    assert asyncio.run(_search(settings, "talking")) == (set(), [])
    assert len(asyncio.run(_search(settings, "503"))[1]) == 1


# -- migration 10 on a store at version 9 ---------------------------------------------------------


def _connect_empty(tmp_path):
    if on_postgres():
        url = server().create_database(f"v9_{abs(hash(str(tmp_path))) % 10**9}")
        return connect_postgres(url), url
    path = tmp_path / "v9.sqlite"
    return sqlite3.connect(path, isolation_level=None), path


def _migrate_to_9(conn) -> None:
    dialect = POSTGRES if on_postgres() else SQLITE
    if dialect == POSTGRES:
        run_transaction(conn, _bootstrap)
    for target, sql in MIGRATIONS:
        if target <= 9:
            run_transaction(conn, _apply, target, statements_for(sql, dialect))
    assert current_version(conn) == 9


_V9_FAILURES = [  # nodeid, outcome, message, longrepr
    ("tests/test_api.py::test_health", "failed", "assert 503 == 200", TRACEBACK),
    ("tests/test_api.py::test_health", "failed", "assert 503 == 200", TRACEBACK),
    ("tests/test_db.py::test_db", "error", "timed out", TIMEOUT),
    ("tests/test_db.py::test_db", "error", None, "déjà vu: a NUL-free, non-ASCII traceback"),
]


def _fill_version_9(conn) -> None:
    """Failures as the ingester of version 9 stored them: a signature, no text."""
    minion = conn.execute("INSERT INTO minions (name, first_seen, last_seen) VALUES ('old-1', 't', 't') "
                          "RETURNING id").fetchone()[0]
    tests = {}
    for nodeid, *_rest in _V9_FAILURES:
        if nodeid not in tests:
            tests[nodeid] = conn.execute("INSERT INTO tests (nodeid, file) VALUES (?, ?) RETURNING id",
                                         (nodeid, nodeid.split("::")[0])).fetchone()[0]
    started = "2026-11-01T00:00:00.000000Z"
    if on_postgres():
        conn.execute("SELECT distmon_results_partition('2026-11')")
    for index, (nodeid, outcome, message, longrepr) in enumerate(_V9_FAILURES):
        run = conn.execute(
            "INSERT INTO runs (minion_id, jid, fun, status, started_at, ingested_at) VALUES (?, ?, 'pytestrun.run', "
            "'failed', ?, 't') RETURNING id", (minion, f"2026110100000000000{index}", started)).fetchone()[0]
        signature = failure_signature(nodeid, message, longrepr, nodeid.split("::")[0]).signature
        columns = "run_id, test_id, phase, outcome, message, longrepr, signature" + (", started_at" if on_postgres()
                                                                                     else "")
        values = [run, tests[nodeid], "call", outcome, message, longrepr, signature] + ([started] if on_postgres()
                                                                                       else [])
        conn.execute(f"INSERT INTO results ({columns}) VALUES ({', '.join('?' * len(values))})", values)  # noqa: S608
    conn.execute("INSERT INTO results (run_id, test_id, phase, outcome" + (", started_at" if on_postgres() else "")
                  + ") SELECT max(id), 1, 'call', 'passed'" + (", ?" if on_postgres() else "") + " FROM runs",
                  [started] if on_postgres() else [])
    if not on_postgres():  # version 9's search index of every failed result
        conn.execute("INSERT INTO failure_text (rowid, message, longrepr) SELECT id, message, longrepr FROM results "
                     "WHERE signature IS NOT NULL")


def test_migration_10_gives_the_failures_of_a_version_9_store_their_texts(tmp_path):
    conn, location = _connect_empty(tmp_path)
    try:
        _migrate_to_9(conn)
        run_transaction(conn, _fill_version_9)
        assert migrate(conn) == MIGRATIONS[-1][0]
        texts = conn.execute("SELECT id, digest, signature, message, longrepr FROM failure_texts ORDER BY id").fetchall()
        stored = conn.execute("SELECT text_id FROM results ORDER BY id").fetchall()
    finally:
        conn.close()
    # One text per distinct failure, in the order of their first failure; the SQL digest is Python's.
    assert [(t[3], t[4]) for t in texts] == [(m, lr) for _n, _o, m, lr in (_V9_FAILURES[0], *_V9_FAILURES[2:])]
    assert [bytes(t[1]) for t in texts] == [text_digest(t[2], t[3], t[4]) for t in texts]
    assert [row[0] for row in stored] == [texts[0][0], texts[0][0], texts[1][0], texts[2][0], None]
    settings = make_settings(tmp_path, db_path=location)
    assert asyncio.run(_search(settings, "response status"))[0] == {texts[0][2]}
    assert asyncio.run(_search(settings, "vu"))[0] == {texts[2][2]}
    # The ingester finds a migrated text by its digest: no second row for the same failure.
    _ingest_runs(settings, [("web-9", "20261128070000000009", [
        _failing("tests/test_api.py::test_health", TRACEBACK)])])
    assert len(rows(settings, "SELECT id FROM failure_texts")) == 3
    assert rows(settings, "SELECT x.text_id FROM results x JOIN runs r ON r.id = x.run_id "
                          "JOIN minions m ON m.id = r.minion_id WHERE m.name = 'web-9'") == [{"text_id": texts[0][0]}]


@pytest.mark.sqlite_only  # SQLite's search index is a table of its own
def test_migration_10_replaces_the_search_index_of_every_result_by_that_of_the_texts(tmp_path):
    conn, _location = _connect_empty(tmp_path)
    try:
        _migrate_to_9(conn)
        run_transaction(conn, _fill_version_9)
        migrate(conn)
        names = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        assert "failure_text" not in names and "failure_text_search" in names
        assert conn.execute("SELECT count(*) FROM failure_text_search WHERE failure_text_search MATCH 'talking'"
                            ).fetchone()[0] == 1
    finally:
        conn.close()
