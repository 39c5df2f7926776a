"""The ingester against a real inbox directory and a real SQLite file.

Valid files, duplicates, every kind of bad input of issue 8 (each quarantined with its reason
while ingest goes on), symlinks, JUnit XML, job manifests, out-of-order arrival, a file the
database rejects inside a batch, a SIGKILL-like crash between commit and file move, and the
long-running watcher.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from dashboard.config import Settings
from dashboard.db import Database, connect_sync
from dashboard.ingest import BATCH_FILES, CRASH_AFTER_COMMIT_ENV, IngestReport, run_ingester, store
from dashboard.ingest import worker as ingest_worker
from tests.db_backend import on_postgres
from tests.functional.ingest_support import (
    counters,
    drop,
    drop_doc,
    ingest,
    make_doc,
    make_settings,
    quarantined,
    rows,
    test_entry,
)

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def settings(tmp_path):
    return make_settings(tmp_path)


# -- valid files ------------------------------------------------------------------------------


def test_valid_file_becomes_a_run_with_results_and_summaries(settings):
    doc = make_doc(
        "web-1",
        "20261128070000000001",
        [
            test_entry("tests/test_a.py::test_one"),
            test_entry("tests/test_a.py::test_two", "failed", stdout="printed\n"),
            test_entry("tests/test_a.py::test_one", "error", "teardown"),
            test_entry("tests/test_b.py::test_skip", "skipped", "setup"),
        ],
        grains={"os": "Debian", "num_cpus": 2},
    )
    path = drop_doc(settings.inbox, doc)

    report = ingest(settings)

    assert report == IngestReport(ingested=1, duplicates=0, quarantined=0, results=4)
    assert not path.exists()
    assert (settings.archive / "web-1" / "20261128070000000001.json").read_bytes() == json.dumps(doc).encode()
    [run] = rows(settings, "SELECT * FROM runs")
    assert run["jid"] == "20261128070000000001"
    assert (run["status"], run["passed"], run["failed"], run["errors"], run["skipped"]) == ("failed", 1, 1, 1, 1)
    assert run["started_at"] == "2026-11-28T07:00:00.000000Z"
    assert run["source"] == "distmon" and run["signed"] == 0
    assert json.loads(run["grains"]) == {"os": "Debian", "num_cpus": 2}
    results = rows(
        settings,
        "SELECT t.nodeid, r.phase, r.outcome, r.stdout FROM results r JOIN tests t ON t.id = r.test_id ORDER BY r.id",
    )
    assert [(r["nodeid"], r["phase"], r["outcome"]) for r in results] == [
        ("tests/test_a.py::test_one", "call", "passed"),
        ("tests/test_a.py::test_two", "call", "failed"),
        ("tests/test_a.py::test_one", "teardown", "error"),
        ("tests/test_b.py::test_skip", "setup", "skipped"),
    ]
    assert results[1]["stdout"] == "printed\n"
    [minion] = rows(settings, "SELECT * FROM minions")
    assert (minion["name"], minion["runs"], minion["last_run_id"]) == ("web-1", 1, run["id"])
    assert json.loads(minion["grains"]) == {"os": "Debian", "num_cpus": 2}
    status = {
        r["nodeid"]: r
        for r in rows(settings, "SELECT t.nodeid, s.* FROM test_status s JOIN tests t ON t.id = s.test_id")
    }
    # passed call + teardown error = one failing outcome of that test in this run.
    assert status["tests/test_a.py::test_one"]["last_outcome"] == "error"
    assert status["tests/test_a.py::test_one"]["fails"] == 1
    assert status["tests/test_b.py::test_skip"]["last_outcome"] == "skipped"
    assert counters(settings) == {"runs": 1, "results": 4, "tests": 3}


def test_archive_mode_delete_removes_the_file(tmp_path):
    settings = make_settings(tmp_path, archive_mode="delete")
    path = drop_doc(settings.inbox, make_doc())
    assert ingest(settings).ingested == 1
    assert not path.exists()
    assert not settings.archive.exists()


def test_an_archived_file_of_the_same_name_is_never_overwritten(settings):
    # Not a duplicate run (the database does not know it), but its name is taken in the archive:
    # e.g. a store restored from an older backup. Both files must survive.
    older = settings.archive / "web-1" / "20261128070000000001.json"
    older.parent.mkdir(parents=True)
    older.write_text("the earlier file")
    doc = make_doc()
    path = drop_doc(settings.inbox, doc)

    assert ingest(settings).ingested == 1

    assert not path.exists()
    assert older.read_text() == "the earlier file"
    [kept] = [p for p in older.parent.iterdir() if p != older]
    assert kept.name.startswith("20261128070000000001.json.") and kept.read_bytes() == json.dumps(doc).encode()


def test_a_pass_of_many_batches_leaves_no_descriptor_open(settings):
    # Inbox and archive directories are held by descriptor during a pass (several batches, the
    # validation worker): all of them are closed when it ends.
    def drop_many(first: int) -> None:
        for index in range(first, first + 240):
            drop_doc(settings.inbox, make_doc(f"web-{index % 6}", f"2026112807{index:010d}"))

    drop_many(0)
    assert ingest(settings).ingested == 240  # the worker (and its pipes) started: part of the baseline
    before = sorted(os.listdir("/proc/self/fd"))
    drop_many(1000)
    assert ingest(settings).ingested == 240
    assert sorted(os.listdir("/proc/self/fd")) == before
    assert len(list((settings.archive / "web-0").iterdir())) == 80


def test_temporary_names_are_left_alone(settings):
    upload = settings.inbox / "web-1" / ".20261128070000000001.json.x9f.part"
    upload.parent.mkdir(parents=True)
    upload.write_text('{"half": ')
    assert not ingest(settings)
    assert upload.exists()
    assert quarantined(settings) == {}


def test_abandoned_uploads_are_quarantined_once_stale(tmp_path):
    settings = make_settings(tmp_path, stale_upload_age=600)
    old = os.stat(settings.inbox).st_mtime - 3600
    entries = {
        "web-1/.20261128070000000001.json.x9f.part": "crashed upload",
        "web-1/..json": "a name the scan never takes",
        "web-1/20261128070000000002.json.part": "a .part without the dot",
        ".stray": "dot-named at the inbox's top",
    }
    for relative, text in entries.items():
        path = settings.inbox / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        os.utime(path, (old, old))
    fresh = settings.inbox / "web-1" / ".20261128070000000003.json.b7c.part"
    fresh.write_text('{"still": ')

    assert ingest(settings).quarantined == 4

    reasons = quarantined(settings)
    assert set(reasons) == {"web-1/20261128070000000001.json.x9f.part", "web-1/json",
                            "web-1/20261128070000000002.json.part", "_inbox/stray"}
    assert all("an abandoned upload" in reason and "DISTMON_STALE_UPLOAD_AGE (600 s)" in reason
               for reason in reasons.values())
    assert fresh.exists() and sorted(os.listdir(settings.inbox)) == ["web-1"]
    assert os.listdir(settings.inbox / "web-1") == [fresh.name]


def test_duplicates_are_archived_never_counted_twice_and_the_first_wins(settings):
    first = make_doc(jid="20261128070000000009")
    drop_doc(settings.inbox, first)
    assert ingest(settings).ingested == 1
    # The same (minion, jid) again, once identical (a returner retry) and once altered.
    drop_doc(settings.inbox, first)
    assert ingest(settings) == IngestReport(duplicates=1)
    altered = make_doc(jid="20261128070000000009", tests=[test_entry("tests/test_z.py::test_new")])
    drop_doc(settings.inbox, altered)
    assert ingest(settings) == IngestReport(duplicates=1)

    assert rows(settings, "SELECT count(*) AS n FROM runs")[0]["n"] == 1
    assert rows(settings, "SELECT count(*) AS n FROM tests WHERE nodeid = 'tests/test_z.py::test_new'")[0]["n"] == 0
    assert counters(settings)["runs"] == 1
    assert rows(settings, "SELECT runs FROM minions")[0]["runs"] == 1
    archived = sorted(p.name for p in (settings.archive / "web-1").iterdir())
    assert archived[0] == "20261128070000000009.json" and len(archived) == 3
    assert all(name.startswith("20261128070000000009.json.dup-") for name in archived[1:])


def test_many_files_many_minions_in_batches(settings):
    for index in range(230):  # more than two batches
        minion = f"m-{index % 7}"
        drop_doc(settings.inbox, make_doc(minion, f"2026112807{index:010d}", started_at=f"2026-11-28T07:{index // 60:02d}:{index % 60:02d}Z"))
    report = ingest(settings)
    assert (report.ingested, report.results, report.quarantined) == (230, 460, 0)
    assert counters(settings) == {"runs": 230, "results": 460, "tests": 2}
    minions = rows(
        settings,
        "SELECT m.runs, m.last_run_id, (SELECT id FROM runs r WHERE r.minion_id = m.id "
        "ORDER BY started_at DESC, id DESC LIMIT 1) AS newest FROM minions m",
    )
    assert sum(m["runs"] for m in minions) == 230
    assert all(m["last_run_id"] == m["newest"] for m in minions)


# Files enough for a pass of several batches (validated in the worker).
MANY = BATCH_FILES + 50


def _drop_many(settings, count: int, prefix: str = "20261128") -> None:
    for index in range(count):
        drop_doc(settings.inbox, make_doc(f"m-{index % 7}", f"{prefix}{index:012d}", started_at=f"2026-11-28T07:{index // 60 % 60:02d}:{index % 60:02d}Z"))


def test_big_passes_validate_in_a_worker_process_that_is_replaced_when_it_dies(settings, monkeypatch):
    assert settings.ingest_worker  # the default
    _drop_many(settings, MANY)
    assert ingest(settings).ingested == MANY
    worker = ingest_worker._worker
    assert worker is not None and worker.process.poll() is None
    # The worker dies (OOM killer, a crash): the next big pass validates in-process and a new worker starts.
    worker.process.kill()
    worker.process.wait()
    _drop_many(settings, MANY, prefix="20261129")
    report = ingest(settings)
    assert (report.ingested, report.quarantined) == (MANY, 0)
    assert counters(settings)["runs"] == 2 * MANY
    replacement = ingest_worker._worker
    assert replacement is not None and replacement is not worker

    # A worker that fails mid-request: that batch is validated here, the worker is discarded.
    def broken(*_args):
        raise EOFError("worker went away")

    monkeypatch.setattr(replacement, "validate", broken)
    _drop_many(settings, MANY, prefix="20261130")
    report = ingest(settings)
    assert (report.ingested, report.quarantined) == (MANY, 0)
    assert ingest_worker._worker is not replacement
    assert replacement.process.poll() is not None  # killed, not leaked


@pytest.mark.skipif(on_postgres(), reason="SQLite skips its foreign-key checks for the ingester's writes")
def test_a_big_pass_leaves_every_reference_valid(settings):
    # The ingester writes without SQLite's foreign-key checks (its ids are its own): a pass of
    # several batches with failures, duplicates and a run arriving after a newer one must leave
    # nothing dangling, and the checks on for every other write.
    _drop_many(settings, MANY)
    for index in range(3):
        drop_doc(settings.inbox, make_doc("m-1", f"2026112808{index:010d}", started_at="2026-11-28T06:00:00Z"))
    assert ingest(settings).ingested == MANY + 3
    _drop_many(settings, 5)  # already stored: duplicates
    assert ingest(settings).duplicates == 5
    conn = connect_sync(settings.db_path)
    try:
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
        assert conn.execute("SELECT count(*) FROM results WHERE signature IS NOT NULL").fetchone()[0] >= 3
    finally:
        conn.close()


def test_bad_files_found_by_the_worker_are_quarantined_by_this_process(settings):
    _drop_many(settings, MANY)
    drop(settings.inbox, "m-0", "20261128999999999999.json", b"{not json")
    report = ingest(settings)
    assert (report.ingested, report.quarantined) == (MANY, 1)
    assert "JSON" in quarantined(settings)["m-0/20261128999999999999.json"]


def test_without_the_worker_big_passes_validate_in_process(tmp_path, monkeypatch):
    settings = make_settings(tmp_path, ingest_worker=False)
    # Any use of the worker fails the test: with ingest_worker off, none is started or asked.
    monkeypatch.setattr(ingest_worker, "_start_worker", lambda: pytest.fail("the worker was started"))
    monkeypatch.setattr(ingest_worker._ValidationWorker, "validate", lambda *_: pytest.fail("the worker was asked"))
    _drop_many(settings, MANY)
    assert ingest(settings).ingested == MANY


# What both ways of a big pass must store alike (ingested_at and created_at are the clock's).
_STORED_QUERIES = (
    "SELECT * FROM results ORDER BY id",
    "SELECT id, minion_id, jid, started_at, status, passed, failed, errors FROM runs ORDER BY id",
    "SELECT * FROM test_status ORDER BY minion_id, test_id",
    "SELECT * FROM test_totals ORDER BY test_id",
    "SELECT * FROM file_status ORDER BY minion_id, file",
    "SELECT * FROM signatures ORDER BY signature",
    "SELECT * FROM signature_minions ORDER BY signature, minion_id",
    "SELECT * FROM failure_texts ORDER BY id",
    "SELECT rowid, message, longrepr FROM failure_text_search ORDER BY rowid",
    "SELECT kind, jid, minion, nodeid, run_id, detail, signature FROM outbox_events ORDER BY id",
    "SELECT name, value FROM counters ORDER BY name",
)


def _stored(settings) -> list[list[tuple]]:
    conn = connect_sync(settings.db_path)
    try:
        return [[tuple(round(v, 6) if isinstance(v, float) else v for v in row) for row in conn.execute(sql)]
                for sql in _STORED_QUERIES]
    finally:
        conn.close()


@pytest.mark.skipif(on_postgres(), reason="PostgreSQL COPYs the rows: nothing is staged")
def test_results_staged_by_the_worker_are_stored_as_in_process_validation_stores_them(tmp_path, monkeypatch):
    """On SQLite the worker binds a big pass's result rows into a staging database and the writer
    inserts them with one INSERT ... SELECT: the same rows, ids and summaries as without the worker,
    with runs out of order, failures (signatures, search rows, webhook events), a file the database
    rejects (its batch retried file by file) and a pass of duplicates."""
    rng = random.Random(5)
    nodeids = [f"tests/test_{f}.py::test_{i}" for f in ("a", "b") for i in range(6)]
    docs = []
    for index in range(230):
        tests = [test_entry(n, rng.choice(["passed", "passed", "failed", "skipped", "error"]),
                            duration=rng.choice([0.5, 0.25]), stdout=rng.choice([None, f"out {index}"]),
                            message=rng.choice([None, "assert 1 == 2", f"boom {index % 3}"]))
                 for n in rng.sample(nodeids, rng.randrange(1, len(nodeids)))]
        tests.append(test_entry(nodeids[0], "error", "teardown"))  # a second entry of one test
        minute = rng.randrange(0, 600)  # out of order within and across batches
        docs.append(make_doc(f"m-{index % 9}", f"2026112807{index:010d}", tests,
                             started_at=f"2026-11-28T{minute // 60 + 7:02d}:{minute % 60:02d}:{index % 60:02d}Z"))
    staged = []
    insert_staged = store.insert_staged_results
    monkeypatch.setattr(store, "insert_staged_results", lambda *args: (staged.append(len(args[2])), insert_staged(*args)))
    stored = {}
    for use_worker in (True, False):
        settings = make_settings(tmp_path / f"worker-{use_worker}", ingest_worker=use_worker)
        conn = connect_sync(settings.db_path)
        conn.execute("CREATE TRIGGER reject_one BEFORE INSERT ON runs WHEN NEW.jid = '20261128070000000150' "
                     "BEGIN SELECT RAISE(ABORT, 'refused by a test trigger'); END")
        conn.close()
        for doc in docs:
            drop_doc(settings.inbox, doc)
        report = ingest(settings)
        accepted = [doc for doc in docs if doc["jid"] != "20261128070000000150"]
        assert (report.ingested, report.quarantined) == (len(accepted), 1)
        assert report.results == sum(len(doc["result"]["tests"]) for doc in accepted)
        for doc in docs[:120]:
            drop_doc(settings.inbox, doc)
        assert (ingest(settings).duplicates, counters(settings)["runs"]) == (120, len(accepted))
        stored[use_worker] = _stored(settings)
        assert stored[use_worker][0] and stored[use_worker][7] and stored[use_worker][8]
    assert sum(staged) == len(docs) - 1  # every stored run's rows went through the staging database
    assert stored[True] == stored[False]


def test_other_salt_functions_become_runs_without_tests(settings):
    doc = make_doc(jid="20261128070000000002", fun="test.ping", result=True, success=True)
    drop_doc(settings.inbox, doc)
    assert ingest(settings).ingested == 1
    [run] = rows(settings, "SELECT fun, status, passed FROM runs")
    assert run == {"fun": "test.ping", "status": "passed", "passed": 0}


# -- summaries --------------------------------------------------------------------------------


def _history(settings, outcomes: list[str], *, order: list[int] | None = None) -> dict:
    """Ingest one run per outcome of one test (in ``order`` of arrival); its test_status row."""
    for index in order if order is not None else range(len(outcomes)):
        doc = make_doc(
            "web-1",
            f"202611280700000000{index:02d}",
            [test_entry("tests/test_f.py::test_flaky", outcomes[index])],
            started_at=f"2026-11-28T07:{index:02d}:00Z",
        )
        drop_doc(settings.inbox, doc)
        ingest(settings)  # one pass per file: arrival order matters here
    [row] = rows(settings, "SELECT * FROM test_status")
    return row


def test_test_status_counts_flips_and_streaks(settings):
    row = _history(settings, ["passed", "failed", "skipped", "failed", "passed", "failed"])
    assert (row["runs"], row["fails"], row["flips"]) == (6, 3, 3)
    assert row["last_outcome"] == "failed"
    assert row["first_fail_at"] == "2026-11-28T07:05:00.000000Z"
    assert row["last_pass_at"] == "2026-11-28T07:04:00.000000Z"
    assert row["total_duration"] == pytest.approx(6 * 0.25)


def test_an_older_run_arriving_late_does_not_overwrite_the_latest(settings):
    outcomes = ["passed", "failed", "failed", "passed"]
    # Arrival: 0, 1, 3, then the older 2 (e.g. a minion that spooled it while offline).
    late = _history(settings, outcomes, order=[0, 1, 3, 2])
    in_order = make_settings(Path(settings.inbox).parent / "in-order")
    expected = _history(in_order, outcomes)
    for column in ("last_outcome", "last_started_at", "runs", "fails", "flips", "first_fail_at", "last_pass_at"):
        assert late[column] == expected[column], column
    assert late["last_outcome"] == "passed" and late["last_started_at"] == "2026-11-28T07:03:00.000000Z"
    [minion] = rows(settings, "SELECT m.last_run_id, r.started_at FROM minions m JOIN runs r ON r.id = m.last_run_id")
    assert minion["started_at"] == "2026-11-28T07:03:00.000000Z"


def test_a_late_run_and_a_newer_one_in_one_pass_count_each_run_once(settings):
    outcomes = ["passed", "failed", "passed", "failed", "failed", "passed"]

    def arrive(settings, groups: list[list[int]]) -> dict:
        for group in groups:  # one ingest pass (one transaction) per group
            for index in group:
                drop_doc(settings.inbox, make_doc(
                    "web-1", f"202611280700000000{index:02d}", [test_entry("tests/test_f.py::test_flaky", outcomes[index])],
                    started_at=f"2026-11-28T07:{index:02d}:00Z"))
            ingest(settings)
        [row] = rows(settings, "SELECT * FROM test_status")
        return row

    # 1 and 2 arrive after 3 in one transaction with 4 and 5: 1 is rebuilt from the history up to
    # itself (the batch's later runs are stored by then, not yet folded), then 2, 4, 5 fold on top.
    late = arrive(settings, [[0, 3], [1, 2, 4, 5]])
    expected = arrive(make_settings(Path(settings.inbox).parent / "in-order"), [[index] for index in range(6)])
    for column in ("last_outcome", "last_started_at", "runs", "fails", "flips", "first_fail_at", "last_pass_at",
                   "total_duration"):
        assert late[column] == expected[column], column
    assert late["runs"] == 6


def test_statuses_updated_pass_after_pass_keep_their_indexes_and_match_one_pass(settings):
    # Statuses whose indexed columns (flips, failing streak, signature) stay put are updated in
    # the other columns only: the indexes must still match the table, and every row what one pass
    # over the same history gives (PostgreSQL upserts whole rows: the same answer).
    outcomes = {
        "tests/test_s.py::test_steady": ["passed"] * 6,
        "tests/test_s.py::test_broken": ["failed"] * 6,
        "tests/test_s.py::test_flaky": ["passed", "failed", "failed", "passed", "failed", "passed"],
        "tests/test_s.py::test_moved": ["failed", "failed", "error", "error", "failed", "skipped"],
    }

    def entry(nodeid: str, outcome: str) -> dict:
        if outcome in ("failed", "error"):
            # test_moved fails at another line from its third run: its signature changes.
            line = 9 if nodeid.endswith("moved") and outcome == "error" else 7
            return test_entry(nodeid, outcome, message="AssertionError: boom",
                              longrepr=f"E   AssertionError: boom\n\ntests/test_s.py:{line}: AssertionError")
        return test_entry(nodeid, outcome)

    def arrive(settings, groups: list[list[int]]) -> list[dict]:
        for group in groups:
            for index in group:
                for minion in ("web-1", "web-2"):
                    drop_doc(settings.inbox, make_doc(
                        minion, f"202611280700000000{index:02d}",
                        [entry(nodeid, runs[index]) for nodeid, runs in outcomes.items()],
                        started_at=f"2026-11-28T07:{index:02d}:00Z"))
            ingest(settings)
        return rows(settings, "SELECT * FROM test_status ORDER BY minion_id, test_id")

    pass_by_pass = arrive(settings, [[index] for index in range(6)])
    if not on_postgres():
        assert rows(settings, "PRAGMA integrity_check") == [{"integrity_check": "ok"}]
        assert rows(settings, "SELECT COUNT(*) AS n FROM test_status INDEXED BY test_status_failing "
                              "WHERE first_fail_at IS NOT NULL") == [{"n": 4}]
    at_once = arrive(make_settings(Path(settings.inbox).parent / "at-once"), [list(range(6))])
    assert [{k: v for k, v in row.items() if k != "last_run_id"} for row in pass_by_pass] == [
        {k: v for k, v in row.items() if k != "last_run_id"} for row in at_once]
    broken = [row for row in pass_by_pass if row["fails"] == 6]
    assert len(broken) == 2 and all(row["first_fail_at"] == "2026-11-28T07:00:00.000000Z" for row in broken)


# -- bad input (issue 8) ----------------------------------------------------------------------

GOOD_JID = "20261128070000000001"


def _bad_cases() -> dict[str, tuple[str, bytes, str]]:
    """name -> (file name, content, words (a|b) one of which the .reason must contain)."""
    doc = make_doc(jid="20261128070000000100")

    def variant(jid: str, mutate) -> bytes:
        d = make_doc(jid=jid)
        mutate(d)
        return json.dumps(d).encode()

    def deep(depth: int) -> bytes:
        return b'{"format": "distmon-result/1", "grains": ' + b"[" * depth + b"]" * depth + b"}"

    return {
        "truncated": ("20261128070000000100.json", json.dumps(doc).encode()[:-40], "JSON"),
        "wrong_types": ("20261128070000000101.json", variant("20261128070000000101", lambda d: d["result"]["counts"].update(passed="1")), "schema"),
        "missing_field": ("20261128070000000102.json", variant("20261128070000000102", lambda d: d["result"].pop("tests")), "schema"),
        "missing_jid": ("20261128070000000103.json", variant("20261128070000000103", lambda d: d.pop("jid")), "schema"),
        "wrong_format": ("20261128070000000104.json", variant("20261128070000000104", lambda d: d.update(format="distmon-result/9")), "format"),
        "not_an_object": ("20261128070000000105.json", b"[1, 2, 3]", "object"),
        "nul_bytes": ("20261128070000000106.json", b'{"format": "distmon\x00-result/1"}', "JSON"),
        "invalid_utf8": ("20261128070000000107.json", b'{"format": "\xff\xfe distmon"}', "UTF-8"),
        "deep_nesting": ("20261128070000000108.json", deep(200_000), "nested"),
        "huge_nodeid": ("20261128070000000109.json", variant("20261128070000000109", lambda d: d["result"]["tests"][0].update(nodeid="x" * 1_000_000)), "schema"),
        "nan": ("20261128070000000110.json", json.dumps(doc).replace('"duration": 1.5', '"duration": NaN').encode(), "JSON|finite"),
        "huge_int": ("20261128070000000111.json", variant("20261128070000000111", lambda d: d.update(retcode=10**30)), "schema"),
        "bad_timestamp": ("20261128070000000112.json", variant("20261128070000000112", lambda d: d.update(returned_at="yesterday")), "schema"),
        "bad_outcome": ("20261128070000000113.json", variant("20261128070000000113", lambda d: d["result"]["tests"][0].update(outcome="maybe")), "schema"),
        "jid_not_file_name": ("20261128070000000114.json", variant("20261128070000000999", lambda d: None), "file name"),
        "hostile_jid": ("20261128070000000115.json", variant("../../etc/passwd", lambda d: None), "identifier"),
        "foreign_minion": ("20261128070000000116.json", variant("20261128070000000116", lambda d: d.update(minion_id="web-2")), "differs"),
        "traversal_minion": ("20261128070000000117.json", variant("20261128070000000117", lambda d: d.update(minion_id="../../etc/x")), "identifier"),
        "control_chars_in_nodeid": ("20261128070000000118.json", variant("20261128070000000118", lambda d: d["result"]["tests"][0].update(nodeid="a\nb")), "schema"),
        "lone_surrogate": ("20261128070000000119.json", json.dumps(doc).replace("test_one", "test_\\ud800").encode(), "JSON|schema"),
        "odd_name": ("results.txt", b"{}", "name"),
        "empty": ("20261128070000000120.json", b"", "JSON"),
    }


def test_every_kind_of_bad_input_is_quarantined_with_a_reason_and_ingest_goes_on(settings):
    cases = _bad_cases()
    for _, (name, content, _) in cases.items():
        drop(settings.inbox, "web-1", name, content)
    good = drop_doc(settings.inbox, make_doc(jid=GOOD_JID))

    report = ingest(settings)

    assert (report.ingested, report.quarantined) == (1, len(cases))
    assert not good.exists()
    reasons = quarantined(settings)
    for case, (name, content, word) in cases.items():
        key = f"web-1/{name}"
        assert key in reasons, case
        assert any(w.lower() in reasons[key].lower() for w in word.split("|")), (case, reasons[key])
        assert "when: 2" in reasons[key]
        assert (settings.quarantine / key).read_bytes() == content, case
    assert list((settings.inbox / "web-1").iterdir()) == []
    assert rows(settings, "SELECT jid FROM runs") == [{"jid": GOOD_JID}]
    # Nothing escaped the three directories (inbox, archive, quarantine) and the database's.
    root = settings.inbox.parent
    # (db/ holds the SQLite file; a PostgreSQL store has none.)
    assert sorted(p.name for p in root.iterdir() if p.name != "db") == ["archive", "inbox", "quarantine"]


def test_oversized_files_are_quarantined_unread(settings, tmp_path):
    # A sparse 100 MB file: over the default 20 MB cap, costs no disk and is never read.
    big = settings.inbox / "web-1" / "20261128070000000200.json"
    big.parent.mkdir(parents=True)
    with open(big, "wb") as handle:
        handle.truncate(100 * 1024 * 1024)
    small_cap = make_settings(tmp_path / "capped", max_file_bytes=1000)
    capped = drop_doc(small_cap.inbox, make_doc(tests=[test_entry(f"t.py::test_{i}") for i in range(50)]))

    assert ingest(settings).quarantined == 1
    assert ingest(small_cap).quarantined == 1
    assert "cap" in quarantined(settings)["web-1/20261128070000000200.json"]
    assert "cap" in quarantined(small_cap)[f"web-1/{capped.name}"]


def test_oversized_text_fields_are_capped_not_rejected(settings):
    long_repr = "E" * 200_000
    drop_doc(settings.inbox, make_doc(tests=[test_entry("t.py::test_x", "failed", longrepr=long_repr, stdout="a\x00b")]))
    assert ingest(settings).ingested == 1
    [result] = rows(settings, "SELECT longrepr, stdout FROM results")
    assert len(result["longrepr"]) < 70_000
    assert result["longrepr"].endswith("bytes]") and "truncated" in result["longrepr"]
    assert result["stdout"] == "a\ufffdb"


def test_symlinks_directories_and_special_files_are_quarantined_never_followed(settings, tmp_path):
    secret = tmp_path / "outside" / "secret.json"
    secret.parent.mkdir()
    secret.write_text(json.dumps(make_doc(jid="20261128070000000300")))
    outside_dir = tmp_path / "outside-minion"
    outside_dir.mkdir()
    (outside_dir / "20261128070000000301.json").write_text(json.dumps(make_doc("evil", "20261128070000000301")))
    minion_dir = settings.inbox / "web-1"
    minion_dir.mkdir()
    (minion_dir / "20261128070000000300.json").symlink_to(secret)
    (minion_dir / "20261128070000000302.json").mkdir()
    os.mkfifo(minion_dir / "20261128070000000303.json")
    (settings.inbox / "evil").symlink_to(outside_dir, target_is_directory=True)
    (settings.inbox / "stray.json").write_text("{}")
    (settings.inbox / "bad\x07name").mkdir()

    report = ingest(settings)

    assert report.ingested == 0 and report.quarantined == 6
    reasons = quarantined(settings)
    assert "symlink" in reasons["web-1/20261128070000000300.json"]
    assert "regular file" in reasons["web-1/20261128070000000302.json"]
    assert "regular file" in reasons["web-1/20261128070000000303.json"]
    assert "symlink" in reasons["_inbox/evil"]
    assert "directory" in reasons["_inbox/stray.json"]
    assert "invalid minion id" in reasons["_inbox/bad_name"]
    # The links themselves were moved; their targets are untouched and nothing was read through them.
    assert (settings.quarantine / "web-1" / "20261128070000000300.json").is_symlink()
    assert (settings.quarantine / "_inbox" / "evil").is_symlink()
    assert secret.exists() and (outside_dir / "20261128070000000301.json").exists()
    assert rows(settings, "SELECT count(*) AS n FROM runs")[0]["n"] == 0
    assert sorted(os.listdir(settings.inbox)) == ["web-1"]


def test_a_file_the_database_rejects_does_not_sink_its_batch(settings):
    conn = connect_sync(settings.db_path)
    if on_postgres():
        conn.execute("CREATE FUNCTION reject_one() RETURNS trigger LANGUAGE plpgsql AS "
                     "$$ BEGIN RAISE EXCEPTION 'refused by a test trigger'; END $$")
        conn.execute("CREATE TRIGGER reject_one BEFORE INSERT ON runs FOR EACH ROW "
                     "WHEN (NEW.jid = '20261128070000000402') EXECUTE FUNCTION reject_one()")
    else:
        conn.execute(
            "CREATE TRIGGER reject_one BEFORE INSERT ON runs WHEN NEW.jid = '20261128070000000402' "
            "BEGIN SELECT RAISE(ABORT, 'refused by a test trigger'); END"
        )
    conn.close()
    for index in range(5):
        drop_doc(settings.inbox, make_doc(jid=f"2026112807000000040{index}"))

    report = ingest(settings)

    assert (report.ingested, report.quarantined) == (4, 1)
    assert "refused by a test trigger" in quarantined(settings)["web-1/20261128070000000402.json"]
    assert counters(settings)["runs"] == 4
    assert rows(settings, "SELECT runs FROM minions")[0]["runs"] == 4


# -- JUnit XML and manifests ------------------------------------------------------------------

JUNIT = b"""<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" tests="3" failures="1" errors="0" skipped="1" time="1.25"
  timestamp="2026-11-28T06:59:00.000000+00:00">
 <testcase classname="ci.test_api" name="test_ok" time="0.5"/>
 <testcase classname="ci.test_api" name="test_bad" time="0.5"><failure message="boom">Traceback &amp; more</failure></testcase>
 <testcase classname="ci.test_api" name="test_later" time="0.25"><skipped message="not today"/></testcase>
