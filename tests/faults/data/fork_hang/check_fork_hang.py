"""A test that forks a child which leaves pytest's session and hangs; the test waits for it."""

import os
import sys

MARKER = os.environ.get("DISTMON_TEST_MARKER", "no-marker")


def test_passes_first():
    assert True


def test_forked_child_hangs():
    pid = os.fork()
    if pid == 0:
        os.setsid()  # out of pytest's process group: killpg of the group alone would miss it
        os.execv(sys.executable, [sys.executable, "-c", "import time; time.sleep(3600)", MARKER, "forked-child"])
    os.waitpid(pid, 0)
