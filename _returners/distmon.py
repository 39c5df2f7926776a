"""
Return ``pytestrun`` results to the distmon storage host: signed, spooled, then uploaded over SFTP.

For every ``pytestrun.*`` job (every job with ``all_jobs``) the returner builds
the result document of docs/result-format.md (the function's return plus jid,
minion id, fun, fun_args, success, retcode, a UTC timestamp and selected
grains), signs it with the minion's own Salt key, writes it atomically into the
spool on the minion and then flushes the spool (this result and any older ones
that are still waiting) to ``<remote_inbox>/<minion_id>/<jid>.json`` within
``deadline`` seconds. It runs after the job's return was sent to the master and
never raises into the minion: problems are logged with the jid and minion id,
and the result stays spooled for the next return or ``distmon.flush``.

Spooling and uploading live in the ``distmon`` execution module
(``_modules/distmon.py``), called through ``__salt__["distmon.store"]``, so
``distmon.flush`` and the returner share one implementation: sync both with
``saltutil.sync_all``.

:depends: paramiko, cryptography

Configuration
-------------

Options are looked up with ``salt.returners.get_returner_options``: minion
config, grains, pillar, ``--return_config`` (alternative key prefix
``<name>.distmon.<key>``) and ``--return_kwargs`` (highest priority), then
validated.

.. code-block:: yaml

    # where results go (required for delivery)
    distmon.host: storage.example.com
    distmon.port: 22
    distmon.user: distmon
    distmon.key: /etc/salt/distmon/id_ed25519          # SFTP login key (key auth only, no agent)
    distmon.known_hosts: /etc/salt/distmon/known_hosts  # pinned host key; unknown/changed keys refused
    distmon.remote_inbox: /inbox

    # the spool on the minion
    distmon.spool_dir: /var/cache/salt/minion/distmon/spool  # default: <cachedir>/distmon/spool
    distmon.deadline: 30            # seconds: spool lock + connect + transfer, all together
    distmon.spool_max_files: 0      # 0 = never drop; else the oldest results are dropped (logged)
    distmon.spool_max_bytes: 0      # 0 = never drop; else the oldest results are dropped (logged)

    # the document
    distmon.grains: [os, osrelease, kernel, kernelrelease, num_cpus, mem_total, saltversion]
    distmon.all_jobs: false         # true: return every job, not only pytestrun.*
    distmon.sign: true              # sign with <pki_dir>/minion.pem (RSA-PSS SHA-256)

The same keys nested under ``distmon:`` in pillar (see ``pillar.example``).

Usage:

.. code-block:: bash

    salt '*' pytestrun.run salt://sample_tests --return distmon
    salt 'web-1' pytestrun.run salt://sample_tests --return distmon --return_kwargs '{"deadline": 10}'
"""

from __future__ import annotations

import base64
import json
import logging
import os
from datetime import UTC, datetime

import salt.returners

try:
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding, rsa

    HAS_CRYPTOGRAPHY = True
except ImportError:  # pragma: no cover - the minion requirements pin cryptography
    HAS_CRYPTOGRAPHY = False

log = logging.getLogger(__name__)

__virtualname__ = "distmon"

FORMAT = "distmon-result/1"
SIGNATURE_ALG = "rsa-pss-sha256"
DEFAULT_GRAINS = ["os", "osrelease", "kernel", "kernelrelease", "num_cpus", "mem_total", "saltversion"]
RETURNER_KEYS = ("grains", "all_jobs", "sign")
# Passed on to distmon.store, which validates them (one home for their rules).
TRANSPORT_KEYS = (
    "host",
    "port",
    "user",
    "key",
    "known_hosts",
    "remote_inbox",
    "spool_dir",
    "deadline",
    "spool_max_files",
    "spool_max_bytes",
)
DEFAULTS = {"grains": DEFAULT_GRAINS, "all_jobs": False, "sign": True}
TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS = frozenset({"0", "false", "no", "off"})


def __virtual__():
    if not HAS_CRYPTOGRAPHY:
        return (False, "distmon returner: the cryptography library is not installed")
    return __virtualname__


class ReturnerConfigError(ValueError):
    """A returner option has a value that cannot be used; the message names it."""


def _as_bool(name: str, value) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    word = str(value).strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise ReturnerConfigError(f"distmon.{name} must be true or false, not {value!r}")


def _as_grain_names(value) -> list[str]:
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",") if part.strip()]
    if not isinstance(value, list | tuple) or not all(isinstance(item, str) and item for item in value):
        raise ReturnerConfigError(f"distmon.grains must be a list of grain names, not {value!r}")
    return list(value)


