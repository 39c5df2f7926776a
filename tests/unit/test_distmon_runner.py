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
import time
from unittest import mock

import pytest
from salt.exceptions import NotImplemented as SaltNotImplemented

from tests.distmon_support import pytestrun_result as pytest_result
from tests.distmon_support import unused_login_files
from tests.loader_support import load_loader_module, load_utils

runner = load_loader_module("_runners/distmon.py", "distmon_runner_under_test")
UTILS = load_utils()
summarize_return = UTILS["distmon_summary.summarize_return"]

JID = "20261128080000123456"


class FakeEventBus:
    def __init__(self):
        self.fired = []

    def fire_event(self, data, tag):
        self.fired.append((tag, data))


class FakeJidEvent:
    """What the runner client injects: a namespaced event (fire_event echoes through salt-run's outputter)."""

    def __init__(self):
        self.event = FakeEventBus()
        self.base = f"salt/run/{JID}"
        self.echoed = []

    def fire_event(self, data, tag):
        self.echoed.append((tag, data))
        self.event.fire_event(data, f"{self.base}/{tag}")

    def messages(self) -> list[str]:
        return [data["message"] for tag, data in self.echoed if tag == "progress"]


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
    opts = {"timeout": 5, "gather_job_timeout": 10, "conf_file": str(tmp_path / "master"), "output": None,
            "pki_dir": str(tmp_path / "pki")}
    return {runner: {"__opts__": opts, "__context__": {}, "__jid_event__": jid_event, "__salt__": {},
                     "__utils__": UTILS}}


@pytest.fixture
def no_tty():
    with mock.patch.object(sys, "stdin", io.StringIO("")):
        yield


def use_client(client):
    return mock.patch.object(runner.salt.client, "get_local_client", return_value=client)


# -- run ----------------------------------------------------------------------------------------


def test_run_reports_each_return_as_a_progress_event_and_exits_zero_when_all_pass(jid_event):
    fired_at_first_return = []

    def second_return():
        # By the time the second minion returns, the first one's line is already out.
        fired_at_first_return.extend(jid_event.messages())
        return {"web-2": {"ret": pytest_result(passed=2), "retcode": 0}}

    client = FakeClient(["web-1", "web-2"], [
        None,
        {"web-1": {"ret": pytest_result(passed=2), "retcode": 0}},
        None,
        second_return,
    ])
    with use_client(client):
        returned = runner.run(path="salt://sample_tests", tgt="web-*", args="-k 'not slow' -x")
    assert client.published["fun"] == "pytestrun.run"
    assert client.published["ret"] == "distmon"
    assert client.published["arg"] == ["salt://sample_tests"]
    assert client.published["kwarg"] == {"args": ["-k", "not slow", "-x"]}
    assert client.published["timeout"] == 5
    # The table is the distmon outputter's to draw; --out json gets the data.
    assert returned["outputter"] == "distmon"
    ret = returned["data"]
    assert ret["retcode"] == 0
    assert set(ret) == {"web-1", "web-2", "retcode"}
    assert ret["web-1"]["jid"] == JID
    assert any(line.startswith("web-1: passed: 2 passed") for line in fired_at_first_return)
    assert not any(line.startswith("web-2") for line in fired_at_first_return)
    assert runner.__context__["retcode"] == 0
    # Salt's runner convention: salt/run/<jid>/progress, naming the outputter that shows it.
    assert jid_event.echoed and all(tag == "progress" and data["outputter"] == "distmon"
                                    for tag, data in jid_event.echoed)
    assert all(tag == f"salt/run/{JID}/progress" for tag, _ in jid_event.event.fired)


def test_run_reports_a_minion_that_never_returns_and_exits_non_zero(jid_event):
    client = FakeClient(["web-1", "down-1"], [{"web-1": {"ret": pytest_result(), "retcode": 0}}])
    with use_client(client):
        ret = runner.run(path="/srv/tests", tgt="web-1,down-1", tgt_type="list", timeout="3")["data"]
    assert client.published["tgt"] == ["web-1", "down-1"]
    assert client.iter_kwargs["timeout"] == 3
    assert ret["down-1"]["status"] == "no_return"
    assert ret["retcode"] == 1
    assert runner.__context__["retcode"] == 1
    assert any(line.startswith("down-1: did not return") for line in jid_event.messages())


