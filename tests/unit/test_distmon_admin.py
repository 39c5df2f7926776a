"""states/distmon/files/distmon-admin.sh.jinja: `distmon-admin`, the storage host's admin CLI.

The template is rendered by Salt's own Jinja renderer (as file.managed renders it) for a
sandbox that stands in for /opt/distmon and /etc/distmon: a virtualenv made here (the
machine's Python of this version, with this checkout's packages through a .pth file), the
app directory holding this checkout's dashboard/, and a settings file naming a store in a
directory the service's account owns. Every path has a space and a quote in it, so the
rendered quoting is exercised. The script then runs for real: as root (it must drop to the
account before SQLite touches the store), as the account, and as someone else (refused).
The state that installs it: tests/integration/test_states.py.
"""

from __future__ import annotations

import grp
import os
import pwd
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT
from tests.distmon_support import dashboard_venv_for
from tools.storage_host import ensure_sftp_user

TEMPLATE = REPO_ROOT / "states" / "distmon" / "files" / "distmon-admin.sh.jinja"
OTHER_USER = "nobody"
REFUSED = 77

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="switches users: needs root")


def render(context: dict) -> str:
    """The template as Salt's file.managed renders it (salt.utils.templates.JINJA)."""
    import salt.config
    import salt.utils.templates

    opts = salt.config.minion_config(None)
    opts.update(file_client="local")
    out = salt.utils.templates.JINJA(str(TEMPLATE), to_str=True, context=context, opts=opts, saltenv="base",
                                     grains={}, pillar={}, salt={})
    assert out["result"], out
    return out["data"]


@pytest.fixture(scope="module")
def host(harness_root):
    """A formula-installed storage host in a sandbox: the rendered script and what it points at."""
    owner = ensure_sftp_user()
    sandbox = harness_root / "distmon admin's host"
    app_dir, venv, lib, etc = (sandbox / "opt" / "app", sandbox / "opt" / "venv", sandbox / "lib", sandbox / "etc")
    for path in (app_dir, lib, etc, sandbox / "bin"):
        path.mkdir(parents=True)
    for path in (sandbox, sandbox / "opt", app_dir, etc, sandbox / "bin"):
        path.chmod(0o755)
    lib.chmod(0o750)
    os.chown(lib, pwd.getpwnam(owner).pw_uid, grp.getgrnam(owner).gr_gid)
    (app_dir / "dashboard").symlink_to(REPO_ROOT / "dashboard", target_is_directory=True)
    dashboard_venv_for(owner, venv)
    env_file = etc / "dashboard.env"
    env_file.write_text(f"DISTMON_DB={lib}/distmon.sqlite\nDISTMON_INBOX={sandbox}/inbox\nDISTMON_BCRYPT_ROUNDS=4\n")
    script = sandbox / "bin" / "distmon-admin"
    script.write_text(render({"user": owner, "venv": str(venv), "app_dir": str(app_dir), "env_file": str(env_file)}))
    script.chmod(0o755)  # the state's mode
    host = {"script": script, "owner": owner, "lib": lib, "sandbox": sandbox}
    # Each run imports the dashboard (about a second of CPU): the store is made once, by root.
    host["created"] = admin(host, "user", "create", "alice", "--admin", "--password-stdin", stdin="alice-password\n")
    return host


def admin(host: dict, *args: str, user: str | None = None, stdin: str | None = None, env: dict | None = None,
          cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run distmon-admin as root (user None) or as ``user`` with only that user's groups."""
    as_user = {"user": user, "group": grp.getgrgid(pwd.getpwnam(user).pw_gid).gr_name, "extra_groups": []} if user else {}
    return subprocess.run([str(host["script"]), *args], input=stdin, capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", **(env or {})}, cwd=cwd or host["sandbox"],
                          **as_user)


def test_the_rendered_script_names_the_venv_app_and_settings_file_shell_quoted(host):
    text = host["script"].read_text()
    assert text.startswith("#!/bin/sh\n")
    assert f"user={host['owner']}\n" in text
    # A path with a space and a quote arrives as one word: sh reads back exactly the path.
    probe = subprocess.run(["sh", "-c", text.split("\nif ")[0] + '\nprintf "%s\\n" "$venv" "$app_dir" "$env_file"'],
                           capture_output=True, text=True, check=True)
    sandbox = host["sandbox"]
    assert probe.stdout.splitlines() == [f"{sandbox}/opt/venv", f"{sandbox}/opt/app", f"{sandbox}/etc/dashboard.env"]
    assert "DISTMON_" not in text.split("\nif ")[0], "the script holds paths, never settings or secrets"


def test_root_runs_the_cli_as_the_stores_owner(host):
    created = host["created"]  # as root: `echo ... | distmon-admin user create alice --admin --password-stdin`
    assert (created.returncode, created.stdout.strip()) == (0, "created admin alice"), created.stderr
    listing = admin(host, "user", "list")
    assert listing.returncode == 0, listing.stderr
    assert listing.stdout.split()[4:6] == ["alice", "active"], listing.stdout
    # The database and everything SQLite made beside it (-wal, -shm) belong to the service's account.
    owner_uid = pwd.getpwnam(host["owner"]).pw_uid
    made = {path.name: path.stat().st_uid for path in host["lib"].iterdir()}
    assert "distmon.sqlite" in made and set(made.values()) == {owner_uid}, made


def test_its_exit_status_is_the_clis(host):
    missing = admin(host, "user", "approve", "ghost")
    assert missing.returncode == 2 and "ghost" in missing.stderr, missing


def test_the_stores_owner_runs_it_directly(host):
    listing = admin(host, "user", "list", user=host["owner"])
    assert listing.returncode == 0, listing.stderr
    assert "alice" in listing.stdout.split()


def test_anyone_else_is_refused_before_the_store_is_touched(host):
    before = {path.name: path.stat().st_mtime_ns for path in host["lib"].iterdir()}
    refused = admin(host, "user", "list", user=OTHER_USER)
    assert refused.returncode == REFUSED, refused
    assert refused.stdout == ""
    assert refused.stderr == (f"distmon-admin: run it as root or as {host['owner']} (the owner of the store), "
                              f"not as {OTHER_USER}\n")
    assert {path.name: path.stat().st_mtime_ns for path in host["lib"].iterdir()} == before


def test_the_callers_environment_and_directory_cannot_redirect_it(host, harness_root):
    # A DISTMON_DB left in an admin's shell, and a checkout's dashboard/ in the current directory.
    elsewhere = harness_root / "admin-elsewhere"
    (elsewhere / "dashboard").mkdir(parents=True)
    elsewhere.chmod(0o755)
    (elsewhere / "dashboard" / "__init__.py").write_text("")
    (elsewhere / "dashboard" / "__main__.py").write_text("print('the checkout, not the installed app')\n")
    listing = admin(host, "user", "list", env={"DISTMON_DB": str(elsewhere / "other.sqlite")}, cwd=elsewhere)
    assert listing.returncode == 0, listing.stderr
    assert "alice" in listing.stdout.split()
    assert not (elsewhere / "other.sqlite").exists()
