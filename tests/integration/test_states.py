"""The distmon formula on real minions: `state.apply distmon` from real pillar (pillar.example
with the harness's storage host), Salt's scheduler, cron mode, distmon.clean, and
distmon.host in test mode and for real into a scratch root, checked by a real sshd.

The minion tests serve their pillar from the master's pillar_roots (as an admin would, so
the SFTP private key travels only as pillar, never as a job argument) to web-1 alone, for
this module only. Its `private_key` is the harness's real SFTP client key: the key must
work (a scheduled run delivers with it) and its text must appear nowhere: not in
state.show_sls, state results (real and test=True), the job cache or the logs.
Every path is a tmp path and the spool a tmp spool; distmon.clean runs at the end and
root's crontab and web-1's schedule are left as found.
"""

from __future__ import annotations

import json
import pwd
import re
import shlex
import stat
import subprocess
import uuid
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO_ROOT, wait_for
from tests.distmon_support import dashboard_venv_for
from tests.salt_api import SaltApiCli

pytestmark = pytest.mark.integration

SERVED_FOR_HOST_STATE = ("dashboard", "requirements_host.txt", "constraints.txt")
RUN_JOB = "distmon-pytestrun"
FLUSH_JOB = "distmon-flush"


def apply(salt_api, minion, sls: str, pillar: dict | None = None, test: bool = False) -> dict:
    args = ["state.apply", sls]
    if pillar:
        args.append(f"pillar={json.dumps(pillar)}")
    if test:
        args.append("test=True")
    ret = salt_api.run(*args, minion_tgt=minion.id, _timeout=300)
    assert isinstance(ret.data, dict), ret
    return ret.data


def failed_states(result: dict) -> dict:
    return {key: value["comment"] for key, value in result.items() if value["result"] is False}


def changed_states(result: dict) -> dict:
    return {key: value["changes"] for key, value in result.items() if value["changes"]}


def state_id(result: dict, name: str) -> dict:
    (match,) = [value for key, value in result.items() if f"_|-{name}_|-" in key]
    return match


def crontab(salt_api, minion) -> list:
    ret = salt_api.run("cron.list_tab", "root", minion_tgt=minion.id)
    assert ret.returncode == 0, ret
    return ret.data["crons"]


def schedule(salt_api, minion) -> dict:
    ret = salt_api.run("schedule.list", "return_yaml=False", minion_tgt=minion.id)
    assert ret.returncode == 0, ret
    return ret.data or {}


def inbox_runs(inbox: Path, tests_dir: str) -> set[str]:
    """jids of pytestrun documents in ``inbox`` that ran ``tests_dir``."""
    found = set()
    for path in inbox.glob("*.json") if inbox.exists() else ():
        doc = json.loads(path.read_text("utf-8"))
        if doc["fun"] == "pytestrun.run" and tests_dir in json.dumps(doc["fun_args"]):
            found.add(doc["jid"])
    return found


@pytest.fixture(scope="module")
def salt_api(salt_master):
    """Jobs on the minions through Salt's Python API: these tests check what the states do, not what
    the ``salt`` CLI prints (test_show_sls_never_prints_the_private_key keeps the CLI for that)."""
    api = SaltApiCli(salt_master, timeout=180)
    yield api
    api.close()


# -- the minion side, from real pillar -------------------------------------------------------------


@pytest.fixture(scope="module")
def secret_lines(storage_host) -> list[str]:
    """The private key's body lines: any one of them showing up anywhere is a leak."""
    text = storage_host.client_key.read_text()
    lines = [line for line in text.splitlines() if line and not line.startswith("-----")]
    assert len(lines) >= 3
    return lines


def assert_no_secret(text: str | bytes, secret_lines: list[str], where: str) -> None:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    leaked = [line for line in secret_lines if line in text]
    assert not leaked, f"the private key's text is in {where}"


