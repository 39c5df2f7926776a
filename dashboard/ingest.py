"""The ingester: inbox files -> validated runs and test results in SQLite.

The returner uploads ``<inbox>/<minion_id>/<jid>.json`` (temporary dot-name, then rename);
the runner writes job manifests to ``<inbox>/_jobs/<jid>.json``; other CI systems may drop
JUnit XML as ``<inbox>/<source>/<name>.xml``. This module turns them into rows.

.. code-block:: yaml

    # environment of the storage host (dashboard/config.py)
    DISTMON_INBOX: .run/host/chroot/inbox
    DISTMON_ARCHIVE: <db dir>/archive         # ingested files move here ...
    DISTMON_ARCHIVE_MODE: archive             # ... or `delete`
    DISTMON_QUARANTINE: <db dir>/quarantine   # rejected files, each with <name>.reason
    DISTMON_MAX_FILE_BYTES: 20000000          # larger files are quarantined unread
    DISTMON_PUBKEYS_DIR: (none)               # accepted minion keys, see dashboard/signing.py
    DISTMON_REQUIRE_SIGNATURE: 0
    DISTMON_ACCEPT_JUNIT: 1
    DISTMON_JUNIT_SOURCES: ""                 # sources whose JUnit XML is accepted even when
                                              # signatures are required (comma separated)
    DISTMON_SCAN_INTERVAL: 0.2                # seconds between inbox scans
    DISTMON_INGEST_WORKER: 1                  # 0: never validate in a worker process

How it works, and why:

- Watching is a periodic ``os.scandir`` of the inbox (no inotify package here). It is cheap
  (one directory read per minion per scan), and because every scan sees everything, the
  start-up scan and the backstop are the same code: nothing is missed after downtime.
- Only final names are acted on (``^[0-9A-Za-z_.-]+\\.(json|xml)$``); dot-names are uploads in
  progress. Directories are opened with ``O_NOFOLLOW`` and every later operation is relative to
  that descriptor, so a symlink (or a directory swapped for one) is never followed.
- Each file is validated (dashboard/models.py, dashboard/signing.py) BEFORE the transaction;
  a bad one goes to ``<quarantine>/<dir>/<name>`` with ``<name>.reason`` and ingest goes on.
- Valid files are written in batches (one transaction for up to :data:`BATCH_FILES` files or
  :data:`BATCH_BYTES`); if a batch fails, its files are retried one per transaction, so one file
  cannot sink the others. A file the database refuses is quarantined; a database-level error
  (locked, disk full) leaves it in the inbox for the next scan (``deferred``).
- A pass with more than one batch validates in a worker process (``python -c`` child over
  pipes; ``DISTMON_INGEST_WORKER=0`` turns it off) while this process writes: validation and
  writing are both CPU-bound Python and cannot overlap in threads under the GIL. If the worker
  fails, that batch is validated in-process and a new worker is started for the next pass.
- Idempotent on (minion, jid): after the commit the file is archived (or deleted). A crash
  between the commit and the move leaves the file in the inbox; the next scan finds its
  (minion, jid) already stored, counts it as a duplicate and archives it. Nothing is counted
  twice. A re-upload of a stored (minion, jid) with different content is also a duplicate:
  **the first stored version is kept** (a jid names one job; a returner retry carries the
  same document), and the later file is archived beside the first with a ``.dup-<ns>`` suffix.
- Summaries are maintained in the same transaction: ``minions`` (first/last seen, newest run,
  runs), ``test_status`` (latest outcome per minion and test, runs, fails, flips, failing
  streak start, last pass, total duration, ``code_flips``) and ``counters`` (``runs``, ``results``, ``tests``).
  "Latest" is by (started_at, run id): a run that arrives after a newer one does not overwrite
  it; its tests' rows are recomputed from their history instead. A test's outcome in a run is
  the worst of its entries (failed > error > passed > xpassed > xfailed > skipped); failed and
  error are fails, passed/xpassed/xfailed are passes, skipped is neither: a flip is a change
  between pass and fail (skips in between are ignored), ``first_fail_at`` opens a failing
  streak and a pass closes it. ``flips`` counts every flip; ``code_flips`` only those where the
  run that gave the previous verdict carried the same, known, ``code_hash`` (the result's code
  fingerprint, stored in ``runs.code_hash``; ``test_status.last_code_hash`` is that of the latest
  verdict): a flip across a code change is a fix or a regression, not flakiness.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import json
import logging
import multiprocessing.connection
import os
import re
import shutil
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar
from weakref import WeakKeyDictionary

from pydantic import ValidationError

from dashboard.config import Settings
from dashboard.db import Database
from dashboard.junit import JUnitError, parse_junit
from dashboard.models import (
    JOB_FORMAT,
    RESULT_FORMAT,
    JobManifest,
    PytestResult,
    ResultDocument,
    describe_validation_error,
    format_timestamp,
    id_problem,
)
from dashboard.signing import KeyStore, check_document

log = logging.getLogger(__name__)
T = TypeVar("T")

JOBS_DIR = "_jobs"
JSON_NAME = re.compile(r"^[0-9A-Za-z_.-]+\.json$")
XML_NAME = re.compile(r"^[0-9A-Za-z_.-]+\.xml$")
# Files per transaction. 100 files of 50 results commit in well under 100 ms, short enough
# that the web app's own writes (logins, sessions) never wait long behind the ingester.
BATCH_FILES = 100
# ... and at most this many bytes of files per transaction, so a few huge runs (10,000s of tests
# each) neither hold the write lock for long nor sit in memory all at once.
BATCH_BYTES = 8_000_000
# Test hook: exit right after a commit, before the files are moved (crash-safety tests).
CRASH_AFTER_COMMIT_ENV = "DISTMON_TEST_CRASH_AFTER_COMMIT"
SQL_CHUNK = 500  # host parameters per IN (...) list, well under SQLite's limit

# Outcome precedence when a test has several entries in one run (e.g. passed + teardown error).
_PRECEDENCE = {"failed": 0, "error": 1, "passed": 2, "xpassed": 3, "xfailed": 4, "skipped": 5}
_FAIL = frozenset({"failed", "error"})
_PASS = frozenset({"passed", "xpassed", "xfailed"})


@dataclass
class IngestReport:
    """What one ingest pass did."""

    ingested: int = 0  # runs stored
    duplicates: int = 0  # files whose (minion, jid) was already stored
    quarantined: int = 0  # files (or entries) moved to quarantine
    results: int = 0  # test results written
    manifests: int = 0  # job manifests stored
    deferred: int = 0  # files left in the inbox after a transient database error

    def __bool__(self) -> bool:
        return any((self.ingested, self.duplicates, self.quarantined, self.manifests, self.deferred))


# -- the inbox -------------------------------------------------------------------------------


@dataclass
class Candidate:
    """A final-named regular file found in an inbox directory."""

    dir_name: str
    name: str
    kind: str  # result | junit | job
    size: int
    mtime: float
    inbox_dir: InboxDir


@dataclass
class InboxDir:
    """An inbox subdirectory held open by descriptor (opened without following symlinks)."""

    name: str
    fd: int


@dataclass
class RunRecord:
    candidate: Candidate
    minion: str
    jid: str
    fun: str
    source: str
    status: str
    exitcode: int | None
    counts: dict[str, int]
    started_at: str
    finished_at: str | None
    duration: float | None
    returned_at: str
    paths: str
    args: str
    python_version: str | None
    pytest_version: str | None
    grains: str
    message: str | None
    signed: int
    # Built off the writer's thread (see _flatten): result rows without run/test ids, and per
    # test (worst outcome, summed duration, file, line) for the summaries and the tests table.
    rows: list[tuple]
    per_test: dict[str, tuple[str, float, str | None, int | None]]
    # The result's code fingerprint (pytestrun's code_hash); None when unknown (JUnit, older minions).
    code_hash: str | None = None


@dataclass
class JobRecord:
    candidate: Candidate
    jid: str
    fun: str | None
    tgt: str | None
    tgt_type: str | None
    targeted: str
    started_at: str | None


@dataclass
class Rejected:
    candidate: Candidate
    reason: str


def _now() -> str:
    return format_timestamp(datetime.now(UTC))


def _label(name: str) -> str:
    """A directory or file name made safe to create under the quarantine/archive root."""
    safe = re.sub(r"[^0-9A-Za-z_.-]", "_", name)[:200].lstrip(".")
    return safe or "_invalid"


def _unique(target: Path) -> Path:
    if not os.path.lexists(target):
        return target
    return target.with_name(f"{target.name}.{time.time_ns()}")


def _move_out(dir_fd: int, name: str, target: Path) -> None:
    """Move ``name`` (relative to ``dir_fd``, never followed) to ``target``."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(name, target, src_dir_fd=dir_fd)
        return
    except OSError as err:
        if err.errno != errno.EXDEV:
            raise
    # Another filesystem: copy what the entry itself is (a link stays a link), then unlink.
    info = os.lstat(name, dir_fd=dir_fd)
    if stat.S_ISLNK(info.st_mode):
        os.symlink(os.readlink(name, dir_fd=dir_fd), target)
        os.unlink(name, dir_fd=dir_fd)
    elif stat.S_ISREG(info.st_mode):
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd)
        with os.fdopen(fd, "rb") as src, open(target, "xb") as dst:
            shutil.copyfileobj(src, dst)
        os.unlink(name, dir_fd=dir_fd)
    elif stat.S_ISDIR(info.st_mode):
        # Rare (quarantining a whole directory across filesystems): resolve through /proc's fd link.
        shutil.move(os.path.join(f"/proc/self/fd/{dir_fd}", name), target)
    else:
        os.unlink(name, dir_fd=dir_fd)
        target.with_name(target.name + ".gone").write_text("a special file (fifo/socket/device) was removed\n")


