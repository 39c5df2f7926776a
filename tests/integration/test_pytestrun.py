"""pytestrun on real minions through the real `salt` CLI.

The oracle for every count is pytest's own summary line for the same suite, same
interpreter and same arguments, parsed here (scraping terminal output is fine in a
test; pytestrun itself never does it).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import psutil
import pytest

from tests.conftest import start_minion, sync_minion

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
DATA = REPO_ROOT / "tests" / "data" / "pytestrun"
SAMPLES = REPO_ROOT / "sample_tests"
OUTCOME_KEYS = ("passed", "failed", "skipped", "xfailed", "xpassed", "errors")
# The fixture suites need no installed plugins; skipping their autoload (in pytestrun's runs and in
# the oracle's alike) saves a second or more per run here (salt-factories' log server teardown).
NO_AUTOLOAD = {"PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
SUMMARY_WORDS = {
    "passed": "passed", "failed": "failed", "skipped": "skipped", "xfailed": "xfailed",
    "xpassed": "xpassed", "error": "errors", "errors": "errors",
}


# ---------------------------------------------------------------- helpers


def pytest_summary(target: str, args: list[str], cwd: Path, env: dict | None = None) -> tuple[dict, dict]:
    """Run `python -m pytest` on ``target`` and parse its final summary line into counts."""
    done = subprocess.run([sys.executable, "-m", "pytest", *args, target], cwd=cwd,
                          env={**os.environ, **(env or {})},
                          capture_output=True, text=True, timeout=300, check=False)
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    assert lines, done.stderr
    summary = re.sub(r"\s+in [0-9.]+s.*$", "", lines[-1].strip("= "))
    counts = dict.fromkeys(OUTCOME_KEYS, 0)
    other = {}
    if summary != "no tests ran":
        for part in summary.split(", "):
            number, word = part.split(" ", 1)
            if word in SUMMARY_WORDS:
                counts[SUMMARY_WORDS[word]] += int(number)
            else:
                other["warnings" if word in ("warning", "warnings") else word] = int(number)
    return counts, other


def collect_ids(target: str, args: list[str], cwd: Path) -> list[str]:
    done = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", *args, target],
                          cwd=cwd, env={**os.environ, **NO_AUTOLOAD},
                          capture_output=True, text=True, timeout=120, check=False)
    return [line for line in done.stdout.splitlines() if "::" in line]


def run(salt_cli, minion, *args, **kwargs):
    return salt_cli.run("pytestrun.run", *args, minion_tgt=minion.id, **kwargs)


def assert_counting_rule(result: dict) -> None:
    for key in OUTCOME_KEYS:
        outcome = "error" if key == "errors" else key
        assert result["counts"][key] == sum(1 for t in result["tests"] if t["outcome"] == outcome), key


def marked_processes(marker: str) -> list[str]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if marker in cmdline:
            found.append(" ".join(cmdline))
    return found


@pytest.fixture(scope="module")
def suites(tmp_path_factory) -> Path:
    """A private copy of the fixture suites, plus the file ruff must never see (a syntax error)."""
    root = tmp_path_factory.mktemp("pytestrun-suites")
    shutil.copytree(DATA, root, dirs_exist_ok=True)
    (root / "collect_errors" / "check_syntax_error.py").write_text("def test_syntax(:\n    pass\n")
    return root


@pytest.fixture(scope="module")
def web1(salt_minion):
    return salt_minion


# ---------------------------------------------------------------- counts against pytest's own


SUITE_CASES = [
    ("mixed", ["-p", "no:cacheprovider"]),
    ("mixed", ["-q", "-p", "no:cacheprovider", "-k", "not ids"]),
    ("collect_errors", ["-p", "no:cacheprovider"]),
    ("collect_errors", ["-p", "no:cacheprovider", "--continue-on-collection-errors"]),
    ("output", ["-p", "no:cacheprovider"]),
    ("subtests", ["-q", "-p", "no:cacheprovider"]),
    ("exit_early", ["-p", "no:cacheprovider"]),
]


@pytest.mark.parametrize(("suite", "args"), SUITE_CASES, ids=[f"{s}-{i}" for i, (s, _) in enumerate(SUITE_CASES)])
def test_counts_match_pytest_summary(salt_cli, web1, suites, suite, args):
    expected, expected_other = pytest_summary(str(suites / suite), args, suites / suite, NO_AUTOLOAD)
    ret = run(salt_cli, web1, str(suites / suite), f"args={json.dumps(args)}", f"env={json.dumps(NO_AUTOLOAD)}")
    result = ret.data
    assert isinstance(result, dict), ret
    assert result["counts"] == expected
    for key, number in expected_other.items():
        assert result["counts_other"].get(key) == number, (key, result["counts_other"])
    assert_counting_rule(result)
    assert result["status"] != "passed"
    assert ret.returncode != 0  # tests failed: `salt` itself exits non-zero


def test_mixed_suite_entries_are_complete(salt_cli, web1, suites):
    result = run(salt_cli, web1, str(suites / "mixed"), "args=-p no:cacheprovider", f"env={json.dumps(NO_AUTOLOAD)}").data
    by_id: dict[str, list[dict]] = {}
    for entry in result["tests"]:
        by_id.setdefault(entry["nodeid"], []).append(entry)
    teardown = by_id["check_mixed.py::test_teardown_error_after_pass"]
    assert [(e["outcome"], e["when"]) for e in teardown] == [("passed", "call"), ("error", "teardown")]
    assert teardown[0]["markers"] == ["tagged"]
    assert "stdout of a test whose teardown fails" in teardown[0]["stdout"]
    assert teardown[1]["message"] == "RuntimeError: teardown exploded"
    setup_error = by_id["check_mixed.py::test_setup_error"][0]
    assert (setup_error["outcome"], setup_error["when"]) == ("error", "setup")
    skip = by_id["check_mixed.py::test_skip_from_fixture"][0]
    assert (skip["outcome"], skip["when"], skip["message"]) == ("skipped", "setup", "Skipped: the fixture says skip")
    strict = by_id["check_mixed.py::test_xpass_strict"][0]
    assert strict["outcome"] == "failed" and "XPASS(strict)" in strict["message"]
    assert by_id["check_mixed.py::test_xpass"][0]["outcome"] == "xpassed"
    assert "check_mixed.py::test_ids[<script>alert(1)</script>]" in by_id
    assert "check_mixed.py::test_ids[say \"hi\"]" in by_id
    failed = by_id["check_mixed.py::test_ids[it's]"][0]
    assert failed["outcome"] == "failed" and "assert" in failed["longrepr"]
    method = by_id["check_mixed.py::TestGroup::test_method_fails"][0]
    assert method["file"] == "check_mixed.py" and method["line"] == 82
    assert result["counts_other"]["warnings"] == 1
    for entry in result["tests"]:
        assert set(entry) >= {"nodeid", "outcome", "when", "duration", "file", "line", "markers",
                              "message", "longrepr", "stdout", "stderr"}
    assert result["started_at"].endswith("Z") and result["finished_at"].endswith("Z")
    assert result["minion_id"] == web1.id
    assert result["python_version"] == ".".join(map(str, sys.version_info[:3]))
    assert result["pytest_version"] == pytest.__version__
    assert result["exitcode"] == 1 and result["paths"] == [str(suites / "mixed")]


def test_megabytes_of_output_are_capped(salt_cli, web1, suites):
    result = run(salt_cli, web1, str(suites / "output"), "max_output=10000", f"env={json.dumps(NO_AUTOLOAD)}").data
    loud = next(t for t in result["tests"] if t["nodeid"].endswith("test_prints_megabytes_and_fails"))
    for field in ("stdout", "stderr", "longrepr"):
        assert "…[truncated " in loud[field], field
        assert len(loud[field].encode()) < 10_100
    unicode_out = next(t for t in result["tests"] if t["nodeid"].endswith("test_prints_a_megabyte_and_passes"))
    assert unicode_out["stdout"].startswith("üüü") and "truncated 990000 bytes" in unicode_out["stdout"]


# ---------------------------------------------------------------- salt:// and several paths


def test_salt_directory_runs_like_the_local_copy(salt_cli, web1):
    expected, _ = pytest_summary(str(SAMPLES), ["-p", "no:cacheprovider"], SAMPLES, NO_AUTOLOAD)
    ret = run(salt_cli, web1, "salt://sample_tests", f"env={json.dumps(NO_AUTOLOAD)}")
    assert ret.data["counts"] == expected
    assert ret.data["paths"] == ["salt://sample_tests"]
    assert ret.data["status"] == "failed" and ret.returncode != 0
    assert any(t["nodeid"] == "sample_tests/test_passing.py::test_addition" for t in ret.data["tests"])


def test_salt_file_gets_its_conftest_and_node_id_passes(salt_cli, web1):
    # test_inventory_fixture needs the `inventory` fixture from sample_tests/conftest.py.
    ret = run(salt_cli, web1, "salt://sample_tests/test_passing.py::test_inventory_fixture", f"env={json.dumps(NO_AUTOLOAD)}")
    assert ret.data["status"] == "passed", ret.data
    assert ret.data["counts"]["passed"] == 1
    assert ret.returncode == 0


def test_several_paths_comma_separated(salt_cli, web1, suites):
    paths = "salt://sample_tests/test_passing.py,salt://sample_tests/test_failing.py::test_intentional_failure"
    ret = run(salt_cli, web1, paths, f"env={json.dumps(NO_AUTOLOAD)}")
    assert ret.data["paths"] == paths.split(",")
    assert ret.data["counts"]["passed"] == 4 and ret.data["counts"]["failed"] == 1
    assert ret.returncode != 0
    # Local paths keep pytest's own rules: the rootdir is where their pytest.ini is.
    local = f"{suites}/mixed/check_mixed.py::test_fail,{suites}/mixed/check_mixed.py::test_xpass"
    ret = run(salt_cli, web1, local, "args=-p no:cacheprovider", f"env={json.dumps(NO_AUTOLOAD)}")
    assert ret.data["paths"] == local.split(",")
    assert [t["nodeid"] for t in ret.data["tests"]] == ["check_mixed.py::test_fail", "check_mixed.py::test_xpass"]
    assert ret.data["rootdir"] == str(suites / "mixed")


def test_python_argument_and_version(salt_cli, web1, suites):
    interpreter = str(Path(sys.executable).with_name("python3"))
    ret = run(salt_cli, web1, f"{SAMPLES}/test_passing.py", f"python={interpreter}", f"env={json.dumps(NO_AUTOLOAD)}")
    assert ret.data["status"] == "passed" and ret.data["python"] == interpreter
    version = salt_cli.run("pytestrun.version", f"python={interpreter}", minion_tgt=web1.id).data
    assert version["pytest_version"] == pytest.__version__


def test_collect_lists_what_pytest_would_run(salt_cli, web1):
    ret = salt_cli.run("pytestrun.collect", "salt://sample_tests", "args=-k 'not slow'",
                      f"env={json.dumps(NO_AUTOLOAD)}", minion_tgt=web1.id)
    assert ret.returncode == 0, ret
    assert ret.data == salt_root_ids(["-k", "not slow"])


def test_last_returns_the_previous_result(salt_cli, web1):
    first = run(salt_cli, web1, f"{SAMPLES}/test_passing.py::test_addition", f"env={json.dumps(NO_AUTOLOAD)}").data
    ret = salt_cli.run("pytestrun.last", minion_tgt=web1.id)
    assert ret.data == first


# ---------------------------------------------------------------- timeouts and dying sessions


def test_timeout_kills_the_whole_tree_and_keeps_finished_tests(salt_cli, web1, suites):
    marker = f"distmon-orphan-{uuid.uuid4().hex}"
    ret = run(salt_cli, web1, str(suites / "hang"), "timeout=6", f"env={json.dumps({'DISTMON_TEST_MARKER': marker, **NO_AUTOLOAD})}")
    result = ret.data
    assert result["status"] == "timeout", result
    assert result["exitcode"] is None and "6 s" in result["message"]
    assert [t["nodeid"] for t in result["tests"]] == ["check_hang.py::test_finishes_first"]
    assert result["counts"]["passed"] == 1
    assert ret.returncode != 0
    assert marked_processes(marker) == []


def test_leftover_processes_die_with_a_normal_run(salt_cli, web1, suites):
    marker = f"distmon-leftover-{uuid.uuid4().hex}"
    oracle_marker = f"distmon-oracle-{uuid.uuid4().hex}"
    expected, _ = pytest_summary(str(suites / "fork"), [], suites / "fork", {"DISTMON_TEST_MARKER": oracle_marker, **NO_AUTOLOAD})
    # The plain pytest run leaves its sleeper behind (that is the point): end it, it is ours.
    for proc in psutil.process_iter(["cmdline"]):
        if oracle_marker in (proc.info["cmdline"] or []):
            proc.kill()
    ret = run(salt_cli, web1, str(suites / "fork"), f"env={json.dumps({'DISTMON_TEST_MARKER': marker, **NO_AUTOLOAD})}")
    assert ret.data["counts"] == expected
    assert marked_processes(marker) == []


def test_test_killing_its_process_group_gives_an_error_result(salt_cli, web1, suites):
    result = run(salt_cli, web1, str(suites / "killpg"), f"env={json.dumps(NO_AUTOLOAD)}").data
    assert result["status"] == "error" and "SIGKILL" in result["message"]
    assert [t["nodeid"] for t in result["tests"]] == ["check_killpg.py::test_before_passes"]


def test_internal_error_status(salt_cli, web1, suites):
    result = run(salt_cli, web1, str(suites / "internal_error"), "args=-p crashplugin",
                 f"cwd={suites / 'internal_error'}", f"env={json.dumps(NO_AUTOLOAD)}").data
    assert result["status"] == "internal_error" and "crashplugin broke collection" in result["message"]


# ---------------------------------------------------------------- bad input


def assert_salt_error(ret, *needles):
    assert ret.returncode != 0
    text = ret.data if isinstance(ret.data, str) else ret.stdout
    assert "Traceback" not in text, text
    for needle in needles:
        assert needle in text, (needle, text)


@pytest.fixture(scope="module")
def venv_without_pytest(tmp_path_factory):
    target = tmp_path_factory.mktemp("nopytest") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(target)], check=True, timeout=120)
    return target / "bin" / "python"


def test_bad_input_gives_clear_salt_errors(salt_cli, web1, venv_without_pytest):
    assert_salt_error(run(salt_cli, web1, "/srv/nowhere/test_missing.py"), "/srv/nowhere/test_missing.py", "does not exist")
    assert_salt_error(run(salt_cli, web1, str(SAMPLES), "python=/opt/no/python3"), "/opt/no/python3", "does not exist")
    assert_salt_error(run(salt_cli, web1, str(SAMPLES), f"python={venv_without_pytest}"),
                      "pytest is not installed", str(venv_without_pytest))
    assert_salt_error(salt_cli.run("pytestrun.version", f"python={venv_without_pytest}", minion_tgt=web1.id),
                      "pytest is not installed", str(venv_without_pytest))
    assert_salt_error(run(salt_cli, web1, "salt://sample_tests/test_nothing_here.py"),
                      "salt://sample_tests/test_nothing_here.py", "not served")
    assert_salt_error(run(salt_cli, web1, str(SAMPLES), "args=-k 'unbalanced"), "args")
    assert_salt_error(run(salt_cli, web1, str(SAMPLES), "timeout=soon"), "timeout")
    assert_salt_error(run(salt_cli, web1, str(SAMPLES), "colour=blue"), "colour")
    assert_salt_error(run(salt_cli, web1, f"salt://sample_tests,{SAMPLES}"), "cannot be mixed")


def test_bad_pytest_args_give_usage_error_naming_them(salt_cli, web1):
    ret = run(salt_cli, web1, str(SAMPLES), "args=--no-such-option")
    assert ret.returncode != 0
    assert ret.data["status"] == "usage_error" and "--no-such-option" in ret.data["message"]


# ---------------------------------------------------------------- a real third-party suite


def test_third_party_suite_installed_in_a_package(salt_cli, web1, tmp_path):
    # croniter ships its tests inside the package (croniter/tests); two of its modules need
    # pytz, which is not installed: they are collection errors, counted as pytest counts them.
    args = ["--pyargs", "-q", "-p", "no:cacheprovider", "--continue-on-collection-errors"]
    expected, expected_other = pytest_summary("croniter.tests", args, tmp_path, NO_AUTOLOAD)
    ret = run(salt_cli, web1, "croniter.tests", f"args={json.dumps(args)}", f"cwd={tmp_path}",
              f"env={json.dumps(NO_AUTOLOAD)}")
    assert ret.data["counts"] == expected
    assert ret.data["counts"]["passed"] > 50
    assert ret.data["counts_other"] == expected_other
    assert_counting_rule(ret.data)


# ---------------------------------------------------------------- salt:// node ids on every minion


# If it applied, every test would be deselected (and unregistered markers refused).
POISON_PYPROJECT = '[tool.pytest.ini_options]\naddopts = "-m nothing_matches --strict-markers"\n'
POISON_CONFTEST = "raise RuntimeError('a conftest.py above the minion cache was loaded')\n"
NOT_SLOW = ["-k", "not slow"]


def salt_root_ids(args: list[str]) -> list[str]:
    """pytest's own node ids for sample_tests relative to the salt:// root (sample_tests/ is served from the
    repo root), with no config file: what every minion must report."""
    return collect_ids(str(SAMPLES), ["-p", "no:cacheprovider", f"--rootdir={REPO_ROOT}", "--config-file=/dev/null",
                                      *args], SAMPLES)


def assert_salt_root_run(result: dict, minion) -> None:
    expected = salt_root_ids(NOT_SLOW)
    assert expected and all(nodeid.startswith("sample_tests/") for nodeid in expected)
    assert sorted(t["nodeid"] for t in result["tests"]) == sorted(expected), result.get("message")
    assert {t["file"] for t in result["tests"]} == {nodeid.split("::")[0] for nodeid in expected}
    assert result["rootdir"] == str(Path(minion.config["cachedir"]) / "files" / "base")


def test_salt_node_ids_are_the_same_on_every_minion(salt_cli, salt_minion, salt_minion_2):
    ret = salt_cli.run("pytestrun.run", "salt://sample_tests", f"args={json.dumps(NOT_SLOW)}",
                       f"env={json.dumps(NO_AUTOLOAD)}", minion_tgt="web-[12]")
    assert set(ret.data) == {salt_minion.id, salt_minion_2.id}, ret
    for minion in (salt_minion, salt_minion_2):
        assert_salt_root_run(ret.data[minion.id], minion)
    assert ret.data[salt_minion.id]["rootdir"] != ret.data[salt_minion_2.id]["rootdir"]


@pytest.fixture(scope="module")
def poisoned_minion(salt_master):
    """A minion whose cachedir sits (like /var/cache/salt/minion) under a pyproject.toml and a conftest.py
    that belong to someone else."""
    # Salt puts the cachedir under the minion's root_dir: <root_dir>/poisoned/var/cache/salt/minion.
    minion = start_minion(salt_master, "nodeid-1", None, cachedir="/poisoned/var/cache/salt/minion")
    cachedir = Path(minion.config["cachedir"])
    poisoned = next(parent for parent in cachedir.parents if parent.name == "poisoned")
    poisoned.mkdir(parents=True, exist_ok=True)
    (poisoned / "pyproject.toml").write_text(POISON_PYPROJECT)
    (poisoned / "conftest.py").write_text(POISON_CONFTEST)
    with minion.started():
        sync_minion(salt_master, minion)
        yield minion


@pytest.fixture(scope="module")
def own_config_tree(file_roots_dir, salt_run_cli):
    """A salt:// tree that brings its own pytest.ini (above the directory that is run) and conftest.py."""
    tree = file_roots_dir / "pytestrun_own_config"
    (tree / "sub").mkdir(parents=True)
    (tree / "pytest.ini").write_text(
        '[pytest]\npython_files = check_*.py\naddopts = -k "not excluded" --strict-markers\n'
        "markers =\n    fleet: registered by the tree's own ini\n")
    (tree / "conftest.py").write_text("import pytest\n\n@pytest.fixture\ndef inventory():\n    return 3\n")
    (tree / "sub" / "check_own.py").write_text(
        "import pytest\n\n@pytest.mark.fleet\ndef test_included(inventory):\n    assert inventory == 3\n\n"
        "def test_excluded():\n    assert 0\n")
    salt_run_cli.run("fileserver.clear_file_list_cache")
    yield "pytestrun_own_config"
    shutil.rmtree(tree)
    salt_run_cli.run("fileserver.clear_file_list_cache")


