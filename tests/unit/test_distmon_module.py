"""_modules/distmon.py: the spool and its SFTP delivery, against a real OpenSSH sshd.

The execution module is loaded with loader mocks (``configure_loader_modules``);
the storage host is real (tools/storage_host.py), started for this module only,
so the fault tests here (sshd down, sessions killed mid-transfer, wrong host
keys, a blackhole) never touch the shared session host.
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
from salt.exceptions import SaltInvocationError

from tests.conftest import make_storage_host
from tests.loader_support import fake_config_option, load_loader_module
from tools.storage_host import free_port

distmon = load_loader_module("_modules/distmon.py", "distmon_execution_module")

MINION_ID = "unit-1"


@pytest.fixture(scope="module")
def host(harness_root):
    storage = make_storage_host(harness_root / f"unit-host-{uuid.uuid4().hex[:6]}")
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
def context():
    return {}


@pytest.fixture
def configure_loader_modules(minion_opts, context):
    return {
        distmon: {
            "__opts__": minion_opts,
            "__salt__": {"config.option": fake_config_option(minion_opts, {})},
            "__context__": context,
        }
    }


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
    return {
        "format": "distmon-result/1",
        "jid": jid,
        "minion_id": MINION_ID,
        "fun": "pytestrun.run",
        "fun_args": [],
        "success": True,
        "retcode": 0,
        "returned_at": "2026-01-01T00:00:00.000Z",
        "grains": {},
        "result": result or {"status": "passed"},
    }


def new_jid() -> str:
    return f"{time.time_ns()}{uuid.uuid4().hex[:4]}"


def visible_files(inbox) -> list[str]:
    return sorted(p.name for p in inbox.iterdir() if not p.name.startswith(".")) if inbox.exists() else []


def spooled_jids(spool_dir) -> list[str]:
    return sorted(name[:-5] for name in os.listdir(spool_dir) if name.endswith(".json")) if os.path.isdir(spool_dir) else []


def closed_port() -> int:
    return free_port()  # bound and released: nothing listens there


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


def test_host_down_then_flush_delivers_everything_once(host, minion_inbox, spool_dir, context):
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
        assert report["delivered"] == [] and context["retcode"] == 1
    finally:
        host.start()
    context.clear()
    report = distmon.flush()
    assert report["delivered"] == jids, report  # oldest first
    assert report["waiting"] == [] and report["connections"] == 1
    assert "retcode" not in context
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


def test_missing_known_hosts_refuses_to_connect(tmp_path, spool_dir):
    with pytest.raises(SaltInvocationError, match="known_hosts"):
        distmon.flush(known_hosts=str(tmp_path / "nope"))
    report = distmon.store(document(new_jid()), known_hosts=str(tmp_path / "nope"))
    assert "known_hosts" in report["waiting"][0]["reason"]


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


def test_connection_refused_is_reported_not_raised(spool_dir):
    report = distmon.store(document(new_jid()), port=closed_port(), deadline=5)
    assert "cannot reach" in report["waiting"][0]["reason"]


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
        distmon._spool_document(distmon._spool_options(distmon._lookup_options({})), MINION_ID, document(jid))
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


# -- spool limits ---------------------------------------------------------------------------------


def test_spool_limit_drops_oldest_and_logs_each_drop(spool_dir, caplog):
    jids = [new_jid() for _ in range(4)]
    with caplog.at_level(logging.ERROR):
        for jid in jids:
            report = distmon.store(document(jid), port=closed_port(), spool_max_files=2)
    assert report["dropped"] == [jids[1]]
    assert spooled_jids(spool_dir) == sorted(jids[2:])
    drops = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    assert len(drops) == 2
    for jid, message in zip(jids[:2], drops, strict=True):
        assert jid in message and MINION_ID in message


def test_no_limits_by_default_never_drop(spool_dir):
    jids = [new_jid() for _ in range(5)]
    for jid in jids:
        assert distmon.store(document(jid), port=closed_port())["dropped"] == []
    assert spooled_jids(spool_dir) == sorted(jids)


# -- validation -------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad_jid", ["", "..", ".", "../etc", "a/b", "a\\b", "a\x00b", ".hidden", "a\nb", "j" * 201, "a b"])
def test_bad_jids_never_become_paths(bad_jid, spool_dir):
    with pytest.raises(SaltInvocationError):
        distmon.store(document(bad_jid))
    assert spooled_jids(spool_dir) == []


@pytest.mark.parametrize("bad_id", ["_jobs", "..", "a/b", "", ".x"])
def test_bad_own_minion_id_is_refused(bad_id, minion_opts, spool_dir):
    minion_opts["id"] = bad_id
    doc = document(new_jid())
    doc["minion_id"] = bad_id
    with pytest.raises(SaltInvocationError):
        distmon.store(doc)


def test_document_of_another_minion_is_refused():
    doc = document(new_jid())
    doc["minion_id"] = "someone-else"
    with pytest.raises(SaltInvocationError, match="not this minion"):
        distmon.store(doc)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"port": "ssh"}, "port"),
        ({"port": 70000}, "port"),
        ({"deadline": 0}, "deadline"),
        ({"deadline": "soon"}, "deadline"),
        ({"spool_max_files": -1}, "spool_max_files"),
        ({"spool_dir": "relative/dir"}, "spool_dir"),
        ({"key": "/nonexistent/key"}, "key"),
        ({"remote_inbox": "/inbox/../etc"}, "remote_inbox"),
        ({"colour": "blue"}, "unknown option"),
    ],
)
def test_bad_options_are_clear_salt_errors(kwargs, match):
    with pytest.raises(SaltInvocationError, match=match):
        distmon.flush(**kwargs)


def test_flush_without_host_is_an_invocation_error(minion_opts):
    del minion_opts["distmon.host"]
    with pytest.raises(SaltInvocationError, match="distmon.host"):
        distmon.flush()


def test_pillar_nested_options_are_used(minion_opts, tmp_path):
    other_spool = tmp_path / "pillar-spool"
    distmon.__salt__["config.option"] = fake_config_option(minion_opts, {"distmon": {"spool_dir": str(other_spool)}})
    jid = new_jid()
    distmon.store(document(jid), port=closed_port())
    assert spooled_jids(other_spool) == [jid]


def test_spool_write_is_atomic_and_cleans_stale_temp_files(spool_dir):
    jid = new_jid()
    distmon.store(document(jid), port=closed_port())
    stale = os.path.join(spool_dir, ".old.json.abc.tmp")
    with open(stale, "w") as handle:
        handle.write("{partial")
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    fresh = os.path.join(spool_dir, ".new.json.abc.tmp")
    with open(fresh, "w") as handle:
        handle.write("{partial")
    assert [item["jid"] for item in distmon.spool()] == [jid]  # temp files are never results
    assert not os.path.exists(stale) and os.path.exists(fresh)
    with open(os.path.join(spool_dir, f"{jid}.json")) as handle:
        assert json.load(handle)["jid"] == jid


def test_missing_remote_inbox_is_reported_and_result_stays_spooled(spool_dir):
    jid = new_jid()
    report = distmon.store(document(jid), remote_inbox="/no-such-inbox")
    assert report["delivered"] == []
    assert "cannot create /no-such-inbox/unit-1" in report["waiting"][0]["reason"]
    assert spooled_jids(spool_dir) == [jid]