def quarantine_entry(settings: Settings, dir_fd: int, dir_label: str, name: str, reason: str) -> bool:
    """Move an inbox entry to ``<quarantine>/<dir_label>/<name>`` with a ``.reason`` file; True on success."""
    target = _unique(Path(settings.quarantine) / _label(dir_label) / _label(name))
    reason_file = target.with_name(target.name + ".reason")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        # The reason first: a crash between the two leaves a reason without a file, never the reverse.
        reason_file.write_text(
            f"reason: {reason}\nwhen: {_now()}\nentry: {dir_label!r}/{name!r}\n", encoding="utf-8", errors="replace"
        )
        _move_out(dir_fd, name, target)
    except FileNotFoundError:
        reason_file.unlink(missing_ok=True)
        return False  # gone already (another ingester, or the uploader replaced it)
    except OSError as err:
        log.error("cannot quarantine %r/%r (%s): %s", dir_label, name, reason, err)
        return False
    log.warning("quarantined %r/%r: %s", dir_label, name, reason)
    return True


def _scan_dir(settings: Settings, inbox_dir: InboxDir, report: IngestReport) -> list[Candidate]:
    jobs = inbox_dir.name == JOBS_DIR
    found: list[Candidate] = []
    bad: list[tuple[str, str]] = []
    with os.scandir(inbox_dir.fd) as entries:
        for entry in entries:
            name = entry.name
            if name.startswith("."):
                continue  # an upload in progress (.<jid>.json.<random>.part)
            try:
                info = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            if stat.S_ISLNK(info.st_mode):
                bad.append((name, "a symlink where a file belongs (not followed)"))
            elif not stat.S_ISREG(info.st_mode):
                bad.append((name, "not a regular file (directory, fifo, socket or device)"))
            elif JSON_NAME.match(name):
                found.append(Candidate(inbox_dir.name, name, "job" if jobs else "result", info.st_size, info.st_mtime, inbox_dir))
            elif XML_NAME.match(name) and not jobs:
                found.append(Candidate(inbox_dir.name, name, "junit", info.st_size, info.st_mtime, inbox_dir))
            else:
                bad.append((name, "unexpected file name (want <jid>.json or <name>.xml)"))
    for name, reason in bad:
        if quarantine_entry(settings, inbox_dir.fd, inbox_dir.name, name, reason):
            report.quarantined += 1
    return found


def scan_inbox(settings: Settings, report: IngestReport, opened: list[InboxDir]) -> list[Candidate]:
    """List every final-named file in the inbox; quarantine entries that do not belong there.

    Opened directory descriptors are appended to ``opened``; the caller closes them.
    """
    try:
        inbox_fd = os.open(settings.inbox, os.O_RDONLY | os.O_DIRECTORY)
    except FileNotFoundError:
        return []
    opened.append(InboxDir("", inbox_fd))
    candidates: list[Candidate] = []
    bad: list[tuple[str, str]] = []
    with os.scandir(inbox_fd) as entries:
        names = [(entry.name, entry) for entry in entries]
    for name, entry in sorted(names, key=lambda item: item[0]):
        if name.startswith("."):
            continue
        try:
            info = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue
        if stat.S_ISLNK(info.st_mode):
            bad.append((name, "a symlink where a minion directory belongs (not followed)"))
            continue
        if not stat.S_ISDIR(info.st_mode):
            bad.append((name, "not a directory: the inbox holds one directory per minion"))
            continue
        problem = None if name == JOBS_DIR else id_problem(name)
        if problem:
            bad.append((name, f"invalid minion id as directory name: {problem}"))
            continue
        try:
            fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=inbox_fd)
        except OSError as err:
            if err.errno in (errno.ELOOP, errno.ENOTDIR):
                bad.append((name, "swapped for a symlink or file while scanning (not followed)"))
            continue
        inbox_dir = InboxDir(name, fd)
        opened.append(inbox_dir)
        found = _scan_dir(settings, inbox_dir, report)
        candidates.extend(sorted(found, key=lambda c: c.name))
    for name, reason in bad:
        if quarantine_entry(settings, inbox_fd, "_inbox", name, reason):
            report.quarantined += 1
    return candidates


