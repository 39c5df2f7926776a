"""The dashboard at scale: seeding, page times, result latency, memory.

1. ``seed_1m``: dashboard/seed.py fills a fresh database in a temp dir with 20,000 runs x 50
   tests over 50 minions (1,000,000 results). Informational (no target).
   ``signature_backfill_1m``: then the failure-signature backfill over them (informational).
2. ``page_p95_<route>`` / ``page_p50_<route>``: server time of every page and API route in
   :data:`ROUTES`, in-process through the ASGI app (``httpx.ASGITransport``, lifespan run,
   ingester off), authenticated with an API token. Requests go round-robin over the routes
   (``WARMUP`` rounds discarded, then ``ROUNDS``), so a noisy phase of the machine hits every
   route alike. The floor of each is the same percentile of ``/api/me``: authenticated, no
   data query (the app has no /healthz; /api/me pays the same middleware and token lookup as
   every route, which /login or /static would not). Target: p95 <= 100 ms. The triage pages
   also by name: ``failures_page_p95`` (/failures), ``failures_api_p95`` (/api/failures) and
   ``fts_search_p95`` (the slowest of the full-text searches on /failures, /api/failures, /runs).
3. ``result_latency_p95`` / ``_p50``: a uvicorn dashboard with its ingester (scan interval
   0.2 s, as the stack) on the seeded database. ``LATENCY_SAMPLES`` times: a 50-result file is
   written under a temporary dot-name in the inbox, then renamed to its final name; the clock
   starts after the rename and stops when ``/api/runs?jid=`` lists the run (polled every
   10 ms over keep-alive HTTP). A random pause before each sample spreads the samples over the
   scan cycle. Floor: the scan interval. Target: p95 <= 1 s.
4. ``page10k_p95_<route>`` / ``page10k_p50_<route>``: the same routes (plus the fleet's groups and
   states) on the shape of a large fleet, ``--minions 10000 --tests 500`` (one run each: 5,000,000
   results). Seeding it takes minutes, so the seeded file is kept in ``.run/bench/`` under a name
   made of the shape, the schema version and a hash of dashboard/seed.py, and reused by later runs
   (``make clean`` or a schema/seed change makes a new one). Floor and target as in 2.
5. ``dashboard_rss``: that uvicorn process's RSS after the latency samples and
   ``RSS_REQUESTS`` requests of every route over HTTP. Floor: its RSS right after start-up.
   Target: <= 300 MB.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import REPO, Figure, median, percentile, say

SEED_RUNS, SEED_TESTS, SEED_MINIONS = 20_000, 50, 50
# The large fleet: 10,000 minions x 500 tests, one run each (docs/scaling.md).
FLEET_RUNS, FLEET_TESTS, FLEET_MINIONS = 10_000, 500, 10_000
FLEET_ROUNDS = 30
WARMUP, ROUNDS = 5, 60
ROUTE_BUDGET_SECONDS = 300  # stop sampling early (after at least 20 rounds) if the pages are very slow
LATENCY_SAMPLES = 50
RSS_REQUESTS = 10
FLEET_RSS_REQUESTS = 3  # every route this many times on the large fleet (page10k_rss, page10k_pg_rss)
SCAN_INTERVAL = 0.2
FLOOR_ROUTE = "api_me"


def seed_database(path: Path | str, runs: int = SEED_RUNS, tests: int = SEED_TESTS, minions: int = SEED_MINIONS) -> float:
    from dashboard.db import connect_sync
    from dashboard.seed import seed

    conn = connect_sync(path)
    try:
        started = time.perf_counter()
        seed(conn, runs=runs, tests=tests, minions=minions)
        return time.perf_counter() - started
    finally:
        conn.close()


def fleet_cache_name() -> str:
    """``fleet-<shape>-schema<N>-seed<hash>``: what a cached seeded large fleet is made of (the shape,
    the schema version, dashboard/seed.py); another name makes a new one."""
    import hashlib

    from dashboard.migrations import MIGRATIONS

    seed_hash = hashlib.sha256((REPO / "dashboard" / "seed.py").read_bytes()).hexdigest()[:10]
    shape = f"{FLEET_MINIONS}m-{FLEET_TESTS}t-{FLEET_RUNS}r"
    return f"fleet-{shape}-schema{MIGRATIONS[-1][0]}-seed{seed_hash}"


def fleet_database() -> tuple[Path, float | None]:
    """The seeded large-fleet database from .run/bench (seeded now when missing): (path, seconds or None)."""
    from bench.common import BENCH_RUN

    path = BENCH_RUN / f"{fleet_cache_name()}.sqlite"
    if path.exists():
        return path, None
    BENCH_RUN.mkdir(parents=True, exist_ok=True)
    for stale in BENCH_RUN.glob("fleet-*.sqlite*"):  # another shape, schema or seeder: never read again
        stale.unlink()
    partial = path.with_name(path.name + ".part")
    say(f"seeding the large fleet ({FLEET_MINIONS} minions x {FLEET_TESTS} tests) into {path} (kept for later runs) ...")
    seconds = seed_database(partial, FLEET_RUNS, FLEET_TESTS, FLEET_MINIONS)
    # Signatures too (the seeder leaves them to the backfill): the failures routes need them.
    say(f"signature backfill of the large fleet: {backfill_signatures(partial):.0f} s")
    import sqlite3

    sqlite3.connect(partial).execute("PRAGMA wal_checkpoint(TRUNCATE)").close()
    for suffix in ("-wal", "-shm"):
        partial.with_name(partial.name + suffix).unlink(missing_ok=True)
    partial.rename(path)
    return path, seconds


def backfill_signatures(path: Path) -> float:
    """Failure signatures for the seeded results (seed leaves them to the backfill): seconds taken."""
    from dashboard.db import connect_sync
    from dashboard.failures import backfill_all

    conn = connect_sync(path)
    try:
        started = time.perf_counter()
        backfill_all(conn)
        return time.perf_counter() - started
    finally:
        conn.close()


def bench_token(path: Path) -> str:
    """An active admin and an API token, written straight into the seeded database."""
    from dashboard import security, users
    from dashboard.db import connect_sync, run_transaction

    conn = connect_sync(path)
    try:
        existing = users.find_user_sync(conn, "bench")
        if existing is None:
            password_hash = security.hash_password_sync("bench-password-not-secret", 4)
            created = run_transaction(conn, users.create_user_tx, "bench", password_hash, admin=True, status="active")
            user_id = created["id"]
        else:
            user_id = existing["id"]
        token = security.new_api_token()
        run_transaction(conn, users.create_token_tx, user_id, security.sha256_hex(token), "bench")
        return token
    finally:
        conn.close()


def route_table(path: Path) -> dict[str, str]:
    """The fixed list of routes, with real ids from the seeded data (a mid-history failing run).
    ``path`` is a SQLite file or a PostgreSQL URL."""
    from dashboard.db import connect_sync

    conn = connect_sync(path)
    try:
        run_id, jid, minion = conn.execute(
            "SELECT r.id, r.jid, m.name FROM runs r JOIN minions m ON m.id = r.minion_id "
            "WHERE r.status = 'failed' AND r.id > (SELECT MAX(id) FROM runs) / 2 ORDER BY r.id LIMIT 1"
        ).fetchone()
        previous = conn.execute(
            "SELECT r.id FROM runs r WHERE r.minion_id = (SELECT minion_id FROM runs WHERE id = ?) AND r.id < ? "
            "ORDER BY r.id DESC LIMIT 1", (run_id, run_id)).fetchone()
        # One run per minion (the large fleet): compare with another minion's run.
        previous = previous[0] if previous else run_id - 1
        nodeid = conn.execute(
            "SELECT t.nodeid FROM test_status s JOIN tests t ON t.id = s.test_id ORDER BY s.flips DESC LIMIT 1"
        ).fetchone()[0]
        latest = conn.execute("SELECT MAX(id) FROM runs").fetchone()[0]
        # The open signature failing on the most minions (the failures page's first row).
        # (None on a database whose signatures were not backfilled: no triage routes then.)
        signature = (conn.execute(
            "SELECT last_signature FROM test_status WHERE last_signature IS NOT NULL GROUP BY last_signature "
            "ORDER BY COUNT(*) DESC LIMIT 1"
        ).fetchone() or (None,))[0]
    finally:
        conn.close()
    from urllib.parse import quote

    node = quote(nodeid, safe="")
    routes = {
        "fleet": "/",
        "fleet_failing": "/?state=failing",
        "fleet_group": "/?group=roles",
        "fleet_group_value": "/?group=os&value=Debian",
        "runs": "/runs",
        "runs_minion": f"/runs?minion={quote(minion)}",
        "runs_failed": "/runs?status=failed",
        "runs_q": "/runs?q=test_case_0009",
        "run": f"/runs/{run_id}",
        "run_junit": f"/runs/{run_id}/junit.xml",
        "job": f"/jobs/{jid}",
        "minion": f"/minions/{quote(minion)}",
        "test": f"/tests?nodeid={node}",
        "tests_search": "/tests?q=test_case_00",
        "flaky": "/flaky",
        "slowest": "/slowest",
        "compare": f"/compare?a={previous}&b={run_id}",
        "api_runs": "/api/runs",
        "api_run": f"/api/runs/{run_id}",
        "api_minions": "/api/minions",
        "api_minion": f"/api/minions/{quote(minion)}",
        "api_tests": f"/api/tests?nodeid={node}",
        "api_fleet": "/api/fleet",
        "api_fleet_group": "/api/fleet?group=roles",
        "api_slowest": "/api/slowest",
        "api_job": f"/api/jobs/{jid}",
        "api_flaky": "/api/flaky",
        "api_compare": f"/api/compare?a={previous}&b={run_id}",
        "api_live": f"/api/live?after={latest - 50}",
        "run_json": f"/runs/{run_id}/export.json",
        "tests_page": "/tests",
        "api_tests_search": "/api/tests?q=test_case_00",
        "api_fleet_failing": "/api/fleet?state=failing",
        "api_fleet_group_value": "/api/fleet?group=os&value=Debian",
        "triage": "/triage",
        "api_mutes": "/api/mutes",
        "api_triage_log": "/api/triage/log",
        "account": "/account",
        "admin_users": "/admin/users",
        "admin_webhooks": "/admin/webhooks",
        "api_webhooks": "/api/webhooks",
        "api_openapi": "/api/openapi.json",
        FLOOR_ROUTE: "/api/me",
    }
    if signature:
        routes.update({
            "failures": "/failures",
            "failures_some": "/failures?verdict=some-minions",
            "failure": f"/failures/{signature}",
            "api_failures": "/api/failures",
            "api_failure": f"/api/failures/{signature}",
            # Full-text search (FTS5) over the failures' messages and tracebacks.
            "failures_q": "/failures?q=response+status",
            "api_failures_q": "/api/failures?q=503",
            "runs_text_q": "/runs?q=Response+503",
        })
    return routes


def _settings(db_path: Path, work: Path):
    from dashboard.config import Settings

    return Settings(db_path=db_path, inbox=work / "inbox", archive=work / "archive", quarantine=work / "quarantine",
                    require_signature=False, ingest=False)


async def _time_routes(db_path: Path, work: Path, token: str, routes: dict[str, str], warmup: int,
                       rounds: int) -> tuple[dict[str, list[float]], dict[str, str]]:
    """(samples in ms per route, failed routes: name -> why). A route that answers anything but 200
    (a 503 after the query time limit) is recorded as failed and left out of later rounds; the
    others go on."""
    import httpx

    from dashboard.app import create_app

    app = create_app(_settings(db_path, work))
    samples: dict[str, list[float]] = {name: [] for name in routes}
    failed: dict[str, str] = {}
    headers = {"Authorization": f"Bearer {token}"}
    transport = httpx.ASGITransport(app=app)
    async with app.router.lifespan_context(app), httpx.AsyncClient(
        transport=transport, base_url="http://127.0.0.1", headers=headers  # a default allowed host
    ) as client:
        started = time.monotonic()
        for round_index in range(warmup + rounds):
            for name, url in routes.items():
                if name in failed:
                    continue
                begin = time.perf_counter()
                response = await client.get(url)
                elapsed = time.perf_counter() - begin
                if response.status_code != 200:
                    failed[name] = (f"HTTP {response.status_code} after {elapsed * 1000:.0f} ms: "
                                    f"{' '.join(response.text.split())[:200]}")
                    say(f"pages: {url}: {failed[name]}")
                    continue
                if round_index >= warmup:
                    samples[name].append(elapsed * 1000)
            if round_index >= warmup + 20 and time.monotonic() - started > ROUTE_BUDGET_SECONDS:
                say(f"pages: time budget reached after {round_index + 1 - warmup} rounds")
                break
    return samples, failed


def page_figures(samples: dict[str, list[float]], routes: dict[str, str], prefix: str = "page",
                 shape: str = "1M results", failed: dict[str, str] | None = None) -> list[Figure]:
    """p95 and p50 of every route against /api/me's; a route in ``failed`` is one SHORT figure."""
    failed = failed or {}
    floor = samples[FLOOR_ROUTE]
    floor_p50, floor_p95 = percentile(floor, 50), percentile(floor, 95)
    figures = []
    for name, values in samples.items():
        if name in failed or not values:
            figures.append(Figure(f"{prefix}_p95_{name}", None, "ms", floor_p95, "<=100ms",
                                  note=f"GET {routes[name]} ({shape}): failed: {failed.get(name, 'no sample')}",
                                  extra={"url": routes[name]}))
            continue
        p50, p95 = percentile(values, 50), percentile(values, 95)
        common = {"url": routes[name], "samples": len(values), "max_ms": max(values)}
        figures.append(Figure(f"{prefix}_p95_{name}", p95, "ms", floor_p95, "<=100ms",
                              note=f"GET {routes[name]} ({shape}): p95 of {len(values)} in-process requests; "
                                   "floor: p95 of /api/me", extra=common))
        figures.append(Figure(f"{prefix}_p50_{name}", p50, "ms", floor_p50, "<=100ms",
                              note=f"GET {routes[name]} ({shape}): p50", extra=common))
    if "failures" in samples:
        # The triage figures by their own names (docs/triage.md): the failures page, its API, and
        # the slowest of the full-text searches.
        for figure, names in (("failures_page_p95", ["failures"]), ("failures_api_p95", ["api_failures"]),
                              ("fts_search_p95", ["failures_q", "api_failures_q", "runs_text_q"])):
            if any(name in failed or not samples[name] for name in names):
                figures.append(Figure(figure, None, "ms", floor_p95, "<=100ms",
                                      note="failed: " + "; ".join(f"{routes[n]}: {failed.get(n, 'no sample')}"
                                                                  for n in names if n in failed or not samples[n])))
                continue
            worst = max(names, key=lambda name: percentile(samples[name], 95))
            figures.append(Figure(figure, percentile(samples[worst], 95), "ms", floor_p95, "<=100ms",
                                  note=f"GET {routes[worst]} (slowest of {', '.join(routes[n] for n in names)}): p95 of "
                                       f"{len(samples[worst])} in-process requests at 1,000,000 results",
                                  extra={"url": routes[worst]}))
    return figures


