"""Move a SQLite store into PostgreSQL: ``python -m dashboard migrate-to postgresql://...``.

For the day one storage host is not enough (docs/scaling.md). The target database is created
and migrated by the same migrations as the source; it must hold no runs and no users yet. Every
table the two schemas share is copied with ``COPY`` (parents before children, following the
foreign keys), ids included; identity sequences are then moved past the copied ids. ``results``
gets its partition key (the run's ``started_at``) on the way, into monthly partitions. The
distinct failure texts (``failure_texts``) are copied like any table; SQLite's full-text index of
them (``failure_text_search``) is not: PostgreSQL keeps their words in a generated column.
Everything is one transaction on the target: a failure leaves it as it was.

.. code-block:: bash

    python -m dashboard --db /var/lib/distmon/distmon.sqlite migrate-to postgresql://distmon@db1/distmon
    # then point every storage host's DISTMON_DB at the URL and restart them

Stop the ingester (and the app) on the source first: what arrives during the copy stays in
the SQLite file only.
"""

# Table and column names here come from the two databases' own catalogs, always double-quoted;
# values are bound or streamed by COPY.
# ruff: noqa: S608

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from dashboard.db import connect_sync, run_transaction
from dashboard.dialect import (
    analyze,
    connect_postgres,
    ensure_results_partitions,
    is_postgres,
    move_sequences,
    redact,
)

# SQLite-only objects: the FTS5 index and its shadow tables, SQLite's own tables.
_SKIP_PREFIXES = ("sqlite_", "failure_text_search")
COPY_CHUNK = 5000


class MigrateError(Exception):
    """The copy cannot start (bad source or target); the message says why."""


def _tables_in_dependency_order(source: sqlite3.Connection, wanted: set[str]) -> list[str]:
    parents: dict[str, set[str]] = {}
    for table in wanted:
        parents[table] = {row[2] for row in source.execute(f'PRAGMA foreign_key_list("{table}")')} & wanted
        parents[table].discard(table)
    ordered: list[str] = []
    while parents:
        ready = sorted(table for table, needs in parents.items() if not needs - set(ordered))
        if not ready:  # a cycle: keep going in name order (the copy runs with constraints checked at the end)
            ready = sorted(parents)[:1]
        for table in ready:
            ordered.append(table)
            del parents[table]
    return ordered


def _source_tables(source: sqlite3.Connection) -> list[str]:
    return [
        row[0]
        for row in source.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
        if not row[0].startswith(_SKIP_PREFIXES)
    ]


def _columns(conn: Any, table: str, postgres: bool) -> list[str]:
    if postgres:
        rows = conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema() "
            "AND table_name = ? AND is_generated = 'NEVER' ORDER BY ordinal_position",  # (failure_texts.search)
            (table,),
        ).fetchall()
        return [row[0] for row in rows]
    return [row[1] for row in conn.execute(f'PRAGMA table_info("{table}")')]


def _copy_table(source: sqlite3.Connection, target: Any, table: str, columns: list[str], extra: str = "") -> int:
    """COPY every row of ``table`` (``columns``; ``extra``: one more column selected from the source)."""
    select_list = ", ".join(f'x."{c}"' for c in columns)
    if extra:
        select_list += f", {extra}"
        columns = [*columns, "started_at"]
        query = f'SELECT {select_list} FROM "{table}" x JOIN runs r ON r.id = x.run_id'
    else:
        query = f'SELECT {select_list} FROM "{table}" x'
    column_list = ", ".join(f'"{c}"' for c in columns)
    copied = 0
    cursor = source.execute(query)
    with target.raw.cursor().copy(f'COPY "{table}" ({column_list}) FROM STDIN') as copy:  # names from both catalogs
        while True:
            rows = cursor.fetchmany(COPY_CHUNK)
            if not rows:
                break
            for row in rows:
                copy.write_row(row)
            copied += len(rows)
    return copied


def migrate_to(source_path: str | Path, url: str) -> dict[str, int]:
    """Copy the SQLite store at ``source_path`` into the (empty) PostgreSQL database at ``url``.

    Returns rows copied per table. Raises MigrateError when the source is not a SQLite store or
    the target already holds data.
    """
    if not is_postgres(url):
        raise MigrateError(f"the target must be a postgresql:// URL, not {redact(url)!r}")
    if is_postgres(source_path) or not Path(source_path).is_file():
        raise MigrateError(f"the source must be an existing SQLite file (DISTMON_DB or --db), not {source_path!r}")
    source = connect_sync(source_path)  # migrated to the current schema first, like the target
    target = connect_postgres(url)
    try:
        from dashboard.migrations import migrate

        migrate(target)
        if target.execute("SELECT (SELECT count(*) FROM runs) + (SELECT count(*) FROM users)").fetchone()[0]:
            raise MigrateError(f"{redact(url)} already holds runs or users: migrate into an empty database")
        source_tables = _source_tables(source)
        target_tables = {
            row[0] for row in target.execute(
                "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p') AND NOT c.relispartition"
            )
        }
        shared = [t for t in source_tables if t in target_tables and t != "schema_version"]
        ordered = _tables_in_dependency_order(source, set(shared))

        def copy_all(conn) -> dict[str, int]:
            copied: dict[str, int] = {}
            # Tables the migrations filled with starting rows (counters, singletons) take the source's.
            for table in reversed(ordered):
                conn.execute(f'DELETE FROM "{table}"')
            months = [row[0] for row in source.execute("SELECT DISTINCT started_at FROM runs")]
            ensure_results_partitions(conn, months)
            for table in ordered:
                target_columns = set(_columns(conn, table, postgres=True))
                columns = [c for c in _columns(source, table, postgres=False) if c in target_columns]
                extra = "r.started_at" if table == "results" and "started_at" in target_columns else ""
                if extra:
                    columns = [c for c in columns if c != "started_at"]
                copied[table] = _copy_table(source, conn, table, columns, extra)
            move_sequences(conn)
            analyze(conn)
            return copied

        return run_transaction(target, copy_all)
    finally:
        source.close()
        target.close()
