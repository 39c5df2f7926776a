"""Every read query behind the dashboard's pages and JSON API.

Rules that keep each page within ~100 ms on a million results:

- Lists use keyset (cursor) pagination on an index (``runs_started``, ``runs_minion_started``,
  ``runs_status_started``, ``results_test``), never OFFSET, and always a LIMIT.
- Aggregates come from the summary tables (``minions``, ``test_status``, ``file_status``,
  ``test_totals``, ``minion_grains``, ``counters``); nothing counts over ``results``, and no page
  aggregates ``test_status`` over the whole fleet (10,000 minions x 500 tests is 5,000,000 rows).
- Pages that list minions (the fleet, a test's minions, a job's runs) show at most
  :data:`FLEET_PAGE` rows and page with a cursor.
- Charts and timelines read a bounded window (the latest ``CHART_WINDOW`` runs).

Functions return plain dicts/lists ready for both the templates and the API.
Bad input (a malformed cursor, date or id) raises :class:`InputError`, which the app turns into a 400.
"""

# SQL here is built only from constant column lists and '?' placeholders; values are always bound.
# ruff: noqa: S608

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

from dashboard.lateness import FAILING_MINION_SQL, expected_interval
from dashboard.models import format_timestamp

OUTCOMES = ("passed", "failed", "skipped", "xfailed", "xpassed", "errors")
RUN_STATUSES = ("passed", "failed", "no_tests", "usage_error", "internal_error", "interrupted", "timeout", "error")
FAILING = ("failed", "error")
CHART_WINDOW = 200
PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
DETAIL_RESULTS_LIMIT = 5000
COMPARE_RESULTS_LIMIT = 20000
# A text search on test ids looks at most this many matching tests (each is one index probe per run).
SEARCH_TESTS_LIMIT = 50
FLEET_PAGE = 100  # minions per page of the fleet, a test's minions and /api/minions (the API's default)
FLEET_PAGE_HTML = 50  # minions per page of the fleet page (each row is a row of the matrix)
JOB_PAGE = 20  # runs per page of a job: each is compared with its minion's previous run (failures.job_changes)
FAILING_NOW_SHOWN = 25  # minions listed under "failing now" on a test's page (longest streaks first)
MAX_GROUPS = 500  # grain values listed when grouping the fleet
ATTENTION = ("failing", "late", "ok")  # the fleet's order, and its state filter
GRAIN_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,100}$")

RUN_COLUMNS = (
    "r.id, r.jid, r.fun, r.source, r.status, r.exitcode, r.passed, r.failed, r.skipped, r.xfailed, "
    "r.xpassed, r.errors, r.started_at, r.finished_at, r.duration, r.returned_at, r.ingested_at, "
    "r.signed, m.name AS minion"
)


class InputError(ValueError):
    """Bad user input in a query (shown as a 400 with this message)."""


# -- helpers -------------------------------------------------------------------------------


def parse_iso(value: str | None) -> datetime | None:
    """Parse our ISO 8601 timestamps (with Z) into aware datetimes; None when absent or bad."""
    if not value:
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def iso_bound(moment: datetime) -> str:
    """A comparison bound for stored timestamps (``...T12:00:00.000000Z``): no fraction, no Z,
    so it sorts before every stored value of that same second."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S")


def parse_date_filter(value: str | None, *, end: bool = False) -> str | None:
    """A date (YYYY-MM-DD) or ISO timestamp from a filter, as an ISO string comparable with started_at.

    With ``end`` a bare date means the end of that day (exclusive bound: the next midnight).
    """
    value = (value or "").strip()
    if not value:
        return None
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
        try:
            day = datetime.strptime(value, "%Y-%m-%d").replace(tzinfo=UTC)
        except ValueError as err:
            raise InputError(f"Not a valid date: {value!r} (use YYYY-MM-DD).") from err
        return iso_bound(day + timedelta(days=1) if end else day)
    moment = parse_iso(value)
    if moment is None:
        raise InputError(f"Not a valid date: {value!r} (use YYYY-MM-DD or an ISO 8601 time).")
    return iso_bound(moment)


def like_pattern(text: str) -> str:
    """A LIKE pattern matching ``text`` anywhere, with LIKE's metacharacters escaped (ESCAPE '\\')."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def encode_cursor(*values: Any) -> str:
    raw = json.dumps(list(values), separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str | None, types: tuple[type, ...]) -> list | None:
    """Decode an opaque cursor into values of the given types, or raise InputError."""
    if not cursor:
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        values = json.loads(raw)
    except (binascii.Error, ValueError, UnicodeDecodeError) as err:
        raise InputError("Invalid cursor.") from err
    if not isinstance(values, list) or len(values) != len(types):
        raise InputError("Invalid cursor.")
    for value, kind in zip(values, types, strict=True):
        if not isinstance(value, kind) or isinstance(value, bool):
            raise InputError("Invalid cursor.")
        if isinstance(value, int) and not -(2**63) <= value < 2**63:
            raise InputError("Invalid cursor.")
    return values


def clamp_limit(limit: int | None, default: int = PAGE_SIZE) -> int:
    if limit is None:
        return default
    return max(1, min(int(limit), MAX_PAGE_SIZE))


