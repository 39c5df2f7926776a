"""
The distmon options: their names, defaults and checks, in one place.

Shared by the ``distmon`` execution module, the ``distmon`` runner and (through
the execution module, since Salt 3008 gives returners no ``__utils__``) the
``distmon`` returner. Synced to minions and the master by ``saltutil.sync_all``
(``salt-run saltutil.sync_all`` on the master); installed with the
``saltext-distmon`` package it is imported as ``saltext.distmon.utils``.

Every function is pure: it takes what it checks and returns the clean value or
raises ``SaltInvocationError`` with a message that names the option, so the
caller decides whether a bad option stops it (a CLI call) or is recorded next
to a spooled result (the returner: results are spooled whatever the options).

The option keys, as they appear in minion/master config (``distmon.<key>``),
pillar (``distmon: {<key>: ...}``) and ``--return_kwargs``:

.. code-block:: yaml

    distmon.host: storage.example.com          # storage host (required for delivery)
    distmon.port: 22
    distmon.user: distmon                      # SFTP account (required for delivery)
    distmon.key: /etc/salt/distmon/id_ed25519  # private key file (key auth only)
    distmon.known_hosts: /etc/salt/distmon/known_hosts  # pinned host key
    distmon.remote_inbox: /inbox               # as the SFTP account sees it
    distmon.spool_dir: /var/cache/salt/minion/distmon/spool  # absolute; default <cachedir>/distmon/spool
    distmon.deadline: 30                       # seconds, > 0 and <= 3600
    distmon.spool_max_files: 0                 # 0 = unlimited
    distmon.spool_max_bytes: 0                 # 0 = unlimited
"""

from __future__ import annotations

import os
import posixpath
import re

import salt.utils.verify
from salt.exceptions import SaltInvocationError

TRANSPORT_KEYS = ("host", "port", "user", "key", "known_hosts", "remote_inbox")
SPOOL_KEYS = ("spool_dir", "deadline", "spool_max_files", "spool_max_bytes")
OPTION_KEYS = TRANSPORT_KEYS + SPOOL_KEYS
REQUIRED_FOR_DELIVERY = ("host", "user", "key", "known_hosts", "remote_inbox")
DEFAULTS = {"port": 22, "deadline": 30.0, "spool_max_files": 0, "spool_max_bytes": 0}
MAX_DEADLINE = 3600.0

# The ingester only acts on names like this (docs/result-format.md), so a jid
# outside it would be uploaded and then ignored forever: refuse it up front.
JID_PATTERN = re.compile(r"^[0-9A-Za-z_.-]+$")
# Room for the remote temporary name ".<jid>.json.<12 hex>.part" within NAME_MAX.
MAX_JID_BYTES = 200
MAX_ID_BYTES = 255
# Job manifests live in <remote_inbox>/_jobs: no minion may own that directory.
JOBS_DIR = "_jobs"
RESERVED_MINION_IDS = frozenset({JOBS_DIR})


def option_keys() -> tuple:
    """Every option key (the loader hands out functions, not constants)."""
    return OPTION_KEYS


def defaults() -> dict:
    """The documented defaults of the options that have one."""
    return dict(DEFAULTS)


def jobs_dir() -> str:
    """The inbox directory of the runner's job manifests."""
    return JOBS_DIR


def as_int(name: str, value, minimum: int, maximum: int) -> int:
    """``value`` as an integer within bounds (strings from the command line are accepted)."""
    if isinstance(value, bool):
        raise SaltInvocationError(f"distmon.{name} must be an integer, not {value!r}")
    try:
        number = int(str(value).strip())
    except (TypeError, ValueError):
        raise SaltInvocationError(f"distmon.{name} must be an integer, not {value!r}") from None
    if not minimum <= number <= maximum:
        raise SaltInvocationError(f"distmon.{name} must be between {minimum} and {maximum}, not {number}")
    return number


def as_text(name: str, value) -> str:
    """A non-empty single word: host names, user names, paths."""
    if not isinstance(value, str | int) or isinstance(value, bool) or not str(value).strip():
        raise SaltInvocationError(f"distmon.{name} must be a non-empty string, not {value!r}")
    text = str(value).strip()
    if "\0" in text or any(ch.isspace() for ch in text):
        raise SaltInvocationError(f"distmon.{name} must not contain NUL or whitespace: {text!r}")
    return text


def as_readable_file(name: str, value) -> str:
    """An absolute path to a readable regular file (keys, known_hosts)."""
    path = os.path.expanduser(as_text(name, value))
    if not os.path.isabs(path):
        raise SaltInvocationError(f"distmon.{name} must be an absolute path, not {path!r}")
    if not os.path.isfile(path):
        raise SaltInvocationError(f"distmon.{name}: {path} does not exist or is not a file")
    if not os.access(path, os.R_OK):
        raise SaltInvocationError(f"distmon.{name}: {path} is not readable")
    return path


