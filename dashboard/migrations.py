"""Versioned schema migrations, one mechanism for SQLite and PostgreSQL. The app upgrades an older
database at start.

SQLite's ``PRAGMA user_version`` (PostgreSQL: table ``schema_version``) holds the applied version.
Migrations are only ever appended: never edit one that has shipped. Each runs in its own
transaction (on PostgreSQL DDL is transactional too, and the writer lock serializes migrators).

Writing one:

- A plain SQL string, written for SQLite, serves both engines when it is portable: each
  statement goes through :func:`dashboard.dialect.render_ddl` on PostgreSQL (``INTEGER PRIMARY
  KEY`` -> identity, ``REAL`` -> ``DOUBLE PRECISION``, ``BLOB`` -> ``BYTEA``, ``WITHOUT ROWID``
  dropped, ``COLLATE NOCASE`` -> an ICU case-insensitive collation).
- Where the engines truly differ, give a dict ``{"sqlite": sql, "postgresql": sql}``; an empty
  string means "nothing to do on this engine". A value may also be a list of statements, used
  as they are (for bodies such as ``DO $$ ... $$`` that the ``;``-splitter would cut).
- A step of such a list may be a function of the connection, for a fill SQL cannot express on
  that engine (migration 10: SQLite has no SHA-256); it runs in the migration's transaction.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Union

from dashboard.dialect import PG_BOOTSTRAP, POSTGRES, SQLITE, dialect_of, grain_profile_sql, render_ddl
from dashboard.failure_texts import SEARCH_DOCUMENT_SQL, digest_sql_postgres, fill_texts_sqlite
from dashboard.lateness import FAILING_MINION_SQL

Step = Union[str, Callable[[Any], None]]  # noqa: UP007
MigrationSQL = Union[str, Sequence[str], Mapping[str, Union[str, Sequence[Step]]]]  # noqa: UP007

# Migration 5 (triage, docs/triage.md): the parts both engines share.
TRIAGE_TABLES = """
        -- Triage (docs/triage.md): failure signatures, kept at ingest so the failures page reads
        -- summaries only, never scans results.
        ALTER TABLE results ADD COLUMN signature TEXT;  -- failed/error results only
        CREATE INDEX results_signature ON results (signature, run_id DESC) WHERE signature IS NOT NULL;
        -- The signature of the test's failure in its latest run on that minion (NULL unless it failed there).
        ALTER TABLE test_status ADD COLUMN last_signature TEXT;
        CREATE INDEX test_status_signature ON test_status (last_signature) WHERE last_signature IS NOT NULL;
        CREATE TABLE signatures (
            signature TEXT PRIMARY KEY,
            exception TEXT NOT NULL,
            message TEXT NOT NULL,            -- masked
            location TEXT NOT NULL,           -- the test's own failing file:line
            first_seen TEXT NOT NULL,         -- started_at of the first run that failed with it
            first_run_id INTEGER NOT NULL,
            last_seen TEXT NOT NULL,
            last_run_id INTEGER NOT NULL,
            occurrences INTEGER NOT NULL DEFAULT 0
        ) WITHOUT ROWID;
        CREATE TABLE known_issues (
            signature TEXT PRIMARY KEY,
            note TEXT NOT NULL,
            url TEXT,
            created_by TEXT NOT NULL,
            created_at TEXT NOT NULL,
            updated_by TEXT NOT NULL,
            updated_at TEXT NOT NULL
        ) WITHOUT ROWID;
        CREATE TABLE mutes (
            id INTEGER PRIMARY KEY,
            kind TEXT NOT NULL CHECK (kind IN ('signature', 'test')),
            target TEXT NOT NULL,             -- a signature or a test nodeid
            grain TEXT,                       -- NULL: every minion; else minions whose grain matches
            grain_value TEXT,
            reason TEXT NOT NULL DEFAULT '',
            created_by TEXT NOT NULL,
            created_at TEXT NOT NULL,
            expires_at TEXT NOT NULL,
            removed_by TEXT,
            removed_at TEXT
        );
        CREATE INDEX mutes_active ON mutes (expires_at) WHERE removed_at IS NULL;
        CREATE TABLE triage_log (
            id INTEGER PRIMARY KEY,
            at TEXT NOT NULL,
            username TEXT NOT NULL,
            action TEXT NOT NULL,             -- known-issue | known-issue-removed | mute | unmute
            signature TEXT,
            test TEXT,
            detail TEXT NOT NULL DEFAULT '{}' -- JSON
        );
        CREATE INDEX triage_log_signature ON triage_log (signature, id DESC);
        -- Results stored before this migration get their signatures from a batched backfill
        -- (dashboard/failures.py): every failed result with an id up to this mark.
        CREATE TABLE signature_backfill (id INTEGER PRIMARY KEY CHECK (id = 1), pending_upto INTEGER NOT NULL);
        INSERT INTO signature_backfill (id, pending_upto) SELECT 1, COALESCE(MAX(id), 0) FROM results;
        """

# -- migration 7: fleet summaries ---------------------------------------------------------------
FLEET_TABLES_SQLITE = """
    ALTER TABLE minions ADD COLUMN last_status TEXT;               -- status of last_run_id
    ALTER TABLE minions ADD COLUMN tests INTEGER NOT NULL DEFAULT 0;    -- test_status rows
    ALTER TABLE minions ADD COLUMN failing INTEGER NOT NULL DEFAULT 0;  -- latest outcome fails
    ALTER TABLE minions ADD COLUMN passing INTEGER NOT NULL DEFAULT 0;  -- latest outcome passes
    ALTER TABLE minions ADD COLUMN late_after TEXT;  -- late when silent past this; NULL: no interval yet
    -- One row per minion and test file: the minion x file matrix.
    CREATE TABLE file_status (
        minion_id INTEGER NOT NULL REFERENCES minions(id),
        file TEXT NOT NULL,
        tests INTEGER NOT NULL DEFAULT 0,
        failing INTEGER NOT NULL DEFAULT 0,
        passing INTEGER NOT NULL DEFAULT 0,
        last_started_at TEXT,
        PRIMARY KEY (minion_id, file)
    ) WITHOUT ROWID;
    -- One row per test across minions: a test's page and /slowest.
    CREATE TABLE test_totals (
        test_id INTEGER PRIMARY KEY REFERENCES tests(id),
        minions INTEGER NOT NULL DEFAULT 0,
        runs INTEGER NOT NULL DEFAULT 0,
        fails INTEGER NOT NULL DEFAULT 0,
        flips INTEGER NOT NULL DEFAULT 0,
        code_flips INTEGER NOT NULL DEFAULT 0,
        total_duration REAL NOT NULL DEFAULT 0,
        avg_duration REAL,
        failing INTEGER NOT NULL DEFAULT 0,  -- minions where it fails now
        passing INTEGER NOT NULL DEFAULT 0,
        last_pass_at TEXT
    );
    CREATE INDEX test_totals_slowest ON test_totals (avg_duration DESC) WHERE runs > 0;
    -- The grains of each minion's newest run, one row per (grain, value); a list grain
    -- (roles) has one row per element. Groups the fleet by grain.
    CREATE TABLE minion_grains (
        grain TEXT NOT NULL,
        value TEXT NOT NULL,
        minion_id INTEGER NOT NULL REFERENCES minions(id),
        PRIMARY KEY (grain, value, minion_id)
    ) WITHOUT ROWID;
    CREATE INDEX minion_grains_minion ON minion_grains (minion_id);
    -- Open failing streaks of a test, oldest first: its "failing since".
    CREATE INDEX test_status_failing ON test_status (test_id, first_fail_at) WHERE first_fail_at IS NOT NULL;
