"""Failure signatures: one short, stable id for "the same failure" wherever and whenever it happens.

A failed or errored test result gets a signature built from three parts (docs/triage.md has the
rules with examples):

1. the **exception type** (``AssertionError``, ``requests.exceptions.ConnectionError``, ...), from the
   final location line of the traceback (``tests/test_x.py:12: AssertionError``), else from the
   message's ``Type: ...`` prefix, else from the last ``E   Type: ...`` line; ``Failed`` when none;
2. the **message with its volatile parts masked** (:func:`mask`): UUIDs, timestamps, temporary
   paths, quoted values, hex ids and numbers become placeholders, so two messages that differ
   only by such values are the same failure;
3. the **test's own failing location**: the deepest traceback frame in the test's own file
   (``file:line``), so a failure raised deep inside a library still points at the test line that
   triggered it, and a different failing line is a different failure.

The signature is the first 16 hex digits of SHA-256 over the three parts. Computing one costs
a few tens of microseconds (regular expressions over the message and the traceback's location
lines only); the ingester does it while validating, in its worker process.

.. code-block:: python

    >>> sig = failure_signature("tests/test_a.py::test_x", "AssertionError: got 3 items",
    ...                         "tests/test_a.py:12: AssertionError", "tests/test_a.py")
    >>> sig.exception, sig.message, sig.location
    ('AssertionError', 'got <n> items', 'tests/test_a.py:12')
"""

from __future__ import annotations

import hashlib
import re
from typing import NamedTuple

SIGNATURE_LENGTH = 16  # hex digits of SHA-256 kept: 64 bits, no collision in any real fleet
SIGNATURE_PATTERN = re.compile(r"^[0-9a-f]{16}$")
MAX_MASKED_CHARS = 300  # the masked message kept for display and hashing
_SCAN_TAIL_CHARS = 20_000  # only the traceback's tail is scanned for locations (the deepest frames)

# Order matters: the specific patterns run before the generic number rule eats their digits.
_MASKS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"\b[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\b"), "<uuid>"),
    (
        re.compile(
            r"\b\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?)?\b"
            r"|\b\d{2}:\d{2}:\d{2}(?:[.,]\d+)?\b"
        ),
        "<time>",
    ),
    # Temporary paths up to the next quote, space or bracket: pytest's tmp_path, mkdtemp, /dev/shm.
    (
        re.compile(r"(?:/private)?(?:/tmp|/var/tmp|/var/folders|/dev/shm)/[^\s'\"()\[\]{},;]*"
                   r"|\b[A-Za-z]:\\[^\s'\"]*\\Temp\\[^\s'\"()\[\]{},;]*"),
        "<tmp>",
    ),
    (re.compile(r"'(?:[^'\\\n]|\\.)*'"), "'<str>'"),
    (re.compile(r'"(?:[^"\\\n]|\\.)*"'), '"<str>"'),
    (re.compile(r"\b0x[0-9a-fA-F]+\b"), "<hex>"),
    # Bare hex ids (commit ids, object ids): 8+ hex digits with at least one letter and one digit.
    (re.compile(r"\b(?=[0-9a-fA-F]*[a-fA-F])(?=[0-9a-fA-F]*\d)[0-9a-fA-F]{8,}\b"), "<hex>"),
    # Numbers not glued to a name (``node42`` and ``py3`` stay, ``port 8080`` and ``web-1`` do not).
    (re.compile(r"(?<![\w<])[-+]?\d+(?:\.\d+)*(?:[eE][-+]?\d+)?"), "<n>"),
)
_SPACES = re.compile(r"\s+")
# A traceback location line as pytest writes it: ``path:line: Type`` (final), ``path:line: in func``
# (--tb=short) or ``path:line: `` (--tb=long, an intermediate frame).
_LOCATION = re.compile(r"^(?P<path>[^\s:][^:\n]*?):(?P<line>\d+):(?: (?P<rest>[^\n]*))?$", re.MULTILINE)
_TYPE_NAME = re.compile(r"^(?:[A-Za-z_]\w*\.)*[A-Z_]\w*$")
_MESSAGE_TYPE = re.compile(r"^((?:[A-Za-z_]\w*\.)*[A-Z_]\w*):(?:\s|$)")
_E_LINE = re.compile(r"^E\s+(.*)$", re.MULTILINE)


