"""
Drive distributed pytest runs from the master and report on the distmon stack.

:depends: paramiko (for the job manifest and ``distmon.status``; without it
    runs still work and the manifest is skipped with a warning)

``distmon.run`` publishes ``pytestrun.run`` to the targeted minions with the
``distmon`` returner, shows each minion's outcome as it arrives, prints a
summary table and exits non-zero when a test failed or a targeted minion did
not return. It also writes the job manifest ``<remote_inbox>/_jobs/<jid>.json``
to the storage host, so the dashboard knows which minions were targeted.

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
"""

from __future__ import annotations

import datetime
import io
import json
import logging
import os
import re
import shlex
import sys
import threading
import time
import uuid

import salt.client
import salt.exceptions
import salt.utils.event

try:
    import paramiko

    HAS_PARAMIKO = True
except ImportError:  # pragma: no cover - paramiko is a pinned dependency
    HAS_PARAMIKO = False

log = logging.getLogger(__name__)

__virtualname__ = "distmon"

RUN_FUNCTION = "pytestrun.run"
RETURNER = "distmon"
MANIFEST_FORMAT = "distmon-job/1"
MANIFEST_DIR = "_jobs"
DEFAULT_MANIFEST_DEADLINE = 5.0
# Salt's own target types; the issue names the first five, the rest cost nothing.
TARGET_TYPES = (
    "glob", "pcre", "list", "grain", "compound",
    "grain_pcre", "pillar", "pillar_pcre", "nodegroup", "ipcidr", "range",
)
COUNT_KEYS = ("passed", "failed", "skipped", "xfailed", "xpassed", "errors")
TABLE_COLUMNS = ("minion", "passed", "failed", "skipped", "errors", "duration", "status")
NO_RETURN = "no_return"
# A path component the storage host accepts (docs/result-format.md, identifiers).
SAFE_NAME = re.compile(r"^[0-9A-Za-z_.-]{1,255}$")
CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f-\x9f]")
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


def __virtual__():
    return __virtualname__


# -- small helpers -------------------------------------------------------------


def _utc_now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _machine_output() -> bool:
    """True when the user asked for a machine-readable outputter (json, yaml, ...)."""
    return __opts__.get("output") not in (None, "", "nested", "highstate", "txt", "text")


def _progress(message: str) -> None:
    """Show one line of progress now, and put it on the event bus.

    The event is Salt's runner convention (``salt/run/<jid>/progress``, what
    event-bus listeners and salt-api see). salt-run would echo it through the
    outputter as a ten-line nested dump per line, or as extra JSON documents
    with ``--out json``; so the line is printed here as plain text (on stderr
    with a machine outputter, keeping stdout one document) and the event is
    fired without the echo.
    """
    print(message, file=sys.stderr if _machine_output() else sys.stdout, flush=True)
    try:
        bus, base = __jid_event__.event, __jid_event__.base
    except (AttributeError, NameError, ReferenceError):
        return  # called outside a runner job (the Python API without an event)
    try:
        bus.fire_event({"message": message}, salt.utils.event.tagify("progress", base=base))
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
    if isinstance(args, (list, tuple)):
        return [str(arg) for arg in args]
    try:
        return shlex.split(str(args))
    except ValueError as err:
        raise DistmonUsageError(f"args cannot be split like a shell does: {err}\n{USAGE}") from None


# -- summarising returns -----------------------------------------------------------


