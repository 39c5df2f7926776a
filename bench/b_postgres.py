"""ingest_rate_pg and two_ingesters_pg: the PostgreSQL backend, on a server this bench starts itself.

The server: tools/postgres.py under a temporary directory, a free loopback port, PostgreSQL's
default (durable) settings, stopped and removed at the end.

- ``ingest_rate_pg``: the documents of bench/b_ingest.py (``FILES`` x ``TESTS`` results) ingested
  by ``dashboard.ingest.ingest_pending`` into a fresh, migrated PostgreSQL database (results by
  COPY into the monthly partitions). Floor: a bare load of the same rows into a fresh database of
  the same schema in one transaction: minions, tests and runs by ``executemany``, results by one
  ``COPY``. Alternating rounds; the median-ratio pair is reported. Target: >= 0.5x.
- ``two_ingesters_pg``: two storage hosts, each with its own inbox (half the minions each, and
  one file in ten delivered to BOTH, as after a fail-over), ingested at the same moment by two
  ``python -m dashboard ingest --once`` processes into one database. Value: runs stored, after
  checking that no (minion, jid) is stored twice and that the summaries agree with the rows
  (counters, minions.runs, test_status); floor: the distinct runs sent. Target: exactly 1x.
  ``two_ingesters_pg_rate`` (informational): results/s of both together.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.b_ingest import (
    FILES,
    MINIONS,
    TESTS,
    bare_rows,
    make_documents,
    time_bare_load,
    time_ingest,
    write_inbox,
)
from bench.common import REPO, Figure, median_pair, say

ROUNDS = 5
TEMPLATE = "bench_template"


def _fresh(server, name: str) -> str:
    server.drop_database(name)
    return server.create_database(name, template=TEMPLATE)


def time_ingest_pg(server, work: Path, docs: list[dict], name: str) -> float:
    """Seconds for one ingest_pending pass over ``docs`` into a fresh PostgreSQL database."""
    return time_ingest(work, docs, _fresh(server, name))


def time_bare_copy(server, rows: tuple[list, list, list, list], started_at: dict[int, str], name: str) -> float:
    """Seconds for a bare load of the same rows (results by COPY) into a fresh database, one transaction."""
    from dashboard.dialect import RESULT_COLUMNS, connect_postgres, ensure_results_partitions

    conn = connect_postgres(_fresh(server, name))
    columns = ", ".join((*RESULT_COLUMNS[:10], "started_at"))

    def copy_results(conn, result_rows: list) -> None:
        ensure_results_partitions(conn, started_at.values())
        with conn.raw.cursor().copy(f"COPY results ({columns}) FROM STDIN") as copy:
            for row in result_rows:
                copy.write_row((*row, started_at[row[0]]))

    return time_bare_load(conn, rows, copy_results)


def two_ingesters(server, work: Path, docs: list[dict]) -> tuple[int, int, float, str]:
    """Two ingest processes, two inboxes, one database: (runs stored, distinct runs sent, seconds, problems)."""
    from dashboard.dialect import connect_postgres

    if work.exists():
        shutil.rmtree(work)
    url = _fresh(server, "two_ingesters")
    hosts = {"host-a": [], "host-b": []}
    for index, doc in enumerate(docs):
        home = "host-a" if int(doc["minion_id"].rsplit("-", 1)[1]) < MINIONS // 2 else "host-b"
        hosts[home].append(doc)
        if index % 10 == 0:  # delivered to both storage hosts (a fail-over retry)
            hosts["host-b" if home == "host-a" else "host-a"].append(doc)
    procs = []
    for host, host_docs in hosts.items():
        write_inbox(work / host / "inbox", host_docs)
    started = time.perf_counter()
    for host in hosts:
        env = {**os.environ, "PYTHONPATH": str(REPO), "DISTMON_DB": url,
               "DISTMON_INBOX": str(work / host / "inbox"), "DISTMON_ARCHIVE": str(work / host / "archive"),
               "DISTMON_QUARANTINE": str(work / host / "quarantine"), "DISTMON_REQUIRE_SIGNATURE": "0"}
        procs.append(subprocess.Popen([sys.executable, "-m", "dashboard", "ingest", "--once"], env=env, cwd=work,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = [proc.communicate(timeout=600) for proc in procs]
    seconds = time.perf_counter() - started
    problems = [f"ingester {i} exited {p.returncode}: {err[-500:]}" for i, (p, (_o, err)) in
                enumerate(zip(procs, outputs, strict=True)) if p.returncode != 0]
    conn = connect_postgres(url)
    try:
        def value(sql: str):
            return conn.execute(sql).fetchone()[0]

        runs = value("SELECT count(*) FROM runs")
        checks = {
            "a (minion, jid) stored twice": value("SELECT count(*) FROM (SELECT minion_id, jid FROM runs "
                                                  "GROUP BY minion_id, jid HAVING count(*) > 1) AS doubles"),
            "counters.runs != runs": value("SELECT (SELECT value FROM counters WHERE name = 'runs') - count(*) "
                                           "FROM runs"),
            "counters.results != results": value("SELECT (SELECT value FROM counters WHERE name = 'results') - "
                                                 "count(*) FROM results"),
            "sum(minions.runs) != runs": value("SELECT (SELECT sum(runs) FROM minions) - count(*) FROM runs"),
            "sum(test_status.runs) != tests per run": value(
                "SELECT (SELECT sum(runs) FROM test_status) - count(*) FROM results"),
        }
        problems += [f"{what}: {amount}" for what, amount in checks.items() if amount]
    finally:
        conn.close()
    return runs, len({(d["minion_id"], d["jid"]) for d in docs}), seconds, "; ".join(problems)


def run(quick: bool = False) -> list[Figure]:
    from dashboard.db import connect_sync
    from tools.postgres import PostgresServer

    files = FILES // 4 if quick else FILES
    docs = make_documents(files)
    rows = bare_rows(docs)
    started_at = {run_row[0]: run_row[13] for run_row in rows[2]}
    results = files * TESTS
    root = Path(tempfile.mkdtemp(prefix="distmon-bench-pg-"))
    os.chmod(root, 0o755)  # noqa: S103 - the postgres user must reach its data directory below
    server = PostgresServer(root / "pg")
    ingest_times, bare_times = [], []
    try:
        say(f"PostgreSQL for the bench: {server.start()}")
        server.create_database(TEMPLATE)
        connect_sync(server.url(TEMPLATE)).close()  # migrated once; every round clones it
        from dashboard import ingest

        ingest.warm_up_validation_worker()
        time_ingest_pg(server, root / "ingest", docs, "ingest")
        time_bare_copy(server, rows, started_at, "bare")
        for round_index in range(1 if quick else ROUNDS):
            ingest_times.append(time_ingest_pg(server, root / "ingest", docs, "ingest"))
            bare_times.append(time_bare_copy(server, rows, started_at, "bare"))
            say(f"pg round {round_index + 1}: ingest_pending {ingest_times[-1]:.2f} s, "
                f"bare COPY {bare_times[-1]:.2f} s for {results} results")
        stored, sent, seconds, problems = two_ingesters(server, root / "two", docs)
        say(f"two ingesters: {stored} runs stored of {sent} sent in {seconds:.2f} s; {problems or 'consistent'}")
    finally:
        try:
            server.stop()
        finally:
            shutil.rmtree(root, ignore_errors=True)
    rate, bare_rate = median_pair([results / s for s in ingest_times], [results / s for s in bare_times])
    return [
        Figure("ingest_rate_pg", rate, "results/s", bare_rate, ">=0.5x",
               note=f"{files} files x {TESTS} results by ingest_pending into PostgreSQL vs a bare load of the same "
                    f"rows (results by one COPY); the median-ratio pair of {len(ingest_times)} alternating rounds",
               extra={"ingest_seconds": ingest_times, "bare_seconds": bare_times, "results": results}),
        Figure("two_ingesters_pg", None if problems else stored, "runs", sent, ">=1x&<=1x",
               note="two `python -m dashboard ingest --once` processes, two inboxes (1 file in 10 in both), one "
                    "PostgreSQL database: runs stored once each, summaries consistent"
                    + (f"; PROBLEMS: {problems}" if problems else ""),
               extra={"seconds": seconds, "stored": stored, "sent": sent}),
        Figure("two_ingesters_pg_rate", results / seconds, "results/s", rate, "-",
               note="results/s of the two ingesters together (wall clock, both processes' start-up included) vs "
                    "one ingester's ingest_rate_pg"),
    ]


def _pages_and_rss(url: str, work: Path, token: str, routes: dict[str, str], *, prefix: str, shape: str,
                   warmup: int, rounds: int, rss_requests: int) -> list[Figure]:
    """Every route timed in-process on ``url``, then a uvicorn dashboard on it serving every route
    ``rss_requests`` times: ``<prefix>_p95_*`` / ``_p50_*`` (a route that fails is one SHORT figure,
    the others are still measured) and ``<prefix>_rss``."""
    from bench.b_dashboard import _time_routes, page_figures, rss_figure

    samples, failed = asyncio.run(_time_routes(url, work, token, routes, warmup, rounds))
    figures = page_figures(samples, routes, prefix=prefix, shape=shape, failed=failed)
    figures.append(rss_figure(url, work, token, routes, rss_requests, name=f"{prefix}_rss", shape=shape))
    return figures


def page_figures_on_postgres(sqlite_path: Path, token: str, routes: dict[str, str], quick: bool) -> list[Figure]:
    """page_pg_*: the dashboard section's routes timed again with the same data in PostgreSQL
    (the seeded SQLite store copied by ``migrate-to`` into a server started here), and
    page_pg_rss."""
    from bench.b_dashboard import ROUNDS as PAGE_ROUNDS
    from bench.b_dashboard import RSS_REQUESTS, WARMUP
    from dashboard.migrate_to import migrate_to
    from tools.postgres import PostgresServer

    root = Path(tempfile.mkdtemp(prefix="distmon-bench-pg-pages-"))
    os.chmod(root, 0o755)  # noqa: S103 - the postgres user must reach its data directory below
    server = PostgresServer(root / "pg")
    try:
        url = server.start()
        started = time.perf_counter()
        copied = migrate_to(sqlite_path, url)
        say(f"pages on PostgreSQL: migrate-to copied {sum(copied.values()):,} rows in "
            f"{time.perf_counter() - started:.0f} s")
        return _pages_and_rss(url, root, token, routes, prefix="page_pg", shape="1M results, PostgreSQL",
                              warmup=2 if quick else WARMUP, rounds=10 if quick else PAGE_ROUNDS,
                              rss_requests=2 if quick else RSS_REQUESTS)
    finally:
        try:
            server.stop()
        finally:
            shutil.rmtree(root, ignore_errors=True)


def fleet_figures_on_postgres(quick: bool) -> list[Figure]:
    """page10k_pg_*: every route on the large fleet (10,000 minions x 500 tests) seeded straight
    into PostgreSQL by dashboard/seed.py (COPY), and page10k_pg_rss; ``seed_fleet_10k_pg`` the seconds.

    Seeding takes minutes, so the seeded cluster is kept (stopped) in ``.run/bench/`` under a name
    made of the shape, the schema version and a hash of dashboard/seed.py, as the SQLite file is
    (bench/b_dashboard.py ``fleet_database``), and started again by later runs.
    """
    from bench.b_dashboard import (
        FLEET_MINIONS,
        FLEET_ROUNDS,
        FLEET_RSS_REQUESTS,
        FLEET_RUNS,
        FLEET_TESTS,
        WARMUP,
        backfill_signatures,
        bench_token,
        fleet_cache_name,
        route_table,
        seed_database,
    )
    from bench.common import BENCH_RUN
    from tools.postgres import PostgresServer

    root = BENCH_RUN / f"pg-{fleet_cache_name()}"
    seeded_mark = root / "seeded"
    shape = f"{FLEET_MINIONS} minions x {FLEET_TESTS} tests, PostgreSQL"
    figures = []
    if not seeded_mark.exists():
        BENCH_RUN.mkdir(parents=True, exist_ok=True)
        for stale in BENCH_RUN.glob("pg-fleet-*"):  # another shape, schema or seeder (or a half-seeded one)
            PostgresServer(stale).stop()
            shutil.rmtree(stale)
    server = PostgresServer(root)
    work = Path(tempfile.mkdtemp(prefix="distmon-bench-pg-fleet-"))
    try:
        server.start()
        url = server.create_database("fleet")
        if seeded_mark.exists():
            say(f"large fleet on PostgreSQL: reusing the cluster in {root}")
        else:
            say(f"seeding the large fleet into PostgreSQL ({shape}) into {root} (kept for later runs) ...")
            seconds = seed_database(url, FLEET_RUNS, FLEET_TESTS, FLEET_MINIONS)
            figures.append(Figure("seed_fleet_10k_pg", seconds, "s", None, "-",
                                  note=f"dashboard/seed.py into PostgreSQL (results by COPY): {shape}; "
                                       "cached in .run/bench for later runs"))
            backfill_signatures(url)
            seeded_mark.write_text(url + "\n")
        token = bench_token(url)
        routes = route_table(url)
        figures += _pages_and_rss(url, work, token, routes, prefix="page10k_pg", shape=shape,
                                  warmup=2 if quick else WARMUP, rounds=5 if quick else FLEET_ROUNDS,
                                  rss_requests=1 if quick else FLEET_RSS_REQUESTS)
        return figures
    finally:
        try:
            server.stop()
        finally:
            shutil.rmtree(work, ignore_errors=True)
