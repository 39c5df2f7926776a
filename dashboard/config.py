"""Settings of the storage host (ingester + dashboard): one home, documented defaults.

Read from the environment (``DISTMON_*``). When run from a repo root where ``make up``
wrote ``.run/stack.env``, unset variables fall back to the local stack's values, so
``python -m dashboard ...`` acts on the same database as the running app.

| variable | default | meaning |
| --- | --- | --- |
| DISTMON_DB | .run/host/distmon.sqlite | SQLite database file, or a `postgresql://user@host:port/db` URL |
| DISTMON_INBOX | .run/host/chroot/inbox | where the returner uploads (<inbox>/<minion>/<jid>.json) |
| DISTMON_ARCHIVE | <db dir>/archive | ingested files are moved here ... |
| DISTMON_ARCHIVE_MODE | archive | ... or `delete`d |
| DISTMON_QUARANTINE | <db dir>/quarantine | rejected files, each with a .reason beside it |
| DISTMON_MAX_FILE_BYTES | 20000000 | larger inbox files are quarantined unread |
| DISTMON_PUBKEYS_DIR | (none) | accepted minion public keys (the master's pki/master/minions) |
| DISTMON_REQUIRE_SIGNATURE | 0 | 1: unsigned or forged results are quarantined |
| DISTMON_ACCEPT_JUNIT | 1 | accept JUnit XML dropped in the inbox |
| DISTMON_JUNIT_SOURCES | (none) | comma-separated inbox dirs whose JUnit XML is accepted even with require_signature |
| DISTMON_INGEST | 1 | run the ingester inside the web app |
| DISTMON_SCAN_INTERVAL | 0.2 | seconds between inbox scans (the watcher's backstop) |
| DISTMON_REGISTRATION | approval | approval, open or closed |
| DISTMON_SECURE_COOKIES | auto | auto (Secure when the request is https), 1, 0 |
| DISTMON_BCRYPT_ROUNDS | 12 | bcrypt cost (read by dashboard/security.py; tests lower it, never below 4) |
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from dashboard.dialect import is_postgres

STACK_ENV = Path(".run/stack.env")


def _stack_env(path: Path = STACK_ENV) -> dict[str, str]:
    values: dict[str, str] = {}
    try:
        text = path.read_text()
    except OSError:
        return values
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, raw = line.partition("=")
        key = key.removeprefix("export ").strip()
        try:
            parts = shlex.split(raw)
        except ValueError:
            continue
        values[key] = parts[0] if parts else ""
    return values


def _flag(value: str | None, default: bool) -> bool:
    if value is None or value == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


@dataclass
class Settings:
    db_path: Path | str  # a str only for a postgresql:// URL
    inbox: Path
    archive: Path
    archive_mode: str = "archive"
    quarantine: Path = field(default_factory=Path)
    max_file_bytes: int = 20_000_000
    pubkeys_dir: Path | None = None
    require_signature: bool = False
    accept_junit: bool = True
    junit_sources: frozenset[str] = frozenset()
    ingest: bool = True
    scan_interval: float = 0.2
    registration: str = "approval"
    secure_cookies: str = "auto"

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
        env = dict(_stack_env())
        env.update(os.environ if environ is None else environ)
        db_value = env.get("DISTMON_DB") or ".run/host/distmon.sqlite"
        # A PostgreSQL URL is kept as it is; files then default under .run/host as with SQLite.
        db_path = db_value if is_postgres(db_value) else Path(db_value).resolve()
        base = Path(".run/host").resolve() if is_postgres(db_value) else db_path.parent
        registration = (env.get("DISTMON_REGISTRATION") or "approval").lower()
        if registration not in {"approval", "open", "closed"}:
            raise ValueError(f"DISTMON_REGISTRATION must be approval, open or closed, not {registration!r}")
        archive_mode = (env.get("DISTMON_ARCHIVE_MODE") or "archive").lower()
        if archive_mode not in {"archive", "delete"}:
            raise ValueError(f"DISTMON_ARCHIVE_MODE must be archive or delete, not {archive_mode!r}")
        pubkeys = env.get("DISTMON_PUBKEYS_DIR")
        return cls(
            db_path=db_path,
            inbox=Path(env.get("DISTMON_INBOX") or ".run/host/chroot/inbox").resolve(),
            archive=Path(env.get("DISTMON_ARCHIVE") or base / "archive").resolve(),
            archive_mode=archive_mode,
            quarantine=Path(env.get("DISTMON_QUARANTINE") or base / "quarantine").resolve(),
            max_file_bytes=int(env.get("DISTMON_MAX_FILE_BYTES") or 20_000_000),
            pubkeys_dir=Path(pubkeys).resolve() if pubkeys else None,
            require_signature=_flag(env.get("DISTMON_REQUIRE_SIGNATURE"), False),
            accept_junit=_flag(env.get("DISTMON_ACCEPT_JUNIT"), True),
            junit_sources=frozenset(
                name.strip() for name in (env.get("DISTMON_JUNIT_SOURCES") or "").split(",") if name.strip()
            ),
            ingest=_flag(env.get("DISTMON_INGEST"), True),
            scan_interval=float(env.get("DISTMON_SCAN_INTERVAL") or 0.2),
            registration=registration,
            secure_cookies=(env.get("DISTMON_SECURE_COOKIES") or "auto").lower(),
        )
