"""The JSON API, mirroring the pages. Every route needs a session cookie or a Bearer token."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from dashboard import failures, queries
from dashboard.deps import INT64_MAX, AuthDep, DbDep, RowId, require_auth

router = APIRouter(prefix="/api", dependencies=[Depends(require_auth)], tags=["api"])


class Counts(BaseModel):
    passed: int
    failed: int
    skipped: int
    xfailed: int
    xpassed: int
    errors: int


class Run(BaseModel):
    id: int
    jid: str
    minion: str
    fun: str
    source: str
    status: str
    exitcode: int | None
    counts: Counts
    started_at: str
    finished_at: str | None
    duration: float | None
    returned_at: str | None
    ingested_at: str
    signed: bool


class RunsPage(BaseModel):
    runs: list[Run]
    next: str | None = None


class Minion(BaseModel):
    name: str
    first_seen: str
    last_seen: str
    runs: int
    last_run_id: int | None
    last_status: str | None
    last_counts: Counts
    pass_rate: float | None
    expected_interval: float | None
    silent_for: float | None
    late: bool


class MinionsList(BaseModel):
    minions: list[Minion]
    next: str | None = None


@router.get("/runs", response_model=RunsPage, summary="Runs, newest first, filtered, cursor-paginated")
async def api_runs(
    db: DbDep,
    minion: str | None = Query(None, description="minion id"),
    jid: str | None = Query(None, description="salt job id"),
    status: str | None = Query(None, description="run status: " + ", ".join(queries.RUN_STATUSES)),
    path: str | None = Query(None, description="substring of the run's test paths"),
    since: str | None = Query(None, description="started at or after (YYYY-MM-DD or ISO 8601)"),
    until: str | None = Query(None, description="started on or before (YYYY-MM-DD) / before (ISO 8601)"),
    q: str | None = Query(None, description="substring of a test id the run contains, or words of one of its failure messages or tracebacks"),
    limit: int = Query(queries.PAGE_SIZE, ge=1, le=queries.MAX_PAGE_SIZE),
    cursor: str | None = Query(None, description="the previous page's `next`"),
):
    return await queries.list_runs(db, minion=minion, jid=jid, status=status, path=path, since=since,
                                   until=until, q=q, limit=limit, cursor=cursor)


@router.get("/runs/{run_id}", summary="One run: counts, grains, every result, failures in full")
async def api_run(run_id: RowId, db: DbDep) -> dict[str, Any]:
    run = await queries.get_run(db, run_id)
    if run is None:
        raise HTTPException(status_code=404, detail=f"No run {run_id}.")
    run["changes"] = await failures.run_changes(db, run_id)
    return run


@router.get("/live", summary="Runs ingested after run id `after` (for live updates)")
async def api_live(db: DbDep, after: int = Query(0, ge=0, le=INT64_MAX), limit: int = Query(50, ge=1, le=500)) -> dict[str, Any]:
    runs = await queries.runs_after(db, after, limit)
    return {"runs": runs, "latest": runs[-1]["id"] if runs else after}


@router.get("/jobs/{jid}", summary="One salt job across minions: totals, its runs cursor-paginated, "
            "targeted minions that never returned; new/still failing/fixed over the runs listed")
async def api_job(
    jid: str, db: DbDep, cursor: str | None = None, limit: int = Query(queries.JOB_PAGE, ge=1, le=500)
) -> dict[str, Any]:
    job = await queries.get_job(db, jid, cursor=cursor, limit=limit)
    if job is None:
        raise HTTPException(status_code=404, detail="No such job.")
    job["changes"] = await failures.job_changes(db, [run["id"] for run in job["runs"]])
    return job


@router.get("/minions", response_model=MinionsList,
            summary="Minions by name with their latest run and lateness, cursor-paginated")
async def api_minions(db: DbDep, cursor: str | None = None, limit: int = Query(queries.FLEET_PAGE, ge=1, le=500)):
    return await queries.list_minions(db, limit, cursor)


@router.get("/minions/{name}", summary="One minion: grains and its latest runs (chart window)")
async def api_minion(name: str, db: DbDep) -> dict[str, Any]:
    minion = await queries.get_minion(db, name)
    if minion is None:
        raise HTTPException(status_code=404, detail="No such minion.")
    return minion


@router.get("/fleet", summary="The fleet: counts per state, minions needing attention first (paged), "
            "groups by grain (group=), the minion x test-file matrix of the page")
async def api_fleet(
    db: DbDep,
    group: str | None = None,
    value: str | None = None,
    state: str | None = None,
    cursor: str | None = None,
    limit: int = Query(queries.FLEET_PAGE, ge=1, le=500),
) -> dict[str, Any]:
    # Triage (docs/triage.md): sick hosts, and failing test x minion pairs muted (out of "failing now"),
    # read together with the fleet.
    fleet, sick_hosts, muted_failing = await asyncio.gather(
        queries.fleet(db, group=group or None, value=value, state=state or None, cursor=cursor, limit=limit),
        failures.sick_hosts(db), failures.muted_failing_pairs(db))
    return fleet | {"sick_hosts": sick_hosts, "muted_failing": muted_failing}


@router.get("/tests", summary="One test id across minions and time (nodeid=), or a search (q=)")
async def api_tests(
    db: DbDep,
    nodeid: str | None = None,
    q: str | None = None,
    cursor: str | None = None,
    limit: int = Query(queries.FLEET_PAGE, ge=1, le=500),
) -> dict[str, Any]:
    if nodeid:
        test = await queries.get_test(db, nodeid, cursor=cursor, limit=limit)
        if test is None:
            raise HTTPException(status_code=404, detail="No such test.")
        return test
    if q is None:
        raise HTTPException(status_code=400, detail="Give nodeid= (one test) or q= (search).")
    return {"tests": await queries.search_tests(db, q)}


@router.get("/flaky", summary="Tests with the most pass/fail flips on one minion and the same code (code_flips), then all flips")
async def api_flaky(db: DbDep, limit: int = Query(50, ge=1, le=500)) -> dict[str, Any]:
    return {"tests": await queries.flaky_tests(db, limit)}


@router.get("/slowest", summary="Tests by mean duration")
async def api_slowest(db: DbDep, limit: int = Query(50, ge=1, le=500)) -> dict[str, Any]:
    return {"tests": await queries.slowest_tests(db, limit)}


@router.get("/compare", summary="Compare run a (base) with run b: new failures, fixed, still failing, added, removed")
async def api_compare(db: DbDep, a: int = Query(..., ge=1, le=INT64_MAX), b: int = Query(..., ge=1, le=INT64_MAX)) -> dict[str, Any]:
    diff = await queries.compare_runs(db, a, b)
    if diff is None:
        raise HTTPException(status_code=404, detail="No such run.")
    return diff


@router.get("/me", summary="Who the request is authenticated as")
async def api_me(auth: AuthDep) -> dict[str, Any]:
    return {"username": auth.user["username"], "is_admin": bool(auth.user["is_admin"]), "via": auth.via}


@router.get("/openapi.json", include_in_schema=False)
async def api_openapi(request: Request):
    return JSONResponse(request.app.openapi())
