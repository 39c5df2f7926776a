"""
Signing distmon result documents with the minion's own Salt key (docs/result-format.md "Authenticity").

The signature covers the canonical JSON of the document without its
``signature`` key (sorted keys, no whitespace, UTF-8), made with RSA-PSS and
SHA-256 by ``<pki_dir>/minion.pem``, the key the master accepted; the storage
host verifies it against the master's copy of the minion's public key.

:depends: cryptography (a dependency of Salt itself)
"""

from __future__ import annotations

import base64
import json
import os

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

SIGNATURE_ALG = "rsa-pss-sha256"


def canonical_bytes(document: dict) -> bytes:
    """The signed bytes: the document without ``signature``, canonical JSON."""
    unsigned = {key: value for key, value in document.items() if key != "signature"}
    return json.dumps(unsigned, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def sign_document(document: dict, private_key_pem: bytes) -> dict:
    """The ``signature`` object for ``document``, made with an RSA private key in PEM."""
    key = serialization.load_pem_private_key(private_key_pem, password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError(f"the signing key is {type(key).__name__}, not RSA")
    pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.MAX_LENGTH)
    signature = key.sign(canonical_bytes(document), pss, hashes.SHA256())
    return {"alg": SIGNATURE_ALG, "value": base64.b64encode(signature).decode("ascii")}


def minion_key_pem(pki_dir: str) -> bytes:
    """The minion's private key (``<pki_dir>/minion.pem``)."""
    with open(os.path.join(pki_dir, "minion.pem"), "rb") as handle:
        return handle.read()