def _pages_on_postgres(db_path: Path, token: str, routes: dict[str, str], quick: bool) -> list[Figure]:
    """page_pg_*: the same routes on the same data copied into PostgreSQL (bench/b_postgres.py).
    A failure there is reported as one SHORT figure and never costs the SQLite figures."""
    from bench.b_postgres import page_figures_on_postgres

    try:
        return page_figures_on_postgres(db_path, token, routes, quick)
    except Exception as err:  # noqa: BLE001 - reported as a failed measurement, the section goes on
        say(f"pages on PostgreSQL failed: {type(err).__name__}: {err}")
        return [Figure("page_pg_p95_all", None, "ms", None, "<=100ms", note=f"failed: {type(err).__name__}: {err}")]


def _fleet_on_postgres(quick: bool) -> list[Figure]:
    """page10k_pg_*: the large fleet seeded into PostgreSQL (bench/b_postgres.py); a failure there is
    one SHORT figure."""
    from bench.b_postgres import fleet_figures_on_postgres

    try:
        return fleet_figures_on_postgres(quick)
    except Exception as err:  # noqa: BLE001 - reported as a failed measurement, the section goes on
        say(f"large fleet on PostgreSQL failed: {type(err).__name__}: {err}")
        return [Figure("page10k_pg_p95_all", None, "ms", None, "<=100ms", note=f"failed: {type(err).__name__}: {err}")]


