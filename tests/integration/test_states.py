"""The distmon states on a real minion: distmon.minion for real (twice) and in test mode,
distmon.host in test mode and for real into a scratch root, checked by a real sshd.

Nothing outside the test's own directories is changed: the minion state's files go
under tmp paths given in pillar, its cron entries carry unique identifiers and are
removed afterwards (root's crontab is left as found); the host state's real apply
is confined to a scratch root and never touches sshd, accounts or services.
"""

from __future__ import annotations

import json
import shlex
import stat
import subprocess
import uuid
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.integration

SERVED_FOR_HOST_STATE = ("dashboard", "requirements_host.txt", "constraints.txt")


def apply(salt_cli, minion, sls: str, pillar: dict, test: bool = False) -> dict:
    args = ["state.apply", sls, f"pillar={json.dumps(pillar)}"]
    if test:
        args.append("test=True")
    ret = salt_cli.run(*args, minion_tgt=minion.id, _timeout=300)
    assert isinstance(ret.data, dict), ret
    return ret.data


def failed_states(result: dict) -> dict:
    return {key: value["comment"] for key, value in result.items() if value["result"] is False}


def changed_states(result: dict) -> dict:
    return {key: value["changes"] for key, value in result.items() if value["changes"]}


def state_id(result: dict, name: str) -> dict:
    (match,) = [value for key, value in result.items() if f"_|-{name}_|-" in key]
    return match


def crontab(salt_cli, minion) -> list:
    ret = salt_cli.run("cron.list_tab", "root", minion_tgt=minion.id)
    assert ret.returncode == 0, ret
    return ret.data["crons"]


@pytest.fixture(scope="module")
def keypair(tmp_path_factory):
    keys = tmp_path_factory.mktemp("state-keys")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "distmon-test", "-f",
                    str(keys / "id")], check=True)
    return (keys / "id").read_text(), (keys / "id.pub").read_text().strip()


@pytest.fixture(scope="module")
def minion_pillar(tmp_path_factory, keypair, storage_host):
    root = tmp_path_factory.mktemp("minion-state")
    tag = uuid.uuid4().hex[:8]
    private_key, _ = keypair
    host_key = (storage_host.host_key.with_suffix(".pub")).read_text().split()
    return {
        "distmon": {
            "host": "127.0.0.1",
            "port": storage_host.port,
            "user": storage_host.user,
            "key": str(root / "etc" / "id_ed25519"),
            "known_hosts": str(root / "etc" / "known_hosts"),
            "remote_inbox": storage_host.remote_inbox,
            "private_key": private_key,
            "host_keys": f"[127.0.0.1]:{storage_host.port} {host_key[0]} {host_key[1]}\n",
            "config_file": str(root / "minion.d" / "distmon.conf"),
            "tests_dir": str(root / "tests"),
            "cron_identifier": f"distmon-pytestrun-test-{tag}",
            "flush_identifier": f"distmon-flush-test-{tag}",
            "schedule": {"minute": "17", "hour": "*/2"},
        }
    }


@pytest.fixture(scope="module")
def applied_minion_state(salt_cli, salt_minion, minion_pillar):
    """distmon.minion applied once for real; its cron entries removed afterwards."""
    before = crontab(salt_cli, salt_minion)
    try:
        result = apply(salt_cli, salt_minion, "distmon.minion", minion_pillar)
        yield result
    finally:
        for key in ("cron_identifier", "flush_identifier"):
            salt_cli.run("cron.rm_job", "root", "ignored", f"identifier={minion_pillar['distmon'][key]}",
                         minion_tgt=salt_minion.id)
        after = crontab(salt_cli, salt_minion)
        assert after == before, "root's crontab must be left as found"


def test_minion_state_installs_config_keys_tests_and_cron(applied_minion_state, minion_pillar, salt_cli,
                                                          salt_minion):
    result = applied_minion_state
    assert not failed_states(result), failed_states(result)
    pillar = minion_pillar["distmon"]
    # Already installed in the minion's Python: nothing to do, no change.
    assert state_id(result, "distmon-pip-salt-python")["changes"] == {}

    key = Path(pillar["key"])
    assert key.read_text() == pillar["private_key"]
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(key.parent.stat().st_mode) == 0o700
    assert Path(pillar["known_hosts"]).read_text() == pillar["host_keys"]
    assert stat.S_IMODE(Path(pillar["known_hosts"]).stat().st_mode) == 0o644

    config = Path(pillar["config_file"]).read_text()
    assert 'distmon.host: "127.0.0.1"' in config
    assert f"distmon.port: {pillar['port']}" in config
    assert f'distmon.key: "{pillar["key"]}"' in config
    assert f'distmon.remote_inbox: "{pillar["remote_inbox"]}"' in config

    assert (Path(pillar["tests_dir"]) / "test_passing.py").is_file()

    crons = {entry["identifier"]: entry for entry in crontab(salt_cli, salt_minion)}
    run = crons[pillar["cron_identifier"]]
    assert (run["minute"], run["hour"], run["daymonth"]) == ("17", "*/2", "*")
    assert f" pytestrun.run {pillar['tests_dir']} --return distmon" in run["cmd"]
    flush = crons[pillar["flush_identifier"]]
    assert flush["minute"] == "*/15"
    assert " distmon.flush" in flush["cmd"]


