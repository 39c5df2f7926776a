"""The distmon returner and spool module in real minions, against real sshd storage hosts.

Normal delivery uses the shared session host. Faults (host down, a blackhole)
use a storage host and a spool directory of their own, chosen per job with
``--return_kwargs``, so the shared minion and host stay healthy.
"""

from __future__ import annotations

import base64
import json
import re
import time
import uuid
from pathlib import Path

import pytest
import salt.client
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding

from dashboard import signing
from dashboard.models import ResultDocument
from tests.conftest import make_storage_host, wait_for
from tests.loader_support import load_loader_module

DEFAULT_GRAINS = load_loader_module("_returners/distmon.py", "distmon_returner_for_grains").DEFAULT_GRAINS

pytestmark = pytest.mark.integration


def inbox_documents(inbox: Path) -> dict[str, dict]:
    if not inbox.exists():
        return {}
    return {path.stem: json.loads(path.read_text("utf-8")) for path in inbox.glob("*.json") if not path.name.startswith(".")}


def documents_with(inbox: Path, marker: str) -> dict[str, dict]:
    return {jid: doc for jid, doc in inbox_documents(inbox).items() if marker in json.dumps(doc["fun_args"])}


def verify_signature(document: dict, public_key_pem: bytes) -> None:
    """docs/result-format.md "Authenticity", as the storage host does it."""
    unsigned = {key: value for key, value in document.items() if key != "signature"}
    signed = json.dumps(unsigned, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    assert document["signature"]["alg"] == "rsa-pss-sha256"
    serialization.load_pem_public_key(public_key_pem).verify(
        base64.b64decode(document["signature"]["value"]),
        signed,
        padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.MAX_LENGTH),
        hashes.SHA256(),
    )


def cli_kwargs(options: dict) -> list[str]:
    return [f"{key}={value}" for key, value in options.items()]


# -- normal delivery --------------------------------------------------------------------------------


def test_pytestrun_result_arrives_signed_under_its_jid(salt_cli, salt_master, salt_minion, storage_host):
    inbox = storage_host.inbox / salt_minion.id
    before = set(inbox_documents(inbox))
    ret = salt_cli.run("pytestrun.run", "salt://sample_tests/test_passing.py", "--return", "distmon",
                       minion_tgt=salt_minion.id)
    assert ret.returncode == 0, ret
    new = wait_for(lambda: set(inbox_documents(inbox)) - before, timeout=60)
    assert len(new) == 1, new
    jid = new.pop()
    doc = inbox_documents(inbox)[jid]
    assert re.fullmatch(r"\d{20}", jid) and doc["jid"] == jid
    assert doc["format"] == "distmon-result/1"
    assert doc["minion_id"] == salt_minion.id
    assert doc["fun"] == "pytestrun.run"
    assert doc["fun_args"] == ["salt://sample_tests/test_passing.py"]
    assert doc["success"] is True and doc["retcode"] == 0
    assert doc["result"]["status"] == "passed"
    assert doc["result"]["counts"] == ret.data["counts"]
    # The default grains the minion has (roles only when set): what separates machines on /failures.
    assert {"os", "os_family", "osrelease", "osarch", "kernelrelease", "virtual", "pythonversion", "saltversion"} <= set(
        doc["grains"]) <= set(DEFAULT_GRAINS)
    # Signed with the minion's own key, the one the master accepted.
    minion_pub = (Path(salt_minion.config["pki_dir"]) / "minion.pub").read_bytes()
    accepted_pub = (Path(salt_master.config["pki_dir"]) / "minions" / salt_minion.id).read_bytes()
    assert minion_pub.strip() == accepted_pub.strip()
    verify_signature(doc, accepted_pub)
    assert not [p.name for p in inbox.iterdir() if p.name.endswith(".part")]
    # The storage host's own reader accepts it: the contract holds from both sides.
    keys = signing.KeyStore(Path(salt_master.config["pki_dir"]) / "minions")
    assert signing.verify(doc, keys.public_key(salt_minion.id)) is None
    ResultDocument.model_validate(doc)


def test_any_job_with_all_jobs_through_return_kwargs(salt_cli, salt_minion, storage_host):
    marker = f"marker-{uuid.uuid4().hex}"
    ret = salt_cli.run("test.arg", marker, "--return", "distmon", "--return_kwargs", '{"all_jobs": true}',
                       minion_tgt=salt_minion.id)
    assert ret.returncode == 0, ret
    inbox = storage_host.inbox / salt_minion.id
    found = wait_for(lambda: documents_with(inbox, marker), timeout=60)
    assert len(found) == 1, found
    (doc,) = found.values()
    assert doc["fun"] == "test.arg" and doc["result"]["args"] == [marker]