def loads(text: str | None, default: Any) -> Any:
    if not text:
        return default
    try:
        return json.loads(text)
    except ValueError:
        return default


def run_summary(row: dict) -> dict[str, Any]:
    """A runs row (RUN_COLUMNS) as the API's run object."""
    return {
        "id": row["id"],
        "jid": row["jid"],
        "minion": row["minion"],
        "fun": row["fun"],
        "source": row["source"],
        "status": row["status"],
        "exitcode": row["exitcode"],
        "counts": {key: row[key] or 0 for key in OUTCOMES},
        "started_at": row["started_at"],
        "finished_at": row["finished_at"],
        "duration": row["duration"],
        "returned_at": row["returned_at"],
        "ingested_at": row["ingested_at"],
        "signed": bool(row["signed"]),
    }


def pass_rate(counts: dict) -> float | None:
    """passed / (passed + failed + errors), None when nothing ran that counts."""
    judged = counts.get("passed", 0) + counts.get("failed", 0) + counts.get("errors", 0)
    return None if judged == 0 else counts.get("passed", 0) / judged


# -- runs ----------------------------------------------------------------------------------


async def list_runs(
    db,
    *,
    minion: str | None = None,
    jid: str | None = None,
    status: str | None = None,
    path: str | None = None,
    since: str | None = None,
    until: str | None = None,
    q: str | None = None,
    limit: int | None = None,
    cursor: str | None = None,
) -> dict[str, Any]:
    """Runs newest first with filters; returns {"runs": [...], "next": cursor or None}."""
    limit = clamp_limit(limit)
    where, params = [], []
    if minion:
        where.append("r.minion_id = (SELECT id FROM minions WHERE name = ?)")
        params.append(minion)
    if jid:
        where.append("r.jid = ?")
        params.append(jid)
    if status:
        if status not in RUN_STATUSES:
            raise InputError(f"Unknown status {status!r}; one of: {', '.join(RUN_STATUSES)}.")
        where.append("r.status = ?")
        params.append(status)
    if path:
        where.append("r.paths LIKE ? ESCAPE '\\'")
        params.append(like_pattern(path))
    since_iso = parse_date_filter(since)
    until_iso = parse_date_filter(until, end=True)
    if since_iso:
        where.append("r.started_at >= ?")
        params.append(since_iso)
    if until_iso:
        where.append("r.started_at < ?")
        params.append(until_iso)
    if q:
        # A run matches when it contains a test whose id contains q, or a failure whose message
        # or traceback contains every word of q (FTS5, dashboard/failures.py).
        test_ids = [
            row["id"]
            for row in await db.fetchall(
                "SELECT id FROM tests WHERE nodeid LIKE ? ESCAPE '\\' ORDER BY id LIMIT ?",
                (like_pattern(q), SEARCH_TESTS_LIMIT),
            )
        ]
        from dashboard.failures import search_run_ids

        try:
            text_runs = await search_run_ids(db, q)
        except InputError:
            text_runs = []  # no word to search for (only punctuation): test ids only
        if not test_ids and not text_runs:
            return {"runs": [], "next": None}
        either = []
        if test_ids:
            marks = ",".join("?" * len(test_ids))
            either.append(f"EXISTS (SELECT 1 FROM results x WHERE x.test_id IN ({marks}) AND x.run_id = r.id)")
            params.extend(test_ids)
        if text_runs:
            either.append(f"r.id IN ({','.join('?' * len(text_runs))})")
            params.extend(text_runs)
        where.append("(" + " OR ".join(either) + ")")
    after = decode_cursor(cursor, (str, int))
    if after:
        where.append("(r.started_at, r.id) < (?, ?)")
        params.extend(after)
    # CROSS JOIN keeps SQLite reading runs first, newest first by an index, and stopping at the
    # limit: without statistics of runs it scanned every minion and sorted (10 ms at 10,000).
    sql = f"SELECT {RUN_COLUMNS} FROM runs r CROSS JOIN minions m WHERE " + " AND ".join(["m.id = r.minion_id", *where])
    sql += " ORDER BY r.started_at DESC, r.id DESC LIMIT ?"
    rows = await db.fetchall(sql, (*params, limit + 1))
    next_cursor = None
    if len(rows) > limit:
        rows = rows[:limit]
        next_cursor = encode_cursor(rows[-1]["started_at"], rows[-1]["id"])
    return {"runs": [run_summary(row) for row in rows], "next": next_cursor}


async def runs_after(db, after_id: int, limit: int = 50) -> list[dict[str, Any]]:
    """Runs ingested after run id ``after_id`` (live updates), oldest first."""
    rows = await db.fetchall(
        f"SELECT {RUN_COLUMNS} FROM runs r JOIN minions m ON m.id = r.minion_id "
        "WHERE r.id > ? ORDER BY r.id LIMIT ?",
        (after_id, clamp_limit(limit)),
    )
    return [run_summary(row) for row in rows]


async def latest_run_id(db) -> int:
    return await db.fetchval("SELECT MAX(id) FROM runs", default=0)