</testsuite></testsuites>"""


def test_junit_xml_joins_the_history(settings):
    drop(settings.inbox, "jenkins", "build-42.xml", JUNIT)
    report = ingest(settings)
    assert (report.ingested, report.results) == (1, 3)
    [run] = rows(settings, "SELECT r.*, m.name FROM runs r JOIN minions m ON m.id = r.minion_id")
    assert (run["name"], run["jid"], run["source"], run["fun"], run["status"]) == (
        "jenkins", "build-42", "junit", "junit", "failed",
    )  # fmt: skip
    assert (run["passed"], run["failed"], run["skipped"]) == (1, 1, 1)
    assert run["started_at"] == "2026-11-28T06:59:00.000000Z"
    failing = rows(settings, "SELECT r.message, r.longrepr FROM results r WHERE outcome = 'failed'")
    assert failing == [{"message": "boom", "longrepr": "Traceback & more"}]


def test_hostile_or_unwanted_junit_is_quarantined(settings, tmp_path):
    bomb = b'<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;">]><testsuite>&b;</testsuite>'
    drop(settings.inbox, "ci", "bomb.xml", bomb)
    drop(settings.inbox, "ci", "broken.xml", b"<testsuite><testcase")
    drop(settings.inbox, "ci", "html.xml", b"<html/>")
    # The same bomb in UTF-16: no "<!DOCTYPE" in its bytes, the parser sees it all the same.
    drop(settings.inbox, "ci", "bomb16.xml", bomb.replace(b'version="1.0"', b'version="1.0" encoding="UTF-16"')
         .decode().encode("utf-16"))
    assert ingest(settings).quarantined == 4
    reasons = quarantined(settings)
    assert "DOCTYPE" in reasons["ci/bomb.xml"]
    assert "DOCTYPE/ENTITY declarations are refused" in reasons["ci/bomb16.xml"]
    assert "well-formed" in reasons["ci/broken.xml"]
    assert "root element" in reasons["ci/html.xml"]

    off = make_settings(tmp_path / "off", accept_junit=False)
    drop(off.inbox, "ci", "r1.xml", JUNIT)
    assert ingest(off).quarantined == 1
    assert "ACCEPT_JUNIT" in quarantined(off)["ci/r1.xml"]


def test_junit_with_required_signatures_only_from_listed_sources(tmp_path):
    settings = Settings.from_env({"DISTMON_JUNIT_SOURCES": "trusted-ci, other"})
    assert settings.junit_sources == {"trusted-ci", "other"}
    settings = make_settings(tmp_path, require_signature=True, junit_sources=settings.junit_sources)
    drop(settings.inbox, "trusted-ci", "r1.xml", JUNIT)
    drop(settings.inbox, "random-ci", "r1.xml", JUNIT)
    report = ingest(settings)
    assert (report.ingested, report.quarantined) == (1, 1)
    assert "REQUIRE_SIGNATURE" in quarantined(settings)["random-ci/r1.xml"]


def test_job_manifests_are_upserted(settings):
    manifest = {
        "format": "distmon-job/1",
        "jid": "20261128070000000500",
        "fun": "pytestrun.run",
        "tgt": "web-*",
        "tgt_type": "glob",
        "targeted": ["web-1", "web-2"],
        "started_at": "2026-11-28T07:00:00Z",
    }
    drop(settings.inbox, "_jobs", "20261128070000000500.json", manifest)
    drop(settings.inbox, "_jobs", "20261128070000000501.json", {**manifest, "jid": "20261128070000000501", "tgt": ["db-1"], "tgt_type": "list"})
    drop(settings.inbox, "_jobs", "20261128070000000502.json", {**manifest, "format": "distmon-job/7", "jid": "20261128070000000502"})
    report = ingest(settings)
    assert (report.manifests, report.quarantined) == (2, 1)
    drop(settings.inbox, "_jobs", "20261128070000000500.json", {**manifest, "targeted": ["web-1", "web-2", "web-3"]})
    assert ingest(settings).manifests == 1
    jobs = {row["jid"]: row for row in rows(settings, "SELECT * FROM jobs")}
    assert json.loads(jobs["20261128070000000500"]["targeted"]) == ["web-1", "web-2", "web-3"]
    assert jobs["20261128070000000500"]["started_at"] == "2026-11-28T07:00:00.000000Z"
    assert json.loads(jobs["20261128070000000501"]["tgt"]) == ["db-1"]
    assert (settings.archive / "_jobs" / "20261128070000000501.json").exists()
    assert "format" in quarantined(settings)["_jobs/20261128070000000502.json"]


# -- crash safety -----------------------------------------------------------------------------

CRASHING_INGEST = """
import sys
from pathlib import Path
from dashboard.config import Settings
from dashboard.ingest import ingest_pending_sync
root = Path(sys.argv[1])
settings = Settings(db_path=sys.argv[2], inbox=root / "inbox", archive=root / "archive",
                    quarantine=root / "quarantine")
