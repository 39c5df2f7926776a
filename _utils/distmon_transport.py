"""
How distmon files travel: atomic local writes, the minion's spool, and SFTP to the storage host.

The one implementation behind ``distmon.store`` / ``distmon.flush`` /
``distmon.spool`` (execution module), the ``distmon`` returner (through those
module functions) and the runner's job manifest and ``distmon.status``. Synced
by ``saltutil.sync_all`` (``salt-run saltutil.sync_all`` on the master);
imported as ``saltext.distmon.utils`` when installed as ``saltext-distmon``.

Functions take checked options (``distmon_options``) and never read loader
dunders, so they behave the same wherever they are loaded.

:depends: paramiko (only for SFTP: without it files are still spooled, and
    every upload reports that paramiko is missing)

Local layout of a spool: ``<spool_dir>/<jid>.json`` (written atomically:
temporary file, fsync, rename, fsync of the directory), ``<jid>.json.err``
(attempts and last error, advisory), ``.flush.lock`` (``flock``: one flush at a
time).

Remote layout: ``<remote_dir>/.<name>.<random>.part`` while uploading, then
``posix_rename`` to ``<remote_dir>/<name>``; the ``.part`` file is removed when
the upload fails and the connection still allows it. The final name depends
only on what is sent (minion and jid, or the job's jid), so a retry after a
lost acknowledgement overwrites the same file instead of creating a second one.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import logging
import os
import posixpath
import re
import secrets
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import NamedTuple

try:
    import paramiko

    HAS_PARAMIKO = True
except ImportError:  # the spool works without it; uploads say why they cannot run
    HAS_PARAMIKO = False

log = logging.getLogger(__name__)

SPOOLED_NAME = re.compile(r"^(?P<jid>[0-9A-Za-z_][0-9A-Za-z_.-]*)\.json$")
LOCK_NAME = ".flush.lock"
ERROR_SUFFIX = ".err"
STALE_TEMP_SECONDS = 3600
LOCK_POLL_SECONDS = 0.05
SOCKET_GRACE_SECONDS = 1.0
ABORT_JOIN_SECONDS = 1.0
NO_PARAMIKO = "paramiko is not installed here (pip install paramiko): nothing can be uploaded"


# -- time and files ---------------------------------------------------------------


def utc_now() -> str:
    """Now in UTC, ISO 8601 with milliseconds and ``Z`` (the timestamps of the result format)."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(directory: str, name: str, data: bytes, durable: bool = True) -> str:
    """Write ``directory/name`` so readers see the old file or the whole new one, never a part."""
    fd, tmp_path = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        final = os.path.join(directory, name)
        os.replace(tmp_path, final)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_path)
        raise
    if durable:
        fsync_dir(directory)
    return final


# -- the spool on disk -----------------------------------------------------------------


class SpoolEntry(NamedTuple):
    jid: str
    path: str
    size: int
    mtime: float
    inode: int


def spool_write(spool_dir: str, jid: str, data: bytes) -> str:
    """Put one result (an already checked jid) into the spool, durably; returns its path."""
    os.makedirs(spool_dir, mode=0o700, exist_ok=True)
    return write_atomic(spool_dir, f"{jid}.json", data)


def spool_entry(path: str) -> SpoolEntry | None:
    """The spool entry of one result file, or None when it is gone."""
    match = SPOOLED_NAME.match(os.path.basename(path))
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return SpoolEntry(match["jid"] if match else os.path.basename(path), path, st.st_size, st.st_mtime, st.st_ino)


def spool_entries(spool_dir: str) -> list[SpoolEntry]:
    """What waits, oldest first; also tidies crash leftovers (old temp files, orphan sidecars)."""
    try:
        names = os.listdir(spool_dir)
    except FileNotFoundError:
        return []
    entries = []
    now = time.time()
    for name in names:
        path = os.path.join(spool_dir, name)
        match = SPOOLED_NAME.match(name)
        if match:
            try:
                st = os.stat(path)
            except FileNotFoundError:  # delivered or dropped by a concurrent flush
                continue
            entries.append(SpoolEntry(match["jid"], path, st.st_size, st.st_mtime, st.st_ino))
        elif name.endswith(".tmp") and name.startswith("."):
            with contextlib.suppress(OSError):
                if now - os.stat(path).st_mtime > STALE_TEMP_SECONDS:
                    os.unlink(path)
        elif name.endswith(".json" + ERROR_SUFFIX) and name[: -len(ERROR_SUFFIX)] not in names:
            with contextlib.suppress(OSError):
                os.unlink(path)
    entries.sort(key=lambda entry: (entry.mtime, entry.jid))
    return entries