async def get_run(db, run_id: int) -> dict[str, Any] | None:
    """One run with its grains, paths, args, failures (full detail) and every result (bounded)."""
    row = await db.fetchone(
        f"SELECT {RUN_COLUMNS}, r.minion_id, r.paths, r.args, r.python_version, r.pytest_version, r.grains, "
        "r.message, r.rerun_of FROM runs r JOIN minions m ON m.id = r.minion_id WHERE r.id = ?",
        (run_id,),
    )
    if row is None:
        return None
    run = run_summary(row)
    # The same minion's run before this one (index runs_minion_started): "compare with previous".
    run["previous_id"] = await db.fetchval(
        "SELECT id FROM runs WHERE minion_id = ? AND (started_at, id) < (?, ?) "
        "ORDER BY started_at DESC, id DESC LIMIT 1",
        (row["minion_id"], row["started_at"], row["id"]),
    )
    run.update(
        paths=loads(row["paths"], []),
        args=loads(row["args"], []),
        python_version=row["python_version"],
        pytest_version=row["pytest_version"],
        grains=loads(row["grains"], {}),
        message=row["message"],
        pass_rate=pass_rate(run["counts"]),
        # A re-run of failures (reactor, salt-run distmon.rerun) links to its original job's run here...
        rerun_of=row["rerun_of"],
        rerun_of_run=await db.fetchval(
            "SELECT id FROM runs WHERE jid = ? AND minion_id = ?", (row["rerun_of"], row["minion_id"])
        ) if row["rerun_of"] else None,
        # ... and an original lists its re-runs on the same minion (index runs_rerun_of).
        reruns=await db.fetchall(
            "SELECT id, jid, status FROM runs WHERE rerun_of = ? AND minion_id = ? ORDER BY started_at, id LIMIT 20",
            (row["jid"], row["minion_id"]),
        ),
    )
    results = await db.fetchall(
        "SELECT x.id, t.nodeid, t.file, t.line, x.phase, x.outcome, x.duration, x.message, x.markers "
        "FROM results x JOIN tests t ON t.id = x.test_id WHERE x.run_id = ? ORDER BY x.id LIMIT ?",
        (run_id, DETAIL_RESULTS_LIMIT + 1),
    )
    run["results_truncated"] = len(results) > DETAIL_RESULTS_LIMIT
    for result in results[:DETAIL_RESULTS_LIMIT]:
        result["markers"] = loads(result["markers"], [])
    run["results"] = results[:DETAIL_RESULTS_LIMIT]
    run["failures"] = await db.fetchall(
        "SELECT x.id, t.nodeid, t.file, t.line, x.phase, x.outcome, x.duration, x.message, x.longrepr, "
        "x.stdout, x.stderr, x.signature FROM results x JOIN tests t ON t.id = x.test_id "
        "WHERE x.run_id = ? AND x.outcome IN ('failed', 'error') ORDER BY x.id LIMIT 500",
        (run_id,),
    )
    return run


async def run_export(db, run_id: int) -> dict[str, Any] | None:
    """A run with every result in full (JUnit XML and JSON export)."""
    run = await get_run(db, run_id)
    if run is None:
        return None
    run["tests"] = await db.fetchall(
        "SELECT t.nodeid, t.file, t.line, x.phase AS \"when\", x.outcome, x.duration, x.message, x.longrepr, "
        "x.stdout, x.stderr, x.markers FROM results x JOIN tests t ON t.id = x.test_id "
        "WHERE x.run_id = ? ORDER BY x.id LIMIT ?",
        (run_id, COMPARE_RESULTS_LIMIT),
    )
    for test in run["tests"]:
        test["markers"] = loads(test["markers"], [])
    del run["results"], run["failures"]
    return run


# -- jobs ----------------------------------------------------------------------------------


MISSING_SHOWN = 500  # targeted minions that never returned, named on a job's page
# 1 for a run that passed, the job page's order (the expression of the index runs_job_order).
JOB_RUN_PASSED = "(CASE WHEN r.status IN ('passed', 'no_tests') THEN 1 ELSE 0 END)"


