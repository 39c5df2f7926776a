"""_returners/distmon.py with loader mocks: which jobs, the document, its signature, option lookup.

The returner's ``__salt__["distmon.store"]`` is the real execution module
(``_modules/distmon.py``, loader-mocked too), pointed at a closed port, so what
the returner produced is read back from the real spool on disk.
"""

from __future__ import annotations

import base64
import json
import logging
import os

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from tests.conftest import REPO_ROOT
from tests.distmon_support import unused_login_files
from tests.loader_support import fake_config_option, load_loader_module, load_utils
from tools.storage_host import free_port

returner_module = load_loader_module("_returners/distmon.py", "distmon_returner_under_test")
execution_module = load_loader_module("_modules/distmon.py", "distmon_execution_module_for_returner")
UTILS = load_utils()

MINION_ID = "unit-ret-1"
GRAINS = {
    "os": "Debian",
    "osrelease": "12",
    "kernel": "Linux",
    "kernelrelease": "6.1.0",
    "num_cpus": 2,
    "mem_total": 24000,
    "saltversion": "3008.4",
    "os_family": "Debian",
    "virtual": "kvm",
    "pythonversion": [3, 11, 2, "final", 0],
    "roles": ["web", "edge"],
    "id": MINION_ID,
    "fqdn": "not-selected.example",
}


def verify_per_spec(document: dict, public_key_pem: bytes) -> None:
    """docs/result-format.md "Authenticity", written out independently of the returner's helpers."""
    signature = document["signature"]
    assert signature["alg"] == "rsa-pss-sha256"
    unsigned = {key: value for key, value in document.items() if key != "signature"}
    signed_bytes = json.dumps(unsigned, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    public_key = serialization.load_pem_public_key(public_key_pem)
    public_key.verify(
        base64.b64decode(signature["value"]),
        signed_bytes,
        padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.MAX_LENGTH),
        hashes.SHA256(),
    )


