"""A test that starts a sleeper in its own session, then SIGKILLs its own process group."""

import os
import signal
import subprocess
import sys

MARKER = os.environ.get("DISTMON_TEST_MARKER", "no-marker")


def test_passes_first():
    assert True


def test_kills_its_own_process_group():
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)", MARKER, "escaped-sleeper"],
                     start_new_session=True)
    os.killpg(0, signal.SIGKILL)


def test_never_reached():
    assert True
