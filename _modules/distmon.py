"""
The distmon spool on a minion, and its delivery to the storage host over SFTP.

Results of ``pytestrun`` jobs are written here by the ``distmon`` returner
(``_returners/distmon.py``) first, then uploaded. What could not be uploaded
(storage host down, blackholed, host key refused) stays in the spool and is
delivered by the next return or by ``distmon.flush``: no new test run is needed.

Why the spool and upload code lives in this execution module: Salt loads
``_modules`` and ``_returners`` through separate loaders, and returners get no
``__utils__``, but they do get ``__salt__``. So the returner reaches this code
through ``__salt__["distmon.store"]`` and there is exactly one implementation of
spooling, locking and uploading, which ``distmon.flush`` and ``distmon.spool``
use too.

:depends: paramiko

Configuration
-------------

Looked up like a returner's options (``salt.returners.get_returner_options``):
minion config (``distmon.host``), grains, pillar (``distmon: {host: ...}``,
which wins over flat minion config keys, as in Salt), then keyword arguments
(``--return_kwargs`` for the returner, ``key=value`` on the command line for
``distmon.flush``). Every value is validated after the lookup.

.. code-block:: yaml

    distmon.host: storage.example.com          # required for delivery
    distmon.port: 22
    distmon.user: distmon                      # required for delivery
    distmon.key: /etc/salt/distmon/id_ed25519  # private key for SFTP login (key auth only)
    distmon.known_hosts: /etc/salt/distmon/known_hosts  # pinned host key; unknown or changed keys are refused
    distmon.remote_inbox: /inbox               # files land in <remote_inbox>/<minion_id>/<jid>.json
    distmon.spool_dir: /var/cache/salt/minion/distmon/spool  # default: <cachedir>/distmon/spool
    distmon.deadline: 30                       # seconds for lock + connect + transfer of one flush
    distmon.spool_max_files: 0                 # 0 = never drop; else drop the oldest (logged)
    distmon.spool_max_bytes: 0                 # 0 = never drop; else drop the oldest (logged)

The returner's own keys (``grains``, ``all_jobs``, ``sign``) are documented in
``_returners/distmon.py``.

Spool layout: ``<spool_dir>/<jid>.json`` (the document, written atomically:
temporary file, fsync, rename, fsync of the directory), ``<jid>.json.err``
(attempts and last error, advisory), ``.flush.lock`` (``flock``, one flush at a
time per minion).

Remote layout: ``<remote_inbox>/<minion_id>/.<jid>.json.<random>.part`` while
uploading, then ``posix_rename`` to ``<jid>.json``. The name depends only on the
minion and the jid, so a retry after a lost acknowledgement overwrites the same
file instead of creating a second run.

.. code-block:: bash

    salt '*' distmon.spool
    salt '*' distmon.flush
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import posixpath
import re
import secrets
import tempfile
import threading
import time
from datetime import UTC, datetime
from typing import NamedTuple

import salt.returners
import salt.utils.args
import salt.utils.verify
from salt.exceptions import SaltInvocationError

try:
    import paramiko

    HAS_PARAMIKO = True
except ImportError:  # pragma: no cover - the minion requirements pin paramiko
    HAS_PARAMIKO = False

log = logging.getLogger(__name__)

__virtualname__ = "distmon"

OPTION_KEYS = (
    "host",
    "port",
    "user",
    "key",
    "known_hosts",
    "remote_inbox",
    "spool_dir",
    "deadline",
    "spool_max_files",
    "spool_max_bytes",
)
TRANSPORT_KEYS = ("host", "port", "user", "key", "known_hosts", "remote_inbox")
DEFAULTS = {"port": 22, "deadline": 30.0, "spool_max_files": 0, "spool_max_bytes": 0}
MAX_DEADLINE = 3600.0

# The ingester only acts on names like this (docs/result-format.md), so a jid
# outside it would be uploaded and then ignored forever: refuse it up front.
JID_PATTERN = re.compile(r"^[0-9A-Za-z_.-]+$")
SPOOLED_NAME = re.compile(r"^(?P<jid>[0-9A-Za-z_][0-9A-Za-z_.-]*)\.json$")
# Room for the remote temporary name ".<jid>.json.<12 hex>.part" within NAME_MAX.
MAX_JID_BYTES = 200
MAX_ID_BYTES = 255
RESERVED_MINION_IDS = frozenset({"_jobs"})  # the runner's job manifests live there
LOCK_NAME = ".flush.lock"
ERROR_SUFFIX = ".err"
STALE_TEMP_SECONDS = 3600
LOCK_POLL_SECONDS = 0.05
SOCKET_GRACE_SECONDS = 1.0


def __virtual__():
    if not HAS_PARAMIKO:
        return (False, "distmon: the paramiko library is not installed (pip install paramiko)")
    return __virtualname__


# -- options ----------------------------------------------------------------


def _as_int(name: str, value, minimum: int, maximum: int) -> int:
    if isinstance(value, bool):
        raise SaltInvocationError(f"distmon.{name} must be an integer, not {value!r}")
    try:
        number = int(str(value).strip())
    except (TypeError, ValueError):
        raise SaltInvocationError(f"distmon.{name} must be an integer, not {value!r}") from None
    if not minimum <= number <= maximum:
        raise SaltInvocationError(f"distmon.{name} must be between {minimum} and {maximum}, not {number}")
    return number


def _as_text(name: str, value) -> str:
    if not isinstance(value, str | int) or isinstance(value, bool) or not str(value).strip():
        raise SaltInvocationError(f"distmon.{name} must be a non-empty string, not {value!r}")
    text = str(value).strip()
    if "\0" in text or any(ch.isspace() for ch in text):
        raise SaltInvocationError(f"distmon.{name} must not contain NUL or whitespace: {text!r}")
    return text


def _as_file(name: str, value) -> str:
    path = os.path.expanduser(_as_text(name, value))
    if not os.path.isabs(path):
        raise SaltInvocationError(f"distmon.{name} must be an absolute path, not {path!r}")
    if not os.path.isfile(path):
        raise SaltInvocationError(f"distmon.{name}: {path} does not exist or is not a file")
    if not os.access(path, os.R_OK):
        raise SaltInvocationError(f"distmon.{name}: {path} is not readable")
    return path


def _lookup_options(overrides: dict) -> dict:
    """Salt's returner option lookup, then ``overrides`` (non-None values) on top."""
    unknown = sorted(set(overrides) - set(OPTION_KEYS))
    if unknown:
        raise SaltInvocationError(
            f"distmon: unknown option(s) {', '.join(unknown)}; known: {', '.join(OPTION_KEYS)}"
        )
    raw = salt.returners.get_returner_options(
        __virtualname__,
        None,
        {key: key for key in OPTION_KEYS},
        __salt__=__salt__,
        __opts__=__opts__,
        defaults=DEFAULTS,
    )
    raw.update({key: value for key, value in overrides.items() if value is not None and value != ""})
    return raw


