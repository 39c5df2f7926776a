"""JUnit XML reports dropped in the inbox, turned into ``distmon-result/1`` documents.

``<inbox>/<source>/<name>.xml``: the directory is the source ("minion"), the file stem the
run's jid. The document built here goes through the same validation and storage path as a
returner's file (``fun`` = ``"junit"``, stored with ``source`` = ``junit``).

Defences (the file comes from anywhere): the caller caps the size before reading; the parser
is defusedxml's (pinned in requirements_host.txt) with DTDs forbidden, so a ``DOCTYPE`` (and
with it any ``ENTITY``) is refused by the parser itself, on the decoded document, in whatever
encoding the file declares (UTF-16 included): no entity expansion, no external entities, only
XML's five predefined entities remain. The element count is capped.

Mapping: ``testcase`` -> one entry; ``nodeid`` = ``<classname>::<name>`` (or ``<name>``);
``failure`` -> failed, ``error`` -> error, ``skipped`` -> skipped (``xfailed`` when its type is
``pytest.xfail``), otherwise passed. The run's start is the first suite's ``timestamp``
(naive times taken as UTC), else the file's mtime.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from xml.etree.ElementTree import Element, ParseError  # noqa: S405 (types only; parsing is defusedxml's)

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring as defused_fromstring

from dashboard.models import MAX_NODEID_CHARS, RESULT_FORMAT, format_timestamp

MAX_ELEMENTS = 500_000


class JUnitError(ValueError):
    """The file is not an acceptable JUnit XML report (the message says why)."""


def _seconds(value: str | None) -> float:
    if not value:
        return 0.0
    try:
        seconds = float(value.replace(",", ""))
    except ValueError:
        return 0.0
    if seconds != seconds or seconds < 0 or seconds > 10**9:  # NaN, negative, absurd
        return 0.0
    return seconds


def _timestamp(value: str | None) -> datetime | None:
    if not value or len(value) > 64:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _local(tag: Any) -> str:
    # Namespaced tags ({ns}testcase) and comments/processing instructions (non-str tags).
    return tag.rsplit("}", 1)[-1] if isinstance(tag, str) else ""


def _entry(case: Element) -> dict[str, Any]:
    classname = case.get("classname") or ""
    name = case.get("name") or ""
    nodeid = f"{classname}::{name}" if classname and name else (name or classname or "<unnamed>")
    if len(nodeid.encode("utf-8", "replace")) > MAX_NODEID_CHARS:
        nodeid = nodeid[: MAX_NODEID_CHARS // 4]
    outcome, message, longrepr = "passed", None, None
    stdout = stderr = None
    for child in case:
        tag = _local(child.tag)
        if tag in ("failure", "error"):
            outcome = "failed" if tag == "failure" else "error"
            message = child.get("message") or (child.text or "").strip().split("\n", 1)[0] or tag
            longrepr = child.text or None
        elif tag == "skipped":
            outcome = "xfailed" if (child.get("type") or "") == "pytest.xfail" else "skipped"
            message = child.get("message") or None
        elif tag == "system-out":
            stdout = child.text or None
        elif tag == "system-err":
            stderr = child.text or None
    line = case.get("line")
    return {
        "nodeid": nodeid,
        "outcome": outcome,
        "when": "call",
        "duration": _seconds(case.get("time")),
        "file": (case.get("file") or classname or name)[: MAX_NODEID_CHARS // 4] or None,
        "line": int(line) if line and line.isdigit() and len(line) < 12 else None,
        "markers": [],
        "message": message,
        "longrepr": longrepr,
        "stdout": stdout,
        "stderr": stderr,
    }


def parse_junit(raw: bytes, *, source: str, jid: str, mtime: float) -> dict[str, Any]:
    """Parse a JUnit XML report into a ``distmon-result/1`` document (a dict, still to be validated)."""
    try:
        root = defused_fromstring(raw, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except DefusedXmlException as err:
        raise JUnitError(f"DOCTYPE/ENTITY declarations are refused in JUnit XML ({type(err).__name__})") from None
    except ParseError as err:
        raise JUnitError(f"not well-formed XML: {err}") from None
    except (ValueError, LookupError) as err:  # pyexpat: a declared multi-byte (UTF-16-LE) or unknown encoding
        raise JUnitError(f"unreadable XML: {err}") from None
    if _local(root.tag) not in ("testsuites", "testsuite"):
        raise JUnitError(f"root element is <{_local(root.tag)[:40]}>, not <testsuites> or <testsuite>")
    suites, tests, elements = [], [], 0
    for element in root.iter():
        elements += 1
        if elements > MAX_ELEMENTS:
            raise JUnitError(f"more than {MAX_ELEMENTS} XML elements")
        tag = _local(element.tag)
        if tag == "testsuite":
            suites.append(element)
        elif tag == "testcase":
            tests.append(_entry(element))
    file_time = datetime.fromtimestamp(mtime, UTC)
    started = next((t for t in (_timestamp(s.get("timestamp")) for s in suites) if t), None) or file_time
    duration = sum(_seconds(s.get("time")) for s in suites if _local(s.tag) == "testsuite")
    if not duration:
        duration = sum(t["duration"] for t in tests)
    keys = {"passed": "passed", "failed": "failed", "skipped": "skipped", "xfailed": "xfailed", "error": "errors"}
    counts = {"passed": 0, "failed": 0, "skipped": 0, "xfailed": 0, "xpassed": 0, "errors": 0}
    for test in tests:
        counts[keys[test["outcome"]]] += 1
    if not tests:
        status = "no_tests"
    elif counts["failed"] or counts["errors"]:
        status = "failed"
    else:
        status = "passed"
    try:
        finished = started + timedelta(seconds=duration)
    except OverflowError:  # a timestamp near year 9999
        finished = started
    return {
        "format": RESULT_FORMAT,
        "jid": jid,
        "minion_id": source,
        "fun": "junit",
        "fun_args": [],
        "success": status in ("passed", "no_tests"),
        "retcode": 0 if status in ("passed", "no_tests") else 1,
        "returned_at": format_timestamp(file_time),
        "grains": {},
        "result": {
            "status": status,
            "exitcode": None,
            "counts": counts,
            "tests": tests,
            "started_at": format_timestamp(started),
            "finished_at": format_timestamp(finished),
            "duration": duration,
            "paths": [],
            "args": [],
        },
    }
