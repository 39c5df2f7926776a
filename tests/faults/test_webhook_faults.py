"""Webhooks under faults: one message per job, nothing lost, nothing twice, through real processes.

Each case runs the real dashboard process (``python -m dashboard serve``, tests/faults/helpers.py
``DashboardProcess``) with its ingester and webhook sender, over its own inbox and SQLite file, and a
real HTTP receiver on 127.0.0.1 (tests/webhook_receiver.py). Jobs are written to the inbox as the
returner and the runner would (a manifest targeting three minions, then each minion's result).

Figures (in the fault table): messages received per job, distinct delivery ids, attempts, and the
latency from the job's last result landing in the inbox to the receiver holding the message.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

import pytest

from tests.faults.helpers import iso, result_document, unique_jids, wait_for, write_inbox_file
from tests.webhook_receiver import WebhookReceiver

pytestmark = [pytest.mark.integration, pytest.mark.faults]

MINIONS = ("hook-1", "hook-2", "hook-3")
BROKEN = "tests/test_fault.py::test_1"
FAST = {"DISTMON_WEBHOOK_POLL": "0.1", "DISTMON_WEBHOOK_RETRY_BASE": "0.5", "DISTMON_WEBHOOK_RETRY_MAX": "2",
        "DISTMON_WEBHOOK_GROUP_WINDOW": "1", "DISTMON_PUBLIC_URL": "http://dashboard.example"}


def job_documents(jid: str, failing_on: set[str]) -> list[dict]:
    docs = []
    for minion in MINIONS:
        doc = result_document(minion, jid, tests=3)
        if minion in failing_on:
            entry = doc["result"]["tests"][1]
            entry.update(outcome="failed", message="AssertionError: assert 1 == 2", longrepr="E   assert 1 == 2")
            doc["result"]["counts"].update(passed=2, failed=1)
            doc["result"]["status"] = "failed"
            doc.update(success=False, retcode=1)
        docs.append(doc)
    return docs


def write_job(inbox, jid: str, failing_on: set[str]) -> float:
    """The manifest, then every minion's result; returns when the last one landed (time.time())."""
    manifest = {"format": "distmon-job/1", "jid": jid, "fun": "pytestrun.run", "tgt": list(MINIONS),
                "tgt_type": "list", "targeted": list(MINIONS), "started_at": iso(datetime.now(UTC))}
    target = inbox / "_jobs" / f"{jid}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{jid}.json.part")
    temporary.write_text(json.dumps(manifest))
    temporary.rename(target)
    for doc in job_documents(jid, failing_on):
        write_inbox_file(inbox, doc)
    return time.time()


def add_webhook(dashboard, url: str) -> str:
    out = dashboard.cli("webhook", "add", url, "--format", "json")
    return out.strip().splitlines()[-1]


def deliveries(dashboard) -> list[dict]:
    with dashboard.read_only() as conn:
        conn.row_factory = lambda cursor, row: {c[0]: v for c, v in zip(cursor.description, row, strict=True)}
        return conn.execute("SELECT delivery_id, event, status, attempts, last_error FROM deliveries ORDER BY id").fetchall()


def test_one_signed_message_per_job_across_minions_one_for_the_fix_none_while_failing(
        tmp_path, own_dashboards, fault_table):
    inbox = tmp_path / "inbox"
    with WebhookReceiver() as receiver:
        dashboard = own_dashboards("hooks", inbox, extra_env=FAST)
        dashboard.start()
        secret = add_webhook(dashboard, receiver.url)
        latencies = []
        jids = unique_jids(3)
        plan = [(jids[0], {"hook-1", "hook-2"}), (jids[1], {"hook-1", "hook-2"}), (jids[2], set())]
        expected = [1, 0, 1]  # new failure on 2 of 3 minions; still failing; fixed
        got_per_job = []
        for (jid, failing), want in zip(plan, expected, strict=True):
            before = len(receiver.accepted())
            landed = write_job(inbox, jid, failing)
            if want:
                received = receiver.wait_for(before + 1, 30)
                latencies.append(received[-1].at - landed)
            else:
                # Nothing to tell: wait until the job is composed (silently), then a little more.
                wait_for(lambda jid=jid: _composed(dashboard, jid), 30, 0.1)
                time.sleep(1)
            got_per_job.append(len(receiver.accepted()) - before)
        messages = receiver.accepted()
        bodies = [m.json() for m in messages]
        fault_table.record("webhook: 3 jobs x 3 minions (new on 2, still failing, fixed)", "1,0,1 messages",
                           ",".join(map(str, got_per_job)), len(messages) - len({m.delivery_id for m in messages}),
                           f"latency job complete -> received {', '.join(f'{x:.2f} s' for x in latencies)}; "
                           f"summaries {[b['summary'] for b in bodies]}")
        assert got_per_job == expected
        assert all(m.signature_ok(secret) for m in messages)
        assert bodies[0]["summary"] == "1 new failure on 2 of 3 minions" and bodies[0]["jid"] == jids[0]
        assert bodies[0]["new_failures"][0]["nodeid"] == BROKEN
        assert bodies[1]["summary"] == "1 fixed" and bodies[1]["fixed"][0]["minions"] == ["hook-1", "hook-2"]