# -- validation (before any transaction) ------------------------------------------------------


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _read(candidate: Candidate, cap: int) -> bytes:
    fd = os.open(candidate.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=candidate.inbox_dir.fd)
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            raise _Reject("not a regular file")
        raw = handle.read(cap + 1)
    if len(raw) > cap:
        raise _Reject(f"larger than the {cap}-byte cap (DISTMON_MAX_FILE_BYTES)")
    return raw


class _Reject(Exception):
    """The file must be quarantined; the message is the reason."""


def _decode_json(raw: bytes) -> Any:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise _Reject(f"not valid UTF-8 (byte {err.start})") from None
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise _Reject("JSON nested too deeply") from None
    except ValueError as err:  # JSONDecodeError, huge ints, NaN/Infinity
        raise _Reject(f"not valid JSON: {str(err)[:200]}") from None


def _junit_sources(settings: Settings) -> frozenset[str]:
    return settings.junit_sources


def _flatten(tests: list[dict[str, Any]]) -> tuple[list[tuple], dict[str, tuple]]:
    rows = []
    per_test: dict[str, tuple] = {}
    for t in tests:
        nodeid, outcome, duration = t["nodeid"], t["outcome"], t.get("duration", 0.0)
        markers = t.get("markers")
        rows.append(
            (
                nodeid, t["when"], outcome, duration, t.get("message"), t.get("longrepr"), t.get("stdout"),
                t.get("stderr"), json.dumps(markers) if markers else "[]",
            )
        )  # fmt: skip
        seen = per_test.get(nodeid)
        if seen is None:
            per_test[nodeid] = (outcome, duration, t.get("file"), t.get("line"))
        else:
            # One outcome per test and run: the worst of its entries (passed + teardown error = error).
            worst = outcome if _PRECEDENCE[outcome] < _PRECEDENCE[seen[0]] else seen[0]
            per_test[nodeid] = (worst, seen[1] + duration, seen[2], seen[3])
    return rows, per_test


def _run_record(doc: ResultDocument, candidate: Candidate, *, source: str, signed: bool) -> RunRecord:
    result = doc.result
    if isinstance(result, PytestResult):
        counts = result.counts.model_dump()
        rows, per_test = _flatten(result.tests)
        return RunRecord(
            candidate=candidate,
            minion=doc.minion_id,
            jid=doc.jid,
            fun=doc.fun,
            source=source,
            status=result.status,
            exitcode=result.exitcode,
            counts=counts,
            started_at=result.started_at,
            finished_at=result.finished_at,
            duration=result.duration,
            returned_at=doc.returned_at,
            paths=json.dumps(result.paths),
            args=json.dumps(result.args),
            python_version=result.python_version,
            pytest_version=result.pytest_version,
            grains=json.dumps(doc.grains, sort_keys=True),
            message=result.message,
            signed=int(signed),
            rows=rows,
            per_test=per_test,
            code_hash=result.code_hash,
        )
    # Another function's return (the returner's all_jobs option): a run without tests.
    return RunRecord(
        candidate=candidate,
        minion=doc.minion_id,
        jid=doc.jid,
        fun=doc.fun,
        source=source,
        status="passed" if doc.success else "error",
        exitcode=doc.retcode,
        counts={k: 0 for k in ("passed", "failed", "skipped", "xfailed", "xpassed", "errors")},
        started_at=doc.returned_at,
        finished_at=doc.returned_at,
        duration=None,
        returned_at=doc.returned_at,
        paths="[]",
        args="[]",
        python_version=None,
        pytest_version=None,
        grains=json.dumps(doc.grains, sort_keys=True),
        message=None,
        signed=int(signed),
        rows=[],
        per_test={},
    )


