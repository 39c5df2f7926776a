"""tests/conftest.py removes Salt's deferred log handler, which flooded test output at exit."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO_ROOT

# What pytest does to a process: sys.stderr is a capture stream while plugins and conftests
# import salt, that stream is closed before the interpreter exits.
SCRIPT = """
import io, logging, sys
real_stderr, capture = sys.stderr, io.StringIO()
sys.stderr = capture
import salt._logging.impl  # no root handler yet: Salt installs its deferred handler on `capture`
sys.stderr = real_stderr
if {hand_off}:
    import tests.conftest  # noqa: F401 - importing the harness hands the handler's records over
logging.getLogger("distmon.test").warning("a warning logged during the session")
capture.close()
"""


def run(hand_off: bool) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", SCRIPT.format(hand_off=hand_off)], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120)


def test_without_the_harness_salt_prints_a_logging_error_at_exit():
    """The flood as it was: the premise of the fix, so this file can tell when Salt changes."""
    done = run(hand_off=False)
    assert "--- Logging error ---" in done.stderr
    assert "I/O operation on closed file" in done.stderr


def test_the_harness_leaves_no_logging_error_and_loses_no_record():
    done = run(hand_off=True)
    assert "Logging error" not in done.stderr, done.stderr
    assert "a warning logged during the session" in done.stderr  # still reported, by logging's last resort
