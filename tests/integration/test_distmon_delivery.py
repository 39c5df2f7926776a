"""_modules/distmon.py delivering to a real OpenSSH sshd, the module and its _utils loader-mocked.

The storage host is real (tools/storage_host.py), started for this module only,
so the fault tests here (sshd down, sessions killed mid-transfer, wrong host
keys, a blackhole) never touch the shared session host. What needs no sshd is in
tests/unit/test_distmon_module.py.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import threading
import time
import uuid

import pytest

from tests.conftest import make_storage_host
from tests.distmon_support import (
    closed_port,
    execution_module_dunders,
    new_jid,
    result_document,
    spooled_jids,
    visible_files,
)
from tests.loader_support import load_loader_module

pytestmark = pytest.mark.integration

distmon = load_loader_module("_modules/distmon.py", "distmon_execution_module_delivery")

MINION_ID = "unit-1"


@pytest.fixture(scope="module")
def host(harness_root):
    storage = make_storage_host(harness_root / f"delivery-host-{uuid.uuid4().hex[:6]}")
    yield storage
    storage.stop()


@pytest.fixture
def minion_opts(tmp_path, host):
    pki = tmp_path / "pki"
    pki.mkdir()
    opts = {"id": MINION_ID, "pki_dir": str(pki), "cachedir": str(tmp_path / "cache")}
    opts.update({f"distmon.{key}": value for key, value in host.returner_config().items()})
    return opts


@pytest.fixture
def configure_loader_modules(minion_opts):
    return {distmon: execution_module_dunders(minion_opts)}


@pytest.fixture
def minion_inbox(host):
    """This minion's inbox directory, emptied before each test."""
    inbox = host.inbox / MINION_ID
    if inbox.exists():
        for child in inbox.iterdir():
            child.unlink()
    return inbox


@pytest.fixture
def spool_dir(minion_opts):
    return os.path.join(minion_opts["cachedir"], "distmon", "spool")


def document(jid: str, **result) -> dict:
    return result_document(jid, MINION_ID, **result)

# -- normal delivery ------------------------------------------------------------


def test_store_spools_then_delivers_to_minion_dir(host, minion_inbox, spool_dir):
    jid = new_jid()
    doc = document(jid, status="passed", note="ünïcode")
    report = distmon.store(doc)
    assert report["delivered"] == [jid], report
    assert report["waiting"] == []
    assert report["spooled"] == jid
    assert visible_files(minion_inbox) == [f"{jid}.json"]
    assert json.loads((minion_inbox / f"{jid}.json").read_text("utf-8")) == doc
    assert not [p for p in minion_inbox.iterdir() if p.name.startswith(".")], "temporary .part file left behind"
    assert spooled_jids(spool_dir) == []


def test_same_jid_twice_overwrites_one_file(host, minion_inbox):
    jid = new_jid()
    distmon.store(document(jid, status="failed"))
    report = distmon.store(document(jid, status="passed"))
    assert report["delivered"] == [jid]
    assert visible_files(minion_inbox) == [f"{jid}.json"]
    assert json.loads((minion_inbox / f"{jid}.json").read_text())["result"]["status"] == "passed"


# -- host down, then up ------------------------------------------------------------


def test_host_down_then_flush_delivers_everything_once(host, minion_inbox, spool_dir):
    jids = [new_jid() for _ in range(3)]
    host.stop()
    try:
        for jid in jids:
            report = distmon.store(document(jid))
            assert report["delivered"] == []
            assert [item["jid"] for item in report["waiting"]] == [j for j in jids if j <= jid]
            assert "cannot reach" in report["waiting"][0]["reason"]
        listing = distmon.spool()
        assert [item["jid"] for item in listing] == jids  # oldest first
        assert listing[0]["attempts"] == 3 and "cannot reach" in listing[0]["last_error"]
        assert all(item["size"] > 0 and item["age"] >= 0 for item in listing)
        report = distmon.flush()
        assert report["delivered"] == [] and distmon.__context__["retcode"] == 1
    finally:
        host.start()
    distmon.__context__.clear()
    report = distmon.flush()
    assert report["delivered"] == jids, report  # oldest first
    assert report["waiting"] == [] and report["connections"] == 1
    assert "retcode" not in distmon.__context__
    assert visible_files(minion_inbox) == sorted(f"{jid}.json" for jid in jids)
    assert spooled_jids(spool_dir) == []
    assert distmon.spool() == []
    assert not [n for n in os.listdir(spool_dir) if n.endswith(".err")], "sidecar state left behind"


