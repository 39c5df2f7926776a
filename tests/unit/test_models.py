"""dashboard.models: the result format's validation rules (docs/result-format.md)."""

from __future__ import annotations

import copy

import pytest
from pydantic import ValidationError

from dashboard.models import (
    MAX_MESSAGE_CHARS,
    MAX_TEXT_CHARS,
    JobManifest,
    PytestResult,
    ResultDocument,
    describe_validation_error,
    id_problem,
    normalize_timestamp,
)
from tests.functional.ingest_support import make_doc, test_entry


def test_a_valid_document_validates_and_normalises_timestamps():
    doc = ResultDocument.model_validate(make_doc(started_at="2026-11-28T08:00:00.5+01:00"))
    assert isinstance(doc.result, PytestResult)
    assert doc.returned_at == "2026-11-28T07:00:00.500000Z"
    assert doc.result.counts.failed == 1
    assert [t["outcome"] for t in doc.result.tests] == ["passed", "failed"]


def test_unknown_keys_are_ignored_for_forward_compatibility():
    raw = make_doc()
    raw["new_key"] = {"x": 1}
    raw["result"]["tests"][0]["new_field"] = 3
    ResultDocument.model_validate(raw)


@pytest.mark.parametrize(
    ("mutate", "where"),
    [
        (lambda d: d.update(success="true"), "success"),
        (lambda d: d.update(retcode=1.0), "retcode"),
        (lambda d: d.update(retcode=True), "retcode"),
        (lambda d: d["result"]["counts"].update(failed=-1), "counts.failed"),
        (lambda d: d["result"]["tests"][0].update(duration="0.1"), "tests.0.duration"),
        (lambda d: d["result"]["tests"][0].update(when="later"), "tests.0.when"),
        (lambda d: d["result"].update(status="great"), "status"),
        (lambda d: d["result"]["counts"].pop("xpassed"), "counts.xpassed"),
        (lambda d: d.update(format="distmon-result/2"), "format"),
        (lambda d: d.update(returned_at="2026-13-45"), "returned_at"),
        (lambda d: d["result"].update(minion_id="web-2"), "minion_id"),
    ],
)
def test_wrong_types_and_values_are_rejected(mutate, where):
    raw = make_doc()
    mutate(raw)
    with pytest.raises(ValidationError) as info:
        ResultDocument.model_validate(raw)
    assert where.split(".")[-1] in describe_validation_error(info.value)


def test_free_text_is_capped_and_cleaned():
    raw = make_doc(
        tests=[test_entry("t.py::test_x", "failed", message="m" * 10_000, longrepr="é" * 100_000, stderr="a\x00b")]
    )
    entry = ResultDocument.model_validate(raw).result.tests[0]
    assert entry["message"].startswith("m" * MAX_MESSAGE_CHARS) and entry["message"].endswith("[truncated 5904 bytes]")
    assert entry["longrepr"].endswith(f"[truncated {2 * (100_000 - MAX_TEXT_CHARS)} bytes]")
    assert entry["stderr"] == "a\ufffdb"


def test_identifiers_follow_the_path_component_rules():
    assert id_problem("web-1") is None
    assert id_problem("minion.example.com") is None
    for bad in ("", ".", "..", "a/b", "a\\b", "a\x00b", "tab\there", "x" * 256, "\x85"):
        assert id_problem(bad), bad
    assert id_problem(5) == "not a string"


def test_other_functions_carry_any_json_but_bounded():
    assert ResultDocument.model_validate(make_doc(fun="cmd.run", result="hello")).result == "hello"
    with pytest.raises(ValidationError):
        ResultDocument.model_validate(make_doc(fun="cmd.run", result="x" * 300_000))


def test_pytestrun_results_must_have_the_pytest_shape():
    raw = make_doc()
    raw["result"] = {"status": "passed"}
    with pytest.raises(ValidationError, match="result"):
        ResultDocument.model_validate(raw)


def test_timestamps():
    assert normalize_timestamp("2026-11-28T07:00:00Z") == "2026-11-28T07:00:00.000000Z"
    assert normalize_timestamp("2026-11-28 07:00:00") == "2026-11-28T07:00:00.000000Z"
    for bad in ("now", "2026-11-28T25:00:00Z", "x" * 100):
        with pytest.raises(ValueError):
            normalize_timestamp(bad)


def test_job_manifest():
    manifest = {"format": "distmon-job/1", "jid": "1", "fun": "pytestrun.run", "tgt": ["a", "b"], "tgt_type": "list",
                "targeted": ["a", "b"], "started_at": "2026-11-28T07:00:00Z"}  # fmt: skip
    assert JobManifest.model_validate(manifest).targeted == ["a", "b"]
    bad = copy.deepcopy(manifest)
    bad["targeted"] = ["../x"]
    with pytest.raises(ValidationError):
        JobManifest.model_validate(bad)
