"""A test that hangs after starting children, one escaping into its own session."""

import os
import subprocess
import sys
import time

MARKER = os.environ.get("DISTMON_TEST_MARKER", "no-marker")
SLEEPER = "import time, sys; time.sleep(600)"
# The middle process exits at once: the sleeper is re-parented to init, in a session of its own.
DAEMONIZER = (
    "import os, subprocess, sys; "
    "subprocess.Popen([sys.executable, '-c', sys.argv[1], sys.argv[2], 'daemon'], start_new_session=True); "
    "os._exit(0)"
)


def test_finishes_first():
    assert True


def test_hangs_with_children():
    subprocess.Popen([sys.executable, "-c", SLEEPER, MARKER, "child"])
    subprocess.Popen([sys.executable, "-c", SLEEPER, MARKER, "escaped"], start_new_session=True)
    subprocess.run([sys.executable, "-c", DAEMONIZER, SLEEPER, MARKER], check=True)
    time.sleep(600)


def test_never_reached():
    assert True
