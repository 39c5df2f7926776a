"""Events on the real master's bus, the re-run reactor and ``distmon.rerun``, on the session stack.

One job on web-1 and web-2 runs a suite served from the master (salt://) whose tests fail on
web-1 only: ``test_broken`` always, ``test_flaky`` the first time. ``salt-run state.event`` sees
``distmon/run/failed`` from web-1 with those two as new failures; the session master's reactor
(tests/conftest.py, states/reactor/distmon_rerun.sls) re-runs exactly those two node ids on web-1
only, once; ``salt-run distmon.rerun jid=...`` does the same by hand. What the dashboard makes of
it is checked by ingesting the documents the minions uploaded into a database of this test.
Spool events: a result that cannot be delivered fires ``distmon/spool/backlog``; the flush that
delivers it fires ``distmon/spool/drained``.
"""

from __future__ import annotations

import json
import shutil
import socket
import threading
import time
import uuid
from pathlib import Path

import pytest

from dashboard.config import Settings
from dashboard.db import connect_sync
from dashboard.ingest import ingest_pending_sync
from tests.conftest import wait_for

pytestmark = pytest.mark.integration

LISTEN_SETTLE = 6.0  # seconds for `salt-run state.event` to start listening on a loaded machine


class BusListener:
    """``salt-run state.event tagmatch=<tag> count=<n>`` in a thread; ``events()`` after it ended."""

    def __init__(self, salt_run_cli, tagmatch: str, count: int = 1):
        self.result = None
        self.thread = threading.Thread(target=lambda: setattr(self, "result", salt_run_cli.run(
            "state.event", f"tagmatch={tagmatch}", f"count={count}", "pretty=False", _timeout=150)), daemon=True)
        self.thread.start()
        time.sleep(LISTEN_SETTLE)

    def events(self, timeout: float = 160) -> list[tuple[str, dict]]:
        self.thread.join(timeout)
        assert self.result is not None, "salt-run state.event did not end"
        found = []
        for line in self.result.stdout.splitlines():
            tag, _, payload = line.partition("\t")
            if payload.startswith("{"):
                found.append((tag, json.loads(payload)))
        return found


def uploaded(inbox: Path, minion: str) -> dict[str, dict]:
    folder = inbox / minion
    if not folder.exists():
        return {}
    return {p.stem: json.loads(p.read_text("utf-8")) for p in folder.glob("*.json") if not p.name.startswith(".")}


def reruns_of(inbox: Path, minion: str, jid: str) -> list[dict]:
    return [doc for doc in uploaded(inbox, minion).values() if doc["result"].get("rerun_of") == jid]


@pytest.fixture(scope="module")
def rerun_suite(file_roots_dir, salt_minion, tmp_path_factory):
    """salt://events_<id>/: test_ok passes; on web-1 only, test_broken fails and test_flaky fails once."""
    name = f"events_{uuid.uuid4().hex[:8]}"
    suite = file_roots_dir / name
    suite.mkdir()
    state = tmp_path_factory.mktemp("flaky") / "web-1.state"
    (suite / "test_rerun_me.py").write_text(
        "from pathlib import Path\n\n"
        f"ON_WEB1 = str(Path(__file__).resolve()).startswith({str(Path(salt_minion.config['cachedir']).resolve())!r})\n"
        f"STATE = Path({str(state)!r})\n\n"
        "def test_ok():\n    pass\n\n"
        "def test_broken():\n    assert not ON_WEB1, 'broken on web-1'\n\n"
        "def test_flaky():\n"
        "    if not ON_WEB1:\n        return\n"
        "    first = not STATE.exists()\n    STATE.write_text('ran')\n"
        "    assert not first, 'flaky: fails the first time'\n"
    )
    yield name
    shutil.rmtree(suite, ignore_errors=True)


def ingest_into_private_db(tmp_path: Path, storage_host, jids: set[str], reruns: list[dict]) -> Path:
    """Copy this test's documents (and the job manifests) into a private inbox; ingest them for real."""
    inbox = tmp_path / "inbox"
    for minion in ("web-1", "web-2"):
        for jid, doc in uploaded(storage_host.inbox, minion).items():
            if jid in jids or doc in reruns:
                target = inbox / minion / f"{jid}.json"
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(json.dumps(doc))
    for jid in jids:
        manifest = storage_host.inbox / "_jobs" / f"{jid}.json"
        if manifest.exists():
            (inbox / "_jobs").mkdir(parents=True, exist_ok=True)
            shutil.copy(manifest, inbox / "_jobs" / manifest.name)
    settings = Settings.from_env({"DISTMON_DB": str(tmp_path / "d.sqlite"), "DISTMON_INBOX": str(inbox),
                                  "DISTMON_INGEST_WORKER": "0"})
    report = ingest_pending_sync(settings)
    assert report.quarantined == 0, report
    return settings.db_path