@pytest.fixture(scope="module")
def formula_pillar(tmp_path_factory, storage_host) -> dict:
    """pillar.example with the harness's storage host, its real key, and tmp paths."""
    root = tmp_path_factory.mktemp("formula")
    tag = uuid.uuid4().hex[:8]
    pillar = yaml.safe_load((REPO_ROOT / "pillar.example").read_text())
    distmon = pillar["distmon"]
    host_key = storage_host.host_key.with_suffix(".pub").read_text().split()
    distmon.update({
        **storage_host.returner_config(),
        "key": str(root / "etc" / "id_ed25519"),
        "known_hosts": str(root / "etc" / "known_hosts"),
        "private_key": storage_host.client_key.read_text(),
        "host_keys": f"[127.0.0.1]:{storage_host.port} {host_key[0]} {host_key[1]}\n",
        "spool_dir": str(root / "spool"),
        "config_file": str(root / "minion.d" / "distmon.conf"),
        "tests_dir": str(root / "tests"),
        "roles": [],
    })
    distmon["cron"].update({"check_script": str(root / "bin" / "distmon-cron")})
    distmon["cron"]["run"]["identifier"] = f"distmon-pytestrun-test-{tag}"
    distmon["cron"]["flush"]["identifier"] = f"distmon-flush-test-{tag}"
    return pillar


@pytest.fixture(scope="module")
def served_pillar(salt_master, salt_api, salt_minion, formula_pillar):
    """formula_pillar in the master's pillar_roots, for web-1 only, while this module runs."""
    top = f"base:\n  {salt_minion.id}:\n    - distmon_formula_test\n"
    tree = salt_master.pillar_tree.base
    with tree.temp_file("top.sls", top), tree.temp_file("distmon_formula_test.sls", json.dumps(formula_pillar)):
        assert salt_api.run("saltutil.refresh_pillar", "wait=True", minion_tgt=salt_minion.id).returncode == 0
        yield formula_pillar
    salt_api.run("saltutil.refresh_pillar", "wait=True", minion_tgt=salt_minion.id)


@pytest.fixture(scope="module")
def applied(salt_api, salt_minion, served_pillar):
    """`state.apply distmon` twice for real and once in test mode; distmon.clean afterwards."""
    crontab_before = crontab(salt_api, salt_minion)
    schedule_before = schedule(salt_api, salt_minion)
    assert RUN_JOB not in schedule_before, "web-1 is expected to have no distmon schedule yet"
    try:
        first = apply(salt_api, salt_minion, "distmon")
        yield {
            "first": first,
            "again": apply(salt_api, salt_minion, "distmon"),
            "dry": apply(salt_api, salt_minion, "distmon", test=True),
            "schedule": schedule(salt_api, salt_minion),
        }
    finally:
        clean = apply(salt_api, salt_minion, "distmon.clean")
        assert not failed_states(clean), failed_states(clean)
        distmon = served_pillar["distmon"]
        for path in (distmon["key"], distmon["known_hosts"], distmon["config_file"], distmon["tests_dir"],
                     distmon["cron"]["check_script"]):
            assert not Path(path).exists(), path
        assert schedule(salt_api, salt_minion) == schedule_before
        assert crontab(salt_api, salt_minion) == crontab_before, "root's crontab must be left as found"


def test_show_sls_never_prints_the_private_key(salt_cli, salt_minion, served_pillar, secret_lines):
    for sls in ("distmon", "distmon.minion"):
        ret = salt_cli.run("state.show_sls", sls, minion_tgt=salt_minion.id)
        assert ret.returncode == 0, ret
        assert_no_secret(ret.stdout, secret_lines, f"state.show_sls {sls}")
    # The key file names its pillar path; the returner's config gets the returner's keys only.
    key_state = dict(kv for item in ret.data["distmon-private-key"]["file"] if isinstance(item, dict)
                     for kv in item.items())
    assert key_state["contents_pillar"] == "distmon:private_key"
    assert key_state["show_changes"] is False
    (context,) = [item["context"] for item in ret.data["distmon-returner-config"]["file"]
                  if isinstance(item, dict) and "context" in item]
    assert "private_key" not in json.dumps(context)
    assert context["options"]["host"] == "127.0.0.1"


