"""Attacks on the dashboard process itself, each against ``python -m dashboard serve`` as shipped
(and, for the figure, against what was shipped before: a bare ``uvicorn dashboard.app:app``).

- A JUnit XML report in UTF-16 with a DOCTYPE and an internal entity: its raw bytes hold no
  ``<!DOCTYPE``; the parser refuses it, the file is quarantined with its reason, and the
  dashboard's peak RSS does not move (an unprotected parser's does, by the expansion).
- Guessing passwords with a new ``X-Forwarded-For`` on every attempt: the address limit still
  answers 429 (uvicorn alone believes the header from 127.0.0.1, so the limit never triggers).
- About 1,100 clients that open a connection and never finish their request headers, against
  the unit's ``LimitNOFILE``: ``/login`` keeps answering, and the slow connections are cut after
  the request timeout (with 1,024 descriptors and no timeout, uvicorn stops accepting).

Each case records its figure in the fault table (``make test-faults``); only the shipped
behaviour is asserted.
"""

from __future__ import annotations

import re
import resource
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.faults.helpers import DashboardProcess, wait_for

pytestmark = pytest.mark.faults

BARE_UVICORN = [sys.executable, "-m", "uvicorn", "dashboard.app:app"]
SLOW_CLIENTS = 1_100
UNIT_NOFILE = 8192  # LimitNOFILE of states/distmon/files/distmon-dashboard.service.jinja (pillar default)
DEFAULT_NOFILE = 1024  # a service without LimitNOFILE: systemd's default soft limit
ENTITY_CHARS = 800_000
ENTITY_REFERENCES = 90  # ~72 MB of expansion from a 1.6 MB file: under expat's 100x amplification guard


def utf16_entity_report() -> bytes:
    text = (
        '<?xml version="1.0" encoding="UTF-16"?><!DOCTYPE testsuite [<!ENTITY a "' + "x" * ENTITY_CHARS + '">]>'
        '<testsuite><testcase name="t"><failure message="m">' + "&a;" * ENTITY_REFERENCES
        + "</failure></testcase></testsuite>"
    )
    return text.encode("utf-16")


def peak_rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^VmHWM:\s+(\d+) kB", status, re.M).group(1)) / 1024


def unprotected_parse_rss_mb(path: Path) -> float:
    """Peak RSS of the standard library parser reading ``path`` as the old code let it (MB)."""
    code = ("import resource, sys, xml.etree.ElementTree as ET\n"
            "ET.fromstring(open(sys.argv[1], 'rb').read())  # noqa: S314 (the attack being measured)\n"
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
    done = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-500:]
    return int(done.stdout.strip()) / 1024


@pytest.fixture
def dashboards(tmp_path, own_dashboards):
    """``dashboards(name, **kwargs)``: a started dashboard process over its own empty inbox."""

    def start(name: str, **kwargs) -> DashboardProcess:
        inbox = tmp_path / name / "inbox"
        inbox.mkdir(parents=True)
        dashboard = own_dashboards(name, inbox, **kwargs)
        dashboard.start()
        return dashboard

    return start


def test_utf16_entity_report_is_quarantined_without_expanding(dashboards, tmp_path, fault_table):
    dashboard = dashboards("junit", extra_env={"DISTMON_ACCEPT_JUNIT": "1"})
    report = utf16_entity_report()
    assert b"<!DOCTYPE" not in report
    before = peak_rss_mb(dashboard.proc.pid)
    (dashboard.inbox / "ci").mkdir()
    staged = dashboard.inbox / "ci" / ".build-7.xml.part"
    staged.write_bytes(report)
    staged.rename(dashboard.inbox / "ci" / "build-7.xml")
    reasons = wait_for(lambda: dashboard.quarantined("ci"), 60)
    growth = peak_rss_mb(dashboard.proc.pid) - before
    sample = tmp_path / "bomb.xml"
    sample.write_bytes(report)
    unprotected = unprotected_parse_rss_mb(sample)
    fault_table.record(
        "UTF-16 DOCTYPE/ENTITY JUnit (1.6 MB)", "quarantined, RSS flat",
        f"{'quarantined' if reasons else 'NOT quarantined'}, peak RSS +{growth:.0f} MB", 0,
        f"unprotected stdlib parser of the same file: {unprotected:.0f} MB peak; reason: "
        + (next(iter(reasons.values())).splitlines()[0].removeprefix("reason: ") if reasons else "-"),
    )
    assert "DOCTYPE/ENTITY declarations are refused" in reasons["build-7.xml"]
    assert growth < ENTITY_CHARS * ENTITY_REFERENCES / 2**20 / 4  # far below the expansion
    with dashboard.read_only() as conn:
        assert conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 0