def as_deadline(name: str, value) -> float:
    """Seconds, a number > 0 and <= MAX_DEADLINE (``30s`` is refused, not guessed)."""
    if isinstance(value, bool):
        raise SaltInvocationError(f"distmon.{name} must be a number of seconds, not {value!r}")
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise SaltInvocationError(f"distmon.{name} must be a number of seconds, not {value!r}") from None
    if not 0 < seconds <= MAX_DEADLINE:
        raise SaltInvocationError(f"distmon.{name} must be > 0 and <= {MAX_DEADLINE:g} s, not {seconds:g}")
    return seconds


def unknown_keys_error(keys, known, where: str = "option") -> str | None:
    """The message for keys nobody reads (a typo silently ignored is worse than an error), or None."""
    unknown = sorted(str(key) for key in keys if key not in known)
    if not unknown:
        return None
    return f"distmon: unknown {where}(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"


def default_spool_dir(cachedir: str) -> str:
    return os.path.join(cachedir, "distmon", "spool")


def spool_options(raw: dict, cachedir: str) -> tuple[dict, list[str]]:
    """What spooling needs, each bad value replaced by its default; returns (options, errors).

    Never raises: a result must be spooled whatever the options say. A caller
    that wants strictness raises on a non-empty error list.
    """
    errors = []
    fallback_dir = default_spool_dir(cachedir)
    spool_dir = raw.get("spool_dir") or fallback_dir
    try:
        spool_dir = os.path.expanduser(as_text("spool_dir", spool_dir))
        if not os.path.isabs(spool_dir):
            raise SaltInvocationError(f"distmon.spool_dir must be an absolute path, not {spool_dir!r}")
    except SaltInvocationError as err:
        errors.append(f"{err} (spooled in {fallback_dir} instead)")
        spool_dir = fallback_dir
    options = {"spool_dir": os.path.normpath(spool_dir)}
    checks = {
        "deadline": lambda value: as_deadline("deadline", value),
        "spool_max_files": lambda value: as_int("spool_max_files", value, 0, 10**9),
        "spool_max_bytes": lambda value: as_int("spool_max_bytes", value, 0, 2**62),
    }
    for key, check in checks.items():
        value = raw.get(key)
        try:
            options[key] = check(DEFAULTS[key] if value is None or value == "" else value)
        except SaltInvocationError as err:
            errors.append(str(err))
            options[key] = DEFAULTS[key]
    return options, errors


def transport_options(raw: dict) -> dict:
    """What an SFTP upload needs, checked; raises SaltInvocationError naming the bad key."""
    missing = [key for key in REQUIRED_FOR_DELIVERY if not raw.get(key)]
    if missing:
        raise SaltInvocationError(
            "distmon: not configured for delivery, missing " + ", ".join(f"distmon.{key}" for key in missing)
        )
    remote_inbox = as_text("remote_inbox", raw["remote_inbox"])
    if ".." in remote_inbox.split("/"):
        raise SaltInvocationError(f"distmon.remote_inbox must not contain '..': {remote_inbox!r}")
    port = raw.get("port")
    return {
        "host": as_text("host", raw["host"]),
        "port": as_int("port", DEFAULTS["port"] if port in (None, "") else port, 1, 65535),
        "user": as_text("user", raw["user"]),
        "key": as_readable_file("key", raw["key"]),
        # Host keys are pinned: without the file there is nothing to check against,
        # and trusting on first use is exactly what this option exists to prevent.
        "known_hosts": as_readable_file("known_hosts", raw["known_hosts"]),
        "remote_inbox": posixpath.normpath(remote_inbox),
    }


def check_name(kind: str, value, opts: dict) -> str:
    """A jid or minion id that can become one path component, by Salt's rules and ours; or raise."""
    if not isinstance(value, str) or not value:
        raise SaltInvocationError(f"distmon: {kind} must be a non-empty string, not {value!r}")
    limit = MAX_JID_BYTES if kind == "jid" else MAX_ID_BYTES
    if len(value.encode("utf-8", "surrogatepass")) > limit:
        raise SaltInvocationError(f"distmon: {kind} is longer than {limit} bytes: {value[:40]!r}...")
    if any(ch in value for ch in "/\\\0") or any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
        raise SaltInvocationError(f"distmon: {kind} {value!r} contains '/', '\\', NUL or a control character")
    if value in (".", "..") or value.startswith("."):
        raise SaltInvocationError(f"distmon: {kind} {value!r} must not be '.', '..' or start with a dot")
    if not salt.utils.verify.valid_id(opts, value):
        raise SaltInvocationError(f"distmon: {kind} {value!r} is not a valid Salt id")
    if kind == "jid" and not JID_PATTERN.match(value):
        raise SaltInvocationError(f"distmon: jid {value!r} may only contain 0-9 A-Z a-z _ . -")
    if kind == "minion id" and value in RESERVED_MINION_IDS:
        raise SaltInvocationError(f"distmon: minion id {value!r} is reserved in the inbox")
    return value


def remote_dir(remote_inbox: str, name: str) -> str:
    """``<remote_inbox>/<name>``, refusing any name that would leave the inbox."""
    directory = posixpath.normpath(posixpath.join(remote_inbox, name))
    if posixpath.dirname(directory) != remote_inbox:
        raise SaltInvocationError(f"distmon: {name!r} leaves the inbox {remote_inbox}")
    return directory