async def get_job(db, jid: str, *, cursor: str | None = None, limit: int | None = None) -> dict[str, Any] | None:
    """One salt job across minions: totals over all its runs, its runs a page at a time (those that
    did not pass first, then in the order they arrived; cursor-paginated), the targeted minions
    that never returned."""
    limit = clamp_limit(limit, JOB_PAGE)
    after = decode_cursor(cursor, (int, int))
    manifest = await db.fetchone("SELECT jid, fun, tgt, tgt_type, targeted, started_at FROM jobs WHERE jid = ?", (jid,))
    # Totals over every run of the job, kept at ingest (job_totals): one row however many minions.
    summary = await db.fetchone(
        "SELECT runs, passed, failed, skipped, xfailed, xpassed, errors, max_duration, started_at, fun, rerun_of "
        "FROM job_totals WHERE jid = ?",
        (jid,),
    ) or {"runs": 0, "max_duration": None, "started_at": None, "fun": None, "rerun_of": None,
          **dict.fromkeys(OUTCOMES, 0)}
    if manifest is None and not summary["runs"]:
        return None
    # Runs that did not pass first, then the passed ones, each by id: a walk of runs_job_order each.
    rows: list[dict] = []
    first = after[0] if after else 0
    for rank in (0, 1):
        if rank < first or len(rows) > limit:
            continue
        sql = (f"SELECT {RUN_COLUMNS} FROM runs r JOIN minions m ON m.id = r.minion_id WHERE r.jid = ? "
               f"AND {JOB_RUN_PASSED} = ?")
        params: list[Any] = [jid, rank]
        if after and rank == first:
            sql += " AND r.id > ?"
            params.append(after[1])
        found = await db.fetchall(sql + " ORDER BY r.id LIMIT ?", (*params, limit + 1 - len(rows)))
        rows.extend(row | {"passed_rank": rank} for row in found)
    next_cursor = encode_cursor(rows[limit - 1]["passed_rank"], rows[limit - 1]["id"]) if len(rows) > limit else None
    runs = [run_summary(row) for row in rows[:limit]]
    targeted = [str(name) for name in (loads(manifest["targeted"], []) if manifest else []) if isinstance(name, str | int)]
    missing: list[str] = []
    # A jid names one job: when as many minions returned as it targeted, none is missing (and the
    # names of 10,000 returned minions are not read).
    if targeted and summary["runs"] < len(set(targeted)):
        returned = {row["name"] for row in await db.fetchall(
            "SELECT m.name FROM runs r JOIN minions m ON m.id = r.minion_id WHERE r.jid = ? LIMIT 1000000", (jid,))}
        missing = sorted(name for name in set(targeted) if name not in returned)
    reruns = [row["jid"] for row in await db.fetchall(
        "SELECT DISTINCT jid FROM runs WHERE rerun_of = ? ORDER BY jid LIMIT 50", (jid,))]
    return {
        "jid": jid,
        "rerun_of": summary["rerun_of"],
        "reruns": reruns,
        "fun": manifest["fun"] if manifest else summary["fun"],
        "tgt": manifest["tgt"] if manifest else None,
        "tgt_type": manifest["tgt_type"] if manifest else None,
        "started_at": manifest["started_at"] if manifest else summary["started_at"],
        "targeted": targeted[:MISSING_SHOWN],
        "targeted_count": len(targeted),
        "missing": missing[:MISSING_SHOWN],
        "missing_count": len(missing),
        "returned": summary["runs"],
        "runs": runs,
        "next": next_cursor,
        "paged": bool(after),
        "counts": {key: summary[key] or 0 for key in OUTCOMES},
        "max_duration": summary["max_duration"],
    }


# -- minions and the fleet -----------------------------------------------------------------


def _minion_state(row: dict, now: datetime) -> dict[str, Any]:
    interval = expected_interval(row["first_seen"], row["last_seen"], row["runs"], row.get("expected_interval"))
    last = parse_iso(row["last_seen"])
    age = (now - last).total_seconds() if last else None
    # The rule of dashboard/lateness.py; fleet-wide counts and order use the stored late_after.
    late = bool(interval and age is not None and age > max(2 * interval, interval + 60))
    counts = {key: row.get(key) or 0 for key in OUTCOMES}
    return {
        "name": row["name"],
        "first_seen": row["first_seen"],
        "last_seen": row["last_seen"],
        "runs": row["runs"],
        "last_run_id": row["last_run_id"],
        "last_status": row.get("status"),
        "last_counts": counts,
        "pass_rate": pass_rate(counts) if row.get("status") else None,
        "expected_interval": interval,
        "silent_for": age,
        "late": late,
    }


_MINION_SQL = (
    "SELECT m.id, m.name, m.first_seen, m.last_seen, m.last_run_id, m.runs, m.expected_interval, m.late_after, "
    "r.status, r.passed, r.failed, r.skipped, r.xfailed, r.xpassed, r.errors "
    "FROM minions m LEFT JOIN runs r ON r.id = m.last_run_id"
)


async def list_minions(db, limit: int | None = None, cursor: str | None = None) -> dict[str, Any]:
    """Minions by name, a page at a time: {"minions": [...], "next": cursor or None}."""
    limit = clamp_limit(limit, FLEET_PAGE)
    after = decode_cursor(cursor, (str,))
    now = datetime.now(UTC)
    if after:
        rows = await db.fetchall(f"{_MINION_SQL} WHERE m.name > ? ORDER BY m.name LIMIT ?", (after[0], limit + 1))
    else:
        rows = await db.fetchall(f"{_MINION_SQL} ORDER BY m.name LIMIT ?", (limit + 1,))
    next_cursor = encode_cursor(rows[limit - 1]["name"]) if len(rows) > limit else None
    return {"minions": [_minion_state(row, now) | {"id": row["id"]} for row in rows[:limit]], "next": next_cursor}


async def late_minion_names(db, now: datetime | None = None, limit: int = 1000) -> list[str]:
    """Names of the minions late at ``now``, by name (reads every minion: for background jobs)."""
    now = now or datetime.now(UTC)
    rows = await db.fetchall(
        "SELECT name, first_seen, last_seen, last_run_id, runs, expected_interval FROM minions ORDER BY name",
        timeout=30,
    )
    return [row["name"] for row in rows if _minion_state(row, now)["late"]][:limit]