def attempts_until_429(dashboard: DashboardProcess, attempts: int) -> int | None:
    """Failed logins, each for a new username and with a new X-Forwarded-For; the attempt that got 429."""
    with httpx.Client(base_url=dashboard.url, timeout=30) as client:
        token = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/login").text).group(1)
        for attempt in range(1, attempts + 1):
            response = client.post(
                "/login", data={"username": f"guess-{attempt}", "password": "wrong-password-1", "csrf_token": token},
                headers={"X-Forwarded-For": f"198.51.100.{attempt % 250}"},
            )
            if response.status_code == 429:
                return attempt
            assert response.status_code == 401, response.status_code
    return None


def test_spoofed_x_forwarded_for_does_not_dodge_the_login_limit(dashboards, fault_table):
    shipped = attempts_until_429(dashboards("serve"), 40)
    bare = attempts_until_429(dashboards("bare", command=BARE_UVICORN), 40)
    fault_table.record(
        "login guesses, new X-Forwarded-For each", "429 after 30 (address limit)",
        f"429 at attempt {shipped}" if shipped else "no 429 in 40", 0,
        "bare uvicorn (before): " + (f"429 at attempt {bare}" if bare else "no 429 in 40 attempts"),
    )
    assert shipped == 31  # 30 failures recorded, the 31st is refused


def open_slow_clients(port: int, count: int) -> list[socket.socket]:
    """``count`` connections that send the start of a request and never finish its headers."""
    held = []
    for _ in range(count):
        sock = socket.socket()
        sock.setblocking(False)
        try:
            sock.connect(("127.0.0.1", port))
        except BlockingIOError:
            pass
        held.append(sock)
    time.sleep(1)
    for sock in held:
        try:
            sock.send(b"GET /login HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        except OSError:
            pass
    return held


def login_latencies(url: str, samples: int, timeout: float) -> tuple[list[float], int]:
    """Seconds per GET /login on fresh connections; and how many failed (timeout, refused, non-200)."""
    latencies, failures = [], 0
    for _ in range(samples):
        started = time.perf_counter()
        try:
            ok = httpx.get(f"{url}/login", timeout=timeout).status_code == 200
        except httpx.HTTPError:
            ok = False
        if ok:
            latencies.append(time.perf_counter() - started)
        else:
            failures += 1
    return latencies, failures


def slow_client_run(dashboard: DashboardProcess, samples: int, timeout: float) -> tuple[list[float], int, int]:
    held = open_slow_clients(dashboard.port, SLOW_CLIENTS)
    try:
        latencies, failures = login_latencies(dashboard.url, samples, timeout)
    finally:
        for sock in held:
            sock.close()
    emfile = dashboard.log_path.read_text(errors="replace").count("Too many open files")
    return latencies, failures, emfile


def test_slow_clients_do_not_starve_the_login_page(dashboards, fault_table):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < SLOW_CLIENTS + 200:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
    shipped = dashboards("serve", nofile=UNIT_NOFILE, extra_env={"DISTMON_REQUEST_TIMEOUT": "10"})
    quiet, _ = login_latencies(shipped.url, samples=10, timeout=10)
    latencies, failures, emfile = slow_client_run(shipped, samples=10, timeout=10)
    bare = dashboards("bare", command=BARE_UVICORN, nofile=DEFAULT_NOFILE)
    bare_latencies, bare_failures, bare_emfile = slow_client_run(bare, samples=5, timeout=3)
    median = statistics.median(latencies) * 1000 if latencies else float("nan")
    fault_table.record(
        f"{SLOW_CLIENTS} slow-header clients", "/login answers",
        f"{len(latencies)}/{len(latencies) + failures} answered, median {median:.0f} ms, "
        f"max {max(latencies, default=0) * 1000:.0f} ms, {emfile} EMFILE lines", 0,
        f"without them: median {statistics.median(quiet) * 1000:.0f} ms; bare uvicorn, {DEFAULT_NOFILE} fds (before): {len(bare_latencies)}/{len(bare_latencies) + bare_failures} "
        f"answered in 3 s, {bare_emfile} 'Too many open files' lines",
    )
    assert failures == 0 and emfile == 0
    # The request deadline frees what the slow clients held: a fresh request still answers after it.
    assert wait_for(lambda: httpx.get(f"{shipped.url}/login", timeout=5).status_code == 200, 20)
