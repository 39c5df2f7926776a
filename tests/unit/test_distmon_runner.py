"""_runners/distmon.py with loader mocks: summaries, table, exit code, prompts, deadlines, manifest.

The LocalClient is a scripted stand-in here (returns shaped like ``test.arg`` /
``pytestrun.run`` returns); tests/integration/test_runner.py runs the same code
against real minions.
"""

from __future__ import annotations

import io
import json
import re
import socket
import sys
import threading
import time
from unittest import mock

import pytest
from salt.exceptions import NotImplemented as SaltNotImplemented

from tests.loader_support import load_loader_module

runner = load_loader_module("_runners/distmon.py", "distmon_runner_under_test")

JID = "20261128080000123456"


def pytest_result(passed=1, failed=0, skipped=0, errors=0, status=None, duration=0.5, tests=None):
    status = status or ("failed" if failed or errors else "passed")
    return {
        "status": status,
        "exitcode": 1 if status == "failed" else 0,
        "counts": {"passed": passed, "failed": failed, "skipped": skipped, "xfailed": 0, "xpassed": 0,
                   "errors": errors},
        "tests": tests or [],
        "duration": duration,
    }


class FakeEventBus:
    def __init__(self):
        self.fired = []

    def fire_event(self, data, tag):
        self.fired.append((tag, data))


class FakeJidEvent:
    """What the runner client injects: a namespaced event with the bus and the job's tag."""

    def __init__(self):
        self.event = FakeEventBus()
        self.base = f"salt/run/{JID}"

    def fire_event(self, data, tag):  # pragma: no cover - the runner must not echo through this
        raise AssertionError("progress must not be echoed through salt-run's outputter")


class FakeClient:
    """A LocalClient stand-in: publishes nothing, yields the scripted events."""

    def __init__(self, minions, events):
        self.minions = minions
        self.events = events
        self.published = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def run_job(self, tgt, fun, arg=(), tgt_type="glob", ret="", timeout=None, kwarg=None, listen=False):
        self.published = {"tgt": tgt, "fun": fun, "arg": arg, "tgt_type": tgt_type, "ret": ret,
                          "timeout": timeout, "kwarg": kwarg}
        if not self.minions:
            return {}
        return {"jid": JID, "minions": list(self.minions)}

    def get_iter_returns(self, jid, minions, **kwargs):
        self.iter_kwargs = kwargs
        for event in self.events:
            if callable(event):
                event = event()
            yield event


@pytest.fixture
def jid_event():
    return FakeJidEvent()


@pytest.fixture
def configure_loader_modules(jid_event, tmp_path):
    opts = {"timeout": 5, "gather_job_timeout": 10, "conf_file": str(tmp_path / "master"), "output": None}
    return {runner: {"__opts__": opts, "__context__": {}, "__jid_event__": jid_event, "__salt__": {}}}


@pytest.fixture
def no_tty():
    with mock.patch.object(sys, "stdin", io.StringIO("")):
        yield


def use_client(client):
    return mock.patch.object(runner.salt.client, "get_local_client", return_value=client)


# -- summaries ----------------------------------------------------------------------------------


def test_summarize_return_takes_counts_duration_and_failures():
    result = pytest_result(passed=3, failed=1, skipped=2, tests=[
        {"nodeid": "t.py::test_a", "outcome": "passed", "message": None},
        {"nodeid": "t.py::test_b", "outcome": "failed", "message": "AssertionError: x"},
        {"nodeid": "t.py::test_c", "outcome": "error", "message": "fixture broke"},
    ])
    row = runner.summarize_return(result, retcode=1)
    assert (row["status"], row["passed"], row["failed"], row["skipped"], row["errors"]) == ("failed", 3, 1, 2, 0)
    assert row["retcode"] == 1
    assert row["duration"] == 0.5
    assert [f["nodeid"] for f in row["failures"]] == ["t.py::test_b", "t.py::test_c"]


