"""The distmon dashboard: a FastAPI app over the SQLite database the ingester fills.

Run it with ``python -m dashboard serve`` (uvicorn with the limits of dashboard/serve.py;
settings from ``DISTMON_*``, see dashboard/config.py and docs/security.md); tests build their
own with :func:`create_app`. The lifespan opens the database and, when ``DISTMON_INGEST`` is
on, runs the ingester as a background task in the same process; with ``DISTMON_WEBHOOKS`` on
(default), the webhook sender too (dashboard/webhooks/).

Every route but ``/login``, ``/register`` and ``/static`` needs a session cookie or an API
token (``Authorization: Bearer ...``). The JSON API lives under ``/api``; its OpenAPI schema is
``/api/openapi.json`` (behind login too; no CDN-hosted docs UI, the CSP would refuse it anyway).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.trustedhost import TrustedHostMiddleware

from dashboard import security
from dashboard.config import Settings
from dashboard.db import Database, QueryTimeout
from dashboard.deps import CsrfError, NotAuthenticated, check_input_lengths, login_url, make_templates
from dashboard.queries import InputError
from dashboard.routes import admin, api, auth, failures, pages, webhooks
from dashboard.routes.common import render

log = logging.getLogger("distmon.dashboard")
STATIC_DIR = Path(__file__).resolve().parent / "static"


def is_api(request: Request) -> bool:
    return request.url.path == "/api" or request.url.path.startswith("/api/")


def _error(request: Request, status: int, message: str, headers: dict | None = None):
    if is_api(request):
        return JSONResponse({"detail": message}, status_code=status, headers=headers)
    return render(request, "error.html", {"status": status, "message": message}, status_code=status, headers=headers)


class DistmonApp(FastAPI):
    """FastAPI with the security headers outside everything, Starlette's own error pages included."""

    def build_middleware_stack(self):
        # Starlette puts ServerErrorMiddleware (the 500 page of an unhandled exception) outside
        # every added middleware: wrapping the whole stack is the only way its answer gets them.
        return security.SecurityHeadersMiddleware(super().build_middleware_stack())


async def _backfill_signatures(db: Database) -> None:
    """Give results stored before failure signatures existed theirs, a chunk per short transaction
    (the ingester and the pages go on between chunks; see docs/triage.md)."""
    from dashboard.failures import backfill_in_background

    try:
        chunks = await backfill_in_background(db)
    except asyncio.CancelledError:
        raise
    except Exception:  # the pages work without it; the next start-up resumes where it stopped
        log.exception("signature backfill failed; it resumes at the next start")
        return
    if chunks:
        log.info("signature backfill: done (%d chunks)", chunks)


_startup_frozen = False


def _freeze_startup_objects() -> None:
    """Move the objects alive after start-up (the imported modules' functions, classes and dicts:
    FastAPI, pydantic, psycopg, httpx, Jinja; ~86,000 of them) out of the cyclic collector's
    walks, once per process.

    A full (generation 2) collection walks every tracked object: 70-90 ms of CPU on our shared
    2-core hosts, 95-300 ms of wall time when loaded, paid by whichever request triggers it, and
    the failures routes, which allocate the most, trigger most of them (8 of 12 in one 35-round
    pass over every route at 10,000 minions; the 10k bench's /failures?verdict=some-minions: p50
    68 ms, p95 167 ms). Frozen, a full collection walks only what was made since: 8-50 ms.
    Once per process: frozen objects are never freed, so a process that builds several apps (the
    tests, the bench) must not pin every app's.
    """
    global _startup_frozen
    if not _startup_frozen:
        _startup_frozen = True
        gc.collect()
        gc.freeze()


async def _stop_task(task: asyncio.Task, what: str) -> None:
    try:
        await asyncio.wait_for(task, timeout=10)
    except TimeoutError:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    except Exception:  # the task logs its own failures; shutdown must go on
        log.exception("%s stopped with an error", what)


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app for ``settings`` (default: from the environment)."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        db = Database(settings.db_path)
        await db.open()
        app.state.db = db
        _freeze_startup_objects()
        stop = asyncio.Event()
        ingester = None
        if settings.ingest:
            from dashboard.ingest import run_ingester

            ingester = asyncio.create_task(run_ingester(db, settings, stop), name="distmon-ingester")
        backfill = asyncio.create_task(_backfill_signatures(db), name="distmon-signature-backfill")
        sender = None
        if settings.webhooks:
            from dashboard.webhooks.sender import run_sender

            sender = asyncio.create_task(run_sender(db, settings, stop), name="distmon-webhook-sender")
        try:
            yield
        finally:
            stop.set()
            backfill.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await backfill
            if sender is not None:
                await _stop_task(sender, "webhook sender")
            if ingester is not None:
                await _stop_task(ingester, "ingester")
            await db.close()

    app = DistmonApp(
        title="distmon",
        summary="Salt-native distributed test monitoring: results of pytest runs across minions.",
        version="1",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        dependencies=[Depends(check_input_lengths)],
    )
    app.state.settings = settings
    app.state.templates = make_templates()
    # DNS rebinding: a page of another origin resolving its name to this host is refused here.
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(settings.allowed_hosts), www_redirect=False)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.include_router(auth.router)
    app.include_router(admin.router)
    app.include_router(webhooks.router)
    app.include_router(pages.router)
    app.include_router(failures.router)
    app.include_router(api.router)
    app.include_router(failures.api_router)

    @app.exception_handler(NotAuthenticated)
    async def not_authenticated(request: Request, exc: NotAuthenticated):
        if is_api(request):
            return JSONResponse(
                {"detail": "Authentication required: log in or send Authorization: Bearer <token>."},
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        return RedirectResponse(login_url(request), status_code=303)

    @app.exception_handler(CsrfError)
    async def csrf_error(request: Request, exc: CsrfError):
        return _error(request, 403, str(exc))

    @app.exception_handler(InputError)
    async def input_error(request: Request, exc: InputError):
        return _error(request, 400, str(exc))

    @app.exception_handler(QueryTimeout)
    async def query_timeout(request: Request, exc: QueryTimeout):
        log.warning("query timeout on %s: %s", request.url.path, exc)
        return _error(request, 503, "The query took too long. Narrow the filters and try again.")

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        problems = []
        for err in exc.errors():
            where = ".".join(str(part) for part in err.get("loc", ()) if part not in ("query", "path", "body"))
            problems.append(f"{where}: {err.get('msg')}" if where else str(err.get("msg")))
        return _error(request, 400, "Invalid request. " + "; ".join(problems))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        return _error(request, exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, exc: Exception):
        # Starlette logs the exception and re-raises it after sending this page.
        try:
            return _error(request, 500, "Internal error. It has been logged; try again or tell an admin.")
        except Exception:  # the error page itself failed (templates, database): plain text then
            return PlainTextResponse("Internal error.", status_code=500)

    return app


def __getattr__(name: str):
    # `uvicorn dashboard.app:app` builds the app on first access, so importing this module
    # (tests, the CLI) never reads the environment or touches a database.
    if name == "app":
        application = create_app()
        globals()["app"] = application
        return application
    raise AttributeError(name)
