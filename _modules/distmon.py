"""
The distmon spool on a minion, and its delivery to the storage host over SFTP.

Results of ``pytestrun.run`` jobs are handed here by the ``distmon`` returner
(``_returners/distmon.py``, through ``__salt__["distmon.store"]``: Salt gives
returners no ``__utils__``). ``distmon.store`` writes a result into the spool
FIRST, whatever the options say and whether or not paramiko is installed, then
uploads the spool. What could not be uploaded (storage host down, blackholed,
host key refused, options to fix) stays in the spool, with the reason, and is
delivered by the next return or by ``distmon.flush``: no new test run is needed.

The options, the spool, SFTP and signing are implemented once, in the shared
library ``_utils/distmon_options.py``, ``_utils/distmon_transport.py`` and
``_utils/distmon_signing.py`` (synced with this module by
``saltutil.sync_all``; part of the ``saltext-distmon`` package when installed
with pip). The runner uses the same library for the job manifest.

:depends: paramiko (for uploads only; without it results are spooled and
    ``distmon.spool`` says why they wait)

Configuration
-------------

Looked up like a returner's options (``salt.returners.get_returner_options``):
minion config (``distmon.host``), grains, pillar (``distmon: {host: ...}``,
which wins over flat minion config keys, as in Salt), then keyword arguments
(``--return_kwargs`` for the returner, ``key=value`` on the command line for
``distmon.flush``). Every value is checked after the lookup: a bad value given
on the command line is an error; a bad value met by the returner leaves the
result spooled (not sent) with the reason, which ``distmon.spool`` shows, and
is logged once.

.. code-block:: yaml

    distmon.host: storage.example.com          # required for delivery
    distmon.port: 22
    distmon.user: distmon                      # required for delivery
    distmon.key: /etc/salt/distmon/id_ed25519  # private key for SFTP login (key auth only)
    distmon.known_hosts: /etc/salt/distmon/known_hosts  # pinned host key; unknown or changed keys are refused
    distmon.remote_inbox: /inbox               # files land in <remote_inbox>/<minion_id>/<jid>.json
    distmon.spool_dir: /var/cache/salt/minion/distmon/spool  # absolute; default: <cachedir>/distmon/spool
    distmon.deadline: 30                       # seconds for lock + connect + transfer of one flush
    distmon.spool_max_files: 0                 # 0 = never drop; else drop the oldest (logged)
    distmon.spool_max_bytes: 0                 # 0 = never drop; else drop the oldest (logged)
    distmon.events: true                       # distmon/spool/backlog and /drained on the master's bus

The returner's own keys (``grains``, ``all_jobs``, ``sign``) are documented in
``_returners/distmon.py``.

Spool layout: ``<spool_dir>/<jid>.json`` (the document, written atomically),
``<jid>.json.err`` (attempts and last error), ``.flush.lock`` (one flush at a
time per spool). Remote layout: ``<remote_inbox>/<minion_id>/<jid>.json``,
uploaded under a temporary ``.part`` name and renamed.

.. code-block:: bash

    salt '*' distmon.spool
    salt '*' distmon.flush
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import time

import salt.returners
import salt.utils.args
from salt.exceptions import SaltInvocationError

log = logging.getLogger(__name__)

__virtualname__ = "distmon"

_PACKAGE = "saltext.distmon.utils."
LIBRARY_PROBES = ("distmon_options.spool_options", "distmon_transport.deliver", "distmon_signing.sign_document")


def __virtual__():
    try:
        for name in LIBRARY_PROBES:
            _lib(name)
    except (ImportError, AttributeError):
        return (False, "distmon: the shared library _utils/distmon_*.py is not loaded: run saltutil.sync_all "
                       "(or pip install saltext-distmon)")
    return __virtualname__


def _lib(name: str):
    """``module.function`` from the synced ``_utils`` library, else from the installed saltext-distmon package."""
    module, _, function = name.partition(".")
    return __utils__[name] if name in __utils__ else getattr(importlib.import_module(_PACKAGE + module), function)


def _option_keys() -> tuple:
    return _lib("distmon_options.option_keys")()


def _lookup_options(overrides: dict, ret_config: str | None = None) -> dict:
    """Salt's returner option lookup (``ret_config``: a ``--return_config`` name), then ``overrides`` on top."""
    raw = salt.returners.get_returner_options(
        __virtualname__,
        {"ret_config": ret_config} if ret_config else None,
        {key: key for key in _option_keys()},
        __salt__=__salt__,
        __opts__=__opts__,
        defaults=_lib("distmon_options.defaults")(),
    )
    raw.update({key: value for key, value in overrides.items() if value is not None and value != ""})
    return raw


