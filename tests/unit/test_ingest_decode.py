"""dashboard/ingest/decode.py: the msgspec fast path never accepts what the pydantic models refuse,
and what it accepts becomes exactly the record the models' path builds.

Each case is decided twice: by :func:`decode_result` and by ``ResultDocument.model_validate_json``
(the definition of valid). When the fast path accepts, the models must accept too and both
records must be equal field by field; when it declines, the models decide (either way).
"""

from __future__ import annotations

import copy
import json
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from dashboard.ingest.decode import decode_result, is_signed, signed_payload
from dashboard.ingest.validate import _fast_record, _run_record
from dashboard.models import MAX_MESSAGE_CHARS, MAX_NODEID_CHARS, MAX_TEXT_CHARS, ResultDocument
from dashboard.signing import canonical_bytes
from tests.functional.ingest_support import make_doc, test_entry

CANDIDATE = object()  # the records only carry it


def _models_record(raw: bytes):
    try:
        doc = ResultDocument.model_validate_json(raw)
    except ValidationError:
        return None
    return _run_record(doc, CANDIDATE, source="distmon", signed=False)


def _decide(raw: bytes):
    """(fast record or None, the models' record or None); asserts the contract."""
    fast = decode_result(raw)
    models = _models_record(raw)
    if fast is None:
        return None, models
    assert models is not None, f"the fast path accepted what the models refuse: {raw[:300]!r}"
    record = _fast_record(*fast, CANDIDATE, signed=False)
    assert record == models
    return record, models


def _raw(doc: dict) -> bytes:
    return json.dumps(doc, ensure_ascii=False).encode("utf-8", "surrogatepass")


def test_the_common_document_takes_the_fast_path_and_equals_the_models_record():
    doc = make_doc()
    doc["result"]["tests"].append(test_entry("t.py::test_c", outcome="skipped", when="setup", markers=["slow", "db"]))
    doc["grains"] = {"os": "Debian", "roles": ["web", "db"], "num_cpus": 2, "mem": 2**70}
    doc["fun_args"] = ["/srv/tests", {"kw": 1.5}]
    fast, models = _decide(_raw(doc))
    assert fast is not None  # the fast path is really taken
    assert fast.per_test["t.py::test_c"][0] == "skipped"
    assert json.loads(fast.grains)["mem"] == 2**70  # a big integer kept exact, as pydantic keeps it


@pytest.mark.parametrize(
    "mutate",
    [
        pytest.param(lambda d: d["result"]["tests"][0].update(message="x" * (MAX_MESSAGE_CHARS + 10)), id="long-message"),
        pytest.param(lambda d: d["result"]["tests"][1].update(longrepr="y\x00" * MAX_TEXT_CHARS), id="nul-long-longrepr"),
        pytest.param(lambda d: d["result"]["tests"][1].update(stdout="a\x00b"), id="nul-stdout"),
        pytest.param(lambda d: d["result"].update(message="m\x00" * 40000), id="result-message"),
        pytest.param(lambda d: d["result"].update(paths=["p" * (MAX_TEXT_CHARS + 1)]), id="long-path"),
        pytest.param(lambda d: d.update(returned_at="2026-11-28T09:00:00+02:00"), id="offset-timestamp"),
        pytest.param(lambda d: d["result"].update(started_at="2026-11-28T09:00:00"), id="naive-timestamp"),
        pytest.param(lambda d: d["result"]["tests"][0].update(nodeid="é" * MAX_NODEID_CHARS), id="max-nodeid"),
        pytest.param(lambda d: d["result"]["tests"][0].update(duration=3), id="int-duration"),
        pytest.param(lambda d: d["result"]["tests"][0].pop("duration"), id="no-duration"),
        pytest.param(lambda d: d["result"]["tests"][0].update(line=None, file=None), id="null-location"),
        pytest.param(lambda d: d.update(extra={"x": [1]}), id="unknown-key"),
        pytest.param(lambda d: d.update(signature=None), id="null-signature"),
        pytest.param(lambda d: d["result"].update(code_hash="abc", rerun_of="20261128000000000001"), id="code-hash"),
    ],
)
def test_valid_variants_are_accepted_with_the_models_values(mutate):
    doc = make_doc()
    mutate(doc)
    fast, models = _decide(_raw(doc))
    assert models is not None
    assert fast is not None


