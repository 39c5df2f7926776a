"""Shared pieces of the distmon tests: result documents, pytestrun returns, loader dunders, login files,
a dashboard virtualenv another account can run."""

from __future__ import annotations

import grp
import os
import pwd
import subprocess
import sys
import sysconfig
import time
import uuid
from pathlib import Path

import pytest

from tests.loader_support import fake_config_option, load_utils
from tools.storage_host import free_port


def result_document(jid: str, minion_id: str, **result) -> dict:
    return {
        "format": "distmon-result/1",
        "jid": jid,
        "minion_id": minion_id,
        "fun": "pytestrun.run",
        "fun_args": [],
        "success": True,
        "retcode": 0,
        "returned_at": "2026-01-01T00:00:00.000Z",
        "grains": {},
        "result": result or {"status": "passed"},
    }


def pytestrun_result(passed=1, failed=0, skipped=0, errors=0, status=None, duration=0.5, tests=None) -> dict:
    """A ``pytestrun.run`` return, as far as summaries read it."""
    status = status or ("failed" if failed or errors else "passed")
    return {
        "status": status,
        "exitcode": 1 if status == "failed" else 0,
        "counts": {"passed": passed, "failed": failed, "skipped": skipped, "xfailed": 0, "xpassed": 0,
                   "errors": errors},
        "tests": tests or [],
        "duration": duration,
    }


def unused_login_files(directory) -> tuple[str, str]:
    """(key, known_hosts) files that exist, for options checked before any connection is made."""
    key = directory / "client_key"
    key.write_text("not used: nothing is ever logged in to with it\n")
    known_hosts = directory / "known_hosts"
    known_hosts.write_text("")
    return str(key), str(known_hosts)


def new_jid() -> str:
    return f"{time.time_ns()}{uuid.uuid4().hex[:4]}"


def visible_files(inbox) -> list[str]:
    return sorted(p.name for p in inbox.iterdir() if not p.name.startswith(".")) if inbox.exists() else []


def spooled_jids(spool_dir) -> list[str]:
    if not os.path.isdir(spool_dir):
        return []
    return sorted(name[:-5] for name in os.listdir(spool_dir) if name.endswith(".json"))


def closed_port() -> int:
    return free_port()  # bound and released: nothing listens there


def execution_module_dunders(opts: dict, pillar: dict | None = None, context: dict | None = None) -> dict:
    """What the loader packs into _modules/distmon.py: opts, config.option, the _utils library."""
    return {
        "__opts__": opts,
        "__salt__": {"config.option": fake_config_option(opts, pillar or {})},
        "__utils__": load_utils(),
        "__context__": {} if context is None else context,
    }


def dashboard_venv_for(user: str, venv: Path) -> Path:
    """Make ``venv`` a virtualenv ``user`` can run with this checkout's packages (a .pth file to ours).

    Ours may live where only root can go (/root/.pyenv): the virtualenv is made by the machine's
    Python of the same version. Skips the test when there is none ``user`` may run.
    """
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    group = grp.getgrgid(pwd.getpwnam(user).pw_gid).gr_name
    runnable = [candidate for candidate in (f"/usr/bin/{version}", f"/usr/local/bin/{version}")
                if Path(candidate).exists() and subprocess.run([candidate, "-c", "pass"], user=user, group=group,
                                                               extra_groups=[], capture_output=True).returncode == 0]
    if not runnable:
        pytest.skip(f"no {version} that {user} can run")
    subprocess.run([runnable[0], "-m", "venv", "--without-pip", str(venv)], check=True)
    (site_packages,) = venv.glob("lib/python3.*/site-packages")
    (site_packages / "checkout-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv
