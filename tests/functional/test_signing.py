"""Authenticity on the storage host: signatures verified against the inbox directory's key.

Keys are fresh RSA key pairs written as PEM, exactly like the master's pki/master/minions/<id>.
"""

from __future__ import annotations

import copy

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from dashboard.signing import KeyStore, canonical_bytes, check_document, sign_document, verify
from tests.functional.ingest_support import drop, drop_doc, ingest, make_doc, make_settings, quarantined, rows


@pytest.fixture(scope="module")
def keys():
    # 2048 bits like Salt's minion keys; generated once per module (key generation is the slow part).
    return {name: rsa.generate_private_key(public_exponent=65537, key_size=2048) for name in ("web-1", "web-2")}


@pytest.fixture
def pubkeys_dir(tmp_path, keys):
    directory = tmp_path / "pki" / "minions"
    directory.mkdir(parents=True)
    for name, key in keys.items():
        (directory / name).write_bytes(
            key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        )
    return directory


def signed_doc(keys, minion="web-1", jid="20261128080000000001", signer=None, **extra):
    return sign_document(make_doc(minion, jid, **extra), keys[signer or minion])


def test_canonical_bytes_exclude_the_signature_and_sort_keys(keys):
    doc = signed_doc(keys, grains={"b": "é", "a": 1})
    data = canonical_bytes(doc)
    assert b'"signature"' not in data
    assert data.index(b'"fun"') < data.index(b'"jid"')
    assert "é".encode() in data  # ensure_ascii=False, per the format doc


def test_verify_accepts_the_right_key_and_rejects_tampering(keys):
    doc = signed_doc(keys)
    assert verify(doc, keys["web-1"].public_key()) is None
    assert "does not verify" in verify(doc, keys["web-2"].public_key())
    tampered = copy.deepcopy(doc)
    tampered["result"]["tests"][1]["outcome"] = "passed"
    assert "does not verify" in verify(tampered, keys["web-1"].public_key())
    assert "algorithm" in verify({**doc, "signature": {"alg": "rsa-sha1", "value": "AA=="}}, keys["web-1"].public_key())
    assert "base64" in verify({**doc, "signature": {"alg": "rsa-pss-sha256", "value": 5}}, keys["web-1"].public_key())
    assert "decoded" in verify({**doc, "signature": {"alg": "rsa-pss-sha256", "value": "!!"}}, keys["web-1"].public_key())


def test_keystore_validates_ids_and_never_follows_symlinks(pubkeys_dir, tmp_path, keys):
    store = KeyStore(pubkeys_dir)
    assert store.public_key("web-1") is not None
    assert store.public_key("../minions/web-1") is None
    assert store.public_key("..") is None
    assert store.public_key("nobody") is None
    (pubkeys_dir / "linked").symlink_to(pubkeys_dir / "web-1")
    assert store.public_key("linked") is None
    (pubkeys_dir / "garbage").write_text("not a key")
    assert store.public_key("garbage") is None
    assert KeyStore(None).public_key("web-1") is None


def test_check_document_policy(keys, pubkeys_dir):
    store = KeyStore(pubkeys_dir)
    signed = signed_doc(keys)
    unsigned = make_doc()
    forged = signed_doc(keys, signer="web-2")  # web-2 signing a document for web-1
    assert check_document(signed, "web-1", store, require=True) == (True, None)
    assert check_document(signed, "web-1", store, require=False) == (True, None)
    assert check_document(unsigned, "web-1", store, require=False) == (False, None)
    assert "unsigned" in check_document(unsigned, "web-1", store, require=True)[1]
    assert check_document(forged, "web-1", store, require=False) == (False, None)
    assert "does not verify" in check_document(forged, "web-1", store, require=True)[1]
    assert "no accepted public key" in check_document(signed_doc(keys), "db-9", store, require=True)[1]


def test_ingest_with_signatures_required(tmp_path, keys, pubkeys_dir):
    settings = make_settings(tmp_path, pubkeys_dir=pubkeys_dir, require_signature=True)
    good = signed_doc(keys, jid="20261128080000000001")
    unsigned = make_doc(jid="20261128080000000002")
    tampered = signed_doc(keys, jid="20261128080000000003")
    tampered["result"]["tests"][1]["outcome"] = "passed"
    # web-2 posts under web-1's directory: the file says web-1 and web-2 signed it.
    impostor = signed_doc(keys, jid="20261128080000000004", signer="web-2")
    # web-2's own correctly signed file, dropped into web-1's directory by web-2.
    wrong_dir = signed_doc(keys, "web-2", "20261128080000000005")
    no_key = sign_document(make_doc("db-9", "20261128080000000006"), keys["web-1"])
    for doc in (good, unsigned, tampered, impostor, no_key):
        drop_doc(settings.inbox, doc)
    drop(settings.inbox, "web-1", "20261128080000000005.json", wrong_dir)

    report = ingest(settings)

    assert (report.ingested, report.quarantined) == (1, 5)
    assert rows(settings, "SELECT jid, signed FROM runs") == [{"jid": "20261128080000000001", "signed": 1}]
    reasons = quarantined(settings)
    assert "unsigned" in reasons["web-1/20261128080000000002.json"]
    assert "does not verify" in reasons["web-1/20261128080000000003.json"]
    assert "does not verify" in reasons["web-1/20261128080000000004.json"]
    assert "differs from its inbox directory" in reasons["web-1/20261128080000000005.json"]
    assert "no accepted public key" in reasons["db-9/20261128080000000006.json"]


def test_ingest_without_required_signatures_marks_only_verified_runs_signed(tmp_path, keys, pubkeys_dir):
    settings = make_settings(tmp_path, pubkeys_dir=pubkeys_dir, require_signature=False)
    drop_doc(settings.inbox, signed_doc(keys, jid="20261128080000000011"))
    drop_doc(settings.inbox, make_doc(jid="20261128080000000012"))
    drop_doc(settings.inbox, signed_doc(keys, jid="20261128080000000013", signer="web-2"))
    drop_doc(settings.inbox, {**make_doc(jid="20261128080000000014"), "signature": {"alg": 1}})
    report = ingest(settings)
    assert (report.ingested, report.quarantined) == (3, 1)
    assert rows(settings, "SELECT jid, signed FROM runs ORDER BY jid") == [
        {"jid": "20261128080000000011", "signed": 1},
        {"jid": "20261128080000000012", "signed": 0},
        {"jid": "20261128080000000013", "signed": 0},
    ]
    assert "schema" in quarantined(settings)["web-1/20261128080000000014.json"]


@pytest.mark.parametrize("require", [True, False])
def test_signed_files_verify_on_the_fast_path(tmp_path, keys, pubkeys_dir, monkeypatch, require):
    # The returner signs by default, so the common file is a signed one: it must not need the slow
    # path (json.loads, canonical_bytes, pydantic) to be verified and stored.
    from dashboard.ingest import validate

    def slow_path(*args, **kwargs):
        raise AssertionError("a well-signed file went the slow way")

    monkeypatch.setattr(validate, "check_document", slow_path)
    settings = make_settings(tmp_path, pubkeys_dir=pubkeys_dir, require_signature=require)
    doc = make_doc(jid="20261128080000000021")
    doc["result"]["tests"][0]["duration"] = 4.3e-05  # written 4.3e-05 by Python: the canonical text
    drop_doc(settings.inbox, sign_document(doc, keys["web-1"]))

    assert ingest(settings).ingested == 1
    assert rows(settings, "SELECT jid, signed FROM runs") == [{"jid": "20261128080000000021", "signed": 1}]