@pytest.mark.parametrize(
    "mutate",
    [
        pytest.param(lambda d: d["result"]["tests"][0].update(nodeid="a\nb"), id="control-in-nodeid"),
        pytest.param(lambda d: d["result"]["tests"][0].update(markers=["x\ty"]), id="control-in-marker"),
        pytest.param(lambda d: d["result"]["tests"][0].update(file="f\x00.py"), id="nul-in-file"),
        pytest.param(lambda d: d["result"]["tests"][0].update(nodeid="n" * (MAX_NODEID_CHARS + 1)), id="long-nodeid"),
        pytest.param(lambda d: d.update(fun="pytestrun.run\n"), id="control-in-fun"),
        pytest.param(lambda d: d.update(minion_id="../etc"), id="bad-minion-id"),
        pytest.param(lambda d: d.update(jid=""), id="empty-jid"),
        pytest.param(lambda d: d["result"].update(minion_id="web-2"), id="result-minion-differs"),
        pytest.param(lambda d: d["result"].update(rerun_of="a/b"), id="bad-rerun-of"),
        pytest.param(lambda d: d.update(returned_at="yesterday"), id="bad-timestamp"),
        pytest.param(lambda d: d.update(retcode=2**63), id="retcode-over-int64"),
        pytest.param(lambda d: d.update(retcode=True), id="bool-retcode"),
        pytest.param(lambda d: d.update(success=1), id="int-success"),
        pytest.param(lambda d: d["result"]["counts"].update(passed=-1), id="negative-count"),
        pytest.param(lambda d: d["result"]["tests"][0].update(duration=-0.5), id="negative-duration"),
        pytest.param(lambda d: d["result"]["tests"][0].update(outcome="PASSED"), id="bad-outcome"),
        pytest.param(lambda d: d["result"]["tests"][0].update(markers=["m"] * 257), id="too-many-markers"),
        pytest.param(lambda d: d.update(grains=["not", "a", "dict"]), id="grains-list"),
        pytest.param(lambda d: d.update(grains={"big": "x" * 300_000}), id="grains-too-big"),
        pytest.param(lambda d: d.update(result={"whatever": 1}, fun="test.ping"), id="not-a-pytest-result"),
    ],
)
def test_everything_else_goes_the_slow_way(mutate):
    doc = make_doc()
    mutate(doc)
    fast, _models = _decide(_raw(doc))
    assert fast is None


@pytest.mark.parametrize(
    "raw",
    [
        b'{"format": "distmon-result/1", "jid": "\\ud800"}',  # a lone surrogate
        b"\xef\xbb\xbf{}",  # a byte-order mark
        b"[]",
        b"",
        b'{"format": NaN}',
        b"\xff\xfe",
    ],
)
def test_malformed_bytes_go_the_slow_way(raw):
    assert decode_result(raw) is None


@pytest.mark.parametrize(
    "number", [0.25, 4.3e-05, 1.5e-07, 1e16, 123456789012345678.0, -2.5e-300, 3.0, 2**70, 0], ids=lambda value: repr(value)
)
def test_the_signed_bytes_are_the_canonical_form_python_writes(number):
    doc = make_doc(grains={"b": "é😀", "a": [1, {"z": None, "y": True}], "ctl": "\x1f\u2028", "n": number})
    doc["result"]["tests"][0]["duration"] = abs(number) if abs(number) < 1e9 else 0.5
    doc["signature"] = {"alg": "rsa-pss-sha256", "value": "AAAA"}
    raw = json.dumps(doc).encode()
    fast = decode_result(raw)
    assert fast is not None and is_signed(fast[0])
    signature, payload = signed_payload(raw)
    assert signature == doc["signature"]
    assert payload == canonical_bytes(json.loads(raw))


def test_a_float_written_otherwise_gives_other_bytes_so_the_slow_path_decides():
    # Not Python's own text for 0.00001: the fast bytes differ, the signature cannot verify on them.
    raw = _raw(make_doc()).replace(b'"duration": 1.5', b'"duration": 1.5E0')
    assert signed_payload(raw)[1] != canonical_bytes(json.loads(raw))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70) | st.floats(allow_nan=False)
    | st.text(max_size=20) | st.sampled_from(["", "passed", "call", "2026-11-28T08:00:00Z", "a\x00", "\t", "é" * 5]),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


def _paths(value, prefix=()):
    yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _paths(item, (*prefix, index))


@settings(max_examples=400, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32), replacement=json_values, delete=st.booleans())
def test_random_mutations_never_pass_the_fast_path_alone(seed, replacement, delete):
    doc = make_doc()
    doc["result"]["tests"].append(test_entry("t.py::test_c", outcome="error", when="teardown", markers=["m"]))
    paths = [path for path in _paths(doc) if path]
    path = random.Random(seed).choice(paths)
    mutated = copy.deepcopy(doc)
    parent = mutated
    for step in path[:-1]:
        parent = parent[step]
    if delete and isinstance(parent, dict):
        del parent[path[-1]]
    else:
        parent[path[-1]] = replacement
    _decide(_raw(mutated))
