"""
Drive distributed pytest runs from the master and report on the distmon stack.

:depends: paramiko (for the job manifest and ``distmon.status``; without it
    runs still work and the manifest is skipped with a warning)

``distmon.run`` publishes ``pytestrun.run`` to the targeted minions with the
``distmon`` returner, shows each minion's outcome as it arrives (progress
events, ``salt/run/<jid>/progress``), then the summary table (the ``distmon``
outputter; ``--out json`` gives the same data as JSON) and exits non-zero when
a test failed or a targeted minion did not return. It also writes the job
manifest ``<remote_inbox>/_jobs/<jid>.json`` to the storage host, so the
dashboard knows which minions were targeted.

The SFTP connection, the option checks and the summaries are the shared library
in ``_utils/`` (``distmon_options``, ``distmon_transport``, ``distmon_summary``),
the same code the minions use: sync it to the master with
``salt-run saltutil.sync_all`` (runners, utils and the outputter).

The master reaches the storage host with the same option names the returner
uses on the minions, in the master config:

.. code-block:: yaml

    distmon.host: storage.example.com
    distmon.port: 22
    distmon.user: distmon
    distmon.key: /etc/salt/pki/master/distmon_ed25519      # private key
    distmon.known_hosts: /etc/salt/pki/master/distmon_known_hosts
    distmon.remote_inbox: /inbox                           # as the SFTP account sees it
    distmon.manifest_deadline: 5                           # seconds, connect + upload

Without ``distmon.host`` the manifest is skipped (logged at info level).

CLI Example:

.. code-block:: bash

    salt-run distmon.run path=salt://sample_tests tgt='web-*'
    salt-run distmon.status
    salt-run distmon.results jid=20261128073012345678
    salt-run distmon.rerun jid=20261128073012345678
"""

from __future__ import annotations

import importlib
import json
import logging
import shlex
import sys
import threading
import time
from typing import NamedTuple

import salt.client
import salt.exceptions
import salt.utils.event
from salt.exceptions import SaltInvocationError

log = logging.getLogger(__name__)

__virtualname__ = "distmon"

_PACKAGE = "saltext.distmon.utils."
RUN_FUNCTION = "pytestrun.run"
RETURNER = "distmon"
OUTPUTTER = "distmon"
MANIFEST_FORMAT = "distmon-job/1"
DEFAULT_MANIFEST_DEADLINE = 5.0
# Salt's own target types; the issue names the first five, the rest cost nothing.
TARGET_TYPES = (
    "glob", "pcre", "list", "grain", "compound",
    "grain_pcre", "pillar", "pillar_pcre", "nodegroup", "ipcidr", "range",
)
# salt-run echoes progress events through --out when one is given: only ours shows them as lines.
OUR_OUTPUT = (None, "", OUTPUTTER)
USAGE = (
    "usage: salt-run distmon.run path=<file|dir|salt://...> tgt=<target> "
    "[tgt_type=glob|pcre|list|grain|compound] [timeout=<s>] [args='<pytest args>'] "
    "[test_timeout=<s>] [max_wait=<s>]"
)


class DistmonUsageError(salt.exceptions.NotImplemented):
    """Bad or missing arguments, reported as a clean message with exit code 1.

    Salt's runner client turns every other exception into a traceback, and a
    SaltInvocationError (a TypeError) into "Passed invalid arguments" with exit
    code 0; ``NotImplemented`` is the one it prints "gracefully instead of
    dying" (its docstring) and marks retcode 1, which ``salt-run`` exits with.
    """


class DistmonNotInstalled(salt.exceptions.NotImplemented):
    """The shared library is missing on the master: said as cleanly as a usage error, exit code 1."""


def __virtual__():
    # Listed even without the shared library, so that calling it says what to install.
    return __virtualname__


def _lib(name: str):
    """The shared library's ``module.function``: ``_utils`` synced to the master, or the saltext package."""
    if name in __utils__:
        return __utils__[name]
    module, _, function = name.partition(".")
    try:
        return getattr(importlib.import_module(_PACKAGE + module), function)
    except ImportError:
        raise DistmonNotInstalled(
            f"the shared library _utils/{module}.py is not on this master: run salt-run saltutil.sync_all "
            "(or pip install saltext-distmon)"
        ) from None


