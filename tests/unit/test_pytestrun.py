"""Unit tests for _modules/pytestrun.py: parsing, mapping and error paths, with the loader dunders faked."""

from __future__ import annotations

import importlib.util
import inspect
import json
import os
import sys
from pathlib import Path

import pytest
from salt.exceptions import CommandExecutionError, SaltInvocationError

from tests.loader_support import load_loader_module, load_utils

MODULE_PATH = Path(__file__).resolve().parents[2] / "_modules" / "pytestrun.py"
# The tiny suites here need no installed plugins: not loading them keeps each real run short.
NO_AUTOLOAD = {"PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}


@pytest.fixture
def pytestrun(tmp_path, monkeypatch):
    module = load_loader_module("_modules/pytestrun.py", "distmon_unit_pytestrun")
    monkeypatch.setattr(module, "__utils__", load_utils(), raising=False)
    config = {}
    monkeypatch.setattr(module, "__opts__", {"cachedir": str(tmp_path / "cache"), "id": "unit-minion"}, raising=False)
    monkeypatch.setattr(module, "__salt__", {"config.get": lambda key, default=None: config.get(key, default)},
                        raising=False)
    monkeypatch.setattr(module, "__context__", {}, raising=False)
    module._test_config = config
    return module


@pytest.fixture
def suite(tmp_path) -> Path:
    root = tmp_path / "suite"
    root.mkdir()
    (root / "pytest.ini").write_text("[pytest]\n")
    (root / "test_small.py").write_text(
        "import pytest\n\n"
        "def test_ok():\n    print('hello')\n\n"
        "def test_bad():\n    assert 1 == 2\n\n"
        "@pytest.mark.skip(reason='not today')\ndef test_skip():\n    pass\n"
    )
    return root


# ---------------------------------------------------------------- parsing


def test_paths_split_on_commas_but_not_inside_parameter_ids(pytestrun):
    assert pytestrun._split_paths("a.py, b/ ,c.py::test_x[1,2]") == ["a.py", "b/", "c.py::test_x[1,2]"]
    assert pytestrun._split_paths(["x.py", "salt://t"]) == ["x.py", "salt://t"]


@pytest.mark.parametrize("bad", ["", " , ", [], [1], 3, None])
def test_bad_paths_are_invocation_errors(pytestrun, bad):
    with pytest.raises(SaltInvocationError, match="path"):
        pytestrun._split_paths(bad)


def test_args_split_like_a_shell(pytestrun):
    assert pytestrun._split_args("-k 'not slow' -x") == ["-k", "not slow", "-x"]
    assert pytestrun._split_args(["-m", "smoke", 3]) == ["-m", "smoke", "3"]
    assert pytestrun._split_args(None) == []


@pytest.mark.parametrize("bad", ["-k 'open", {"k": 1}, [None], [True]])
def test_bad_args_are_invocation_errors(pytestrun, bad):
    with pytest.raises(SaltInvocationError, match="args"):
        pytestrun._split_args(bad)


def test_env_timeout_and_max_output_validation(pytestrun):
    assert pytestrun._check_env({"A": 1, "B": None}) == {"A": "1", "B": ""}
    for bad_env in ("A=1", {"": "x"}, {"A=B": "x"}, {"A": "nul\0"}):
        with pytest.raises(SaltInvocationError, match="env"):
            pytestrun._check_env(bad_env)
    assert pytestrun._check_timeout("2.5") == 2.5
    assert pytestrun._check_timeout(0) is None
    for bad_timeout in ("soon", -1, [1]):
        with pytest.raises(SaltInvocationError, match="timeout"):
            pytestrun._check_timeout(bad_timeout)
    assert pytestrun._max_output(None) == 64 * 1024
    pytestrun._test_config["pytestrun.max_output"] = 1234
    assert pytestrun._max_output(None) == 1234
    assert pytestrun._max_output("99") == 99
    with pytest.raises(SaltInvocationError, match="max_output"):
        pytestrun._max_output(0)


def test_cap_cuts_on_utf8_bytes_and_says_how_much(pytestrun):
    assert pytestrun._cap("short", 10) == "short"
    capped = pytestrun._cap("ü" * 10, 5)  # 20 bytes; the cut falls inside a character
    assert capped == "üü…[truncated 15 bytes]"
    assert pytestrun._cap(None, 5) is None


def test_unknown_keyword_arguments_are_refused_but_salt_pub_ones_pass(pytestrun):
    pytestrun._check_kwargs({"__pub_jid": "1", "__pub_fun": "x"})
    with pytest.raises(SaltInvocationError, match="colour"):
        pytestrun._check_kwargs({"colour": "blue"})


# ---------------------------------------------------------------- mapping


def raw(returncode=0, records=(), timed_out=False, stderr="", stdout=""):
    return {"returncode": returncode, "records": [dict(r) for r in records], "timed_out": timed_out,
            "killed": 3, "stderr_tail": stderr, "stdout_tail": stdout}


FINISH = {"k": "finish", "exitstatus": 0}


@pytest.mark.parametrize(
    ("code", "status"),
    [(0, "passed"), (1, "failed"), (2, "interrupted"), (3, "internal_error"), (4, "usage_error"), (5, "no_tests")],
)
def test_exit_codes_map_to_statuses(pytestrun, code, status):
    facts = {"finish": FINISH}
    got, message, exitcode = pytestrun._status(raw(code), facts, 10)
    assert (got, exitcode) == (status, code)
    assert (message is None) == (status in ("passed", "failed"))


def test_timeout_signal_and_unfinished_sessions_map_to_timeout_or_error(pytestrun):
    status, message, exitcode = pytestrun._status(raw(-15, timed_out=True), {}, 7)
    assert (status, exitcode) == ("timeout", None) and "7 s" in message and "3 processes" in message
    status, message, exitcode = pytestrun._status(raw(-9), {}, None)
    assert (status, exitcode) == ("error", None) and "SIGKILL" in message
    # Exit code 1 but the session never finished: a test called os._exit(1).
    status, message, _ = pytestrun._status(raw(1, stderr="boom"), {}, None)
    assert status == "error" and "before its session finished: boom" in message
    status, _, _ = pytestrun._status(raw(77), {"finish": FINISH}, None)
    assert status == "error"


def test_usage_and_internal_errors_carry_pytest_words(pytestrun):
    _, message, _ = pytestrun._status(raw(4, stderr="ERROR: usage: ...\nerror: unrecognized arguments: --zz"), {}, None)
    assert "--zz" in message
    facts = {"internal": {"message": "Traceback...\n  File x\nRuntimeError: broken"}}
    _, message, _ = pytestrun._status(raw(3), facts, None)
    assert message == "INTERNALERROR RuntimeError: broken"


def entry(nodeid, outcome, when="call", duration=1.0, **extra):
    base = {"k": "entry", "nodeid": nodeid, "outcome": outcome, "when": when, "duration": duration,
            "file": "t.py", "line": 1, "markers": [], "message": None, "longrepr": None,
            "stdout": None, "stderr": None}
    base.update(extra)
    return base


def test_build_result_counts_entries_and_folds_teardown_into_the_test(pytestrun):
    records = [
        {"k": "hello", "python_version": "3.11.7", "pytest_version": "9.2.0"},
        entry("t.py::a", "passed", stdout="call out\n"),
        # A passed teardown rides along with the next record.
        entry("t.py::b", "passed", duration=2.0, teardowns=[["t.py::a", 0.5, "teardown out\n", None]]),
        entry("t.py::b", "error", when="teardown", duration=0.25),
        entry("t.py::c", "skipped", when="setup", duration=0.1),
        entry("t.py::d", "xfailed"),
        entry("t.py::e", "xpassed"),
        entry("t.py::f", "failed"),
        entry("t.py", "error", when="collect", duration=0.0, line=None),
        {"k": "other", "cat": "warnings", "n": 1},
        {"k": "other", "cat": "warnings", "n": 1, "teardowns": [["t.py::d", 0.25, None, "late err"]]},
        {"k": "other", "cat": "subtests passed", "n": 1},
        entry("t.py::g", "weird"),
    ]
    built = pytestrun._build_result(raw(records=records), 1000)
    assert built["counts"] == {"passed": 2, "failed": 1, "skipped": 1, "xfailed": 1, "xpassed": 1, "errors": 2}
    assert built["counts_other"] == {"warnings": 2, "subtests passed": 1}
    first = built["tests"][0]
    assert first["duration"] == 1.5 and first["stdout"] == "call out\nteardown out\n"
    b_call, b_teardown = built["tests"][1], built["tests"][2]
    assert b_call["duration"] == 2.25 and b_teardown["duration"] == 0.25
    assert built["tests"][4]["duration"] == 1.25 and built["tests"][4]["stderr"] == "late err"
    assert all("k" not in test and "teardowns" not in test for test in built["tests"])
    assert built["facts"]["hello"]["pytest_version"] == "9.2.0"


# ---------------------------------------------------------------- paths and interpreters


def test_local_path_errors_name_the_path(pytestrun, tmp_path):
    with pytest.raises(CommandExecutionError, match="/no/such/test_x.py does not exist"):
        pytestrun._resolve_paths(["/no/such/test_x.py::test_y"], None, "base", False)
    with pytest.raises(SaltInvocationError, match="relative"):
        pytestrun._resolve_paths(["tests/test_x.py"], None, "base", False)
    with pytest.raises(SaltInvocationError, match="must be a file"):
        pytestrun._resolve_paths([f"{tmp_path}::test_y"], None, "base", False)
    test_file = tmp_path / "test_x.py"
    test_file.write_text("")
    assert pytestrun._resolve_paths(["test_x.py::T::t[a]"], str(tmp_path), "base", False) == (
        [f"{test_file}::T::t[a]"], None)
    # With --pyargs, a name that is not a path is a module name for pytest to resolve.
    assert pytestrun._resolve_paths(["croniter.tests"], None, "base", True) == (["croniter.tests"], None)


def test_interpreter_errors(pytestrun, tmp_path, monkeypatch):
    with pytest.raises(CommandExecutionError, match="/opt/nope/python does not exist"):
        pytestrun._resolve_python("/opt/nope/python")
    not_executable = tmp_path / "python"
    not_executable.write_text("")
    not_executable.chmod(0o644)
    with pytest.raises(CommandExecutionError, match="not executable"):
        pytestrun._resolve_python(str(not_executable))
    assert pytestrun._resolve_python(None) == sys.executable
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(CommandExecutionError, match="install the 'pytest' package"):
        pytestrun._resolve_python(None)


def test_missing_pytest_in_the_child_names_the_package(pytestrun):
    with pytest.raises(CommandExecutionError, match="pytest is not installed for /v/bin/python"):
        pytestrun._pytest_missing(raw(1, stderr="/v/bin/python: No module named pytest"), "/v/bin/python")
    pytestrun._pytest_missing(raw(0, records=[{"k": "hello"}]), "/v/bin/python")


class FakeFileServer:
    """cp.* as the minion's file client answers them, over a dict of served files."""

    def __init__(self, cachedir: Path, served: dict[str, str]):
        self.cachedir, self.served, self.calls = cachedir, served, []

    def _local(self, rel, saltenv):
        return self.cachedir / "files" / saltenv / rel

    def list_master(self, saltenv="base", prefix=""):
        return [name for name in self.served if name.startswith(prefix)]

    def cache_file(self, url, saltenv="base"):
        rel = url.removeprefix("salt://")
        self.calls.append(rel)
        if rel not in self.served:
            return ""
        local = self._local(rel, saltenv)
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_text(self.served[rel])
        return str(local)

    def cache_dir(self, url, saltenv="base"):
        rel = url.removeprefix("salt://")
        return [self.cache_file(f"salt://{name}", saltenv) for name in self.served if name.startswith(rel + "/")]


@pytest.fixture
def fileserver(pytestrun, monkeypatch):
    server = FakeFileServer(Path(pytestrun.__opts__["cachedir"]), {
        "suite/conftest.py": "", "suite/sub/test_a.py": "", "suite/sub/test_b.py": "", "other/x.py": "",
    })
    pytestrun.__salt__.update({"cp.list_master": server.list_master, "cp.cache_file": server.cache_file,
                               "cp.cache_dir": server.cache_dir})
    return server


def test_salt_file_node_id_maps_onto_the_cached_file_with_its_conftest(pytestrun, fileserver):
    [target], tree = pytestrun._resolve_paths(["salt://suite/sub/test_a.py::test_y"], None, "base", False)
    root = Path(pytestrun.__opts__["cachedir"]) / "files" / "base"
    assert target == f"{root}/suite/sub/test_a.py::test_y"
    assert "suite/conftest.py" in fileserver.calls and (root / "suite" / "conftest.py").exists()
    assert tree == pytestrun.SaltTree("base", str(root), None)


def test_salt_directory_is_cached_and_stale_files_pruned(pytestrun, fileserver):
    cached = Path(pytestrun.__opts__["cachedir"]) / "files" / "base" / "suite"
    (cached / "sub").mkdir(parents=True)
    (cached / "sub" / "test_removed_on_master.py").write_text("")
    [target], _ = pytestrun._resolve_paths(["salt://suite/sub?saltenv=base"], None, "base", False)
    assert target == str(cached / "sub")
    assert sorted(p.name for p in (cached / "sub").iterdir()) == ["test_a.py", "test_b.py"]
    assert (cached / "conftest.py").exists()


@pytest.mark.parametrize("url", ["salt://suite/nothing.py", "salt://missing", "salt://suite/su"])
def test_salt_path_not_served_names_it(pytestrun, fileserver, url):
    with pytest.raises(CommandExecutionError, match=f"{url} is not served by the master"):
        pytestrun._resolve_paths([url], None, "base", False)


def test_salt_paths_refuse_mixing_with_local_paths_or_saltenvs(pytestrun, fileserver, tmp_path):
    with pytest.raises(SaltInvocationError, match="cannot be mixed"):
        pytestrun._resolve_paths(["salt://suite/sub", str(tmp_path)], None, "base", False)
    with pytest.raises(SaltInvocationError, match="one saltenv"):
        pytestrun._resolve_paths(["salt://suite/sub", "salt://other?saltenv=dev"], None, "base", False)
    with pytest.raises(SaltInvocationError, match="must be a file"):
        pytestrun._resolve_paths(["salt://suite/sub::test_y"], None, "base", False)


def test_stale_conftest_above_the_tests_is_removed_and_the_root_one_cached(pytestrun, fileserver):
    root = Path(pytestrun.__opts__["cachedir"]) / "files" / "base"
    (root / "other").mkdir(parents=True)
    (root / "other" / "conftest.py").write_text("raise RuntimeError('no longer served')\n")
    fileserver.served.update({"conftest.py": "", "other/y/test_y.py": ""})
    pytestrun._resolve_paths(["salt://other/y/test_y.py"], None, "base", False)
    assert not (root / "other" / "conftest.py").exists()
    assert (root / "conftest.py").exists()


@pytest.mark.parametrize(("name", "text", "has"), [
    ("pytest.ini", "", True),
    (".pytest.toml", "", True),
    ("pyproject.toml", "[tool.pytest.ini_options]\naddopts = '-q'\n", True),
    ("pyproject.toml", "[tool.pytest]\naddopts = ['-q']\n", True),
    ("pyproject.toml", "[project]\nname = 'x'\n[tool.ruff]\nline-length = 99\n", False),
    ("pyproject.toml", "[tool.pytest.ini_options\n", True),  # broken: pytest says why
    ("tox.ini", "[tox]\nenvlist = py311\n", False),
    ("tox.ini", "[tox]\n[pytest]\naddopts = -q\n", True),
    ("setup.cfg", "[metadata]\nname = x\n", False),
    ("setup.cfg", "[tool:pytest]\naddopts = -q\n", True),
])
def test_config_files_count_as_pytest_counts_them(pytestrun, tmp_path, name, text, has):
    (tmp_path / name).write_text(text)
    assert pytestrun._has_pytest_config(str(tmp_path / name)) is has


def test_tree_config_is_the_nearest_one_with_pytest_settings(pytestrun, fileserver):
    root = Path(pytestrun.__opts__["cachedir"]) / "files" / "base"
    fileserver.served.update({
        "pyproject.toml": "[tool.pytest.ini_options]\naddopts = '-q'\n",
        "suite/tox.ini": "[tox]\n",  # no [pytest]: pytest would look further up, so do we
        "suite/sub/setup.cfg": "[metadata]\n",
    })
    assert pytestrun._tree_config("suite/sub", "base", fileserver.served) == str(root / "pyproject.toml")
    fileserver.served["suite/pytest.ini"] = ""
    fileserver.served["suite/setup.cfg"] = "[tool:pytest]\n"  # pytest.ini comes first in one directory
    assert pytestrun._tree_config("suite/sub", "base", fileserver.served) == str(root / "suite" / "pytest.ini")
    _, tree = pytestrun._resolve_paths(["salt://suite/sub/test_a.py", "salt://suite/sub/test_b.py"],
                                       None, "base", False)
    assert tree.config == str(root / "suite" / "pytest.ini")
    # Two subtrees: the common ancestor is where the search starts, as pytest does.
    _, tree = pytestrun._resolve_paths(["salt://suite/sub", "salt://other/x.py"], None, "base", False)
    assert tree.config == str(root / "pyproject.toml")


def test_argv_for_salt_runs_pins_rootdir_and_config_and_lets_the_user_override(pytestrun):
    root = Path(pytestrun.__opts__["cachedir"]) / "files" / "base"
    empty = Path(pytestrun.__opts__["cachedir"]) / "pytestrun" / "empty.ini"
    head = ["py", "-m", "pytest", "-p", pytestrun.PLUGIN_MODULE]
    assert pytestrun._build_argv("py", ["-q"], ["/t/x.py"], None) == [*head, "-q", "/t/x.py"]
    tree = pytestrun.SaltTree("base", str(root), None)
    assert pytestrun._build_argv("py", ["-x"], [f"{root}/s"], tree, collect=True) == [
        *head, "--collect-only", "-q", f"--rootdir={root}", "-c", str(empty), f"--confcutdir={root}", "-x", f"{root}/s"]
    assert empty.read_text() == "[pytest]\n"
    own = tree._replace(config=f"{root}/s/pytest.ini")
    assert pytestrun._build_argv("py", [], [f"{root}/s"], own) == [
        *head, f"--rootdir={root}", "-c", f"{root}/s/pytest.ini", f"{root}/s"]
    users = ["--rootdir=/r", "--config-file", "/c.ini"]
    assert pytestrun._build_argv("py", users, ["t"], tree) == [*head, *users, "t"]
    assert pytestrun._build_argv("py", ["-c/c.ini", "--confcutdir=/x"], ["t"], tree)[5:] == [
        f"--rootdir={root}", "-c/c.ini", "--confcutdir=/x", "t"]
    assert pytestrun._build_argv("py", ["--", "-c"], ["t"], tree)[5:8] == [f"--rootdir={root}", "-c", str(empty)]


POISON_PYPROJECT = '[tool.pytest.ini_options]\naddopts = "-m nothing_matches --strict-markers"\n'
SALT_SUITE = {
    "suite/conftest.py": "import pytest\n\n@pytest.fixture\ndef inventory():\n    return ['web-1']\n",
    "suite/sub/test_a.py": (
        "import pytest\n\n"
        "def test_uses_the_tree_conftest(inventory):\n    assert inventory == ['web-1']\n\n"
        "@pytest.mark.fleet\ndef test_unregistered_marker():\n    pass\n\n"
        "def test_fails():\n    assert 0\n"
    ),
    "suite/sub/check_c.py": "def test_included(inventory):\n    pass\n\ndef test_excluded():\n    assert 0\n",
}


@pytest.fixture
def poisoned_salt_suite(pytestrun, tmp_path):
    """The minion's cachedir sits under a pyproject.toml and a conftest.py that must not apply."""
    (tmp_path / "pyproject.toml").write_text(POISON_PYPROJECT)
    (tmp_path / "conftest.py").write_text("raise RuntimeError('a conftest.py above the cache was loaded')\n")
    server = FakeFileServer(Path(pytestrun.__opts__["cachedir"]), dict(SALT_SUITE))
    pytestrun.__salt__.update({"cp.list_master": server.list_master, "cp.cache_file": server.cache_file,
                               "cp.cache_dir": server.cache_dir})
    return server


def test_salt_run_node_ids_are_relative_to_the_salt_root_and_ignore_config_above_the_cache(
        pytestrun, poisoned_salt_suite):
    root = Path(pytestrun.__opts__["cachedir"]) / "files" / "base"
    result = pytestrun.run("salt://suite", env=NO_AUTOLOAD)
    assert result["rootdir"] == str(root)
    assert result["status"] == "failed", result.get("message")
    assert sorted(t["nodeid"] for t in result["tests"]) == [
        "suite/sub/test_a.py::test_fails", "suite/sub/test_a.py::test_unregistered_marker",
        "suite/sub/test_a.py::test_uses_the_tree_conftest"]
    assert {t["file"] for t in result["tests"]} == {"suite/sub/test_a.py"}
    assert "deselected" not in result["counts_other"]
    # A node id given as salt://... maps onto the cached file, and comes back relative to the root.
    result = pytestrun.run("salt://suite/sub/test_a.py::test_uses_the_tree_conftest", env=NO_AUTOLOAD)
    assert [t["nodeid"] for t in result["tests"]] == ["suite/sub/test_a.py::test_uses_the_tree_conftest"]
    assert result["status"] == "passed"
    assert pytestrun.collect("salt://suite/sub", args="-k 'not fails'", env=NO_AUTOLOAD) == [
        "suite/sub/test_a.py::test_uses_the_tree_conftest", "suite/sub/test_a.py::test_unregistered_marker"]


def test_salt_tree_with_its_own_config_is_honoured(pytestrun, poisoned_salt_suite):
    poisoned_salt_suite.served["suite/pytest.ini"] = (
        "[pytest]\npython_files = check_*.py\naddopts = -k \"not excluded\"\n")
    result = pytestrun.run("salt://suite/sub", env=NO_AUTOLOAD)
    assert result["status"] == "passed", result.get("message")
    assert [t["nodeid"] for t in result["tests"]] == ["suite/sub/check_c.py::test_included"]
    assert result["counts_other"] == {"deselected": 1}
    assert result["rootdir"] == str(Path(pytestrun.__opts__["cachedir"]) / "files" / "base")


def test_local_paths_keep_pytests_own_rootdir_and_config(pytestrun, tmp_path):
    # The user's own project: pytest's rules apply, its pyproject.toml included.
    (tmp_path / "pyproject.toml").write_text('[tool.pytest.ini_options]\naddopts = "-k not_slow_one"\n')
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_local.py").write_text("def test_fast():\n    pass\n\ndef test_not_slow_one():\n    pass\n")
    result = pytestrun.run(str(tmp_path / "tests"), env=NO_AUTOLOAD)
    assert result["rootdir"] == str(tmp_path)
    assert [t["nodeid"] for t in result["tests"]] == ["tests/test_local.py::test_not_slow_one"]


# ---------------------------------------------------------------- real runs (a subprocess, dunders faked)


def test_run_returns_the_documented_result_and_sets_retcode(pytestrun, suite):
    result = pytestrun.run(str(suite), env=NO_AUTOLOAD)
    assert result["status"] == "failed" and result["exitcode"] == 1
    assert result["counts"] == {"passed": 1, "failed": 1, "skipped": 1, "xfailed": 0, "xpassed": 0, "errors": 0}
    assert pytestrun.__context__["retcode"] == 1
    assert result["minion_id"] == "unit-minion" and result["python"] == sys.executable
    assert result["rootdir"] == str(suite)
    ok = next(t for t in result["tests"] if t["nodeid"] == "test_small.py::test_ok")
    assert ok["stdout"] == "hello\n" and ok["line"] == 3 and ok["file"] == "test_small.py"
    assert pytestrun.last() == json.loads(json.dumps(result))
    plugin_files = os.listdir(Path(pytestrun.__opts__["cachedir"]) / "pytestrun" / "plugin")
    assert plugin_files == [pytestrun.PLUGIN_MODULE + ".py"]
    assert not os.listdir(Path(pytestrun.__opts__["cachedir"]) / "pytestrun" / "runs")


def test_run_passing_node_id_gives_retcode_zero(pytestrun, suite):
    result = pytestrun.run(f"{suite}/test_small.py::test_ok", args="-q", env=NO_AUTOLOAD)
    assert result["status"] == "passed" and result["args"] == ["-q"]
    assert pytestrun.__context__["retcode"] == 0


def test_collect_lists_node_ids(pytestrun, suite):
    assert pytestrun.collect(str(suite), args="-k 'not bad'", env=NO_AUTOLOAD) == ["test_small.py::test_ok", "test_small.py::test_skip"]


def test_collect_names_modules_that_cannot_be_collected(pytestrun, suite):
    (suite / "test_broken.py").write_text("import distmon_no_such_module\n")
    with pytest.raises(CommandExecutionError, match="test_broken.py: ModuleNotFoundError"):
        pytestrun.collect(str(suite), env=NO_AUTOLOAD)


def test_last_without_a_run_is_a_clear_error(pytestrun):
    with pytest.raises(CommandExecutionError, match="no pytestrun.run result"):
        pytestrun.last()


def test_version_reports_this_interpreter(pytestrun):
    got = pytestrun.version()
    assert got["pytest_version"] == pytest.__version__ and got["python"] == sys.executable


# ---------------------------------------------------------------- loader conventions


def test_virtual_and_cli_examples(pytestrun, monkeypatch):
    assert pytestrun.__virtual__() == "pytestrun"
    # Without the shared _utils library (not synced, no saltext package) it says what to do.
    monkeypatch.setattr(pytestrun, "__utils__", {})
    loaded, why = pytestrun.__virtual__()
    assert loaded is False and "saltutil.sync_all" in why and "_utils/distmon_" in why
    monkeypatch.setattr(pytestrun, "__utils__", load_utils())
    public = [name for name, fn in inspect.getmembers(pytestrun, inspect.isfunction)
              if not name.startswith("_") and fn.__module__ == pytestrun.__name__]
    assert sorted(public) == ["collect", "last", "run", "version"]
    for name in public:
        doc = getattr(pytestrun, name).__doc__
        assert "CLI Example:" in doc and f"pytestrun.{name}" in doc, name


@pytest.mark.parametrize(("configured", "given", "used"), [(None, None, "base"), ("qa", None, "qa"), ("qa", "dev", "dev")])
def test_saltenv_defaults_to_the_minions_config_like_cp_cache_file(pytestrun, fileserver, configured, given, used):
    """It was hard-coded to base: a minion configured with saltenv: qa still fetched base's tests."""
    if configured:
        pytestrun.__opts__["saltenv"] = configured
    seen = []
    fileserver_cache_file = pytestrun.__salt__["cp.cache_file"]
    pytestrun.__salt__["cp.cache_file"] = lambda url, saltenv="base": seen.append(saltenv) or fileserver_cache_file(url, saltenv)
    *_, argv = pytestrun._prepare("salt://suite/sub/test_a.py", None, None, None, None, given, False)
    assert set(seen) == {used}
    root = Path(pytestrun.__opts__["cachedir"]) / "files" / used
    assert f"--rootdir={root}" in argv
    for function in (pytestrun.run, pytestrun.collect):
        assert inspect.signature(function).parameters["saltenv"].default is None