def test_apply_deploys_key_config_tests_and_shows_no_secret(applied, served_pillar, secret_lines):
    first = applied["first"]
    assert not failed_states(first), failed_states(first)
    for name in ("first", "again", "dry"):
        assert_no_secret(json.dumps(applied[name]), secret_lines, f"the {name} state.apply return")
    distmon = served_pillar["distmon"]
    # Already installed in the harness's Python (not onedir: bin_env is that Python): no change.
    assert state_id(first, "distmon-pip-salt-python")["changes"] == {}

    key = Path(distmon["key"])
    assert key.read_text() == distmon["private_key"]
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(key.parent.stat().st_mode) == 0o700
    assert state_id(first, "distmon-private-key")["changes"] == {"diff": "New file"}
    assert Path(distmon["known_hosts"]).read_text() == distmon["host_keys"]

    config = Path(distmon["config_file"]).read_text()
    assert_no_secret(config, secret_lines, "the returner's config file")
    assert "private_key" not in config
    assert 'distmon.host: "127.0.0.1"' in config
    assert f"distmon.port: {distmon['port']}" in config
    assert f'distmon.key: "{distmon["key"]}"' in config
    assert (Path(distmon["tests_dir"]) / "test_passing.py").is_file()


def test_second_apply_and_test_mode_change_nothing(applied):
    assert not failed_states(applied["again"]), failed_states(applied["again"])
    assert changed_states(applied["again"]) == {}
    dry = applied["dry"]
    assert changed_states(dry) == {}
    assert all(value["result"] is True for value in dry.values()), failed_states(dry)


def test_schedule_list_shows_the_runs(applied, served_pillar, salt_api, salt_minion):
    tests_dir = served_pillar["distmon"]["tests_dir"]
    for jobs in (applied["schedule"], schedule(salt_api, salt_minion)):
        run, flush = jobs[RUN_JOB], jobs[FLUSH_JOB]
        assert (run["function"], run["args"], run["returner"]) == ("pytestrun.run", [tests_dir], "distmon")
        assert (run["hours"], run["splay"], run["maxrunning"], run["enabled"]) == (1, 600, 1, True)
        assert run["run_on_start"] is False  # no fleet-wide run the moment the state adds it
        assert (flush["function"], flush["minutes"], flush["maxrunning"]) == ("distmon.flush", 15, 1)
        assert flush["return_job"] is False and "returner" not in flush
    # Salt's scheduler by default: no cron line.
    identifiers = {entry["identifier"] for entry in crontab(salt_api, salt_minion)}
    assert served_pillar["distmon"]["cron"]["run"]["identifier"] not in identifiers


def test_a_scheduled_run_started_with_run_job_reaches_the_storage_host(applied, served_pillar, salt_api,
                                                                      salt_minion, storage_host):
    tests_dir = served_pillar["distmon"]["tests_dir"]
    inbox = storage_host.inbox / salt_minion.id
    before = inbox_runs(inbox, tests_dir)
    ret = salt_api.run("schedule.run_job", RUN_JOB, minion_tgt=salt_minion.id)
    assert ret.returncode == 0, ret
    assert wait_for(lambda: inbox_runs(inbox, tests_dir) - before, timeout=180), "no scheduled result arrived"


