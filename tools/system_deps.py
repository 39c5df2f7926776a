"""Check (and as root, install) the Debian packages a make target needs.

Standard library only: `make setup` runs it with the system Python before .venv exists.

- ``setup``: python3.X-venv (``python3 -m venv`` needs ensurepip, a separate package on Debian);
- ``stack`` (`make up`, `make demo`, `make bench`): openssh-server (the storage host's
  sshd), openssh-client (ssh-keygen makes its keys), procps (``ps`` finds leftovers);
- ``test`` (`make test`, `.ci/run`): the stack's packages plus chromium (the end-to-end
  browser test; Playwright drives /usr/bin/chromium, never a downloaded browser) and cron
  (the minion state's cron mode), postgresql (the server tools/postgres.py starts for the
  PostgreSQL pass of the tests; also for `make up DB=postgres`).

Run as root with apt-get on PATH, it installs what is missing; otherwise it prints the
apt-get command to run and exits 1. It never removes anything.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Callable, Iterable, Mapping
from typing import TextIO

VENV_PACKAGE = f"python3.{sys.version_info.minor}-venv"

# Debian package -> paths, any of which proves it is installed.
PROBES: dict[str, tuple[str, ...]] = {
    VENV_PACKAGE: (os.path.join(sysconfig.get_paths()["stdlib"], "ensurepip", "__init__.py"),),
    "openssh-server": ("/usr/sbin/sshd", "/usr/local/sbin/sshd"),
    "openssh-client": ("/usr/bin/ssh-keygen", "/usr/local/bin/ssh-keygen"),
    "procps": ("/usr/bin/ps", "/bin/ps"),
    "chromium": ("/usr/bin/chromium",),
    "cron": ("/usr/bin/crontab",),
    # Debian 12 ships 15; tools/postgres.py also looks in /usr/local/bin and any /usr/lib/postgresql/*/bin.
    "postgresql": ("/usr/local/bin/postgres", *(f"/usr/lib/postgresql/{v}/bin/postgres" for v in range(13, 19))),
}

STACK = ("openssh-server", "openssh-client", "procps")
NEEDS: dict[str, tuple[str, ...]] = {
    "setup": (VENV_PACKAGE,),
    "stack": STACK,
    "test": (*STACK, "chromium", "cron", "postgresql"),
    "postgres": ("postgresql",),
}


def missing(packages: Iterable[str], probes: Mapping[str, Iterable[str]] = PROBES) -> list[str]:
    """The packages of ``packages`` none of whose probe paths exists."""
    return [pkg for pkg in packages if not any(os.path.exists(path) for path in probes[pkg])]


def check_or_install(
    purpose: str,
    probes: Mapping[str, Iterable[str]] = PROBES,
    apt_get: str | None = None,
    is_root: Callable[[], bool] = lambda: os.geteuid() == 0,
    out: TextIO = sys.stderr,
) -> int:
    """Install with apt-get what ``purpose`` needs and lacks: 0 when all is there afterwards."""
    needed = missing(NEEDS[purpose], probes)
    if not needed:
        return 0
    apt_get = apt_get or shutil.which("apt-get")
    if not is_root() or not apt_get:
        print(f"distmon: `make` needs these Debian packages: {' '.join(needed)}\n"
              f"  install them with: sudo apt-get install -y {' '.join(needed)}", file=out)
        return 1
    print(f"distmon: installing {' '.join(needed)} with apt-get", file=out, flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    update = subprocess.run([apt_get, "update", "-qq"], env=env, check=False)
    install = subprocess.run([apt_get, "install", "-y", "-qq", "--no-install-recommends", *needed],
                             env=env, check=False)
    still = missing(needed, probes)
    if still:
        print(f"distmon: still missing after apt-get (update exit {update.returncode}, install exit "
              f"{install.returncode}): {' '.join(still)}", file=out)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check-or-install", action="store_true", help="install as root, else explain")
    parser.add_argument("--for", dest="purpose", choices=sorted(NEEDS), default="test",
                        help="what the packages are for (default: test)")
    args = parser.parse_args(argv)
    if not args.check_or_install:
        needed = missing(NEEDS[args.purpose])
        print(" ".join(needed))
        return 1 if needed else 0
    return check_or_install(args.purpose)


if __name__ == "__main__":
    sys.exit(main())