def test_new_failures_on_the_bus_rerun_by_the_reactor_and_by_hand(
        salt_master, salt_minion, salt_minion_2, salt_cli, salt_run_cli, storage_host, rerun_suite, tmp_path):
    nodeids = {f"{rerun_suite}/test_rerun_me.py::test_broken", f"{rerun_suite}/test_rerun_me.py::test_flaky"}
    listener = BusListener(salt_run_cli, "distmon/run/failed")
    ret = salt_cli.run("pytestrun.run", f"salt://{rerun_suite}", "rerun_new_failures=True", "--return", "distmon",
                       "-L", minion_tgt=f"{salt_minion.id},{salt_minion_2.id}")
    assert ret.returncode != 0 and ret.data, ret  # web-1 fails
    events = listener.events()
    assert len(events) == 1, events
    tag, event = events[0]
    payload = event.get("data", event)
    assert tag == "distmon/run/failed" and event["id"] == salt_minion.id
    assert set(payload["new"]) == nodeids and payload["fixed"] == [] and payload["rerun_of"] is None
    assert payload["counts"]["failed"] == 2 and payload["counts"]["passed"] == 1
    jid = payload["jid"]
    assert jid and payload["rerun"]["wanted"] is True

    # The reactor: one re-run of exactly those node ids, on web-1 only, returned with distmon.
    inbox = storage_host.inbox
    wait_for(lambda: uploaded(inbox, salt_minion.id).get(jid) and uploaded(inbox, salt_minion_2.id).get(jid), 120)
    reruns = wait_for(lambda: reruns_of(inbox, salt_minion.id, jid), 180)
    assert len(reruns) == 1, reruns
    rerun = reruns[0]
    assert {t["nodeid"] for t in rerun["result"]["tests"]} == nodeids
    outcomes = {t["nodeid"].rsplit("::", 1)[1]: t["outcome"] for t in rerun["result"]["tests"]}
    assert outcomes == {"test_broken": "failed", "test_flaky": "passed"}
    time.sleep(5)  # once: a re-run never asks for another, and web-2 (all passed) gets none
    assert len(reruns_of(inbox, salt_minion.id, jid)) == 1 and reruns_of(inbox, salt_minion_2.id, jid) == []

    # By hand: the failed node ids of the job, on the minions where they failed (web-1), list targeting.
    by_hand = salt_run_cli.run("distmon.rerun", f"jid={jid}", "--out", "json")
    assert by_hand.returncode == 1, by_hand  # test_broken still fails
    rows = {key: value for key, value in by_hand.data.items() if key != "retcode"}
    assert set(rows) == {salt_minion.id}, by_hand.data
    assert rows[salt_minion.id]["failed"] == 1 and rows[salt_minion.id]["passed"] == 1
    reruns = wait_for(lambda: len(reruns_of(inbox, salt_minion.id, jid)) == 2 and reruns_of(inbox, salt_minion.id, jid),
                      120)
    assert len(reruns) == 2

    # The dashboard: both re-runs linked to the original, web-1 only, only the two node ids.
    db_path = ingest_into_private_db(tmp_path, storage_host, {jid}, reruns)
    conn = connect_sync(db_path)
    try:
        runs = conn.execute(
            "SELECT m.name, r.jid, r.rerun_of FROM runs r JOIN minions m ON m.id = r.minion_id ORDER BY r.id"
        ).fetchall()
        rerun_runs = [tuple(row) for row in runs if row[2] == jid]
        assert {row[0] for row in rerun_runs} == {salt_minion.id} and len(rerun_runs) == 2
        tested = {row[0] for row in conn.execute(
            "SELECT DISTINCT t.nodeid FROM results x JOIN tests t ON t.id = x.test_id JOIN runs r ON r.id = x.run_id "
            "WHERE r.rerun_of = ?", (jid,))}
        assert tested == nodeids
    finally:
        conn.close()