def _composed(dashboard, jid: str) -> bool:
    with dashboard.read_only() as conn:
        row = conn.execute("SELECT state FROM outbox_jobs WHERE jid = ?", (jid,)).fetchone()
    return bool(row and row[0] == "done")


def test_receiver_down_during_the_job_gets_exactly_one_message_later(tmp_path, own_dashboards, fault_table):
    inbox = tmp_path / "inbox"
    receiver = WebhookReceiver().start()
    port = receiver.port
    receiver.stop()
    dashboard = own_dashboards("down", inbox, extra_env=FAST)
    dashboard.start()
    add_webhook(dashboard, f"http://127.0.0.1:{port}/hook")
    [jid] = unique_jids(1)
    write_job(inbox, jid, {"hook-2"})
    wait_for(lambda: any(d["attempts"] >= 2 for d in deliveries(dashboard)), 30, 0.1)
    down_for = time.time()
    receiver = WebhookReceiver(port=port).start()
    try:
        got = receiver.wait_for(1, 30)
        latency = (got[0].at - down_for) if got else None
        time.sleep(2)  # anything more would come now
        got = receiver.accepted()
        rows = deliveries(dashboard)
        fault_table.record("webhook: receiver down during the job, up later", "1 message", len(got),
                           len(got) - len({m.delivery_id for m in got}),
                           f"attempts {rows[0]['attempts'] if rows else '-'} (backoff 0.5 s doubling); "
                           f"received {latency:.2f} s after the receiver came back" if latency is not None else "none")
        assert len(got) == 1 and rows[0]["status"] == "delivered" and rows[0]["attempts"] >= 3
        assert got[0].json()["jid"] == jid
    finally:
        receiver.stop()


def test_dashboard_sigkilled_between_commit_and_send_sends_exactly_one(tmp_path, own_dashboards, fault_table):
    inbox = tmp_path / "inbox"
    with WebhookReceiver() as receiver:
        dashboard = own_dashboards("crash", inbox, extra_env={**FAST, "DISTMON_TEST_CRASH_AFTER_COMMIT": "1"})
        dashboard.start()
        add_webhook(dashboard, receiver.url)
        [jid] = unique_jids(1)
        write_job(inbox, jid, set(MINIONS))
        # The ingester commits the job (results + outbox) and the process dies before any send.
        assert wait_for(lambda: dashboard.proc.poll() is not None, 30, 0.05), "the crash hook did not fire"
        dashboard.proc = None
        sent_before_restart = len(receiver.accepted())
        dashboard.extra_env.pop("DISTMON_TEST_CRASH_AFTER_COMMIT")
        restarted = time.time()
        dashboard.start()
        got = receiver.wait_for(1, 30)
        time.sleep(1.5)
        got = receiver.accepted()
        fault_table.record("webhook: dashboard dies between commit and send", "1 message", len(got),
                           len(got) - len({m.delivery_id for m in got}),
                           f"{sent_before_restart} sent before the crash; received "
                           f"{got[0].at - restarted:.2f} s after the restart began (process start-up included)" if got else "none")
        assert sent_before_restart == 0
        assert len(got) == 1 and got[0].json()["summary"] == "1 new failure on 3 of 3 minions"


def test_dashboard_sigkilled_after_the_receiver_accepted_resends_the_same_delivery_id(
        tmp_path, own_dashboards, fault_table):
    inbox = tmp_path / "inbox"
    with WebhookReceiver() as receiver:
        dashboard = own_dashboards("resend", inbox, extra_env={**FAST, "DISTMON_TEST_CRASH_AFTER_SEND": "1"})
        dashboard.start()
        add_webhook(dashboard, receiver.url)
        [jid] = unique_jids(1)
        write_job(inbox, jid, {"hook-3"})
        assert wait_for(lambda: dashboard.proc.poll() is not None, 30, 0.05), "the crash hook did not fire"
        dashboard.proc = None
        dashboard.extra_env.pop("DISTMON_TEST_CRASH_AFTER_SEND")
        dashboard.start()
        got = receiver.wait_for(2, 30)
        time.sleep(1.5)
        got = receiver.accepted()
        distinct = {m.delivery_id for m in got}
        rows = deliveries(dashboard)
        fault_table.record("webhook: dashboard dies after the receiver accepted, before recording it",
                           "1 distinct delivery id", len(distinct), f"0 after dedupe ({len(got) - len(distinct)} resend)",
                           f"{len(got)} POSTs with the same X-Distmon-Delivery (receivers dedupe on it); "
                           f"attempts {rows[0]['attempts']}, status {rows[0]['status']}")
        assert len(got) == 2 and len(distinct) == 1 and got[0].body == got[1].body
        assert rows[0]["status"] == "delivered"
