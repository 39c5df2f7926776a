"""Which database the tests run on: SQLite files (the default) or a real PostgreSQL server.

``pytest --db-backend=postgres`` (or ``DISTMON_TEST_DB=postgres``) runs the same tests on
PostgreSQL: the first test that needs a database starts ONE server for the session
(tools/postgres.py, fsync off, a free loopback port, its cluster under ``.run/pytest-pg/``) and
every :func:`database_location` call gets a fresh database cloned from a migrated template.
Tests that are about SQLite itself carry ``@pytest.mark.sqlite_only`` and are skipped there.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import shutil
import threading
import uuid
from pathlib import Path

from tools.postgres import PostgresServer

BACKEND_ENV = "DISTMON_TEST_DB"
BACKENDS = ("sqlite", "postgres")
REPO_ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = "distmon_template"

_lock = threading.Lock()
_server: PostgresServer | None = None
_names = itertools.count(1)


def backend() -> str:
    """``"sqlite"`` or ``"postgres"``."""
    value = os.environ.get(BACKEND_ENV, "sqlite").strip().lower() or "sqlite"
    return "postgres" if value in {"postgres", "postgresql", "pg"} else "sqlite"


def on_postgres() -> bool:
    return backend() == "postgres"


def server() -> PostgresServer:
    """The session's PostgreSQL server, started (and its template migrated) on first use."""
    global _server
    with _lock:
        if _server is None:
            from dashboard.db import connect_sync

            root = REPO_ROOT / ".run" / "pytest-pg" / uuid.uuid4().hex[:8]
            candidate = PostgresServer(root, fast=True)
            candidate.start()
            candidate.create_database(TEMPLATE)
            connect_sync(candidate.url(TEMPLATE)).close()  # migrate once; clones start migrated
            _server = candidate
        return _server


def fresh_postgres_url(key: str | None = None) -> str:
    """A migrated database on the session's server: new and empty, or the one already made for ``key``."""
    pg = server()
    name = f"t_{hashlib.sha256(key.encode()).hexdigest()[:20]}" if key else f"t{os.getpid()}_{next(_names)}"
    return pg.create_database(name, template=TEMPLATE)


def database_location(root: Path, name: str = "distmon") -> str | Path:
    """Where a test's store lives: ``root/<name>.sqlite``, or a PostgreSQL database URL that is
    the same for the same ``root`` and ``name`` (tests build settings for one root repeatedly)."""
    if on_postgres():
        return fresh_postgres_url(f"{Path(root).resolve()}/{name}")
    return Path(root) / f"{name}.sqlite"


def shutdown() -> None:
    """Stop the session's server, if one was started, and remove its cluster."""
    global _server
    with _lock:
        if _server is not None:
            _server.stop()
            shutil.rmtree(_server.root, ignore_errors=True)
            _server = None