def _get_options(ret: dict) -> dict:
    """Salt's returner option lookup (config, grains, pillar, ret_config, ret_kwargs), validated."""
    attrs = {key: key for key in RETURNER_KEYS + TRANSPORT_KEYS}
    raw = salt.returners.get_returner_options(
        __virtualname__, ret, attrs, __salt__=__salt__, __opts__=__opts__, defaults=DEFAULTS
    )
    unknown = sorted(set(raw) - set(attrs))
    if unknown:
        raise ReturnerConfigError(f"unknown option(s) {', '.join(map(str, unknown))}")
    return {
        "grains": _as_grain_names(raw.get("grains", DEFAULT_GRAINS)),
        "all_jobs": _as_bool("all_jobs", raw.get("all_jobs", False)),
        "sign": _as_bool("sign", raw.get("sign", True)),
        "transport": {key: raw[key] for key in TRANSPORT_KEYS if raw.get(key) not in (None, "")},
    }


def _utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _json_safe(value):
    """What json.dumps cannot encode becomes its repr, so any return can be documented."""
    return repr(value)


def _canonical_bytes(document: dict) -> bytes:
    """The signed bytes (docs/result-format.md "Authenticity"): the document without ``signature``."""
    unsigned = {key: value for key, value in document.items() if key != "signature"}
    return json.dumps(unsigned, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _pss() -> padding.PSS:
    return padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.MAX_LENGTH)


def _sign_document(document: dict, private_key_pem: bytes) -> dict:
    """The ``signature`` object for ``document``, made with an RSA private key in PEM."""
    key = serialization.load_pem_private_key(private_key_pem, password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError(f"the signing key is {type(key).__name__}, not RSA")
    signature = key.sign(_canonical_bytes(document), _pss(), hashes.SHA256())
    return {"alg": SIGNATURE_ALG, "value": base64.b64encode(signature).decode("ascii")}


def _retcode(ret: dict) -> int:
    value = ret.get("retcode", 0)
    if isinstance(value, bool) or not isinstance(value, int):
        return 0 if ret.get("success", True) else 1
    return value


def _build_document(ret: dict, grain_names: list[str], grains: dict) -> dict:
    """The result document for one job return, normalised to plain JSON types."""
    retcode = _retcode(ret)
    document = {
        "format": FORMAT,
        "jid": str(ret.get("jid", "")),
        "minion_id": str(ret.get("id", "")),
        "fun": str(ret.get("fun", "")),
        "fun_args": list(ret.get("fun_args") or []),
        # As the minion reports it: salt-call and the scheduler set success=True even when
        # the retcode says the job failed.
        "success": bool(ret.get("success", True)) and retcode == 0,
        "retcode": retcode,
        "returned_at": _utc_now(),
        "grains": {name: grains.get(name) for name in grain_names if name in grains},
        "result": ret.get("return"),
    }
    # A round trip through JSON makes the signed object exactly what the ingester will
    # parse (tuples become lists, odd types their repr, unpaired surrogates U+FFFD).
    text = json.dumps(document, ensure_ascii=False, default=_json_safe)
    return json.loads(text.encode("utf-8", "replace"))


def _wanted(fun: str, all_jobs: bool) -> bool:
    return all_jobs or fun.startswith("pytestrun.")


def _minion_key_pem() -> bytes:
    with open(os.path.join(__opts__["pki_dir"], "minion.pem"), "rb") as handle:
        return handle.read()


def _deliver(ret: dict) -> dict | None:
    options = _get_options(ret)
    fun = str(ret.get("fun", ""))
    if not _wanted(fun, options["all_jobs"]):
        log.debug("distmon: not returning %s (jid %s): only pytestrun.* unless all_jobs", fun, ret.get("jid"))
        return None
    if not ret.get("id"):
        ret = {**ret, "id": __opts__.get("id")}
    # __grains__ is a loader context object, not a dict; the scheduler may not pack it.
    grains = globals().get("__grains__")
    if grains is None:
        grains = __opts__.get("grains") or {}
    document = _build_document(ret, options["grains"], grains)
    if options["sign"]:
        try:
            document["signature"] = _sign_document(document, _minion_key_pem())
        except (OSError, ValueError, TypeError) as err:
            # Spool it unsigned rather than lose it: an ingester that requires
            # signatures quarantines it with a reason, which is visible.
            log.error("distmon: cannot sign result jid=%s minion=%s with %s/minion.pem: %s",
                      document["jid"], document["minion_id"], __opts__.get("pki_dir"), err)
    if "distmon.store" not in __salt__:
        log.error("distmon: result jid=%s minion=%s not spooled: the distmon execution module is not "
                  "available (run saltutil.sync_all)", document["jid"], document["minion_id"])
        return None
    report = __salt__["distmon.store"](document, **options["transport"])
    log.debug("distmon: jid=%s minion=%s report %s", document["jid"], document["minion_id"], report)
    return report


def returner(ret: dict) -> None:
    """
    Sign, spool and upload the result of a ``pytestrun.*`` job (every job with ``all_jobs``).

    CLI Example:

    .. code-block:: bash

        salt '*' pytestrun.run salt://sample_tests --return distmon
    """
    try:
        _deliver(ret)
    except Exception as err:  # noqa: BLE001 - a returner must never break the minion's job handling
        log.error("distmon: result jid=%s minion=%s not handled: %s: %s",
                  ret.get("jid"), ret.get("id") or __opts__.get("id"), type(err).__name__, err,
                  exc_info=log.isEnabledFor(logging.DEBUG))