def test_the_cron_command_runs_the_deployed_tests(applied_minion_state, minion_pillar, salt_cli, salt_minion):
    pillar = minion_pillar["distmon"]
    crons = {entry["identifier"]: entry for entry in crontab(salt_cli, salt_minion)}
    argv = shlex.split(crons[pillar["cron_identifier"]]["cmd"])
    # The same command with JSON output instead of none, so the test can read what ran.
    argv[argv.index("--out") + 1] = "json"
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=180)
    result = json.loads(proc.stdout)["local"]
    assert result["status"] in ("passed", "failed"), result
    assert result["counts"]["passed"] >= 1
    assert result["paths"] == [pillar["tests_dir"]]


def test_minion_state_second_apply_and_test_mode_change_nothing(applied_minion_state, minion_pillar, salt_cli,
                                                                salt_minion):
    again = apply(salt_cli, salt_minion, "distmon.minion", minion_pillar)
    assert not failed_states(again)
    assert changed_states(again) == {}

    dry = apply(salt_cli, salt_minion, "distmon.minion", minion_pillar, test=True)
    assert not failed_states(dry)
    assert changed_states(dry) == {}
    assert all(value["result"] is True for value in dry.values()), dry


def test_minion_state_in_test_mode_reports_and_creates_nothing(salt_cli, salt_minion, minion_pillar,
                                                               tmp_path):
    pillar = json.loads(json.dumps(minion_pillar))
    fresh = pillar["distmon"]
    fresh.update({
        "tests_dir": str(tmp_path / "tests"),
        "config_file": str(tmp_path / "minion.d" / "distmon.conf"),
        "key": str(tmp_path / "etc" / "id_ed25519"),
        "known_hosts": str(tmp_path / "etc" / "known_hosts"),
        "cron_identifier": f"distmon-pytestrun-dry-{uuid.uuid4().hex[:8]}",
        "flush_identifier": f"distmon-flush-dry-{uuid.uuid4().hex[:8]}",
    })
    before = crontab(salt_cli, salt_minion)
    dry = apply(salt_cli, salt_minion, "distmon.minion", pillar, test=True)
    assert not failed_states(dry), failed_states(dry)
    assert state_id(dry, "distmon-cron-run")["result"] is None
    assert state_id(dry, "distmon-tests-dir")["result"] is None
    assert list(tmp_path.iterdir()) == []
    assert crontab(salt_cli, salt_minion) == before


@pytest.fixture(scope="module")
def dashboard_served(file_roots_dir, salt_run_cli):
    """Serve the dashboard code the way a real master's file_roots would."""
    added = []
    for name in SERVED_FOR_HOST_STATE:
        link = file_roots_dir / name
        if not link.exists():
            link.symlink_to(REPO_ROOT / name, target_is_directory=(REPO_ROOT / name).is_dir())
            added.append(link)
    salt_run_cli.run("fileserver.clear_file_list_cache")
    yield
    for link in added:
        link.unlink()
    salt_run_cli.run("fileserver.clear_file_list_cache")


def test_host_state_in_test_mode_plans_everything_and_changes_nothing(salt_cli, salt_minion, dashboard_served,
                                                                      keypair, tmp_path):
    _, public_key = keypair
    sshd_dropin = tmp_path / "sshd_config.d" / "distmon.conf"
    pillar = {"distmon": {"storage": {
        "authorized_keys": [public_key],
        "sshd_config": str(sshd_dropin),
        "chroot": str(tmp_path / "chroot"),
        "db_path": str(tmp_path / "lib" / "distmon.sqlite"),
        "archive_dir": str(tmp_path / "lib" / "archive"),
        "quarantine_dir": str(tmp_path / "lib" / "quarantine"),
        "authorized_keys_file": str(tmp_path / "authorized_keys"),
        "dashboard": {"app_dir": str(tmp_path / "app"), "venv": str(tmp_path / "venv")},
    }}}
    dry = apply(salt_cli, salt_minion, "distmon.host", pillar, test=True)
    assert not failed_states(dry), failed_states(dry)
    for name in ("distmon-chroot", "distmon-inbox", "distmon-sshd-match", "distmon-authorized-keys",
                 "distmon-dashboard-code", "distmon-dashboard-venv", "distmon-db-dir"):
        assert state_id(dry, name)["result"] is None, (name, state_id(dry, name))
    assert list(tmp_path.iterdir()) == []
    # No systemd here (grains init != systemd): no unit, no service in the plan.
    assert not any("distmon-dashboard-service" in key for key in dry)