def test_run_with_a_failed_test_exits_non_zero():
    client = FakeClient(["web-1"], [{"web-1": {"ret": pytest_result(passed=1, failed=1), "retcode": 1}}])
    with use_client(client):
        ret = runner.run(path="/srv/tests", tgt="web-1")["data"]
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
        ret = runner.run(path="/srv/tests", tgt="web-1", max_wait="0.3")["data"]
    assert time.monotonic() - started < 5
    assert ret["web-1"]["status"] == "no_return"
    assert "max_wait (0.3 s)" in ret["web-1"]["message"]
    assert ret["retcode"] == 1


def test_no_matching_minion_is_a_clean_error():
    with use_client(FakeClient([], [])), pytest.raises(SaltNotImplemented, match="no minion matches"):
        runner.run(path="/srv/tests", tgt="nothing-*")


def test_machine_output_sends_progress_to_stderr_and_the_bus_only(capsys, jid_event):
    runner.__opts__["output"] = "json"
    client = FakeClient(["web-1"], [{"web-1": {"ret": pytest_result(), "retcode": 0}}])
    with use_client(client):
        runner.run(path="/srv/tests", tgt="web-1")
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "web-1: passed" in captured.err
    # Not echoed: salt-run would print each event as one more JSON document on stdout.
    assert jid_event.echoed == []
    assert any(data["message"].startswith("web-1: passed") for _, data in jid_event.event.fired)


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
        ret = runner.run(tgt_type="list")["data"]
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
    manifest = runner._manifest(JID, "web-*", "glob", ["web-2", "web-1"], "2026-11-28T08:00:00.000Z")
    assert manifest == {
        "format": "distmon-job/1", "jid": JID, "fun": "pytestrun.run", "tgt": "web-*", "tgt_type": "glob",
        "targeted": ["web-1", "web-2"], "started_at": "2026-11-28T08:00:00.000Z",
    }
    json.dumps(manifest)


@pytest.fixture
def master_storage_options(tmp_path):
    """The master's distmon.* options, with real files for the key and known_hosts."""
    key, known_hosts = unused_login_files(tmp_path)
    options = {
        "distmon.host": "127.0.0.1", "distmon.port": 22, "distmon.user": "distmon",
        "distmon.key": key, "distmon.known_hosts": known_hosts,
        "distmon.remote_inbox": "/inbox", "distmon.manifest_deadline": 0.5,
    }
    runner.__opts__.update(options)
    return options


def test_manifest_upload_to_a_silent_host_warns_within_the_deadline(master_storage_options, jid_event):
    # A port that accepts and never answers: the SSH banner never comes.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(5)
    runner.__opts__["distmon.port"] = listener.getsockname()[1]
    try:
        upload = runner._ManifestUpload(runner._manifest(JID, "w", "glob", ["w"], "t"))
        started = time.monotonic()
        upload.start()
        upload.wait()
        assert time.monotonic() - started < 3
    finally:
        listener.close()
    assert not upload.done
    assert any(line.startswith("warning: job manifest not written to the storage host")
               for line in jid_event.messages())


@pytest.mark.parametrize(
    ("option", "value", "named"),
    [
        ("distmon.key", "/nonexistent/key", "distmon.key: /nonexistent/key does not exist"),
        ("distmon.remote_inbox", "/inbox/../etc", "distmon.remote_inbox must not contain '..'"),
        ("distmon.port", "ssh", "distmon.port must be an integer"),
        ("distmon.port", 70000, "distmon.port must be between 1 and 65535"),
        ("distmon.known_hosts", "", "missing distmon.known_hosts"),
        ("distmon.manifest_deadline", "5s", "distmon.manifest_deadline must be a number of seconds"),
    ],
)
def test_manifest_options_get_the_same_checks_as_the_minions(master_storage_options, jid_event, option, value, named):
    """The runner's old copy of the SFTP code skipped the key-file, '..' and port checks."""
    runner.__opts__[option] = value
    upload = runner._ManifestUpload(runner._manifest(JID, "w", "glob", ["w"], "t"))
    upload.start()
    upload.wait()
    assert upload.thread is None and not upload.done  # refused before any connection
    assert named in upload.error
    assert any(named in line for line in jid_event.messages())