def _checked_options(kwargs: dict) -> tuple[dict, dict]:
    """Options for a command-line call: (raw, spool options); any bad value raises SaltInvocationError."""
    overrides = salt.utils.args.clean_kwargs(**kwargs)
    unknown = _lib("distmon_options.unknown_keys_error")(overrides, _option_keys())
    if unknown:
        raise SaltInvocationError(unknown)
    raw = _lookup_options(overrides)
    spool_options, errors = _lib("distmon_options.spool_options")(raw, __opts__["cachedir"])
    if errors:
        raise SaltInvocationError("; ".join(errors))
    return raw, spool_options


def _own_minion_id() -> str:
    return _lib("distmon_options.check_name")("minion id", __opts__.get("id"), __opts__)


def _sign(document: dict) -> None:
    """Sign in place with the minion's key; without a usable key the result is kept unsigned (logged)."""
    try:
        pem = _lib("distmon_signing.minion_key_pem")(__opts__["pki_dir"])
        document["signature"] = _lib("distmon_signing.sign_document")(document, pem)
    except (OSError, ValueError, TypeError) as err:
        # An ingester that requires signatures quarantines it with a reason, which is visible.
        log.error("distmon: cannot sign result jid=%s minion=%s with %s/minion.pem: %s",
                  document.get("jid"), document.get("minion_id"), __opts__.get("pki_dir"), err)


def _log_drops(dropped, spool: dict, minion_id: str) -> list[str]:
    for entry in dropped:
        log.error(
            "distmon: spool limit reached (spool_max_files=%s, spool_max_bytes=%s): dropped result "
            "jid=%s minion=%s (%d bytes) without delivering it",
            spool["spool_max_files"], spool["spool_max_bytes"], entry.jid, minion_id, entry.size,
        )
    return [entry.jid for entry in dropped]


def _announce_spool(spool: dict, minion_id: str, report: dict) -> None:
    """Fire distmon/spool/backlog or distmon/spool/drained after a delivery attempt (never raises)."""
    try:
        if "event.fire_master" not in __salt__ or _lib("distmon_events.masterless")(__opts__):
            return
        if __salt__["config.option"]("distmon.events", True) in (False, "false", "False", 0, "0", "no", "off"):
            return
        entries = _lib("distmon_transport.spool_entries")(spool["spool_dir"])
        waiting = report.get("waiting") or []
        last_error = waiting[0]["reason"] if waiting else None
        if entries and last_error is None:
            last_error = _lib("distmon_transport.spool_error")(entries[0].path).get("last_error")
        for tag, data in _lib("distmon_events.spool_events")(spool["spool_dir"], minion_id, entries, report,
                                                                last_error):
            _lib("distmon_events.fire_best_effort")(__salt__["event.fire_master"], tag, data,
                                                    about=f"minion {minion_id}")
    except Exception:  # an event is a courtesy: the spool and its delivery stand regardless
        log.exception("distmon: could not announce the spool state of minion %s", minion_id)