class Preparer:
    """Reads and validates candidates; holds what survives between passes (the key cache)."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.keys = KeyStore(settings.pubkeys_dir)

    def prepare(self, candidate: Candidate) -> RunRecord | JobRecord | Rejected:
        """Validate one file; never raises (anything unexpected becomes a rejection)."""
        try:
            return self._prepare(candidate)
        except _Reject as err:
            return Rejected(candidate, str(err))
        except FileNotFoundError:
            return Rejected(candidate, "")  # vanished: nothing to quarantine
        except RecursionError:
            return Rejected(candidate, "nested too deeply")
        except Exception as err:  # a bug or an input we did not foresee: quarantine, keep going
            log.exception("unexpected error validating %s/%s", candidate.dir_name, candidate.name)
            return Rejected(candidate, f"could not be validated: {type(err).__name__}: {str(err)[:200]}")

    def _prepare(self, candidate: Candidate) -> RunRecord | JobRecord:
        settings = self.settings
        cap = int(settings.max_file_bytes)
        if candidate.size > cap:
            raise _Reject(f"larger than the {cap}-byte cap (DISTMON_MAX_FILE_BYTES): {candidate.size} bytes")
        stem = candidate.name.rsplit(".", 1)[0]
        if candidate.kind == "junit":
            return self._prepare_junit(candidate, stem, cap)
        raw = _read(candidate, cap)
        if candidate.kind == "job":
            return self._prepare_job(candidate, stem, _decode_json(raw))
        doc = None
        if not settings.require_signature:
            # Fast path: parse and validate in one pass in pydantic-core (no intermediate dict).
            doc = self._validate_json(raw)
            if doc.signature is not None:
                doc = None  # verify on the exact object json.loads builds, then validate that
        if doc is None:
            document = _decode_json(raw)
            if not isinstance(document, dict):
                raise _Reject(f"not a JSON object but a {type(document).__name__}")
            if document.get("format") != RESULT_FORMAT:
                raise _Reject(f"wrong schema: format is {str(document.get('format'))[:60]!r}, not {RESULT_FORMAT!r}")
            try:
                doc = ResultDocument.model_validate(document)
            except ValidationError as err:
                raise _Reject(f"wrong schema: {describe_validation_error(err)}") from None
        else:
            document = {}
        if doc.minion_id != candidate.dir_name:
            raise _Reject(
                f"minion_id {doc.minion_id[:80]!r} in the file differs from its inbox directory {candidate.dir_name!r}"
            )
        if doc.jid != stem:
            raise _Reject(f"jid {doc.jid[:80]!r} in the file differs from its file name {candidate.name!r}")
        signed, problem = check_document(
            document, candidate.dir_name, self.keys, require=bool(settings.require_signature)
        )
        if problem:
            raise _Reject(f"authenticity: {problem}")
        if doc.signature is not None and not signed:
            log.warning("storing %s/%s as unsigned: its signature could not be verified", doc.minion_id, doc.jid)
        return _run_record(doc, candidate, source="distmon", signed=signed)

    @staticmethod
    def _validate_json(raw: bytes) -> ResultDocument:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise _Reject(f"not valid UTF-8 (byte {err.start})") from None
        try:
            return ResultDocument.model_validate_json(text)
        except ValidationError as err:
            first = err.errors(include_url=False, include_input=False)[0]
            if first["type"] == "json_invalid":
                if "recursion limit" in first["msg"]:
                    raise _Reject("not valid JSON: nested too deeply") from None
                raise _Reject(f"not valid JSON: {first['msg'].removeprefix('Invalid JSON: ')[:200]}") from None
            if first["type"] == "model_type":
                raise _Reject("not a JSON object") from None
            if first["loc"] == ("format",):
                raise _Reject(f"wrong schema: format is not {RESULT_FORMAT!r}") from None
            raise _Reject(f"wrong schema: {describe_validation_error(err)}") from None

    def _prepare_junit(self, candidate: Candidate, stem: str, cap: int) -> RunRecord:
        settings = self.settings
        if not settings.accept_junit:
            raise _Reject("JUnit XML is not accepted (DISTMON_ACCEPT_JUNIT is off)")
        if settings.require_signature and candidate.dir_name not in _junit_sources(settings):
            raise _Reject("unsigned JUnit XML while DISTMON_REQUIRE_SIGNATURE is on (source not in DISTMON_JUNIT_SOURCES)")
        problem = id_problem(stem)
        if problem:
            raise _Reject(f"file name is not a valid jid: {problem}")
        raw = _read(candidate, cap)
        try:
            document = parse_junit(raw, source=candidate.dir_name, jid=stem, mtime=candidate.mtime)
        except JUnitError as err:
            raise _Reject(f"JUnit XML: {err}") from None
        try:
            doc = ResultDocument.model_validate(document)
        except ValidationError as err:
            raise _Reject(f"JUnit XML: {describe_validation_error(err)}") from None
        return _run_record(doc, candidate, source="junit", signed=False)

    def _prepare_job(self, candidate: Candidate, stem: str, document: dict) -> JobRecord:
        if document.get("format") != JOB_FORMAT:
            raise _Reject(f"wrong schema: format is {str(document.get('format'))[:60]!r}, not {JOB_FORMAT!r}")
        try:
            manifest = JobManifest.model_validate(document)
        except ValidationError as err:
            raise _Reject(f"wrong schema: {describe_validation_error(err)}") from None
        if manifest.jid != stem:
            raise _Reject(f"jid {manifest.jid[:80]!r} in the manifest differs from its file name {candidate.name!r}")
        tgt = manifest.tgt if isinstance(manifest.tgt, str) or manifest.tgt is None else json.dumps(manifest.tgt)
        return JobRecord(
            candidate=candidate,
            jid=manifest.jid,
            fun=manifest.fun,
            tgt=tgt,
            tgt_type=manifest.tgt_type,
            targeted=json.dumps(manifest.targeted),
            started_at=manifest.started_at,
        )


# -- storage (runs on the writer connection, inside one transaction) ----------------------------


class _IdCache:
    """name -> id of minions and nodeid -> id of tests; rows that are never deleted, so safe to keep.

    Only touched on the writer's thread. Cleared whenever a transaction rolls back, COMMIT failing
    included (ids created in a rolled-back transaction must not survive: SQLite reuses them).
    """

    def __init__(self) -> None:
        self.minions: dict[str, int] = {}
        self.tests: dict[str, int] = {}

    def clear(self) -> None:
        self.minions.clear()
        self.tests.clear()


def _chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _batches(candidates: list[Candidate]) -> Iterator[list[Candidate]]:
    batch: list[Candidate] = []
    size = 0
    for candidate in candidates:
        if batch and (len(batch) >= BATCH_FILES or size + candidate.size > BATCH_BYTES):
            yield batch
            batch, size = [], 0
        batch.append(candidate)
        size += candidate.size
    if batch:
        yield batch


def _fold(
    row: dict | None, minion_id: int, test_id: int, run_id: int, started_at: str, outcome: str, duration: float,
    code_hash: str | None = None,
) -> dict:
    """Apply one run's outcome of one test to its test_status row (runs must come oldest first).

    Updates ``row`` in place (a new row when None) and returns it. ``code_hash`` is the run's
    code fingerprint: a flip also counts in ``code_flips`` when the run that gave the previous
    verdict had the same, known, code hash (a fix or a regression is not flakiness).
    """
    if row is None:
        row = {
            "minion_id": minion_id,
            "test_id": test_id,
            "runs": 0,
            "fails": 0,
            "flips": 0,
            "first_fail_at": None,
            "last_pass_at": None,
            "total_duration": 0.0,
            "last_code_hash": None,
            "code_flips": 0,
        }
    # The last pass/fail verdict, skipping neutral outcomes (skipped): a failing streak is open
    # exactly when first_fail_at is set; otherwise the last verdict was a pass if there ever was one.
    row["runs"] += 1
    row["total_duration"] += duration or 0.0
    flipped = False
    if outcome in _FAIL:
        row["fails"] += 1
        if not row["first_fail_at"]:
            flipped = bool(row["last_pass_at"])
            row["first_fail_at"] = started_at
    elif outcome in _PASS:
        flipped = bool(row["first_fail_at"])
        row["first_fail_at"] = None
        row["last_pass_at"] = started_at
    if flipped:
        row["flips"] += 1
        if code_hash and code_hash == row["last_code_hash"]:
            row["code_flips"] += 1
    if outcome in _FAIL or outcome in _PASS:
        # The hash of the latest verdict, not of the latest run: a skip in between changes nothing.
        row["last_code_hash"] = code_hash
    row["last_run_id"] = run_id
    row["last_outcome"] = outcome
    row["last_started_at"] = started_at
    return row


_STATUS_COLUMNS = (
    "minion_id", "test_id", "last_run_id", "last_outcome", "last_started_at", "runs", "fails", "flips",
    "first_fail_at", "last_pass_at", "total_duration", "last_code_hash", "code_flips",
)  # fmt: skip
_INSERT_STATUS = (
    f"INSERT INTO test_status ({', '.join(_STATUS_COLUMNS)}) "  # noqa: S608 (constant columns)
    f"VALUES ({', '.join('?' for _ in _STATUS_COLUMNS)})"
)
# Existing rows are updated in place, not REPLACEd: a REPLACE deletes and re-inserts the row in
# the table and both its indexes, which cost more than inserting the results themselves.
_UPDATE_STATUS = (
    "UPDATE test_status SET last_run_id = ?, last_outcome = ?, last_started_at = ?, runs = ?, fails = ?, "
    "flips = ?, first_fail_at = ?, last_pass_at = ?, total_duration = ?, last_code_hash = ?, code_flips = ? "
    "WHERE minion_id = ? AND test_id = ?"
)
_INSERT_RUN = """
    INSERT INTO runs (minion_id, jid, fun, source, status, exitcode, passed, failed, skipped, xfailed,
                      xpassed, errors, started_at, finished_at, duration, returned_at, ingested_at,
                      paths, args, python_version, pytest_version, grains, message, signed, code_hash)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
    ON CONFLICT (minion_id, jid) DO NOTHING
