"""Authenticity of result documents (docs/result-format.md "Authenticity"), storage-host side.

A document's ``signature`` is ``{"alg": "rsa-pss-sha256", "value": <base64>}`` over the
canonical JSON of the document without ``signature``. The public key is the minion's accepted
Salt key, ``<pubkeys_dir>/<minion_id>`` (PEM, the master's ``pki/master/minions/<id>``), where
``minion_id`` is the inbox DIRECTORY name: a minion can only sign for itself.

.. code-block:: yaml

    DISTMON_PUBKEYS_DIR: /etc/salt/pki/master/minions   # accepted minion keys
    DISTMON_REQUIRE_SIGNATURE: 1                         # quarantine unsigned / forged files

:func:`check_document` returns ``(signed, problem)``: ``signed`` is True only when the signature
verified; ``problem`` is a reason to quarantine, only ever set when the signature is required
(unsigned, forged, or no key for the minion). With it off, a document whose signature does not
verify is stored like an unsigned one (``signed`` = 0).
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import stat
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from dashboard.models import is_valid_id

ALGORITHM = "rsa-pss-sha256"
MAX_KEY_BYTES = 64 * 1024


def canonical_bytes(document: dict[str, Any]) -> bytes:
    """The bytes a signature covers: the document minus ``signature``, canonical JSON, UTF-8."""
    unsigned = {key: value for key, value in document.items() if key != "signature"}
    return json.dumps(unsigned, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def sign_document(document: dict[str, Any], private_key: rsa.RSAPrivateKey) -> dict[str, Any]:
    """Return a copy of ``document`` with a ``signature`` (used by tests and tools; the returner signs its own)."""
    value = private_key.sign(
        canonical_bytes(document),
        padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.MAX_LENGTH),
        hashes.SHA256(),
    )
    return {**document, "signature": {"alg": ALGORITHM, "value": base64.b64encode(value).decode("ascii")}}


class KeyStore:
    """Public keys of minions, loaded from ``<pubkeys_dir>/<minion_id>`` and cached by (mtime, size)."""

    def __init__(self, pubkeys_dir: Path | None):
        self.pubkeys_dir = Path(pubkeys_dir) if pubkeys_dir else None
        self._cache: dict[str, tuple[tuple[int, int], rsa.RSAPublicKey]] = {}
        self._lock = threading.Lock()

    def public_key(self, minion_id: str) -> rsa.RSAPublicKey | None:
        """The accepted RSA key of ``minion_id``, or None (no directory, no key, invalid id or not RSA)."""
        if self.pubkeys_dir is None or not is_valid_id(minion_id):
            return None
        path = self.pubkeys_dir / minion_id
        try:
            # lstat + O_NOFOLLOW: a key file is only ever a regular file in the keys directory.
            info = os.lstat(path)
        except OSError:
            return None
        if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_KEY_BYTES:
            return None
        stamp = (info.st_mtime_ns, info.st_size)
        with self._lock:
            cached = self._cache.get(minion_id)
        if cached and cached[0] == stamp:
            return cached[1]
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
            with os.fdopen(fd, "rb") as handle:
                pem = handle.read(MAX_KEY_BYTES + 1)
            key = serialization.load_pem_public_key(pem)
        except (OSError, ValueError, TypeError):
            return None
        if not isinstance(key, rsa.RSAPublicKey):
            return None
        with self._lock:
            self._cache[minion_id] = (stamp, key)
        return key


def verify(document: dict[str, Any], public_key: rsa.RSAPublicKey) -> str | None:
    """Check ``document['signature']`` with ``public_key``; None when valid, else why not."""
    return verify_payload(document.get("signature"), lambda: canonical_bytes(document), public_key)


def verify_payload(signature: Any, payload: Callable[[], bytes], public_key: rsa.RSAPublicKey) -> str | None:
    """Check ``signature`` over the signed bytes ``payload()`` gives; None when valid, else why not."""
    if not isinstance(signature, dict):
        return "signature is not an object"
    if signature.get("alg") != ALGORITHM:
        return f"unsupported signature algorithm {str(signature.get('alg'))[:40]!r}"
    value = signature.get("value")
    if not isinstance(value, str) or len(value) > 8192:
        return "signature value is not a base64 string"
    try:
        raw = base64.b64decode(value, validate=True)
        signed_bytes = payload()
    except (binascii.Error, ValueError, UnicodeEncodeError, RecursionError, TypeError):
        return "signature value or document cannot be decoded"
    try:
        public_key.verify(
            raw,
            signed_bytes,
            padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.MAX_LENGTH),
            hashes.SHA256(),
        )
    except InvalidSignature:
        return "signature does not verify against the minion's key (forged, altered or another minion's)"
    return None


def check_document(
    document: dict[str, Any], minion_dir: str, keys: KeyStore, *, require: bool
) -> tuple[bool, str | None]:
    """Decide a document's authenticity: ``(signed, problem)``; quarantine when ``problem``."""
    has_signature = "signature" in document and document["signature"] is not None
    if not has_signature:
        return False, ("unsigned document and DISTMON_REQUIRE_SIGNATURE is on" if require else None)
    key = keys.public_key(minion_dir)
    if key is None:
        if require:
            return False, f"no accepted public key for minion {minion_dir!r}"
        # Cannot check it, but nothing says it is forged: store it as unsigned.
        return False, None
    problem = verify(document, key)
    if problem:
        # Not required: the file is kept like an unsigned one (signed = 0), the caller logs it.
        return False, (problem if require else None)
    return True, None