def _spool_options(raw: dict) -> dict:
    """Validate what spooling needs; always available, even without a storage host."""
    spool_dir = raw.get("spool_dir") or os.path.join(__opts__["cachedir"], "distmon", "spool")
    spool_dir = os.path.expanduser(_as_text("spool_dir", spool_dir))
    if not os.path.isabs(spool_dir):
        raise SaltInvocationError(f"distmon.spool_dir must be an absolute path, not {spool_dir!r}")
    try:
        deadline = float(raw.get("deadline", DEFAULTS["deadline"]))
    except (TypeError, ValueError):
        raise SaltInvocationError(f"distmon.deadline must be a number of seconds, not {raw.get('deadline')!r}") from None
    if not 0 < deadline <= MAX_DEADLINE:
        raise SaltInvocationError(f"distmon.deadline must be > 0 and <= {MAX_DEADLINE:g} s, not {deadline:g}")
    return {
        "spool_dir": os.path.normpath(spool_dir),
        "deadline": deadline,
        "spool_max_files": _as_int("spool_max_files", raw.get("spool_max_files", 0), 0, 10**9),
        "spool_max_bytes": _as_int("spool_max_bytes", raw.get("spool_max_bytes", 0), 0, 2**62),
    }


def _transport_options(raw: dict) -> dict:
    """Validate what an upload needs; raises SaltInvocationError naming the bad key."""
    missing = [key for key in ("host", "user", "key", "known_hosts", "remote_inbox") if not raw.get(key)]
    if missing:
        raise SaltInvocationError(
            "distmon: not configured for delivery, missing " + ", ".join(f"distmon.{key}" for key in missing)
        )
    remote_inbox = _as_text("remote_inbox", raw["remote_inbox"])
    if ".." in remote_inbox.split("/"):
        raise SaltInvocationError(f"distmon.remote_inbox must not contain '..': {remote_inbox!r}")
    return {
        "host": _as_text("host", raw["host"]),
        "port": _as_int("port", raw.get("port", 22), 1, 65535),
        "user": _as_text("user", raw["user"]),
        "key": _as_file("key", raw["key"]),
        # Host keys are pinned: without the file there is nothing to check against,
        # and trusting on first use is exactly what this option exists to prevent.
        "known_hosts": _as_file("known_hosts", raw["known_hosts"]),
        "remote_inbox": posixpath.normpath(remote_inbox),
    }