"""
_INSERT_RESULT = """
    INSERT INTO results (run_id, test_id, phase, outcome, duration, message, longrepr, stdout, stderr, markers)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
"""


class _Batch:
    """One transaction's worth of summary state, flushed at its end."""

    def __init__(self, conn: sqlite3.Connection, ids: _IdCache):
        self.conn = conn
        self.ids = ids
        self.status: dict[tuple[int, int], dict | None] = {}
        self.dirty: set[tuple[int, int]] = set()
        self.stored: set[tuple[int, int]] = set()  # keys that have a row in the database
        self.minions: dict[int, dict] = {}
        self.runs = 0
        self.results = 0
        self.new_tests = 0
        self.now = _now()

    # minions ------------------------------------------------------------------------------
    def minion_id(self, name: str, seen_at: str) -> int:
        known = self.ids.minions.get(name)
        if known is not None:
            return known
        row = self.conn.execute("SELECT id FROM minions WHERE name = ?", (name,)).fetchone()
        if row is None:
            cursor = self.conn.execute(
                "INSERT INTO minions (name, first_seen, last_seen) VALUES (?, ?, ?)", (name, seen_at, seen_at)
            )
            minion_id = cursor.lastrowid
        else:
            minion_id = row[0]
        self.ids.minions[name] = minion_id
        return minion_id

    def minion_state(self, minion_id: int) -> dict:
        state = self.minions.get(minion_id)
        if state is None:
            row = self.conn.execute(
                "SELECT m.first_seen, m.last_seen, m.last_run_id, r.started_at FROM minions m "
                "LEFT JOIN runs r ON r.id = m.last_run_id WHERE m.id = ?",
                (minion_id,),
            ).fetchone()
            state = {
                "first_seen": row[0],
                "last_seen": row[1],
                "last_run_id": row[2],
                "last_started": row[3],
                "runs": 0,
                "grains": None,
            }
            self.minions[minion_id] = state
        return state

    # tests --------------------------------------------------------------------------------
    def test_ids(self, record: RunRecord) -> dict[str, int]:
        known = self.ids.tests
        if any(nodeid not in known for nodeid in record.per_test):
            missing = [nodeid for nodeid in record.per_test if nodeid not in known]
            before = self.conn.total_changes
            self.conn.executemany(
                "INSERT INTO tests (nodeid, file, line) VALUES (?, ?, ?) ON CONFLICT (nodeid) DO NOTHING",
                [
                    (nodeid, record.per_test[nodeid][2] or nodeid.split("::", 1)[0], record.per_test[nodeid][3])
                    for nodeid in missing
                ],
            )
            self.new_tests += self.conn.total_changes - before
            for chunk in _chunks(missing, SQL_CHUNK):
                marks = ",".join("?" * len(chunk))
                for test_id, nodeid in self.conn.execute(
                    f"SELECT id, nodeid FROM tests WHERE nodeid IN ({marks})",  # noqa: S608 (placeholders only)
                    chunk,
                ):
                    known[nodeid] = test_id
        return known

    def load_status(self, minion_id: int, test_ids: list[int]) -> None:
        wanted = [tid for tid in test_ids if (minion_id, tid) not in self.status]
        for chunk in _chunks(wanted, SQL_CHUNK):
            for tid in chunk:
                self.status[(minion_id, tid)] = None
            marks = ",".join("?" * len(chunk))
            for row in self.conn.execute(
                f"SELECT {', '.join(_STATUS_COLUMNS)} FROM test_status "  # noqa: S608 (constant columns)
                f"WHERE minion_id = ? AND test_id IN ({marks})",
                [minion_id, *chunk],
            ):
                self.status[(minion_id, row[1])] = dict(zip(_STATUS_COLUMNS, row, strict=True))
                self.stored.add((minion_id, row[1]))

    def recompute_status(self, minion_id: int, test_id: int) -> dict | None:
        """Rebuild a test_status row from the full history (for out-of-order arrivals)."""
        row: dict | None = None
        current: list | None = None
        history = self.conn.execute(
            "SELECT r.id, r.started_at, res.outcome, res.duration, r.code_hash FROM results res "
            "JOIN runs r ON r.id = res.run_id WHERE res.test_id = ? AND r.minion_id = ? "
            "ORDER BY r.started_at, r.id",
            (test_id, minion_id),
        )
        for run_id, started_at, outcome, duration, code_hash in history:
            if current and current[0] == run_id:
                if _PRECEDENCE[outcome] < _PRECEDENCE[current[2]]:
                    current[2] = outcome
                current[3] += duration or 0.0
                continue
            if current:
                row = _fold(row, minion_id, test_id, *current)
            current = [run_id, started_at, outcome, duration or 0.0, code_hash]
        if current:
            row = _fold(row, minion_id, test_id, *current)
        return row

    # runs ---------------------------------------------------------------------------------
    def add_run(self, record: RunRecord) -> str:
        """Insert one run with its results and summaries: 'ingested' or 'duplicate'."""
        conn = self.conn
        minion_id = self.minion_id(record.minion, record.returned_at)
        counts = record.counts
        cursor = conn.execute(
            _INSERT_RUN,
            (
                minion_id, record.jid, record.fun, record.source, record.status, record.exitcode,
                counts["passed"], counts["failed"], counts["skipped"], counts["xfailed"], counts["xpassed"],
                counts["errors"], record.started_at, record.finished_at, record.duration, record.returned_at,
                self.now, record.paths, record.args, record.python_version, record.pytest_version,
                record.grains, record.message, record.signed, record.code_hash,
            ),
        )  # fmt: skip
        if cursor.rowcount == 0:
            return "duplicate"
        run_id = cursor.lastrowid
        self.runs += 1
        if record.rows:
            ids = self.test_ids(record)
            conn.executemany(
                _INSERT_RESULT,
                [
                    (run_id, ids[nodeid], when, outcome, duration, message, longrepr, stdout, stderr, markers)
                    for nodeid, when, outcome, duration, message, longrepr, stdout, stderr, markers in record.rows
                ],
            )
            self.results += len(record.rows)
            self._update_status(minion_id, run_id, record, ids)
        self._update_minion(minion_id, run_id, record)
        return "ingested"

    def _update_status(self, minion_id: int, run_id: int, record: RunRecord, ids: dict[str, int]) -> None:
        per_test = record.per_test
        self.load_status(minion_id, [ids[nodeid] for nodeid in per_test])
        status, dirty = self.status, self.dirty
        started_at = record.started_at
        for nodeid, (outcome, duration, _file, _line) in per_test.items():
            tid = ids[nodeid]
            key = (minion_id, tid)
            row = status[key]
            if row is not None and (started_at, run_id) < (row["last_started_at"], row["last_run_id"]):
                # An older run arrived after a newer one: rebuild from history (its results are in).
                status[key] = self.recompute_status(minion_id, tid)
            else:
                status[key] = _fold(row, minion_id, tid, run_id, started_at, outcome, duration, record.code_hash)
            dirty.add(key)

    def _update_minion(self, minion_id: int, run_id: int, record: RunRecord) -> None:
        state = self.minion_state(minion_id)
        state["runs"] += 1
        state["first_seen"] = min(state["first_seen"], record.returned_at)
        state["last_seen"] = max(state["last_seen"], record.returned_at)
        newest = state["last_run_id"] is None or (record.started_at, run_id) > (
            state["last_started"] or "",
            state["last_run_id"],
        )
        if newest:
            state["last_run_id"] = run_id
            state["last_started"] = record.started_at
            state["grains"] = record.grains

    def add_job(self, record: JobRecord) -> None:
        self.conn.execute(
            "INSERT INTO jobs (jid, fun, tgt, tgt_type, targeted, started_at) VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (jid) DO UPDATE SET fun = excluded.fun, tgt = excluded.tgt, tgt_type = excluded.tgt_type, "
            "targeted = excluded.targeted, started_at = excluded.started_at",
            (record.jid, record.fun, record.tgt, record.tgt_type, record.targeted, record.started_at),
        )

    def flush(self) -> None:
        conn = self.conn
        updates, inserts = [], []
        for key in self.dirty:
            row = self.status[key]
            if key in self.stored:
                updates.append(
                    (
                        row["last_run_id"], row["last_outcome"], row["last_started_at"], row["runs"], row["fails"],
                        row["flips"], row["first_fail_at"], row["last_pass_at"], row["total_duration"],
                        row["last_code_hash"], row["code_flips"], key[0], key[1],
                    )
                )  # fmt: skip
            else:
                inserts.append(tuple(row[c] for c in _STATUS_COLUMNS))
        if updates:
            conn.executemany(_UPDATE_STATUS, updates)
        if inserts:
            conn.executemany(_INSERT_STATUS, inserts)
        for minion_id, state in self.minions.items():
            if state["grains"] is None:
                conn.execute(
                    "UPDATE minions SET runs = runs + ?, first_seen = ?, last_seen = ? WHERE id = ?",
                    (state["runs"], state["first_seen"], state["last_seen"], minion_id),
                )
            else:
                conn.execute(
                    "UPDATE minions SET runs = runs + ?, first_seen = ?, last_seen = ?, last_run_id = ?, grains = ? "
                    "WHERE id = ?",
                    (state["runs"], state["first_seen"], state["last_seen"], state["last_run_id"], state["grains"], minion_id),
                )
        conn.executemany(
            "INSERT INTO counters (name, value) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
            [(name, value) for name, value in (("runs", self.runs), ("results", self.results), ("tests", self.new_tests)) if value],
        )


