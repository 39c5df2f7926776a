"""Tests that fork or leave processes behind; pytest's counts must not change."""

import os
import subprocess
import sys

MARKER = os.environ.get("DISTMON_TEST_MARKER", "no-marker")


def test_fork_child_exits():
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0


def test_fork_child_reports_nothing():
    pid = os.fork()
    if pid == 0:
        print("child output")
        os._exit(3)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 3


def test_leaves_a_process_behind():
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", MARKER, "leftover"])


def test_after_fork_fails():
    assert os.getpid() == -1