def check_grain(name: str) -> str:
    """A grain name to group by (top-level key), or InputError."""
    if not GRAIN_NAME.match(name or ""):
        raise InputError("A grain name is 1-100 letters, digits, '_', '.', ':' or '-'.")
    return name


def _fleet_scope(group: str | None, value: str | None) -> tuple[str, list]:
    """FROM and the start of WHERE of the minions in view: the whole fleet, or one grain value's minions.

    CROSS JOIN keeps SQLite reading minions first (by the index of the state asked for) and
    probing minion_grains' primary key, so a page stops after its rows, whatever the value's size.
    """
    if group and value is not None:
        return ("minions m CROSS JOIN minion_grains g WHERE g.minion_id = m.id AND g.grain = ? AND g.value = ? AND",
                [group, value])
    return "minions m WHERE", []


async def grain_names(db, limit: int = 200) -> list[str]:
    """The grains minions have (one index seek per name: a loose scan of minion_grains)."""
    rows = await db.fetchall(
        "WITH RECURSIVE names(grain) AS (SELECT MIN(grain) FROM minion_grains UNION ALL "
        "SELECT (SELECT MIN(grain) FROM minion_grains WHERE grain > names.grain) FROM names "
        "WHERE names.grain IS NOT NULL) SELECT grain FROM names WHERE grain IS NOT NULL LIMIT ?",
        (limit,),
    )
    return [row["grain"] for row in rows]


# Late: not failing, and silent past the stored late_after (index minions_late_after: the cost
# grows with the minions past it, not with the fleet).
MINION_LATE = f"NOT {FAILING_MINION_SQL} AND m.late_after < ?"


async def fleet_groups(db, group: str, now_iso: str) -> dict[str, Any]:
    """One row per value of grain ``group`` (each element of a list grain): minions, failing, pass rate.

    From fleet_counts (a few rows per value); the late minions per value from the late ones only.
    """
    rows = await db.fetchall(
        "SELECT value, SUM(minions) AS minions, SUM(CASE WHEN failing_minion = 1 THEN minions ELSE 0 END) "
        "AS failing_minions, SUM(tests) AS tests, SUM(failing) AS failing, SUM(passing) AS passing "
        "FROM fleet_counts WHERE grain = ? GROUP BY value LIMIT 1000000",
        (group,),
    )
    late = {row["value"]: row["minions"] for row in await db.fetchall(
        "SELECT g.value, COUNT(*) AS minions FROM minions m CROSS JOIN minion_grains g WHERE g.minion_id = m.id "
        f"AND g.grain = ? AND {MINION_LATE} GROUP BY g.value LIMIT 1000000",
        (group, now_iso),
    )}
    for row in rows:
        row["late_minions"] = late.get(row["value"], 0)
        judged = (row["passing"] or 0) + (row["failing"] or 0)
        row["pass_rate"] = (row["passing"] or 0) / judged if judged else None
    rows.sort(key=lambda row: (-row["failing_minions"], -row["late_minions"], row["value"]))
    return {"rows": rows[:MAX_GROUPS], "truncated": len(rows) > MAX_GROUPS}


# The three states of the fleet's order, each read by name from its own index walk.
_STATE_FILTERS = (FAILING_MINION_SQL, MINION_LATE,
                  f"NOT {FAILING_MINION_SQL} AND (m.late_after IS NULL OR m.late_after >= ?)")
_FLEET_COLUMNS = ("m.id, m.name, m.first_seen, m.last_seen, m.last_run_id, m.runs, m.expected_interval, "
                  "m.late_after, m.last_status AS status, m.tests, m.failing, m.passing")


async def _nothing(value: Any = None) -> Any:
    """An awaitable of ``value``: a read a page does not need, in a gather."""
    return value


async def _fleet_page(db, scope: str, scope_params: list, now_iso: str, state: str | None,
                      after: list | None, limit: int) -> list[dict]:
    """Up to ``limit`` minions of the scope after the cursor, failing first, then late, then ok, by name."""
    rows: list[dict] = []
    first = after[0] if after else 0
    for rank, condition in enumerate(_STATE_FILTERS):
        if rank < first or (state and ATTENTION[rank] != state) or len(rows) >= limit:
            continue
        params: list[Any] = [*scope_params] + ([now_iso] if rank else [])
        sql = f"SELECT {_FLEET_COLUMNS} FROM {scope} {condition}"
        if after and rank == first:
            sql += " AND m.name > ?"
            params.append(after[1])
        found = await db.fetchall(sql + " ORDER BY m.name LIMIT ?", (*params, limit - len(rows)))
        rows.extend(row | {"attention": rank} for row in found)
    return rows


