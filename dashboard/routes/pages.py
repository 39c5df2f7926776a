"""The HTML pages: fleet, runs, one run (+ exports), one job, minion, test, flaky, slowest, compare."""

from __future__ import annotations

import asyncio
import re

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import JSONResponse, Response

from dashboard import failures, queries, triage
from dashboard.deps import DbDep, RowId, require_auth
from dashboard.routes.common import render
from dashboard.routes.export import run_to_json, run_to_junit

router = APIRouter(dependencies=[Depends(require_auth)], include_in_schema=False)


def _filters(request: Request) -> dict[str, str]:
    keys = ("minion", "jid", "status", "path", "since", "until", "q")
    return {key: request.query_params.get(key, "").strip()[:500] for key in keys}


@router.get("/")
async def fleet_page(request: Request, db: DbDep, group: str = "", value: str | None = None, state: str = "",
                     cursor: str = ""):
    # Triage (docs/triage.md): sick hosts flagged; muted failures out of "failing now". Read
    # together with the fleet (independent reads, several reader connections).
    fleet, sick_hosts, muted_failing = await asyncio.gather(
        queries.fleet(db, group=group.strip() or None, value=value if group else None, state=state or None,
                      cursor=cursor or None, limit=queries.FLEET_PAGE_HTML),
        failures.sick_hosts(db), failures.muted_failing_pairs(db))
    scope = {k: v for k, v in (("group", fleet["group"]), ("value", fleet["value"]), ("state", fleet["state"]))
             if v is not None}
    return render(request, "fleet.html", {
        "fleet": fleet,
        "sick": {host["minion"]: host for host in sick_hosts},
        "muted_failing": muted_failing,
        "scope": scope,
        "next_params": {**scope, "cursor": fleet["next"]} if fleet["next"] else None,
    })


@router.get("/runs")
async def runs_page(request: Request, db: DbDep, cursor: str = "", limit: int = Query(50, ge=1, le=500)):
    filters = _filters(request)
    page = await queries.list_runs(db, **{k: v or None for k, v in filters.items()}, limit=limit,
                                   cursor=cursor or None)
    next_params = {k: v for k, v in filters.items() if v}
    if page["next"]:
        next_params["cursor"] = page["next"]
    return render(request, "runs.html", {
        "page": page,
        "filters": filters,
        "minions": await queries.minion_names(db),
        "statuses": queries.RUN_STATUSES,
        "next_params": next_params if page["next"] else None,
        "paged": bool(cursor),
        "filter_params": {k: v for k, v in filters.items() if v},
        # Live updates only make sense on the unfiltered first page.
        "live_after": (await queries.latest_run_id(db)) if not cursor and not any(filters.values()) else None,
    })


async def _run_or_404(db, run_id: int) -> dict:
    run = await queries.get_run(db, run_id)
    if run is None:
        raise HTTPException(status_code=404, detail=f"No run {run_id}.")
    return run


@router.get("/runs/{run_id}")
async def run_page(request: Request, run_id: RowId, db: DbDep):
    run = await _run_or_404(db, run_id)
    changes = await failures.run_changes(db, run_id)
    return render(request, "run.html", {
        "run": run,
        "changes": changes,
        "marks": await failures.run_failure_marks(db, run),
        "change_of": _change_index(changes),
    })


def _change_index(changes: dict | None) -> dict[str, dict]:
    """nodeid -> {"kind": new | still, "since": ...} for marking a run's failures."""
    index: dict[str, dict] = {}
    if changes:
        for entry in changes["new"]:
            index[entry["nodeid"]] = {"kind": "new"}
        for entry in changes["still_failing"]:
            index[entry["nodeid"]] = {"kind": "still failing", "since": entry.get("since")}
    return index


@router.get("/runs/{run_id}/junit.xml")
async def run_junit(run_id: RowId, db: DbDep):
    run = await queries.run_export(db, run_id)
    if run is None:
        raise HTTPException(status_code=404, detail=f"No run {run_id}.")
    return Response(run_to_junit(run), media_type="application/xml", headers={
        "Content-Disposition": f'attachment; filename="run-{run_id}.xml"'})


@router.get("/runs/{run_id}/export.json")
async def run_json(run_id: RowId, db: DbDep):
    run = await queries.run_export(db, run_id)
    if run is None:
        raise HTTPException(status_code=404, detail=f"No run {run_id}.")
    return JSONResponse(run_to_json(run), headers={
        "Content-Disposition": f'attachment; filename="run-{run_id}.json"'})


@router.get("/jobs/{jid}")
async def job_page(request: Request, jid: str, db: DbDep, cursor: str = ""):
    job = await queries.get_job(db, jid, cursor=cursor or None)
    if job is None:
        raise HTTPException(status_code=404, detail="No such job.")
    changes = await failures.job_changes(db, [run["id"] for run in job["runs"]])
    return render(request, "job.html", {
        "job": job,
        "changes": changes,
        "next_params": {"cursor": job["next"]} if job["next"] else None,
    })


@router.get("/minions/{name}")
async def minion_page(request: Request, name: str, db: DbDep):
    minion = await queries.get_minion(db, name)
    if minion is None:
        raise HTTPException(status_code=404, detail="No such minion.")
    # Muted failures stay listed, marked (docs/triage.md).
    failures.minion_failing_filter(minion["failing_tests"], await triage.active_mutes(db), minion["grains"])
    return render(request, "minion.html", {"minion": minion})


@router.get("/tests")
async def tests_page(request: Request, db: DbDep, nodeid: str = "", q: str = "", cursor: str = ""):
    if nodeid:
        test = await queries.get_test(db, nodeid, cursor=cursor or None)
        if test is None:
            raise HTTPException(status_code=404, detail="No such test.")
        return render(request, "test.html", {
            "test": test,
            "next_params": {"nodeid": nodeid, "cursor": test["next"]} if test["next"] else None,
        })
    found = await queries.search_tests(db, q) if q else []
    return render(request, "tests.html", {"q": q, "tests": found})


@router.get("/flaky")
async def flaky_page(request: Request, db: DbDep):
    return render(request, "flaky.html", {"rows": await queries.flaky_tests(db)})


@router.get("/slowest")
async def slowest_page(request: Request, db: DbDep):
    return render(request, "slowest.html", {"rows": await queries.slowest_tests(db)})


def _run_id(value: str, name: str) -> int | None:
    value = value.strip()
    if not value:
        return None
    # Accept a bare id or a pasted /runs/<id> URL.
    match = re.fullmatch(r"(?:.*/runs/)?(\d{1,18})/?", value)
    if not match:
        raise queries.InputError(f"{name}: give a run id (a number) or a /runs/<id> link.")
    return int(match.group(1))


@router.get("/compare")
async def compare_page(request: Request, db: DbDep, a: str = "", b: str = ""):
    base, head = _run_id(a, "a"), _run_id(b, "b")
    diff = None
    if base is not None and head is not None:
        diff = await queries.compare_runs(db, base, head)
        if diff is None:
            raise HTTPException(status_code=404, detail="No such run.")
    return render(request, "compare.html", {"a": a, "b": b, "diff": diff})