# -- identifiers --------------------------------------------------------------


def _check_component(kind: str, value) -> str:
    """Salt's id rules (``salt.utils.verify.valid_id``) plus the result format's, or raise."""
    if not isinstance(value, str) or not value:
        raise SaltInvocationError(f"distmon: {kind} must be a non-empty string, not {value!r}")
    limit = MAX_JID_BYTES if kind == "jid" else MAX_ID_BYTES
    if len(value.encode("utf-8", "surrogatepass")) > limit:
        raise SaltInvocationError(f"distmon: {kind} is longer than {limit} bytes: {value[:40]!r}...")
    if any(ch in value for ch in "/\\\0") or any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
        raise SaltInvocationError(f"distmon: {kind} {value!r} contains '/', '\\', NUL or a control character")
    if value in (".", "..") or value.startswith("."):
        raise SaltInvocationError(f"distmon: {kind} {value!r} must not be '.', '..' or start with a dot")
    if not salt.utils.verify.valid_id(__opts__, value):
        raise SaltInvocationError(f"distmon: {kind} {value!r} is not a valid Salt id")
    if kind == "jid" and not JID_PATTERN.match(value):
        raise SaltInvocationError(f"distmon: jid {value!r} may only contain 0-9 A-Z a-z _ . -")
    if kind == "minion id" and value in RESERVED_MINION_IDS:
        raise SaltInvocationError(f"distmon: minion id {value!r} is reserved in the inbox")
    return value


def _own_minion_id() -> str:
    return _check_component("minion id", __opts__.get("id"))


def _remote_dir(remote_inbox: str, minion_id: str) -> str:
    directory = posixpath.normpath(posixpath.join(remote_inbox, minion_id))
    if posixpath.dirname(directory) != remote_inbox:
        raise SaltInvocationError(f"distmon: minion id {minion_id!r} leaves the inbox {remote_inbox}")
    return directory


# -- spool ------------------------------------------------------------------


class SpoolEntry(NamedTuple):
    jid: str
    path: str
    size: int
    mtime: float
    inode: int


def _fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(directory: str, name: str, data: bytes, durable: bool = True) -> str:
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
        _fsync_dir(directory)
    return final


def _ensure_spool_dir(spool_dir: str) -> None:
    os.makedirs(spool_dir, mode=0o700, exist_ok=True)


def _spooled(spool_dir: str) -> list[SpoolEntry]:
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


def _read_error(entry_path: str) -> dict:
    try:
        with open(entry_path + ERROR_SUFFIX, encoding="utf-8") as handle:
            state = json.load(handle)
        return state if isinstance(state, dict) else {}
    except (OSError, ValueError):
        return {}


def _record_error(entry: SpoolEntry, reason: str) -> None:
    """Keep the last error and the attempt count next to a waiting result (advisory state)."""
    if not os.path.exists(entry.path):
        return
    state = _read_error(entry.path)
    state = {
        "attempts": int(state.get("attempts", 0) or 0) + 1,
        "last_error": reason,
        "last_attempt_at": _utc_now(),
    }
    with contextlib.suppress(OSError):
        _write_atomic(os.path.dirname(entry.path), os.path.basename(entry.path) + ERROR_SUFFIX,
                      json.dumps(state).encode("utf-8"), durable=False)


def _remove_spooled(entry: SpoolEntry) -> None:
    """Remove a delivered result, unless it was re-spooled (same jid, new file) meanwhile."""
    try:
        if os.stat(entry.path).st_ino == entry.inode:
            os.unlink(entry.path)
    except FileNotFoundError:
        pass
    with contextlib.suppress(FileNotFoundError):
        os.unlink(entry.path + ERROR_SUFFIX)
    with contextlib.suppress(OSError):
        _fsync_dir(os.path.dirname(entry.path))


