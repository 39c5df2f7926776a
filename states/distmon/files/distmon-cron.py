#!/usr/bin/env python3
# Managed by Salt (state distmon.minion, scheduler: cron). Do not edit here.
"""Run one salt-call for cron; print nothing unless it failed, so cron mails only then.

Usage: distmon-cron SALT_CALL [SALT_CALL_ARGUMENTS...]

salt-call runs with ``--out=json --log-level=error`` and its output is kept. Success is a
function that returned a mapping: a pytestrun result (failing tests included: the
dashboard shows those) or a distmon.flush report (what stays spooled is retried by the
next flush). Anything else (an error string such as "ERROR: ...", no output, a crash) is
a failure: its full output is printed and the exit code is non-zero. The minion's own
log keeps the details either way.

Standard library only: it runs with Salt's Python, whatever that is.
"""

from __future__ import annotations

import json
import subprocess
import sys


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    command = [*argv, "--out=json", "--log-level=error"]
    try:
        proc = subprocess.run(command, capture_output=True, text=True, check=False)
    except OSError as err:
        print(f"distmon-cron: cannot run {argv[0]}: {err}")
        return 1
    try:
        returned = json.loads(proc.stdout)["local"]
    except (ValueError, KeyError, TypeError):
        returned = None
    if isinstance(returned, dict):
        return 0
    print(f"distmon-cron: {' '.join(argv)} failed (exit {proc.returncode}) and returned no result:")
    sys.stdout.write(proc.stdout)
    sys.stdout.write(proc.stderr)
    return proc.returncode or 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