def summarize_return(ret, retcode=None) -> dict:
    """One minion's summary row from its ``pytestrun.run`` return (any shape)."""
    if not isinstance(ret, dict) or "counts" not in ret:
        # A string means the minion could not run it: module missing, bad argument, exception.
        message = ret if isinstance(ret, str) else json.dumps(ret, default=str)[:2000]
        return {
            "status": "error",
            **dict.fromkeys(COUNT_KEYS, 0),
            "duration": None,
            "retcode": retcode if retcode is not None else 1,
            "message": str(message).strip()[:2000],
            "failures": [],
        }
    counts = ret.get("counts") or {}
    failures = [
        {"nodeid": test.get("nodeid"), "outcome": test.get("outcome"), "message": test.get("message")}
        for test in ret.get("tests") or []
        if isinstance(test, dict) and test.get("outcome") in ("failed", "error")
    ]
    summary = {
        "status": _printable(ret.get("status") or "error")[:40],
        **{key: int(counts.get(key) or 0) for key in COUNT_KEYS},
        "duration": ret.get("duration"),
        "retcode": retcode if retcode is not None else int(ret.get("exitcode") or 0),
        "failures": failures,
    }
    if ret.get("message"):
        summary["message"] = str(ret["message"])
    return summary


def _no_return_row(reason: str) -> dict:
    return {
        "status": NO_RETURN,
        **dict.fromkeys(COUNT_KEYS, 0),
        "duration": None,
        "retcode": None,
        "message": reason,
        "failures": [],
    }


def _row_failed(row: dict) -> bool:
    return row["status"] != "passed"


def _printable(text) -> str:
    """Test ids and messages come from the minions: no control characters reach the terminal."""
    return CONTROL_CHARS.sub("?", str(text))


def _first_line(text) -> str:
    lines = str(text or "").strip().splitlines()
    return _printable(lines[0][:200]) if lines else ""


def _progress_line(minion: str, row: dict, max_failures: int = 5) -> str:
    """What the user sees when one minion's return arrives."""
    if row["status"] == NO_RETURN:
        return f"{minion}: did not return ({row['message']})"
    if row["duration"] is None and row["status"] == "error":
        return f"{minion}: error: {_first_line(row.get('message'))}"
    duration = f"{row['duration']:.2f} s" if isinstance(row["duration"], (int, float)) else "-"
    line = (
        f"{minion}: {row['status']}: {row['passed']} passed, {row['failed']} failed, "
        f"{row['skipped']} skipped, {row['errors']} errors in {duration}"
    )
    if row.get("message") and row["status"] != "passed":
        line += f" ({_first_line(row['message'])})"
    for failure in row["failures"][:max_failures]:
        reason = _first_line(failure.get("message"))
        nodeid = _printable(failure["nodeid"])
        line += f"\n    {str(failure['outcome']).upper()} {nodeid}" + (f" - {reason}" if reason else "")
    if len(row["failures"]) > max_failures:
        line += f"\n    ... and {len(row['failures']) - max_failures} more"
    return line