# -- small helpers -------------------------------------------------------------


def _other_outputter() -> bool:
    """True when the user chose an outputter (``--out json``, ``yaml``, ``nested``...) other than ours."""
    return __opts__.get("output") not in OUR_OUTPUT


def _progress(message: str) -> None:
    """One line of progress, as a Salt runner reports it: a ``progress`` event.

    salt-run shows progress events through the outputter the event names
    (``distmon``: the line as it is). With ``--out`` salt-run would show every
    event through that outputter instead (one more JSON/YAML document, or a
    nested dump, per line), so then the event only goes on the bus and the line
    to stderr: stdout is the data alone.
    """
    data = {"message": message, "outputter": OUTPUTTER}
    try:
        jid_event = __jid_event__
        if _other_outputter():
            print(message, file=sys.stderr, flush=True)
            jid_event.event.fire_event(data, salt.utils.event.tagify("progress", base=jid_event.base))
        else:
            jid_event.fire_event(data, "progress")
    except (AttributeError, NameError, ReferenceError):
        print(message, file=sys.stderr, flush=True)  # the Python API without a job event
    except Exception as err:  # noqa: BLE001 - progress is a courtesy, never fail the run for it
        log.debug("distmon: progress event not fired: %s", err)


def _as_number(value, kind, name: str):
    if value is None or value == "":
        return None
    try:
        number = kind(value)
    except (TypeError, ValueError):
        raise DistmonUsageError(f"{name} must be a number, not {value!r}\n{USAGE}") from None
    if number <= 0:
        raise DistmonUsageError(f"{name} must be positive, not {value!r}\n{USAGE}")
    return number


class _Waits(NamedTuple):
    """How long a job may take: Salt's two timeouts, the tests' own, and the whole wait."""

    timeout: int
    gather_job_timeout: int
    test_timeout: float | None
    max_wait: float


def _waits(timeout=None, gather_job_timeout=None, test_timeout=None, max_wait=None) -> _Waits:
    """The checked waits; Salt's default to the master's, max_wait to the tests' (or 600 s) plus Salt's and 30 s."""
    timeout = _as_number(timeout, int, "timeout") or int(__opts__["timeout"])
    gather_job_timeout = _as_number(gather_job_timeout, int, "gather_job_timeout") or int(
        __opts__["gather_job_timeout"]
    )
    test_timeout = _as_number(test_timeout, float, "test_timeout")
    max_wait = _as_number(max_wait, float, "max_wait") or ((test_timeout or 600) + timeout + gather_job_timeout + 30)
    return _Waits(timeout, gather_job_timeout, test_timeout, max_wait)


def _pytestrun_kwarg(waits: _Waits, **given) -> dict:
    """pytestrun.run's keyword arguments: those given a value, and the tests' timeout when set."""
    kwarg = {key: value for key, value in given.items() if value}
    if waits.test_timeout:
        kwarg["timeout"] = waits.test_timeout
    return kwarg


def _prompt(label: str) -> str:
    try:
        answer = input(f"{label}: ")
    except (EOFError, KeyboardInterrupt):
        print(file=sys.stdout)
        raise DistmonUsageError(f"no {label.lower()} given\n{USAGE}") from None
    return answer.strip()


def _ask_missing(path, tgt, tgt_type: str):
    """Ask for a missing path or target on a terminal, as the original tool did."""
    if path and tgt:
        return path, tgt
    missing = " and ".join(name for name, value in (("path", path), ("tgt", tgt)) if not value)
    if not sys.stdin or not sys.stdin.isatty():
        raise DistmonUsageError(f"{missing} missing (and no terminal to ask on)\n{USAGE}")
    if not path:
        path = _prompt("Test path (file, directory or salt://...)")
    if not tgt:
        example = "web-1,web-2" if tgt_type == "list" else "web-*"
        tgt = _prompt(f"Target minions ({tgt_type}, e.g. {example})")
    if not path or not tgt:
        raise DistmonUsageError(f"{missing} missing\n{USAGE}")
    return path, tgt


def _split_target(tgt, tgt_type: str):
    """A list target may come as 'a,b' or a real list; everything else is a string."""
    if tgt_type == "list":
        if isinstance(tgt, str):
            return [name.strip() for name in tgt.split(",") if name.strip()]
        return [str(name) for name in tgt]
    if not isinstance(tgt, str):
        raise DistmonUsageError(f"tgt must be a string for tgt_type={tgt_type}\n{USAGE}")
    return tgt


