"""Pid files of the processes the local stack and the test harness start."""

from __future__ import annotations

import os
from pathlib import Path


def live_pid(pid_file: Path) -> int | None:
    """The pid written first in ``pid_file`` when that process is alive, else None (no file, junk, gone)."""
    try:
        pid = int(Path(pid_file).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # alive, but another user's process
    return pid