def test_other_jobs_are_not_returned_without_all_jobs(salt_cli, salt_minion, storage_host):
    marker = f"marker-{uuid.uuid4().hex}"
    ret = salt_cli.run("test.arg", marker, "--return", "distmon", minion_tgt=salt_minion.id)
    assert ret.returncode == 0, ret
    time.sleep(2)  # the returner runs after the return: give it the time it would need
    assert documents_with(storage_host.inbox / salt_minion.id, marker) == {}


def test_salt_call_and_schedule_use_the_returner(salt_cli, salt_call_cli, salt_minion, storage_host):
    """The cron job runs salt-call --return distmon; a schedule names the returner."""
    inbox = storage_host.inbox / salt_minion.id
    before = set(inbox_documents(inbox))
    called = salt_call_cli.run("pytestrun.run", "salt://sample_tests/test_passing.py", "--return", "distmon")
    assert called.returncode == 0, called
    # salt-call runs the returner before it exits. Only pytestrun documents count: the same
    # flush also delivers whatever earlier jobs left in web-1's spool.
    docs = inbox_documents(inbox)
    new = [jid for jid in set(docs) - before if docs[jid]["fun"] == "pytestrun.run"]
    assert len(new) == 1, {jid: docs[jid]["fun"] for jid in set(docs) - before}
    doc = docs[new.pop()]
    assert doc["fun"] == "pytestrun.run" and doc["result"]["status"] == "passed" and doc["success"] is True

    marker = f"scheduled-{uuid.uuid4().hex}"
    name = f"distmon-{marker}"
    # run_on_start=False: Salt may run a new interval job at once when it is added (states/distmon
    # sets the same), which raced run_job below into two documents (seen once in CI).
    added = salt_cli.run("schedule.add", name, "function=test.arg", f"job_args=['{marker}']", "seconds=3600",
                         "run_on_start=False", "returner=distmon", 'return_kwargs={"all_jobs": true}',
                         minion_tgt=salt_minion.id)
    assert added.returncode == 0, added
    try:
        assert salt_cli.run("schedule.run_job", name, minion_tgt=salt_minion.id).returncode == 0
        found = wait_for(lambda: documents_with(inbox, marker), timeout=60)
        assert len(found) == 1, found
        assert next(iter(found.values()))["fun"] == "test.arg"
    finally:
        salt_cli.run("schedule.delete", name, minion_tgt=salt_minion.id)


# -- host down during the job, then up ----------------------------------------------------------------


@pytest.fixture(scope="module")
def own_host(harness_root):
    host = make_storage_host(harness_root / f"returner-host-{uuid.uuid4().hex[:6]}")
    yield host
    host.stop()


@pytest.mark.faults
def test_results_spooled_while_host_down_arrive_later_once(salt_cli, salt_minion, own_host, tmp_path):
    spool_dir = str(Path(salt_minion.config["cachedir"]) / "distmon" / f"spool-{uuid.uuid4().hex[:6]}")
    options = {**own_host.returner_config(), "spool_dir": spool_dir, "deadline": 10}
    return_kwargs = json.dumps({**options, "all_jobs": True})
    inbox = own_host.inbox / salt_minion.id
    markers = [f"down-{uuid.uuid4().hex}" for _ in range(2)]

    own_host.stop()
    try:
        for marker in markers:
            ret = salt_cli.run("test.arg", marker, "--return", "distmon", "--return_kwargs", return_kwargs,
                               minion_tgt=salt_minion.id)
            assert ret.returncode == 0, ret

        def waiting():
            listing = salt_cli.run("distmon.spool", f"spool_dir={spool_dir}", minion_tgt=salt_minion.id).data
            return listing if len(listing) == 2 and all(item["last_error"] for item in listing) else None

        listing = wait_for(waiting, timeout=60, interval=0.5)
        assert listing, "both results should be spooled with the reason they wait"
        assert "cannot reach" in listing[0]["last_error"]
        spooled_jids = [item["jid"] for item in listing]
    finally:
        own_host.start()

    # Up again, but presented with a key it does not know: refused, nothing lost.
    empty_known_hosts = tmp_path / "known_hosts"
    empty_known_hosts.write_text("")
    refused = salt_cli.run("distmon.flush", *cli_kwargs({**options, "known_hosts": str(empty_known_hosts)}),
                           minion_tgt=salt_minion.id)
    assert refused.returncode != 0
    assert refused.data["delivered"] == []
    assert "not in known_hosts" in refused.data["waiting"][0]["reason"]
    assert inbox_documents(inbox) == {}

    flushed = salt_cli.run("distmon.flush", *cli_kwargs(options), minion_tgt=salt_minion.id)
    assert flushed.returncode == 0, flushed
    assert flushed.data["delivered"] == spooled_jids and flushed.data["connections"] == 1
    delivered = inbox_documents(inbox)
    assert sorted(delivered) == sorted(spooled_jids)  # zero loss, zero duplicates
    assert sorted(marker for doc in delivered.values() for marker in doc["result"]["args"]) == sorted(markers)

    again = salt_cli.run("distmon.flush", *cli_kwargs(options), minion_tgt=salt_minion.id)
    assert again.data == {**again.data, "delivered": [], "waiting": []}
    assert sorted(inbox_documents(inbox)) == sorted(spooled_jids)
    assert salt_cli.run("distmon.spool", f"spool_dir={spool_dir}", minion_tgt=salt_minion.id).data == []