def test_summarize_return_of_a_string_is_an_error_row():
    row = runner.summarize_return("'pytestrun.run' is not available.", retcode=254)
    assert row["status"] == "error"
    assert row["message"] == "'pytestrun.run' is not available."
    assert row["retcode"] == 254
    assert row["passed"] == row["failed"] == 0


def test_table_lists_every_minion_and_who_did_not_return():
    rows = {
        "web-2": runner.summarize_return(pytest_result(passed=2, duration=1.234)),
        "web-1": runner.summarize_return(pytest_result(passed=1, failed=1, skipped=1)),
        "db-1": runner._no_return_row("no return"),
    }
    table = runner.format_table(rows, ["web-1", "web-2", "db-1"])
    lines = table.splitlines()
    assert lines[0].split() == ["minion", "passed", "failed", "skipped", "errors", "duration", "status"]
    assert lines[2].split() == ["db-1", "-", "-", "-", "-", "-", "no_return"]
    assert lines[3].split() == ["web-1", "1", "1", "1", "0", "0.50", "failed"]
    assert lines[4].split() == ["web-2", "2", "0", "0", "0", "1.23", "passed"]
    assert "2 of 3 targeted minions returned" in table
    assert "Did not return: db-1" in table


# -- run ----------------------------------------------------------------------------------------


def test_run_shows_each_return_as_it_arrives_and_exits_zero_when_all_pass(capsys, jid_event):
    printed_at_first_return = []

    def second_return():
        # By the time the second minion returns, the first one's line is already out.
        printed_at_first_return.append(capsys.readouterr().out)
        return {"web-2": {"ret": pytest_result(passed=2), "retcode": 0}}

    client = FakeClient(["web-1", "web-2"], [
        None,
        {"web-1": {"ret": pytest_result(passed=2), "retcode": 0}},
        None,
        second_return,
    ])
    with use_client(client):
        ret = runner.run(path="salt://sample_tests", tgt="web-*", args="-k 'not slow' -x")
    assert client.published["fun"] == "pytestrun.run"
    assert client.published["ret"] == "distmon"
    assert client.published["arg"] == ["salt://sample_tests"]
    assert client.published["kwarg"] == {"args": ["-k", "not slow", "-x"]}
    assert client.published["timeout"] == 5
    assert ret["retcode"] == 0
    assert set(ret) == {"web-1", "web-2", "retcode"}
    assert ret["web-1"]["jid"] == JID
    assert "web-1: passed: 2 passed" in printed_at_first_return[0]
    assert "web-2" not in printed_at_first_return[0].split("sent to")[-1].split("\n", 1)[-1]
    assert runner.__context__["retcode"] == 0
    tags = [tag for tag, _ in jid_event.event.fired]
    assert tags and all(tag == f"salt/run/{JID}/progress" for tag in tags)


def test_run_reports_a_minion_that_never_returns_and_exits_non_zero(capsys):
    client = FakeClient(["web-1", "down-1"], [{"web-1": {"ret": pytest_result(), "retcode": 0}}])
    with use_client(client):
        ret = runner.run(path="/srv/tests", tgt="web-1,down-1", tgt_type="list", timeout="3")
    assert client.published["tgt"] == ["web-1", "down-1"]
    assert client.iter_kwargs["timeout"] == 3
    assert ret["down-1"]["status"] == "no_return"
    assert ret["retcode"] == 1
    assert runner.__context__["retcode"] == 1
    out = capsys.readouterr().out
    assert "down-1: did not return" in out
    assert "Did not return: down-1" in out


def test_run_with_a_failed_test_exits_non_zero():
    client = FakeClient(["web-1"], [{"web-1": {"ret": pytest_result(passed=1, failed=1), "retcode": 1}}])
    with use_client(client):
        ret = runner.run(path="/srv/tests", tgt="web-1")
    assert ret["web-1"]["status"] == "failed"
    assert ret["retcode"] == 1


