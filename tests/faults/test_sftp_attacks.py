"""Attacks through the storage host's real sshd: the SFTP account and what a minion may post.

- The account has no shell: the real ``ssh`` client (BatchMode, the client key, a pinned
  known_hosts) authenticates, yet ``id`` never runs.
- It cannot leave its chroot: ``sftp ls /..``, ``put ../x``, absolute and relative symlinks all
  stay inside ``<host>/chroot``.
- Authenticity: a minion that shares the SFTP account cannot post results under another
  minion's name: a result signed with fault-1's key in ``fault-2/`` and an unsigned one are
  quarantined by the running dashboard, and nothing is stored for fault-2.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import uuid

import paramiko
import pytest

from dashboard.signing import sign_document
from tests.conftest import make_storage_host
from tests.faults.helpers import minion_private_key, result_document, signed_document, unique_jids, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.faults]


@pytest.fixture(scope="module")
def attack_host(faults_root):
    """A storage host of its own: attacks leave traces that no ingester should race with."""
    host = make_storage_host(faults_root / f"attackhost-{uuid.uuid4().hex[:6]}")
    yield host
    host.stop()
    host.kill_sessions()


def ssh_options(host) -> list[str]:
    return [
        "-i", str(host.client_key), "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
        "-o", f"UserKnownHostsFile={host.known_hosts}", "-o", "GlobalKnownHostsFile=/dev/null",
        "-o", "StrictHostKeyChecking=yes", "-o", "ConnectTimeout=15", "-F", "/dev/null",
    ]  # fmt: skip


@contextlib.contextmanager
def sftp_session(host):
    client = paramiko.SSHClient()
    client.load_host_keys(str(host.known_hosts))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.connect("127.0.0.1", port=host.port, username=host.user, key_filename=str(host.client_key),
                   allow_agent=False, look_for_keys=False, timeout=15)
    try:
        yield client.open_sftp()
    finally:
        client.close()


def outside_chroot_entries(host) -> set[str]:
    """What exists beside the chroot directory on the storage host (where an escape would write)."""
    return {p.name for p in host.root.iterdir()}


def test_sftp_account_has_no_shell(attack_host, fault_table):
    if shutil.which("ssh") is None:
        pytest.skip("the OpenSSH client (ssh) is not installed")
    host = attack_host
    base = ["ssh", *ssh_options(host), "-p", str(host.port), f"{host.user}@127.0.0.1"]
    attempts = {
        "id": base + ["id"],
        "sh -c": base + ["/bin/sh", "-c", "id; touch /tmp/distmon-pwned"],
        "tty": ["ssh", "-tt", *base[1:], "id"],
    }
    outputs = {}
    for name, argv in attempts.items():
        done = subprocess.run(["ssh", "-v", *argv[1:]], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=60)
        outputs[name] = done
    ran = [name for name, done in outputs.items() if "uid=" in done.stdout or "uid=" in done.stderr]
    authenticated = [name for name, done in outputs.items() if "Authenticated to" in done.stderr]
    fault_table.record("attack: `ssh host id` as the SFTP account", "0 commands run", f"{len(ran)} ran", "-",
                       f"{len(authenticated)}/{len(attempts)} logged in with the key, every command refused")
    # The key is accepted: the refusal is the account's (ForceCommand internal-sftp), not a failed login.
    assert authenticated == list(attempts), {n: d.stderr[-500:] for n, d in outputs.items()}
    assert ran == [], {n: outputs[n].stdout for n in ran}
    assert not os.path.exists("/tmp/distmon-pwned")


def test_sftp_account_cannot_leave_its_directory(attack_host, fault_table):
    host = attack_host
    before = outside_chroot_entries(host)
    chroot_before = {p.name for p in host.chroot_dir.iterdir()}
    escapes: list[str] = []

    # The real sftp client: /.. is / and / is the chroot (only the inbox).
    if shutil.which("sftp"):
        batch = "ls -a /..\nls -a /\n-get /etc/passwd /dev/null\n-ls /etc\n"
        done = subprocess.run(["sftp", *ssh_options(host), "-b", "-", "-P", str(host.port), f"{host.user}@127.0.0.1"],
                              input=batch, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        # sftp prints the names as paths (/../inbox): what counts is the last component.
        listed = {word.rstrip("/").rsplit("/", 1)[-1] or "/" for line in done.stdout.splitlines()
                  if not line.startswith("sftp>") for word in line.split()}
        assert "inbox" in listed, done.stdout  # the listing ran
        if listed - {".", "..", "inbox"}:
            escapes.append(f"sftp ls showed {sorted(listed)}")
        if "root:" in done.stdout:
            escapes.append("read /etc/passwd")

    with sftp_session(host) as sftp:
        if set(sftp.listdir("/..")) != {"inbox"} or set(sftp.listdir("/../../..")) != {"inbox"}:
            escapes.append(f"listdir /.. = {sftp.listdir('/..')}")
        sftp.chdir("/inbox")
        probe = host.root / "probe.txt"
        probe.write_text("a local file to upload\n")
        for target in ("../x", "../../x", "/../../../x", "../../../../../tmp/distmon-escape"):
            try:
                sftp.put(str(probe), target)
                escapes.append(f"put {target} succeeded")
            except OSError:
                pass  # permission denied: the chroot's / is root's
        # Symlinks are made inside the chroot and resolve inside it.
        attack_dir = "/inbox/attack"
        sftp.mkdir(attack_dir)
        sftp.symlink("/etc/passwd", f"{attack_dir}/passwd.json")
        sftp.symlink("/", f"{attack_dir}/root")
        sftp.symlink("../../../../../../etc", f"{attack_dir}/etc")
        try:
            with sftp.open(f"{attack_dir}/passwd.json") as handle:
                escapes.append(f"read through a link: {handle.read(40)!r}")
        except OSError:
            pass
        if set(sftp.listdir(f"{attack_dir}/root")) != {"inbox"}:
            escapes.append(f"link to / lists {sftp.listdir(f'{attack_dir}/root')}")
        try:
            escapes.append(f"link to ../etc lists {sftp.listdir(f'{attack_dir}/etc')[:5]}")
        except OSError:
            pass
        try:
            sftp.put(str(probe), f"{attack_dir}/etc/distmon-escape")
            escapes.append("wrote through a link to ../etc")
        except OSError:
            pass
        probe.unlink()
    created = outside_chroot_entries(host) - before
    chroot_created = {p.name for p in host.chroot_dir.iterdir()} - chroot_before
    if created or chroot_created:
        escapes.append(f"created outside the inbox: {sorted(created | chroot_created)}")
    for path in ("/tmp/distmon-escape", "/etc/distmon-escape", "/x"):
        if os.path.exists(path):
            escapes.append(f"{path} exists")
    links = {name: os.readlink(host.inbox / "attack" / name) for name in ("passwd.json", "root", "etc")}
    fault_table.record("attack: leave the SFTP chroot (ls /.., put ../x, symlinks)", "0 escapes",
                       f"{len(escapes)} escapes", "-", "links stay literal: " + json.dumps(links))
    assert escapes == [], escapes


def test_minion_cannot_post_under_another_minions_name(fault_minions, fault_host, fault_dashboard, fault_table):
    web1, web2 = fault_minions  # fault-1 and fault-2 share the SFTP account and its key
    forged_jid, unsigned_jid, control_jid = unique_jids(3)
    # fault-2's name, fault-1's (valid, accepted) key: a correct signature by the wrong minion.
    forged = sign_document(result_document(web2.id, forged_jid), minion_private_key(web1))
    unsigned = result_document(web2.id, unsigned_jid)
    control = signed_document(web2, control_jid)  # fault-2's own key: must be stored (the check is not blanket)
    with sftp_session(fault_host) as sftp:
        directory = f"{fault_host.remote_inbox}/{web2.id}"
        with contextlib.suppress(OSError):
            sftp.mkdir(directory)
        for doc in (forged, unsigned, control):
            temporary = f"{directory}/.{doc['jid']}.json.{uuid.uuid4().hex[:12]}.part"
            with sftp.open(temporary, "w") as handle:
                handle.write(json.dumps(doc))
            sftp.posix_rename(temporary, f"{directory}/{doc['jid']}.json")

    def quarantined():
        found = fault_dashboard.quarantined(web2.id)
        return found if {f"{forged_jid}.json", f"{unsigned_jid}.json"} <= set(found) else None

    reasons = wait_for(quarantined, 30, 0.1) or fault_dashboard.quarantined(web2.id)
    ledger = fault_dashboard.wait_runs({(web2.id, control_jid)}, timeout=30)
    attacks = fault_dashboard.ledger({(web2.id, forged_jid), (web2.id, unsigned_jid)})
    fault_table.record("attack: post as fault-2 with fault-1's key / unsigned", "2 quarantined, 0 stored",
                       f"{sum(1 for j in (forged_jid, unsigned_jid) if f'{j}.json' in reasons)} quarantined, "
                       f"{attacks.seen} stored", attacks.rows,
                       f"control signed by fault-2 stored: {ledger.seen == 1}")
    assert f"{forged_jid}.json" in reasons and "does not verify" in reasons[f"{forged_jid}.json"], reasons
    assert f"{unsigned_jid}.json" in reasons and "unsigned" in reasons[f"{unsigned_jid}.json"], reasons
    assert attacks.seen == 0 and attacks.rows == 0, attacks
    assert ledger.seen == 1 and ledger.by_pair[(web2.id, control_jid)]["signed"] == 1
