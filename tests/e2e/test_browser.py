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