def _sort_key(record: RunRecord | JobRecord) -> tuple:
    if isinstance(record, JobRecord):
        return (0, "", "", record.jid)
    return (1, record.minion, record.started_at, record.jid)


def write_records(conn: sqlite3.Connection, records: list[RunRecord | JobRecord], ids: _IdCache) -> list[str]:
    """Store ``records`` in the current transaction; one outcome per record ('ingested' | 'duplicate' | 'manifest').

    Run it through ``run_transaction(..., on_rollback=ids.clear)``: ids it caches belong to rows
    of this transaction until it commits.
    """
    batch = _Batch(conn, ids)
    outcomes: dict[int, str] = {}
    # Oldest first per minion, so "latest" summaries are built in order within a batch.
    for index in sorted(range(len(records)), key=lambda i: _sort_key(records[i])):
        record = records[index]
        if isinstance(record, JobRecord):
            batch.add_job(record)
            outcomes[index] = "manifest"
        else:
            outcomes[index] = batch.add_run(record)
    batch.flush()
    return [outcomes[i] for i in range(len(records))]


# -- moving files after the commit -------------------------------------------------------------


def _archive(settings: Settings, candidate: Candidate, duplicate: bool) -> None:
    dir_fd = candidate.inbox_dir.fd
    try:
        if settings.archive_mode == "delete":
            os.unlink(candidate.name, dir_fd=dir_fd)
            return
        target = Path(settings.archive) / _label(candidate.dir_name) / candidate.name
        if duplicate and os.path.lexists(target):
            target = target.with_name(f"{target.name}.dup-{time.time_ns()}")
        _move_out(dir_fd, candidate.name, _unique(target))
    except FileNotFoundError:
        pass  # already moved (another ingester did it)
    except OSError as err:
        # Stored already: next scan sees a duplicate and tries the move again.
        log.error("cannot archive %s/%s: %s", candidate.dir_name, candidate.name, err)


# -- the passes --------------------------------------------------------------------------------


@dataclass
class _IngestState:
    preparer: Preparer
    ids: _IdCache = field(default_factory=_IdCache)