def spool_error(entry_path: str) -> dict:
    """The sidecar of a waiting result: attempts, last_error, last_attempt_at (empty when none)."""
    try:
        with open(entry_path + ERROR_SUFFIX, encoding="utf-8") as handle:
            state = json.load(handle)
        return state if isinstance(state, dict) else {}
    except (OSError, ValueError):
        return {}


def spool_record_error(entry: SpoolEntry, reason: str, attempted: bool = True) -> None:
    """Keep the last error (and, for a real attempt, the attempt count) next to a waiting result."""
    if not os.path.exists(entry.path):
        return
    state = spool_error(entry.path)
    attempts = int(state.get("attempts", 0) or 0) + (1 if attempted else 0)
    state = {"attempts": attempts, "last_error": reason, "last_attempt_at": utc_now()}
    with contextlib.suppress(OSError):
        write_atomic(os.path.dirname(entry.path), os.path.basename(entry.path) + ERROR_SUFFIX,
                     json.dumps(state).encode("utf-8"), durable=False)


def spool_remove(entry: SpoolEntry) -> None:
    """Remove a delivered result, unless it was re-spooled (same jid, new file) meanwhile."""
    try:
        if os.stat(entry.path).st_ino == entry.inode:
            os.unlink(entry.path)
    except FileNotFoundError:
        pass
    with contextlib.suppress(FileNotFoundError):
        os.unlink(entry.path + ERROR_SUFFIX)
    with contextlib.suppress(OSError):
        fsync_dir(os.path.dirname(entry.path))


def spool_enforce_limits(spool_dir: str, max_files: int, max_bytes: int, keep: str) -> list[SpoolEntry]:
    """Drop the oldest results beyond the limits (never ``keep``, the one just written); returns them."""
    if not max_files and not max_bytes:
        return []
    entries = spool_entries(spool_dir)
    count, total = len(entries), sum(entry.size for entry in entries)
    dropped = []
    for entry in entries:
        if not ((max_files and count > max_files) or (max_bytes and total > max_bytes)):
            break
        if entry.jid == keep:
            continue
        with contextlib.suppress(FileNotFoundError):
            os.unlink(entry.path)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(entry.path + ERROR_SUFFIX)
        count, total = count - 1, total - entry.size
        dropped.append(entry)
    return dropped


