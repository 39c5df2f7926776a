"""SQLite access for the storage host: ONE writer connection, a small pool of readers, WAL.

SQLite allows one writer at a time, so the app has exactly one writer connection and every
write goes through :meth:`Database.write`, which runs a plain synchronous function on that
connection inside ``BEGIN IMMEDIATE ... COMMIT``. Reads run on their own connections (WAL
lets them proceed while a write is in progress), each limited in time so one slow page can
never hold a connection for long.

.. code-block:: python

    db = Database(".run/host/distmon.sqlite", readers=4, read_timeout=2.0)
    await db.open()
    run_id = await db.write(lambda conn: conn.execute("INSERT ...").lastrowid)
    rows = await db.fetchall("SELECT * FROM runs ORDER BY started_at DESC LIMIT ?", (50,))
    await db.close()

Both connection kinds are ``aiosqlite`` connections (pinned to 0.22.1 in requirements_host.txt):
each owns one thread; :func:`_run_in_thread` is the single place that runs our own function on
that thread with the underlying ``sqlite3.Connection``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

from dashboard.migrations import migrate

T = TypeVar("T")

log = logging.getLogger(__name__)

# How long a connection waits for SQLite's lock before "database is locked" (ms). A second
# process (the CLI's prune or ingest) may hold the write lock for a moment; wait it out.
BUSY_TIMEOUT_MS = 30_000
# The progress handler runs every N virtual-machine instructions: cheap, yet fine-grained
# enough to stop a runaway query within milliseconds.
PROGRESS_STEPS = 4_000


class QueryTimeout(Exception):
    """A read query ran longer than the database's ``read_timeout`` and was interrupted."""


def _dict_row(cursor: sqlite3.Cursor, row: tuple) -> dict:
    return {column[0]: value for column, value in zip(cursor.description, row, strict=False)}


def _configure(conn: sqlite3.Connection) -> None:
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("PRAGMA foreign_keys = ON")