# -- host keys -----------------------------------------------------------------------


def test_changed_host_key_is_refused_and_result_stays_spooled(host, minion_inbox, spool_dir, tmp_path, caplog):
    other_key = tmp_path / "other_host_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other_key)], check=True)
    key_type, key_b64 = (tmp_path / "other_host_key.pub").read_text().split()[:2]
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:{host.port} {key_type} {key_b64}\n")
    jid = new_jid()
    with caplog.at_level(logging.WARNING):
        report = distmon.store(document(jid), known_hosts=str(known_hosts))
    assert report["delivered"] == []
    assert "CHANGED" in report["waiting"][0]["reason"]
    assert jid in caplog.text and MINION_ID in caplog.text
    assert spooled_jids(spool_dir) == [jid]
    assert visible_files(minion_inbox) == []


def test_unknown_host_key_is_refused_and_result_stays_spooled(host, minion_inbox, spool_dir, tmp_path):
    empty_known_hosts = tmp_path / "known_hosts"
    empty_known_hosts.write_text("")
    jid = new_jid()
    report = distmon.store(document(jid), known_hosts=str(empty_known_hosts))
    assert report["delivered"] == [] and report["connections"] == 0
    assert "not in known_hosts" in report["waiting"][0]["reason"]
    assert spooled_jids(spool_dir) == [jid]
    assert visible_files(minion_inbox) == []
    # With the pinned key the same spool is delivered.
    assert distmon.flush()["delivered"] == [jid]


# -- deadline ---------------------------------------------------------------------------


@pytest.mark.faults
def test_blackholed_host_gives_up_at_the_deadline(blackhole, spool_dir, minion_inbox):
    port, _held = blackhole
    jid = new_jid()
    started = time.monotonic()
    report = distmon.store(document(jid), port=port, deadline=2)
    elapsed = time.monotonic() - started
    assert report["delivered"] == []
    assert report["waiting"][0]["jid"] == jid
    # Correctness, not a benchmark: the deadline bounds the call (generous margin for a loaded machine).
    assert elapsed < 2 + 5, elapsed
    assert spooled_jids(spool_dir) == [jid]
    # It is delivered as soon as the real host is used again.
    assert distmon.flush()["delivered"] == [jid]


# -- sshd killed mid-transfer ----------------------------------------------------------------


@pytest.mark.faults
def test_sessions_killed_mid_transfer_leave_no_final_file_and_retry_delivers(host, minion_inbox, spool_dir):
    jid = new_jid()
    big = document(jid, status="passed", blob="x" * (80 * 1024 * 1024))
    distmon.store(big, port=closed_port())  # spooled only
    assert spooled_jids(spool_dir) == [jid]

    results = {}
    flusher = threading.Thread(target=lambda: results.update(distmon.flush(deadline=120)))
    flusher.start()
    killed = 0
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and flusher.is_alive():
        parts = [p for p in minion_inbox.iterdir() if p.name.endswith(".part")] if minion_inbox.exists() else []
        if parts and parts[0].stat().st_size > 1024 * 1024:
            killed = host.kill_sessions()
            break
        time.sleep(0.005)
    flusher.join(120)
    assert killed, "the upload finished before the sessions could be killed; make the result bigger"
    assert results["delivered"] == []
    assert results["waiting"][0]["jid"] == jid
    assert visible_files(minion_inbox) == [], "a partial upload is visible under a final name"
    assert spooled_jids(spool_dir) == [jid]

    retry = distmon.flush(deadline=120)
    assert retry["delivered"] == [jid], retry
    delivered = minion_inbox / f"{jid}.json"
    assert visible_files(minion_inbox) == [f"{jid}.json"]
    assert json.loads(delivered.read_text()) == big


# -- many results, one connection ---------------------------------------------------------------


def test_200_spooled_results_flushed_over_one_connection(host, minion_inbox, spool_dir):
    jids = []
    for _ in range(200):
        jid = new_jid()
        jids.append(jid)
        distmon.store(document(jid), port=closed_port())  # spooled: nothing listens there
    accepted_before = host.log_path.read_text().count("Accepted publickey")
    report = distmon.flush()
    accepted_after = host.log_path.read_text().count("Accepted publickey")
    assert report["delivered"] == jids  # oldest first
    assert report["connections"] == 1
    assert accepted_after - accepted_before == 1, "more than one SSH login for one flush"
    assert visible_files(minion_inbox) == sorted(f"{jid}.json" for jid in jids)
    assert spooled_jids(spool_dir) == []


