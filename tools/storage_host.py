"""A storage host: a real OpenSSH sshd on loopback, SFTP only, into an inbox.

Used by ``make up`` (tools/stack.py) and by the test harness (tests/conftest.py),
so the suite exercises exactly the host a user runs.

Layout under ``root``::

    root/
      ssh_host_ed25519_key(.pub)   the host's own key
      client_ed25519(.pub)         the key the minions log in with
      authorized_keys              the client key, restricted
      known_hosts                  the pinned host key, as the minions see it
      sshd_config, sshd.pid, sshd.log
      chroot/                      root-owned, the SFTP account's "/"
        inbox/                     owned by the SFTP account: <inbox>/<minion_id>/<jid>.json

sshd's ChrootDirectory demands every path component be root-owned and not
group/world writable. When ``root`` cannot satisfy that (a checkout under /tmp, say),
the chroot moves to ``/var/lib/distmon/chroot/<root, escaped>`` instead: the account
is always chrooted when we run as root. Only without root is it not chrooted
(ForceCommand internal-sftp still applies; ``remote_inbox`` is then the absolute path).
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from tools.pidfiles import live_pid

SFTP_USER = "distmon"
# Where chroots go when the host's own root cannot satisfy sshd's ownership rules.
EXTERNAL_CHROOTS = Path("/var/lib/distmon/chroot")
SSHD_CANDIDATES = ("/usr/sbin/sshd", "/usr/local/sbin/sshd")


class StorageHostError(RuntimeError):
    """The storage host could not be prepared or started; the message says why."""


def find_sshd() -> str:
    for candidate in SSHD_CANDIDATES:
        if os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which("sshd")
    if found:
        return found
    raise StorageHostError(
        "OpenSSH server not found: install it with `apt-get install -y openssh-server` "
        "(make test and .ci/run do this when running as root)"
    )


def path_is_chroot_safe(path: Path) -> bool:
    """sshd's ChrootDirectory rule: every component root-owned, not writable by group/others."""
    path = path.resolve()
    for component in [path, *path.parents]:
        try:
            st = component.stat()
        except FileNotFoundError:
            continue
        if st.st_uid != 0 or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            return False
    return True


def external_chroot_for(root: Path) -> Path:
    """A chroot path under /var/lib that sshd accepts, named after ``root`` (one per host)."""
    return EXTERNAL_CHROOTS / str(Path(root).resolve()).strip("/").replace("/", "_")


def remove_external_chroots(under: Path) -> None:
    """Delete the external chroots of every host whose root lies under ``under``."""
    prefix = str(Path(under).resolve()).strip("/").replace("/", "_")
    if not EXTERNAL_CHROOTS.is_dir():
        return
    for entry in EXTERNAL_CHROOTS.iterdir():
        if entry.name == prefix or entry.name.startswith(prefix + "_"):
            shutil.rmtree(entry, ignore_errors=True)


def ensure_sftp_user(name: str = SFTP_USER) -> str:
    """Create the unprivileged SFTP account when running as root; else use ourselves."""
    if os.geteuid() != 0:
        return pwd.getpwuid(os.geteuid()).pw_name
    try:
        pwd.getpwnam(name)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--home-dir", "/nonexistent",
             "--shell", "/usr/sbin/nologin", name],
            check=True, capture_output=True,
        )
    # A locked account ("!") is refused by sshd even for key login when PAM is off.
    subprocess.run(["usermod", "-p", "*", name], check=True, capture_output=True)
    return name


