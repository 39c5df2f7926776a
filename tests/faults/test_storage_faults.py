"""Faults on the storage host itself: the dashboard process (with its ingester) killed and hammered, hostile inbox files.

Each case runs real ``uvicorn dashboard.app:app`` processes (tests/faults/helpers.py
``DashboardProcess``) over real SQLite files and counts what they stored.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.faults.helpers import (
    final_files,
    result_document,
    signed_document,
    unique_jids,
    wait_for,
    write_inbox_file,
)

pytestmark = [pytest.mark.integration, pytest.mark.faults]


def counters(dashboard) -> dict[str, int]:
    with dashboard.read_only() as conn:
        return dict(conn.execute("SELECT name, value FROM counters").fetchall())


# -- the dashboard (and its ingester) SIGKILLed during a burst ----------------------------------------------------


def test_dashboard_sigkilled_during_a_burst_of_1000_files(tmp_path, own_dashboards, fault_table):
    files, tests_per_doc, wanted_kills = 1000, 20, 4
    inbox = tmp_path / "inbox"
    minions = [f"crash-{index}" for index in range(4)]
    jids = unique_jids(files)
    docs = [result_document(minions[index % len(minions)], jid, tests=tests_per_doc) for index, jid in enumerate(jids)]
    for doc in docs:
        write_inbox_file(inbox, doc)
    expected = {(doc["minion_id"], doc["jid"]) for doc in docs}
    dashboard = own_dashboards("crash", inbox)

    rng = random.Random(1000)
    at_kill: list[int] = []
    while len(at_kill) < wanted_kills:
        before = dashboard.ledger(expected).seen
        if before == files:
            break
        dashboard.start()
        # Kill as soon as this life has committed something, after a random few more milliseconds.
        wait_for(lambda before=before: dashboard.ledger(expected).seen > before or final_files(dashboard.quarantine),
                 60, 0.005)
        time.sleep(rng.uniform(0, 0.05))
        dashboard.kill()
        at_kill.append(dashboard.ledger(expected).seen)
        rejected = [p for p in final_files(dashboard.quarantine)]
        assert not rejected, f"valid files were quarantined: {(rejected[0].parent / (rejected[0].name + '.reason')).read_text()}"
    dashboard.start()
    wait_for(lambda: dashboard.ledger(expected).seen == files and not final_files(inbox), 120, 0.1)
    ledger = dashboard.ledger(expected)
    totals = counters(dashboard)
    archived = final_files(dashboard.archive)
    quarantined = final_files(dashboard.quarantine)
    left = final_files(inbox)
    listed = [pair for minion in minions for pair in dashboard.api_runs(minion=minion)]
    duplicates = (ledger.duplicates(files * tests_per_doc) + max(0, totals.get("runs", 0) - files)
                  + (len(listed) - len(set(listed))))
    mid_ingest = [count for count in at_kill if 0 < count < files]
    fault_table.record("dashboard+ingester SIGKILLed during 1,000 files", files, ledger.seen, duplicates,
                       f"{len(at_kill)} SIGKILLs at {at_kill} runs; {dashboard.starts} starts; /api/runs lists "
                       f"{len(listed)}; archive {len(archived)}, quarantine {len(quarantined)}, inbox {len(left)}")
    assert len(mid_ingest) >= 3, f"the kills did not land mid-ingest: runs at each kill {at_kill}"
    assert ledger.seen == files, f"{files - ledger.seen} runs missing after restart"
    assert ledger.rows == files and duplicates == 0, (ledger.rows, duplicates, totals)
    assert sorted(listed) == sorted(expected), "the API does not list exactly the 1,000 runs"
    assert totals == {**totals, "runs": files, "results": files * tests_per_doc}, totals
    # Every file accounted for exactly once: archived, none quarantined, none left behind.
    assert len(archived) == files and quarantined == [] and left == [], (len(archived), quarantined, left)
    assert all(not path.name.count(".dup-") for path in archived)


# -- readers on every page while the ingester writes ------------------------------------------------------------------


def test_readers_on_every_page_while_ingest_writes_10000_results(tmp_path, own_dashboards, fault_table):
    files, tests_per_doc, readers = 200, 50, 6
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    dashboard = own_dashboards("readers", inbox)
    dashboard.start()
    token = dashboard.token()
    jids = unique_jids(files)
    minions = [f"load-{index}" for index in range(5)]
    docs = [result_document(minions[index % len(minions)], jid, tests=tests_per_doc) for index, jid in enumerate(jids)]
    expected = {(doc["minion_id"], doc["jid"]) for doc in docs}
    pages = [
        "/", "/runs", "/runs?limit=500", "/runs/1", "/runs/50", "/runs/1/junit.xml", "/runs/1/export.json",
        f"/jobs/{jids[0]}", f"/minions/{minions[0]}", "/tests", "/tests?q=test_1",
        "/tests?nodeid=tests/test_fault.py::test_3", "/flaky", "/slowest", "/compare?a=1&b=2", "/account",
        "/api/runs", "/api/runs?limit=200", "/api/runs/1", "/api/live?after=0", f"/api/jobs/{jids[0]}",
        "/api/minions", f"/api/minions/{minions[1]}", "/api/fleet", "/api/tests?q=test_2",
        "/api/tests?nodeid=tests/test_fault.py::test_7", "/api/flaky", "/api/slowest", "/api/compare?a=1&b=2",
        "/api/me", "/users", "/login", "/register",
    ]  # fmt: skip
    stop = threading.Event()
    answers: list[tuple[str, int, float]] = []  # path, status, when it came back
    bad: list[str] = []
    lock = threading.Lock()

    def read_every_page(offset: int):
        with httpx.Client(base_url=dashboard.url, headers={"Authorization": f"Bearer {token}"}, timeout=60) as client:
            index = offset
            while not stop.is_set():
                path = pages[index % len(pages)]
                index += 1
                try:
                    response = client.get(path)
                    status, body = response.status_code, response.text
                except httpx.HTTPError as err:
                    status, body = 0, f"{type(err).__name__}: {err}"
                with lock:
                    answers.append((path, status, time.monotonic()))
                    if status >= 500 or status == 0 or "database is locked" in body.lower():
                        bad.append(f"{path} -> {status}: {body[:200]}")

    threads = [threading.Thread(target=read_every_page, args=(n * 5,), daemon=True) for n in range(readers)]
    for thread in threads:
        thread.start()
    try:
        wait_for(lambda: len(answers) >= readers * 3, 30, 0.05)  # readers are going before the first write
        writes_began = time.monotonic()
        for wave in range(0, files, 10):
            for doc in docs[wave: wave + 10]:
                write_inbox_file(inbox, doc)
            time.sleep(0.05)
        wait_for(lambda: dashboard.ledger(expected).seen == files, 120, 0.02)
        ingest_done = time.monotonic()
        settled = len(answers)
        wait_for(lambda: len(answers) >= settled + readers * 3, 30, 0.05)  # and still going after the last
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
    ledger = dashboard.ledger(expected)
    ok = sum(1 for _, status, _ in answers if status == 200)
    during = sum(1 for _, _, when in answers if writes_began <= when <= ingest_done)
    fault_table.record("readers on every page while 10,000 results ingest", files, ledger.seen,
                       ledger.duplicates(files * tests_per_doc),
                       f"{len(answers)} requests by {readers} readers over {len(pages)} pages ({during} while "
                       f"ingesting): {ok} x 200, {len(bad)} x 5xx/locked")
    assert bad == [], f"{len(bad)} bad answers, e.g. {bad[:5]}"
    assert ledger.seen == files and ledger.results == files * tests_per_doc
    assert ledger.duplicates(files * tests_per_doc) == 0
    assert during >= readers, f"only {during} answers came back while the ingester wrote: no overlap to speak of"
    assert ok > len(answers) // 2, answers[:40]  # most pages exist and answered (a few ids 404 early on)


# -- hostile files dropped in the real inbox while the real dashboard runs ---------------------------------------------


def tree_fingerprint(root: Path) -> dict[str, str]:
    """Every entry under ``root`` (not following links) with a digest of its content."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            if path.is_symlink():
                found[str(path.relative_to(root))] = "link:" + os.readlink(path)
            elif path.is_file():
                found[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                found[str(path.relative_to(root))] = "dir"
    return found


def test_hostile_inbox_files_quarantined_dashboard_stays_up(faults_root, fault_minions, fault_host, fault_dashboard,
                                                            fault_table):
    minion = fault_minions[0]
    inbox = fault_host.inbox
    outside = faults_root / "outside"
    outside.mkdir(exist_ok=True)
    jids = unique_jids(8)
    # Valid, signed documents outside the inbox: if a link were followed, they would be stored.
    (outside / f"{jids[0]}.json").write_text(json.dumps(signed_document(minion, jids[0])))
    (outside / "secret.txt").write_text("not for the dashboard\n")
    before_outside = tree_fingerprint(outside)
    dashboard_root_before = {p.name for p in fault_dashboard.root.iterdir()}

    own = inbox / minion.id
    own.mkdir(exist_ok=True)
    hostile = {
        f"{minion.id}/{jids[1]}.json": ("symlink", "symlink"),
        f"{minion.id}/{jids[2]}.json": ("not JSON", "not valid json"),
        f"{minion.id}/{jids[3]}.json": ("minion id of another minion", "differs from its inbox directory"),
        f"{minion.id}/{jids[4]}.json": ("nested 100,000 deep", "nested too deeply"),
        f"{minion.id}/{jids[5]}.json": ("a fifo", "not a regular file"),
        f"{minion.id}/evil name;rm -rf.json": ("a bad file name", "unexpected file name"),
        f"{minion.id}/{jids[6]}.json#unsigned": ("unsigned", "unsigned"),
        "fault-linkdir": ("a symlinked minion directory", "symlink"),
        "stray.json": ("a file where minion directories belong", "not a directory"),
    }
    write = {
        f"{minion.id}/{jids[2]}.json": b"{not json at all",
        f"{minion.id}/{jids[3]}.json": json.dumps(signed_document(fault_minions[1], jids[3])).encode(),
        f"{minion.id}/{jids[4]}.json": b"[" * 100_000 + b"]" * 100_000,
        f"{minion.id}/evil name;rm -rf.json": json.dumps(signed_document(minion, jids[7])).encode(),
        "stray.json": json.dumps(signed_document(minion, jids[7])).encode(),
    }
    # Written under dot-names first, then renamed: the ingester never sees a half-written file.
    for name, data in write.items():
        temporary = inbox / (Path(name).parent / f".tmp-{Path(name).name}")
        temporary.write_bytes(data)
        temporary.rename(inbox / name)
    os.symlink(outside / f"{jids[0]}.json", own / f"{jids[1]}.json")
    os.mkfifo(own / f"{jids[5]}.json")
    (own / f".{jids[6]}.tmp").write_text(json.dumps(result_document(minion.id, jids[6])))
    (own / f".{jids[6]}.tmp").rename(own / f"{jids[6]}.json")
    os.symlink(outside, inbox / "fault-linkdir")

    def reasons() -> dict[str, str]:
        found = {}
        for folder in (fault_dashboard.quarantine / minion.id, fault_dashboard.quarantine / "_inbox"):
            if folder.exists():
                for path in folder.glob("*.reason"):
                    found[f"{folder.name}/{path.name[: -len('.reason')]}"] = path.read_text(errors="replace")
        return found

    def key(name: str) -> str:
        parent, _, leaf = name.split("#")[0].rpartition("/")
        return f"{parent or '_inbox'}/{leaf.replace(' ', '_').replace(';', '_')}"

    wait_for(lambda: all(key(name) in reasons() for name in hostile), 30, 0.1)
    found = reasons()
    answers = [fault_dashboard.client().get(path).status_code for path in ("/api/me", "/", "/runs")]
    after_outside = tree_fingerprint(outside)
    new_in_dashboard_root = {p.name for p in fault_dashboard.root.iterdir()} - dashboard_root_before - {
        "archive", "quarantine", "distmon.sqlite-wal", "distmon.sqlite-shm"}
    stored = fault_dashboard.ledger({(minion.id, jid) for jid in jids} | {(fault_minions[1].id, jids[3])}).seen
    quarantined = sum(1 for name in hostile if key(name) in found)
    fault_table.record("hostile files in the real inbox (end to end)", f"{len(hostile)} quarantined",
                       f"{quarantined} quarantined, {stored} stored", 0 if stored == 0 else stored,
                       f"dashboard answered {answers}; outside unchanged: {after_outside == before_outside}")
    for name, (what, reason) in hostile.items():
        assert key(name) in found, f"{what} ({name}) was not quarantined; quarantine has {sorted(found)}"
        assert reason in found[key(name)].lower(), (what, found[key(name)])
    assert answers == [200, 200, 200], answers
    assert fault_dashboard.alive()
    assert stored == 0, "a hostile file was stored"
    assert after_outside == before_outside, "something outside the inbox changed"
    assert new_in_dashboard_root == set(), new_in_dashboard_root
    assert not (inbox / "fault-linkdir").exists() and not (inbox / "stray.json").exists()