def test_the_key_stays_out_of_the_job_cache_and_the_logs(applied, salt_master, salt_minion, secret_lines):
    jobs = Path(salt_master.config["cachedir"]) / "jobs"
    files = [path for path in jobs.rglob("*") if path.is_file()]
    assert files, "the master's job cache is expected to hold the state runs"
    read = 0
    for path in files:
        try:
            data = path.read_bytes()
        except FileNotFoundError:  # the master replaced or cleaned it after the listing (seen once)
            continue
        read += 1
        assert_no_secret(data, secret_lines, f"the job cache ({path})")
    assert read, "every job cache file vanished before it could be read"
    for daemon in (salt_master, salt_minion):
        log_file = Path(daemon.config["log_file"])
        assert_no_secret(log_file.read_bytes(), secret_lines, f"{daemon.id}'s log")


def test_test_mode_on_a_fresh_minion_plans_everything_and_creates_nothing(salt_api, salt_minion, served_pillar,
                                                                           secret_lines, tmp_path):
    fresh = {"distmon": {
        "tests_dir": str(tmp_path / "tests"),
        "config_file": str(tmp_path / "minion.d" / "distmon.conf"),
        "key": str(tmp_path / "etc" / "id_ed25519"),
        "known_hosts": str(tmp_path / "etc" / "known_hosts"),
        "schedule": {"name": f"distmon-pytestrun-dry-{uuid.uuid4().hex[:6]}"},
    }}
    jobs_before = schedule(salt_api, salt_minion)
    dry = apply(salt_api, salt_minion, "distmon", fresh, test=True)
    assert not failed_states(dry), failed_states(dry)
    assert_no_secret(json.dumps(dry), secret_lines, "the test=True state.apply return")
    for name in ("distmon-private-key", "distmon-returner-config", "distmon-tests-dir"):
        assert state_id(dry, name)["result"] is None, (name, state_id(dry, name))
    # schedule.present says True in test mode, with the change it would make.
    job = fresh["distmon"]["schedule"]["name"]
    assert state_id(dry, "distmon-schedule-run")["changes"] == {job: "added"}
    assert list(tmp_path.iterdir()) == []
    assert schedule(salt_api, salt_minion) == jobs_before


def test_cron_mode_replaces_the_schedule_and_its_line_is_silent_unless_salt_call_fails(
        applied, served_pillar, salt_api, salt_minion, storage_host):
    distmon = served_pillar["distmon"]
    try:
        cron_mode = apply(salt_api, salt_minion, "distmon.minion", {"distmon": {"scheduler": "cron"}})
        assert not failed_states(cron_mode), failed_states(cron_mode)
        jobs = schedule(salt_api, salt_minion)
        assert RUN_JOB not in jobs and FLUSH_JOB not in jobs
        crons = {entry["identifier"]: entry for entry in crontab(salt_api, salt_minion)}
        run = crons[distmon["cron"]["run"]["identifier"]]
        assert (run["minute"], run["hour"]) == ("0", "*")
        assert crons[distmon["cron"]["flush"]["identifier"]]["minute"] == "*/15"

        # The crontab line itself, as cron's /bin/sh runs it (cron turns "\%" into "%").
        line = run["cmd"].replace("\\%", "%")
        assert " pytestrun.run " in line and "--return distmon" in line
        inbox = storage_host.inbox / salt_minion.id
        before = inbox_runs(inbox, distmon["tests_dir"])
        quiet = subprocess.run(["/bin/sh", "-c", line], capture_output=True, text=True, timeout=300)
        assert (quiet.returncode, quiet.stdout, quiet.stderr) == (0, "", ""), quiet
        assert inbox_runs(inbox, distmon["tests_dir"]) - before, "the cron run's result did not arrive"

        # Something wrong (here: a test interpreter that does not exist): cron gets words to mail.
        loud = subprocess.run(["/bin/sh", "-c", f"{line} python=/nonexistent/python3"], capture_output=True,
                              text=True, timeout=300)
        assert loud.returncode != 0
        assert re.search(r"distmon-cron: .* failed \(exit \d+\)", loud.stdout), loud
        assert "/nonexistent/python3 does not exist" in loud.stdout
        python = salt_api.run("grains.get", "pythonexecutable", minion_tgt=salt_minion.id).data
        assert shlex.split(line)[0] == python, "the check script runs with Salt's own Python"
    finally:
        back = apply(salt_api, salt_minion, "distmon.minion")
    assert not failed_states(back), failed_states(back)
    assert RUN_JOB in schedule(salt_api, salt_minion)
    identifiers = {entry["identifier"] for entry in crontab(salt_api, salt_minion)}
    assert distmon["cron"]["run"]["identifier"] not in identifiers


