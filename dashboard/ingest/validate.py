"""Validation and preparation of inbox files, before any transaction.

A file becomes a :class:`RunRecord` or :class:`JobRecord` (rows flattened off the writer's
thread), or a :class:`Rejected` with the reason it is quarantined for. Nothing here writes to
the database.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import stat
from typing import Any, NamedTuple

import msgspec
from pydantic import ValidationError

from dashboard.config import Settings
from dashboard.failure_texts import text_digest
from dashboard.ingest.decode import (
    FastDocument,
    FastEntry,
    decode_result,
    entries_of,
    is_signed,
    markers_json,
    signed_payload,
)
from dashboard.ingest.inbox import quarantine_entry
from dashboard.ingest.records import Candidate, JobRecord, Rejected, RunRecord
from dashboard.ingest.status import FAIL, PRECEDENCE
from dashboard.junit import JUnitError, parse_junit
from dashboard.models import (
    JOB_FORMAT,
    RESULT_FORMAT,
    JobManifest,
    PytestResult,
    ResultDocument,
    describe_validation_error,
    id_problem,
)
from dashboard.signatures import Signature, failure_signature
from dashboard.signing import KeyStore, check_document, verify_payload

log = logging.getLogger(__name__)


# -- validation (before any transaction) ------------------------------------------------------


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _read(candidate: Candidate, cap: int) -> bytes:
    fd = os.open(candidate.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=candidate.inbox_dir.fd)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise _Reject("not a regular file")
        # Sized by fstat, not by the cap: a read of cap + 1 bytes allocates that much per file.
        chunks = []
        wanted = min(info.st_size, cap) + 1
        while wanted > 0:
            chunk = os.read(fd, wanted)
            if not chunk:
                break
            chunks.append(chunk)
            # A file still growing: go on to the cap (+1 to see that it is over).
            wanted = cap + 1 - sum(map(len, chunks))
    finally:
        os.close(fd)
    raw = chunks[0] if len(chunks) == 1 else b"".join(chunks)
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


# The same test failing the same way, on many minions and run after run, is the common case of a
# fleet: its signature (tens of microseconds of regular expressions) and its text's digest
# (dashboard/failure_texts.py) are computed once. The keys hold the texts, so only failures of at
# most 8 KiB of text are kept: 2,048 of them, <= 16 MiB.
_CACHED_SIGNATURE_CHARS = 8192


class _Failure(NamedTuple):
    signature: Signature
    text_digest: bytes


def _failure(nodeid: str, message: str | None, longrepr: str | None, file: str | None) -> _Failure:
    sig = failure_signature(nodeid, message, longrepr, file)
    return _Failure(sig, text_digest(sig.signature, message, longrepr))


_cached_failure = functools.lru_cache(maxsize=2048)(_failure)


def _signature(nodeid: str, message: str | None, longrepr: str | None, file: str | None) -> _Failure:
    if len(message or "") + len(longrepr or "") <= _CACHED_SIGNATURE_CHARS:
        return _cached_failure(nodeid, message, longrepr, file)
    return _failure(nodeid, message, longrepr, file)


def _flatten(
    tests: list[FastEntry],
) -> tuple[list[tuple], dict[str, tuple], dict[str, str], dict[str, tuple[str, str, str]], dict[str, int]]:
    """Result rows (signature and text digest last), per test (worst outcome, duration, file, line),
    and signatures: per test, their parts, how many rows carry each.

    Failure signatures and text digests are computed here, in the validation worker when there is
    one: the writer only stores them. Per result on the hot path: locals, attribute reads, and
    markers as JSON once per distinct list.
    """
    rows = []
    append = rows.append
    per_test: dict[str, tuple] = {}
    test_signatures: dict[str, str] = {}
    signature_parts: dict[str, tuple[str, str, str]] = {}
    signature_counts: dict[str, int] = {}
    for t in tests:
        nodeid, outcome, duration, message, longrepr = t.nodeid, t.outcome, t.duration, t.message, t.longrepr
        markers = t.markers
        signature = digest = None
        if outcome in FAIL:
            sig, digest = _signature(nodeid, message, longrepr, t.file)
            signature = sig.signature
            if signature in signature_counts:
                signature_counts[signature] += 1
            else:
                signature_counts[signature] = 1
                signature_parts[signature] = (sig.exception, sig.message, sig.location)
        append((nodeid, t.when, outcome, duration, message, longrepr, t.stdout, t.stderr,
                markers_json(markers) if markers else "[]", signature, digest))  # fmt: skip
        seen = per_test.get(nodeid)
        if seen is None:
            per_test[nodeid] = (outcome, duration, t.file, t.line)
            if signature:
                test_signatures[nodeid] = signature
        else:
            # One outcome per test and run: the worst of its entries (passed + teardown error = error).
            worse = PRECEDENCE[outcome] < PRECEDENCE[seen[0]]
            per_test[nodeid] = (outcome if worse else seen[0], seen[1] + duration, seen[2], seen[3])
            if signature and (worse or nodeid not in test_signatures):
                test_signatures[nodeid] = signature
    return rows, per_test, test_signatures, signature_parts, signature_counts


def _grains_json(grains: dict[str, Any]) -> str:
    """The grains as stored JSON text, a NUL anywhere in them as U+FFFD (the rule of every stored
    text field): PostgreSQL's ``jsonb`` refuses ``\\u0000``, and the fleet's grain profiles parse it."""
    text = json.dumps(grains, sort_keys=True)
    if "\\u0000" in text:
        text = json.dumps(_without_nul(grains), sort_keys=True)
    return text


def _without_nul(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, dict):
        return {_without_nul(key): _without_nul(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_without_nul(item) for item in value]
    return value


def _pytest_record(
    candidate: Candidate, doc: ResultDocument | FastDocument, *, counts: dict[str, int], tests: list[FastEntry],
    grains: dict[str, Any], source: str, signed: bool,
) -> RunRecord:
    """The record of a pytest result, from either path (their documents share attribute names)."""
    result = doc.result
    rows, per_test, test_signatures, signature_parts, signature_counts = _flatten(tests)
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
        grains=_grains_json(grains),
        message=result.message,
        signed=int(signed),
        rows=rows,
        per_test=per_test,
        code_hash=result.code_hash,
        test_signatures=test_signatures,
        signature_parts=signature_parts,
        signature_counts=signature_counts,
        rerun_of=result.rerun_of,
    )


def _fast_record(doc: FastDocument, grains: dict[str, Any], candidate: Candidate, *, signed: bool) -> RunRecord:
    """A document :func:`decode_result` accepted (a pytest result) as its record."""
    counts = msgspec.structs.asdict(doc.result.counts)
    return _pytest_record(candidate, doc, counts=counts, tests=doc.result.tests, grains=grains, source="distmon",
                          signed=signed)  # fmt: skip


def _run_record(doc: ResultDocument, candidate: Candidate, *, source: str, signed: bool) -> RunRecord:
    result = doc.result
    if isinstance(result, PytestResult):
        return _pytest_record(candidate, doc, counts=result.counts.model_dump(), tests=entries_of(result.tests),
                              grains=doc.grains, source=source, signed=signed)  # fmt: skip
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
        grains=_grains_json(doc.grains),
        message=None,
        signed=int(signed),
        rows=[],
        per_test={},
    )


def _check_names(doc: ResultDocument | FastDocument, candidate: Candidate, stem: str) -> None:
    """The document's minion and jid must be the inbox directory's and the file's names."""
    if doc.minion_id != candidate.dir_name:
        raise _Reject(
            f"minion_id {doc.minion_id[:80]!r} in the file differs from its inbox directory {candidate.dir_name!r}"
        )
    if doc.jid != stem:
        raise _Reject(f"jid {doc.jid[:80]!r} in the file differs from its file name {candidate.name!r}")


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
        # Fast path: msgspec decodes and checks the common document in one pass (decode.py);
        # anything it does not accept is decided, and its reason worded, by pydantic below.
        fast = decode_result(raw)
        if fast is not None:
            doc, grains = fast
            _check_names(doc, candidate, stem)
            signed = self._fast_authenticity(doc, raw, candidate)
            if signed is not None:
                return _fast_record(doc, grains, candidate, signed=signed)
        if not settings.require_signature:
            doc = self._validate_json(raw)
            if doc.signature is not None:
                doc = None  # verify on the exact object json.loads builds, then validate that
        else:
            doc = None
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
        _check_names(doc, candidate, stem)
        signed, problem = check_document(
            document, candidate.dir_name, self.keys, require=bool(settings.require_signature)
        )
        if problem:
            raise _Reject(f"authenticity: {problem}")
        if doc.signature is not None and not signed:
            log.warning("storing %s/%s as unsigned: its signature could not be verified", doc.minion_id, doc.jid)
        return _run_record(doc, candidate, source="distmon", signed=signed)

    def _fast_authenticity(self, doc: FastDocument, raw: bytes, candidate: Candidate) -> bool | None:
        """Signed (True) or unsigned (False) and storable as such; None when the slow path must
        decide (a signature that does not verify here, no key, an unsigned file that must be)."""
        if not is_signed(doc):
            return None if self.settings.require_signature else False
        key = self.keys.public_key(candidate.dir_name)
        if key is None:
            return None
        signature, payload = signed_payload(raw)
        return True if verify_payload(signature, lambda: payload, key) is None else None

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


def prepare_chunk(preparer: Preparer, chunk: list[Candidate]) -> tuple[list[RunRecord | JobRecord], int]:
    """Validate a chunk of files; quarantine the bad ones. Returns (records, files quarantined)."""
    return sort_out(preparer.settings, chunk, [preparer.prepare(candidate) for candidate in chunk])


def sort_out(
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