def format_table(rows: dict, targeted) -> str:
    """The summary table: one line per minion, then the minions that did not return."""
    body = []
    for minion in sorted(rows):
        row = rows[minion]
        duration = f"{row['duration']:.2f}" if isinstance(row["duration"], (int, float)) else "-"
        if row["status"] == NO_RETURN:
            body.append((minion, "-", "-", "-", "-", "-", NO_RETURN))
        else:
            body.append((minion, str(row["passed"]), str(row["failed"]), str(row["skipped"]),
                         str(row["errors"]), duration, row["status"]))
    widths = [max([len(col)] + [len(line[i]) for line in body]) for i, col in enumerate(TABLE_COLUMNS)]

    def fmt(cells):
        return "  ".join(
            cell.ljust(width) if i in (0, len(cells) - 1) else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    lines = [fmt(TABLE_COLUMNS), fmt(["-" * width for width in widths])]
    lines.extend(fmt(line) for line in body)
    missing = sorted(minion for minion, row in rows.items() if row["status"] == NO_RETURN)
    returned = len(rows) - len(missing)
    lines.append("")
    lines.append(f"{returned} of {len(set(targeted) | set(rows))} targeted minions returned")
    if missing:
        lines.append("Did not return: " + ", ".join(missing))
    return "\n".join(lines)


def _finish(rows: dict, targeted) -> dict:
    """Print the table, set the exit code and build the return keyed by minion id."""
    _progress(format_table(rows, targeted))
    failed = any(_row_failed(row) for row in rows.values()) or not rows
    retcode = 1 if failed else 0
    # __context__ marks the job failed for orchestration and the job cache;
    # salt-run's exit code comes from a top-level "retcode" key in the return,
    # as state.orchestrate returns it (salt/cli/run.py).
    __context__["retcode"] = retcode
    ret = dict(sorted(rows.items()))
    ret["retcode"] = retcode
    return ret


# -- the job manifest on the storage host -------------------------------------------


def _storage_options() -> dict:
    """The master's ``distmon.*`` options, coerced and validated."""
    options = {
        "host": __opts__.get("distmon.host"),
        "port": __opts__.get("distmon.port", 22),
        "user": __opts__.get("distmon.user"),
        "key": __opts__.get("distmon.key"),
        "known_hosts": __opts__.get("distmon.known_hosts"),
        "remote_inbox": __opts__.get("distmon.remote_inbox"),
        "deadline": __opts__.get("distmon.manifest_deadline", DEFAULT_MANIFEST_DEADLINE),
    }
    try:
        options["port"] = int(options["port"] or 22)
        options["deadline"] = float(options["deadline"] or DEFAULT_MANIFEST_DEADLINE)
    except (TypeError, ValueError):
        raise salt.exceptions.CommandExecutionError(
            f"distmon.port / distmon.manifest_deadline must be numbers: {options['port']!r}, "
            f"{options['deadline']!r}"
        ) from None
    return options


def _connect(options: dict, timeout: float):
    """An SSH client to the storage host, its host key verified against known_hosts."""
    if not options.get("known_hosts") or not os.path.isfile(options["known_hosts"]):
        raise salt.exceptions.CommandExecutionError(
            f"distmon.known_hosts {options.get('known_hosts')!r} is not a file: "
            "the storage host's key must be pinned"
        )
    client = paramiko.SSHClient()
    client.load_host_keys(options["known_hosts"])
    # Never trust an unknown key: a changed or unknown host key is refused.
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    try:
        client.connect(
            options["host"],
            port=options["port"],
            username=options["user"],
            key_filename=options["key"],
            allow_agent=False,
            look_for_keys=False,
            timeout=timeout,
            banner_timeout=timeout,
            auth_timeout=timeout,
            channel_timeout=timeout,
        )
    except Exception:
        client.close()
        raise
    return client


def build_manifest(jid: str, tgt, tgt_type: str, targeted, started_at: str, fun: str = RUN_FUNCTION) -> dict:
    """The job manifest document (brief: ``distmon-job/1``)."""
    return {
        "format": MANIFEST_FORMAT,
        "jid": jid,
        "fun": fun,
        "tgt": tgt,
        "tgt_type": tgt_type,
        "targeted": sorted(targeted),
        "started_at": started_at,
    }


def _upload_manifest(options: dict, manifest: dict) -> None:
    """Write ``<remote_inbox>/_jobs/<jid>.json`` under a temporary name, then rename."""
    jid = manifest["jid"]
    if not SAFE_NAME.match(jid) or jid in (".", ".."):
        raise salt.exceptions.CommandExecutionError(f"jid {jid!r} is not a safe file name")
    payload = json.dumps(manifest, sort_keys=True).encode("utf-8")
    jobs_dir = f"{options['remote_inbox'].rstrip('/')}/{MANIFEST_DIR}"
    client = _connect(options, options["deadline"])
    try:
        sftp = client.open_sftp()
        sftp.get_channel().settimeout(options["deadline"])
        try:
            sftp.stat(jobs_dir)
        except FileNotFoundError:
            sftp.mkdir(jobs_dir)
        # A leading dot: the ingester never acts on the half-written file.
        temp = f"{jobs_dir}/.{jid}.json.{uuid.uuid4().hex[:8]}.part"
        sftp.putfo(io.BytesIO(payload), temp, confirm=True)
        sftp.posix_rename(temp, f"{jobs_dir}/{jid}.json")
        sftp.close()
    finally:
        client.close()


class _ManifestUpload:
    """The manifest upload in a thread, so a slow storage host never holds the run up."""

    def __init__(self, manifest: dict):
        self.manifest = manifest
        self.error: str | None = None
        self.done = False
        self.options: dict = {}
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        try:
            self.options = _storage_options()
        except salt.exceptions.CommandExecutionError as err:
            self.error = str(err)
            return
        if not self.options["host"] or not self.options["remote_inbox"]:
            self.error = "distmon.host / distmon.remote_inbox not set in the master config"
            log.info("distmon: job %s: manifest skipped: %s", self.manifest["jid"], self.error)
            self.options = {}
            return
        if not HAS_PARAMIKO:
            self.error = "paramiko is not installed on the master"
            return
        self.thread = threading.Thread(target=self._run, name="distmon-manifest", daemon=True)
        self.thread.start()
        self.started = time.monotonic()

    def _run(self) -> None:
        try:
            _upload_manifest(self.options, self.manifest)
            self.done = True
        except Exception as err:  # noqa: BLE001 - best effort: report, never fail the run
            self.error = f"{type(err).__name__}: {err}"

    def wait(self) -> None:
        """Wait what is left of the deadline; warn when the manifest did not make it."""
        if self.thread is not None:
            remaining = self.options["deadline"] - (time.monotonic() - self.started)
            self.thread.join(max(remaining, 0.0))
            if self.thread.is_alive():
                self.error = f"no answer from the storage host within {self.options['deadline']:g} s"
        if self.done:
            log.info("distmon: job %s: manifest written", self.manifest["jid"])
        elif self.options:
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
    its tests passed, else 1; ``salt-run`` exits with it.

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
    timeout = _as_number(timeout, int, "timeout") or int(__opts__["timeout"])
    gather_job_timeout = _as_number(gather_job_timeout, int, "gather_job_timeout") or int(
        __opts__["gather_job_timeout"]
    )
    test_timeout = _as_number(test_timeout, float, "test_timeout")
    max_wait = _as_number(max_wait, float, "max_wait") or (
        (test_timeout or 600) + timeout + gather_job_timeout + 30
    )
    kwarg = {}
    pytest_args = _split_args(args)
    if pytest_args:
        kwarg["args"] = pytest_args
    if test_timeout:
        kwarg["timeout"] = test_timeout

    started_at = _utc_now()
    with salt.client.get_local_client(__opts__["conf_file"]) as client:
        pub_data = client.run_job(
            target, RUN_FUNCTION, arg=[path], tgt_type=tgt_type, ret=ret,
            timeout=timeout, kwarg=kwarg or None, listen=True,
        )
        if not pub_data:
            raise DistmonUsageError(f"no minion matches {tgt_type} target {tgt!r}; nothing was run")
        jid = pub_data["jid"]
        targeted = sorted(pub_data["minions"])
        _progress(f"jid {jid}: {RUN_FUNCTION} {path} sent to {len(targeted)} minion(s): {', '.join(targeted)}")
        upload = _ManifestUpload(build_manifest(jid, target, tgt_type, targeted, started_at))
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
                rows[minion] = {"jid": jid, **summarize_return(data["ret"], data.get("retcode"))}
                _progress(_progress_line(minion, rows[minion]))
        upload.wait()

    for minion in targeted:
        if minion not in rows:
            reason = (
                f"still no return when max_wait ({max_wait:g} s) ran out" if gave_up
                else f"no answer within the timeout ({timeout} s): down, or the job was lost"
            )
            rows[minion] = {"jid": jid, **_no_return_row(reason)}
            _progress(_progress_line(minion, rows[minion]))
    return _finish(rows, targeted)


def results(jid=None) -> dict:
    """
    Show the summary of an earlier run from the master's job cache.

    jid
        The job id ``distmon.run`` printed (or ``salt-run jobs.list_jobs`` shows).

    Returns the same dict as ``distmon.run``: one row per targeted minion
    (``no_return`` for those the cache has no return from) plus ``retcode``.

    CLI Example:

    .. code-block:: bash

        salt-run distmon.results jid=20261128073012345678
        salt-run distmon.results 20261128073012345678 --out json
    """
    if not jid:
        raise DistmonUsageError("jid missing\nusage: salt-run distmon.results jid=<jid>")
    jid = str(jid)
    if not SAFE_NAME.match(jid):
        raise DistmonUsageError(f"jid {jid!r} is not a job id")
    job = __salt__["jobs.list_job"](jid)
    if not isinstance(job, dict) or "Error" in job or not job.get("Function"):
        raise DistmonUsageError(f"job {jid} is not in the job cache")
    returns = job.get("Result") or {}
    targeted = sorted(set(job.get("Minions") or []) | set(returns))
    _progress(
        f"jid {jid}: {job.get('Function')} {job.get('Arguments')} on {job.get('Target')!r} "
        f"({job.get('Target-type')}), started {job.get('StartTime')}"
    )
    rows = {}
    for minion in targeted:
        if minion in returns and isinstance(returns[minion], dict) and "return" in returns[minion]:
            rows[minion] = {"jid": jid, **summarize_return(returns[minion]["return"], returns[minion].get("retcode"))}
        else:
            rows[minion] = {"jid": jid, **_no_return_row("no return in the job cache")}
    return _finish(rows, targeted)


def _check_storage_host(options: dict) -> dict:
    """Connect with the pinned host key, log in, and look at the inbox."""
    report = {
        "host": options.get("host"),
        "port": options.get("port"),
        "reachable": False,
        "host_key_verified": False,
        "login": False,
        "inbox": None,
    }
    if not options.get("host"):
        report["error"] = "distmon.host is not set in the master config"
        return report
    if not HAS_PARAMIKO:
        report["error"] = "paramiko is not installed on the master"
        return report
    started = time.monotonic()
    try:
        client = _connect(options, options["deadline"])
    except paramiko.BadHostKeyException as err:
        report.update(reachable=True, error=f"host key does not match known_hosts: {err}")
        return report
    except paramiko.AuthenticationException as err:
        # Authentication comes after the host key check, so the key was verified.
        report.update(reachable=True, host_key_verified=True, error=f"login refused: {err}")
        return report
    except paramiko.SSHException as err:
        report.update(reachable=True, error=f"SSH handshake failed: {err}")
        return report
    except (OSError, salt.exceptions.CommandExecutionError) as err:
        report["error"] = f"{type(err).__name__}: {err}"
        return report
    try:
        report.update(reachable=True, host_key_verified=True, login=True)
        report["handshake_ms"] = round((time.monotonic() - started) * 1000, 1)
        if options.get("remote_inbox"):
            sftp = client.open_sftp()
            sftp.get_channel().settimeout(options["deadline"])
            try:
                sftp.stat(options["remote_inbox"])
                report["inbox"] = options["remote_inbox"]
            except OSError as err:
                report["error"] = f"inbox {options['remote_inbox']!r}: {err}"
            finally:
                sftp.close()
    except (OSError, paramiko.SSHException) as err:
        report["error"] = f"SFTP failed: {type(err).__name__}: {err}"
    finally:
        client.close()
    return report


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
    timeout = _as_number(timeout, int, "timeout") or int(__opts__["timeout"])
    gather_job_timeout = _as_number(gather_job_timeout, int, "gather_job_timeout") or int(
        __opts__["gather_job_timeout"]
    )
    target = _split_target(tgt, tgt_type)
    minions = __salt__["manage.status"](
        tgt=target, tgt_type=tgt_type, timeout=timeout, gather_job_timeout=gather_job_timeout
    )
    up, down = sorted(minions.get("up", [])), sorted(minions.get("down", []))
    try:
        storage = _check_storage_host(_storage_options())
    except salt.exceptions.CommandExecutionError as err:
        storage = {"reachable": False, "error": str(err)}

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