def fleet_figures(quick: bool) -> list[Figure]:
    """Every route on the large fleet (10,000 minions x 500 tests), from the cached seeded file."""
    path, seconds = fleet_database()
    figures = []
    if seconds is not None:
        figures.append(Figure("seed_fleet_10k", seconds, "s", None, "-",
                              note=f"dashboard/seed.py: {FLEET_MINIONS} minions x {FLEET_TESTS} tests, one run each "
                                   f"({FLEET_RUNS * FLEET_TESTS} results); cached in .run/bench for later runs"))
    else:
        say(f"pages (large fleet): reusing {path}")
    work = Path(tempfile.mkdtemp(prefix="distmon-bench-fleet-"))
    try:
        backfill_signatures(path)  # the triage routes need signatures; a no-op on a cached file done before
        token = bench_token(path)
        routes = route_table(path)
        rounds = 5 if quick else FLEET_ROUNDS
        shape = f"{FLEET_MINIONS} minions x {FLEET_TESTS} tests"
        samples, failed = asyncio.run(_time_routes(path, work, token, routes, 2 if quick else WARMUP, rounds))
        figures.extend(page_figures(samples, routes, prefix="page10k", shape=shape, failed=failed))
        figures.append(rss_figure(path, work, token, routes, 1 if quick else FLEET_RSS_REQUESTS, name="page10k_rss",
                                  shape=shape))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return figures