def test_concurrent_returns_do_not_corrupt_the_spool(host, minion_inbox, spool_dir):
    jids = [new_jid() for _ in range(6)]
    errors = []

    def one(jid):
        try:
            distmon.store(document(jid))
        except Exception as err:  # noqa: BLE001 - collected and asserted below
            errors.append(err)

    threads = [threading.Thread(target=one, args=(jid,)) for jid in jids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert visible_files(minion_inbox) == sorted(f"{jid}.json" for jid in jids)
    for jid in jids:
        assert json.loads((minion_inbox / f"{jid}.json").read_text())["jid"] == jid
    assert spooled_jids(spool_dir) == []



def test_missing_remote_inbox_is_reported_and_result_stays_spooled(spool_dir):
    jid = new_jid()
    report = distmon.store(document(jid), remote_inbox="/no-such-inbox")
    assert report["delivered"] == []
    assert "cannot create /no-such-inbox/unit-1" in report["waiting"][0]["reason"]
    assert spooled_jids(spool_dir) == [jid]


# -- the runner's job manifest: the same library, so the same guarantees --------------------------------

runner = load_loader_module("_runners/distmon.py", "distmon_runner_delivery")


class RecordingJidEvent:
    def __init__(self):
        self.messages = []

    def fire_event(self, data, tag):
        self.messages.append(data.get("message"))


@pytest.fixture
def jobs_dir(host):
    """<inbox>/_jobs, absent at the start of each test (as on a new storage host)."""
    path = host.inbox / "_jobs"
    if path.exists():
        subprocess.run(["rm", "-rf", str(path)], check=True)
    return path


@pytest.fixture
def manifest_runner(host, tmp_path, configure_loader_modules):
    opts = {f"distmon.{key}": value for key, value in host.returner_config().items()}
    opts.update({"distmon.manifest_deadline": 20, "pki_dir": str(tmp_path), "output": None})
    dunders = execution_module_dunders(opts)
    dunders["__jid_event__"] = RecordingJidEvent()
    with pytest.MonkeyPatch.context() as patch:
        for name, value in dunders.items():
            patch.setattr(runner, name, value, raising=False)
        yield runner


def upload_manifest(module, jid: str):
    upload = module._ManifestUpload(module._manifest(jid, "web-*", "glob", ["web-1"], "2026-12-02T07:00:00.000Z"))
    upload.start()
    upload.wait()
    return upload


def test_two_runs_creating_the_jobs_dir_at_once_both_write_their_manifest(manifest_runner, jobs_dir, host, monkeypatch):
    """Another run creates _jobs between this run's stat and its mkdir: that is fine, not a failure."""
    import paramiko

    real_mkdir = paramiko.SFTPClient.mkdir

    def mkdir_after_another_run(sftp, path, mode=0o777):
        if path.endswith("/_jobs") and not jobs_dir.exists():
            os.mkdir(jobs_dir)  # the other run wins the race...
            account = os.stat(host.inbox)
            os.chown(jobs_dir, account.st_uid, account.st_gid)
        return real_mkdir(sftp, path, mode)  # ...so this mkdir fails: the directory exists

    monkeypatch.setattr(paramiko.SFTPClient, "mkdir", mkdir_after_another_run)
    jid = new_jid()
    upload = upload_manifest(manifest_runner, jid)
    assert upload.done, upload.error
    assert json.loads((jobs_dir / f"{jid}.json").read_text())["jid"] == jid


def test_a_failed_manifest_upload_leaves_no_part_file(manifest_runner, jobs_dir, host):
    jid = new_jid()
    blocker = jobs_dir / f"{jid}.json" / "occupied"  # the final name is a non-empty directory: rename fails
    blocker.parent.mkdir(parents=True)
    blocker.write_text("x")
    account = os.stat(host.inbox)
    for path in (jobs_dir, blocker.parent):
        os.chown(path, account.st_uid, account.st_gid)
    upload = upload_manifest(manifest_runner, jid)
    assert not upload.done
    assert "upload failed" in upload.error
    assert any("manifest not written" in message for message in manifest_runner.__jid_event__.messages)
    assert [p.name for p in jobs_dir.iterdir()] == [f"{jid}.json"], "a .part file was left behind"
