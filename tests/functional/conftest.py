"""Fixtures for the dashboard's functional tests: a real app over a real SQLite file.

- ``make_app``: an async context manager building ``create_app(settings)`` over a tmp database
  and inbox, running its lifespan, and yielding an :class:`AppClient` (an httpx.AsyncClient over
  ASGI plus helpers to register / log in / post forms with the CSRF token).
- ``seeded_app``: a module-scoped app whose data came through the real ingester
  (``ingest_pending`` over JSON files written per docs/result-format.md), with an admin
  logged in; ``SEED`` describes what is in it, including hostile strings for escaping tests.

bcrypt's cost is lowered with DISTMON_BCRYPT_ROUNDS=4 to keep the suite fast.
"""

from __future__ import annotations

import json
import os
import re
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

os.environ.setdefault("DISTMON_BCRYPT_ROUNDS", "4")

from dashboard.app import create_app  # noqa: E402
from dashboard.config import Settings  # noqa: E402
from tests.db_backend import database_location  # noqa: E402
from tests.functional.ingest_support import drop_doc  # noqa: E402

ADMIN = ("admin", "admin-password-1")
XSS = '<script>alert("x")</script>'
XSS_MINION = '"><img src=x onerror=alert(1)>'
JS_URL = "javascript:alert(1)"


@pytest.fixture(scope="session")
def anyio_backend():
    return "asyncio"


def make_settings(root: Path, **overrides) -> Settings:
    # Every setting explicit, from this mapping only: a developer's exported DISTMON_* must not
    # leak in here.
    env = {
        "DISTMON_DB": str(database_location(root)),
        "DISTMON_INBOX": str(root / "inbox"),
        "DISTMON_ARCHIVE": str(root / "archive"),
        "DISTMON_ARCHIVE_MODE": "archive",
        "DISTMON_QUARANTINE": str(root / "quarantine"),
        "DISTMON_PUBKEYS_DIR": "",
        "DISTMON_REQUIRE_SIGNATURE": "0",
        "DISTMON_ACCEPT_JUNIT": "1",
        "DISTMON_JUNIT_SOURCES": "",
        "DISTMON_INGEST": "0",
        "DISTMON_REGISTRATION": "approval",
        "DISTMON_SECURE_COOKIES": "auto",
        "DISTMON_BCRYPT_ROUNDS": "4",
        "DISTMON_ALLOWED_HOSTS": "testserver",
    }
    env.update({f"DISTMON_{key.upper()}": str(value) for key, value in overrides.items()})
    (root / "inbox").mkdir(parents=True, exist_ok=True)
    return Settings.from_env(env)


class AppClient:
    """An httpx client over the app, plus the few helpers every test needs."""

    def __init__(self, app, settings: Settings, client: httpx.AsyncClient):
        self.app = app
        self.settings = settings
        self.http = client

    @property
    def db(self):
        return self.app.state.db

    def new_client(self, **kwargs) -> httpx.AsyncClient:
        """Another independent client (its own cookies) over the same app; close it yourself."""
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url="http://testserver", **kwargs)

    async def csrf(self, client: httpx.AsyncClient | None = None, path: str = "/login") -> str:
        page = await (client or self.http).get(path)
        match = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
        assert match, f"no csrf token on {path}: {page.status_code} {page.text[:300]}"
        return match.group(1)

    async def post_form(self, path: str, data: dict, client: httpx.AsyncClient | None = None,
                        csrf_from: str = "/account") -> httpx.Response:
        client = client or self.http
        token = await self.csrf(client, csrf_from)
        return await client.post(path, data={**data, "csrf_token": token})

    async def register(self, username: str, password: str, client: httpx.AsyncClient | None = None):
        client = client or self.http
        token = await self.csrf(client, "/register")
        return await client.post("/register", data={"username": username, "password": password,
                                                    "password2": password, "csrf_token": token})

    async def login(self, username: str, password: str, client: httpx.AsyncClient | None = None):
        client = client or self.http
        token = await self.csrf(client, "/login")
        return await client.post("/login", data={"username": username, "password": password, "csrf_token": token,
                                                 "next": "/"})


@pytest.fixture
def make_app(tmp_path):
    """``async with make_app(registration="open") as app: ...`` — a fresh app over a fresh database."""

    @asynccontextmanager
    async def factory(root: Path | None = None, **overrides):
        settings = make_settings(root or tmp_path, **overrides)
        app = create_app(settings)
        async with app.router.lifespan_context(app):
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as http:
                yield AppClient(app, settings, http)

    return factory


# -- seeding through the real ingester ---------------------------------------------------


def iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def result_document(minion: str, jid: str, started: datetime, tests: list[dict], *, grains: dict | None = None,
                    paths: list[str] | None = None) -> dict:
    """A distmon-result/1 document (docs/result-format.md) with counts that follow the counting rule."""
    counts = {"passed": 0, "failed": 0, "skipped": 0, "xfailed": 0, "xpassed": 0, "errors": 0}
    for test in tests:
        counts["errors" if test["outcome"] == "error" else test["outcome"]] += 1
    status = "failed" if counts["failed"] or counts["errors"] else "passed"
    duration = round(sum(t.get("duration", 0.01) for t in tests), 3)
    entries = []
    for test in tests:
        nodeid = test["nodeid"]
        entries.append({
            "nodeid": nodeid, "outcome": test["outcome"], "when": test.get("when", "call"),
            "duration": test.get("duration", 0.01), "file": nodeid.split("::")[0], "line": test.get("line", 1),
            "markers": [], "message": test.get("message"), "longrepr": test.get("longrepr"),
            "stdout": test.get("stdout"), "stderr": test.get("stderr"),
        })
    finished = started + timedelta(seconds=duration)
    return {
        "format": "distmon-result/1", "jid": jid, "minion_id": minion, "fun": "pytestrun.run", "fun_args": [],
        "success": status == "passed", "retcode": 0 if status == "passed" else 1, "returned_at": iso(finished),
        "grains": grains or {"os": "Debian", "osrelease": "12", "saltversion": "3008.4"},
        "result": {
            "status": status, "exitcode": 0 if status == "passed" else 1, "counts": counts, "tests": entries,
            "started_at": iso(started), "finished_at": iso(finished), "duration": duration,
            "paths": paths or ["salt://sample_tests"], "args": [], "python": "/usr/bin/python3",
            "python_version": "3.11.2", "pytest_version": "9.2.0", "minion_id": minion,
        },
    }


def write_inbox(inbox: Path, doc: dict) -> Path:
    """Drop a document as the returner does (a part file renamed into place): an ingester that is
    running (the e2e server's) never reads it half written."""
    return drop_doc(inbox, doc)


def write_job(inbox: Path, jid: str, targeted: list[str], started: datetime) -> None:
    target = inbox / "_jobs" / f"{jid}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps({"format": "distmon-job/1", "jid": jid, "fun": "pytestrun.run", "tgt": "*",
                                  "tgt_type": "glob", "targeted": targeted, "started_at": iso(started)}))


async def ingest(app_client: AppClient):
    from dashboard.ingest import ingest_pending

    report = await ingest_pending(app_client.db, app_client.settings)
    assert report.quarantined == 0, report
    return report


class Seed:
    """What seeded_app holds: 3 jobs x web-1/web-2 (+ an XSS-named minion in job 3), db-1 never returns."""

    minions = ["web-1", "web-2"]
    jids = ["20261101120000000001", "20261101130000000002", "20261101140000000003"]
    flaky = "tests/test_web.py::test_flaky"
    broken = "tests/test_web.py::test_broken"
    stable = "tests/test_web.py::test_ok"
    added = "tests/test_new.py::test_added"
    xss_test = f"tests/test_xss.py::test_x[{XSS}]"
    traceback = f"Traceback {XSS}\nE   assert 1 == 2"
    stdout_marker = "captured-stdout-marker"


SEED = Seed()


async def seed_through_ingester(app_client: AppClient) -> None:
    inbox = app_client.settings.inbox
    start = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
    for index, jid in enumerate(SEED.jids):
        started = start + timedelta(hours=index)
        write_job(inbox, jid, ["web-1", "web-2", "db-1"], started)
        for minion in SEED.minions:
            tests = [
                {"nodeid": SEED.stable, "outcome": "passed", "duration": 0.5},
                {"nodeid": SEED.flaky, "outcome": "failed" if index == 1 else "passed", "duration": 0.1,
                 "message": "flaky failed", "longrepr": "E   flaky", "stdout": SEED.stdout_marker},
                {"nodeid": SEED.broken, "outcome": "failed" if index >= 1 else "passed", "duration": 2.0,
                 "message": f"broken {XSS}", "longrepr": SEED.traceback, "stdout": SEED.stdout_marker,
                 "stderr": XSS},
                {"nodeid": "tests/test_web.py::test_skip", "outcome": "skipped", "duration": 0.0,
                 "message": "skipped"},
            ]
            if index == 2:
                tests.append({"nodeid": SEED.added, "outcome": "passed", "duration": 0.2})
                tests.append({"nodeid": SEED.xss_test, "outcome": "error", "when": "setup",
                              "message": XSS, "longrepr": SEED.traceback, "duration": 0.01})
            write_inbox(inbox, result_document(minion, jid, started + timedelta(seconds=5), tests,
                                               grains={"os": "Debian", "evil": XSS, "url": JS_URL}))
    # A minion whose id is hostile markup, in the last job.
    write_inbox(inbox, result_document(XSS_MINION, SEED.jids[2], start + timedelta(hours=2, seconds=9),
                                       [{"nodeid": SEED.stable, "outcome": "passed"}],
                                       grains={"evil": XSS, "homepage": JS_URL}))
    await ingest(app_client)


@pytest.fixture(scope="module")
async def seeded_app(tmp_path_factory, anyio_backend):
    """A module-wide app with SEED ingested through the real ingester and the admin logged in."""
    settings = make_settings(tmp_path_factory.mktemp("seeded"))
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as http:
            client = AppClient(app, settings, http)
            await seed_through_ingester(client)
            response = await client.register(*ADMIN)
            assert response.status_code == 303, response.text
            response = await client.login(*ADMIN)
            assert response.status_code == 303, response.text
            yield client