# -- uvicorn: latency and memory -------------------------------------------------------------


class Uvicorn:
    """A dashboard (with its ingester) in a uvicorn subprocess on a given database; stopped by pid."""

    def __init__(self, db_path: Path, work: Path):
        from tools.storage_host import free_port

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.inbox = work / "inbox"
        self.inbox.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "DISTMON_DB": str(db_path),
            "DISTMON_INBOX": str(self.inbox),
            "DISTMON_ARCHIVE": str(work / "archive"),
            "DISTMON_QUARANTINE": str(work / "quarantine"),
            "DISTMON_PUBKEYS_DIR": "",
            "DISTMON_REQUIRE_SIGNATURE": "0",
            "DISTMON_INGEST": "1",
            "DISTMON_SCAN_INTERVAL": str(SCAN_INTERVAL),
        }
        self.log = open(work / "uvicorn.log", "wb")  # noqa: SIM115 - closed in stop()
        # cwd is the work dir: nothing of the checkout's .run/ is near the app under test.
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dashboard", "serve", "--host", "127.0.0.1", "--port", str(self.port),
             "--no-access-log", "--log-level", "warning"],
            cwd=work, env=env, stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self, timeout: float = 90) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"uvicorn exited with {self.proc.returncode}; see {self.log.name}")
            try:
                if httpx.get(f"{self.url}/login", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"uvicorn did not answer within {timeout} s")

    def rss_mb(self) -> float:
        import psutil

        return psutil.Process(self.proc.pid).memory_info().rss / 2**20

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()