async def fleet(
    db,
    *,
    group: str | None = None,
    value: str | None = None,
    state: str | None = None,
    cursor: str | None = None,
    limit: int | None = None,
    max_files: int = 60,
) -> dict[str, Any]:
    """The fleet overview for a fleet of any size, from summary tables only.

    Counts per state (failing, late, ok) and per newest-run status; minions a page at a time,
    those that need attention first (failing, then late, then the rest, each by name); the
    minion x test file matrix of that page; with ``group`` a grain, one row per value of it
    (``value`` then narrows everything to that value's minions); ``state`` keeps one state.
    A minion is ``late`` exactly when its ``attention`` is late (dashboard/lateness.py), and
    ``counts.late`` counts those; ``overdue`` also flags failing minions silent past due.
    """
    limit = clamp_limit(limit, FLEET_PAGE)
    if group:
        check_grain(group)
    if state and state not in ATTENTION:
        raise InputError(f"Unknown state {state!r}; one of: {', '.join(ATTENTION)}.")
    after = decode_cursor(cursor, (int, str))
    if after and not 0 <= after[0] < len(ATTENTION):
        raise InputError("Invalid cursor.")
    now = datetime.now(UTC)
    now_iso = format_timestamp(now)
    scope, scope_params = _fleet_scope(group, value)
    scoped = group and value is not None
    # The reads that do not depend on each other go out together (one round trip of time on
    # PostgreSQL instead of one per query; the pool has several readers).
    count_rows, late_minions, rows, counter_rows, recent, grains, groups = await asyncio.gather(
        db.fetchall("SELECT status, failing_minion, minions, tests, failing, passing FROM fleet_counts "
                    "WHERE grain = ? AND value = ? LIMIT 10000", (group, value) if scoped else ("", "")),
        db.fetchval(f"SELECT COUNT(*) FROM {scope} {MINION_LATE}", (*scope_params, now_iso), default=0),
        _fleet_page(db, scope, scope_params, now_iso, state, after, limit + 1),
        db.fetchall("SELECT name, value FROM counters LIMIT 100"),
        list_runs(db, limit=15),
        grain_names(db),
        fleet_groups(db, group, now_iso) if group and value is None else _nothing(),
    )
    by_status: dict[str, int] = {}
    for row in count_rows:
        by_status[row["status"] or "none"] = by_status.get(row["status"] or "none", 0) + row["minions"]
    totals = {key: sum(row[key] for row in count_rows) for key in ("minions", "tests", "failing", "passing")}
    counts = {
        "minions": totals["minions"],
        "failing": sum(row["minions"] for row in count_rows if row["failing_minion"]),
        "late": late_minions or 0,
    }
    counts["ok"] = counts["minions"] - counts["failing"] - counts["late"]
    next_cursor = None
    if len(rows) > limit:
        rows = rows[:limit]
        next_cursor = encode_cursor(rows[-1]["attention"], rows[-1]["name"])
    # The newest run's counts of the page's minions (one primary-key lookup each), and their
    # matrix cells, together.
    run_ids = [row["last_run_id"] for row in rows if row["last_run_id"]]
    ids = [row["id"] for row in rows]
    run_rows, cells = await asyncio.gather(
        db.fetchall(f"SELECT id, {', '.join(OUTCOMES)} FROM runs WHERE id IN ({','.join('?' * len(run_ids))})",
                    run_ids) if run_ids else _nothing([]),
        db.fetchall(f"SELECT minion_id, file, tests, failing, passing, last_started_at FROM file_status "
                    f"WHERE minion_id IN ({','.join('?' * len(ids))}) LIMIT 100000", ids) if ids else _nothing([]),
    )
    last_counts = {run["id"]: run for run in run_rows}
    minions = []
    for row in rows:
        row = dict(row) | {key: value for key, value in last_counts.get(row["last_run_id"], {}).items() if key != "id"}
        attention = ATTENTION[row["attention"]]
        minion = _minion_state(row, now) | {
            "id": row["id"], "attention": attention, "late": attention == "late",
            "overdue": bool(row["late_after"] and row["late_after"] < now_iso)}
        judged = (row["passing"] or 0) + (row["failing"] or 0)
        # The minion's pass rate over the latest outcome of each of its tests.
        minion.update(tests=row["tests"], failing=row["failing"], passing=row["passing"],
                      pass_rate=(row["passing"] or 0) / judged if judged else None)
        minions.append(minion)
    matrix: dict[int, dict[str, dict]] = {}
    files: dict[str, int] = {}
    for cell in cells:
        files[cell["file"]] = files.get(cell["file"], 0) + cell["tests"]
        state_name = "fail" if cell["failing"] else ("pass" if cell["passing"] else "skip")
        matrix.setdefault(cell["minion_id"], {})[cell["file"]] = {**cell, "state": state_name}
    shown_files = sorted(files)[:max_files]
    judged = totals["passing"] + totals["failing"]
    counters = {row["name"]: row["value"] for row in counter_rows}
    return {
        "counts": counts,
        "by_status": dict(sorted(by_status.items(), key=lambda item: -item[1])),
        "group": group,
        "value": value,
        "state": state,
        "groups": groups,
        "grains": grains,
        "minions": minions,
        "next": next_cursor,
        "paged": bool(after),
        "files": shown_files,
        "files_hidden": max(0, len(files) - len(shown_files)),
        "matrix": {m["name"]: matrix.get(m["id"], {}) for m in minions},
        "pass_rate": totals["passing"] / judged if judged else None,
        "tests_tracked": totals["tests"],
        "failing": totals["failing"],
        # The page's late minions: those counted in counts.late (attention "late").
        "late": [m["name"] for m in minions if m["late"]],
        "counters": counters,
        "recent_runs": recent["runs"],
        "latest_run_id": max((run["id"] for run in recent["runs"]), default=0),
    }


