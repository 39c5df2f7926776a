"""
Return ``pytestrun.run`` results to the distmon storage host: signed, spooled, then uploaded over SFTP.

For every ``pytestrun.run`` job (and, with ``all_jobs``, every job of another
module) the returner builds the result document of docs/result-format.md (the
function's return plus jid, minion id, fun, fun_args, success, retcode and
selected grains) and hands it to ``distmon.store``, which stamps it with a UTC
time, signs it with the minion's own Salt key, writes it atomically into the
spool on the minion and then flushes the spool (this result and any older ones
that are still waiting) to ``<remote_inbox>/<minion_id>/<jid>.json`` within
``deadline`` seconds. It runs after the job's return was sent to the master and
never raises into the minion: problems are logged once with the jid and minion
id, and the result stays spooled for the next return or ``distmon.flush``.

Never returned, even with ``all_jobs``: ``pytestrun.last``, ``pytestrun.version``
and ``pytestrun.collect``. They run no tests, so they are not runs (``last``
would show the previous run again under a new jid).

A result is spooled first whatever the options say: a bad value (``deadline:
30s``, a relative ``spool_dir``, a key name misspelt in ``--return_kwargs``)
leaves it spooled but not sent, with the reason next to it (``salt '*'
distmon.spool`` shows it); a bad ``spool_dir`` spools into the default one.
Without paramiko results are spooled too, and wait until it is installed.

Spooling, signing and uploading are the shared library in ``_utils/`` reached
through the ``distmon`` execution module (Salt gives returners no
``__utils__``), so ``distmon.flush`` and the returner share one implementation:
``saltutil.sync_all`` installs all of them (or ``pip install saltext-distmon``).

:depends: paramiko (uploads), cryptography (signing; a Salt dependency)

Configuration
-------------

Options are looked up with ``salt.returners.get_returner_options``: minion
config, grains, pillar, ``--return_config`` (alternative key prefix
``<name>.distmon.<key>``) and ``--return_kwargs`` (highest priority), then
checked.

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
    # the default: what tells machines apart when a test fails on some of them (the dashboard's
    # failures page ranks these by how well they separate failing from passing minions);
    # a grain the minion does not have (roles, when unset) is left out
    distmon.grains: [os, os_family, osrelease, osfinger, osarch, kernel, kernelrelease, virtual, productname,
                     cpu_model, num_cpus, mem_total, pythonversion, saltversion, roles]
    distmon.all_jobs: false         # true: also return every job of other modules
    distmon.sign: true              # sign with <pki_dir>/minion.pem (RSA-PSS SHA-256)

The same keys nested under ``distmon:`` in pillar (see ``pillar.example``).

Usage:

.. code-block:: bash

    salt '*' pytestrun.run salt://sample_tests --return distmon
    salt 'web-1' pytestrun.run salt://sample_tests --return distmon --return_kwargs '{"deadline": 10}'
"""

from __future__ import annotations

import json
import logging

import salt.returners

log = logging.getLogger(__name__)

__virtualname__ = "distmon"

FORMAT = "distmon-result/1"
RUN_FUNCTION = "pytestrun.run"
DEFAULT_GRAINS = [
    "os", "os_family", "osrelease", "osfinger", "osarch", "kernel", "kernelrelease", "virtual", "productname",
    "cpu_model", "num_cpus", "mem_total", "pythonversion", "saltversion", "roles",
]  # fmt: skip
RETURNER_KEYS = ("grains", "all_jobs", "sign")
# Names of distmon.store's own parameters: never options, whatever --return_kwargs says.
STORE_PARAMETERS = frozenset({"document", "sign", "option_errors", "ret_config"})
DEFAULTS = {"grains": DEFAULT_GRAINS, "all_jobs": False, "sign": True}
TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS = frozenset({"0", "false", "no", "off"})


def __virtual__():
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


def _as_grain_names(name: str, value) -> list[str]:
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",") if part.strip()]
    if not isinstance(value, list | tuple) or not all(isinstance(item, str) and item for item in value):
        raise ReturnerConfigError(f"distmon.{name} must be a list of grain names, not {value!r}")
    return list(value)