# -- a blackholed host ----------------------------------------------------------------------------------




@pytest.mark.faults
def test_blackholed_host_never_holds_the_minion(request, salt_cli, salt_master, salt_minion, storage_host, blackhole):
    port, held_connections = blackhole
    deadline = 20
    spool_dir = str(Path(salt_minion.config["cachedir"]) / "distmon" / f"spool-{uuid.uuid4().hex[:6]}")
    return_kwargs = json.dumps({"port": port, "deadline": deadline, "spool_dir": spool_dir, "all_jobs": True})
    marker = f"blackhole-{uuid.uuid4().hex}"
    ret = salt_cli.run("test.arg", marker, "--return", "distmon", "--return_kwargs", return_kwargs,
                       minion_tgt=salt_minion.id)
    assert ret.returncode == 0, ret

    # The checks while the returner is stuck go through the Python API: on a loaded machine each
    # salt CLI start takes seconds, and three of them outlasted the deadline.
    client = salt.client.LocalClient(c_path=salt_master.config_file)
    request.addfinalizer(client.destroy)

    def spool_listing():
        return client.cmd(salt_minion.id, "distmon.spool", kwarg={"spool_dir": spool_dir}, timeout=30)[salt_minion.id]

    # The returner has spooled the result and is now stuck on the blackhole...
    assert wait_for(lambda: held_connections, timeout=30, interval=0.1), "the returner never connected"
    assert [item["last_error"] for item in spool_listing()] == [None]
    # ...and the minion answers and runs jobs meanwhile.
    assert client.cmd(salt_minion.id, "test.ping", timeout=30) == {salt_minion.id: True}
    assert [item["last_error"] for item in spool_listing()] == [None], "the returner gave up before the ping"
    # It gives up at its deadline (a generous bound for a loaded machine) and keeps the result.
    listing = wait_for(lambda: [i for i in spool_listing() if i["last_error"]], timeout=deadline + 30, interval=1.0)
    assert len(listing) == 1 and "deadline" in listing[0]["last_error"], listing

    # The minion's configured (shared) host gets it with a plain flush of that spool.
    flushed = salt_cli.run("distmon.flush", f"spool_dir={spool_dir}", minion_tgt=salt_minion.id)
    assert flushed.returncode == 0, flushed
    assert documents_with(storage_host.inbox / salt_minion.id, marker)


def test_bad_return_kwargs_leave_the_result_spooled_with_the_reason(salt_cli, salt_minion, storage_host):
    """It used to be dropped ('not handled'); now it waits, says why, and a flush delivers it."""
    spool_dir = str(Path(salt_minion.config["cachedir"]) / "distmon" / f"spool-{uuid.uuid4().hex[:6]}")
    marker = f"badopts-{uuid.uuid4().hex}"
    return_kwargs = json.dumps({"all_jobs": True, "spool_dir": spool_dir, "deadline": "30s"})
    ret = salt_cli.run("test.arg", marker, "--return", "distmon", "--return_kwargs", return_kwargs,
                       minion_tgt=salt_minion.id)
    assert ret.returncode == 0, ret

    def waiting():
        listing = salt_cli.run("distmon.spool", f"spool_dir={spool_dir}", minion_tgt=salt_minion.id).data
        return listing if listing else None

    listing = wait_for(waiting, timeout=60, interval=0.5)
    assert listing and len(listing) == 1, listing
    assert "distmon.deadline must be a number of seconds, not '30s'" in listing[0]["last_error"]
    assert documents_with(storage_host.inbox / salt_minion.id, marker) == {}  # not sent with options to fix

    flushed = salt_cli.run("distmon.flush", f"spool_dir={spool_dir}", minion_tgt=salt_minion.id)
    assert flushed.returncode == 0, flushed
    assert flushed.data["delivered"] == [listing[0]["jid"]]
    assert len(documents_with(storage_host.inbox / salt_minion.id, marker)) == 1