_STATES: WeakKeyDictionary[Database, _IngestState] = WeakKeyDictionary()


def _state(db: Database, settings: Settings) -> _IngestState:
    state = _STATES.get(db)
    if state is None or state.preparer.settings is not settings:
        state = _IngestState(Preparer(settings), state.ids if state else _IdCache())
        _STATES[db] = state
    return state


def _prepare_chunk(preparer: Preparer, chunk: list[Candidate]) -> tuple[list[RunRecord | JobRecord], int]:
    """Validate a chunk of files; quarantine the bad ones. Returns (records, files quarantined)."""
    return _sort_out(preparer.settings, chunk, [preparer.prepare(candidate) for candidate in chunk])


def _sort_out(
    settings: Settings, chunk: list[Candidate], outcomes: list[RunRecord | JobRecord | Rejected]
) -> tuple[list[RunRecord | JobRecord], int]:
    records: list[RunRecord | JobRecord] = []
    quarantined = 0
    for candidate, outcome in zip(chunk, outcomes, strict=True):
        outcome.candidate = candidate
        if isinstance(outcome, Rejected):
            if outcome.reason and quarantine_entry(
                settings, candidate.inbox_dir.fd, candidate.dir_name, candidate.name, outcome.reason
            ):
                quarantined += 1
        else:
            records.append(outcome)
    return records, quarantined


# -- validation in a worker process --------------------------------------------------------------
# Validation (JSON, pydantic) and the writer's side are both CPU-bound Python: under the GIL they
# cannot overlap in threads. A pass with more than one batch (after downtime, a benchmark) hands
# validation to one worker process, so it runs on the other core while this process writes. The
# steady trickle (a few files per scan) stays in-process: no round trip for it.
#
# The worker is a plain ``python -c`` child talking over two pipes, not multiprocessing's spawn:
# spawn re-imports the parent's __main__ script in the child, which would re-run any caller's
# unguarded script (a benchmark, a one-off tool). DISTMON_INGEST_WORKER=0 turns it off.

WORKER_ENV = "DISTMON_INGEST_WORKER"
WORKER_REPLY_TIMEOUT = 300  # seconds for one batch; a stuck worker is killed and replaced


class _ValidationWorker:
    """One child process that runs :func:`_prepare_remote`; requests are serialized."""

    def __init__(self) -> None:
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        package_root = str(Path(__file__).resolve().parent.parent)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH", "")) if p)
        code = f"from dashboard.ingest import _worker_main; _worker_main({to_child_r}, {from_child_w})"
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-c", code], pass_fds=(to_child_r, from_child_w), env=env, stdin=subprocess.DEVNULL
            )
        finally:
            os.close(to_child_r)
            os.close(from_child_w)
        self.to_child = multiprocessing.connection.Connection(to_child_w, readable=False)
        self.from_child = multiprocessing.connection.Connection(from_child_r, writable=False)
        self.lock = threading.Lock()

    def validate(self, settings: Settings, items: list[tuple]) -> list:
        """Blocking (run it in a thread): the outcomes of :func:`_prepare_remote` for ``items``."""
        with self.lock:
            self.to_child.send((settings, items))
            if not self.from_child.poll(WORKER_REPLY_TIMEOUT):
                raise TimeoutError(f"no reply from the validation worker in {WORKER_REPLY_TIMEOUT} s")
            return self.from_child.recv()

    def close(self) -> None:
        for connection in (self.to_child, self.from_child):
            try:
                connection.close()
            except OSError:
                pass
        if self.process.poll() is None:
            self.process.kill()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass


_worker: _ValidationWorker | None = None
_worker_lock = threading.Lock()
_worker_preparers: dict[str, Preparer] = {}  # in the worker process: one per settings


def _validation_worker() -> _ValidationWorker | None:
    global _worker
    if os.environ.get(WORKER_ENV, "1") == "0":
        return None
    with _worker_lock:
        if _worker is None or _worker.process.poll() is not None:
            if _worker is not None:
                _worker.close()  # it died on its own: release its pipes
            try:
                _worker = _ValidationWorker()
            except OSError as err:
                log.warning("cannot start the validation worker (%s); validating in-process", err)
                return None
        return _worker


def _discard_worker(worker: _ValidationWorker) -> None:
    global _worker
    with _worker_lock:
        if _worker is worker:
            _worker = None
    worker.close()


def warm_up_validation_worker() -> None:
    """Start the validation worker ahead of the first big pass (its imports take a moment)."""
    _validation_worker()


def _worker_main(read_fd: int, write_fd: int) -> None:
    """The worker process's loop: (settings, items) in, outcomes out, until the parent goes away."""
    inbound = multiprocessing.connection.Connection(read_fd, writable=False)
    outbound = multiprocessing.connection.Connection(write_fd, readable=False)
    while True:
        try:
            settings, items = inbound.recv()
            outbound.send(_prepare_remote(settings, items))
        except (EOFError, OSError):  # the parent went away (exit, SIGKILL): so do we
            return


def _prepare_remote(settings: Settings, items: list[tuple[str, str, str, int, float]]) -> list:
    """In the worker: validate files named (dir, name, kind, size, mtime), reading them itself.

    Directories are opened with O_NOFOLLOW like the scanner does. The outcomes travel back
    without their candidate (descriptors mean nothing across processes); the caller re-attaches.
    """
    key = repr(settings)
    preparer = _worker_preparers.get(key)
    if preparer is None:
        preparer = _worker_preparers[key] = Preparer(settings)
    inbox_fd = os.open(settings.inbox, os.O_RDONLY | os.O_DIRECTORY)
    opened: dict[str, InboxDir | None] = {}
    outcomes: list = []
    try:
        for dir_name, name, kind, size, mtime in items:
            if dir_name not in opened:
                try:
                    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
                    opened[dir_name] = InboxDir(dir_name, os.open(dir_name, flags, dir_fd=inbox_fd))
                except OSError as err:
                    log.warning("validation worker cannot open %r: %s", dir_name, err)
                    opened[dir_name] = None
            inbox_dir = opened[dir_name]
            if inbox_dir is None:
                outcomes.append(Rejected(None, "its directory was replaced while being ingested"))  # type: ignore[arg-type]
                continue
            outcome = preparer.prepare(Candidate(dir_name, name, kind, size, mtime, inbox_dir))
            outcome.candidate = None  # type: ignore[assignment]
            outcomes.append(outcome)
    finally:
        for inbox_dir in opened.values():
            if inbox_dir is not None:
                os.close(inbox_dir.fd)
        os.close(inbox_fd)
    return outcomes