def test_max_wait_stops_waiting_on_a_minion_that_runs_forever():
    def silence():
        while True:
            yield None

    client = FakeClient(["web-1"], [])
    client.get_iter_returns = lambda jid, minions, **kwargs: silence()
    started = time.monotonic()
    with use_client(client):
        ret = runner.run(path="/srv/tests", tgt="web-1", max_wait="0.3")
    assert time.monotonic() - started < 5
    assert ret["web-1"]["status"] == "no_return"
    assert "max_wait (0.3 s)" in ret["web-1"]["message"]
    assert ret["retcode"] == 1


def test_no_matching_minion_is_a_clean_error():
    with use_client(FakeClient([], [])), pytest.raises(SaltNotImplemented, match="no minion matches"):
        runner.run(path="/srv/tests", tgt="nothing-*")


def test_machine_output_sends_progress_to_stderr(capsys):
    runner.__opts__["output"] = "json"
    client = FakeClient(["web-1"], [{"web-1": {"ret": pytest_result(), "retcode": 0}}])
    with use_client(client):
        runner.run(path="/srv/tests", tgt="web-1")
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "web-1: passed" in captured.err


# -- arguments and prompts ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"tgt": "web-*"}, "path missing (and no terminal to ask on)"),
        ({"path": "/srv/tests"}, "tgt missing (and no terminal to ask on)"),
        ({}, "path and tgt missing"),
        ({"path": "/x", "tgt": "w", "tgt_type": "regex"}, "tgt_type 'regex' is not one of"),
        ({"path": "/x", "tgt": "w", "timeout": "soon"}, "timeout must be a number"),
        ({"path": "/x", "tgt": "w", "timeout": "-1"}, "timeout must be positive"),
        ({"path": "/x", "tgt": "w", "args": "'unbalanced"}, "args cannot be split"),
    ],
)
def test_bad_or_missing_arguments_are_usage_errors(no_tty, kwargs, message):
    with pytest.raises(runner.DistmonUsageError, match=re.escape(message)) as err:
        runner.run(**kwargs)
    # NotImplemented is what salt-run prints without a traceback and exits 1 for.
    assert isinstance(err.value, SaltNotImplemented)
    assert "usage: salt-run distmon.run" in str(err.value) or "tgt_type" in str(err.value)


def test_missing_arguments_are_asked_for_on_a_terminal():
    answers = iter(["/srv/tests", "web-1, web-2"])
    prompts = []

    def answer(prompt):
        prompts.append(prompt)
        return next(answers)

    client = FakeClient(["web-1", "web-2"], [{"web-1": {"ret": pytest_result(), "retcode": 0},
                                              "web-2": {"ret": pytest_result(), "retcode": 0}}])
    with mock.patch.object(sys, "stdin") as stdin, mock.patch("builtins.input", answer), use_client(client):
        stdin.isatty.return_value = True
        ret = runner.run(tgt_type="list")
    assert prompts == ["Test path (file, directory or salt://...): ", "Target minions (list, e.g. web-1,web-2): "]
    assert client.published["arg"] == ["/srv/tests"]
    assert client.published["tgt"] == ["web-1", "web-2"]
    assert ret["retcode"] == 0


def test_an_empty_answer_at_the_prompt_is_a_usage_error():
    with mock.patch.object(sys, "stdin") as stdin, mock.patch("builtins.input", lambda prompt: ""):
        stdin.isatty.return_value = True
        with pytest.raises(runner.DistmonUsageError, match="path missing"):
            runner.run(tgt="web-1")


# -- the job manifest ---------------------------------------------------------------------------


def test_manifest_has_the_documented_format():
    manifest = runner.build_manifest(JID, "web-*", "glob", ["web-2", "web-1"], "2026-11-28T08:00:00.000000Z")
    assert manifest == {
        "format": "distmon-job/1", "jid": JID, "fun": "pytestrun.run", "tgt": "web-*", "tgt_type": "glob",
        "targeted": ["web-1", "web-2"], "started_at": "2026-11-28T08:00:00.000000Z",
    }
    json.dumps(manifest)