def test_an_unknown_scheduler_fails_with_a_message(salt_api, salt_minion):
    ret = salt_api.run("state.sls_id", "distmon-scheduler-invalid", "distmon.minion",
                       'pillar={"distmon": {"scheduler": "crontab"}}', "test=True", minion_tgt=salt_minion.id)
    (result,) = ret.data.values()
    assert result["result"] is False
    assert result["name"] == "distmon:scheduler must be salt, cron or none, not crontab"


def test_init_applies_the_state_of_each_role(salt_api, salt_minion):
    def included(pillar: dict) -> set[str]:
        ret = salt_api.run("state.show_sls", "distmon", f"pillar={json.dumps(pillar)}", minion_tgt=salt_minion.id)
        assert isinstance(ret.data, dict), ret
        return {value["__sls__"] for value in ret.data.values()}

    # No role at all: a test minion. Both roles: test_os_family_maps_choose_names_and_paths.
    assert included({}) == {"distmon.minion"}
    assert included({"distmon": {"roles": ["distmon-host"]}}) == {"distmon.host"}


FAMILIES = {  # os_family: sshd service, nologin shell, host packages, cron package
    "Debian": ("ssh", "/usr/sbin/nologin", ["openssh-server", "python3-venv"], "cron"),
    "RedHat": ("sshd", "/sbin/nologin", ["openssh-server", "python3"], "cronie"),
    "Suse": ("sshd", "/sbin/nologin", ["openssh-server", "python3"], "cronie"),
}


def test_os_family_maps_choose_names_and_paths(salt_api, salt_minion):
    real = salt_api.run("grains.item", "os_family", "init", minion_tgt=salt_minion.id).data
    both_roles = json.dumps({"distmon": {"roles": ["distmon-host", "distmon-minion"], "scheduler": "cron"}})
    rendered = {}
    try:
        for family in FAMILIES:
            # A systemd host of that family, as far as rendering goes (show_sls runs nothing).
            grains = json.dumps({"os_family": family, "init": "systemd"})
            assert salt_api.run("grains.setvals", grains, minion_tgt=salt_minion.id).returncode == 0
            ret = salt_api.run("state.show_sls", "distmon", f"pillar={both_roles}", minion_tgt=salt_minion.id)
            assert isinstance(ret.data, dict), ret
            rendered[family] = ret.data
    finally:
        for grain in ("os_family", "init"):
            salt_api.run("grains.delkey", grain, "force=True", minion_tgt=salt_minion.id)
        salt_api.run("saltutil.refresh_grains", minion_tgt=salt_minion.id)
    assert salt_api.run("grains.item", "os_family", "init", minion_tgt=salt_minion.id).data == real

    def args(state: dict) -> dict:
        (items,) = [value for key, value in state.items() if not key.startswith("__")]
        return dict(kv for item in items if isinstance(item, dict) for kv in item.items())

    for family, (service, shell, packages, cron_package) in FAMILIES.items():
        states = rendered[family]
        assert args(states["distmon-sshd-reload"])["name"] == service, family
        assert args(states["distmon-sftp-user"])["shell"] == shell, family
        assert args(states["distmon-host-packages"])["pkgs"] == packages, family
        assert args(states["distmon-cron-package"])["name"] == cron_package, family


# -- the storage host ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keypair(tmp_path_factory):
    keys = tmp_path_factory.mktemp("state-keys")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "distmon-test", "-f",
                    str(keys / "id")], check=True)
    return (keys / "id").read_text(), (keys / "id.pub").read_text().strip()


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