def _utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _enforce_limits(options: dict, minion_id: str, keep: str) -> list[str]:
    """Drop the oldest results beyond the configured limits (never the one just written)."""
    max_files, max_bytes = options["spool_max_files"], options["spool_max_bytes"]
    if not max_files and not max_bytes:
        return []
    entries = _spooled(options["spool_dir"])
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
        dropped.append(entry.jid)
        log.error(
            "distmon: spool limit reached (spool_max_files=%s, spool_max_bytes=%s): dropped result "
            "jid=%s minion=%s (%d bytes) without delivering it",
            max_files, max_bytes, entry.jid, minion_id, entry.size,
        )
    return dropped


def _spool_document(options: dict, minion_id: str, document: dict) -> tuple[str, list[str]]:
    jid = _check_component("jid", document.get("jid"))
    if document.get("minion_id") != minion_id:
        raise SaltInvocationError(
            f"distmon: document minion_id {document.get('minion_id')!r} is not this minion ({minion_id})"
        )
    data = json.dumps(document, ensure_ascii=False).encode("utf-8", "replace")
    _ensure_spool_dir(options["spool_dir"])
    name = f"{jid}.json"
    if not salt.utils.verify.clean_path(options["spool_dir"], os.path.join(options["spool_dir"], name)):
        raise SaltInvocationError(f"distmon: jid {jid!r} leaves the spool directory")
    _write_atomic(options["spool_dir"], name, data)
    dropped = _enforce_limits(options, minion_id, keep=jid)
    return jid, dropped


# -- delivery -----------------------------------------------------------------