def _split_args(args):
    if args is None or args == "":
        return []
    if isinstance(args, list | tuple):
        return [str(arg) for arg in args]
    try:
        return shlex.split(str(args))
    except ValueError as err:
        raise DistmonUsageError(f"args cannot be split like a shell does: {err}\n{USAGE}") from None


def _row(jid: str, ret, retcode=None) -> dict:
    return {"jid": jid, **_lib("distmon_summary.summarize_return")(ret, retcode)}


def _missing_row(jid: str, reason: str) -> dict:
    return {"jid": jid, **_lib("distmon_summary.no_return_row")(reason)}


def _finish(rows: dict) -> dict:
    """Set the exit code; the return is the rows keyed by minion id, shown by the distmon outputter."""
    row_failed = _lib("distmon_summary.row_failed")
    failed = any(row_failed(row) for row in rows.values()) or not rows
    retcode = 1 if failed else 0
    # __context__ marks the job failed for orchestration and the job cache;
    # salt-run's exit code comes from the return's "retcode" (salt/cli/run.py).
    __context__["retcode"] = retcode
    data = dict(sorted(rows.items()))
    data["retcode"] = retcode
    return {"data": data, "outputter": OUTPUTTER}


# -- the storage host, with the minions' option names in the master config -------------------


def _master_raw_options() -> dict:
    return {key: __opts__.get(f"distmon.{key}") for key in _lib("distmon_options.option_keys")()}


def _storage_transport() -> tuple[dict | None, float, str | None]:
    """(checked transport options or None, deadline, why not) from the master's ``distmon.*`` options."""
    raw = _master_raw_options()
    try:
        deadline = _lib("distmon_options.as_deadline")(
            "manifest_deadline", __opts__.get("distmon.manifest_deadline") or DEFAULT_MANIFEST_DEADLINE
        )
        if not raw.get("host"):
            return None, deadline, "distmon.host is not set in the master config"
        return _lib("distmon_options.transport_options")(raw), deadline, None
    except SaltInvocationError as err:
        return None, DEFAULT_MANIFEST_DEADLINE, f"{err} (master config)"


def _manifest(jid: str, tgt, tgt_type: str, targeted, started_at: str) -> dict:
    """The job manifest document (``distmon-job/1``)."""
    return {
        "format": MANIFEST_FORMAT,
        "jid": jid,
        "fun": RUN_FUNCTION,
        "tgt": tgt,
        "tgt_type": tgt_type,
        "targeted": sorted(targeted),
        "started_at": started_at,
    }


class _ManifestUpload:
    """Writes ``<remote_inbox>/_jobs/<jid>.json`` in a thread, so a slow storage host never holds the run up."""

    def __init__(self, manifest: dict):
        self.manifest = manifest
        self.error: str | None = None
        self.configured = False
        self.done = False
        self.thread: threading.Thread | None = None
        self.deadline = DEFAULT_MANIFEST_DEADLINE

    def start(self) -> None:
        transport, self.deadline, why_not = _storage_transport()
        jid = self.manifest["jid"]
        if transport is None:
            self.error = why_not
            if why_not.startswith("distmon.host is not set"):
                log.info("distmon: job %s: manifest skipped: %s", jid, why_not)
            else:
                self.configured = True  # configured, but wrongly: the user must hear of it
            return
        self.configured = True
        try:
            _lib("distmon_options.check_name")("jid", jid, __opts__)
            jobs_dir = _lib("distmon_options.remote_dir")(
                transport["remote_inbox"], _lib("distmon_options.jobs_dir")()
            )
        except SaltInvocationError as err:
            self.error = str(err)
            return
        payload = json.dumps(self.manifest, sort_keys=True).encode("utf-8")
        files = [_lib("distmon_transport.outgoing")(f"{jid}.json", payload=payload)]
        deliver = _lib("distmon_transport.deliver")
        deadline_at = time.monotonic() + self.deadline

        def upload() -> None:
            report = deliver(transport, jobs_dir, files, deadline_at,
                             deadline_reason=f"no answer from the storage host within {self.deadline:g} s",
                             thread_name="distmon-manifest-sftp")
            self.done = bool(report.delivered)
            if not self.done:
                self.error = next(iter(report.failed.values()), None) or report.connection_error

        self.thread = threading.Thread(target=upload, name="distmon-manifest", daemon=True)
        self.thread.start()

    def wait(self) -> None:
        """Wait for the upload (it gives up at its own deadline); warn when the manifest did not make it."""
        if self.thread is not None:
            self.thread.join(self.deadline + 5)
        if self.done:
            log.info("distmon: job %s: manifest written", self.manifest["jid"])
        elif self.configured:
            # Configured but not written: the user should know the dashboard lacks the target list.
            log.warning("distmon: job %s: manifest not written: %s", self.manifest["jid"], self.error)
            _progress(f"warning: job manifest not written to the storage host: {self.error}")