def test_host_state_renders_into_a_scratch_root_that_sshd_accepts(salt_cli, salt_minion, keypair,
                                                                   harness_root):
    _, public_key = keypair
    # sshd's ChrootDirectory rules need root-owned parents: the harness root has them, /tmp does not.
    scratch = harness_root / f"host-state-{uuid.uuid4().hex[:6]}"
    scratch.mkdir(mode=0o755)
    pillar = {"distmon": {"storage": {
        "root": str(scratch), "manage_user": False, "authorized_keys": [public_key],
        "dashboard": {"enabled": False},
    }}}
    first = apply(salt_cli, salt_minion, "distmon.host", pillar)
    assert not failed_states(first), failed_states(first)
    assert not any("sshd-check" in key or "sshd-reload" in key or "user" in key.split("_|-")[0]
                   for key in first)

    chroot = scratch / "srv" / "distmon" / "chroot"
    for path, mode in ((chroot, 0o755), (chroot / "inbox", 0o755), (scratch / "var/lib/distmon/archive", 0o750)):
        info = path.stat()
        assert stat.S_IMODE(info.st_mode) == mode, path
        assert info.st_uid == 0, path
    keys = (scratch / "etc/ssh/distmon_authorized_keys").read_text()
    assert f"restrict {public_key}" in keys
    dropin = scratch / "etc/ssh/sshd_config.d/distmon.conf"
    text = dropin.read_text()
    assert "Match User distmon" in text
    assert f"ChrootDirectory {chroot}" in text
    assert "ForceCommand internal-sftp" in text

    again = apply(salt_cli, salt_minion, "distmon.host", pillar)
    assert changed_states(again) == {}

    # A real sshd reads the drop-in through Include, as Debian's sshd_config does. Global
    # directives after the Include must stay global: sshd -t fails if the Match leaked.
    host_key = scratch / "host_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host_key)], check=True)
    main = scratch / "sshd_config"
    main.write_text(f"Include {dropin}\nHostKey {host_key}\nPermitRootLogin no\nX11Forwarding yes\n")
    check = subprocess.run(["/usr/sbin/sshd", "-t", "-f", str(main)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr

    def effective(user: str) -> dict:
        out = subprocess.run(
            ["/usr/sbin/sshd", "-T", "-f", str(main), "-C", f"user={user},host=localhost,addr=127.0.0.1"],
            capture_output=True, text=True, check=True,
        ).stdout
        return dict(line.split(" ", 1) for line in out.splitlines() if " " in line)

    sftp = effective("distmon")
    assert sftp["forcecommand"] == "internal-sftp -u 0022"
    assert sftp["chrootdirectory"] == str(chroot)
    assert sftp["permittty"] == "no"
    other = effective("root")
    assert other.get("forcecommand", "none") == "none"
    assert other["x11forwarding"] == "yes"


def test_top_file_gives_each_role_its_state(salt_cli, salt_minion):
    had_roles = salt_cli.run("grains.get", "roles", minion_tgt=salt_minion.id).data
    assert not had_roles, "the harness minion is expected to have no roles grain"
    ret = salt_cli.run("grains.append", "roles", "distmon-minion", minion_tgt=salt_minion.id)
    assert ret.returncode == 0, ret
    try:
        top = salt_cli.run("state.show_top", minion_tgt=salt_minion.id)
        assert top.data == {"base": ["distmon.minion"]}, top
    finally:
        salt_cli.run("grains.delkey", "roles", "force=True", minion_tgt=salt_minion.id)


def _keys(tree: dict, prefix: str = "") -> set[str]:
    keys = set()
    for key, value in tree.items():
        keys.add(prefix + key)
        if isinstance(value, dict) and key not in ("schedule", "flush_schedule"):
            keys |= _keys(value, f"{prefix}{key}:")
    return keys


def test_pillar_example_documents_every_state_key():
    import yaml

    defaults = yaml.safe_load((REPO_ROOT / "states" / "distmon" / "defaults.yaml").read_text())["distmon"]
    example = yaml.safe_load((REPO_ROOT / "pillar.example").read_text())["distmon"]
    assert _keys(defaults) <= _keys(example), _keys(defaults) - _keys(example)