def _flush(transport: dict, spool: dict, minion_id: str, started: float) -> dict:
    """Upload the spool oldest first over one connection; never raises for delivery problems."""
    deadline_at = started + spool["deadline"]
    report = {"delivered": [], "waiting": [], "connections": 0}
    remove = _lib("distmon_transport.spool_remove")
    record_error = _lib("distmon_transport.spool_record_error")
    outgoing = _lib("distmon_transport.outgoing")
    with _lib("distmon_transport.spool_lock")(spool["spool_dir"], deadline_at) as locked:
        entries = _lib("distmon_transport.spool_entries")(spool["spool_dir"])
        if not entries:
            return report
        if not locked:
            reason = f"another flush held the spool lock for the whole deadline ({spool['deadline']:g} s)"
            report["waiting"] = [{"jid": entry.jid, "reason": reason} for entry in entries]
            return report
        by_name = {f"{entry.jid}.json": entry for entry in entries}
        result = _lib("distmon_transport.deliver")(
            transport,
            _lib("distmon_options.remote_dir")(transport["remote_inbox"], minion_id),
            [outgoing(name, local_path=entry.path) for name, entry in by_name.items()],
            deadline_at,
            on_delivered=lambda sent: remove(by_name[sent.name]),
            deadline_reason=f"deadline of {spool['deadline']:g} s reached",
            thread_name=f"distmon-flush-{minion_id}",
        )
        report["connections"] = 1 if result.connected else 0
        delivered = set(result.delivered)
        for name, entry in by_name.items():
            if name in delivered:
                report["delivered"].append(entry.jid)
            elif os.path.exists(entry.path):  # else delivered by a concurrent flush or dropped by a limit
                reason = result.failed.get(name) or result.connection_error or "not attempted"
                report["waiting"].append({"jid": entry.jid, "reason": reason})
                record_error(entry, reason)
    if report["delivered"]:
        log.info("distmon: delivered %d result(s) of minion %s: %s", len(report["delivered"]), minion_id,
                 ", ".join(report["delivered"][:20]))
    if report["waiting"]:
        log.warning(
            "distmon: %d result(s) of minion %s stay spooled (jids %s): %s",
            len(report["waiting"]), minion_id, ", ".join(item["jid"] for item in report["waiting"][:20]),
            report["waiting"][0]["reason"],
        )
    return report


# -- public functions ---------------------------------------------------------


def store(document: dict, sign: bool = False, option_errors: list | None = None, ret_config: str | None = None,
          **kwargs) -> dict:
    """
    Spool one result document, then upload the whole spool (what the distmon returner calls).

    The document is written to the spool before anything else can fail:
    delivery problems and bad options are reported (``waiting``,
    ``option_errors``), never raised. With bad options (``option_errors`` the
    caller found in its own, plus any found here) the result is spooled but not
    sent: the reason is kept next to it (``distmon.spool`` shows it) and logged
    once; ``distmon.flush`` sends it once the options are fixed. ``ret_config``
    names an alternative configuration (``<name>.distmon.<key>``, as
    ``--return_config`` does for returners). A document
    without ``returned_at`` gets the current time; ``sign=True`` signs it with
    the minion's key. Keyword arguments override the configuration keys listed
    in the module documentation. Only a document that cannot be a spool file (a
    jid or minion id that cannot be a file name, a document of another minion)
    raises SaltInvocationError.

    CLI Example:

    .. code-block:: bash

        salt '*' distmon.store '{"format": "distmon-result/1", "jid": "manual-1", "minion_id": "web-1"}'
    """
    if not isinstance(document, dict):
        raise SaltInvocationError(f"distmon.store: document must be a dict, not {type(document).__name__}")
    check_name = _lib("distmon_options.check_name")
    minion_id = _own_minion_id()
    jid = check_name("jid", document.get("jid"), __opts__)
    if document.get("minion_id") != minion_id:
        raise SaltInvocationError(
            f"distmon: document minion_id {document.get('minion_id')!r} is not this minion ({minion_id})"
        )
    errors = [str(error) for error in option_errors or []]
    overrides = salt.utils.args.clean_kwargs(**kwargs)
    unknown = _lib("distmon_options.unknown_keys_error")(overrides, _option_keys())
    if unknown:
        errors.append(unknown)
        overrides = {key: value for key, value in overrides.items() if key in _option_keys()}
    raw = _lookup_options(overrides, ret_config)
    spool, spool_errors = _lib("distmon_options.spool_options")(raw, __opts__["cachedir"])
    errors.extend(spool_errors)
    transport = None
    if not errors:
        try:
            transport = _lib("distmon_options.transport_options")(raw)
        except SaltInvocationError as err:
            errors.append(str(err))

    document = {**document, "returned_at": document.get("returned_at") or _lib("distmon_transport.utc_now")()}
    if sign:
        _sign(document)
    data = json.dumps(document, ensure_ascii=False).encode("utf-8", "replace")
    path = _lib("distmon_transport.spool_write")(spool["spool_dir"], jid, data)
    dropped = _lib("distmon_transport.spool_enforce_limits")(
        spool["spool_dir"], spool["spool_max_files"], spool["spool_max_bytes"], keep=jid
    )
    dropped = _log_drops(dropped, spool, minion_id)

    started = time.monotonic()
    if errors:
        reason = f"not sent, options to fix: {'; '.join(errors)} (then: salt-call distmon.flush)"
        entry = _lib("distmon_transport.spool_entry")(path)
        if entry is not None:
            _lib("distmon_transport.spool_record_error")(entry, reason, attempted=False)
        log.error("distmon: result jid=%s minion=%s spooled in %s, %s", jid, minion_id, spool["spool_dir"], reason)
        report = {"delivered": [], "waiting": [{"jid": jid, "reason": reason}], "connections": 0,
                  "option_errors": errors}
    else:
        # The deadline covers delivery (lock, connect, transfer), not the local write above.
        report = _flush(transport, spool, minion_id, started)
    report.update({"spooled": jid, "dropped": dropped, "elapsed": round(time.monotonic() - started, 3)})
    _announce_spool(spool, minion_id, report)
    return report


