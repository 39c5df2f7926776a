"""The fleet summaries (minions' counts and lateness, file_status, test_totals, minion_grains) that
the ingester keeps by deltas equal what the SQL backfill (dashboard/migrations.py) builds from
test_status: in order, out of order, across batches, with duplicates and changing grains."""

from __future__ import annotations

import random
from datetime import datetime

from dashboard.db import connect_sync, run_transaction
from dashboard.ingest import store
from dashboard.seed import seed
from tests.functional.ingest_support import drop_doc, ingest, make_doc, make_settings, prune_store, test_entry

SUMMARY_QUERIES = {
    "minions": "SELECT name, last_status, tests, failing, passing, late_after, last_run_id FROM minions ORDER BY name",
    "file_status": "SELECT minion_id, file, tests, failing, passing, last_started_at FROM file_status "
    "ORDER BY minion_id, file",
    "test_totals": "SELECT test_id, minions, runs, fails, flips, code_flips, total_duration, avg_duration, failing, "
    "passing, last_pass_at FROM test_totals ORDER BY test_id",
    "minion_grains": "SELECT grain, value, minion_id FROM minion_grains ORDER BY grain, value, minion_id",
    "fleet_counts": "SELECT grain, value, status, failing_minion, minions, tests, failing, passing FROM fleet_counts "
    "ORDER BY grain, value, status, failing_minion",
    "job_totals": "SELECT jid, runs, passed, failed, skipped, xfailed, xpassed, errors, max_duration, started_at, fun, "
    "rerun_of FROM job_totals ORDER BY jid",
}


def summaries(conn) -> dict[str, list[tuple]]:
    # Durations summed in another order differ in the last bits: compared to the microsecond.
    return {
        name: [tuple(round(v, 6) if isinstance(v, float) else v for v in row) for row in conn.execute(sql)]
        for name, sql in SUMMARY_QUERIES.items()
    }


