"""The distmon outputter from the real `salt` CLI: a compact summary per minion instead of the nested dump."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

SALT = str(Path(sys.executable).with_name("salt"))
FAILING_SUITE = '''
def test_passes():
    pass


def test_fails():
    assert "expected" == "actual", "distmon outputter sample"
'''


def test_pytestrun_run_with_out_distmon_prints_one_line_per_minion_and_its_failures(
    salt_master, salt_minion, tmp_path_factory
):
    suite = tmp_path_factory.mktemp("outputter-suite")
    suite.chmod(0o755)
    (suite / "test_out.py").write_text(FAILING_SUITE)
    argv = [SALT, "-c", str(salt_master.config_dir), salt_minion.id, "pytestrun.run", str(suite),
            "args=-p no:randomly -q", "-t", "120"]
    human = subprocess.run([*argv, "--out", "distmon"], capture_output=True, text=True, timeout=180,
                           stdin=subprocess.DEVNULL)
    lines = human.stdout.strip().splitlines()
    assert lines[0].startswith(f"{salt_minion.id}: failed: 1 passed, 1 failed, 0 skipped, 0 errors in "), human
    assert lines[1] == "    FAILED test_out.py::test_fails - AssertionError: distmon outputter sample", human
    assert len(lines) == 2, human.stdout  # not the nested dump of every test, its output and the facts
    assert "Traceback" not in human.stdout + human.stderr
    # --out json still gives the whole return.
    data = subprocess.run([*argv, "--out", "json"], capture_output=True, text=True, timeout=180,
                          stdin=subprocess.DEVNULL)
    ret = json.loads(data.stdout)[salt_minion.id]
    assert ret["counts"]["failed"] == 1 and len(ret["tests"]) == 2
