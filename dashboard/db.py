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

``Database("postgresql://...")`` is the PostgreSQL backend (:class:`PgDatabase`, same interface;
SQL differences live in dashboard/dialect.py). :func:`connect_sync` likewise returns a
:class:`dashboard.dialect.PgConnection` for a URL.

Both SQLite connection kinds are ``aiosqlite`` connections (pinned to 0.22.1 in requirements_host.txt):
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

from dashboard.dialect import DATABASE_ERRORS, connect_postgres, is_postgres, redact
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
    Rows are :class:`sqlite3.Row`. A ``postgresql://`` URL gives a migrated
    :class:`dashboard.dialect.PgConnection` of the same shape.
    """
    if is_postgres(path):
        conn = connect_postgres(str(path))
        migrate(conn)
        return conn
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
    """The app's database: one serialized writer, ``readers`` pooled read connections.

    ``Database(path)`` is SQLite; ``Database("postgresql://...")`` builds a :class:`PgDatabase`.
    """

    dialect = "sqlite"

    def __new__(cls, path: str | Path, **_kwargs: Any) -> Database:
        if cls is Database and is_postgres(path):
            return super().__new__(PgDatabase)
        return super().__new__(cls)

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
        await _run_in_thread(self._writer, _configure_writer)
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

    async def write(
        self, fn: Callable[..., T], *args: Any, on_rollback: Callable[[], None] | None = None,
        check_foreign_keys: bool = True,
    ) -> T:
        """Run ``fn(conn, *args)`` on the writer in :func:`run_transaction`; return its result.

        On any failure (in ``fn`` or at COMMIT) the transaction is rolled back, ``on_rollback``
        is called (callers drop caches of what the transaction wrote) and the exception
        re-raised. Writes are serialized: exactly one runs at a time.
        ``check_foreign_keys=False``: for a writer whose every reference is an id it read or
        inserted in the same transaction (the ingester): SQLite then skips looking each one up
        again (for 50,000 result rows, two primary-key probes each: ~12 % of the ingest writer's
        CPU). Foreign keys are on again for the next write.
        """
        if self._writer is None:
            raise RuntimeError("Database is not open")
        async with self._write_lock:
            transaction = functools.partial(run_transaction, on_rollback=on_rollback)
            if not check_foreign_keys:
                transaction = functools.partial(_unchecked_foreign_keys, transaction)
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


# The schema the ingest writer reads a batch's staged result rows from (dashboard/ingest/store.py
# stage_results): attached once here, since ATTACH cannot run inside a transaction.
STAGING_SCHEMA = "staging"


def _configure_writer(conn: sqlite3.Connection) -> None:
    _configure(conn)
    conn.execute(f"ATTACH DATABASE ':memory:' AS {STAGING_SCHEMA}")


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
        except DATABASE_ERRORS as err:
            log.error("ROLLBACK failed (retried before the next write): %s", err)
        finally:
            if on_rollback is not None:
                on_rollback()
        raise
    return result


def _unchecked_foreign_keys(transaction: Callable[..., T], conn: sqlite3.Connection, *args: Any) -> T:
    """``transaction(conn, *args)`` with SQLite's foreign-key checks off (the pragma only takes
    effect outside a transaction, so it is set around it), on again after, whatever happens."""
    conn.execute("PRAGMA foreign_keys = OFF")
    try:
        return transaction(conn, *args)
    finally:
        conn.execute("PRAGMA foreign_keys = ON")


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


# -- PostgreSQL ------------------------------------------------------------------------------------


class _PgThread:
    """One PostgreSQL connection and the one thread that uses it (psycopg's sync API, so the
    same plain functions of a connection run on both backends).

    A connection the server dropped (a restart, a fail-over) is replaced by ``connect()`` before
    the next call: the call that met the broken connection fails (the ingester defers its files),
    the next one works again."""

    def __init__(self, connect: Callable[[], Any]):
        import concurrent.futures

        self._connect = connect
        self.conn = connect()
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="distmon-pg")

    def _call(self, fn: Callable[..., T], *args: Any) -> T:
        if self.conn.raw.closed:
            log.warning("PostgreSQL connection was lost; reconnecting")
            self.conn = self._connect()
        return fn(self.conn, *args)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, lambda: self._call(fn, *args))

    async def close(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._executor, self.conn.close)
        self._executor.shutdown(wait=True)


class PgDatabase(Database):
    """The PostgreSQL backend: one writer connection (writes take the writer lock, see
    dashboard/dialect.py, so several ingesters and replicas write one at a time), ``readers``
    read connections with ``statement_timeout`` as the time limit."""

    dialect = "postgresql"

    def __init__(self, path: str | Path, *, readers: int = 4, read_timeout: float = 2.0):
        self.url = str(path)
        self.path = self.url  # type: ignore[assignment]  # the location, as DISTMON_DB gave it
        self.readers = max(1, int(readers))
        self.read_timeout = float(read_timeout)
        self._writer_thread: _PgThread | None = None
        self._write_lock = asyncio.Lock()
        self._all_pg_readers: list[_PgThread] = []
        self._idle_pg_readers: asyncio.Queue[_PgThread] | None = None

    def __repr__(self) -> str:
        return f"PgDatabase({redact(self.url)!r})"

    async def open(self) -> None:
        """Migrate the schema, open the writer and the readers."""
        timeout_ms = max(1, int(self.read_timeout * 1000))

        def connect_reader():
            reader = connect_postgres(self.url, dict_rows=True, statement_timeout_ms=timeout_ms)
            # A reader never writes: a stray INSERT through fetchall fails instead of racing the writer.
            reader.raw.execute("SET default_transaction_read_only = on")
            return reader

        await asyncio.to_thread(lambda: migrate_and_close(self.url))
        self._writer_thread = await asyncio.to_thread(_PgThread, lambda: connect_postgres(self.url))
        self._idle_pg_readers = asyncio.Queue()
        for _ in range(self.readers):
            thread = await asyncio.to_thread(_PgThread, connect_reader)
            self._all_pg_readers.append(thread)
            self._idle_pg_readers.put_nowait(thread)

    async def close(self) -> None:
        readers, self._all_pg_readers = self._all_pg_readers, []
        for reader in readers:
            await reader.close()
        self._idle_pg_readers = None
        if self._writer_thread is not None:
            writer, self._writer_thread = self._writer_thread, None
            await writer.close()

    async def write(
        self, fn: Callable[..., T], *args: Any, on_rollback: Callable[[], None] | None = None,
        check_foreign_keys: bool = True,  # noqa: ARG002 (PostgreSQL checks its foreign keys always)
    ) -> T:
        if self._writer_thread is None:
            raise RuntimeError("Database is not open")
        async with self._write_lock:
            transaction = functools.partial(run_transaction, on_rollback=on_rollback)
            return await self._writer_thread.run(transaction, fn, *args)

    async def _read(self, fn: Callable[..., T], sql: str, params: Sequence | Mapping, timeout: float | None) -> T:
        if self._idle_pg_readers is None:
            raise RuntimeError("Database is not open")
        limit = self.read_timeout if timeout is None else float(timeout)
        reader = await self._idle_pg_readers.get()
        try:
            return await reader.run(_pg_timed, fn, sql, params, limit, self.read_timeout)
        finally:
            if self._idle_pg_readers is not None:
                self._idle_pg_readers.put_nowait(reader)


def migrate_and_close(url: str) -> None:
    conn = connect_postgres(url)
    try:
        migrate(conn)
    finally:
        conn.close()


def _pg_timed(conn: Any, fn: Callable[..., T], sql: str, params: Sequence | Mapping, limit: float, default: float) -> T:
    import psycopg.errors

    other_limit = abs(limit - default) > 1e-9
    if other_limit:
        conn.raw.execute(f"SET statement_timeout = {max(0, int(limit * 1000))}")
    try:
        return fn(conn, sql, params)
    except psycopg.errors.QueryCanceled as err:
        raise QueryTimeout(f"query exceeded {limit:g} s: {sql[:200]}") from err
    finally:
        if other_limit:
            conn.raw.execute(f"SET statement_timeout = {max(1, int(default * 1000))}")