"""
FLEET_TABLES_POSTGRESQL = """
    ALTER TABLE minions ADD COLUMN last_status TEXT;
    ALTER TABLE minions ADD COLUMN tests INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE minions ADD COLUMN failing INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE minions ADD COLUMN passing INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE minions ADD COLUMN late_after TEXT COLLATE "C";
    CREATE TABLE file_status (
        minion_id BIGINT NOT NULL REFERENCES minions(id),
        file TEXT NOT NULL,
        tests INTEGER NOT NULL DEFAULT 0,
        failing INTEGER NOT NULL DEFAULT 0,
        passing INTEGER NOT NULL DEFAULT 0,
        last_started_at TEXT,
        PRIMARY KEY (minion_id, file)
    );
    CREATE TABLE test_totals (
        test_id BIGINT PRIMARY KEY REFERENCES tests(id),
        minions INTEGER NOT NULL DEFAULT 0,
        runs INTEGER NOT NULL DEFAULT 0,
        fails INTEGER NOT NULL DEFAULT 0,
        flips INTEGER NOT NULL DEFAULT 0,
        code_flips INTEGER NOT NULL DEFAULT 0,
        total_duration DOUBLE PRECISION NOT NULL DEFAULT 0,
        avg_duration DOUBLE PRECISION,
        failing INTEGER NOT NULL DEFAULT 0,
        passing INTEGER NOT NULL DEFAULT 0,
        last_pass_at TEXT
    );
    CREATE INDEX test_totals_slowest ON test_totals (avg_duration DESC) WHERE runs > 0;
    CREATE TABLE minion_grains (
        grain TEXT NOT NULL,
        value TEXT NOT NULL,
        minion_id BIGINT NOT NULL REFERENCES minions(id),
        PRIMARY KEY (grain, value, minion_id)
    );
    CREATE INDEX minion_grains_minion ON minion_grains (minion_id);
    CREATE INDEX test_status_failing ON test_status (test_id, first_fail_at) WHERE first_fail_at IS NOT NULL;
