"""dashboard.junit: JUnit XML -> distmon-result/1 documents, and its defences."""

from __future__ import annotations

import pytest

from dashboard.junit import JUnitError, parse_junit
from dashboard.models import ResultDocument

REPORT = b"""<?xml version="1.0"?>
<testsuite name="suite" time="2.0" timestamp="2026-11-28T07:00:00">
  <testcase classname="pkg.test_mod.TestA" name="test_ok[1]" time="0.5" file="pkg/test_mod.py" line="12"/>
  <testcase classname="pkg.test_mod.TestA" name="test_fail" time="0.5">
    <failure message="assert 1 == 2">long
traceback</failure><system-out>out</system-out><system-err>err</system-err>
  </testcase>
  <testcase classname="pkg.test_mod" name="test_err"><error message="fixture broke"/></testcase>
  <testcase classname="pkg.test_mod" name="test_skip"><skipped message="no db"/></testcase>
  <testcase classname="pkg.test_mod" name="test_xfail"><skipped type="pytest.xfail" message="known"/></testcase>
</testsuite>"""


def parse(raw: bytes) -> dict:
    return parse_junit(raw, source="ci", jid="build-7", mtime=1_800_000_000.0)


def test_mapping_of_a_report():
    doc = parse(REPORT)
    validated = ResultDocument.model_validate(doc)
    result = validated.result
    assert (validated.minion_id, validated.jid, validated.fun) == ("ci", "build-7", "junit")
    assert result.status == "failed"
    assert result.counts.model_dump() == {"passed": 1, "failed": 1, "skipped": 1, "xfailed": 1, "xpassed": 0, "errors": 1}
    assert result.started_at == "2026-11-28T07:00:00.000000Z"
    assert result.finished_at == "2026-11-28T07:00:02.000000Z"
    ok, fail, err, skip, xfail = result.tests
    assert (ok["nodeid"], ok["file"], ok["line"]) == ("pkg.test_mod.TestA::test_ok[1]", "pkg/test_mod.py", 12)
    assert (fail["outcome"], fail["message"], fail["longrepr"], fail["stdout"], fail["stderr"]) == (
        "failed", "assert 1 == 2", "long\ntraceback", "out", "err",
    )  # fmt: skip
    assert (err["outcome"], err["message"]) == ("error", "fixture broke")
    assert (skip["outcome"], xfail["outcome"]) == ("skipped", "xfailed")


def test_testsuites_root_and_namespaces_and_no_timestamp():
    raw = b'<testsuites xmlns="urn:x"><testsuite><testcase name="t"/></testsuite></testsuites>'
    doc = parse(raw)
    assert doc["result"]["status"] == "passed"
    assert doc["result"]["started_at"] == doc["returned_at"]  # the file's mtime


def test_empty_suite_is_no_tests():
    assert parse(b"<testsuite/>")["result"]["status"] == "no_tests"


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (b'<!DOCTYPE x [<!ENTITY e "e">]><testsuite>&e;</testsuite>', "DOCTYPE"),
        (b'<testsuite><!ENTITY e SYSTEM "file:///etc/passwd"></testsuite>', "not well-formed"),
        (b"<testsuite>", "well-formed"),
        (b"not xml at all", "well-formed"),
        (b"<html><body/></html>", "root element"),
        (b"<testsuite>&undefined;</testsuite>", "well-formed"),
    ],
)
def test_rejections(raw, why):
    with pytest.raises(JUnitError, match=why):
        parse(raw)


def test_odd_attribute_values_do_not_break_parsing():
    far = parse(b'<testsuite time="100" timestamp="9999-12-31T23:59:59"><testcase name="t"/></testsuite>')
    assert far["result"]["finished_at"] == far["result"]["started_at"]
    raw = b'<testsuite time="NaN" timestamp="garbage"><testcase name="t" time="-5" line="x"/></testsuite>'
    doc = parse(raw)
    ResultDocument.model_validate(doc)
    assert doc["result"]["tests"][0]["duration"] == 0.0 and doc["result"]["tests"][0]["line"] is None


# The raw bytes of these hold no ASCII "<!DOCTYPE": only the parsed document shows the declaration.
ENTITY_BOMB = (
    '<?xml version="1.0" encoding="{encoding}"?><!DOCTYPE l [<!ENTITY a "aaaaaaaaaa">'
    '<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;"><!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;">]>'
    '<testsuite><testcase name="t"><failure message="&c;">&c;</failure></testcase></testsuite>'
)


@pytest.mark.parametrize("codec", ["utf-16", "utf-16-le", "utf-16-be"])
def test_a_doctype_in_utf16_is_refused_by_the_parser(codec):
    raw = "\ufeff".encode(codec) if codec != "utf-16" else b""
    raw += ENTITY_BOMB.format(encoding="UTF-16").encode(codec)
    assert b"<!DOCTYPE" not in raw
    with pytest.raises(JUnitError, match="DOCTYPE/ENTITY declarations are refused"):
        parse(raw)


@pytest.mark.parametrize("encoding", ["UTF-16-LE", "UTF-32", "EBCDIC-definitely-not"])
def test_an_encoding_expat_cannot_read_is_a_refusal_not_a_crash(encoding):
    raw = ENTITY_BOMB.format(encoding=encoding).encode("utf-8")
    with pytest.raises(JUnitError):
        parse(raw)


def test_utf16_without_declarations_is_still_read():
    raw = '<?xml version="1.0" encoding="UTF-16"?><testsuite><testcase name="t"/></testsuite>'.encode("utf-16")
    assert parse(raw)["result"]["counts"]["passed"] == 1
