"""Failures and triage: ``/failures``, one signature's page, known issues, mutes, the audit log.

Pages post CSRF-checked forms; the JSON API (``/api/failures``, ``/api/mutes``, ...) takes a
Bearer token, or a session cookie plus the session's CSRF token in ``X-CSRF-Token`` for writes.
Every write goes through dashboard/triage.py, which records who did it and when.
"""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Body, Depends, HTTPException, Query, Request
from fastapi.responses import RedirectResponse
from pydantic import BaseModel, Field

from dashboard import failures, security, triage
from dashboard.deps import INT64_MAX, AuthDep, CsrfError, CsrfFormDep, DbDep, RowId, require_auth
from dashboard.queries import InputError
from dashboard.routes.common import render

router = APIRouter(dependencies=[Depends(require_auth)], include_in_schema=False)
api_router = APIRouter(prefix="/api", dependencies=[Depends(require_auth)], tags=["failures"])

FILTER_KEYS = ("verdict", "minion", "test", "q")


def _filters(request: Request) -> dict[str, str]:
    return {key: request.query_params.get(key, "").strip()[:500] for key in FILTER_KEYS}


async def _signature_or_404(db, signature: str, cursor: str | None = None, outcome: str | None = None) -> dict[str, Any]:
    found = await failures.get_signature(db, signature, cursor=cursor, outcome=outcome)
    if found is None:
        raise HTTPException(status_code=404, detail="No failure has this signature.")
    return found


def _field(form, name: str) -> str:
    value = form.get(name)
    return value if isinstance(value, str) else ""


async def _triage_write(db, fn, *args, **kwargs):
    try:
        return await db.write(lambda conn: fn(conn, *args, **kwargs))
    except triage.TriageError as err:
        raise InputError(str(err)) from None


# -- pages ------------------------------------------------------------------------------------


@router.get("/failures")
async def failures_page(request: Request, db: DbDep, cursor: str = "", limit: int = Query(50, ge=1, le=500)):
    filters = _filters(request)
    page = await failures.open_failures(db, **{k: v or None for k, v in filters.items()}, limit=limit,
                                        cursor=cursor or None)
    next_params = {k: v for k, v in filters.items() if v}
    if page["next"]:
        next_params["cursor"] = page["next"]
    return render(request, "failures.html", {
        "page": page,
        "filters": filters,
        "verdicts": failures.VERDICTS,
        "next_query": urlencode(next_params) if page["next"] else None,
        "paged": bool(cursor),
    })


@router.get("/failures/{signature}")
async def signature_page(request: Request, signature: str, db: DbDep, error: str = "", notice: str = "",
                         cursor: str = "", outcome: str = ""):
    found = await _signature_or_404(db, signature, cursor or None, outcome or None)
    next_params = {"outcome": outcome, "cursor": found["next"]} if outcome else {"cursor": found["next"]}
    return render(request, "signature.html", {
        "sig": found, "error": error[:300], "notice": notice[:300], "mute_default": triage.DEFAULT_MUTE,
        "latest_outcomes": failures.LATEST_OUTCOMES,
        "next_query": urlencode(next_params) if found["next"] else None,
        "paged": bool(cursor),
    })


def _back(signature: str | None, notice: str) -> RedirectResponse:
    target = f"/failures/{signature}" if signature and failures.is_signature(signature) else "/triage"
    return RedirectResponse(f"{target}?{urlencode({'notice': notice})}", status_code=303)


@router.post("/failures/{signature}/known-issue")
async def known_issue_form(signature: str, form: CsrfFormDep, auth: AuthDep, db: DbDep):
    await _triage_write(db, triage.set_known_issue, auth.user["username"], signature, _field(form, "note"),
                        _field(form, "url"))
    return _back(signature, "Known issue saved.")


@router.post("/failures/{signature}/known-issue/delete")
async def known_issue_delete_form(signature: str, form: CsrfFormDep, auth: AuthDep, db: DbDep):
    await _triage_write(db, triage.remove_known_issue, auth.user["username"], signature)
    return _back(signature, "Known issue removed.")


