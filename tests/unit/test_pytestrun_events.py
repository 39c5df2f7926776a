"""Unit tests for pytestrun's run events: new/fixed against the previous run, the event's shape,
and firing that never fails or slows the run (loader dunders faked)."""

from __future__ import annotations

import time

import pytest

from tests.loader_support import load_loader_module, load_utils


@pytest.fixture
def pytestrun(tmp_path, monkeypatch):
    module = load_loader_module("_modules/pytestrun.py", "distmon_unit_pytestrun_events")
    monkeypatch.setattr(module, "__utils__", load_utils(), raising=False)
    config: dict = {"pytestrun.event_timeout": 0.5}
    fired: list = []

    def fire_master(data, tag):
        fired.append((tag, data))
        return True

    monkeypatch.setattr(module, "__opts__", {"cachedir": str(tmp_path / "cache"), "id": "unit-minion"}, raising=False)
    monkeypatch.setattr(module, "__salt__", {"config.get": lambda key, default=None: config.get(key, default),
                                             "event.fire_master": fire_master}, raising=False)
    monkeypatch.setattr(module, "__context__", {}, raising=False)
    module._test_config, module._fired = config, fired
    return module


def entries(**outcomes):
    return [{"nodeid": f"t.py::{name}", "outcome": outcome, "when": "call"} for name, outcome in outcomes.items()]


def test_new_and_fixed_are_computed_against_the_previous_run_of_the_same_paths(pytestrun):
    first = pytestrun._compare_with_previous(["salt://t"], [], entries(a="passed", b="failed", c="skipped"))
    assert first == (["t.py::b"], [])  # never ran here before: a failure is new
    second = pytestrun._compare_with_previous(["salt://t"], [], entries(a="failed", b="failed", c="skipped"))
    assert second == (["t.py::a"], [])  # b still failing: not new again
    third = pytestrun._compare_with_previous(["salt://t"], [], entries(a="skipped", b="passed", c="error"))
    assert third == (["t.py::c"], ["t.py::b"])  # a skipped: keeps its failing verdict, not fixed
    fourth = pytestrun._compare_with_previous(["salt://t"], [], entries(a="passed"))
    assert fourth == ([], ["t.py::a"])
    # Other paths (a re-run of some node ids) have their own history.
    other = pytestrun._compare_with_previous(["salt://t/x.py::c"], [], entries(c="error"))
    assert other == (["t.py::c"], [])


def test_a_teardown_error_after_a_pass_is_a_failure(pytestrun):
    tests = [{"nodeid": "t.py::a", "outcome": "passed", "when": "call"},
             {"nodeid": "t.py::a", "outcome": "error", "when": "teardown"}]
    assert pytestrun._compare_with_previous(["p"], [], tests) == (["t.py::a"], [])


def test_the_event_carries_jid_paths_counts_and_node_ids(pytestrun):
    result = {"status": "failed", "paths": ["salt://t"], "args": ["-q"], "minion_id": "unit-minion",
              "counts": {"passed": 1, "failed": 1}, "started_at": "s", "finished_at": "f", "duration": 1.0,
              "tests": entries(a="passed", b="failed"), "rerun_of": "123"}
    changes = pytestrun._announce(result, "20261202000000000001")
    assert changes == {"new": ["t.py::b"], "fixed": []}
    [(tag, data)] = pytestrun._fired
    assert tag == "distmon/run/failed"
    assert data["jid"] == "20261202000000000001" and data["minion_id"] == "unit-minion"
    assert data["new"] == ["t.py::b"] and data["failed"] == ["t.py::b"] and data["fixed"] == []
    assert data["paths"] == ["salt://t"] and data["counts"]["failed"] == 1 and data["rerun_of"] == "123"
    assert data["truncated"] is False
    # A re-run never asks for another.
    assert data["rerun"] == {"wanted": False, "paths": ["salt://t.py::b"], "saltenv": "base"}
    result.pop("rerun_of")
    result["paths"] = ["salt://t"]
    pytestrun._announce(result, "20261202000000000002")
    assert pytestrun._fired[-1][1]["rerun"]["wanted"] is False  # b is not new any more
    result["tests"] = entries(a="failed", b="failed")
    pytestrun._announce(result, "20261202000000000003", saltenv="qa")
    assert pytestrun._fired[-1][1]["rerun"] == {"wanted": True, "paths": ["salt://t.py::a"], "saltenv": "qa"}
    pytestrun._test_config["pytestrun.rerun_new_failures"] = False
    result["tests"] = entries(a="passed", b="failed", c="failed")
    pytestrun._announce(result, "20261202000000000004")
    assert pytestrun._fired[-1][1]["rerun"]["wanted"] is False and pytestrun._fired[-1][1]["new"] == ["t.py::c"]
    pytestrun._announce(result | {"tests": entries(d="error")}, "20261202000000000005", rerun_new_failures=True)
    assert pytestrun._fired[-1][1]["rerun"]["wanted"] is True


def test_firing_never_fails_or_slows_the_run(pytestrun, monkeypatch):
    result = {"status": "passed", "paths": ["p"], "args": [], "counts": {}, "started_at": "s", "finished_at": "f",
              "duration": 0.1, "tests": entries(a="passed")}

    def hangs(data, tag):
        time.sleep(5)

    def raises(data, tag):
        raise RuntimeError("bus down")

    for fire in (hangs, raises):
        pytestrun.__salt__["event.fire_master"] = fire
        began = time.monotonic()
        assert pytestrun._announce(result, "1") == {"new": [], "fixed": []}
        assert time.monotonic() - began < 2
    # Masterless: not even tried. Turned off: not tried either.
    calls = []
    pytestrun.__salt__["event.fire_master"] = lambda data, tag: calls.append(tag)
    monkeypatch.setitem(pytestrun.__opts__, "file_client", "local")
    pytestrun._announce(result, "1")
    monkeypatch.setitem(pytestrun.__opts__, "file_client", "remote")
    pytestrun._test_config["pytestrun.events"] = False
    pytestrun._announce(result, "1")
    assert calls == []


def test_rerun_of_must_be_a_jid(pytestrun, tmp_path):
    from salt.exceptions import SaltInvocationError

    with pytest.raises(SaltInvocationError, match="rerun_of"):
        pytestrun.run(str(tmp_path), rerun_of="../etc")


def test_verdicts_of_paths_not_run_for_a_month_are_forgotten(pytestrun):
    import os

    pytestrun._compare_with_previous(["old"], [], entries(a="failed"))
    old = pytestrun._history_path(["old"], [])
    month_ago = time.time() - 31 * 86400
    os.utime(old, (month_ago, month_ago))
    pytestrun._compare_with_previous(["new"], [], entries(a="failed"))
    assert not os.path.exists(old) and os.path.exists(pytestrun._history_path(["new"], []))