def connect_sync(path: str | Path) -> sqlite3.Connection:
    """Open a migrated database synchronously (CLI, tests, benchmarks).

    Autocommit mode (``isolation_level=None``): write through :func:`run_transaction`.
    Rows are :class:`sqlite3.Row`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000)
    _configure(conn)
    migrate(conn)
    conn.row_factory = sqlite3.Row
    return conn


async def _run_in_thread(conn: aiosqlite.Connection, fn: Callable[..., T], *args: Any) -> T:
    """Run ``fn(sqlite3_connection, *args)`` on ``conn``'s own thread.

    aiosqlite 0.22.1 has no public API for this; ``_execute`` queues a callable on the
    connection's worker thread and ``_conn`` is the underlying sqlite3 connection. Both are
    private, which is why the version is pinned and this is the only place that uses them.
    """
    return await conn._execute(lambda: fn(conn._conn, *args))


class Database:
    """The app's database: one serialized writer, ``readers`` pooled read connections."""

    def __init__(self, path: str | Path, *, readers: int = 4, read_timeout: float = 2.0):
        self.path = Path(path)
        self.readers = max(1, int(readers))
        self.read_timeout = float(read_timeout)
        self._writer: aiosqlite.Connection | None = None
        self._write_lock = asyncio.Lock()
        self._all_readers: list[aiosqlite.Connection] = []
        self._idle_readers: asyncio.Queue[aiosqlite.Connection] | None = None

    async def open(self) -> None:
        """Create the parent directory, migrate the schema, open the writer and the readers."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Migrations run on a plain connection first, so both pools open an up-to-date schema.
        await asyncio.to_thread(self._migrate)
        self._writer = await aiosqlite.connect(self.path, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000)
        await _run_in_thread(self._writer, _configure)
        self._idle_readers = asyncio.Queue()
        for _ in range(self.readers):
            reader = await aiosqlite.connect(self.path, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000)
            await _run_in_thread(reader, _configure_reader)
            self._all_readers.append(reader)
            self._idle_readers.put_nowait(reader)

    def _migrate(self) -> None:
        conn = sqlite3.connect(self.path, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000)
        try:
            _configure(conn)
            migrate(conn)
        finally:
            conn.close()

    async def close(self) -> None:
        """Close every connection (waits for queued work on each)."""
        readers, self._all_readers = self._all_readers, []
        for reader in readers:
            await reader.close()
        self._idle_readers = None
        if self._writer is not None:
            writer, self._writer = self._writer, None
            await writer.close()

    async def __aenter__(self) -> Database:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- writes ---------------------------------------------------------------------------

    async def write(self, fn: Callable[..., T], *args: Any, on_rollback: Callable[[], None] | None = None) -> T:
        """Run ``fn(conn, *args)`` on the writer in :func:`run_transaction`; return its result.

        On any failure (in ``fn`` or at COMMIT) the transaction is rolled back, ``on_rollback``
        is called (callers drop caches of what the transaction wrote) and the exception
        re-raised. Writes are serialized: exactly one runs at a time.
        """
        if self._writer is None:
            raise RuntimeError("Database is not open")
        async with self._write_lock:
            transaction = functools.partial(run_transaction, on_rollback=on_rollback)
            return await _run_in_thread(self._writer, transaction, fn, *args)

    # -- reads ----------------------------------------------------------------------------

    async def fetchall(
        self, sql: str, params: Sequence | Mapping = (), *, timeout: float | None = None
    ) -> list[dict]:
        """Run a read query on a reader connection; rows as dicts. Raises QueryTimeout."""
        return await self._read(_fetchall, sql, params, timeout)

    async def fetchone(self, sql: str, params: Sequence | Mapping = (), *, timeout: float | None = None) -> dict | None:
        """The first row of a read query as a dict, or None."""
        return await self._read(_fetchone, sql, params, timeout)

    async def fetchval(
        self, sql: str, params: Sequence | Mapping = (), default: Any = None, *, timeout: float | None = None
    ) -> Any:
        """The first column of the first row, or ``default`` when there is no row (or it is NULL)."""
        row = await self._read(_fetchone, sql, params, timeout)
        if not row:
            return default
        value = next(iter(row.values()))
        return default if value is None else value

    async def _read(self, fn: Callable[..., T], sql: str, params: Sequence | Mapping, timeout: float | None) -> T:
        if self._idle_readers is None:
            raise RuntimeError("Database is not open")
        limit = self.read_timeout if timeout is None else float(timeout)
        reader = await self._idle_readers.get()
        try:
            return await _run_in_thread(reader, _timed, fn, sql, params, limit)
        finally:
            if self._idle_readers is not None:
                self._idle_readers.put_nowait(reader)


def _configure_reader(conn: sqlite3.Connection) -> None:
    _configure(conn)
    conn.row_factory = _dict_row
    # A reader never writes: a stray INSERT through fetchall fails instead of racing the writer.
    conn.execute("PRAGMA query_only = ON")


def run_transaction(
    conn: sqlite3.Connection, fn: Callable[..., T], *args: Any, on_rollback: Callable[[], None] | None = None,
    **kwargs: Any,
) -> T:
    """Run ``fn(conn, *args, **kwargs)`` inside ``BEGIN IMMEDIATE ... COMMIT``: the one way anything writes.

    COMMIT is inside the try: when it fails (disk full, I/O error, a deferred constraint) SQLite
    may keep the transaction open, and a writer left inside it would defer every later write.
    On any failure the transaction is rolled back, then ``on_rollback()`` runs so the caller can
    forget what it cached about rows of this transaction (SQLite reuses the row ids of
    rolled-back rows), and the error is re-raised. ``conn`` must be in autocommit mode
    (``isolation_level=None``), as :func:`connect_sync` and :class:`Database` open it.
    """
    if conn.in_transaction:
        # Only a ROLLBACK that itself failed leaves one behind: end it rather than nest in it.
        log.warning("a transaction was left open on the writer; rolling it back")
        conn.execute("ROLLBACK")
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = fn(conn, *args, **kwargs)
        conn.execute("COMMIT")
    except BaseException:
        try:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        except sqlite3.Error as err:
            log.error("ROLLBACK failed (retried before the next write): %s", err)
        finally:
            if on_rollback is not None:
                on_rollback()
        raise
    return result


def _timed(conn: sqlite3.Connection, fn: Callable[..., T], sql: str, params: Sequence | Mapping, limit: float) -> T:
    deadline = time.monotonic() + limit if limit > 0 else None

    def over_deadline() -> int:
        return 1 if deadline is not None and time.monotonic() > deadline else 0

    conn.set_progress_handler(over_deadline, PROGRESS_STEPS)
    try:
        return fn(conn, sql, params)
    except sqlite3.OperationalError as err:
        if "interrupted" in str(err) and deadline is not None and time.monotonic() > deadline:
            raise QueryTimeout(f"query exceeded {limit:g} s: {sql[:200]}") from err
        raise
    finally:
        conn.set_progress_handler(None, 0)


def _fetchall(conn: sqlite3.Connection, sql: str, params: Sequence | Mapping) -> list[dict]:
    return conn.execute(sql, params).fetchall()


def _fetchone(conn: sqlite3.Connection, sql: str, params: Sequence | Mapping) -> dict | None:
    return conn.execute(sql, params).fetchone()