def rebuilt(conn) -> dict[str, list[tuple]]:
    """What the backfill makes of the same test_status, without keeping it."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        store.rebuild_fleet_summaries(conn)
        return summaries(conn)
    finally:
        conn.execute("ROLLBACK")


def assert_same_minions(kept: list[tuple], expected: list[tuple]) -> None:
    # The SQL backfill computes late_after in floating-point days to the millisecond, the ingester
    # to the microsecond: equal within a few milliseconds.
    assert [row[:5] + row[6:] for row in kept] == [row[:5] + row[6:] for row in expected]
    for mine, theirs in zip(kept, expected, strict=True):
        assert (mine[5] is None) == (theirs[5] is None), (mine, theirs)
        if mine[5]:
            gap = datetime.fromisoformat(mine[5].replace("Z", "+00:00")) - datetime.fromisoformat(
                theirs[5].replace("Z", "+00:00"))
            assert abs(gap.total_seconds()) < 0.01, (mine, theirs)


def test_ingested_summaries_equal_the_backfill_of_the_same_history(tmp_path):
    settings = make_settings(tmp_path)
    rng = random.Random(3)
    nodeids = [f"tests/test_{f}.py::test_{i}" for f in ("a", "b", "c") for i in range(4)]
    grains = {
        "web-1": {"os": "Debian", "roles": ["web", "distmon-minion"], "num_cpus": 2, "virtual": True},
        "web-2": {"os": "Debian", "roles": ["web"], "num_cpus": 4, "mem": 2.5, "nested": {"a": 1}},
        "db-1": {"os": "Ubuntu", "roles": [], "num_cpus": 2, "virtual": False},
    }
    jid = 0
    for _batch in range(4):
        for _ in range(12):
            minion = rng.choice(sorted(grains))
            jid += 1
            # Hours in random order: some runs arrive after newer ones (the out-of-order rebuild).
            hour = rng.randrange(0, 20)
            tests = [test_entry(n, rng.choice(["passed", "passed", "failed", "skipped", "error", "xfailed"]))
                     for n in rng.sample(nodeids, rng.randrange(1, len(nodeids)))]
            doc = make_doc(minion, f"2026112807{jid:010d}", tests, started_at=f"2026-11-28T{hour:02d}:00:{jid % 60:02d}Z",
                           grains=grains[minion])
            drop_doc(settings.inbox, doc)
        ingest(settings)
    # web-1's grains change with its newest run.
    drop_doc(settings.inbox, make_doc("web-1", "20261128079999999999", started_at="2026-11-28T23:00:00Z",
                                      grains={"os": "Debian", "roles": ["db"], "num_cpus": 8}))
    ingest(settings)
    conn = connect_sync(settings.db_path)
    try:
        kept = summaries(conn)
        assert kept["file_status"] and kept["test_totals"] and kept["minion_grains"]
        expected = rebuilt(conn)
        assert kept["file_status"] == expected["file_status"]
        assert kept["test_totals"] == expected["test_totals"]
        assert kept["minion_grains"] == expected["minion_grains"]
        assert kept["fleet_counts"] == expected["fleet_counts"]
        assert kept["job_totals"] == expected["job_totals"]
        assert_same_minions(kept["minions"], expected["minions"])
        assert any(row[5] for row in kept["minions"])  # enough runs to learn an interval
        # A list grain has a row per element, nested objects none; a grain change replaced the rows.
        web1 = conn.execute("SELECT id FROM minions WHERE name = 'web-1'").fetchone()[0]
        assert {tuple(r) for r in conn.execute("SELECT grain, value FROM minion_grains WHERE minion_id = ?",
                                               (web1,))} == {("os", "Debian"), ("roles", "db"), ("num_cpus", "8")}
        pairs = {tuple(r[:2]) for r in kept["minion_grains"]}
        assert {("virtual", "false"), ("mem", "2.5"), ("roles", "web")} <= pairs
        assert not [pair for pair in pairs if pair[0] == "nested"]
    finally:
        conn.close()


def test_seeded_summaries_equal_the_backfill(tmp_path):
    conn = connect_sync(tmp_path / "seeded.sqlite")
    try:
        seed(conn, runs=120, tests=30, minions=7)
        kept = summaries(conn)
        assert kept == rebuilt(conn)
        # Every minion's tests counted; roles (a list grain) gives one row per element.
        assert {row[2] for row in kept["minions"]} == {30}
        roles = {tuple(r) for r in conn.execute("SELECT value, COUNT(*) FROM minion_grains WHERE grain = 'roles' "
                                                "GROUP BY value")}
        assert roles == {("distmon-minion", 7), ("web", 3), ("db", 2), ("cache", 2)}
    finally:
        conn.close()


def test_a_duplicate_changes_no_summary(tmp_path):
    settings = make_settings(tmp_path)
    doc = make_doc("web-1", "20261128070000000001")
    drop_doc(settings.inbox, doc)
    ingest(settings)
    conn = connect_sync(settings.db_path)
    try:
        before = summaries(conn)
        drop_doc(settings.inbox, doc)
        assert ingest(settings).duplicates == 1
        assert summaries(conn) == before
        assert run_transaction(conn, lambda c: c.execute("SELECT failing FROM minions").fetchone()[0]) == 1
    finally:
        conn.close()


def test_pruning_keeps_the_summaries_equal_to_the_backfill(tmp_path):
    settings = make_settings(tmp_path)
    old, kept = [test_entry("t.py::test_old_only", "failed"), test_entry("u.py::test_always")], [
        test_entry("u.py::test_always", "failed")]
    drop_doc(settings.inbox, make_doc("web-1", "20200101000000000001", old, started_at="2020-01-01T00:00:00Z",
                                      grains={"os": "Debian", "roles": ["old"]}))
    drop_doc(settings.inbox, make_doc("web-2", "20200101000000000002", old, started_at="2020-01-02T00:00:00Z"))
    drop_doc(settings.inbox, make_doc("web-1", "29990101000000000001", kept, started_at="2999-01-01T00:00:00Z",
                                      grains={"os": "Debian", "roles": ["new"]}))
    drop_doc(settings.inbox, make_doc("web-1", "20200101000000000003", old, started_at="2020-01-03T00:00:00Z",
                                      grains={"os": "Debian", "roles": ["older"]}))
    assert ingest(settings).ingested == 4

    assert prune_store(settings) == 3
    conn = connect_sync(settings.db_path)
    try:
        kept_summaries, expected = summaries(conn), rebuilt(conn)
        assert kept_summaries["file_status"] == expected["file_status"]
        assert kept_summaries["minion_grains"] == expected["minion_grains"]
        assert kept_summaries["fleet_counts"] == expected["fleet_counts"]
        assert kept_summaries["job_totals"] == expected["job_totals"]
        assert [row[:5] for row in kept_summaries["minions"]] == [row[:5] for row in expected["minions"]]
        # test_totals: everything but the latest pass, which stays the latest pass ever seen.
        assert [row[:10] for row in kept_summaries["test_totals"]] == [row[:10] for row in expected["test_totals"]]
        assert [row[:4] for row in kept_summaries["minions"]] == [
            ("web-1", "failed", 1, 1), ("web-2", None, 0, 0)]
    finally:
        conn.close()


def test_fleet_counts_equal_their_rebuild_after_random_ingests_and_a_prune(tmp_path):
    settings = make_settings(tmp_path)
    rng = random.Random(11)
    nodeids = [f"tests/test_{f}.py::test_{i}" for f in ("a", "b") for i in range(3)]
    choices = [{"os": "Debian", "roles": ["web", "db"]}, {"os": "Ubuntu", "roles": ["web"]}, {"os": "Debian"},
               {"roles": "cache", "num_cpus": 4}, {}]
    jid = 0
    for _batch in range(5):
        for _ in range(rng.randrange(3, 10)):
            jid += 1
            minion = f"m-{rng.randrange(6)}"
            # Some runs years old (the prune takes them), some today, in random order.
            year = rng.choice([2020, 2020, 2999])
            tests = [test_entry(n, rng.choice(["passed", "failed", "skipped", "error"]))
                     for n in rng.sample(nodeids, rng.randrange(0, len(nodeids)))]
            # Jobs of several minions, and now and then the same (minion, jid) again: a duplicate.
            drop_doc(settings.inbox, make_doc(minion, f"20261128{rng.randrange(12):012d}", tests, grains=rng.choice(choices),
                                              started_at=f"{year}-01-{rng.randrange(1, 28):02d}T00:00:{jid % 60:02d}Z"))
        ingest(settings)
        conn = connect_sync(settings.db_path)
        try:
            kept, expected = summaries(conn), rebuilt(conn)
            assert kept["fleet_counts"] == expected["fleet_counts"]
            assert kept["job_totals"] == expected["job_totals"]
        finally:
            conn.close()

    assert prune_store(settings) > 0
    conn = connect_sync(settings.db_path)
    try:
        kept_summaries, expected = summaries(conn), rebuilt(conn)
        assert kept_summaries["job_totals"] == expected["job_totals"]
        kept = kept_summaries["fleet_counts"]
        assert kept == expected["fleet_counts"]
        whole_fleet = [row for row in kept if row[0] == ""]
        assert sum(row[4] for row in whole_fleet) == conn.execute("SELECT COUNT(*) FROM minions").fetchone()[0]
    finally:
        conn.close()