def test_config_above_the_minion_cache_does_not_leak_into_salt_runs(salt_cli, poisoned_minion):
    expected, _ = pytest_summary(str(SAMPLES), ["-p", "no:cacheprovider", "--config-file=/dev/null", *NOT_SLOW],
                                 SAMPLES, NO_AUTOLOAD)
    ret = run(salt_cli, poisoned_minion, "salt://sample_tests", f"args={json.dumps(NOT_SLOW)}",
              f"env={json.dumps(NO_AUTOLOAD)}")
    result = ret.data
    assert result["counts"] == expected, result.get("message")
    assert result["counts_other"].get("deselected") == 1  # the slow test, by our -k; nothing by the poison
    assert_salt_root_run(result, poisoned_minion)
    # The same node id, given as salt://..., maps onto the cached file and comes back relative to the root.
    ret = run(salt_cli, poisoned_minion, "salt://sample_tests/test_passing.py::test_inventory_fixture",
              f"env={json.dumps(NO_AUTOLOAD)}")
    assert [t["nodeid"] for t in ret.data["tests"]] == ["sample_tests/test_passing.py::test_inventory_fixture"]
    assert ret.data["status"] == "passed"


def test_salt_tree_with_its_own_config_is_honoured(salt_cli, poisoned_minion, own_config_tree):
    ret = run(salt_cli, poisoned_minion, f"salt://{own_config_tree}/sub", f"env={json.dumps(NO_AUTOLOAD)}")
    result = ret.data
    assert result["status"] == "passed", result.get("message")
    assert [t["nodeid"] for t in result["tests"]] == [f"{own_config_tree}/sub/check_own.py::test_included"]
    assert result["counts_other"] == {"deselected": 1}
    assert result["rootdir"] == str(Path(poisoned_minion.config["cachedir"]) / "files" / "base")
