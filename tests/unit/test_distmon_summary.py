"""_utils/distmon_summary.py: rows, progress lines and the table the runner and the outputter show."""

from __future__ import annotations

from tests.distmon_support import pytestrun_result as pytest_result
from tests.loader_support import load_loader_module

summary = load_loader_module("_utils/distmon_summary.py", "distmon_summary_under_test")


def test_summarize_return_takes_counts_duration_and_failures():
    result = pytest_result(passed=3, failed=1, skipped=2, tests=[
        {"nodeid": "t.py::test_a", "outcome": "passed", "message": None},
        {"nodeid": "t.py::test_b", "outcome": "failed", "message": "AssertionError: x"},
        {"nodeid": "t.py::test_c", "outcome": "error", "message": "fixture broke"},
    ])
    row = summary.summarize_return(result, retcode=1)
    assert (row["status"], row["passed"], row["failed"], row["skipped"], row["errors"]) == ("failed", 3, 1, 2, 0)
    assert row["retcode"] == 1
    assert row["duration"] == 0.5
    assert [f["nodeid"] for f in row["failures"]] == ["t.py::test_b", "t.py::test_c"]


def test_summarize_return_of_a_string_is_an_error_row():
    row = summary.summarize_return("'pytestrun.run' is not available.", retcode=254)
    assert row["status"] == "error"
    assert row["message"] == "'pytestrun.run' is not available."
    assert row["retcode"] == 254
    assert row["passed"] == row["failed"] == 0


def test_table_lists_every_minion_and_who_did_not_return():
    rows = {
        "web-2": summary.summarize_return(pytest_result(passed=2, duration=1.234)),
        "web-1": summary.summarize_return(pytest_result(passed=1, failed=1, skipped=1)),
        "db-1": summary.no_return_row("no return"),
    }
    table = summary.format_table(rows, ["web-1", "web-2", "db-1"])
    lines = table.splitlines()
    assert lines[0].split() == ["minion", "passed", "failed", "skipped", "errors", "duration", "status"]
    assert lines[2].split() == ["db-1", "-", "-", "-", "-", "-", "no_return"]
    assert lines[3].split() == ["web-1", "1", "1", "1", "0", "0.50", "failed"]
    assert lines[4].split() == ["web-2", "2", "0", "0", "0", "1.23", "passed"]
    assert "2 of 3 targeted minions returned" in table
    assert "Did not return: db-1" in table


def test_progress_never_prints_control_characters_from_a_minion():
    row = summary.summarize_return(pytest_result(passed=0, failed=1, tests=[
        {"nodeid": "t.py::test_x[\x1b]0;owned\x07]", "outcome": "failed", "message": "boom\x1b[2J"},
    ]))
    line = summary.progress_line("web-1\x1b[2J", row)
    assert "\x1b" not in line and "\x07" not in line
    assert "FAILED t.py::test_x[?]0;owned?] - boom?[2J" in line


def test_rerun_paths_run_exactly_the_failed_tests_again_where_they_were_found():
    tests = [{"nodeid": "t.py::a", "outcome": "passed"}, {"nodeid": "t.py::b", "outcome": "failed"},
             {"nodeid": "t.py::a", "outcome": "error", "when": "teardown"}, {"nodeid": "t.py::c", "outcome": "skipped"},
             "not an entry", {"outcome": "failed"}]
    failed = summary.failed_nodeids(tests)
    assert failed == ["t.py::a", "t.py::b"]
    assert summary.rerun_paths({"paths": ["salt://suite", "salt://other"]}, failed) == ["salt://t.py::a", "salt://t.py::b"]
    assert summary.rerun_paths({"paths": ["/srv/tests"], "rootdir": "/srv/tests/"}, failed) == [
        "/srv/tests/t.py::a", "/srv/tests/t.py::b"]
    assert summary.rerun_paths({"paths": ["/srv/tests", "salt://x"], "rootdir": None}, ["t.py::a"]) == ["t.py::a"]