@pytest.fixture(scope="module")
def rsa_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def pki_dir(tmp_path, rsa_key):
    pki = tmp_path / "pki"
    pki.mkdir()
    (pki / "minion.pem").write_bytes(
        rsa_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                              serialization.NoEncryption())
    )
    (pki / "minion.pub").write_bytes(
        rsa_key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return pki


@pytest.fixture
def login_files(tmp_path):
    return unused_login_files(tmp_path)


@pytest.fixture
def minion_opts(tmp_path, pki_dir, login_files):
    return {
        "id": MINION_ID,
        "pki_dir": str(pki_dir),
        "cachedir": str(tmp_path / "cache"),
        "grains": GRAINS,
        "distmon.host": "127.0.0.1",
        "distmon.port": free_port(),  # closed: results stay spooled, where the test reads them
        "distmon.user": "distmon",
        "distmon.key": login_files[0],
        "distmon.known_hosts": login_files[1],
        "distmon.remote_inbox": "/inbox",
        "distmon.deadline": 5,
    }


@pytest.fixture
def pillar():
    return {}


@pytest.fixture
def configure_loader_modules(minion_opts, pillar):
    option = fake_config_option(minion_opts, pillar)
    return {
        execution_module: {"__opts__": minion_opts, "__salt__": {"config.option": option}, "__context__": {},
                           "__utils__": UTILS},
        returner_module: {
            "__opts__": minion_opts,
            "__grains__": GRAINS,
            "__salt__": {"config.option": option, "distmon.store": execution_module.store},
        },
    }


@pytest.fixture
def spool_dir(minion_opts):
    return os.path.join(minion_opts["cachedir"], "distmon", "spool")


def spooled(spool_dir) -> dict:
    if not os.path.isdir(spool_dir):
        return {}
    documents = {}
    for name in os.listdir(spool_dir):
        if name.endswith(".json") and not name.startswith("."):
            with open(os.path.join(spool_dir, name), encoding="utf-8") as handle:
                documents[name[:-5]] = json.load(handle)
    return documents


def job_return(fun="pytestrun.run", jid="20261128073000123456", **extra) -> dict:
    ret = {
        "id": MINION_ID,
        "jid": jid,
        "fun": fun,
        "fun_args": ["salt://sample_tests", {"timeout": 60, "__kwarg__": True}],
        "return": {"status": "passed", "counts": {"passed": 3}},
        "retcode": 0,
        "success": True,
    }
    ret.update(extra)
    return ret


# -- which jobs ------------------------------------------------------------------------------


def test_pytestrun_job_is_documented_signed_and_spooled(spool_dir, pki_dir):
    returner_module.returner(job_return())
    documents = spooled(spool_dir)
    assert list(documents) == ["20261128073000123456"]
    doc = documents["20261128073000123456"]
    assert doc["format"] == "distmon-result/1"
    assert doc["jid"] == "20261128073000123456"
    assert doc["minion_id"] == MINION_ID
    assert doc["fun"] == "pytestrun.run"
    assert doc["fun_args"] == ["salt://sample_tests", {"timeout": 60, "__kwarg__": True}]
    assert doc["success"] is True and doc["retcode"] == 0
    assert doc["returned_at"].endswith("Z") and "T" in doc["returned_at"]
    assert doc["result"] == {"status": "passed", "counts": {"passed": 3}}
    # Only the grains the minion has (no osfinger, productname... here), roles when set.
    assert doc["grains"] == {k: GRAINS[k] for k in returner_module.DEFAULT_GRAINS if k in GRAINS}
    assert doc["grains"]["roles"] == ["web", "edge"] and "fqdn" not in doc["grains"]
    verify_per_spec(doc, (pki_dir / "minion.pub").read_bytes())


def test_other_jobs_are_ignored_by_default(spool_dir):
    returner_module.returner(job_return(fun="test.arg", jid="20261128073000000001"))
    assert spooled(spool_dir) == {}


@pytest.mark.parametrize("fun", ["pytestrun.last", "pytestrun.version", "pytestrun.collect"])
@pytest.mark.parametrize("all_jobs", [False, True])
def test_pytestrun_functions_that_run_no_tests_never_become_runs(fun, all_jobs, spool_dir):
    """pytestrun.last would show the previous run again under a new jid; version and collect ran nothing."""
    returner_module.returner(job_return(fun=fun, ret_kwargs={"all_jobs": all_jobs}))
    assert spooled(spool_dir) == {}


def test_failed_job_keeps_retcode_and_success(spool_dir):
    returner_module.returner(job_return(retcode=1, success=False, **{"return": {"status": "failed"}}))
    doc = spooled(spool_dir)["20261128073000123456"]
    assert doc["retcode"] == 1 and doc["success"] is False


# -- configuration, the Salt way ----------------------------------------------------------------


def test_return_kwargs_enable_all_jobs_and_choose_grains(spool_dir):
    ret = job_return(fun="test.arg", jid="20261128073000000002",
                     ret_kwargs={"all_jobs": True, "grains": ["os", "num_cpus", "no_such_grain"]})
    returner_module.returner(ret)
    doc = spooled(spool_dir)["20261128073000000002"]
    assert doc["fun"] == "test.arg"
    assert doc["grains"] == {"os": "Debian", "num_cpus": 2}


def test_return_config_selects_an_alternative_configuration(minion_opts, tmp_path):
    alternative_spool = tmp_path / "alt-spool"
    minion_opts["alternative.distmon.spool_dir"] = str(alternative_spool)
    minion_opts["alternative.distmon.all_jobs"] = True
    returner_module.returner(job_return(fun="test.ping", jid="20261128073000000003", ret_config="alternative"))
    assert list(spooled(alternative_spool)) == ["20261128073000000003"]


def test_pillar_can_turn_signing_off(pillar, spool_dir):
    pillar["distmon"] = {"sign": False}
    returner_module.returner(job_return())
    assert "signature" not in spooled(spool_dir)["20261128073000123456"]


def test_string_options_from_the_command_line_are_coerced(spool_dir):
    returner_module.returner(job_return(ret_kwargs={"sign": "false", "grains": "os,kernel", "deadline": "3"}))
    doc = spooled(spool_dir)["20261128073000123456"]
    assert "signature" not in doc
    assert doc["grains"] == {"os": "Debian", "kernel": "Linux"}


# -- never raises into the minion -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ret_kwargs", "named"),
    [
        ({"sign": "perhaps"}, "distmon.sign must be true or false"),
        ({"grains": 5}, "distmon.grains must be a list"),
        ({"dedline": 10}, "unknown option(s) dedline"),
        ({"deadline": "30s"}, "distmon.deadline must be a number of seconds"),
        ({"spool_dir": "relative"}, "distmon.spool_dir must be an absolute path"),
        ({"port": "ssh"}, "distmon.port must be an integer"),
        ({"option_errors": ["x"]}, "unknown option 'option_errors'"),
    ],
)
def test_bad_options_still_spool_the_result_and_are_logged_once(ret_kwargs, named, spool_dir, caplog):
    with caplog.at_level(logging.WARNING):
        returner_module.returner(job_return(ret_kwargs=ret_kwargs))
    assert list(spooled(spool_dir)) == ["20261128073000123456"]  # the default spool when spool_dir is bad
    records = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(records) == 1, records
    assert named in records[0] and "20261128073000123456" in records[0] and MINION_ID in records[0]
    (waiting,) = execution_module.spool()
    assert named in waiting["last_error"]


