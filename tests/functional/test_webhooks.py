"""Webhooks through the real app, the real ingester and a real HTTP receiver on 127.0.0.1.

The app runs with its own sender off (``DISTMON_WEBHOOKS=0``); each test drives a
:class:`~dashboard.webhooks.sender.Sender` round by round, so what is due when is exact.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from dashboard.webhooks import outbox
from dashboard.webhooks.sender import Sender, http_client
from tests.functional.conftest import (
    ADMIN,
    XSS,
    ingest,
    make_settings,
    result_document,
    write_inbox,
    write_job,
)
from tests.webhook_receiver import WebhookReceiver

pytestmark = pytest.mark.anyio
REPO_ROOT = Path(__file__).resolve().parents[2]
BROKEN = "tests/test_app.py::test_broken"
OK = "tests/test_app.py::test_ok"
FAST = {"webhooks": 0, "webhook_retry_base": 0.2, "webhook_retry_max": 1, "webhook_group_window": 0,
        "public_url": "https://distmon.example.com"}


async def admin(app):
    assert (await app.register(*ADMIN)).status_code == 303
    assert (await app.login(*ADMIN)).status_code == 303


async def add_hook(app, url: str, **fields) -> dict:
    response = await app.http.post("/api/webhooks", json={"url": url, **fields})
    assert response.status_code == 201, response.text
    return response.json()


def job_docs(jid: str, minions: list[str], failing_on: set[str], started: datetime | None = None) -> list[dict]:
    started = started or datetime.now(UTC)
    return [result_document(minion, jid, started, [
        {"nodeid": OK, "outcome": "passed"},
        {"nodeid": BROKEN, "outcome": "failed" if minion in failing_on else "passed",
         "message": f"assert 1 == 2 {XSS}"},
    ]) for minion in minions]


async def run_job(app, jid: str, minions: list[str], failing_on: set[str], *, manifest: bool = True,
                  returned: list[str] | None = None) -> None:
    inbox = app.settings.inbox
    now = datetime.now(UTC)
    if manifest:
        write_job(inbox, jid, minions, now)
    for doc in job_docs(jid, returned if returned is not None else minions, failing_on, now):
        write_inbox(inbox, doc)
    await ingest(app)


async def test_one_signed_message_per_job_then_one_for_the_fix_and_none_while_it_stays_failing(make_app):
    minions = ["web-1", "web-2", "web-3"]
    with WebhookReceiver() as receiver:
        async with make_app(**FAST) as app, http_client(app.settings) as client:
            await admin(app)
            hook = await add_hook(app, receiver.url)
            sender = Sender(app.db, app.settings, client)
            await run_job(app, "20261201000000000001", minions, set())  # all pass: nothing to tell
            await sender.step()
            # The failure arrives minion by minion: nothing goes out until the job is complete.
            inbox, jid, now = app.settings.inbox, "20261201000000000002", datetime.now(UTC)
            write_job(inbox, jid, minions, now)
            docs = job_docs(jid, minions, {"web-1", "web-2"}, now)
            for doc in docs[:2]:
                write_inbox(inbox, doc)
            await ingest(app)
            await sender.step()
            assert receiver.accepted() == []
            write_inbox(inbox, docs[2])
            await ingest(app)
            await sender.step()
            got = receiver.wait_for(1, 5)
            assert len(got) == 1
            message = got[0]
            assert message.signature_ok(hook["secret"])
            assert not message.signature_ok("another-secret")
            body = message.json()
            assert body["event"] == "job" and body["jid"] == jid
            assert body["delivery_id"] == message.delivery_id
            assert body["summary"] == "1 new failure on 2 of 3 minions"
            assert [(f["nodeid"], f["minions"]) for f in body["new_failures"]] == [(BROKEN, ["web-1", "web-2"])]
            assert body["new_failures"][0]["message"].startswith("assert 1 == 2")
            assert body["new_failures"][0]["new_signature"] is True  # first seen in this job, fleet-wide
            assert body["fixed"] == [] and body["missing"] == []
            assert body["links"]["job"] == f"https://distmon.example.com/jobs/{jid}"
            # Still failing in the next job: nothing.
            await run_job(app, "20261201000000000003", minions, {"web-1", "web-2"})
            await sender.step()
            await sender.step()
            assert len(receiver.accepted()) == 1
            # Fixed on both: one message.
            await run_job(app, "20261201000000000004", minions, set())
            await sender.step()
            got = receiver.wait_for(2, 5)
            assert len(got) == 2
            fixed = got[1].json()
            assert fixed["summary"] == "1 fixed" and fixed["fixed"][0]["minions"] == ["web-1", "web-2"]
            assert got[1].delivery_id != got[0].delivery_id
            log = (await app.http.get(f"/api/webhooks/{hook['id']}/deliveries")).json()["deliveries"]
            assert [(d["status"], d["attempts"]) for d in log] == [("delivered", 1), ("delivered", 1)]


async def test_receiver_down_gets_the_message_later_exactly_once(make_app):
    receiver = WebhookReceiver().start()
    port = receiver.port
    receiver.stop()  # down: connection refused on that port
    async with make_app(**FAST) as app, http_client(app.settings) as client:
        await admin(app)
        await add_hook(app, f"http://127.0.0.1:{port}/hook")
        sender = Sender(app.db, app.settings, client)
        await run_job(app, "20261201000000000010", ["web-1", "web-2"], {"web-1"})
        await sender.step()
        await sender.step()
        row = await app.db.fetchone("SELECT status, attempts, last_error FROM deliveries")
        assert row["status"] == "pending" and row["attempts"] >= 1
        assert "Connect" in row["last_error"]
        page = await app.http.get("/admin/webhooks")
        assert "ConnectError" in page.text and "pending" in page.text
        receiver = WebhookReceiver(port=port).start()
        try:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and not receiver.accepted():
                await sender.step()
                time.sleep(0.1)
            for _ in range(5):
                await sender.step()
            assert len(receiver.accepted()) == 1
            row = await app.db.fetchone("SELECT status, attempts, last_error FROM deliveries")
            assert row["status"] == "delivered" and row["attempts"] >= 2 and row["last_error"] is None
        finally:
            receiver.stop()


async def test_a_job_whose_minions_did_not_all_return_is_told_after_the_wait(make_app):
    with WebhookReceiver() as receiver:
        async with make_app(**{**FAST, "webhook_job_wait": 1}) as app, http_client(app.settings) as client:
            await admin(app)
            await add_hook(app, receiver.url, events=["job_incomplete"])
            sender = Sender(app.db, app.settings, client)
            await run_job(app, "20261201000000000020", ["web-1", "web-2", "db-1"], {"web-1"},
                          returned=["web-1", "web-2"])
            await sender.step()
            assert receiver.accepted() == []
            time.sleep(1.1)
            await sender.step()
            got = receiver.wait_for(1, 5)
            assert len(got) == 1
            body = got[0].json()
            # Subscribed to job_incomplete only: the new failure is not in its message.
            assert body["missing"] == ["db-1"] and body["new_failures"] == []
            assert body["summary"] == "1 of 3 targeted minions did not return"


async def test_results_without_a_manifest_are_grouped_and_slack_text_is_escaped(make_app):
    with WebhookReceiver() as receiver:
        async with make_app(**{**FAST, "webhook_group_window": 0.5}) as app, http_client(app.settings) as client:
            await admin(app)
            await add_hook(app, receiver.url, format="slack")
            sender = Sender(app.db, app.settings, client)
            # Two scheduled runs (each minion its own jid, no manifest) within the window: one message.
            await run_job(app, "20261201000000000030", ["web-1"], {"web-1"}, manifest=False)
            await run_job(app, "20261201000000000031", ["web-2"], {"web-2"}, manifest=False)
            await sender.step()
            assert receiver.accepted() == []
            time.sleep(0.6)
            await sender.step()
            got = receiver.wait_for(1, 5)
            assert len(got) == 1
            text = got[0].json()["text"]
            assert "1 new failure on 2 of 2 minions" in text
            assert "web-1, web-2" in text
            assert "<script>" not in text and "&lt;script&gt;" in text
            assert "<https://distmon.example.com/tests?nodeid=" in text


def configure_interval(conn, seconds: int) -> None:
    """Every minion expected every ``seconds``, with the moment it turns late that the ingester
    would have stored for that interval (dashboard/lateness.py)."""
    from dashboard.lateness import late_after

    for minion_id, first_seen, last_seen, runs in conn.execute(
            "SELECT id, first_seen, last_seen, runs FROM minions").fetchall():
        conn.execute("UPDATE minions SET expected_interval = ?, late_after = ? WHERE id = ?",
                     (seconds, late_after(first_seen, last_seen, runs, seconds), minion_id))


async def test_late_minions_quarantined_files_digest_and_test_message(make_app):
    with WebhookReceiver() as receiver:
        async with make_app(**FAST) as app, http_client(app.settings) as client:
            await admin(app)
            hook = await add_hook(app, receiver.url, digest_hour=0)
            sender = Sender(app.db, app.settings, client)
            old = datetime.now(UTC) - timedelta(hours=5)
            write_inbox(app.settings.inbox, job_docs("20261201000000000040", ["cron-1"], set(), old)[0])
            await ingest(app)
            await app.db.write(configure_interval, 3600)
            bad = app.settings.inbox / "web-1" / "20261201000000000041.json"
            bad.parent.mkdir(parents=True, exist_ok=True)
            bad.write_text("{not json")
            from dashboard.ingest import ingest_pending

            assert (await ingest_pending(app.db, app.settings)).quarantined == 1
            await sender.step()  # late check, digest, the quarantine group
            await sender.step()
            assert (await app.http.post(f"/api/webhooks/{hook['id']}/test")).status_code == 202
            await sender.step()
            got = receiver.wait_for(4, 5)
            events = sorted(item.json()["event"] for item in got)
            assert events == ["digest", "group", "minion_late", "ping"], events
            by_event = {item.json()["event"]: item.json() for item in got}
            assert by_event["minion_late"]["late"][0]["minion"] == "cron-1"
            assert by_event["group"]["quarantined"][0]["file"] == "web-1/20261201000000000041.json"
            assert "not valid JSON" in by_event["group"]["quarantined"][0]["reason"]
            assert by_event["digest"]["digest"]["late"] == ["cron-1"]
            # Told once: the next rounds (the late check forced again) send nothing new.
            sender.next_late = sender.next_digest = 0
            await sender.step()
            await sender.step()
            assert len(receiver.accepted()) == 4
            # Reporting again is told too.
            write_inbox(app.settings.inbox, job_docs("20261201000000000042", ["cron-1"], set())[0])
            await ingest(app)
            sender.next_late = 0
            await sender.step()
            got = receiver.wait_for(5, 5)
            assert got[-1].json()["back"][0]["minion"] == "cron-1"


async def test_a_receiver_that_points_nowhere_is_a_failed_delivery_never_a_dead_sender(make_app, blackhole):
    port, _held = blackhole
    async with make_app(**{**FAST, "webhook_max_attempts": 2, "webhook_timeout": 0.5}) as app, \
            http_client(app.settings) as client:
        await admin(app)
        nowhere = await add_hook(app, "http://nonexistent.invalid/hook")
        silent = await add_hook(app, f"http://127.0.0.1:{port}/hook")
        sender = Sender(app.db, app.settings, client)
        await run_job(app, "20261201000000000050", ["web-1"], {"web-1"})
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            await sender.step()
            rows = await app.db.fetchall("SELECT webhook_id, status, attempts, last_error FROM deliveries")
            if rows and all(row["status"] == "failed" for row in rows):
                break
            time.sleep(0.1)
        by_hook = {row["webhook_id"]: row for row in rows}
        assert by_hook[nowhere["id"]]["status"] == "failed" and by_hook[nowhere["id"]]["attempts"] == 2
        assert by_hook[silent["id"]]["status"] == "failed"
        assert "Timeout" in by_hook[silent["id"]]["last_error"]
        # An admin can send a given-up delivery again.
        page = await app.http.get("/admin/webhooks")
        assert "Retry now" in page.text


async def test_webhook_admin_api_and_page_never_show_the_secret_again(make_app):
    async with make_app(webhooks=0) as app:
        await admin(app)
        for bad, why in (("ftp://example.com/x", "http:// or https://"), ("javascript:alert(1)", "http:// or https://"),
                         ("http://", "no host"), ("https://user:pw@example.com/", "user name"),
                         ("not a url", "spaces"), ("http://example.com:99999/", "not a valid URL")):
            response = await app.http.post("/api/webhooks", json={"url": bad})
            assert response.status_code == 400 and why in response.json()["detail"], (bad, response.text)
        response = await app.http.post("/api/webhooks", json={"url": "https://example.com/x", "events": ["nope"]})
        assert response.status_code == 400 and "Unknown event" in response.json()["detail"]
        created = await add_hook(app, "https://hooks.example.com/services/T000/B000/XXXXXXXXXXXXXXXXXXXXXXXX",
                                 format="slack", events=["new_failure", "fixed"])
        secret = created["secret"]
        assert len(secret) >= 40
        listing = await app.http.get("/api/webhooks")
        assert secret not in listing.text and "XXXXXXXXXXXXXXXXXXXXXXXX" not in listing.text
        assert listing.json()["webhooks"][0]["events"] == ["new_failure", "fixed"]
        # The page: created through the form, the secret shown on that answer only.
        token = await app.csrf(path="/admin/webhooks")
        response = await app.http.post("/admin/webhooks", data={"url": "https://chat.example.com/h", "format": "json",
                                                                "events": ["fixed"], "csrf_token": token})
        assert response.status_code == 201
        import re

        shown = re.search(r'<code class="token">([^<]+)</code>', response.text).group(1)
        page = await app.http.get("/admin/webhooks")
        assert shown not in page.text and secret not in page.text
        bad = await app.http.post("/admin/webhooks", data={"url": "gopher://x", "csrf_token": token})
        assert bad.status_code == 400 and "http:// or https://" in bad.text
        no_csrf = await app.http.post("/admin/webhooks", data={"url": "https://x.example.com/"})
        assert no_csrf.status_code == 403
        assert (await app.http.delete(f"/api/webhooks/{created['id']}")).status_code == 200
        assert (await app.http.delete(f"/api/webhooks/{created['id']}")).status_code == 404
        # Not for non-admins.
        async with app.new_client() as other:
            await app.register("bob-user", "bob-password-1", other)
            await app.db.write(lambda c: c.execute("UPDATE users SET status = 'active' WHERE username = 'bob-user'"))
            await app.login("bob-user", "bob-password-1", other)
            assert (await other.get("/api/webhooks")).status_code == 403
            assert (await other.get("/admin/webhooks")).status_code == 403


def cli(root: Path, *args: str) -> subprocess.CompletedProcess:
    settings = make_settings(root)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "DISTMON_DB": str(settings.db_path)}
    return subprocess.run([sys.executable, "-m", "dashboard", *args], capture_output=True, text=True, env=env,
                          cwd=root, timeout=120)


def test_webhook_cli_add_list_test_remove(tmp_path):
    added = cli(tmp_path, "webhook", "add", "https://chat.example.com/hooks/abc", "--format", "slack",
                "--events", "new_failure", "fixed", "--digest-hour", "7")
    assert added.returncode == 0, added.stderr
    secret = added.stdout.strip().splitlines()[-1]
    assert "events new_failure,fixed, digest 07:00 UTC" in added.stdout and len(secret) >= 40
    listing = cli(tmp_path, "webhook", "list")
    assert "chat.example.com" in listing.stdout and secret not in listing.stdout
    for bad, why in ((["add", "file:///etc/passwd"], "http:// or https://"),
                     (["add", "https://x.example.com/", "--events", "everything"], "Unknown event"),
                     (["add", "https://x.example.com/", "--digest-hour", "25"], "0 to 23"),
                     (["remove", "99"], "No webhook 99")):
        refused = cli(tmp_path, "webhook", *bad)
        assert refused.returncode == 2 and why in refused.stderr and "Traceback" not in refused.stderr, refused.stderr
    queued = cli(tmp_path, "webhook", "test", "1")
    assert queued.returncode == 0, queued.stderr
    log = cli(tmp_path, "webhook", "deliveries", "1")
    assert "ping" in log.stdout and "pending" in log.stdout
    assert cli(tmp_path, "webhook", "remove", "1").returncode == 0
    assert "chat.example.com" not in cli(tmp_path, "webhook", "list").stdout


def test_rendering_and_signature_are_stable_for_retries():
    from dashboard.webhooks import messages

    facts = {"event": "job", "jid": "1", "targeted": ["a", "b"], "returned": ["a", "b"], "missing": [],
             "new_failures": [{"nodeid": "t::x", "minions": ["a"], "message": "boom"}], "fixed": []}
    body = messages.render(facts, "json", "id-1", "2026-12-01T00:00:00Z", "")
    assert body == messages.render(facts, "json", "id-1", "2026-12-01T00:00:00Z", "")
    assert json.loads(body)["summary"] == "1 new failure on 1 of 2 minions"
    assert messages.select(facts, ["fixed"]) is None
    assert messages.sign_body("k", body).startswith("sha256=") and len(messages.sign_body("k", body)) == 71
    assert outbox.change_kind(False, True) == "new_failure" and outbox.change_kind(True, False) == "fixed"
    assert outbox.change_kind(True, True) is None and outbox.change_kind(False, False) is None
    _ = httpx  # the sender's client library


async def test_muted_failures_send_nothing_and_signatures_ride_along(make_app):
    from dashboard.triage import add_mute

    with WebhookReceiver() as receiver:
        async with make_app(**FAST) as app, http_client(app.settings) as client:
            await admin(app)
            await add_hook(app, receiver.url)
            sender = Sender(app.db, app.settings, client)
            # Muted by signature on every minion: the signature of BROKEN's failure, once it exists.
            await run_job(app, "20261201000000000060", ["web-1"], {"web-1"})
            await sender.step()
            first = receiver.wait_for(1, 5)
            signature = first[0].json()["new_failures"][0]["signature"]
            assert signature and first[0].json()["new_failures"][0]["new_signature"] is True
            await run_job(app, "20261201000000000061", ["web-1"], set())  # fixed: told
            await sender.step()
            assert len(receiver.wait_for(2, 5)) == 2
            # A known failure mode reaching another minion: a new failure there, not a new signature.
            await run_job(app, "20261201000000000062", ["web-2"], {"web-2"})
            await sender.step()
            spread = receiver.wait_for(3, 5)[-1].json()["new_failures"][0]
            assert spread["signature"] == signature and spread["new_signature"] is False
            await app.db.write(lambda c: add_mute(c, ADMIN[0], kind="signature", target=signature, expires="7d"))
            await run_job(app, "20261201000000000063", ["web-1", "web-3"], {"web-1", "web-3"})
            await sender.step()
            await sender.step()
            assert len(receiver.accepted()) == 3
            composed = await app.db.fetchval("SELECT COUNT(*) FROM outbox_events WHERE composed_at IS NULL")
            assert composed == 0  # handled (muted), not left waiting