@router.post("/mutes")
async def mute_form(form: CsrfFormDep, auth: AuthDep, db: DbDep):
    # The signature page sends what="signature:<sig>" or what="test:<nodeid>"; kind + target also work.
    kind, _, target = _field(form, "what").partition(":")
    if not target:
        kind, target = _field(form, "kind"), _field(form, "target")
    mute = await _triage_write(
        db, triage.add_mute, auth.user["username"], kind=kind, target=target,
        expires=_field(form, "expires") or None, grain=_field(form, "grain") or None,
        grain_value=_field(form, "grain_value") or None, reason=_field(form, "reason"),
    )
    back = _field(form, "back")
    return _back(back or (mute["target"] if mute["kind"] == "signature" else None),
                 f"Muted until {mute['expires_at'][:16].replace('T', ' ')} UTC.")


@router.post("/mutes/{mute_id}/delete")
async def unmute_form(mute_id: RowId, form: CsrfFormDep, auth: AuthDep, db: DbDep):
    await _triage_write(db, triage.remove_mute, auth.user["username"], mute_id)
    return _back(_field(form, "back") or None, f"Mute {mute_id} removed.")


@router.get("/triage")
async def triage_page(request: Request, db: DbDep, notice: str = ""):
    return render(request, "triage.html", {
        "mutes": await triage.list_mutes(db, include_inactive=True, limit=200),
        "log": await triage.triage_log(db, limit=200),
        "notice": notice[:300],
    })


# -- API --------------------------------------------------------------------------------------


class GrainSplit(BaseModel):
    grain: str
    value: str
    failing: int
    passing: int
    failing_of: int
    passing_of: int
    score: float
    label: str


class KnownIssue(BaseModel):
    note: str
    url: str | None = None
    created_by: str
    created_at: str
    updated_by: str
    updated_at: str


class Failure(BaseModel):
    signature: str
    exception: str | None
    message: str | None
    location: str | None
    # Long lists hold at most failures.LIST_CAP names; the *_count beside each is exact.
    tests: list[str]
    tests_count: int = 0
    minions_failing: list[str]
    minions_failing_count: int = 0
    minions_passing: list[str]
    minions_passing_count: int = 0
    minions_failing_otherwise: list[str]
    minions_failing_otherwise_count: int = 0
    minions_muted: list[str]
    minions_muted_count: int = 0
    # Minions where one of these tests failed and then passed when re-run (flaky by re-run).
    minions_passed_on_rerun: list[str] = []
    failing_now: int
    verdict: str
    first_seen: str | None
    first_run: int | None
    first_minion: str | None = None
    last_seen: str | None
    last_run: int | None
    failing_since: str | None
    occurrences: int | None
    code_change: dict[str, Any] | None
    code_note: str
    grains: list[GrainSplit]
    known_issue: KnownIssue | None
    muted: bool


class FailuresPage(BaseModel):
    failures: list[Failure]
    next: str | None = None
    summary: dict[str, Any]
    sick_hosts: list[dict[str, Any]]


def _check_api_write(request: Request, auth: AuthDep) -> None:
    """A write through the API: a Bearer token, or a session with its CSRF token in X-CSRF-Token."""
    if auth.via == "token":
        return
    if security.cross_site_request(request.headers, request.headers.get("host")):
        raise CsrfError("Cross-site request refused.")
    if not security.tokens_equal(request.headers.get("x-csrf-token"), auth.csrf_token):
        raise CsrfError("Send the session's CSRF token in X-CSRF-Token (or use an API token).")


ApiWrite = Annotated[None, Depends(_check_api_write)]


@api_router.get("/failures", response_model=FailuresPage,
                summary="Open failure signatures across the fleet, most minions first, with verdicts and separating grains")
