"""Webhooks: the admin page ``/admin/webhooks`` and the API ``/api/webhooks`` (admins only).

Thin routes over :mod:`dashboard.webhooks.registry` (definitions) and
:mod:`dashboard.webhooks.outbox` (test messages). A webhook's secret is in the answer that
creates it and nowhere else, ever.
"""

from __future__ import annotations

import time
from functools import partial
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse, RedirectResponse
from pydantic import BaseModel, Field

from dashboard import security
from dashboard.deps import AdminDep, CsrfError, CsrfFormDep, DbDep, RowId
from dashboard.routes.common import render
from dashboard.webhooks import EVENTS, FORMATS, outbox, registry

router = APIRouter(tags=["webhooks"])


async def _page(request: Request, db, *, error: str = "", notice: str = "", created: dict | None = None,
                status_code: int = 200):
    return render(request, "webhooks.html", {
        "webhooks": await registry.list_webhooks(db),
        "deliveries": await registry.list_deliveries(db, limit=100),
        "events": EVENTS, "formats": FORMATS, "error": error, "notice": notice, "created": created,
    }, status_code=status_code)


@router.get("/admin/webhooks", include_in_schema=False)
async def webhooks_page(request: Request, auth: AdminDep, db: DbDep):
    return await _page(request, db)


@router.post("/admin/webhooks", include_in_schema=False)
async def webhooks_create(request: Request, auth: AdminDep, form: CsrfFormDep, db: DbDep):
    events = [value for value in form.getlist("events") if isinstance(value, str)]
    try:
        created = await db.write(partial(registry.create_webhook_tx, url=form.get("url"),
                                         fmt=form.get("format") or "json", events=events, name=form.get("name"),
                                         digest_hour=form.get("digest_hour")))
    except registry.WebhookError as err:
        return await _page(request, db, error=str(err), status_code=400)
    # Rendered, not redirected: the secret is on this one page and nowhere else.
    return await _page(request, db, created=created, status_code=201)


@router.post("/admin/webhooks/{webhook_id}/{action}", include_in_schema=False)
async def webhook_action(request: Request, webhook_id: RowId, action: str, auth: AdminDep, form: CsrfFormDep,
                         db: DbDep):
    if action == "delete":
        done = await db.write(registry.delete_webhook_tx, webhook_id)
    elif action in ("enable", "disable"):
        done = await db.write(registry.set_enabled_tx, webhook_id, action == "enable")
    elif action == "test":
        done = await db.write(outbox.queue_ping_tx, webhook_id, request.app.state.settings.public_url)
    else:
        raise HTTPException(status_code=404, detail="Unknown action.")
    if not done:
        raise HTTPException(status_code=404, detail="No such webhook.")
    return RedirectResponse("/admin/webhooks", status_code=303)


@router.post("/admin/deliveries/{delivery_id}/retry", include_in_schema=False)
async def delivery_retry(request: Request, delivery_id: RowId, auth: AdminDep, form: CsrfFormDep, db: DbDep):
    if not await db.write(registry.retry_delivery_tx, delivery_id, time.time()):
        raise HTTPException(status_code=404, detail="No such delivery waiting to be sent.")
    return RedirectResponse("/admin/webhooks", status_code=303)


# -- API --------------------------------------------------------------------------------------------


class WebhookIn(BaseModel):
    url: str = Field(description="http:// or https:// URL the messages are POSTed to")
    format: str = Field("json", description="json (distmon-webhook/1) or slack (Slack/Mattermost text)")
    events: list[str] | None = Field(None, description=f"any of {', '.join(EVENTS)}; default all")
    name: str | None = None
    digest_hour: int | None = Field(None, description="UTC hour of a daily digest; none by default")


def _no_cross_site(request: Request, auth) -> None:
    # A session-cookie caller of a JSON write must come from our own pages (tokens cannot be forged by a site).
    if auth.via == "session" and security.cross_site_request(request.headers, request.headers.get("host")):
        raise CsrfError("Cross-site request refused.")


@router.get("/api/webhooks", summary="Webhooks (admins; never their secrets)")
async def api_webhooks(auth: AdminDep, db: DbDep) -> dict[str, Any]:
    return {"webhooks": await registry.list_webhooks(db)}


@router.post("/api/webhooks", status_code=201, summary="Create a webhook; the answer holds its secret, shown once")
async def api_webhook_create(request: Request, auth: AdminDep, db: DbDep, body: WebhookIn):
    _no_cross_site(request, auth)
    try:
        created = await db.write(partial(registry.create_webhook_tx, url=body.url, fmt=body.format,
                                         events=body.events, name=body.name, digest_hour=body.digest_hour))
    except registry.WebhookError as err:
        return JSONResponse({"detail": str(err)}, status_code=400)
    return created


@router.delete("/api/webhooks/{webhook_id}", summary="Remove a webhook and its delivery log")
async def api_webhook_delete(request: Request, webhook_id: RowId, auth: AdminDep, db: DbDep) -> dict[str, Any]:
    _no_cross_site(request, auth)
    if not await db.write(registry.delete_webhook_tx, webhook_id):
        raise HTTPException(status_code=404, detail="No such webhook.")
    return {"deleted": webhook_id}


@router.post("/api/webhooks/{webhook_id}/test", status_code=202, summary="Queue a test message to a webhook")
async def api_webhook_test(request: Request, webhook_id: RowId, auth: AdminDep, db: DbDep) -> dict[str, Any]:
    _no_cross_site(request, auth)
    if not await db.write(outbox.queue_ping_tx, webhook_id, request.app.state.settings.public_url):
        raise HTTPException(status_code=404, detail="No such webhook.")
    return {"queued": 1}


@router.get("/api/webhooks/{webhook_id}/deliveries", summary="A webhook's delivery log, newest first")
async def api_webhook_deliveries(webhook_id: RowId, auth: AdminDep, db: DbDep) -> dict[str, Any]:
    if await registry.get_webhook(db, webhook_id) is None:
        raise HTTPException(status_code=404, detail="No such webhook.")
    return {"deliveries": await registry.list_deliveries(db, webhook_id, limit=200)}
