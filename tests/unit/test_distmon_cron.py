"""states/distmon/files/distmon-cron.py: the cron mode's check script, silent unless salt-call failed.

A stand-in salt-call (a real script) prints what a real one prints in each case; the
check script runs as cron would run it, and what it prints is what cron would mail.
The real salt-call behind a real crontab line: tests/integration/test_states.py.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT

CHECK_SCRIPT = REPO_ROOT / "states" / "distmon" / "files" / "distmon-cron.py"


@pytest.fixture
def salt_call(tmp_path):
    """Make a stand-in salt-call that prints ``stdout``/``stderr`` and exits ``code``; returns its path."""

    def make(stdout: str, code: int, stderr: str = "") -> str:
        script = tmp_path / "salt-call"
        script.write_text(
            f"#!{sys.executable}\nimport sys\n"
            f"open({str(tmp_path / 'argv')!r}, 'w').write(' '.join(sys.argv[1:]))\n"
            f"sys.stdout.write({stdout!r}); sys.stderr.write({stderr!r}); sys.exit({code})\n"
        )
        script.chmod(0o755)
        return str(script)

    return make


def cron_run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(CHECK_SCRIPT), *argv], capture_output=True, text=True, timeout=60)


def test_a_passing_run_prints_nothing_and_asks_for_json_output(salt_call, tmp_path):
    exe = salt_call(json.dumps({"local": {"status": "passed"}}), 0, stderr="DeprecationWarning: crypt\n")
    proc = cron_run(exe, "-c", "/etc/salt", "pytestrun.run", "/srv/tests", "--return", "distmon")
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "")
    assert (tmp_path / "argv").read_text().endswith("--return distmon --out=json --log-level=error")


def test_failing_tests_are_the_dashboards_business_not_a_mail(salt_call):
    # pytestrun sets retcode 1 when tests fail; a result was still returned and shipped.
    proc = cron_run(salt_call(json.dumps({"local": {"status": "failed", "counts": {"failed": 2}}}), 1),
                    "pytestrun.run", "/srv/tests")
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "")


@pytest.mark.parametrize(("stdout", "code", "stderr"), [
    (json.dumps({"local": "ERROR: the Python interpreter /x does not exist on this minion"}), 1, ""),
    ("", 255, "'pytestrun.run' is not available.\n"),
    ("Traceback (most recent call last):\n  ...\nKeyError: 'x'\n", 1, ""),
])
def test_no_result_prints_what_salt_call_said_and_fails(salt_call, stdout, code, stderr):
    proc = cron_run(salt_call(stdout, code, stderr), "pytestrun.run", "/srv/tests")
    assert proc.returncode == code
    assert proc.stdout.startswith("distmon-cron: ")
    assert f"failed (exit {code}) and returned no result" in proc.stdout
    assert (stdout + stderr) in proc.stdout


def test_a_salt_call_that_cannot_start_is_reported(tmp_path):
    proc = cron_run(str(tmp_path / "no-such-salt-call"), "distmon.flush")
    assert proc.returncode == 1
    assert "cannot run" in proc.stdout


def test_without_arguments_it_says_how_to_use_it():
    proc = cron_run()
    assert proc.returncode == 2
    assert proc.stderr.startswith("Usage: distmon-cron SALT_CALL")
