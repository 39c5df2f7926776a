"""tools/pidfiles.py: the one pid-file check the stack, its storage host and PostgreSQL use."""

from __future__ import annotations

import subprocess
import sys

from tools.pidfiles import live_pid


def test_a_pid_file_names_a_live_process_or_nothing(tmp_path):
    pid_file = tmp_path / "x.pid"
    assert live_pid(pid_file) is None  # no file
    pid_file.write_text("not a pid\n")
    assert live_pid(pid_file) is None
    pid_file.write_text("")
    assert live_pid(pid_file) is None
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        pid_file.write_text(f"{child.pid}\n/var/lib/postgresql/data\n")  # postmaster.pid: the pid comes first
        assert live_pid(pid_file) == child.pid
    finally:
        child.kill()
        child.wait()
    assert live_pid(pid_file) is None  # gone
