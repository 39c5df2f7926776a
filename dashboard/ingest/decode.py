"""The fast path of validation: ``distmon-result/1`` documents decoded by msgspec structs.

The pydantic models of dashboard/models.py stay the definition of a valid document and the
source of every quarantine message. This module is a faster way to the same answer for the
common case (a ``pytestrun.run`` result): msgspec decodes and type-checks the whole
document in C, about four times faster than pydantic-core, and the rules msgspec cannot express
(identifiers, control characters, timestamps, the capping of long texts) run here in Python,
cached where the fleet repeats itself (node ids, markers).

The contract: :func:`decode_result` returns a :class:`FastDocument` only when the models would
accept the document with the same values; for anything else it returns None and the caller
validates with pydantic, which accepts or says why not. It may be stricter than the models
(a lone surrogate, a non-pytest result go the slow way), never laxer. A signature is checked
by the caller (:func:`signed_payload`); one that does not verify here goes the slow way too:
tests/unit/test_ingest_decode.py compares both on a corpus of mutated documents.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal

import msgspec
import pydantic_core
from msgspec import UNSET, Meta, Struct, UnsetType

from dashboard.models import (
    INT64_MAX,
    INT64_MIN,
    MAX_MESSAGE_CHARS,
    MAX_NODEID_CHARS,
    MAX_SHORT_CHARS,
    MAX_TEXT_CHARS,
    OUTCOMES,
    PHASES,
    RESULT_FORMAT,
    STATUSES,
    _capped,
    _json_blob,
    id_problem,
    normalize_timestamp,
)

_Int64 = Annotated[int, Meta(ge=INT64_MIN, le=INT64_MAX)]
_Count = Annotated[int, Meta(ge=0, le=INT64_MAX)]
_Seconds = Annotated[float, Meta(ge=0, le=10**9)]  # msgspec never yields NaN or Infinity from JSON
_Key = Annotated[str, Meta(max_length=MAX_NODEID_CHARS)]  # and no control characters: checked below
_Short = Annotated[str, Meta(max_length=MAX_SHORT_CHARS)]  # likewise
_Texts = Annotated[list[str], Meta(max_length=4096)]


class FastEntry(Struct, gc=False):
    """One ``tests`` entry (models.TestEntry). ``gc=False``: 50,000 of them a pass hold no cycles,
    and the collector would otherwise walk them all again and again."""

    nodeid: _Key
    outcome: Literal[OUTCOMES]  # type: ignore[valid-type]
    when: Literal[PHASES]  # type: ignore[valid-type]
    duration: _Seconds = 0.0
    file: _Key | None = None
    line: Annotated[int, Meta(ge=0, le=INT64_MAX)] | None = None
    markers: Annotated[tuple[_Short, ...], Meta(max_length=256)] = ()  # () is one shared object
    message: str | None = None
    longrepr: str | None = None
    stdout: str | None = None
    stderr: str | None = None


class _Counts(Struct, gc=False):
    passed: _Count
    failed: _Count
    skipped: _Count
    xfailed: _Count
    xpassed: _Count
    errors: _Count


class FastResult(Struct, gc=False):
    """models.PytestResult, with the same attribute names."""

    status: Literal[STATUSES]  # type: ignore[valid-type]
    exitcode: _Int64 | None
    counts: _Counts
    tests: list[FastEntry]
    started_at: str
    finished_at: str
    duration: _Seconds
    paths: _Texts = []
    args: _Texts = []
    python: _Short | None = None
    python_version: _Short | None = None
    pytest_version: _Short | None = None
    minion_id: str | None = None
    message: str | None = None
    code_hash: Annotated[str, Meta(max_length=128)] | None = None
    rerun_of: str | None = None


class FastDocument(Struct, gc=False):
    """models.ResultDocument of a pytest result, with the same attribute names."""

    format: Literal[RESULT_FORMAT]  # type: ignore[valid-type]
    jid: str
    minion_id: str
    fun: _Short
    success: bool
    retcode: _Int64
    returned_at: str
    result: FastResult
    # Any JSON: parsed by pydantic-core itself, as the models do (big integers, floats alike).
    fun_args: msgspec.Raw | UnsetType = UNSET
    grains: msgspec.Raw | UnsetType = UNSET
    signature: msgspec.Raw | UnsetType = UNSET


_DECODER = msgspec.json.Decoder(FastDocument)
_CONTROL = re.compile(r"[\x00-\x1f]")
_cap_message = _capped(MAX_MESSAGE_CHARS)
_cap_text = _capped(MAX_TEXT_CHARS)

# Strings already found free of control characters (node ids, files, markers), each to one
# canonical copy: a fleet sends the same few thousand again and again, and records that share
# their strings pickle them once on the way to the writer. Bounded: cleared when full.
_CLEAN_KEYS: dict[str, str] = {}
_CLEAN_KEYS_MAX = 200_000
# Marker lists -> their stored JSON text; bounded the same way.
_MARKERS_JSON: dict[tuple[str, ...], str] = {}
_MARKERS_JSON_MAX = 10_000


class NotFast(Exception):
    """This document must go the slow way (pydantic decides, and words the reason)."""


def decode_result(raw: bytes) -> tuple[FastDocument, dict[str, Any]] | None:
    """The document in ``raw`` checked and cleaned as the models would, with its grains; or None
    (validate it with pydantic)."""
    try:
        doc = _DECODER.decode(raw)
        _check_document(doc)
        _json_value(doc.fun_args)
        grains = _json_value(doc.grains) if doc.grains is not UNSET else {}
    except (msgspec.DecodeError, msgspec.ValidationError, NotFast, ValueError):
        return None
    if not isinstance(grains, dict):
        return None
    return doc, grains


def _check_document(doc: FastDocument) -> None:
    result = doc.result
    for identifier in (doc.jid, doc.minion_id, result.minion_id, result.rerun_of):
        if identifier is not None and id_problem(identifier):
            raise NotFast
    if result.minion_id is not None and result.minion_id != doc.minion_id:
        raise NotFast
    for short in (doc.fun, result.python, result.python_version, result.pytest_version, result.code_hash):
        if short is not None and _CONTROL.search(short):
            raise NotFast
    # Timestamps to the stored form; ValueError (not ISO 8601) sends it the slow way.
    doc.returned_at = normalize_timestamp(doc.returned_at)
    result.started_at = normalize_timestamp(result.started_at)
    result.finished_at = normalize_timestamp(result.finished_at)
    result.paths = [_cap_text(path) for path in result.paths]
    result.args = [_cap_text(arg) for arg in result.args]
    if result.message is not None:
        result.message = _cap_text(result.message)
    _check_entries(result.tests)


def is_signed(doc: FastDocument) -> bool:
    return doc.signature is not UNSET and bytes(doc.signature) != b"null"


# Floats kept as the text they were written in: the returner wrote them with Python's json, whose
# text is what its canonical form re-creates (msgspec would write 1e-05 as 0.00001).
_AS_WRITTEN = msgspec.json.Decoder(float_hook=lambda text: msgspec.Raw(text.encode()))


def signed_payload(raw: bytes) -> tuple[Any, bytes]:
    """(the ``signature`` value, the bytes it should cover): signing.canonical_bytes's form (sorted
    keys, no whitespace, UTF-8) at a third of its cost. Where the two forms could differ (a float
    not written by Python's json), the signature simply fails to verify here and the slow path,
    with signing.canonical_bytes itself, decides."""
    document = _AS_WRITTEN.decode(raw)
    signature = document.pop("signature", None)
    return signature, msgspec.json.encode(document, order="sorted")


def _json_value(raw: msgspec.Raw | UnsetType) -> Any:
    """A raw JSON field parsed as the models parse it (pydantic-core), size-checked like JsonBlob."""
    if raw is UNSET:
        return None
    return _json_blob(pydantic_core.from_json(bytes(raw)))


def _check_entries(entries: list[FastEntry]) -> None:
    """Per entry: control characters in keys and markers (cached), long or NUL-bearing texts capped."""
    clean = _CLEAN_KEYS
    if len(clean) > _CLEAN_KEYS_MAX:
        clean.clear()
    known = clean.get
    for entry in entries:
        nodeid = entry.nodeid
        entry.nodeid = known(nodeid) or _clean_key(nodeid)
        file = entry.file
        if file is not None:
            entry.file = known(file) or _clean_key(file)
        for marker in entry.markers:
            if marker not in clean:
                _clean_key(marker)
        # Free text (None for a passing test): cut, and NUL replaced, only when it must be.
        # Unrolled on purpose: four calls per entry would cost more than the checks themselves.
        text = entry.message
        if text is not None and (len(text) > MAX_MESSAGE_CHARS or "\x00" in text):
            entry.message = _cap_message(text)
        text = entry.longrepr
        if text is not None and (len(text) > MAX_TEXT_CHARS or "\x00" in text):
            entry.longrepr = _cap_text(text)
        text = entry.stdout
        if text is not None and (len(text) > MAX_TEXT_CHARS or "\x00" in text):
            entry.stdout = _cap_text(text)
        text = entry.stderr
        if text is not None and (len(text) > MAX_TEXT_CHARS or "\x00" in text):
            entry.stderr = _cap_text(text)


def _clean_key(value: str) -> str:
    if _CONTROL.search(value) or not value:
        raise NotFast
    _CLEAN_KEYS[value] = value
    return value


def markers_json(markers: tuple[str, ...]) -> str:
    """The stored JSON text of a markers list (``[]`` when empty), one ``json.dumps`` per distinct list."""
    if not markers:
        return "[]"
    text = _MARKERS_JSON.get(markers)
    if text is None:
        if len(_MARKERS_JSON) > _MARKERS_JSON_MAX:
            _MARKERS_JSON.clear()
        text = _MARKERS_JSON[markers] = json.dumps(list(markers))
    return text


def entries_of(tests: list[dict[str, Any]]) -> list[FastEntry]:
    """Entries the models validated (plain dicts), as :class:`FastEntry` for the one row builder."""
    return msgspec.convert(tests, list[FastEntry])
