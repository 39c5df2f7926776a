"""The signature summaries (migration 8: signature_totals, signature_minions, signature_tests,
signature_profiles, test_profiles and the minions' grain profiles) that the ingester, the signature
backfill and prune keep by deltas equal what rebuild_signature_summaries makes of the same
test_status: after random ingests (out of order, changing signatures and grains) and a prune."""

from __future__ import annotations

import random

from dashboard.db import connect_sync, run_transaction
from dashboard.failures import backfill_all, rebuild_signature_summaries
from dashboard.seed import seed
from tests.functional.ingest_support import drop_doc, ingest, make_doc, make_settings, prune_store, test_entry

# Profiles are compared by their grains text: a rebuild numbers them afresh.
SUMMARY_QUERIES = {
    "signature_totals": "SELECT signature, minions, pairs, code_flip_pairs FROM signature_totals ORDER BY signature",
    "signature_minions": "SELECT signature, minion_id, tests FROM signature_minions ORDER BY signature, minion_id",
    "signature_tests": "SELECT signature, test_id, minions FROM signature_tests ORDER BY signature, test_id",
    "signature_profiles": "SELECT s.signature, p.grains, s.minions FROM signature_profiles s "
    "JOIN grain_profiles p ON p.id = s.profile_id ORDER BY s.signature, p.grains",
    "test_profiles": "SELECT t.test_id, p.grains, t.passing FROM test_profiles t JOIN grain_profiles p "
    "ON p.id = t.profile_id ORDER BY t.test_id, p.grains",
    "minion_profiles": "SELECT m.name, p.grains FROM minions m LEFT JOIN grain_profiles p ON p.id = m.grain_profile "
    "ORDER BY m.name",
}


def summaries(conn) -> dict[str, list[tuple]]:
    return {name: [tuple(row) for row in conn.execute(sql)] for name, sql in SUMMARY_QUERIES.items()}


def rebuilt(conn) -> dict[str, list[tuple]]:
    """What the rebuild makes of the same test_status, without keeping it."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        rebuild_signature_summaries(conn)
        return summaries(conn)
    finally:
        conn.execute("ROLLBACK")


def _failure(rng: random.Random, nodeid: str) -> dict:
    # A few messages and failing lines per test: signatures change within a failing streak.
    line = rng.choice((12, 12, 40))
    return test_entry(nodeid, rng.choice(("failed", "failed", "error")), message=rng.choice(("boom", "timeout")),
                      longrepr=f"E   assert 1 == 2\n\n{nodeid.split('::')[0]}:{line}: AssertionError")


def test_kept_signature_summaries_equal_the_rebuild_after_ingests_and_a_prune(tmp_path):
    settings = make_settings(tmp_path)
    rng = random.Random(8)
    nodeids = [f"tests/test_{f}.py::test_{i}" for f in ("a", "b") for i in range(5)]
    grains = {
        "web-1": {"id": "web-1", "os": "Debian", "roles": ["web"], "num_cpus": 2},
        "web-2": {"id": "web-2", "os": "Debian", "roles": ["web"], "num_cpus": 2},
        "db-1": {"id": "db-1", "os": "Ubuntu", "roles": ["db"], "num_cpus": 4},
        "db-2": {"id": "db-2", "os": "Ubuntu", "roles": ["db"], "num_cpus": 4},
    }
    jid = 0
    for batch in range(5):
        for _ in range(10):
            minion = rng.choice(sorted(grains))
            jid += 1
            # Some runs are old (pruned below) and some arrive after newer ones (the out-of-order rebuild).
            day = "2020-01-01" if rng.random() < 0.25 else "2999-01-01"
            started = f"{day}T{rng.randrange(0, 20):02d}:00:{jid % 60:02d}Z"
            tests = [_failure(rng, n) if rng.random() < 0.4 else test_entry(n, rng.choice(("passed", "skipped")))
                     for n in rng.sample(nodeids, rng.randrange(1, len(nodeids)))]
            drop_doc(settings.inbox, make_doc(minion, f"2026112807{jid:010d}", tests, started_at=started,
                                              grains=grains[minion]))
        if batch == 2:
            # db-2 becomes like web-1 (another profile); web-2 gets no grains at all.
            grains["db-2"] = {"id": "db-2", "os": "Debian", "roles": ["web"], "num_cpus": 2}
            grains["web-2"] = {}
        ingest(settings)
    # A test only old runs had: prune takes its rows (passing on web-*, failing on db-*) away.
    for minion in sorted(grains):
        jid += 1
        outcome = "failed" if minion.startswith("db") else "passed"
        drop_doc(settings.inbox, make_doc(minion, f"2026112807{jid:010d}", [test_entry("tests/test_old.py::test_gone",
                 outcome)], started_at=f"2020-01-02T00:00:{jid % 60:02d}Z", grains=grains[minion]))
    ingest(settings)
    conn = connect_sync(settings.db_path)
    try:
        kept = summaries(conn)
        assert kept["signature_totals"] and kept["signature_profiles"] and kept["test_profiles"]
        assert kept == rebuilt(conn)
        # The machine's id is not part of its profile: web-1 and db-2 share one now.
        profiles = dict(kept["minion_profiles"])
        assert profiles["web-1"] == profiles["db-2"] and '"id"' not in profiles["web-1"]
        assert any(row[2] > 1 for row in kept["signature_totals"])  # several minions fail with one signature
    finally:
        conn.close()

    assert prune_store(settings) > 0
    conn = connect_sync(settings.db_path)
    try:
        assert summaries(conn) == rebuilt(conn)
    finally:
        conn.close()


def test_backfilled_seed_summaries_equal_the_rebuild(tmp_path):
    conn = connect_sync(tmp_path / "seeded.sqlite")
    try:
        seed(conn, runs=280, tests=30, minions=14)
        assert conn.execute("SELECT COUNT(*) FROM signature_totals").fetchone()[0] == 0  # before the backfill
        backfill_all(conn, chunk_ids=500)
        kept = summaries(conn)
        assert kept["signature_totals"] and kept["signature_tests"]
        assert kept == rebuilt(conn)
        # Seeded grains repeat every 12 minions but for their id: 12 profiles for 14 minions.
        assert run_transaction(conn, lambda c: c.execute("SELECT COUNT(*) FROM grain_profiles").fetchone()[0]) == 12
    finally:
        conn.close()
