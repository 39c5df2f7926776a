"""Check (and as root, install) the Debian packages the tests need.

`make test` and `.ci/run` call this: openssh-server (the storage host's sshd),
chromium (the end-to-end browser test; Playwright drives /usr/bin/chromium, never a
downloaded browser), cron (the minion state's cron jobs).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys

# Debian package -> a path that proves it is installed.
PACKAGES = {
    "openssh-server": "/usr/sbin/sshd",
    "openssh-client": "/usr/bin/ssh-keygen",
    "chromium": "/usr/bin/chromium",
    "cron": "/usr/bin/crontab",
    "procps": "/usr/bin/ps",
}


def missing() -> list[str]:
    return [pkg for pkg, path in PACKAGES.items() if not os.path.exists(path)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check-or-install", action="store_true")
    parser.parse_args()
    needed = missing()
    if not needed:
        return 0
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        print(f"distmon: missing Debian packages: {' '.join(needed)}\n"
              f"  install them with: sudo apt-get install -y {' '.join(needed)}", file=sys.stderr)
        return 1
    print(f"distmon: installing {' '.join(needed)} with apt-get", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *needed], check=True, env=env)
    still = missing()
    if still:
        print(f"distmon: still missing after apt-get: {' '.join(still)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