async def get_minion(db, name: str, window: int = CHART_WINDOW) -> dict[str, Any] | None:
    """A minion: state, grains, its latest ``window`` runs (chronological, for charts)."""
    row = await db.fetchone(f"{_MINION_SQL} WHERE m.name = ?", (name,))
    if row is None:
        return None
    minion = _minion_state(row, datetime.now(UTC))
    grains_row = await db.fetchone("SELECT grains FROM minions WHERE id = ?", (row["id"],))
    minion["grains"] = loads(grains_row["grains"] if grains_row else None, {})
    rows = await db.fetchall(
        f"SELECT {RUN_COLUMNS} FROM runs r JOIN minions m ON m.id = r.minion_id "
        "WHERE r.minion_id = ? ORDER BY r.started_at DESC, r.id DESC LIMIT ?",
        (row["id"], window),
    )
    runs = [run_summary(r) for r in rows]
    minion["runs_recent"] = runs
    minion["chart"] = [
        {"id": run["id"], "started_at": run["started_at"], "pass_rate": pass_rate(run["counts"]),
         "duration": run["duration"], "status": run["status"]}
        for run in reversed(runs)
    ]
    minion["failing_tests"] = await db.fetchall(
        "SELECT t.nodeid, ts.last_outcome, ts.first_fail_at, ts.last_run_id, ts.last_signature FROM test_status ts "
        "JOIN tests t ON t.id = ts.test_id WHERE ts.minion_id = ? AND ts.last_outcome IN ('failed', 'error') "
        "ORDER BY t.nodeid LIMIT 200",
        (row["id"],),
    )
    return minion


# -- tests ---------------------------------------------------------------------------------


async def search_tests(db, q: str, limit: int = 100) -> list[dict[str, Any]]:
    return await db.fetchall(
        "SELECT id, nodeid, file, line FROM tests WHERE nodeid LIKE ? ESCAPE '\\' ORDER BY nodeid LIMIT ?",
        (like_pattern(q or ""), clamp_limit(limit)),
    )


async def get_test(
    db, nodeid: str, window: int = CHART_WINDOW, *, cursor: str | None = None, limit: int | None = None
) -> dict[str, Any] | None:
    """One test id across minions and time: totals, per-minion status a page at a time, timeline.

    Totals come from ``test_totals``; minions page in the order they first reported (minion id,
    the index test_status_test: no sort of 10,000 rows), those where it fails now are listed
    apart (oldest failing streak first, at most a page).
    """
    test = await db.fetchone("SELECT id, nodeid, file, line FROM tests WHERE nodeid = ?", (nodeid,))
    if test is None:
        return None
    limit = clamp_limit(limit, FLEET_PAGE)
    after = decode_cursor(cursor, (int,))
    totals = await db.fetchone(
        "SELECT minions, runs, fails, flips, code_flips, failing, passing, last_pass_at FROM test_totals "
        "WHERE test_id = ?",
        (test["id"],),
    ) or {"minions": 0, "runs": 0, "fails": 0, "flips": 0, "code_flips": 0, "failing": 0, "passing": 0,
          "last_pass_at": None}
    columns = (
        "m.name AS minion, ts.minion_id, ts.last_run_id, ts.last_outcome, ts.last_started_at, ts.runs, ts.fails, ts.flips, "
        "ts.code_flips, ts.first_fail_at, ts.last_pass_at, ts.total_duration"
    )
    params: list[Any] = [test["id"]]
    sql = f"SELECT {columns} FROM test_status ts JOIN minions m ON m.id = ts.minion_id WHERE ts.test_id = ?"
    if after:
        sql += " AND ts.minion_id > ?"
        params.append(after[0])
    per_minion = await db.fetchall(sql + " ORDER BY ts.minion_id LIMIT ?", (*params, limit + 1))
    next_cursor = encode_cursor(per_minion[limit - 1]["minion_id"]) if len(per_minion) > limit else None
    per_minion = per_minion[:limit]
    # Open failing streaks, oldest first (index test_status_failing).
    failing_now = await db.fetchall(
        f"SELECT {columns} FROM test_status ts JOIN minions m ON m.id = ts.minion_id "
        "WHERE ts.test_id = ? AND ts.first_fail_at IS NOT NULL ORDER BY ts.first_fail_at LIMIT ?",
        (test["id"], min(limit, FAILING_NOW_SHOWN)),
    )
    for row in (*per_minion, *failing_now):
        row["avg_duration"] = row["total_duration"] / row["runs"] if row["runs"] else None
        row["flip_rate"] = row["flips"] / (row["runs"] - 1) if row["runs"] and row["runs"] > 1 else 0.0
    timeline = await db.fetchall(
        "SELECT x.run_id, x.phase, x.outcome, x.duration, x.message, r.started_at, r.jid, m.name AS minion "
        "FROM results x JOIN runs r ON r.id = x.run_id JOIN minions m ON m.id = r.minion_id "
        "WHERE x.test_id = ? ORDER BY x.run_id DESC LIMIT ?",
        (test["id"], window),
    )
    timeline.reverse()
    runs, flips, code_flips = totals["runs"] or 0, totals["flips"] or 0, totals["code_flips"] or 0
    minion_count = totals["minions"] or 0
    window_failures = [row for row in timeline if row["outcome"] in FAILING]
    return {
        **test,
        "minions": per_minion,
        "minion_count": minion_count,
        "failing_now": failing_now,
        "failing_minions": totals["failing"] or 0,
        "passing_minions": totals["passing"] or 0,
        "next": next_cursor,
        "paged": bool(after),
        "timeline": timeline,
        "runs": runs,
        "fails": totals["fails"] or 0,
        "flips": flips,
        "flakiness": flips / max(1, runs - minion_count),
        # Flips on unchanged code (same code_hash on both sides): flakiness proper.
        "code_flips": code_flips,
        "code_flakiness": code_flips / max(1, runs - minion_count),
        "first_failure": failing_now[0]["first_fail_at"] if failing_now else (
            window_failures[0]["started_at"] if window_failures else None),
        "last_pass": totals["last_pass_at"],
    }