# -- public functions -----------------------------------------------------------------


def run(
    path=None,
    tgt=None,
    tgt_type: str = "glob",
    timeout=None,
    args=None,
    test_timeout=None,
    max_wait=None,
    gather_job_timeout=None,
    ret: str = RETURNER,
) -> dict:
    """
    Run pytest on the targeted minions, show each minion's outcome as it arrives, then a summary.

    path
        What to run on each minion: a file, a directory, a node id or a
        ``salt://`` path (as ``pytestrun.run`` takes it). Asked for on a terminal
        when missing.
    tgt
        The minions, e.g. ``'web-*'``. Asked for on a terminal when missing.
    tgt_type
        ``glob`` (default), ``pcre``, ``list`` (``'web-1,web-2'``), ``grain``,
        ``compound``, or another Salt target type.
    timeout
        Salt's timeout (default: the master's ``timeout``): how long a minion may
        stay silent before the master asks whether it still runs the job. A
        minion still running the tests is waited on; one that is down or gone
        is reported as not returned.
    args
        Extra pytest arguments, a string split like a shell does (``'-k smoke -x'``).
    test_timeout
        Seconds the tests may run on each minion (``pytestrun.run``'s ``timeout``).
    max_wait
        A hard limit on the whole wait, in seconds (default: ``test_timeout``, or
        600, plus ``timeout`` and ``gather_job_timeout`` and 30): minions that
        have not returned by then are reported as not returned.
    ret
        The returner that ships results to the storage host (``distmon``).

    Returns a dict keyed by minion id (status, the counts, duration, retcode,
    failures) plus ``retcode``: 0 when every targeted minion returned and all
    its tests passed, else 1; ``salt-run`` exits with it. It is shown as a
    summary table (the ``distmon`` outputter); ``--out json`` prints the dict.

    CLI Example:

    .. code-block:: bash

        salt-run distmon.run path=salt://sample_tests tgt='web-*'
        salt-run distmon.run path=/srv/tests tgt='web-1,web-2' tgt_type=list timeout=10
        salt-run distmon.run path=/srv/tests tgt='G@os:Debian' tgt_type=compound args='-k smoke'
        salt-run distmon.run path=/srv/tests tgt='*' --out json
    """
    if tgt_type not in TARGET_TYPES:
        raise DistmonUsageError(f"tgt_type {tgt_type!r} is not one of {', '.join(TARGET_TYPES)}\n{USAGE}")
    path, tgt = _ask_missing(path, tgt, tgt_type)
    target = _split_target(tgt, tgt_type)
    waits = _waits(timeout, gather_job_timeout, test_timeout, max_wait)
    kwarg = _pytestrun_kwarg(waits, args=_split_args(args))
    with salt.client.get_local_client(__opts__["conf_file"]) as client:
        rows = _publish_and_collect(client, target, tgt_type, path, kwarg, waits, ret)
    if rows is None:
        raise DistmonUsageError(f"no minion matches {tgt_type} target {tgt!r}; nothing was run")
    return _finish(rows)