def flush(**kwargs) -> dict:
    """
    Upload everything spooled, oldest first, over one SFTP connection within the deadline.

    Returns ``delivered`` (jids now in the inbox), ``waiting`` (jid and reason
    for what stays spooled), ``connections`` and ``elapsed``. The job's retcode
    is 1 when something is still waiting. Keyword arguments override the
    configuration keys listed in the module documentation (e.g. ``deadline=5``);
    a bad option is an error.

    CLI Example:

    .. code-block:: bash

        salt '*' distmon.flush
        salt 'web-1' distmon.flush deadline=10
    """
    started = time.monotonic()
    raw, spool = _checked_options(kwargs)
    minion_id = _own_minion_id()
    transport = _lib("distmon_options.transport_options")(raw)  # a misconfigured flush is the caller's error
    report = _flush(transport, spool, minion_id, started)
    report["elapsed"] = round(time.monotonic() - started, 3)
    _announce_spool(spool, minion_id, report)
    if report["waiting"]:
        __context__["retcode"] = 1
    return report


def spool(**kwargs) -> list[dict]:
    """
    List the results waiting in the spool, oldest first: jid, size, age, attempts, last error.

    ``last_error`` says why a result waits: the storage host's answer, the
    deadline, or the options the returner found wrong (such a result is not
    sent until they are fixed and ``distmon.flush`` runs). Bad options for this
    call itself (this minion's configuration or the keyword arguments) are an
    error that names them.

    CLI Example:

    .. code-block:: bash

        salt '*' distmon.spool
        salt 'web-1' distmon.spool spool_dir=/var/tmp/distmon-spool
    """
    try:
        _, options = _checked_options(kwargs)
    except SaltInvocationError as err:
        # Say how much waits, so bad options never hide a growing spool.
        overrides = {key: value for key, value in salt.utils.args.clean_kwargs(**kwargs).items()
                     if key in _option_keys()}
        fallback, _ = _lib("distmon_options.spool_options")(_lookup_options(overrides), __opts__["cachedir"])
        count = len(_lib("distmon_transport.spool_entries")(fallback["spool_dir"]))
        raise SaltInvocationError(f"{err}; {count} result(s) wait in {fallback['spool_dir']}") from None
    read_error = _lib("distmon_transport.spool_error")
    now = time.time()
    waiting = []
    for entry in _lib("distmon_transport.spool_entries")(options["spool_dir"]):
        state = read_error(entry.path)
        waiting.append(
            {
                "jid": entry.jid,
                "size": entry.size,
                "age": round(max(now - entry.mtime, 0.0), 1),
                "attempts": int(state.get("attempts", 0) or 0),
                "last_error": state.get("last_error"),
                "last_attempt_at": state.get("last_attempt_at"),
            }
        )
    return waiting