def test_manifest_upload_to_a_silent_host_warns_within_the_deadline(tmp_path, capsys):
    # A port that accepts and never answers: the SSH banner never comes.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(5)
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text("")
    runner.__opts__.update({
        "distmon.host": "127.0.0.1", "distmon.port": listener.getsockname()[1], "distmon.user": "distmon",
        "distmon.key": str(tmp_path / "key"), "distmon.known_hosts": str(known_hosts),
        "distmon.remote_inbox": "/inbox", "distmon.manifest_deadline": 0.5,
    })
    try:
        upload = runner._ManifestUpload(runner.build_manifest(JID, "w", "glob", ["w"], "t"))
        started = time.monotonic()
        upload.start()
        upload.wait()
        assert time.monotonic() - started < 3
    finally:
        listener.close()
    assert not upload.done
    assert "warning: job manifest not written to the storage host" in capsys.readouterr().out


def test_manifest_is_skipped_quietly_without_a_storage_host(capsys):
    upload = runner._ManifestUpload(runner.build_manifest(JID, "w", "glob", ["w"], "t"))
    upload.start()
    upload.wait()
    assert not upload.done
    assert threading.active_count() >= 1
    assert capsys.readouterr().out == ""


def test_manifest_refuses_an_unsafe_jid():
    with pytest.raises(runner.salt.exceptions.CommandExecutionError, match="not a safe file name"):
        runner._upload_manifest({"remote_inbox": "/inbox"}, runner.build_manifest("../x", "w", "glob", [], "t"))


# -- results and status -------------------------------------------------------------------------


def test_results_rebuilds_the_summary_from_the_job_cache(capsys):
    runner.__salt__["jobs.list_job"] = lambda jid: {
        "jid": jid, "Function": "pytestrun.run", "Arguments": ["/srv/tests"], "Target": "web-*",
        "Target-type": "glob", "StartTime": "2026, Nov 28 08:00:00.123456", "Minions": ["web-1", "web-2"],
        "Result": {"web-1": {"return": pytest_result(passed=4, skipped=1), "retcode": 0}},
    }
    ret = runner.results(jid=JID)
    assert ret["web-1"]["passed"] == 4 and ret["web-1"]["status"] == "passed"
    assert ret["web-2"]["status"] == "no_return"
    assert ret["retcode"] == 1
    assert "Did not return: web-2" in capsys.readouterr().out


def test_results_of_an_unknown_jid_is_a_clean_error():
    runner.__salt__["jobs.list_job"] = lambda jid: {"jid": jid, "Error": "Cannot contact returner or no job"}
    with pytest.raises(runner.DistmonUsageError, match="not in the job cache"):
        runner.results(jid=JID)
    with pytest.raises(runner.DistmonUsageError, match="not a job id"):
        runner.results(jid="../../etc")
    with pytest.raises(runner.DistmonUsageError, match="jid missing"):
        runner.results()


def test_status_reports_down_minions_an_unconfigured_host_and_spools():
    runner.__salt__["manage.status"] = lambda **kwargs: {"up": ["web-1"], "down": ["db-1"]}
    client = FakeClient(["web-1"], [])
    client.cmd = lambda tgt, fun, tgt_type, timeout: {"web-1": {"waiting": 2, "results": []}}
    with use_client(client):
        ret = runner.status()
    assert ret["minions"] == {"up": ["web-1"], "down": ["db-1"]}
    assert ret["storage_host"]["reachable"] is False
    assert "distmon.host is not set" in ret["storage_host"]["error"]
    assert ret["spool"] == {"web-1": {"waiting": 2, "results": []}}
    assert ret["retcode"] == 1


def test_progress_never_prints_control_characters_from_a_minion():
    row = runner.summarize_return(pytest_result(passed=0, failed=1, tests=[
        {"nodeid": "t.py::test_x[\x1b]0;owned\x07]", "outcome": "failed", "message": "boom\x1b[2J"},
    ]))
    line = runner._progress_line("web-1", row)
    assert "\x1b" not in line and "\x07" not in line
    assert "FAILED t.py::test_x[?]0;owned?] - boom?[2J" in line