def port_is_open(port: int, host: str = "127.0.0.1", timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class StorageHost:
    root: Path
    port: int
    user: str = ""
    chroot: bool = True
    pid_file: Path | None = None  # default: <root>/sshd.pid

    def __post_init__(self) -> None:
        self.root = Path(self.root).resolve()
        own = self.root / "chroot"
        if os.geteuid() == 0 and not path_is_chroot_safe(own):
            own = external_chroot_for(self.root)
        self._chroot_dir = own

    # -- paths -------------------------------------------------------------
    @property
    def host_key(self) -> Path:
        return self.root / "ssh_host_ed25519_key"

    @property
    def client_key(self) -> Path:
        return self.root / "client_ed25519"

    @property
    def known_hosts(self) -> Path:
        return self.root / "known_hosts"

    @property
    def authorized_keys(self) -> Path:
        return self.root / "authorized_keys"

    @property
    def config_path(self) -> Path:
        return self.root / "sshd_config"

    @property
    def pid_path(self) -> Path:
        return Path(self.pid_file) if self.pid_file else self.root / "sshd.pid"

    @property
    def log_path(self) -> Path:
        return self.root / "sshd.log"

    @property
    def chroot_dir(self) -> Path:
        return self._chroot_dir

    @property
    def inbox(self) -> Path:
        """The inbox as the ingester on this machine sees it."""
        return self.chroot_dir / "inbox"

    @property
    def remote_inbox(self) -> str:
        """The inbox as the SFTP account sees it."""
        return "/inbox" if self.chroot else str(self.inbox)

    # -- lifecycle ---------------------------------------------------------
    def prepare(self) -> None:
        """Create keys, account, inbox and sshd_config. Idempotent: keys are kept."""
        self.user = self.user or ensure_sftp_user()
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o755)
        for key in (self.host_key, self.client_key):
            if not key.exists():
                subprocess.run(
                    ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", key.name, "-f", str(key)],
                    check=True, capture_output=True,
                )
        os.chmod(self.client_key, 0o600)
        client_pub = self.client_key.with_suffix(".pub").read_text().strip()
        self.authorized_keys.write_text(
            f"restrict {client_pub}\n"
        )
        host_pub = self.host_key.with_suffix(".pub").read_text().split()
        self.known_hosts.write_text(f"[127.0.0.1]:{self.port} {host_pub[0]} {host_pub[1]}\n")
        if self.chroot_dir.parent == EXTERNAL_CHROOTS:
            for directory in (EXTERNAL_CHROOTS.parent, EXTERNAL_CHROOTS):
                directory.mkdir(mode=0o755, exist_ok=True)
                os.chmod(directory, 0o755)
        self.chroot_dir.mkdir(exist_ok=True)
        os.chmod(self.chroot_dir, 0o755)
        self.inbox.mkdir(exist_ok=True)
        account = pwd.getpwnam(self.user)
        if os.geteuid() == 0:
            os.chown(self.inbox, account.pw_uid, account.pw_gid)
        os.chmod(self.inbox, 0o755)
        self.chroot = self.chroot and os.geteuid() == 0 and path_is_chroot_safe(self.chroot_dir)
        self.config_path.write_text(self._sshd_config())

    def _sshd_config(self) -> str:
        chroot_line = f"ChrootDirectory {self.chroot_dir}" if self.chroot else ""
        return f"""\
# Generated by distmon tools/storage_host.py: the SFTP-only storage host.
Port {self.port}
ListenAddress 127.0.0.1
HostKey {self.host_key}
PidFile {self.pid_path}
AuthorizedKeysFile {self.authorized_keys}
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin no
UsePAM no
StrictModes no
AllowUsers {self.user}
AllowTcpForwarding no
AllowAgentForwarding no
X11Forwarding no
PermitTTY no
MaxStartups 200:30:400
MaxSessions 50
LogLevel VERBOSE
Subsystem sftp internal-sftp -u 0022
ForceCommand internal-sftp -u 0022
{chroot_line}
"""

    def pid(self) -> int | None:
        return live_pid(self.pid_path)

    def is_running(self) -> bool:
        return self.pid() is not None and port_is_open(self.port)

    def start(self, timeout: float = 10.0) -> None:
        if self.is_running():
            return
        sshd = find_sshd()
        Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # privilege separation dir
        check = subprocess.run([sshd, "-t", "-f", str(self.config_path)], capture_output=True, text=True)
        if check.returncode != 0:
            raise StorageHostError(f"sshd rejected {self.config_path}: {check.stderr.strip()}")
        subprocess.run(
            [sshd, "-f", str(self.config_path), "-E", str(self.log_path)], check=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.is_running():
                return
            time.sleep(0.05)
        raise StorageHostError(f"sshd did not listen on 127.0.0.1:{self.port}; see {self.log_path}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        """Stop the listening sshd. Established sessions (children) die with SIGKILL only."""
        pid = self.pid()
        if pid is None:
            return
        os.kill(pid, sig)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        self.pid_path.unlink(missing_ok=True)

    def kill_sessions(self) -> int:
        """SIGKILL every sshd session child of ours (mid-transfer faults). Returns how many."""
        killed = 0
        master = self.pid()
        try:
            out = subprocess.run(["ps", "-eo", "pid=,ppid="], capture_output=True, text=True).stdout
        except FileNotFoundError:
            return 0
        children: dict[int, list[int]] = {}
        for line in out.splitlines():
            pid, ppid = (int(x) for x in line.split())
            children.setdefault(ppid, []).append(pid)
        stack = list(children.get(master, [])) if master else []
        while stack:
            pid = stack.pop()
            stack.extend(children.get(pid, []))
            try:
                os.kill(pid, signal.SIGKILL)
                killed += 1
            except ProcessLookupError:
                pass
        return killed

    def returner_config(self) -> dict:
        """The distmon returner options that point a minion at this host."""
        return {
            "host": "127.0.0.1",
            "port": self.port,
            "user": self.user,
            "key": str(self.client_key),
            "known_hosts": str(self.known_hosts),
            "remote_inbox": self.remote_inbox,
        }