def latency_samples(server: Uvicorn, token: str, samples: int) -> list[float]:
    import httpx

    from bench.b_ingest import make_documents

    docs = make_documents(samples, minions=1)
    minion_dir = server.inbox / docs[0]["minion_id"]
    minion_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(7)
    seconds = []
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"}, timeout=10) as client:
        for doc in docs:
            doc["jid"] = f"lat{time.time_ns()}"
            time.sleep(rng.uniform(0, SCAN_INTERVAL))
            temp = minion_dir / f".{doc['jid']}.json.{os.getpid()}.part"
            temp.write_text(json.dumps(doc))
            os.rename(temp, minion_dir / f"{doc['jid']}.json")
            renamed = time.perf_counter()
            deadline = renamed + 30
            while True:
                response = client.get("/api/runs", params={"jid": doc["jid"]})
                response.raise_for_status()
                if response.json()["runs"]:
                    seconds.append(time.perf_counter() - renamed)
                    break
                if time.perf_counter() > deadline:
                    raise RuntimeError(f"run {doc['jid']} not in /api/runs 30 s after the rename")
                time.sleep(0.01)
    return seconds


def serve_every_route(server: Uvicorn, token: str, routes: dict[str, str], count: int) -> tuple[float, dict[str, int]]:
    """Every route ``count`` times over HTTP: (the largest RSS seen after each request in MB,
    route -> its last status other than 200). A failed route is noted, not fatal: the memory of
    the rest is still measured."""
    import httpx

    peak, failed = server.rss_mb(), {}
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"}, timeout=60) as client:
        for _ in range(count):
            for name, url in routes.items():
                response = client.get(url)
                if response.status_code != 200:
                    failed[name] = response.status_code
                peak = max(peak, server.rss_mb())
    return peak, failed