@pytest.mark.parametrize("jid", ["../../etc/passwd", "a/b", "..", ""])
def test_hostile_jid_is_refused_and_logged(jid, spool_dir, tmp_path, caplog):
    with caplog.at_level(logging.ERROR):
        returner_module.returner(job_return(jid=jid))
    assert "not handled" in caplog.text
    assert spooled(spool_dir) == {}
    assert not (tmp_path / "etc").exists()


def test_missing_minion_key_spools_unsigned_and_logs(pki_dir, spool_dir, caplog):
    (pki_dir / "minion.pem").unlink()
    with caplog.at_level(logging.ERROR):
        returner_module.returner(job_return())
    assert "cannot sign" in caplog.text and MINION_ID in caplog.text
    assert "signature" not in spooled(spool_dir)["20261128073000123456"]


def test_unloaded_execution_module_is_logged_without_misdirection(spool_dir, caplog):
    del returner_module.__salt__["distmon.store"]
    with caplog.at_level(logging.ERROR):
        returner_module.returner(job_return())
    assert "the distmon execution module is not loaded" in caplog.text
    assert "20261128073000123456" in caplog.text and MINION_ID in caplog.text
    assert "sync_all" not in caplog.text


def test_execution_module_loads_without_paramiko(monkeypatch):
    """What kept results from being spooled: the module refused to load when paramiko was missing."""
    monkeypatch.setitem(UTILS["distmon_transport.deliver"].__globals__, "HAS_PARAMIKO", False)
    assert execution_module.__virtual__() == "distmon"


def test_non_json_returns_are_documented_as_repr(spool_dir, pki_dir):
    returner_module.returner(job_return(**{"return": {"raw": b"\x00\xff", "set": {1}, "tuple": (1, 2)}}))
    doc = spooled(spool_dir)["20261128073000123456"]
    assert doc["result"] == {"raw": repr(b"\x00\xff"), "set": repr({1}), "tuple": [1, 2]}
    verify_per_spec(doc, (pki_dir / "minion.pub").read_bytes())


# -- the signature spec, proven from this side ----------------------------------------------------------


def test_signature_follows_the_documented_spec_with_a_fresh_key():
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    public_pem = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    doc = returner_module._build_document(job_return(**{"return": {"message": "naïve ✓", "n": 1.5}}), ["os"], GRAINS)
    doc["signature"] = UTILS["distmon_signing.sign_document"](doc, pem)
    verify_per_spec(doc, public_pem)
    # The storage host's verifier (dashboard/signing.py, written from the same spec) agrees.
    from dashboard import signing

    assert signing.verify(doc, key.public_key()) is None
    # The document a reader parses from the file verifies too (key order and whitespace do not matter).
    reparsed = json.loads(json.dumps(doc, indent=2))
    verify_per_spec(reparsed, public_pem)
    # Any change to a signed field breaks it.
    tampered = {**reparsed, "success": False}
    with pytest.raises(InvalidSignature):
        verify_per_spec(tampered, public_pem)
    # Another key does not verify it.
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    with pytest.raises(InvalidSignature):
        verify_per_spec(doc, other.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))


def test_pillar_example_is_valid_returner_configuration(pillar):
    """Every key in pillar.example's distmon section is one the returner knows and accepts."""
    import yaml

    example = yaml.safe_load((REPO_ROOT / "pillar.example").read_text())
    returner_keys = set(returner_module.RETURNER_KEYS + UTILS["distmon_options.option_keys"]())
    documented = {key for key in example["distmon"] if key in returner_keys}
    assert documented | {"spool_dir"} == returner_keys  # spool_dir is shown commented out: its default is per minion
    pillar["distmon"] = {key: example["distmon"][key] for key in documented}
    options, _, errors = returner_module._get_options(job_return())
    assert errors == []
    assert options["grains"] == returner_module.DEFAULT_GRAINS
    assert options["sign"] is True and options["all_jobs"] is False
    raw = execution_module._lookup_options({})
    assert raw["host"] == "storage.example.com"
    assert execution_module._lib("distmon_options.transport_options") is not None
    for key in returner_keys:
        assert f"distmon.{key}" in returner_module.__doc__, f"{key} undocumented in the module docstring"