async def api_failures(
    db: DbDep,
    verdict: str | None = Query(None, description="everywhere | some-minions | flaky"),
    minion: str | None = Query(None, description="failing on this minion"),
    test: str | None = Query(None, description="substring of an affected test id"),
    q: str | None = Query(None, description="words in a failure message or traceback (full-text)"),
    limit: int = Query(50, ge=1, le=500),
    cursor: str | None = Query(None, description="the previous page's `next`"),
):
    return await failures.open_failures(db, verdict=verdict, minion=minion, test=test, q=q, limit=limit,
                                        cursor=cursor)


@api_router.get("/failures/{signature}", summary="One signature: verdict, history, every minion's latest outcome, a traceback")
async def api_signature(
    signature: str,
    db: DbDep,
    cursor: str | None = Query(None, description="the previous page's `next` (pages `latest`)"),
    outcome: str | None = Query(None, description="`latest` only: signature | passing | other"),
) -> dict[str, Any]:
    return await _signature_or_404(db, signature, cursor or None, outcome or None)


class KnownIssueIn(BaseModel):
    note: str = Field(..., max_length=triage.MAX_NOTE_CHARS)
    url: str | None = Field(None, max_length=triage.MAX_URL_CHARS)


@api_router.put("/failures/{signature}/known-issue", summary="Attach or replace a signature's known-issue note and link")
async def api_set_known_issue(signature: str, body: KnownIssueIn, auth: AuthDep, db: DbDep, _: ApiWrite) -> dict[str, Any]:
    return await _triage_write(db, triage.set_known_issue, auth.user["username"], signature, body.note, body.url)


@api_router.delete("/failures/{signature}/known-issue", summary="Remove a signature's known-issue note")
async def api_remove_known_issue(signature: str, auth: AuthDep, db: DbDep, _: ApiWrite) -> dict[str, Any]:
    removed = await _triage_write(db, triage.remove_known_issue, auth.user["username"], signature)
    if not removed:
        raise HTTPException(status_code=404, detail="This signature has no known issue.")
    return {"removed": True}


class MuteIn(BaseModel):
    kind: str = Field(..., description="signature | test")
    target: str = Field(..., max_length=triage.MAX_NODEID_CHARS, description="the signature or the test nodeid")
    expires: str = Field(triage.DEFAULT_MUTE, max_length=40, description="30m, 12h, 7d, 2w or a date/ISO time")
    grain: str | None = Field(None, max_length=100, description="only minions whose grain matches (all when absent)")
    grain_value: str | None = Field(None, max_length=triage.MAX_GRAIN_CHARS)
    reason: str = Field("", max_length=triage.MAX_NOTE_CHARS)


@api_router.get("/mutes", summary="Mutes (active only unless all=true)")
async def api_mutes(db: DbDep, all: bool = False) -> dict[str, Any]:
    return {"mutes": await triage.list_mutes(db, include_inactive=all)}


@api_router.post("/mutes", status_code=201, summary="Mute a signature or a test, on all minions or a grain match, until it expires")
async def api_add_mute(body: Annotated[MuteIn, Body()], auth: AuthDep, db: DbDep, _: ApiWrite) -> dict[str, Any]:
    return await _triage_write(db, triage.add_mute, auth.user["username"], kind=body.kind, target=body.target,
                               expires=body.expires, grain=body.grain, grain_value=body.grain_value, reason=body.reason)


@api_router.delete("/mutes/{mute_id}", summary="End a mute now")
async def api_remove_mute(mute_id: RowId, auth: AuthDep, db: DbDep, _: ApiWrite) -> dict[str, Any]:
    return await _triage_write(db, triage.remove_mute, auth.user["username"], mute_id)


@api_router.get("/triage/log", summary="The triage audit log, newest first")
async def api_triage_log(db: DbDep, limit: int = Query(200, ge=1, le=1000),
                         before: int | None = Query(None, ge=1, le=INT64_MAX)) -> dict[str, Any]:
    return {"log": await triage.triage_log(db, limit=limit, before=before)}