def test_spool_backlog_and_drained_events(salt_cli, salt_run_cli, salt_minion_2, storage_host):
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there: connection refused
    spool_dir = str(Path(salt_minion_2.config["cachedir"]) / "distmon" / f"spool-{uuid.uuid4().hex[:6]}")
    down = json.dumps({**storage_host.returner_config(), "port": port, "spool_dir": spool_dir, "deadline": 5,
                       "all_jobs": True})
    listener = BusListener(salt_run_cli, "distmon/spool/*")
    ret = salt_cli.run("test.arg", "spool-event", "--return", "distmon", "--return_kwargs", down,
                       minion_tgt=salt_minion_2.id)
    assert ret.returncode == 0, ret
    [(tag, event)] = listener.events()
    backlog = event.get("data", event)
    assert tag == "distmon/spool/backlog" and event["id"] == salt_minion_2.id
    assert backlog["count"] == 1 and backlog["minion_id"] == salt_minion_2.id
    assert backlog["last_error"] and backlog["oldest"]
    listener = BusListener(salt_run_cli, "distmon/spool/*")
    flushed = salt_cli.run("distmon.flush", f"spool_dir={spool_dir}", minion_tgt=salt_minion_2.id)
    assert flushed.returncode == 0 and len(flushed.data["delivered"]) == 1, flushed
    [(tag, event)] = listener.events()
    assert tag == "distmon/spool/drained" and event.get("data", event)["delivered"] == flushed.data["delivered"]


# -- webhooks end to end: real minions, runner, returner, storage host, dashboard process, receiver ----


def _mirror(storage_host, private_inbox: Path, jid: str, minions: list[str]) -> None:
    """Copy one job's manifest and results from the shared inbox into a private one (dot-name, then rename),
    so the dashboard process under test archives its own copies and never the session's files."""
    sources = [storage_host.inbox / "_jobs" / f"{jid}.json"] + [storage_host.inbox / m / f"{jid}.json" for m in minions]
    for source in sources:
        if not source.exists():
            continue
        target = private_inbox / source.parent.name / source.name
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = target.with_name(f".{source.name}.part")
        temporary.write_bytes(source.read_bytes())
        temporary.rename(target)


def test_webhook_gets_one_signed_message_per_real_job_one_for_the_fix_none_while_failing(
        salt_master, salt_minion, salt_minion_2, salt_run_cli, storage_host, file_roots_dir, tmp_path):
    from tests.faults.helpers import DashboardProcess
    from tests.webhook_receiver import WebhookReceiver

    suite = file_roots_dir / f"hooks_{uuid.uuid4().hex[:8]}"
    suite.mkdir()
    flag = tmp_path / "broken.flag"
    (suite / "test_hooked.py").write_text(
        "from pathlib import Path\n\n"
        f"def test_hooked():\n    assert not Path({str(flag)!r}).exists(), 'broken while the flag is there'\n"
    )
    minions = [salt_minion.id, salt_minion_2.id]
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    dashboard = DashboardProcess(tmp_path / "dashboard", inbox, extra_env={
        "DISTMON_WEBHOOK_POLL": "0.1", "DISTMON_PUBLIC_URL": "http://dashboard.example"})
    with WebhookReceiver() as receiver:
        dashboard.start()
        try:
            secret = dashboard.cli("webhook", "add", receiver.url).strip().splitlines()[-1]
            got_per_job, latencies = [], []
            for broken, want in ((True, 1), (True, 0), (False, 1)):
                flag.write_text("x") if broken else flag.unlink()
                before = len(receiver.accepted())
                ret = salt_run_cli.run("distmon.run", f"path=salt://{suite.name}", f"tgt={','.join(minions)}",
                                       "tgt_type=list", "--out", "json")
                assert ret.returncode == (1 if broken else 0), ret
                jid = ret.data[minions[0]]["jid"]
                # The returner and the manifest upload are done when salt-run returns; give SFTP a moment.
                assert wait_for(lambda jid=jid: all((storage_host.inbox / m / f"{jid}.json").exists() for m in minions)
                                and (storage_host.inbox / "_jobs" / f"{jid}.json").exists(), 60)
                mirrored = time.time()
                _mirror(storage_host, inbox, jid, minions)
                if want:
                    received = receiver.wait_for(before + 1, 30)
                    latencies.append(received[-1].at - mirrored)
                else:
                    wait_for(lambda jid=jid: dashboard.ledger([(m, jid) for m in minions]).seen == len(minions), 30)
                    time.sleep(2)
                got_per_job.append(len(receiver.accepted()) - before)
            messages = receiver.accepted()
            assert got_per_job == [1, 0, 1], (got_per_job, [m.json()["summary"] for m in messages])
            assert all(m.signature_ok(secret) for m in messages)
            first, fixed = messages[0].json(), messages[1].json()
            assert first["summary"] == "1 new failure on 2 of 2 minions"
            assert first["new_failures"][0]["nodeid"] == f"{suite.name}/test_hooked.py::test_hooked"
            assert first["new_failures"][0]["minions"] == sorted(minions)
            assert fixed["summary"] == "1 fixed" and fixed["fixed"][0]["minions"] == sorted(minions)
            print(f"webhook latency (job's files in the inbox -> message received): "
                  f"{', '.join(f'{x:.2f} s' for x in latencies)}")
        finally:
            dashboard.stop()
            shutil.rmtree(suite, ignore_errors=True)