"""
_FLEET_COUNTS = """
    DELETE FROM file_status;
    DELETE FROM test_totals;
    DELETE FROM minion_grains;
    UPDATE minions SET tests = 0, failing = 0, passing = 0, late_after = NULL,
        last_status = (SELECT r.status FROM runs r WHERE r.id = minions.last_run_id);
    UPDATE minions SET tests = s.tests, failing = s.failing, passing = s.passing FROM (
        SELECT minion_id, COUNT(*) AS tests, SUM(CASE WHEN last_outcome IN ('failed', 'error') THEN 1 ELSE 0 END) AS failing,
            SUM(CASE WHEN last_outcome IN ('passed', 'xpassed', 'xfailed') THEN 1 ELSE 0 END) AS passing
        FROM test_status GROUP BY minion_id
    ) AS s WHERE s.minion_id = minions.id;
    INSERT INTO file_status (minion_id, file, tests, failing, passing, last_started_at)
    SELECT ts.minion_id, t.file, COUNT(*), SUM(CASE WHEN ts.last_outcome IN ('failed', 'error') THEN 1 ELSE 0 END),
        SUM(CASE WHEN ts.last_outcome IN ('passed', 'xpassed', 'xfailed') THEN 1 ELSE 0 END), MAX(ts.last_started_at)
    FROM test_status ts JOIN tests t ON t.id = ts.test_id GROUP BY ts.minion_id, t.file;
    INSERT INTO test_totals (test_id, minions, runs, fails, flips, code_flips, total_duration, avg_duration,
        failing, passing, last_pass_at)
    SELECT test_id, COUNT(*), SUM(runs), SUM(fails), SUM(flips), SUM(code_flips), SUM(total_duration),
        CASE WHEN SUM(runs) > 0 THEN SUM(total_duration) / SUM(runs) END,
        SUM(CASE WHEN last_outcome IN ('failed', 'error') THEN 1 ELSE 0 END),
        SUM(CASE WHEN last_outcome IN ('passed', 'xpassed', 'xfailed') THEN 1 ELSE 0 END), MAX(last_pass_at)
    FROM test_status GROUP BY test_id;