class Signature(NamedTuple):
    """A failure's signature and the parts it was built from (all stored, for display)."""

    signature: str
    exception: str
    message: str  # masked
    location: str  # file:line of the test's own failing frame, or the file alone


def mask(text: str | None) -> str:
    """``text`` with UUIDs, timestamps, temp paths, quoted values, hex ids and numbers masked.

    Whitespace runs become one space; the result is cut to :data:`MAX_MASKED_CHARS`.

    .. code-block:: python

        mask("timeout after 30.5 s talking to 10.0.0.7")  # 'timeout after <n> s talking to <n>'
    """
    if not text:
        return ""
    masked = text[: MAX_MASKED_CHARS * 4]
    for pattern, placeholder in _MASKS:
        masked = pattern.sub(placeholder, masked)
    return _SPACES.sub(" ", masked).strip()[:MAX_MASKED_CHARS]


def _same_file(location_path: str, test_file: str) -> bool:
    # Paths may be relative to different roots (the rootdir, an absolute checkout): compare tails.
    a, b = location_path.replace("\\", "/").lstrip("./"), test_file.replace("\\", "/").lstrip("./")
    return bool(a and b) and (a == b or a.endswith("/" + b) or b.endswith("/" + a))


def _locations(longrepr: str) -> list[tuple[str, str, str]]:
    tail = longrepr[-_SCAN_TAIL_CHARS:]
    return [(m["path"], m["line"], (m["rest"] or "").strip()) for m in _LOCATION.finditer(tail)]


def _exception_type(message: str, locations: list[tuple[str, str, str]], longrepr: str) -> str:
    if locations:
        rest = locations[-1][2]
        if _TYPE_NAME.match(rest) and not rest.startswith("in "):
            return rest
    match = _MESSAGE_TYPE.match(message)
    if match:
        return match.group(1)
    e_lines = _E_LINE.findall(longrepr[-_SCAN_TAIL_CHARS:])
    for line in reversed(e_lines):
        match = _MESSAGE_TYPE.match(line.strip())
        if match:
            return match.group(1)
    return "Failed"


def _message_body(message: str, exception: str, longrepr: str) -> str:
    text = message
    if not text:
        e_lines = _E_LINE.findall(longrepr[-_SCAN_TAIL_CHARS:])
        text = e_lines[0].strip() if e_lines else ""
    text = text.splitlines()[0] if text else ""
    # The type is its own part: "AssertionError: x" and "x" (pytest writes both) mask alike.
    for prefix in (exception + ":", exception.rsplit(".", 1)[-1] + ":"):
        if text.startswith(prefix):
            return text[len(prefix) :].strip()
    return text


def failure_signature(nodeid: str, message: str | None, longrepr: str | None, test_file: str | None = None) -> Signature:
    """The signature of one failed/errored result of test ``nodeid``.

    ``test_file`` is the test's file (the result's ``file``); by default the nodeid's path.
    """
    message = message or ""
    longrepr = longrepr or ""
    test_file = test_file or nodeid.split("::", 1)[0]
    locations = _locations(longrepr) if longrepr else []
    exception = _exception_type(message, locations, longrepr)
    own = [loc for loc in locations if _same_file(loc[0], test_file)]
    if own:
        location = f"{test_file}:{own[-1][1]}"
    elif locations:
        # The test file never appears (a fixture in a conftest, a plugin): the deepest frame.
        location = f"{locations[-1][0].replace(chr(92), '/')}:{locations[-1][1]}"
    else:
        location = test_file
    masked = mask(_message_body(message, exception, longrepr))
    digest = hashlib.sha256(f"{exception}\x00{masked}\x00{location}".encode("utf-8", "replace")).hexdigest()
    return Signature(digest[:SIGNATURE_LENGTH], exception, masked, location)


def is_signature(value: str) -> bool:
    """True when ``value`` has the shape of a signature (16 lowercase hex digits)."""
    return bool(SIGNATURE_PATTERN.match(value or ""))
