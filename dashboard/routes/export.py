"""Export one run as JUnit XML (for CI tools) or as JSON (the result-format ``tests`` entries)."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from typing import Any

# Characters XML 1.0 cannot carry at all, even escaped: captured output may contain them.
_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def _text(value: Any) -> str:
    return _XML_INVALID.sub("\ufffd", "" if value is None else str(value))


def _split_nodeid(nodeid: str) -> tuple[str, str]:
    """pytest's node id as JUnit's (classname, name): ``a/b.py::C::t[x]`` → ``a.b.C``, ``t[x]``."""
    parts = nodeid.split("::")
    module = parts[0].removesuffix(".py").replace("/", ".")
    if len(parts) == 1:
        return module, parts[0]
    return ".".join([module, *parts[1:-1]]), parts[-1]


def run_to_junit(run: dict[str, Any]) -> bytes:
    """A JUnit XML document of the run (one testsuite, one testcase per result entry)."""
    counts = run["counts"]
    suite = ET.Element("testsuite", {
        "name": _text(f"{run['minion']}:{run['jid']}"),
        "tests": str(len(run["tests"])),
        "failures": str(counts["failed"]),
        "errors": str(counts["errors"]),
        "skipped": str(counts["skipped"] + counts["xfailed"]),
        "time": f"{run['duration'] or 0:.3f}",
        "timestamp": _text(run["started_at"]),
        "hostname": _text(run["minion"]),
    })
    properties = ET.SubElement(suite, "properties")
    for name, value in (("jid", run["jid"]), ("status", run["status"]), ("fun", run["fun"])):
        ET.SubElement(properties, "property", {"name": name, "value": _text(value)})
    for test in run["tests"]:
        classname, name = _split_nodeid(test["nodeid"])
        case = ET.SubElement(suite, "testcase", {
            "classname": _text(classname), "name": _text(name), "file": _text(test["file"]),
            "time": f"{test['duration'] or 0:.3f}",
        })
        if test["line"] is not None:
            case.set("line", str(test["line"]))
        outcome = test["outcome"]
        tag = {"failed": "failure", "error": "error", "skipped": "skipped", "xfailed": "skipped"}.get(outcome)
        if tag:
            element = ET.SubElement(case, tag, {"message": _text(test["message"])})
            if tag != "skipped" or test["longrepr"]:
                element.text = _text(test["longrepr"])
        if test["stdout"]:
            ET.SubElement(case, "system-out").text = _text(test["stdout"])
        if test["stderr"]:
            ET.SubElement(case, "system-err").text = _text(test["stderr"])
    return ET.tostring(ET.ElementTree(suite).getroot(), encoding="utf-8", xml_declaration=True)


def run_to_json(run: dict[str, Any]) -> dict[str, Any]:
    """The run as JSON: its summary plus every test entry in the result format's shape."""
    return {"format": "distmon-export/1", **run}