"""
# (Re)fill the summaries of migration 7 from test_status, runs and minions.grains: migration 7 on
# an existing store, and dashboard/seed.py after its bulk insert. Idempotent. Lateness and the
# grains' JSON are where the engines differ.
FLEET_SUMMARIES = {
    "sqlite": _FLEET_COUNTS + """
    UPDATE minions SET late_after = strftime('%Y-%m-%dT%H:%M:%fZ', julianday(minions.last_seen) + MAX(2 * x.iv, x.iv + 60) / 86400.0)
    FROM (
        SELECT id, COALESCE(expected_interval, CASE WHEN runs >= 3 AND julianday(last_seen) > julianday(first_seen)
            THEN (julianday(last_seen) - julianday(first_seen)) * 86400.0 / (runs - 1) END) AS iv
        FROM minions
    ) AS x WHERE x.id = minions.id AND x.iv IS NOT NULL;
    INSERT OR IGNORE INTO minion_grains (grain, value, minion_id)
    SELECT g.key, substr(CASE WHEN e.type IS NOT NULL THEN
            CASE e.type WHEN 'true' THEN 'true' WHEN 'false' THEN 'false' ELSE CAST(e.atom AS TEXT) END
        ELSE CASE g.type WHEN 'true' THEN 'true' WHEN 'false' THEN 'false' ELSE CAST(g.atom AS TEXT) END END, 1, 200),
        m.id
    FROM minions m JOIN json_each(CASE WHEN json_valid(m.grains) THEN m.grains ELSE '{}' END) g
    LEFT JOIN json_each(CASE WHEN g.type = 'array' THEN g.value END) e
    WHERE json_type(CASE WHEN json_valid(m.grains) THEN m.grains ELSE '{}' END) = 'object'
        AND ((g.type = 'array' AND e.type IN ('text', 'integer', 'real', 'true', 'false'))
            OR g.type IN ('text', 'integer', 'real', 'true', 'false'));
    """,  # noqa: S608 (constant SQL)
    "postgresql": _FLEET_COUNTS + """
    UPDATE minions SET late_after = to_char((minions.last_seen::timestamptz
            + make_interval(secs => GREATEST(2 * x.iv, x.iv + 60))) AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
    FROM (
        SELECT id, COALESCE(expected_interval, CASE WHEN runs >= 3 AND last_seen::timestamptz > first_seen::timestamptz
            THEN extract(epoch FROM last_seen::timestamptz - first_seen::timestamptz) / (runs - 1) END) AS iv
        FROM minions
    ) AS x WHERE x.id = minions.id AND x.iv IS NOT NULL;
    INSERT INTO minion_grains (grain, value, minion_id)
    SELECT DISTINCT g.key, left(CASE WHEN jsonb_typeof(e.value) = 'string' THEN e.value #>> '{}'
        ELSE e.value::text END, 200), m.id
    FROM minions m
    CROSS JOIN LATERAL jsonb_each(CASE WHEN jsonb_typeof(m.grains::jsonb) = 'object' THEN m.grains::jsonb
        ELSE '{}'::jsonb END) g
    CROSS JOIN LATERAL jsonb_array_elements(CASE WHEN jsonb_typeof(g.value) = 'array' THEN g.value
        ELSE jsonb_build_array(g.value) END) e
    WHERE jsonb_typeof(e.value) IN ('string', 'number', 'boolean');
    """,  # noqa: S608 (constant SQL)
}

# -- migration 8: failure signature summaries ------------------------------------------------------
# The failures view (dashboard/failures.py, docs/triage.md) reads these, never test_status in bulk.
# The ingester keeps them in the transaction that changes a (minion, test) status; the signature
# backfill and prune keep them the same way; SIGNATURE_SUMMARIES rebuilds them.
SIGNATURE_TABLES = """
    -- Minions alike in every grain but those naming the machine share a profile: separating grains
    -- are counted over profiles, not over every minion.
    ALTER TABLE minions ADD COLUMN grain_profile INTEGER;
    CREATE TABLE grain_profiles (
        id INTEGER PRIMARY KEY,
        grains TEXT NOT NULL UNIQUE      -- the grains JSON without machine names (dialect.MACHINE_GRAINS)
    );
    -- Per open signature: minions whose latest outcome of one of its tests carries it, such
    -- (minion, test) pairs, and those pairs that flipped on unchanged code.
    CREATE TABLE signature_totals (
        signature TEXT PRIMARY KEY,
        minions INTEGER NOT NULL DEFAULT 0,
        pairs INTEGER NOT NULL DEFAULT 0,
        code_flip_pairs INTEGER NOT NULL DEFAULT 0
    ) WITHOUT ROWID;
    CREATE INDEX signature_totals_order ON signature_totals (minions DESC, signature);
    CREATE TABLE signature_minions (
        signature TEXT NOT NULL,
        minion_id INTEGER NOT NULL,
        tests INTEGER NOT NULL DEFAULT 0,    -- its tests failing there with this signature
        PRIMARY KEY (signature, minion_id)
    ) WITHOUT ROWID;
    CREATE INDEX signature_minions_minion ON signature_minions (minion_id);
    CREATE TABLE signature_tests (
        signature TEXT NOT NULL,
        test_id INTEGER NOT NULL,
        minions INTEGER NOT NULL DEFAULT 0,  -- minions where this test fails with this signature
        PRIMARY KEY (signature, test_id)
    ) WITHOUT ROWID;
    CREATE INDEX signature_tests_test ON signature_tests (test_id);
    CREATE TABLE signature_profiles (
        signature TEXT NOT NULL,
        profile_id INTEGER NOT NULL,
        minions INTEGER NOT NULL DEFAULT 0,  -- signature_minions rows of minions with this profile
        PRIMARY KEY (signature, profile_id)
    ) WITHOUT ROWID;
    CREATE TABLE test_profiles (
        test_id INTEGER NOT NULL,
        profile_id INTEGER NOT NULL,
        passing INTEGER NOT NULL DEFAULT 0,  -- minions with this profile whose latest outcome passes
        PRIMARY KEY (test_id, profile_id)
    ) WITHOUT ROWID;
"""


def _signature_summaries(dialect: str) -> str:
    profile = grain_profile_sql(dialect, "minions.grains")
    return f"""
    DELETE FROM signature_totals;
    DELETE FROM signature_minions;
    DELETE FROM signature_tests;
    DELETE FROM signature_profiles;
    DELETE FROM test_profiles;
    UPDATE minions SET grain_profile = NULL;
    DELETE FROM grain_profiles;
    INSERT INTO grain_profiles (grains) SELECT DISTINCT {profile} FROM minions;
    UPDATE minions SET grain_profile = (SELECT p.id FROM grain_profiles p WHERE p.grains = {profile});
    INSERT INTO signature_minions (signature, minion_id, tests)
    SELECT last_signature, minion_id, COUNT(*) FROM test_status WHERE last_signature IS NOT NULL
    GROUP BY last_signature, minion_id;
    INSERT INTO signature_tests (signature, test_id, minions)
    SELECT last_signature, test_id, COUNT(*) FROM test_status WHERE last_signature IS NOT NULL
    GROUP BY last_signature, test_id;
    INSERT INTO signature_totals (signature, minions, pairs, code_flip_pairs)
    SELECT last_signature, COUNT(DISTINCT minion_id), COUNT(*), SUM(CASE WHEN code_flips > 0 THEN 1 ELSE 0 END)
    FROM test_status WHERE last_signature IS NOT NULL GROUP BY last_signature;
    INSERT INTO signature_profiles (signature, profile_id, minions)
    SELECT sm.signature, m.grain_profile, COUNT(*) FROM signature_minions sm JOIN minions m ON m.id = sm.minion_id
    GROUP BY sm.signature, m.grain_profile;
    INSERT INTO test_profiles (test_id, profile_id, passing)
    SELECT ts.test_id, m.grain_profile, COUNT(*) FROM test_status ts JOIN minions m ON m.id = ts.minion_id
    WHERE ts.last_outcome IN ('passed', 'xpassed', 'xfailed') GROUP BY ts.test_id, m.grain_profile;
    """  # noqa: S608 (constant SQL)


# (Re)build the signature summaries of migration 8 from test_status and minions.grains. Idempotent.
SIGNATURE_SUMMARIES = {dialect: _signature_summaries(dialect) for dialect in (SQLITE, POSTGRES)}

# -- migration 9: the fleet's counts per grain value ------------------------------------------------
# One row per scope (the whole fleet: grain '' and value ''; else one (grain, value) of
# minion_grains), newest-run status ('' for none) and whether those minions are failing
# (dashboard/lateness.py): how many minions, and the sums of their tests, failing and passing.
# The fleet page's counts and its groups read these few rows instead of every minion; lateness
# depends on the clock, so late minions are counted from the index minions_late_after.
FLEET_COUNTS_TABLE = """
    CREATE TABLE fleet_counts (
        grain TEXT NOT NULL,
        value TEXT NOT NULL,
        status TEXT NOT NULL,
        failing_minion INTEGER NOT NULL,
        minions INTEGER NOT NULL DEFAULT 0,
        tests INTEGER NOT NULL DEFAULT 0,
        failing INTEGER NOT NULL DEFAULT 0,
        passing INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (grain, value, status, failing_minion)
    ) WITHOUT ROWID;
    CREATE INDEX minions_late_after ON minions (late_after) WHERE late_after IS NOT NULL;
    -- Sick hosts (dashboard/failures.py): the fleet's histogram of failing tests per minion and its
    -- most failing minions from this index; their open failures without reading their passing rows.
    CREATE INDEX minions_failing ON minions (failing, id);
    CREATE INDEX test_status_signed ON test_status (minion_id) WHERE last_signature IS NOT NULL;
    -- The fleet page lists failing minions first, by name: a walk of this index, not a sort.
    CREATE INDEX minions_failing_name ON minions (name) WHERE """ + FAILING_MINION_SQL.replace("m.", "") + """;
"""
# -- also migration 9: a job's totals over all its runs, and its runs in the job page's order --------
# One row per jid (10,000 runs in a job of a 10,000-minion fleet): the job page's header reads it
# instead of summing every run; its runs list walks runs_job_order (not passed first, then by id).
JOB_TOTALS_TABLE = """
    CREATE TABLE job_totals (
        jid TEXT PRIMARY KEY,
        runs INTEGER NOT NULL DEFAULT 0,
        passed INTEGER NOT NULL DEFAULT 0,
        failed INTEGER NOT NULL DEFAULT 0,
        skipped INTEGER NOT NULL DEFAULT 0,
        xfailed INTEGER NOT NULL DEFAULT 0,
        xpassed INTEGER NOT NULL DEFAULT 0,
        errors INTEGER NOT NULL DEFAULT 0,
        max_duration REAL,
        started_at TEXT,
        fun TEXT,
        rerun_of TEXT  -- the jid its runs re-ran, when they did
    );
    CREATE INDEX runs_job_order ON runs (jid, (CASE WHEN status IN ('passed', 'no_tests') THEN 1 ELSE 0 END), id);
"""
# The totals of the runs of some jids, as job_totals rows (append "WHERE ..." before GROUP BY's use).
JOB_TOTALS_SELECT = (
    "SELECT jid, COUNT(*), COALESCE(SUM(passed), 0), COALESCE(SUM(failed), 0), COALESCE(SUM(skipped), 0), "
    "COALESCE(SUM(xfailed), 0), COALESCE(SUM(xpassed), 0), COALESCE(SUM(errors), 0), MAX(duration), "
    "MIN(started_at), MIN(fun), MIN(rerun_of) FROM runs"
)
JOB_TOTALS_COLUMNS = (
    "jid, runs, passed, failed, skipped, xfailed, xpassed, errors, max_duration, started_at, fun, rerun_of")
JOB_TOTALS_SQL = f"""
    DELETE FROM job_totals;
    INSERT INTO job_totals ({JOB_TOTALS_COLUMNS}) {JOB_TOTALS_SELECT} GROUP BY jid;
"""  # noqa: S608 (constant SQL)

# (Re)fill fleet_counts from minions and minion_grains (migration 9, dashboard/seed.py; the
# ingester and prune keep it by deltas, dashboard/ingest/store.py FleetCountsDelta).
FLEET_COUNTS_SQL = f"""
    DELETE FROM fleet_counts;
    INSERT INTO fleet_counts (grain, value, status, failing_minion, minions, tests, failing, passing)
    SELECT s.grain, s.value, s.status, s.failing_minion, COUNT(*), SUM(s.tests), SUM(s.failing), SUM(s.passing)
    FROM (
        SELECT '' AS grain, '' AS value, COALESCE(m.last_status, '') AS status,
            CASE WHEN {FAILING_MINION_SQL} THEN 1 ELSE 0 END AS failing_minion, m.tests, m.failing, m.passing
        FROM minions m
        UNION ALL
        SELECT g.grain, g.value, COALESCE(m.last_status, ''), CASE WHEN {FAILING_MINION_SQL} THEN 1 ELSE 0 END,
            m.tests, m.failing, m.passing
        FROM minion_grains g JOIN minions m ON m.id = g.minion_id
    ) AS s GROUP BY s.grain, s.value, s.status, s.failing_minion;
"""  # noqa: S608 (constant SQL)

# -- migration 10: each distinct failure text stored and indexed once (dashboard/failure_texts.py) ---
_FAILURE_TEXTS_TABLE = (
    "CREATE TABLE failure_texts ("
    " id INTEGER PRIMARY KEY,"
    " digest BLOB NOT NULL UNIQUE,"  # failure_texts.text_digest(signature, message, longrepr)
    " signature TEXT NOT NULL,"
    " message TEXT,"
    " longrepr TEXT)"
)
# Over failing rows only: a text's results (search, prune), and failures newest first (search).
_RESULTS_TEXT_INDEXES = (
    "CREATE INDEX results_text ON results (text_id, run_id DESC) WHERE text_id IS NOT NULL",
    "CREATE INDEX results_text_newest ON results (run_id DESC, text_id) WHERE text_id IS NOT NULL",
)
FAILURE_TEXTS: dict[str, list[Step]] = {
    SQLITE: [
        _FAILURE_TEXTS_TABLE,
        "ALTER TABLE results ADD COLUMN text_id INTEGER",
        fill_texts_sqlite,
        *_RESULTS_TEXT_INDEXES,
        "DROP TABLE failure_text",  # the FTS5 table of every failed result (migration 5)
        "CREATE VIRTUAL TABLE failure_text_search USING fts5(message, longrepr, content='failure_texts', "
        "content_rowid='id')",
        "INSERT INTO failure_text_search (failure_text_search) VALUES ('rebuild')",
        # The search index follows the texts (external content: FTS5 does not see the table's writes).
        "CREATE TRIGGER failure_texts_search_insert AFTER INSERT ON failure_texts BEGIN "
        "INSERT INTO failure_text_search (rowid, message, longrepr) VALUES (new.id, new.message, new.longrepr); END",
        "CREATE TRIGGER failure_texts_search_delete AFTER DELETE ON failure_texts BEGIN "
        "INSERT INTO failure_text_search (failure_text_search, rowid, message, longrepr) "
        "VALUES ('delete', old.id, old.message, old.longrepr); END",
    ],
    POSTGRES: [
        render_ddl(_FAILURE_TEXTS_TABLE, POSTGRES),
        # The words of a text, kept with it: a search reads them, never recomputes them.
        f"ALTER TABLE failure_texts ADD COLUMN search tsvector GENERATED ALWAYS AS ({SEARCH_DOCUMENT_SQL}) STORED",
        "ALTER TABLE results ADD COLUMN text_id BIGINT",
        # Text ids in the order of their first failure, as the ingester would have made them.
        "INSERT INTO failure_texts (digest, signature, message, longrepr) "  # noqa: S608 (constant SQL)
        "SELECT digest, signature, message, longrepr FROM ("
        f"SELECT DISTINCT ON (digest) digest, id, signature, message, longrepr FROM (SELECT {digest_sql_postgres()} "
        "AS digest, id, signature, message, longrepr FROM results WHERE signature IS NOT NULL) AS failed "
        "ORDER BY digest, id) AS firsts ORDER BY id",
        "UPDATE results SET text_id = f.id FROM failure_texts f WHERE results.signature IS NOT NULL "  # noqa: S608
        f"AND f.digest = {digest_sql_postgres('results')}",
        *_RESULTS_TEXT_INDEXES,
        "DROP INDEX results_failure_text",  # the GIN index over every failed result (migration 5)
        "CREATE INDEX failure_texts_search ON failure_texts USING GIN (search)",
    ],
}

# (version, sql). Append only.
MIGRATIONS: list[tuple[int, MigrationSQL]] = [
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
    (
        3,
        {
            # PostgreSQL: results become range-partitioned by the month of their run's start, so
            # `prune` drops whole partitions (dashboard/retention.py). The partition key must be in
            # the row and in the primary key: results.started_at (the run's), C collation so its
            # order is byte order as everywhere else. Monthly partitions are created on demand
            # (dashboard.dialect.ensure_results_partitions); odd timestamps land in the default one.
            "sqlite": "",
            "postgresql": [
                r"""CREATE OR REPLACE FUNCTION distmon_results_partition(month TEXT) RETURNS VOID
                LANGUAGE plpgsql AS $$
                DECLARE
                    first_day DATE;
                    name TEXT;
                BEGIN
                    IF month IS NULL OR month !~ '^[0-9]{4}-(0[1-9]|1[0-2])$' THEN
                        RETURN;  -- an odd timestamp: its rows go to results_default
                    END IF;
                    name := 'results_p' || replace(month, '-', '_');
                    IF to_regclass(name) IS NOT NULL THEN
                        RETURN;
                    END IF;
                    first_day := to_date(month || '-01', 'YYYY-MM-DD');
                    EXECUTE format('CREATE TABLE %I PARTITION OF results FOR VALUES FROM (%L) TO (%L)',
                                   name, month, to_char(first_day + interval '1 month', 'YYYY-MM'));
                END $$""",
                "ALTER TABLE results RENAME TO results_unpartitioned",
                "ALTER INDEX results_run RENAME TO results_unpartitioned_run",
                "ALTER INDEX results_test RENAME TO results_unpartitioned_test",
                """CREATE TABLE results (
                    id BIGINT GENERATED BY DEFAULT AS IDENTITY,
                    run_id BIGINT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
                    test_id BIGINT NOT NULL REFERENCES tests(id),
                    phase TEXT NOT NULL,
                    outcome TEXT NOT NULL,
                    duration DOUBLE PRECISION,
                    message TEXT,
                    longrepr TEXT,
                    stdout TEXT,
                    stderr TEXT,
                    markers TEXT NOT NULL DEFAULT '[]',
                    started_at TEXT COLLATE "C" NOT NULL,
                    PRIMARY KEY (id, started_at)
                ) PARTITION BY RANGE (started_at)""",
                "CREATE TABLE results_default PARTITION OF results DEFAULT",
                "CREATE INDEX results_run ON results (run_id)",
                "CREATE INDEX results_test ON results (test_id, run_id DESC)",
                "SELECT distmon_results_partition(month) FROM "
                "(SELECT DISTINCT substr(started_at, 1, 7) AS month FROM runs) AS months",
                "INSERT INTO results (id, run_id, test_id, phase, outcome, duration, message, longrepr, stdout, "
                "stderr, markers, started_at) SELECT x.id, x.run_id, x.test_id, x.phase, x.outcome, x.duration, "
                "x.message, x.longrepr, x.stdout, x.stderr, x.markers, r.started_at "
                "FROM results_unpartitioned x JOIN runs r ON r.id = x.run_id",
                "SELECT setval(pg_get_serial_sequence('results', 'id'), "
                "(SELECT coalesce(max(id), 0) + 1 FROM results), false)",
                "DROP TABLE results_unpartitioned",
            ],
        },
    ),
    (
        4,
        """
        -- One row per failed login, per account and per client address (dashboard/users.py):
        -- the login limit holds across restarts and for every worker on this database.
        CREATE TABLE login_failures (
            scope TEXT NOT NULL,        -- 'account' (normalised, casefolded username) or 'address'
            key TEXT NOT NULL,
            failed_at REAL NOT NULL     -- unix time
        );
        CREATE INDEX login_failures_key ON login_failures (scope, key, failed_at);
        CREATE INDEX login_failures_time ON login_failures (failed_at);
        """,
    ),
    (
        5,
        {
            "sqlite": TRIAGE_TABLES + """
            -- Full-text search over failure messages and tracebacks (failed/error results only),
            -- filled by the ingester (dashboard/failures.py), emptied by prune.
            CREATE VIRTUAL TABLE failure_text USING fts5(message, longrepr, content='results', content_rowid='id');
            """,
            # PostgreSQL: the same search through a GIN index over the failed results' text.
            "postgresql": TRIAGE_TABLES + """
            CREATE INDEX results_failure_text ON results USING GIN (to_tsvector('simple', coalesce(message, '') || ' ' || coalesce(longrepr, ''))) WHERE signature IS NOT NULL;
            """,
        },
    ),
    (
        6,
        """
        -- Webhooks (dashboard/webhooks/): who is told, what was noticed, what was sent.
        CREATE TABLE webhooks (
            id INTEGER PRIMARY KEY,
            name TEXT NOT NULL,
            url TEXT NOT NULL,
            format TEXT NOT NULL DEFAULT 'json',   -- json | slack
            events TEXT NOT NULL DEFAULT '[]',     -- JSON list of event names it wants
            secret TEXT NOT NULL,                  -- HMAC key; shown once at creation, never served again
            enabled INTEGER NOT NULL DEFAULT 1,
            digest_hour INTEGER,                   -- UTC hour of the daily digest; NULL: no digest
            last_digest_on TEXT,                   -- UTC date of the last digest queued
            created_at TEXT NOT NULL
        );
        -- What happened, written in the SAME transaction as the results (or the check) that show it.
        CREATE TABLE outbox_events (
            id INTEGER PRIMARY KEY,
            kind TEXT NOT NULL,          -- new_failure | fixed | quarantined
            jid TEXT,
            minion TEXT,
            nodeid TEXT,
            run_id INTEGER,
            detail TEXT,                 -- failure message, quarantine reason
            signature TEXT,              -- a new failure's signature (dashboard/signatures.py)
            created_at TEXT NOT NULL,
            composed_at TEXT             -- NULL until it went into a message
        );
        CREATE INDEX outbox_events_waiting ON outbox_events (jid) WHERE composed_at IS NULL;
        CREATE INDEX outbox_events_created ON outbox_events (created_at);
        -- Jobs with a manifest: one message each once every targeted minion returned or the wait expired.
        CREATE TABLE outbox_jobs (
            jid TEXT PRIMARY KEY,
            state TEXT NOT NULL DEFAULT 'waiting',  -- waiting | done
            created_at TEXT NOT NULL,
            composed_at TEXT
        );
        CREATE INDEX outbox_jobs_waiting ON outbox_jobs (state) WHERE state = 'waiting';
        -- One message to one webhook: the exact signed body, retried until delivered or given up.
        CREATE TABLE deliveries (
            id INTEGER PRIMARY KEY,
            delivery_id TEXT NOT NULL UNIQUE,      -- X-Distmon-Delivery: receivers dedupe on it
            webhook_id INTEGER NOT NULL REFERENCES webhooks(id) ON DELETE CASCADE,
            event TEXT NOT NULL,                   -- job | group | minion_late | digest | ping
            subject TEXT,                          -- jid, minion names, ...
            summary TEXT,
            body TEXT NOT NULL,
            status TEXT NOT NULL DEFAULT 'pending',  -- pending | delivered | failed
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_at REAL NOT NULL,         -- unix time
            lease_until REAL,                      -- a sender holds it until then (crash: it comes back)
            last_status_code INTEGER,
            last_error TEXT,
            created_at TEXT NOT NULL,
            delivered_at TEXT
        );
        CREATE INDEX deliveries_due ON deliveries (next_attempt_at) WHERE status = 'pending';
        CREATE INDEX deliveries_webhook ON deliveries (webhook_id, id DESC);
        -- Late minions already told about, per lateness episode (the last_seen they went silent at).
        CREATE TABLE late_alerts (
            minion_id INTEGER PRIMARY KEY REFERENCES minions(id) ON DELETE CASCADE,
            last_seen TEXT NOT NULL,
            alerted_at TEXT NOT NULL
        );
        -- A re-run (reactor or salt-run distmon.rerun) names the jid it re-runs.
        ALTER TABLE runs ADD COLUMN rerun_of TEXT;
        CREATE INDEX runs_rerun_of ON runs (rerun_of) WHERE rerun_of IS NOT NULL;
        """,
    ),
    (
        7,
        {
            # Summaries for large fleets (10,000 minions x 500 tests): the fleet page, its groups, a
            # test's page and /slowest read these, never test_status or results in bulk. The ingester
            # (dashboard/ingest/store.py) maintains them in the transaction that stores each run.
            "sqlite": FLEET_TABLES_SQLITE + FLEET_SUMMARIES["sqlite"],
            "postgresql": FLEET_TABLES_POSTGRESQL + FLEET_SUMMARIES["postgresql"],
        },
    ),
    (
        8,
        {
            # Failure signature summaries (docs/triage.md): the failures view reads tens of rows, not
            # every failing (minion, test) pair of the fleet.
            SQLITE: SIGNATURE_TABLES + SIGNATURE_SUMMARIES[SQLITE],
            POSTGRES: SIGNATURE_TABLES + SIGNATURE_SUMMARIES[POSTGRES],
        },
    ),
    (9, FLEET_COUNTS_TABLE + FLEET_COUNTS_SQL + JOB_TOTALS_TABLE + JOB_TOTALS_SQL),
    (
        10,
        # Each distinct failure text stored and indexed for search once, not every failed result's
        # (dashboard/failure_texts.py); the stored failures get theirs here.
        FAILURE_TEXTS,
    ),
    (
        11,
        # A signature's history is read through its texts, and the newest failures of some texts per
        # text (dashboard/failures.newest_failures): of the three index entries a failed result got,
        # one is left (results_text), the dearest part of storing a failure.
        ["DROP INDEX results_signature", "DROP INDEX results_text_newest",
         "CREATE INDEX failure_texts_signature ON failure_texts (signature, id DESC)"],
    ),
]


def current_version(conn: Any) -> int:
    if dialect_of(conn) == POSTGRES:
        return conn.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()[0]
    return conn.execute("PRAGMA user_version").fetchone()[0]


def _set_version(conn: Any, version: int) -> None:
    if dialect_of(conn) == POSTGRES:
        conn.execute("DELETE FROM schema_version")
        conn.execute("INSERT INTO schema_version (version) VALUES (?)", (int(version),))
    else:
        conn.execute(f"PRAGMA user_version = {int(version)}")


def statements_for(sql: MigrationSQL, dialect: str) -> list[Step]:
    """The statements of one migration as ``dialect`` runs them."""
    if isinstance(sql, Mapping):
        sql = sql.get(dialect, "")
        if isinstance(sql, str):
            return [render_ddl(statement, dialect) for statement in _split(sql)]
        return list(sql)
    if isinstance(sql, str):
        return [render_ddl(statement, dialect) for statement in _split(sql)]
    return [render_ddl(statement, dialect) for statement in sql]


def migrate(conn: Any) -> int:
    """Apply every pending migration; returns the resulting version. ``conn`` is a sqlite3
    connection in autocommit mode or a :class:`dashboard.dialect.PgConnection`."""
    # Imported here: dashboard.db imports this module at its top.
    from dashboard.db import run_transaction

    dialect = dialect_of(conn)
    if dialect == POSTGRES:
        run_transaction(conn, _bootstrap)
    version = current_version(conn)
    for target, sql in MIGRATIONS:
        if target <= version:
            continue
        run_transaction(conn, _apply, target, statements_for(sql, dialect))
        version = current_version(conn)
    return version


def _bootstrap(conn: Any) -> None:
    for statement in PG_BOOTSTRAP:
        conn.execute(statement)


def _apply(conn: Any, target: int, statements: list[Step]) -> None:
    # Re-check under the write lock: another process may have migrated.
    if current_version(conn) >= target:
        return
    for statement in statements:
        if callable(statement):
            statement(conn)
        else:
            conn.execute(statement)
    _set_version(conn, target)


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