def _get_options(ret: dict) -> tuple[dict, dict, list[str]]:
    """(the returner's own options, the rest for distmon.store, errors); bad values fall back to defaults."""
    raw = salt.returners.get_returner_options(
        __virtualname__, ret, {key: key for key in RETURNER_KEYS}, __salt__=__salt__, __opts__=__opts__,
        defaults=DEFAULTS,
    )
    errors = []
    own = {}
    for key, check in (("grains", _as_grain_names), ("all_jobs", _as_bool), ("sign", _as_bool)):
        try:
            own[key] = check(key, raw.get(key, DEFAULTS[key]))
        except ReturnerConfigError as err:
            errors.append(f"{err} (used the default, {DEFAULTS[key]!r})")
            own[key] = DEFAULTS[key]
    # What --return_kwargs adds beyond the returner's own keys goes to distmon.store,
    # which knows the transport keys and reports any it does not.
    passed_on = {}
    for key, value in raw.items():
        if key in RETURNER_KEYS:
            continue
        if key in STORE_PARAMETERS or not isinstance(key, str):
            errors.append(f"distmon: unknown option {key!r}")
        else:
            passed_on[key] = value
    return own, passed_on, errors


def _json_safe(value):
    """What json.dumps cannot encode becomes its repr, so any return can be documented."""
    return repr(value)


def _retcode(ret: dict) -> int:
    value = ret.get("retcode", 0)
    if isinstance(value, bool) or not isinstance(value, int):
        return 0 if ret.get("success", True) else 1
    return value


def _build_document(ret: dict, grain_names: list[str], grains: dict) -> dict:
    """The result document for one job return, normalised to plain JSON types (distmon.store adds the time)."""
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
        "grains": {name: grains.get(name) for name in grain_names if name in grains},
        "result": ret.get("return"),
    }
    # A round trip through JSON makes the signed object exactly what the ingester will
    # parse (tuples become lists, odd types their repr, unpaired surrogates U+FFFD).
    text = json.dumps(document, ensure_ascii=False, default=_json_safe)
    return json.loads(text.encode("utf-8", "replace"))


def _wanted(fun: str, all_jobs: bool) -> bool:
    """pytestrun.run always; another module's function with all_jobs; pytestrun's read-only functions never."""
    if fun.startswith("pytestrun."):
        return fun == RUN_FUNCTION
    return all_jobs


def _deliver(ret: dict) -> dict | None:
    options, passed_on, errors = _get_options(ret)
    fun = str(ret.get("fun", ""))
    jid, minion_id = ret.get("jid"), ret.get("id") or __opts__.get("id")
    if not _wanted(fun, options["all_jobs"]):
        log.debug("distmon: not returning %s (jid %s): only %s, other modules with all_jobs", fun, jid, RUN_FUNCTION)
        if errors:
            log.error("distmon: options to fix (jid=%s minion=%s): %s", jid, minion_id, "; ".join(errors))
        return None
    if not ret.get("id"):
        ret = {**ret, "id": minion_id}
    # __grains__ is a loader context object, not a dict; the scheduler may not pack it.
    grains = globals().get("__grains__")
    if grains is None:
        grains = __opts__.get("grains") or {}
    document = _build_document(ret, options["grains"], grains)
    if "distmon.store" not in __salt__:
        log.error("distmon: result jid=%s minion=%s lost: the distmon execution module is not loaded on this "
                  "minion (`salt-call sys.list_functions distmon` is empty; the minion log at debug level says "
                  "why it did not load)", jid, minion_id)
        return None
    report = __salt__["distmon.store"](document, sign=options["sign"], option_errors=errors,
                                       ret_config=ret.get("ret_config"), **passed_on)
    log.debug("distmon: jid=%s minion=%s report %s", jid, minion_id, report)
    return report


def returner(ret: dict) -> None:
    """
    Sign, spool and upload the result of a ``pytestrun.run`` job (of other modules' jobs with ``all_jobs``).

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