@contextlib.contextmanager
def spool_lock(spool_dir: str, deadline_at: float):
    """Hold the spool's flush lock, waiting at most until ``deadline_at``; yields False if not held."""
    os.makedirs(spool_dir, mode=0o700, exist_ok=True)
    fd = os.open(os.path.join(spool_dir, LOCK_NAME), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline_at:
                    yield False
                    return
                time.sleep(LOCK_POLL_SECONDS)
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


# -- SFTP ---------------------------------------------------------------------------------


def address(transport: dict) -> str:
    return f"{transport['user']}@{transport['host']}:{transport['port']}"


def connect(transport: dict, timeout: float):
    """A logged-in SSH client; the host key must match ``known_hosts`` (never trusted on first use)."""
    if not HAS_PARAMIKO:
        raise RuntimeError(NO_PARAMIKO)
    client = paramiko.SSHClient()
    client.load_host_keys(transport["known_hosts"])
    # An unknown or changed host key is refused: the key is pinned.
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    try:
        client.connect(
            transport["host"],
            port=transport["port"],
            username=transport["user"],
            key_filename=transport["key"],
            allow_agent=False,
            look_for_keys=False,
            timeout=timeout,
            banner_timeout=timeout,
            auth_timeout=timeout,
            channel_timeout=timeout,
        )
    except BaseException:
        client.close()
        raise
    return client


def describe_connect_error(err: BaseException, transport: dict) -> str:
    """One line saying why a connection failed, naming the host and the pinned key file."""
    where = address(transport)
    if isinstance(err, RuntimeError) and str(err) == NO_PARAMIKO:
        return NO_PARAMIKO
    if HAS_PARAMIKO and isinstance(err, paramiko.BadHostKeyException):
        return (f"host key of {where} CHANGED: got {err.key.get_name()} {err.key.get_base64()[:24]}..., "
                f"known_hosts {transport['known_hosts']} has another; refused")
    if HAS_PARAMIKO and isinstance(err, paramiko.AuthenticationException):
        return f"login to {where} refused: {err}"
    if HAS_PARAMIKO and isinstance(err, paramiko.SSHException):
        if "known_hosts" in str(err):
            return (f"host key of {where} is not in known_hosts {transport['known_hosts']}; "
                    "refused (host keys are pinned, never trusted on first use)")
        return f"SSH error with {where}: {type(err).__name__}: {err}"
    if isinstance(err, OSError | EOFError):
        return f"cannot reach {where}: {type(err).__name__}: {err}"
    return f"unexpected error with {where}: {type(err).__name__}: {err}"


def ensure_remote_dir(sftp, directory: str) -> None:
    """Create ``directory`` unless it exists; another uploader creating it at the same time is fine."""
    try:
        sftp.stat(directory)
        return
    except FileNotFoundError:
        pass
    try:
        sftp.mkdir(directory, 0o755)
    except OSError:
        sftp.stat(directory)  # created meanwhile by a concurrent run: fine; else this raises


def upload(sftp, source, remote_dir: str, name: str) -> None:
    """Upload ``source`` (a binary file object) as ``remote_dir/name``: temp name, then posix_rename.

    On failure the ``.part`` file is removed when the connection still allows it.
    """
    final = posixpath.join(remote_dir, name)
    # A leading dot: the ingester never acts on a half-written file.
    partial = posixpath.join(remote_dir, f".{name}.{secrets.token_hex(6)}.part")
    try:
        sftp.putfo(source, partial, confirm=True)
        # posix-rename@openssh.com replaces an existing file atomically: a retry
        # after a lost acknowledgement overwrites the same file.
        sftp.posix_rename(partial, final)
    except BaseException:
        channel_transport = sftp.get_channel().get_transport()
        if channel_transport is not None and channel_transport.is_active():
            with contextlib.suppress(Exception):
                sftp.remove(partial)
        raise


class Outgoing(NamedTuple):
    """One file to upload: its final remote name and where its bytes come from."""

    name: str
    local_path: str | None = None
    payload: bytes | None = None

    def open(self):
        return open(self.local_path, "rb") if self.local_path is not None else io.BytesIO(self.payload or b"")


def outgoing(name: str, local_path: str | None = None, payload: bytes | None = None) -> Outgoing:
    """An ``Outgoing`` file (the loader hands out functions, not classes)."""
    return Outgoing(name, local_path, payload)


class DeliveryReport(NamedTuple):
    delivered: list[str]
    failed: dict[str, str]
    connection_error: str | None
    connected: bool


class _Session:
    """One SFTP connection uploading files in a worker thread, bounded by a deadline.

    The caller joins the worker with the remaining time and then calls
    ``abort()``: closing the transport makes any blocked read or write fail, so a
    blackholed or stalled host never holds the caller past the deadline.
    """

    def __init__(self, transport, remote_dir, files, deadline_at, on_delivered):
        self.transport = transport
        self.remote_dir = remote_dir
        self.files = files
        self.deadline_at = deadline_at
        self.on_delivered = on_delivered
        self.delivered: list[str] = []
        self.failed: dict[str, str] = {}
        self.connection_error: str | None = None
        self.connected = False
        self.cancelled = threading.Event()
        self.lock = threading.Lock()
        self.client = None

    def socket_budget(self) -> float:
        # Slightly past the deadline: the caller's join() expires first and reports
        # "deadline reached"; these timeouts are the backstop if closing fails.
        return max(self.deadline_at - time.monotonic(), 0.0) + SOCKET_GRACE_SECONDS

    def set_connection_error(self, reason: str) -> None:
        with self.lock:
            if self.connection_error is None:
                self.connection_error = reason

    def abort(self, reason: str) -> None:
        self.cancelled.set()
        self.set_connection_error(reason)
        with self.lock:
            client = self.client
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()

    def run(self) -> None:
        client = None
        try:
            client = connect(self.transport, self.socket_budget())
            with self.lock:
                self.client = client
            if self.cancelled.is_set():
                return
            self.connected = True
            sftp = client.open_sftp()
            sftp.get_channel().settimeout(self.socket_budget())
            try:
                ensure_remote_dir(sftp, self.remote_dir)
            except OSError as err:
                self.set_connection_error(
                    f"cannot create {self.remote_dir} on {address(self.transport)}: {type(err).__name__}: {err}"
                )
                return
            for outgoing in self.files:
                if self.cancelled.is_set() or time.monotonic() >= self.deadline_at:
                    break
                # A read that never completes (blackhole, stalled host) fails at the deadline.
                sftp.get_channel().settimeout(self.socket_budget())
                try:
                    with outgoing.open() as source:
                        upload(sftp, source, self.remote_dir, outgoing.name)
                except (OSError, EOFError, paramiko.SSHException) as err:
                    if isinstance(err, FileNotFoundError) and outgoing.local_path is not None \
                            and not os.path.exists(outgoing.local_path):
                        continue  # dropped by a limit, or delivered by a concurrent flush
                    with self.lock:
                        self.failed[outgoing.name] = f"upload failed: {type(err).__name__}: {err}"
                    if not client.get_transport() or not client.get_transport().is_active():
                        self.set_connection_error(f"connection lost: {type(err).__name__}: {err}")
                        break
                    continue
                if self.on_delivered is not None:
                    self.on_delivered(outgoing)
                with self.lock:
                    self.delivered.append(outgoing.name)
        except Exception as err:  # noqa: BLE001 - reported to the caller, who never raises for delivery
            self.set_connection_error(describe_connect_error(err, self.transport))
            if not isinstance(err, OSError | EOFError | RuntimeError) and not (
                HAS_PARAMIKO and isinstance(err, paramiko.SSHException)
            ):
                log.exception("distmon: unexpected error while uploading to %s", address(self.transport))
        finally:
            if client is not None:
                with contextlib.suppress(Exception):
                    client.close()


def deliver(transport: dict, remote_dir: str, files: list[Outgoing], deadline_at: float,
            on_delivered: Callable[[Outgoing], None] | None = None, deadline_reason: str = "deadline reached",
            thread_name: str = "distmon-sftp") -> DeliveryReport:
    """Upload ``files`` in order over one connection into ``remote_dir``, giving up at ``deadline_at``.

    Never raises for delivery problems: what was not delivered is in ``failed``
    (per file) or ``connection_error`` (for the rest). ``on_delivered`` runs
    right after each file's final rename (e.g. to remove it from the spool).
    """
    if not HAS_PARAMIKO:
        return DeliveryReport([], {}, NO_PARAMIKO, False)
    session = _Session(transport, remote_dir, files, deadline_at, on_delivered)
    worker = threading.Thread(target=session.run, name=thread_name, daemon=True)
    worker.start()
    worker.join(max(deadline_at - time.monotonic(), 0))
    if worker.is_alive():
        session.abort(deadline_reason)
        worker.join(ABORT_JOIN_SECONDS)
    with session.lock:
        return DeliveryReport(list(session.delivered), dict(session.failed), session.connection_error,
                              session.connected)


def check_host(transport: dict, timeout: float) -> dict:
    """Connect with the pinned host key, log in, look at the inbox: a health report, never raises."""
    report = {
        "host": transport["host"],
        "port": transport["port"],
        "reachable": False,
        "host_key_verified": False,
        "login": False,
        "inbox": None,
    }
    started = time.monotonic()
    try:
        client = connect(transport, timeout)
    except Exception as err:  # noqa: BLE001 - classified into the report
        report["error"] = describe_connect_error(err, transport)
        if HAS_PARAMIKO and isinstance(err, paramiko.SSHException):
            report["reachable"] = True
            # Authentication comes after the host key check: a refused login proves the key.
            report["host_key_verified"] = isinstance(err, paramiko.AuthenticationException)
        return report
    try:
        report.update(reachable=True, host_key_verified=True, login=True)
        report["handshake_ms"] = round((time.monotonic() - started) * 1000, 1)
        sftp = client.open_sftp()
        sftp.get_channel().settimeout(timeout)
        try:
            sftp.stat(transport["remote_inbox"])
            report["inbox"] = transport["remote_inbox"]
        except OSError as err:
            report["error"] = f"inbox {transport['remote_inbox']!r}: {err}"
        finally:
            sftp.close()
    except (OSError, EOFError, paramiko.SSHException) as err:
        report["error"] = f"SFTP failed: {type(err).__name__}: {err}"
    finally:
        client.close()
    return report