def rss_figure(db: Path | str, work: Path, token: str, routes: dict[str, str], requests: int, *, name: str,
               shape: str) -> Figure:
    """``name``: the largest RSS of a uvicorn dashboard on ``db`` serving every route ``requests`` times
    over HTTP; floor: its RSS right after start-up. Target: <= 300 MB."""
    server = Uvicorn(db, work)
    try:
        server.wait_ready()
        rss_start = server.rss_mb()
        peak, failed = serve_every_route(server, token, routes, requests)
    finally:
        server.stop()
    note = (f"largest RSS of a uvicorn dashboard ({shape}) while serving every route {requests} times over HTTP; "
            "floor: its RSS right after start-up")
    if failed:
        note += "; not 200: " + ", ".join(f"{routes[route]} {status}" for route, status in failed.items())
    return Figure(name, peak, "MB", rss_start, "<=300MB", note=note, extra={"failed": failed})


# -- the section -----------------------------------------------------------------------------


def run(quick: bool = False, seeded_db: str | None = None) -> list[Figure]:
    work = Path(tempfile.mkdtemp(prefix="distmon-bench-dashboard-"))
    figures: list[Figure] = []
    try:
        db_path = work / "distmon.sqlite"
        if seeded_db:
            shutil.copyfile(seeded_db, db_path)
            say(f"pages: using a copy of {seeded_db} (not seeded in this run)")
        else:
            say(f"seeding {SEED_RUNS} runs x {SEED_TESTS} tests over {SEED_MINIONS} minions ...")
            seconds = seed_database(db_path)
            say(f"seeded in {seconds:.1f} s ({db_path.stat().st_size / 2**20:.0f} MB)")
            figures.append(Figure("seed_1m", seconds, "s", None, "-",
                                  note=f"dashboard/seed.py: {SEED_RUNS} runs x {SEED_TESTS} tests, "
                                       f"{SEED_MINIONS} minions ({SEED_RUNS * SEED_TESTS} results)"))

        seconds = backfill_signatures(db_path)  # a no-op on a copy already backfilled
        say(f"signature backfill in {seconds:.1f} s")
        figures.append(Figure("signature_backfill_1m", seconds, "s", None, "-",
                              note="the failure-signature backfill (dashboard/failures.py) over the seeded 1M results: "
                                   "signatures, FTS index, test_status.last_signature"))
        token = bench_token(db_path)
        routes = route_table(db_path)
        say("routes: " + ", ".join(f"{name}={url}" for name, url in routes.items()))
        rounds = 10 if quick else ROUNDS
        samples, failed = asyncio.run(_time_routes(db_path, work, token, routes, 2 if quick else WARMUP, rounds))
        figures.extend(page_figures(samples, routes, failed=failed))
        figures.extend(_pages_on_postgres(db_path, token, routes, quick))

        server = Uvicorn(db_path, work)
        try:
            server.wait_ready()
            rss_start = server.rss_mb()
            latencies = latency_samples(server, token, 10 if quick else LATENCY_SAMPLES)
            say(f"latency: {len(latencies)} samples, p50 {percentile(latencies, 50):.3f} s, "
                f"p95 {percentile(latencies, 95):.3f} s, max {max(latencies):.3f} s")
            serve_every_route(server, token, routes, 2 if quick else RSS_REQUESTS)
            rss_end = server.rss_mb()
        finally:
            server.stop()
        note = (f"file renamed into the inbox -> run listed by /api/runs?jid= of a uvicorn dashboard on the "
                f"1M-result DB; {len(latencies)} samples; floor: the ingester's scan interval")
        figures.append(Figure("result_latency_p95", percentile(latencies, 95), "s", SCAN_INTERVAL, "<=1s",
                              note=note, extra={"samples": latencies}))
        figures.append(Figure("result_latency_p50", median(latencies), "s", SCAN_INTERVAL, "-", note=note))
        figures.append(Figure("dashboard_rss", rss_end, "MB", rss_start, "<=300MB",
                              note=f"uvicorn dashboard RSS after the latency samples and {RSS_REQUESTS} requests of "
                                   "every route over HTTP; floor: its RSS right after start-up"))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    figures.extend(fleet_figures(quick))
    figures.extend(_fleet_on_postgres(quick))
    return figures