def _publish_and_collect(client, target, tgt_type: str, path, kwarg: dict, waits: _Waits, ret: str) -> dict | None:
    """Publish pytestrun.run, write the manifest, show each return as it arrives; rows by minion (None: no match)."""
    timeout, gather_job_timeout, _, max_wait = waits
    progress_line = _lib("distmon_summary.progress_line")
    started_at = _lib("distmon_transport.utc_now")()
    pub_data = client.run_job(
        target, RUN_FUNCTION, arg=[path], tgt_type=tgt_type, ret=ret,
        timeout=timeout, kwarg=kwarg or None, listen=True,
    )
    if not pub_data:
        return None
    jid = pub_data["jid"]
    targeted = sorted(pub_data["minions"])
    shown = path if isinstance(path, str) else f"{len(path)} node id(s)"
    _progress(f"jid {jid}: {RUN_FUNCTION} {shown} sent to {len(targeted)} minion(s): {', '.join(targeted)}")
    upload = _ManifestUpload(_manifest(jid, target, tgt_type, targeted, started_at))
    upload.start()

    rows: dict = {}
    hard_deadline = time.monotonic() + max_wait
    gave_up = False
    for event in client.get_iter_returns(
        jid, set(targeted), timeout=timeout, tgt=target, tgt_type=tgt_type,
        block=False, gather_job_timeout=gather_job_timeout, expect_minions=False,
    ):
        if time.monotonic() > hard_deadline:
            log.warning("distmon: job %s: max_wait %s s reached", jid, max_wait)
            gave_up = True
            break
        if not event:
            time.sleep(0.05)
            continue
        for minion, data in event.items():
            if not isinstance(data, dict) or "ret" not in data or minion in rows:
                continue
            rows[minion] = _row(jid, data["ret"], data.get("retcode"))
            _progress(progress_line(minion, rows[minion]))
    upload.wait()

    for minion in targeted:
        if minion not in rows:
            reason = (
                f"still no return when max_wait ({max_wait:g} s) ran out" if gave_up
                else f"no answer within the timeout ({timeout} s): down, or the job was lost"
            )
            rows[minion] = _missing_row(jid, reason)
            _progress(progress_line(minion, rows[minion]))
    return rows


def _cached_job(jid, command: str) -> tuple[str, dict]:
    """(jid, the job from the master's job cache) or a usage error naming what is wrong."""
    if not jid:
        raise DistmonUsageError(f"jid missing\nusage: salt-run distmon.{command} jid=<jid>")
    jid = str(jid)
    try:
        _lib("distmon_options.check_name")("jid", jid, __opts__)
    except SaltInvocationError:
        raise DistmonUsageError(f"jid {jid!r} is not a job id") from None
    job = __salt__["jobs.list_job"](jid)
    if not isinstance(job, dict) or "Error" in job or not job.get("Function"):
        raise DistmonUsageError(f"job {jid} is not in the job cache")
    return jid, job


def rerun(jid=None, timeout=None, test_timeout=None, max_wait=None, gather_job_timeout=None, ret: str = RETURNER) -> dict:
    """
    Re-run the failed tests of an earlier job, each minion only its own failures, with progress and summary.

    jid
        The job whose failures to re-run (``distmon.run`` printed it; its returns
        are read from the master's job cache).
    timeout, test_timeout, max_wait, gather_job_timeout, ret
        As for ``distmon.run``.

    Minions that failed the same node ids are targeted together (list
    targeting); a minion whose tests all passed is not run again. Each re-run
    carries ``rerun_of=<jid>``: the dashboard links it to the original and counts
    a test that passes on re-run as flaky. Returns the same rows as
    ``distmon.run`` (one per re-run minion) plus ``retcode`` (0: every re-run
    test passed).

    CLI Example:

    .. code-block:: bash

        salt-run distmon.rerun jid=20261128073012345678
        salt-run distmon.rerun 20261128073012345678 test_timeout=120 --out json
    """
    jid, job = _cached_job(jid, "rerun")
    groups: dict[tuple, list[str]] = {}
    for minion, data in sorted((job.get("Result") or {}).items()):
        result = data.get("return") if isinstance(data, dict) else None
        if not _lib("distmon_summary.is_pytestrun_return")(result):
            continue
        paths = _lib("distmon_summary.rerun_paths")(result, _lib("distmon_summary.failed_nodeids")(result.get("tests")))
        if paths:
            groups.setdefault(tuple(paths), []).append(minion)
    if not groups:
        _progress(f"jid {jid}: no failed tests to re-run")
        return _finish_rerun({})
    waits = _waits(timeout, gather_job_timeout, test_timeout, max_wait)
    kwarg = _pytestrun_kwarg(waits, rerun_of=jid)
    rows: dict = {}
    with salt.client.get_local_client(__opts__["conf_file"]) as client:
        for paths, minions in groups.items():
            _progress(f"re-running {len(paths)} failed test(s) of {jid} on {', '.join(minions)}")
            got = _publish_and_collect(client, minions, "list", list(paths), kwarg, waits, ret)
            for minion in minions:
                rows[minion] = (got or {}).get(minion) or _missing_row(jid, "the re-run could not be published")
    return _finish_rerun(rows)


