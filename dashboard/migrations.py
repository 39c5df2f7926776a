"""Versioned schema migrations. The app upgrades an older database at start.

PRAGMA user_version holds the applied version. Migrations are only ever appended:
never edit one that has shipped. Each runs in its own transaction.
"""

from __future__ import annotations

import sqlite3

# (version, sql). Append only.
MIGRATIONS: list[tuple[int, str]] = [
    (
        1,
        """
        CREATE TABLE minions (
            id INTEGER PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            first_seen TEXT NOT NULL,
            last_seen TEXT NOT NULL,          -- returned_at of the newest run
            last_run_id INTEGER,
            runs INTEGER NOT NULL DEFAULT 0,  -- summary counter
            grains TEXT NOT NULL DEFAULT '{}',-- JSON, from the newest run
            expected_interval INTEGER         -- seconds; NULL = learn from history
        );

        CREATE TABLE tests (
            id INTEGER PRIMARY KEY,
            nodeid TEXT NOT NULL UNIQUE,
            file TEXT NOT NULL,
            line INTEGER
        );

        CREATE TABLE runs (
            id INTEGER PRIMARY KEY,
            minion_id INTEGER NOT NULL REFERENCES minions(id),
            jid TEXT NOT NULL,
            fun TEXT NOT NULL,
            source TEXT NOT NULL DEFAULT 'distmon',  -- distmon | junit
            status TEXT NOT NULL,
            exitcode INTEGER,
            passed INTEGER NOT NULL DEFAULT 0,
            failed INTEGER NOT NULL DEFAULT 0,
            skipped INTEGER NOT NULL DEFAULT 0,
            xfailed INTEGER NOT NULL DEFAULT 0,
            xpassed INTEGER NOT NULL DEFAULT 0,
            errors INTEGER NOT NULL DEFAULT 0,
            started_at TEXT NOT NULL,
            finished_at TEXT,
            duration REAL,
            returned_at TEXT,
            ingested_at TEXT NOT NULL,
            paths TEXT NOT NULL DEFAULT '[]',   -- JSON
            args TEXT NOT NULL DEFAULT '[]',    -- JSON
            python_version TEXT,
            pytest_version TEXT,
            grains TEXT NOT NULL DEFAULT '{}',  -- JSON
            message TEXT,
            signed INTEGER NOT NULL DEFAULT 0,
            UNIQUE (minion_id, jid)
        );
        CREATE INDEX runs_started ON runs (started_at DESC, id DESC);
        CREATE INDEX runs_minion_started ON runs (minion_id, started_at DESC, id DESC);
        CREATE INDEX runs_status_started ON runs (status, started_at DESC, id DESC);
        CREATE INDEX runs_jid ON runs (jid);

        CREATE TABLE results (
            id INTEGER PRIMARY KEY,
            run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
            test_id INTEGER NOT NULL REFERENCES tests(id),
            phase TEXT NOT NULL,      -- call | setup | teardown | collect
            outcome TEXT NOT NULL,    -- passed failed skipped xfailed xpassed error
            duration REAL,
            message TEXT,
            longrepr TEXT,
            stdout TEXT,
            stderr TEXT,
            markers TEXT NOT NULL DEFAULT '[]'
        );
        CREATE INDEX results_run ON results (run_id);
        CREATE INDEX results_test ON results (test_id, run_id DESC);

        -- Summary: the latest outcome of each test on each minion (fleet matrix,
        -- flakiness) so no page scans millions of results.
        CREATE TABLE test_status (
            minion_id INTEGER NOT NULL REFERENCES minions(id),
            test_id INTEGER NOT NULL REFERENCES tests(id),
            last_run_id INTEGER NOT NULL,
            last_outcome TEXT NOT NULL,
            last_started_at TEXT NOT NULL,
            runs INTEGER NOT NULL DEFAULT 0,
            fails INTEGER NOT NULL DEFAULT 0,
            flips INTEGER NOT NULL DEFAULT 0,     -- pass<->fail changes on this minion
            first_fail_at TEXT,                   -- start of the current failing streak
            last_pass_at TEXT,
            total_duration REAL NOT NULL DEFAULT 0,
            PRIMARY KEY (minion_id, test_id)
        ) WITHOUT ROWID;
        CREATE INDEX test_status_test ON test_status (test_id);
        CREATE INDEX test_status_flips ON test_status (flips DESC);

        -- Jobs: what the runner targeted (from <inbox>/_jobs/<jid>.json manifests).
        CREATE TABLE jobs (
            jid TEXT PRIMARY KEY,
            fun TEXT,
            tgt TEXT,
            tgt_type TEXT,
            targeted TEXT NOT NULL DEFAULT '[]',  -- JSON list of minion ids
            started_at TEXT
        );

        CREATE TABLE counters (
            name TEXT PRIMARY KEY,
            value INTEGER NOT NULL
        );

        CREATE TABLE users (
            id INTEGER PRIMARY KEY,
            username TEXT NOT NULL UNIQUE COLLATE NOCASE,
            password_hash BLOB NOT NULL,
            is_admin INTEGER NOT NULL DEFAULT 0,
            status TEXT NOT NULL DEFAULT 'pending',  -- pending | active | disabled
            created_at TEXT NOT NULL
        );

        CREATE TABLE sessions (
            id_hash TEXT PRIMARY KEY,      -- sha256 of the cookie value
            user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
            csrf_token TEXT NOT NULL,
            created_at TEXT NOT NULL,
            expires_at TEXT NOT NULL
        );

        CREATE TABLE api_tokens (
            id INTEGER PRIMARY KEY,
            user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
            token_hash TEXT NOT NULL UNIQUE,  -- sha256 of the token
            name TEXT NOT NULL,
            created_at TEXT NOT NULL,
            last_used_at TEXT
        );
        """,
    ),
    (
        2,
        """
        -- Flakiness on the same code: a pass/fail flip counts in code_flips only when the run
        -- before it (the one that gave the previous verdict on that minion) had the same
        -- code_hash, both known. flips keeps counting every flip.
        ALTER TABLE runs ADD COLUMN code_hash TEXT;
        ALTER TABLE test_status ADD COLUMN last_code_hash TEXT;  -- code_hash of the latest pass/fail verdict
        ALTER TABLE test_status ADD COLUMN code_flips INTEGER NOT NULL DEFAULT 0;
        -- Partial: the flaky page reads only rows that ever flipped, in code_flips order.
        CREATE INDEX test_status_code_flips ON test_status (code_flips DESC, flips DESC) WHERE flips > 0;
        """,
    ),
]


def current_version(conn: sqlite3.Connection) -> int:
    return conn.execute("PRAGMA user_version").fetchone()[0]


def migrate(conn: sqlite3.Connection) -> int:
    """Apply every pending migration, each in its own transaction; returns the resulting version."""
    # Imported here: dashboard.db imports this module at its top.
    from dashboard.db import run_transaction

    version = current_version(conn)
    for target, sql in MIGRATIONS:
        if target <= version:
            continue
        run_transaction(conn, _apply, target, sql)
        version = current_version(conn)
    return version


def _apply(conn: sqlite3.Connection, target: int, sql: str) -> None:
    # Re-check under the write lock: another process may have migrated.
    if current_version(conn) >= target:
        return
    for statement in _split(sql):
        conn.execute(statement)
    conn.execute(f"PRAGMA user_version = {int(target)}")


def _split(sql: str) -> list[str]:
    statements, buf = [], []
    for line in sql.splitlines():
        stripped = line.split("--", 1)[0]
        buf.append(stripped)
        if stripped.rstrip().endswith(";"):
            statement = "\n".join(buf).strip()
            if statement.strip(";").strip():
                statements.append(statement)
            buf = []
    tail = "\n".join(buf).strip()
    if tail:
        statements.append(tail)
    return statements
