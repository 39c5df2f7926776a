"""End to end in a real browser: Debian's chromium (headless) driven by Playwright against a real
uvicorn serving the dashboard, with results arriving through the real ingester."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.db_backend import database_location
from tests.functional.conftest import XSS, XSS_MINION, result_document, write_inbox
from tools.storage_host import free_port

pytestmark = pytest.mark.e2e

REPO_ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
FAILING = "tests/test_checkout.py::test_pay"
TRACEBACK = "def test_pay():\n>       assert charge() == 'ok'\nE       AssertionError: card declined"


def seed_inbox(inbox: Path) -> None:
    start = datetime.now(UTC) - timedelta(hours=1)
    tests = [
        {"nodeid": "tests/test_checkout.py::test_cart", "outcome": "passed"},
        {"nodeid": FAILING, "outcome": "failed", "message": "AssertionError: card declined",
         "longrepr": TRACEBACK, "stdout": "charging 10 EUR"},
        {"nodeid": f"tests/test_xss.py::test_x[{XSS}]", "outcome": "failed", "message": XSS, "longrepr": XSS,
         "stderr": "<img src=x onerror=alert(2)>"},
    ]
    write_inbox(inbox, result_document("web-1", "20261128080000000001", start, tests,
                                       grains={"os": "Debian", "evil": XSS, "link": "javascript:alert(3)"}))
    write_inbox(inbox, result_document(XSS_MINION, "20261128080000000001", start,
                                       [{"nodeid": "tests/test_checkout.py::test_cart", "outcome": "passed"}]))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    inbox = root / "inbox"
    inbox.mkdir()
    seed_inbox(inbox)
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO_ROOT),
        "DISTMON_DB": str(database_location(root)),
        "DISTMON_INBOX": str(inbox),
        "DISTMON_INGEST": "1",
        "DISTMON_SCAN_INTERVAL": "0.1",
        "DISTMON_REGISTRATION": "approval",
        "DISTMON_BCRYPT_ROUNDS": "4",
    }
    log = (root / "uvicorn.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "dashboard.app:app", "--host", "127.0.0.1", "--port", str(port),
         "--log-level", "warning"],
        env=env, cwd=root, stdout=log, stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(base + "/login", timeout=2) as response:  # noqa: S310 (loopback)
                if response.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"uvicorn did not start: {(root / 'uvicorn.log').read_text()}")
        time.sleep(0.2)
    yield {"base": base, "inbox": inbox, "root": root}
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    if not os.path.exists(CHROMIUM):
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield chromium
        chromium.close()


def test_register_login_open_run_expand_failure(server, browser, tmp_path):
    base = server["base"]
    context = browser.new_context(base_url=base)
    page = context.new_page()
    dialogs, csp_errors = [], []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    page.on("console", lambda msg: csp_errors.append(msg.text)
            if msg.type == "error" and "Content Security Policy" in msg.text else None)
    try:
        # Anonymous: sent to the login page; register (the first user becomes admin), then log in.
        page.goto("/")
        assert page.url.startswith(base + "/login")
        page.click("text=Register")
        page.fill("input[name=username]", "e2e-admin")
        page.fill("input[name=password]", "e2e-password-1")
        page.fill("input[name=password2]", "e2e-password-1")
        page.click("button[type=submit]")
        page.wait_for_url("**/login?registered=admin")
        assert "you are the admin" in page.text_content(".flash.notice")
        page.fill("input[name=username]", "e2e-admin")
        page.fill("input[name=password]", "e2e-password-1")
        page.click("main button[type=submit]")
        page.wait_for_url(base + "/")
        assert page.is_visible("text=Fleet")

        # The fleet shows web-1 once the ingester has stored the seeded files.
        for _ in range(50):
            if page.is_visible("table.matrix >> text=web-1"):
                break
            time.sleep(0.2)
            page.reload()
        assert page.is_visible("table.matrix >> text=web-1")

        # Open web-1's run, expand the failure: traceback and captured output appear.
        page.click("text=Runs")
        page.click("table.runs >> tr:has-text('web-1') >> a:has-text('#')")
        page.wait_for_url("**/runs/*")
        failure = page.locator("details.failure", has_text="test_pay")
        traceback = failure.locator("pre.traceback")
        assert not traceback.is_visible()  # collapsed until asked for
        failure.locator("summary").click()
        traceback.wait_for(state="visible")
        assert "AssertionError: card declined" in traceback.text_content()
        assert failure.locator("text=charging 10 EUR").is_visible()
        # The XSS test's failure expands to its text, shown as text.
        xss_failure = page.locator("details.failure", has_text="test_x[")
        xss_failure.locator("summary").click()
        assert XSS in xss_failure.text_content()
        shot = tmp_path / "run-failure.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10_000

        # The history link leads to the test page.
        failure.locator("a.nodeid").click()
        page.wait_for_url("**/tests?nodeid=*")
        assert page.text_content("h1") == FAILING

        # Pages full of hostile strings: nothing runs.
        page.goto("/minions/" + urllib.request.quote(XSS_MINION, safe=""))
        page.goto("/minions/web-1")
        page.goto("/tests?q=test_x")
        page.goto("/")
        assert page.locator("a[href^='javascript:']").count() == 0

        # Live: a new result appears on /runs without a reload (app.js polling under the CSP).
        page.goto("/runs")
        rows_before = page.locator("table.runs tbody tr").count()
        write_inbox(server["inbox"], result_document("web-2", "20261128081500000002", datetime.now(UTC),
                                                     [{"nodeid": "tests/test_live.py::test_new", "outcome": "passed"}]))
        page.locator("table.runs tbody tr.fresh >> text=web-2").wait_for(timeout=15_000)
        assert page.locator("table.runs tbody tr").count() == rows_before + 1
        assert dialogs == [], dialogs
        assert csp_errors == [], csp_errors
    finally:
        context.close()


def triage_fleet(inbox: Path) -> None:
    """Three more minions: a resolver test fails only where osrelease is 11 (edge-1, edge-2)."""
    start = datetime.now(UTC) - timedelta(minutes=30)
    for index, (minion, release) in enumerate((("edge-1", "11"), ("edge-2", "11"), ("edge-3", "12"))):
        tests = [{"nodeid": "tests/test_checkout.py::test_cart", "outcome": "passed"}]
        if release == "11":
            tests.append({"nodeid": "tests/test_dns.py::test_resolve", "outcome": "failed",
                          "message": f"AssertionError: resolver returned {index} records",
                          "longrepr": f"def test_resolve():\n>       assert len(records) == 3\n"
                                      f"E       AssertionError: resolver returned {index} records\n\n"
                                      "tests/test_dns.py:8: AssertionError"})
        else:
            tests.append({"nodeid": "tests/test_dns.py::test_resolve", "outcome": "passed"})
        write_inbox(inbox, result_document(minion, "20261128083000000003", start + timedelta(seconds=index), tests,
                                           grains={"os": "Debian", "osrelease": release, "roles": ["web"]}))


def log_in(page, base: str) -> None:
    """Log in as the e2e admin (registering it first when this test runs alone)."""
    page.goto("/login")
    page.fill("input[name=username]", "e2e-admin")
    page.fill("input[name=password]", "e2e-password-1")
    page.click("main button[type=submit]")
    page.wait_for_load_state()
    if page.url.startswith(base + "/login"):
        page.goto("/register")
        page.fill("input[name=username]", "e2e-admin")
        page.fill("input[name=password]", "e2e-password-1")
        page.fill("input[name=password2]", "e2e-password-1")
        page.click("button[type=submit]")
        page.wait_for_url("**/login?registered=*")
        log_in(page, base)


def test_fleet_to_failures_to_a_signature_to_a_run_then_triage_and_mute(server, browser, tmp_path):
    base = server["base"]
    triage_fleet(server["inbox"])
    context = browser.new_context(base_url=base)
    page = context.new_page()
    dialogs, csp_errors = [], []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    page.on("console", lambda msg: csp_errors.append(msg.text)
            if msg.type == "error" and "Content Security Policy" in msg.text else None)
    shots = []

    def shot(name: str) -> None:
        path = tmp_path / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        assert path.stat().st_size > 10_000
        shots.append(path)

    try:
        log_in(page, base)
        # Fleet first, then Failures: the first link of the navigation.
        page.goto("/")
        assert page.locator("header nav a").first.text_content() == "Failures"
        for _ in range(50):
            if all(page.is_visible(f"table.matrix >> text={minion}") for minion in ("edge-1", "edge-2", "edge-3")):
                break
            time.sleep(0.2)
            page.reload()
        page.locator("header nav a").first.click()
        page.wait_for_url("**/failures")
        row = page.locator("table.failures tr", has_text="test_resolve")
        row.wait_for()
        assert "some-minions" in row.text_content()
        assert "osrelease=11" in row.text_content() and "2 of 2 failing" in row.text_content()
        shot("failures")

        # The signature's own page: verdict, grains, chart, history, a full traceback.
        row.locator("a.sig").click()
        page.wait_for_url("**/failures/*")
        signature = page.url.rsplit("/", 1)[-1]
        assert page.locator("table.grains", has_text="osrelease").is_visible()
        assert page.locator("figure.chart svg circle").count() >= 1
        assert "resolver returned 1 records" in page.text_content("pre.traceback")
        shot("signature")

        # A run from its history: the failure is marked new and links back to its signature.
        page.locator("table.history a[href^='/runs/']").first.click()
        page.wait_for_url("**/runs/*")
        failure = page.locator("details.failure", has_text="test_resolve")
        assert "new" in failure.locator("summary").text_content()
        failure.locator("summary").click()
        assert failure.locator(f"a.sig[href='/failures/{signature}']").is_visible()
        shot("run")

        # Triage: a known-issue note with its link, then a mute of the signature on osrelease=11.
        page.goto(f"/failures/{signature}")
        page.fill("#known-issue-form input[name=note]", "resolver of the old release, DNS-42")
        page.fill("#known-issue-form input[name=url]", "https://tracker.example/DNS-42")
        page.click("#known-issue-form button[type=submit]")
        page.wait_for_url(f"**/failures/{signature}?notice=*")
        assert "Known issue saved." in page.text_content(".flash.notice")
        assert page.locator("a[href='https://tracker.example/DNS-42']").is_visible()
        page.fill("#mute-form input[name=grain]", "osrelease")
        page.fill("#mute-form input[name=grain_value]", "11")
        page.fill("#mute-form input[name=expires]", "2d")
        page.fill("#mute-form input[name=reason]", "waiting for the upgrade")
        page.click("#mute-form button[type=submit]")
        page.wait_for_url(f"**/failures/{signature}?notice=*")
        assert "Muted until" in page.text_content(".flash.notice")
        assert page.locator("h1 .s-muted").is_visible()
        assert "e2e-admin" in page.text_content("ul.log")
        shot("muted")

        # Muted: still listed on /failures, marked, last, and out of the "failing now" figure.
        page.goto("/failures")
        muted_row = page.locator(f"tr[data-signature='{signature}']")
        assert muted_row.locator(".s-muted").is_visible()
        assert page.locator("table.failures tbody tr").last.get_attribute("data-signature") == signature
        shot("failures-muted")
        assert dialogs == [], dialogs
        assert csp_errors == [], csp_errors
        assert len(shots) == 5
    finally:
        context.close()