def _finish_rerun(rows: dict) -> dict:
    # Nothing to re-run is a success, not "no rows": the original's failures are all someone else's.
    if rows:
        return _finish(rows)
    __context__["retcode"] = 0
    return {"data": {"retcode": 0}, "outputter": OUTPUTTER}


def results(jid=None) -> dict:
    """
    Show the summary of an earlier run from the master's job cache.

    jid
        The job id ``distmon.run`` printed (or ``salt-run jobs.list_jobs`` shows).

    Returns the same dict as ``distmon.run``: one row per targeted minion
    (``no_return`` for those the cache has no return from) plus ``retcode``,
    shown as the same table.

    CLI Example:

    .. code-block:: bash

        salt-run distmon.results jid=20261128073012345678
        salt-run distmon.results 20261128073012345678 --out json
    """
    jid, job = _cached_job(jid, "results")
    returns = job.get("Result") or {}
    targeted = sorted(set(job.get("Minions") or []) | set(returns))
    _progress(
        f"jid {jid}: {job.get('Function')} {job.get('Arguments')} on {job.get('Target')!r} "
        f"({job.get('Target-type')}), started {job.get('StartTime')}"
    )
    rows = {}
    for minion in targeted:
        if minion in returns and isinstance(returns[minion], dict) and "return" in returns[minion]:
            rows[minion] = _row(jid, returns[minion]["return"], returns[minion].get("retcode"))
        else:
            rows[minion] = _missing_row(jid, "no return in the job cache")
    return _finish(rows)


def status(tgt="*", tgt_type: str = "glob", timeout=None, gather_job_timeout=None) -> dict:
    """
    Show the stack's health: minions up and down, the storage host, each minion's spool.

    tgt / tgt_type
        Which minions to look at (default: all).
    timeout / gather_job_timeout
        Salt's timeouts for the ping and the spool query (default: the master's).

    Returns ``minions`` (``up``, ``down``), ``storage_host`` (reachable, host key
    verified against the pinned known_hosts, login, inbox), ``spool`` (per minion:
    what ``distmon.spool`` lists) and ``retcode``: 1 when a minion is down, the
    storage host is not healthy or a spool could not be read.

    CLI Example:

    .. code-block:: bash

        salt-run distmon.status
        salt-run distmon.status tgt='web-*' timeout=3 --out json
    """
    if tgt_type not in TARGET_TYPES:
        raise DistmonUsageError(f"tgt_type {tgt_type!r} is not one of {', '.join(TARGET_TYPES)}")
    timeout, gather_job_timeout, _, _ = _waits(timeout, gather_job_timeout)
    target = _split_target(tgt, tgt_type)
    minions = __salt__["manage.status"](
        tgt=target, tgt_type=tgt_type, timeout=timeout, gather_job_timeout=gather_job_timeout
    )
    up, down = sorted(minions.get("up", [])), sorted(minions.get("down", []))
    transport, deadline, why_not = _storage_transport()
    if transport is None:
        storage = {"reachable": False, "host_key_verified": False, "login": False, "inbox": None, "error": why_not}
    else:
        storage = _lib("distmon_transport.check_host")(transport, deadline)

    spool = {}
    if up:
        with salt.client.get_local_client(__opts__["conf_file"]) as client:
            spool = client.cmd(up, "distmon.spool", tgt_type="list", timeout=timeout)
    for minion in up:
        spool.setdefault(minion, "no answer to distmon.spool")

    healthy = (
        not down
        and storage.get("login") is True
        and storage.get("inbox") is not None
        and all(not isinstance(value, str) for value in spool.values())
    )
    retcode = 0 if healthy else 1
    __context__["retcode"] = retcode
    return {
        "minions": {"up": up, "down": down},
        "storage_host": storage,
        "spool": dict(sorted(spool.items())),
        "retcode": retcode,
    }