async def _prepare(
    work: _FileWork, preparer: Preparer, chunk: list[Candidate], *, in_worker: bool
) -> tuple[list[RunRecord | JobRecord], int]:
    worker = _validation_worker() if in_worker else None
    if worker is not None:
        items = [(c.dir_name, c.name, c.kind, c.size, c.mtime) for c in chunk]
        try:
            outcomes = await work.run(worker.validate, preparer.settings, items)
        except asyncio.CancelledError:
            raise
        except Exception as err:  # the worker died or misbehaved: validate here instead
            log.warning("validation worker failed (%s: %s); validating in-process", type(err).__name__, err)
            _discard_worker(worker)
        else:
            if len(outcomes) == len(chunk):
                return await work.run(_sort_out, preparer.settings, chunk, outcomes)
            _discard_worker(worker)
    return await work.run(_prepare_chunk, preparer, chunk)


def _transient(err: BaseException) -> bool:
    """A database error that is about the database (locked, disk full, I/O), not about the file."""
    return isinstance(err, sqlite3.OperationalError)


def _finish(settings: Settings, records: list, outcomes: list[str], report: IngestReport) -> None:
    for record, outcome in zip(records, outcomes, strict=True):
        if outcome == "ingested":
            report.ingested += 1
            report.results += len(record.rows)
        elif outcome == "duplicate":
            report.duplicates += 1
            log.info("duplicate %s/%s: already stored, archiving the file", record.minion, record.jid)
        else:
            report.manifests += 1
        _archive(settings, record.candidate, outcome == "duplicate")


class _FileWork:
    """Runs a pass's file-system work in threads and owns the pass's directory descriptors.

    The descriptors are closed only once no thread uses them any more, even when the pass is
    cancelled mid-way (a cancelled await does not stop its thread; a descriptor number closed
    under a running thread could be reused for another directory).
    """

    def __init__(self) -> None:
        self.opened: list[InboxDir] = []
        self._busy = 0
        self._closing = False
        self._lock = threading.Lock()

    def run(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        with self._lock:
            if self._closing:
                raise RuntimeError("this ingest pass is over: its directory descriptors are released")
            self._busy += 1
        future = _FILE_THREADS.submit(fn, *args)
        future.add_done_callback(self._done)
        return asyncio.wrap_future(future)

    def _done(self, _future: concurrent.futures.Future) -> None:
        with self._lock:
            self._busy -= 1
            close = self._closing and self._busy == 0
        if close:
            self._close()

    def close(self) -> None:
        with self._lock:
            self._closing = True
            close = self._busy == 0
        if close:
            self._close()

    def _close(self) -> None:
        with self._lock:
            opened, self.opened = self.opened, []
        for inbox_dir in opened:
            try:
                os.close(inbox_dir.fd)
            except OSError:
                pass


# Two threads: one validates the next chunk while the other moves the files of the last one.
_FILE_THREADS = concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="distmon-ingest")


async def _store(
    db: Database, settings: Settings, state: _IngestState, work: _FileWork, records: list, report: IngestReport
) -> None:
    """Commit ``records`` in one transaction, then archive their files; on failure retry one by one."""
    try:
        outcomes = await db.write(write_records, records, state.ids, on_rollback=state.ids.clear)
    except Exception as err:
        if len(records) == 1:
            await _handle_failure(settings, work, records[0], err, report)
            return
        log.warning("batch of %d files failed (%s: %s); retrying them one by one", len(records), type(err).__name__, err)
        for record in records:
            await _store(db, settings, state, work, [record], report)
        return
    _crash_hook()
    await work.run(_finish, settings, records, outcomes, report)


async def _handle_failure(settings: Settings, work: _FileWork, record, err: BaseException, report: IngestReport) -> None:
    candidate = record.candidate
    if _transient(err):
        log.warning("database error on %s/%s, left in the inbox for the next scan: %s", candidate.dir_name, candidate.name, err)
        report.deferred += 1
        return
    reason = f"the database rejected it: {type(err).__name__}: {str(err)[:200]}"
    if await work.run(quarantine_entry, settings, candidate.inbox_dir.fd, candidate.dir_name, candidate.name, reason):
        report.quarantined += 1


def _crash_hook() -> None:
    if os.environ.get(CRASH_AFTER_COMMIT_ENV) == "1":
        os._exit(99)


async def ingest_pending(db: Database, settings: Settings) -> IngestReport:
    """One pass over the inbox: store every valid file found, quarantine the rest."""
    state = _state(db, settings)
    report = IngestReport()
    work = _FileWork()
    pending: asyncio.Future | None = None
    try:
        candidates = await work.run(scan_inbox, settings, report, work.opened)
        chunks = list(_batches(candidates))
        in_worker = len(chunks) > 1
        if chunks:
            pending = asyncio.ensure_future(_prepare(work, state.preparer, chunks[0], in_worker=in_worker))
        for index in range(len(chunks)):
            records, quarantined = await pending
            report.quarantined += quarantined
            if index + 1 < len(chunks):
                # Validation of the next chunk overlaps the commit of this one.
                pending = asyncio.ensure_future(_prepare(work, state.preparer, chunks[index + 1], in_worker=in_worker))
            if records:
                await _store(db, settings, state, work, records, report)
    finally:
        if pending is not None and not pending.done():
            pending.cancel()  # it must not start new file work once the descriptors are released
        work.close()
    if report:
        log.info(
            "ingest: %d runs (%d results), %d duplicates, %d quarantined, %d manifests, %d deferred",
            report.ingested, report.results, report.duplicates, report.quarantined, report.manifests, report.deferred,
        )  # fmt: skip
    return report


async def run_ingester(db: Database, settings: Settings, stop: asyncio.Event) -> None:
    """Scan at start, then every ``settings.scan_interval`` seconds until ``stop`` is set; never dies."""
    interval = max(0.01, float(settings.scan_interval))
    warm_up_validation_worker()
    while not stop.is_set():
        try:
            await ingest_pending(db, settings)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("ingest pass failed; retrying in %.1f s", max(interval, 1.0))
            interval_now = max(interval, 1.0)
        else:
            interval_now = interval
        try:
            await asyncio.wait_for(stop.wait(), timeout=interval_now)
        except TimeoutError:
            pass


def ingest_pending_sync(settings: Settings) -> IngestReport:
    """One ingest pass without a running event loop (CLI, benchmarks)."""

    async def once() -> IngestReport:
        db = Database(settings.db_path)
        await db.open()
        try:
            return await ingest_pending(db, settings)
        finally:
            await db.close()

    return asyncio.run(once())
