"""_modules/distmon.py with loader mocks and no storage host: the spool, option checks, limits.

Nothing listens on the configured port, so every result stays in the real spool
on disk, where the tests read it. Delivery to a real sshd is in
tests/integration/test_distmon_delivery.py.
"""

from __future__ import annotations

import json
import logging
import os
import time

import pytest
from salt.exceptions import SaltInvocationError

from tests.distmon_support import (
    closed_port,
    execution_module_dunders,
    new_jid,
    result_document,
    spooled_jids,
    unused_login_files,
)
from tests.loader_support import fake_config_option, load_loader_module

distmon = load_loader_module("_modules/distmon.py", "distmon_execution_module")

MINION_ID = "unit-1"


@pytest.fixture
def minion_opts(tmp_path):
    pki = tmp_path / "pki"
    pki.mkdir()
    key, known_hosts = unused_login_files(tmp_path)
    return {
        "id": MINION_ID,
        "pki_dir": str(pki),
        "cachedir": str(tmp_path / "cache"),
        "distmon.host": "127.0.0.1",
        "distmon.port": closed_port(),
        "distmon.user": "distmon",
        "distmon.key": key,
        "distmon.known_hosts": known_hosts,
        "distmon.remote_inbox": "/inbox",
        "distmon.deadline": 5,
    }


@pytest.fixture
def configure_loader_modules(minion_opts):
    return {distmon: execution_module_dunders(minion_opts)}


@pytest.fixture
def spool_dir(minion_opts):
    return os.path.join(minion_opts["cachedir"], "distmon", "spool")


def document(jid: str, **result) -> dict:
    return result_document(jid, MINION_ID, **result)


def test_connection_refused_is_reported_not_raised(spool_dir):
    jid = new_jid()
    report = distmon.store(document(jid))
    assert "cannot reach" in report["waiting"][0]["reason"]
    assert report["spooled"] == jid and spooled_jids(spool_dir) == [jid]
    listing = distmon.spool()
    assert listing[0]["jid"] == jid and listing[0]["attempts"] == 1 and "cannot reach" in listing[0]["last_error"]


def test_missing_known_hosts_refuses_to_connect(tmp_path, spool_dir):
    with pytest.raises(SaltInvocationError, match="known_hosts"):
        distmon.flush(known_hosts=str(tmp_path / "nope"))
    report = distmon.store(document(new_jid()), known_hosts=str(tmp_path / "nope"))
    assert "known_hosts" in report["waiting"][0]["reason"]


# -- a result is spooled first, whatever the options say ---------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"deadline": "30s"}, "distmon.deadline must be a number of seconds, not '30s'"),
        ({"dedline": 30}, "unknown option(s) dedline"),
        ({"port": "ssh"}, "distmon.port must be an integer"),
        ({"remote_inbox": "/inbox/../etc"}, "distmon.remote_inbox must not contain '..'"),
        ({"spool_max_files": -1}, "distmon.spool_max_files must be between"),
    ],
)
def test_bad_options_still_spool_and_the_spool_says_why(kwargs, named, spool_dir, caplog):
    jid = new_jid()
    with caplog.at_level(logging.WARNING):
        report = distmon.store(document(jid), **kwargs)
    assert report["spooled"] == jid and spooled_jids(spool_dir) == [jid]
    assert report["delivered"] == [] and report["connections"] == 0  # not sent with options to fix
    assert any(named in error for error in report["option_errors"]), report
    (listing,) = distmon.spool()
    assert listing["jid"] == jid and named in listing["last_error"]
    assert listing["attempts"] == 0  # nothing was tried
    # Logged once, naming the jid, the minion and the option; no advice to sync modules.
    records = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(records) == 1, records
    assert jid in records[0] and MINION_ID in records[0] and named in records[0]
    assert "sync" not in records[0]


def test_relative_spool_dir_spools_into_the_default_and_says_so(spool_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    jid = new_jid()
    report = distmon.store(document(jid), spool_dir="relative/spool")
    assert spooled_jids(spool_dir) == [jid]
    assert not (tmp_path / "relative").exists()
    assert f"spooled in {spool_dir} instead" in report["option_errors"][0]


def test_once_the_options_are_fixed_a_flush_takes_the_waiting_result(spool_dir, minion_opts):
    jid = new_jid()
    distmon.store(document(jid), deadline="30s")
    report = distmon.flush(deadline=2)  # the minion's own options are fine: it tries (and the host is down)
    assert [item["jid"] for item in report["waiting"]] == [jid]
    assert "cannot reach" in report["waiting"][0]["reason"]
    assert distmon.spool()[0]["attempts"] == 1


def test_without_paramiko_results_are_spooled_and_wait(spool_dir, monkeypatch):
    transport = distmon.__utils__["distmon_transport.deliver"].__globals__
    monkeypatch.setitem(transport, "HAS_PARAMIKO", False)
    jid = new_jid()
    report = distmon.store(document(jid))
    assert spooled_jids(spool_dir) == [jid]
    assert "paramiko is not installed" in report["waiting"][0]["reason"]
    assert "paramiko is not installed" in distmon.spool()[0]["last_error"]


def test_spool_with_bad_options_of_its_own_names_them_and_counts_what_waits(spool_dir, minion_opts):
    distmon.store(document(new_jid()))
    minion_opts["distmon.deadline"] = "30s"
    with pytest.raises(SaltInvocationError, match=r"distmon.deadline .*'30s'; 1 result\(s\) wait in "):
        distmon.spool()


def test_store_stamps_and_signs_when_asked(spool_dir, minion_opts):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                            serialization.NoEncryption())
    with open(os.path.join(minion_opts["pki_dir"], "minion.pem"), "wb") as handle:
        handle.write(pem)
    jid = new_jid()
    doc = document(jid)
    del doc["returned_at"]
    distmon.store(doc, sign=True)
    with open(os.path.join(spool_dir, f"{jid}.json"), encoding="utf-8") as handle:
        spooled = json.load(handle)
    assert spooled["returned_at"].endswith("Z")
    from dashboard import signing

    assert signing.verify(spooled, key.public_key()) is None


# -- spool limits ---------------------------------------------------------------------------------


def test_spool_limit_drops_oldest_and_logs_each_drop(spool_dir, caplog):
    jids = [new_jid() for _ in range(4)]
    with caplog.at_level(logging.ERROR):
        for jid in jids:
            report = distmon.store(document(jid), spool_max_files=2)
    assert report["dropped"] == [jids[1]]
    assert spooled_jids(spool_dir) == sorted(jids[2:])
    drops = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    assert len(drops) == 2
    for jid, message in zip(jids[:2], drops, strict=True):
        assert jid in message and MINION_ID in message


def test_no_limits_by_default_never_drop(spool_dir):
    jids = [new_jid() for _ in range(5)]
    for jid in jids:
        assert distmon.store(document(jid))["dropped"] == []
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
    distmon.store(document(jid))
    assert spooled_jids(other_spool) == [jid]


def test_spool_write_is_atomic_and_cleans_stale_temp_files(spool_dir):
    jid = new_jid()
    distmon.store(document(jid))
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


def test_public_functions_are_only_the_documented_ones():
    public = sorted(name for name, value in vars(distmon).items()
                    if callable(value) and not name.startswith("_") and getattr(value, "__module__", "") == distmon.__name__)
    assert public == ["flush", "spool", "store"]
    for name in public:
        assert "CLI Example:" in getattr(distmon, name).__doc__ and f"distmon.{name}" in getattr(distmon, name).__doc__