def test_host_state_in_test_mode_plans_everything_and_changes_nothing(salt_api, salt_minion, dashboard_served,
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
        "dashboard": {"app_dir": str(tmp_path / "app"), "venv": str(tmp_path / "venv"),
                      "admin_command": str(tmp_path / "bin" / "distmon-admin")},
    }}}
    dry = apply(salt_api, salt_minion, "distmon.host", pillar, test=True)
    assert not failed_states(dry), failed_states(dry)
    for name in ("distmon-chroot", "distmon-inbox", "distmon-sshd-match", "distmon-authorized-keys",
                 "distmon-dashboard-code", "distmon-dashboard-venv", "distmon-db-dir", "distmon-admin-command"):
        assert state_id(dry, name)["result"] is None, (name, state_id(dry, name))
    assert state_id(dry, "distmon-admin-command")["name"] == str(tmp_path / "bin" / "distmon-admin")
    assert list(tmp_path.iterdir()) == []
    # No systemd here (grains init != systemd): no unit, no service in the plan.
    assert not any("distmon-dashboard-service" in key for key in dry)


def test_host_state_renders_into_a_scratch_root_that_sshd_accepts(salt_api, salt_minion, keypair,
                                                                   harness_root):
    _, public_key = keypair
    # sshd's ChrootDirectory rules need root-owned parents: the harness root has them, /tmp does not.
    scratch = harness_root / f"host-state-{uuid.uuid4().hex[:6]}"
    scratch.mkdir(mode=0o755)
    pillar = {"distmon": {"storage": {
        "root": str(scratch), "manage_user": False, "authorized_keys": [public_key],
        "dashboard": {"enabled": False},
    }}}
    first = apply(salt_api, salt_minion, "distmon.host", pillar)
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
    # The settings file names the store for the unit and for `python -m dashboard` run on the host.
    settings = dict(line.split("=", 1) for line in (scratch / "etc/distmon/dashboard.env").read_text().splitlines()
                    if line and not line.startswith("#"))
    assert settings["DISTMON_DB"] == f"{scratch}/var/lib/distmon/distmon.sqlite"
    assert settings["DISTMON_INBOX"] == f"{chroot}/inbox"
    assert settings["DISTMON_ALLOWED_HOSTS"] == "localhost,127.0.0.1,[::1]"
    dropin = scratch / "etc/ssh/sshd_config.d/distmon.conf"
    text = dropin.read_text()
    assert "Match User distmon" in text
    assert f"ChrootDirectory {chroot}" in text
    assert "ForceCommand internal-sftp" in text

    again = apply(salt_api, salt_minion, "distmon.host", pillar)
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

    # distmon.host.clean takes the drop-in and keys away; the results' data only when asked.
    kept = apply(salt_api, salt_minion, "distmon.host.clean", pillar)
    assert not failed_states(kept), failed_states(kept)
    assert not dropin.exists() and not (scratch / "etc/ssh/distmon_authorized_keys").exists()
    assert not (scratch / "etc/distmon/dashboard.env").exists()
    assert (scratch / "var/lib/distmon/archive").is_dir() and (chroot / "inbox").is_dir()
    pillar["distmon"]["clean"] = {"data": True}
    gone = apply(salt_api, salt_minion, "distmon.host.clean", pillar)
    assert not failed_states(gone), failed_states(gone)
    assert not (scratch / "var/lib/distmon/archive").exists() and not chroot.exists()