# Walks the partial index test_status_code_flips (rows with flips > 0, in this order): no sort.
FLAKY_SQL = (
    "SELECT t.nodeid, m.name AS minion, ts.code_flips, ts.flips, ts.runs, ts.fails, ts.last_outcome, "
    "ts.last_started_at FROM test_status ts JOIN tests t ON t.id = ts.test_id JOIN minions m ON m.id = ts.minion_id "
    "WHERE ts.flips > 0 ORDER BY ts.code_flips DESC, ts.flips DESC LIMIT ?"
)


async def flaky_tests(db, limit: int = 50) -> list[dict[str, Any]]:
    """Test/minion pairs by pass<->fail flips on the same code, then by all flips."""
    rows = await db.fetchall(FLAKY_SQL, (clamp_limit(limit),))
    for row in rows:
        row["flip_rate"] = row["flips"] / (row["runs"] - 1) if row["runs"] > 1 else 0.0
        row["code_flip_rate"] = row["code_flips"] / (row["runs"] - 1) if row["runs"] > 1 else 0.0
    return rows


async def slowest_tests(db, limit: int = 50) -> list[dict[str, Any]]:
    """Tests by mean duration over every run on every minion (test_totals, index test_totals_slowest)."""
    return await db.fetchall(
        "SELECT t.nodeid, tt.avg_duration, tt.runs, tt.minions FROM test_totals tt JOIN tests t ON t.id = tt.test_id "
        "WHERE tt.runs > 0 ORDER BY tt.avg_duration DESC LIMIT ?",
        (clamp_limit(limit),),
    )


# -- compare -------------------------------------------------------------------------------

_SEVERITY = {"error": 5, "failed": 4, "xpassed": 3, "passed": 2, "xfailed": 1, "skipped": 0}


async def _outcomes(db, run_id: int) -> dict[str, str]:
    rows = await db.fetchall(
        "SELECT t.nodeid, x.outcome FROM results x JOIN tests t ON t.id = x.test_id WHERE x.run_id = ? LIMIT ?",
        (run_id, COMPARE_RESULTS_LIMIT),
    )
    outcomes: dict[str, str] = {}
    for row in rows:
        # A test that passed in call and errored in teardown counts as its worst outcome.
        current = outcomes.get(row["nodeid"])
        if current is None or _SEVERITY.get(row["outcome"], 0) > _SEVERITY.get(current, 0):
            outcomes[row["nodeid"]] = row["outcome"]
    return outcomes


async def compare_runs(db, base_id: int, head_id: int) -> dict[str, Any] | None:
    """What changed from run ``base_id`` to run ``head_id``."""
    base = await get_run_summary(db, base_id)
    head = await get_run_summary(db, head_id)
    if base is None or head is None:
        return None
    old, new = await _outcomes(db, base_id), await _outcomes(db, head_id)

    def failing(outcome):
        return outcome in FAILING

    common = old.keys() & new.keys()
    return {
        "base": base,
        "head": head,
        "new_failures": sorted(n for n in new if failing(new[n]) and not failing(old.get(n))),
        "fixed": sorted(n for n in common if failing(old[n]) and not failing(new[n])),
        "still_failing": sorted(n for n in common if failing(old[n]) and failing(new[n])),
        "added": sorted(new.keys() - old.keys()),
        "removed": sorted(old.keys() - new.keys()),
    }


async def get_run_summary(db, run_id: int) -> dict[str, Any] | None:
    row = await db.fetchone(
        f"SELECT {RUN_COLUMNS} FROM runs r JOIN minions m ON m.id = r.minion_id WHERE r.id = ?", (run_id,)
    )
    return run_summary(row) if row else None


async def minion_names(db, limit: int = 1000) -> list[str]:
    return [row["name"] for row in await db.fetchall("SELECT name FROM minions ORDER BY name LIMIT ?", (limit,))]