class _Delivery:
    """One SFTP connection uploading spooled results, run in a worker thread.

    The caller joins the worker with the remaining deadline and then calls
    ``abort()``: closing the transport makes any blocked read or write fail, so a
    blackholed or stalled host can never hold the minion longer than the deadline.
    """

    def __init__(self, transport: dict, minion_id: str, entries: list[SpoolEntry], deadline_at: float):
        self.transport = transport
        self.minion_id = minion_id
        self.entries = entries
        self.deadline_at = deadline_at
        self.remote_dir = _remote_dir(transport["remote_inbox"], minion_id)
        self.delivered: list[str] = []
        self.failed: dict[str, str] = {}
        self.connection_error: str | None = None
        self.connected = False
        self._cancelled = threading.Event()
        self._lock = threading.Lock()
        self._client: paramiko.SSHClient | None = None

    def _remaining(self) -> float:
        return self.deadline_at - time.monotonic()

    def _socket_budget(self) -> float:
        # Slightly past the deadline: the caller's join() expires first and reports
        # "deadline reached"; these timeouts are the backstop if closing fails.
        return max(self._remaining(), 0.0) + SOCKET_GRACE_SECONDS

    def abort(self, reason: str) -> None:
        self._cancelled.set()
        with self._lock:
            if self.connection_error is None:
                self.connection_error = reason
            client = self._client
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()

    def _connect(self) -> paramiko.SSHClient:
        transport = self.transport
        client = paramiko.SSHClient()
        client.load_host_keys(transport["known_hosts"])
        # Never trust on first use: an unknown or changed host key is refused.
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        with self._lock:
            self._client = client
        budget = self._socket_budget()
        client.connect(
            transport["host"],
            port=transport["port"],
            username=transport["user"],
            key_filename=transport["key"],
            allow_agent=False,
            look_for_keys=False,
            timeout=budget,
            banner_timeout=budget,
            auth_timeout=budget,
            channel_timeout=budget,
        )
        return client

    def _ensure_remote_dir(self, sftp) -> None:
        try:
            sftp.stat(self.remote_dir)
        except FileNotFoundError:
            try:
                sftp.mkdir(self.remote_dir, 0o755)
            except OSError:
                sftp.stat(self.remote_dir)  # created meanwhile by a concurrent flush: fine

    def _upload(self, sftp, entry: SpoolEntry) -> None:
        final = posixpath.join(self.remote_dir, f"{entry.jid}.json")
        partial = posixpath.join(self.remote_dir, f".{entry.jid}.json.{secrets.token_hex(6)}.part")
        try:
            with open(entry.path, "rb") as handle:
                sftp.putfo(handle, partial, confirm=True)
            # posix-rename@openssh.com replaces an existing file atomically: a retry
            # after a lost acknowledgement overwrites the same run.
            sftp.posix_rename(partial, final)
        except BaseException:
            transport = sftp.get_channel().get_transport()
            if transport is not None and transport.is_active():
                with contextlib.suppress(Exception):
                    sftp.remove(partial)
            raise

    def run(self) -> None:
        client = None
        try:
            client = self._connect()
            self.connected = True
            sftp = client.open_sftp()
            sftp.get_channel().settimeout(self._socket_budget())
            try:
                self._ensure_remote_dir(sftp)
            except OSError as err:
                self._set_connection_error(
                    f"cannot create {self.remote_dir} on {self._address()}: {type(err).__name__}: {err}"
                )
                return
            for entry in self.entries:
                if self._cancelled.is_set() or self._remaining() <= 0:
                    break
                # A read that never completes (blackhole, stalled host) fails at the deadline.
                sftp.get_channel().settimeout(self._socket_budget())
                try:
                    self._upload(sftp, entry)
                except (OSError, paramiko.SSHException, EOFError) as err:
                    if isinstance(err, FileNotFoundError) and not os.path.exists(entry.path):
                        continue  # dropped by a limit, or delivered by a concurrent flush
                    reason = f"upload failed: {type(err).__name__}: {err}"
                    with self._lock:
                        self.failed[entry.jid] = reason
                    if not client.get_transport() or not client.get_transport().is_active():
                        self._set_connection_error(f"connection lost: {type(err).__name__}: {err}")
                        break
                    continue
                _remove_spooled(entry)
                with self._lock:
                    self.delivered.append(entry.jid)
        except paramiko.BadHostKeyException as err:
            self._set_connection_error(
                f"host key of {self._address()} CHANGED: got {err.key.get_name()} "
                f"{err.key.get_base64()[:24]}..., known_hosts {self.transport['known_hosts']} has another; refused"
            )
        except paramiko.SSHException as err:
            if "known_hosts" in str(err):
                self._set_connection_error(
                    f"host key of {self._address()} is not in known_hosts {self.transport['known_hosts']}; "
                    "refused (host keys are pinned, never trusted on first use)"
                )
            else:
                self._set_connection_error(f"SSH error with {self._address()}: {type(err).__name__}: {err}")
        except (OSError, EOFError) as err:
            self._set_connection_error(f"cannot reach {self._address()}: {type(err).__name__}: {err}")
        except Exception as err:  # noqa: BLE001 - the returner must never raise into the minion
            self._set_connection_error(f"unexpected error: {type(err).__name__}: {err}")
            log.exception("distmon: unexpected error while delivering results of minion %s", self.minion_id)
        finally:
            if client is not None:
                with contextlib.suppress(Exception):
                    client.close()

    def _address(self) -> str:
        return f"{self.transport['user']}@{self.transport['host']}:{self.transport['port']}"

    def _set_connection_error(self, reason: str) -> None:
        with self._lock:
            if self.connection_error is None:
                self.connection_error = reason


@contextlib.contextmanager
def _flush_lock(spool_dir: str, deadline_at: float):
    """Hold the spool's flush lock, waiting at most until the deadline; yields False if not held."""
    _ensure_spool_dir(spool_dir)
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