def test_host_state_installs_distmon_admin_which_runs_the_cli_as_the_service_account(
        salt_api, salt_minion, dashboard_served, storage_host, harness_root):
    # The store's directory, the settings file and the command, applied for real into a scratch
    # root; the virtualenv is a stand-in (the state's pip install is not what is tested here).
    scratch = harness_root / f"admin-state-{uuid.uuid4().hex[:6]}"
    scratch.mkdir(mode=0o755)
    account = storage_host.user
    pillar = {"distmon": {"storage": {"root": str(scratch), "sftp_user": account}}}
    for state in ("distmon-db-dir", "distmon-dashboard-env", "distmon-admin-command"):
        ret = salt_api.run("state.sls_id", state, "distmon.host", f"pillar={json.dumps(pillar)}",
                           minion_tgt=salt_minion.id, _timeout=120)
        assert isinstance(ret.data, dict) and not failed_states(ret.data), ret

    command = scratch / "usr/local/bin/distmon-admin"
    info = command.stat()
    assert (stat.S_IMODE(info.st_mode), info.st_uid) == (0o755, 0)
    text = command.read_text()
    for line in (f"user={account}", f"venv={scratch}/opt/distmon/venv", f"app_dir={scratch}/opt/distmon",
                 f"env_file={scratch}/etc/distmon/dashboard.env"):
        assert line in text.splitlines(), line

    (scratch / "opt/distmon").mkdir(parents=True, mode=0o755)
    (scratch / "opt/distmon/dashboard").symlink_to(REPO_ROOT / "dashboard", target_is_directory=True)
    dashboard_venv_for(account, scratch / "opt/distmon/venv")
    # As root, as an admin types it: the store is made by the service's account, not root.
    listing = subprocess.run([str(command), "user", "list"], capture_output=True, text=True, timeout=120,
                             env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
    assert listing.returncode == 0, listing.stderr
    assert listing.stdout.split() == ["USERNAME", "STATUS", "ADMIN", "CREATED"]
    made = {path.name: path.owner() for path in (scratch / "var/lib/distmon").iterdir()}
    assert "distmon.sqlite" in made and set(made.values()) == {account}, made
    nobody = pwd.getpwnam("nobody")
    refused = subprocess.run([str(command), "user", "list"], capture_output=True, text=True, timeout=120,
                             user=nobody.pw_uid, group=nobody.pw_gid, extra_groups=[])
    assert refused.returncode != 0 and "run it as root or as" in refused.stderr, refused

    cleaned = apply(salt_api, salt_minion, "distmon.host.clean", pillar)
    assert not failed_states(cleaned), failed_states(cleaned)
    assert not command.exists()


def test_top_file_gives_each_role_its_state(salt_api, salt_minion):
    had_roles = salt_api.run("grains.get", "roles", minion_tgt=salt_minion.id).data
    assert not had_roles, "the harness minion is expected to have no roles grain"
    ret = salt_api.run("grains.append", "roles", "distmon-minion", minion_tgt=salt_minion.id)
    assert ret.returncode == 0, ret
    try:
        top = salt_api.run("state.show_top", minion_tgt=salt_minion.id)
        assert top.data == {"base": ["distmon.minion"]}, top
    finally:
        salt_api.run("grains.delkey", "roles", "force=True", minion_tgt=salt_minion.id)


def _keys(tree: dict, prefix: str = "") -> set[str]:
    keys = set()
    for key, value in tree.items():
        keys.add(prefix + key)
        if isinstance(value, dict):
            keys |= _keys(value, f"{prefix}{key}:")
    return keys


def test_pillar_example_documents_every_state_key():
    formula = REPO_ROOT / "states" / "distmon"
    defaults = yaml.safe_load((formula / "defaults.yaml").read_text())["distmon"]
    text = (REPO_ROOT / "pillar.example").read_text()
    example = yaml.safe_load(text)["distmon"]
    # Keys set per os_family are commented out in the example (a copy must not pin Debian's).
    per_family = _keys(yaml.safe_load((formula / "osfamilymap.yaml").read_text())["Debian"])
    undocumented = {key for key in _keys(defaults) - _keys(example)
                    if key not in per_family or f"# {key.rsplit(':', 1)[-1]}:" not in text}
    assert not undocumented, undocumented