report = ingest_pending_sync(settings)
print(report.ingested, report.duplicates, report.results)
"""


def test_a_crash_between_commit_and_move_loses_nothing_and_duplicates_nothing(settings):
    root = settings.inbox.parent
    for index in range(3):
        drop_doc(settings.inbox, make_doc(jid=f"2026112807000000060{index}"))
    env = {**os.environ, CRASH_AFTER_COMMIT_ENV: "1", "PYTHONPATH": str(REPO_ROOT)}
    crashed = subprocess.run([sys.executable, "-c", CRASHING_INGEST, str(root), str(settings.db_path)], env=env, capture_output=True, text=True, timeout=60)
    assert crashed.returncode == 99, crashed.stderr
    # Committed, but the files were never moved.
    assert rows(settings, "SELECT count(*) AS n FROM runs")[0]["n"] == 3
    assert len(list((settings.inbox / "web-1").iterdir())) == 3

    env.pop(CRASH_AFTER_COMMIT_ENV)
    restarted = subprocess.run([sys.executable, "-c", CRASHING_INGEST, str(root), str(settings.db_path)], env=env, capture_output=True, text=True, timeout=60)
    assert restarted.returncode == 0, restarted.stderr
    assert restarted.stdout.split() == ["0", "3", "0"]
    assert rows(settings, "SELECT count(*) AS n FROM runs")[0]["n"] == 3
    assert counters(settings) == {"runs": 3, "results": 6, "tests": 2}
    assert rows(settings, "SELECT runs FROM minions")[0]["runs"] == 3
    assert rows(settings, "SELECT sum(runs) AS n FROM test_status")[0]["n"] == 6
    assert list((settings.inbox / "web-1").iterdir()) == []


# -- the watcher ------------------------------------------------------------------------------


def test_run_ingester_picks_up_files_as_they_arrive_and_stops(settings):
    async def scenario() -> list[str]:
        db = Database(settings.db_path)
        await db.open()
        stop = asyncio.Event()
        task = asyncio.create_task(run_ingester(db, settings, stop))
        try:
            drop_doc(settings.inbox, make_doc(jid="20261128070000000700"))
            drop(settings.inbox, "web-2", "20261128070000000701.json", b"{broken")
            drop_doc(settings.inbox, make_doc("web-2", "20261128070000000702"))
            for _ in range(200):
                found = await db.fetchall("SELECT jid FROM runs ORDER BY jid")
                if len(found) == 2:
                    break
                await asyncio.sleep(0.05)
            stop.set()
            await asyncio.wait_for(task, timeout=10)
            return [row["jid"] for row in found]
        finally:
            stop.set()
            await db.close()

    assert asyncio.run(scenario()) == ["20261128070000000700", "20261128070000000702"]
    assert "JSON" in quarantined(settings)["web-2/20261128070000000701.json"]
