"""Property-based fuzzing of the ingester's parser (hypothesis): no input makes an exception escape.

Random bytes, random JSON, random XML and valid documents with random parts replaced go through
the real file-reading and validation path; whatever validates must then store without error in
a real SQLite database. "Unexpected" rejections (the catch-all for bugs) fail the test.
"""

from __future__ import annotations

import json
import os
import random
import string
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from dashboard.db import connect_sync
from dashboard.ingest import Candidate, IdCache, InboxDir, Preparer, Rejected, RunRecord, write_records
from tests.functional.ingest_support import make_doc, make_settings, test_entry

FUZZ = settings(max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
UNEXPECTED = "could not be validated"

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=30,
)


class Harness:
    """A real inbox directory (held by descriptor, like the ingester does) and a real database."""

    def __init__(self, root: Path, **overrides):
        self.settings = make_settings(root, max_file_bytes=200_000, **overrides)
        self.dir = Path(self.settings.inbox) / "web-1"
        self.dir.mkdir(parents=True)
        self.inbox_dir = InboxDir("web-1", os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY))
        self.preparer = Preparer(self.settings)
        self.conn = connect_sync(self.settings.db_path)
        self.ids = IdCache()

    def prepare(self, content: bytes, name: str = "20261128090000000001.json", kind: str = "result"):
        (self.dir / name).write_bytes(content)
        size = len(content)
        outcome = self.preparer.prepare(Candidate("web-1", name, kind, size, 1.7e9, self.inbox_dir))
        if isinstance(outcome, Rejected):
            assert not outcome.reason.startswith(UNEXPECTED), outcome.reason
        return outcome

    def store(self, record: RunRecord) -> None:
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            assert write_records(self.conn, [record], self.ids) in (["ingested"], ["duplicate"])
        finally:
            self.conn.execute("ROLLBACK")
            self.ids.clear()


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    """Signatures optional: unsigned documents take the one-pass JSON validation path."""
    harness = Harness(tmp_path_factory.mktemp("fuzz"))
    yield harness
    os.close(harness.inbox_dir.fd)
    harness.conn.close()


@pytest.fixture(scope="module")
def strict_harness(tmp_path_factory):
    """Signatures required: every document takes the json.loads + validate path."""
    harness = Harness(tmp_path_factory.mktemp("fuzz-strict"), require_signature=True)
    yield harness
    os.close(harness.inbox_dir.fd)
    harness.conn.close()


@FUZZ
@given(content=st.binary(max_size=2000))
def test_random_bytes_never_escape(harness, strict_harness, content):
    assert isinstance(harness.prepare(content), Rejected)
    assert isinstance(strict_harness.prepare(content), Rejected)


@FUZZ
@given(value=json_values)
def test_random_json_never_escapes(harness, strict_harness, value):
    content = json.dumps(value).encode()
    assert isinstance(harness.prepare(content), Rejected)
    assert isinstance(strict_harness.prepare(content), Rejected)


def _paths(value, prefix=()):
    yield prefix
    if isinstance(value, dict):
        for key, child in value.items():
            yield from _paths(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            yield from _paths(child, (*prefix, index))


BASE = make_doc(
    "web-1",
    "20261128090000000001",
    [test_entry("t.py::test_a"), test_entry("t.py::test_b", "failed"), test_entry("t.py::test_b", "error", "teardown")],
)
BASE_PATHS = [path for path in _paths(BASE) if path]


@FUZZ
@given(seed=st.integers(0, 2**32), replacements=st.lists(json_values, min_size=1, max_size=3))
def test_mutated_documents_are_rejected_cleanly_or_stored(harness, strict_harness, seed, replacements):
    rng = random.Random(seed)
    doc = json.loads(json.dumps(BASE))
    for replacement in replacements:
        path = rng.choice(BASE_PATHS)
        target = doc
        try:
            for key in path[:-1]:
                target = target[key]
            target[path[-1]] = replacement
        except (KeyError, IndexError, TypeError):
            continue
    content = json.dumps(doc).encode()
    outcome = harness.prepare(content)
    if isinstance(outcome, RunRecord):
        harness.store(outcome)
    # The other path validates the same way (and then refuses the unsigned file).
    strict = strict_harness.prepare(content)
    assert isinstance(strict, Rejected)
    assert ("authenticity" in strict.reason) == isinstance(outcome, RunRecord), (strict.reason, outcome)


@FUZZ
@given(
    nodeid=st.text(min_size=1, max_size=60),
    message=st.one_of(st.none(), st.text(max_size=200)),
    grains=st.dictionaries(st.text(max_size=8), json_values, max_size=4),
)
# Found by this test on PostgreSQL: a NUL in a grain reached minion_grains (text cannot hold NUL there).
@example(nodeid="0", message=None, grains={"": "\x00"})
def test_hostile_strings_in_valid_documents_store_cleanly(harness, nodeid, message, grains):
    doc = make_doc("web-1", "20261128090000000001", [test_entry(nodeid, "failed", message=message)], grains=grains)
    outcome = harness.prepare(json.dumps(doc).encode())
    if isinstance(outcome, RunRecord):
        harness.store(outcome)


xml_text = st.text(alphabet=string.ascii_letters + string.digits + " <>/=\"'&;!-?[]", max_size=300)


@FUZZ
@given(body=xml_text, case_name=st.text(max_size=40))
def test_random_junit_never_escapes(harness, body, case_name):
    attribute = case_name.replace("&", "&amp;").replace("<", "&lt;").replace('"', "&quot;")
    for content in (body.encode(), f'<testsuite><testcase name="{attribute}" time="x">{body}</testcase></testsuite>'.encode()):
        outcome = harness.prepare(content, name="build-1.xml", kind="junit")
        if isinstance(outcome, RunRecord):
            harness.store(outcome)