def test_manifest_is_skipped_quietly_without_a_storage_host(capsys, jid_event):
    upload = runner._ManifestUpload(runner._manifest(JID, "w", "glob", ["w"], "t"))
    upload.start()
    upload.wait()
    assert not upload.done
    assert jid_event.echoed == []
    assert capsys.readouterr().out == ""


def test_manifest_refuses_an_unsafe_jid(master_storage_options):
    upload = runner._ManifestUpload(runner._manifest("../x", "w", "glob", [], "t"))
    upload.start()
    assert upload.thread is None and "jid '../x'" in upload.error


# -- results and status -------------------------------------------------------------------------


def test_results_rebuilds_the_summary_from_the_job_cache():
    runner.__salt__["jobs.list_job"] = lambda jid: {
        "jid": jid, "Function": "pytestrun.run", "Arguments": ["/srv/tests"], "Target": "web-*",
        "Target-type": "glob", "StartTime": "2026, Nov 28 08:00:00.123456", "Minions": ["web-1", "web-2"],
        "Result": {"web-1": {"return": pytest_result(passed=4, skipped=1), "retcode": 0}},
    }
    returned = runner.results(jid=JID)
    assert returned["outputter"] == "distmon"
    ret = returned["data"]
    assert ret["web-1"]["passed"] == 4 and ret["web-1"]["status"] == "passed"
    assert ret["web-2"]["status"] == "no_return"
    assert ret["retcode"] == 1


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


def test_status_reports_bad_storage_options_by_name(master_storage_options):
    runner.__opts__["distmon.remote_inbox"] = "/inbox/../etc"
    runner.__salt__["manage.status"] = lambda **kwargs: {"up": [], "down": []}
    ret = runner.status()
    assert ret["storage_host"]["reachable"] is False
    assert "distmon.remote_inbox must not contain '..'" in ret["storage_host"]["error"]
    assert ret["retcode"] == 1


def test_only_the_documented_functions_are_public():
    """What ``salt-run -d distmon`` lists: no helpers."""
    public = sorted(name for name, value in vars(runner).items()
                    if callable(value) and not name.startswith("_") and getattr(value, "__module__", "") == runner.__name__
                    and not isinstance(value, type))
    assert public == ["rerun", "results", "run", "status"]
    for name in public:
        assert "CLI Example:" in getattr(runner, name).__doc__ and f"distmon.{name}" in getattr(runner, name).__doc__


@pytest.mark.parametrize("chosen", ["nested", "yaml", "txt"])
def test_any_chosen_outputter_gets_the_data_alone_and_progress_on_stderr(chosen, capsys, jid_event):
    runner.__opts__["output"] = chosen
    client = FakeClient(["web-1"], [{"web-1": {"ret": pytest_result(), "retcode": 0}}])
    with use_client(client):
        runner.run(path="/srv/tests", tgt="web-1")
    assert jid_event.echoed == []  # else salt-run shows each line as a nested/yaml dump
    assert "web-1: passed" in capsys.readouterr().err


def test_without_the_shared_library_the_runner_says_what_to_sync(monkeypatch):
    monkeypatch.setattr(runner, "__utils__", {})
    assert runner.__virtual__() == "distmon"  # still listed by salt-run -d
    with pytest.raises(runner.DistmonNotInstalled, match="run salt-run saltutil.sync_all") as err:
        runner.run(path="/srv/tests", tgt="web-1")
    assert isinstance(err.value, SaltNotImplemented)  # printed without a traceback, exit code 1