def _flush(raw: dict, spool: dict, minion_id: str, started: float) -> dict:
    """Upload the spool oldest first over one connection; never raises for delivery problems."""
    deadline_at = started + spool["deadline"]
    report = {"delivered": [], "waiting": [], "connections": 0}
    with _flush_lock(spool["spool_dir"], deadline_at) as locked:
        entries = _spooled(spool["spool_dir"])
        if not entries:
            return report
        if not locked:
            reason = f"another flush held the spool lock for the whole deadline ({spool['deadline']:g} s)"
            report["waiting"] = [{"jid": entry.jid, "reason": reason} for entry in entries]
            return report
        try:
            transport = _transport_options(raw)
            delivery = _Delivery(transport, minion_id, entries, deadline_at)
        except SaltInvocationError as err:
            for entry in entries:
                _record_error(entry, str(err))
            report["waiting"] = [{"jid": entry.jid, "reason": str(err)} for entry in entries]
            log.error("distmon: %d result(s) of minion %s stay spooled: %s", len(entries), minion_id, err)
            return report
        worker = threading.Thread(target=delivery.run, name=f"distmon-flush-{minion_id}", daemon=True)
        worker.start()
        worker.join(max(deadline_at - time.monotonic(), 0))
        if worker.is_alive():
            delivery.abort(f"deadline of {spool['deadline']:g} s reached")
            worker.join(1.0)
        report["connections"] = 1 if delivery.connected else 0
        with delivery._lock:
            delivered = set(delivery.delivered)
            failed = dict(delivery.failed)
            connection_error = delivery.connection_error
        for entry in entries:
            if entry.jid in delivered:
                report["delivered"].append(entry.jid)
                continue
            if not os.path.exists(entry.path):
                continue  # delivered by a concurrent flush or dropped by a limit
            reason = failed.get(entry.jid) or connection_error or "not attempted"
            report["waiting"].append({"jid": entry.jid, "reason": reason})
            _record_error(entry, reason)
    if report["delivered"]:
        log.info("distmon: delivered %d result(s) of minion %s: %s", len(report["delivered"]), minion_id,
                 ", ".join(report["delivered"][:20]))
    if report["waiting"]:
        log.warning(
            "distmon: %d result(s) of minion %s stay spooled (jids %s): %s",
            len(report["waiting"]), minion_id, ", ".join(item["jid"] for item in report["waiting"][:20]),
            report["waiting"][0]["reason"],
        )
    return report


# -- public functions ---------------------------------------------------------


def store(document: dict, **kwargs) -> dict:
    """
    Spool one result document, then flush the whole spool (what the distmon returner calls).

    The document is written to the spool before any network work; delivery
    problems are reported (``waiting``), never raised. Bad input (a jid or
    minion id that cannot be a file name, a document of another minion) raises
    SaltInvocationError. Keyword arguments override the configuration keys
    listed in the module documentation.

    CLI Example:

    .. code-block:: bash

        salt '*' distmon.store '{"format": "distmon-result/1", "jid": "manual-1", "minion_id": "web-1"}'
    """
    if not isinstance(document, dict):
        raise SaltInvocationError(f"distmon.store: document must be a dict, not {type(document).__name__}")
    raw = _lookup_options(salt.utils.args.clean_kwargs(**kwargs))
    spool = _spool_options(raw)
    minion_id = _own_minion_id()
    jid, dropped = _spool_document(spool, minion_id, document)
    # The deadline covers delivery (lock, connect, transfer), not the local write above.
    started = time.monotonic()
    report = _flush(raw, spool, minion_id, started)
    report.update({"spooled": jid, "dropped": dropped, "elapsed": round(time.monotonic() - started, 3)})
    return report


def flush(**kwargs) -> dict:
    """
    Upload everything spooled, oldest first, over one SFTP connection within the deadline.

    Returns ``delivered`` (jids now in the inbox), ``waiting`` (jid and reason
    for what stays spooled), ``connections`` and ``elapsed``. The job's retcode
    is 1 when something is still waiting. Keyword arguments override the
    configuration keys listed in the module documentation (e.g. ``deadline=5``).

    CLI Example:

    .. code-block:: bash

        salt '*' distmon.flush
        salt 'web-1' distmon.flush deadline=10
    """
    started = time.monotonic()
    raw = _lookup_options(salt.utils.args.clean_kwargs(**kwargs))
    spool = _spool_options(raw)
    minion_id = _own_minion_id()
    _transport_options(raw)  # a misconfigured flush is the caller's error: say so now
    report = _flush(raw, spool, minion_id, started)
    report["elapsed"] = round(time.monotonic() - started, 3)
    if report["waiting"]:
        __context__["retcode"] = 1
    return report


def spool(**kwargs) -> list[dict]:
    """
    List the results waiting in the spool, oldest first: jid, size, age, attempts, last error.

    CLI Example:

    .. code-block:: bash

        salt '*' distmon.spool
    """
    raw = _lookup_options(salt.utils.args.clean_kwargs(**kwargs))
    options = _spool_options(raw)
    now = time.time()
    waiting = []
    for entry in _spooled(options["spool_dir"]):
        state = _read_error(entry.path)
        waiting.append(
            {
                "jid": entry.jid,
                "size": entry.size,
                "age": round(max(now - entry.mtime, 0.0), 1),
                "attempts": int(state.get("attempts", 0) or 0),
                "last_error": state.get("last_error"),
                "last_attempt_at": state.get("last_attempt_at"),
            }
        )
    return waiting
