"""_output/distmon.py: what salt-run and `salt --out distmon` print for distmon runs."""

from __future__ import annotations

import pytest

from tests.loader_support import load_loader_module, load_utils

outputter = load_loader_module("_output/distmon.py", "distmon_outputter_under_test")
UTILS = load_utils(["distmon_summary"])


@pytest.fixture(autouse=True)
def summary_library(monkeypatch):
    # Outputters get no __utils__: the outputter loads the library itself; here it is handed over.
    monkeypatch.setattr(outputter, "_UTILS", UTILS)


def pytestrun_return(passed=1, failed=0, tests=None, status=None):
    return {
        "status": status or ("failed" if failed else "passed"),
        "exitcode": 1 if failed else 0,
        "counts": {"passed": passed, "failed": failed, "skipped": 0, "xfailed": 0, "xpassed": 0, "errors": 0},
        "tests": tests or [],
        "duration": 0.25,
        "stdout": "x" * 10_000,
    }


def test_progress_events_print_their_message_alone():
    assert outputter.output({"suffix": "progress", "event": {"message": "web-1: passed", "outputter": "distmon"}}) \
        == "web-1: passed"


def test_runner_rows_become_the_table():
    summarize = UTILS["distmon_summary.summarize_return"]
    data = {
        "web-1": {"jid": "1", **summarize(pytestrun_return(passed=2))},
        "web-2": {"jid": "1", **UTILS["distmon_summary.no_return_row"]("down")},
        "retcode": 1,
    }
    text = outputter.output(data)
    lines = text.splitlines()
    assert lines[0].split() == ["minion", "passed", "failed", "skipped", "errors", "duration", "status"]
    assert lines[2].split() == ["web-1", "2", "0", "0", "0", "0.25", "passed"]
    assert "1 of 2 targeted minions returned" in text and "Did not return: web-2" in text
    assert "retcode" not in text


def test_a_pytestrun_return_is_one_line_with_its_failures_not_the_whole_dump():
    ret = pytestrun_return(passed=1, failed=1, tests=[
        {"nodeid": "t.py::test_ok", "outcome": "passed", "message": None},
        {"nodeid": "t.py::test_bad", "outcome": "failed", "message": "AssertionError: 1 == 2\nmore"},
    ])
    text = outputter.output({"web-1": ret})
    assert text.splitlines() == [
        "web-1: failed: 1 passed, 1 failed, 0 skipped, 0 errors in 0.25 s",
        "    FAILED t.py::test_bad - AssertionError: 1 == 2",
    ]


def test_an_error_string_from_a_minion_is_shown_as_an_error():
    text = outputter.output({"web-1": "'pytestrun.run' is not available."})
    assert text == "web-1: error: 'pytestrun.run' is not available."


def test_several_minions_at_once_also_get_the_table():
    text = outputter.output({"web-1": pytestrun_return(), "web-2": pytestrun_return(failed=1)})
    assert text.startswith("web-1: passed: 1 passed")
    assert "2 of 2 targeted minions returned" in text
