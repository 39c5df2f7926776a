"""Pydantic models of the result format ``distmon-result/1`` (docs/result-format.md) and the job manifest.

The ingester validates every inbox file with these models before anything touches the
database. Validation is strict (no ``"1"`` -> ``1`` coercion, no NaN/Infinity, 64-bit ints),
unknown keys are ignored (a newer writer may add keys without a version bump), and field
sizes are capped so a hostile file cannot bloat the database:

- identifiers (``minion_id``, ``jid``) follow the doc's path-component rules;
- ``nodeid`` and ``file`` longer than :data:`MAX_NODEID_CHARS` characters, short strings
  (``fun``, versions, markers) longer than :data:`MAX_SHORT_CHARS`, or any of them holding
  control characters, reject the file; so do lone surrogates in any string;
- ``message`` is cut to :data:`MAX_MESSAGE_CHARS`, ``longrepr``/``stdout``/``stderr`` to
  :data:`MAX_TEXT_CHARS`, with ``…[truncated N bytes]`` appended (as the returner does);
- NUL characters in free text are replaced (C code reading the database would cut strings
  at them).

Timestamps are normalised to UTC ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` so they sort as text.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, Required

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
    with_config,
)
from typing_extensions import TypedDict

RESULT_FORMAT = "distmon-result/1"
JOB_FORMAT = "distmon-job/1"

MAX_ID_BYTES = 255
MAX_NODEID_CHARS = 4096
MAX_MESSAGE_CHARS = 4096
MAX_TEXT_CHARS = 65536
MAX_SHORT_CHARS = 1024
MAX_JSON_BLOB_BYTES = 256 * 1024

_ID_FORBIDDEN = re.compile(r"[/\\\x00-\x1f\x7f-\x9f]")

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

STATUSES = ("passed", "failed", "no_tests", "usage_error", "internal_error", "interrupted", "timeout", "error")
OUTCOMES = ("passed", "failed", "skipped", "xfailed", "xpassed", "error")
PHASES = ("call", "setup", "teardown", "collect")


def id_problem(value: object) -> str | None:
    """Why ``value`` is not a valid minion id / jid path component, or None when it is."""
    if not isinstance(value, str):
        return "not a string"
    if value in ("", ".", ".."):
        return "empty, '.' or '..'"
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        return "not valid UTF-8"
    if size > MAX_ID_BYTES:
        return f"longer than {MAX_ID_BYTES} bytes"
    if _ID_FORBIDDEN.search(value):
        return "contains '/', '\\', NUL or control characters"
    return None


def is_valid_id(value: object) -> bool:
    """True when ``value`` may be used as a path component (minion id, jid, JUnit source)."""
    return id_problem(value) is None


def _check_id(value: str) -> str:
    problem = id_problem(value)
    if problem:
        raise ValueError(f"invalid identifier ({problem})")
    return value


def _clean_text(value: str) -> str:
    if "\x00" in value:
        value = value.replace("\x00", "\ufffd")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        value = value.encode("utf-8", "replace").decode("utf-8")
    return value


def _capped(limit: int):
    def cap(value: str) -> str:
        value = _clean_text(value)
        if len(value) > limit:
            cut = len(value[limit:].encode("utf-8"))
            value = f"{value[:limit]}…[truncated {cut} bytes]"
        return value

    return cap


def normalize_timestamp(value: str) -> str:
    """ISO 8601 -> UTC ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` (naive times are taken as UTC)."""
    if len(value) > 64:
        raise ValueError("timestamp too long")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError as err:
        raise ValueError(f"not an ISO 8601 timestamp: {value[:40]!r}") from err
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return format_timestamp(moment)


def format_timestamp(moment: datetime) -> str:
    """A datetime as the stored text form (UTC, microseconds, ``Z``)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _json_blob(value: Any) -> Any:
    # Serialised here to bound its size; NaN/Infinity are not JSON (the JSON parser lets them in).
    try:
        size = len(json.dumps(value, separators=(",", ":"), allow_nan=False))
    except ValueError:
        raise ValueError("NaN or Infinity is not JSON") from None
    if size > MAX_JSON_BLOB_BYTES:
        raise ValueError(f"larger than {MAX_JSON_BLOB_BYTES} bytes as JSON")
    return value


def _short_errors(err: ValidationError, limit: int = 5) -> str:
    """A validation error as one bounded line (for .reason files and logs)."""
    parts = []
    for item in err.errors(include_url=False, include_input=False)[:limit]:
        message = item["msg"].removeprefix("Value error, ")
        where = ".".join(str(p) for p in item["loc"])
        parts.append(f"{where}: {message}" if where else message)
    more = err.error_count() - limit
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


def describe_validation_error(err: ValidationError) -> str:
    """Public form of :func:`_short_errors`."""
    return _short_errors(err)


Identifier = Annotated[str, AfterValidator(_check_id)]
# Constraints checked by pydantic-core itself (no Python call per field: ingest speed matters).
_NO_CONTROL = r"^[^\x00-\x1f]*$"
NodeKey = Annotated[str, StringConstraints(max_length=MAX_NODEID_CHARS, pattern=_NO_CONTROL)]
Short = Annotated[str, StringConstraints(max_length=MAX_SHORT_CHARS, pattern=_NO_CONTROL)]
Message = Annotated[str, AfterValidator(_capped(MAX_MESSAGE_CHARS))]
LongText = Annotated[str, AfterValidator(_capped(MAX_TEXT_CHARS))]
Timestamp = Annotated[str, AfterValidator(normalize_timestamp)]
Int64 = Annotated[int, Field(ge=INT64_MIN, le=INT64_MAX)]
Count = Annotated[int, Field(ge=0, le=INT64_MAX)]
Seconds = Annotated[float, Field(ge=0, le=10**9, allow_inf_nan=False)]
JsonBlob = Annotated[Any, AfterValidator(_json_blob)]


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", frozen=False)


class Counts(_Strict):
    passed: Count
    failed: Count
    skipped: Count
    xfailed: Count
    xpassed: Count
    errors: Count


@with_config(ConfigDict(strict=True, extra="ignore"))
class TestEntry(TypedDict, total=False):
    """One reported outcome of one test (a ``tests`` entry), validated into a plain dict.

    A TypedDict rather than a model: a run carries many entries and building a dict is about
    twice as fast as building a model instance. Optional keys may be absent: use ``.get``.
    """

    nodeid: Required[NodeKey]
    outcome: Required[Literal["passed", "failed", "skipped", "xfailed", "xpassed", "error"]]
    when: Required[Literal["call", "setup", "teardown", "collect"]]
    duration: Seconds
    file: NodeKey | None
    line: Annotated[int, Field(ge=0, le=INT64_MAX)] | None
    markers: Annotated[list[Short], Field(max_length=256)]
    message: Message | None
    longrepr: LongText | None
    stdout: LongText | None
    stderr: LongText | None


class PytestResult(_Strict):
    """What ``pytestrun.run`` returns (the document's ``result``)."""

    status: Literal["passed", "failed", "no_tests", "usage_error", "internal_error", "interrupted", "timeout", "error"]
    exitcode: Int64 | None
    counts: Counts
    tests: list[TestEntry]
    started_at: Timestamp
    finished_at: Timestamp
    duration: Seconds
    paths: Annotated[list[LongText], Field(max_length=4096)] = []
    args: Annotated[list[LongText], Field(max_length=4096)] = []
    python: Short | None = None
    python_version: Short | None = None
    pytest_version: Short | None = None
    minion_id: Identifier | None = None
    message: LongText | None = None
    # Fingerprint of the test code that ran (additive key; see docs/result-format.md).
    code_hash: Annotated[str, StringConstraints(max_length=128, pattern=_NO_CONTROL)] | None = None
    # The jid this run re-ran the failures of (reactor or salt-run distmon.rerun; additive key).
    rerun_of: Identifier | None = None


class ResultDocument(_Strict):
    """A ``distmon-result/1`` document as found in ``<inbox>/<minion_id>/<jid>.json``."""

    format: Literal["distmon-result/1"]
    jid: Identifier
    minion_id: Identifier
    fun: Short
    fun_args: JsonBlob = []
    success: bool
    retcode: Int64
    returned_at: Timestamp
    grains: Annotated[dict[str, Any], AfterValidator(_json_blob)] = {}
    # For pytestrun.run a PytestResult; for any other function its return, any JSON. Left to
    # right: one pass in the common case; _typed_result reports why a pytest result failed.
    result: Annotated[PytestResult | Any, Field(union_mode="left_to_right")]
    signature: Signature | None = None

    @model_validator(mode="after")
    def _typed_result(self) -> ResultDocument:
        if isinstance(self.result, PytestResult):
            if self.result.minion_id is not None and self.result.minion_id != self.minion_id:
                raise ValueError("result.minion_id differs from minion_id")
        elif self.fun == "pytestrun.run" or (isinstance(self.result, dict) and "tests" in self.result):
            # Not a valid pytest result: validate again to say why (only on this error path).
            try:
                PytestResult.model_validate(self.result)
            except ValidationError as err:
                raise ValueError(f"result: {_short_errors(err)}") from None
            raise ValueError("result: not a pytestrun.run result")
        else:
            _json_blob(self.result)
        return self


class Signature(_Strict):
    alg: Short
    value: Annotated[str, Field(max_length=8192)]


class JobManifest(_Strict):
    """``<inbox>/_jobs/<jid>.json``: which minions a run targeted (format ``distmon-job/1``)."""

    format: Literal["distmon-job/1"]
    jid: Identifier
    fun: Short | None = None
    tgt: JsonBlob = None
    tgt_type: Short | None = None
    targeted: Annotated[list[Identifier], Field(max_length=100_000)] = []
    started_at: Timestamp | None = None


ResultDocument.model_rebuild()
