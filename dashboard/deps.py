"""FastAPI dependencies: the database, the settings, who is asking, CSRF-checked forms, templates.

Authentication: a ``distmon_session`` cookie (server-side session) or ``Authorization: Bearer
<token>`` (API token). Without either, :class:`NotAuthenticated` is raised and the app answers
an HTML route with a redirect to the login page and an API route (``/api/...``) with 401.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import Depends, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.templating import Jinja2Templates
from jinja2.filters import do_urlencode
from markupsafe import Markup, escape
from starlette.datastructures import FormData

from dashboard import security, users
from dashboard.config import Settings
from dashboard.db import Database
from dashboard.models import MAX_NODEID_CHARS
from dashboard.queries import InputError

TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"


INT64_MAX = 2**63 - 1
# Ids from URLs: SQLite integers are 64-bit; a larger number is a 400, never an OverflowError.
RowId = Annotated[int, PathParam(ge=0, le=INT64_MAX)]
QueryRowId = Annotated[int, Query(ge=0, le=INT64_MAX)]


# The longest value a URL legitimately carries is a test id; a query string with more parameters
# than any form or filter has is not a user's.
MAX_PARAM_CHARS = MAX_NODEID_CHARS
MAX_QUERY_PARAMS = 50
# security.new_secret(): 32 random bytes, URL-safe base64 without padding.
_ANONYMOUS_TOKEN = re.compile(r"[A-Za-z0-9_-]{43}")


def check_input_lengths(request: Request) -> None:
    """Every route's first dependency: over-long URL parameters are a 400 with a message (InputError)."""
    params = request.query_params.multi_items()
    if len(params) > MAX_QUERY_PARAMS:
        raise InputError(f"Too many query parameters: at most {MAX_QUERY_PARAMS}.")
    for name, value in [*params, *request.path_params.items()]:
        if isinstance(value, str) and len(value) > MAX_PARAM_CHARS:
            raise InputError(f"Parameter {name[:40]} is too long: at most {MAX_PARAM_CHARS} characters.")


class NotAuthenticated(Exception):
    """No valid session or token: redirect (HTML) or 401 (API)."""


class CsrfError(Exception):
    """A form POST without a valid CSRF token, or from another site: 403."""


@dataclass
class Auth:
    user: dict[str, Any]
    via: str  # "session" | "token"
    csrf_token: str | None = None
    session_hash: str | None = None

    @property
    def is_admin(self) -> bool:
        return bool(self.user.get("is_admin"))


def get_db(request: Request) -> Database:
    return request.app.state.db


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


DbDep = Annotated[Database, Depends(get_db)]
SettingsDep = Annotated[Settings, Depends(get_settings)]


def bearer_token(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


async def optional_auth(request: Request) -> Auth | None:
    """Who is asking (cached on the request), or None."""
    if "auth" in request.state._state:
        return request.state.auth
    db: Database = request.app.state.db
    auth = None
    token = bearer_token(request)
    if token is not None:
        user = await users.user_for_token(db, token)
        # A bad bearer token never falls back to the cookie: the client asked for token auth.
        auth = Auth(user=user, via="token") if user else None
    else:
        cookie = request.cookies.get(security.SESSION_COOKIE)
        if cookie:
            user = await users.user_for_session(db, cookie)
            if user:
                auth = Auth(user=user, via="session", csrf_token=user["csrf_token"], session_hash=user["id_hash"])
    request.state.auth = auth
    return auth


async def require_auth(auth: Annotated[Auth | None, Depends(optional_auth)]) -> Auth:
    if auth is None:
        raise NotAuthenticated()
    return auth


async def require_admin(auth: Annotated[Auth, Depends(require_auth)]) -> Auth:
    if not auth.is_admin:
        raise HTTPException(status_code=403, detail="Admins only.")
    return auth


AuthDep = Annotated[Auth, Depends(require_auth)]
AdminDep = Annotated[Auth, Depends(require_admin)]
OptionalAuthDep = Annotated[Auth | None, Depends(optional_auth)]


async def csrf_form(request: Request, auth: OptionalAuthDep) -> FormData:
    """The POSTed form after the CSRF check (raises CsrfError → 403)."""
    if security.cross_site_request(request.headers, request.headers.get("host")):
        raise CsrfError("Cross-site request refused.")
    form = await request.form()
    if auth is not None and auth.via == "token":
        # Browsers never attach an Authorization header on their own: no CSRF possible.
        return form
    sent = form.get("csrf_token")
    sent = sent if isinstance(sent, str) else None
    # Logged in: the session's own token, never the anonymous cookie (a value an attacker can
    # plant from a sibling host). Anonymous (login, register): the double-submit cookie.
    expected = auth.csrf_token if auth is not None else anonymous_cookie_token(request)
    if not security.tokens_equal(sent, expected):
        raise CsrfError("Missing or invalid CSRF token. Reload the page and try again.")
    return form


CsrfFormDep = Annotated[FormData, Depends(csrf_form)]


def secure_cookies(request: Request) -> bool:
    mode = request.app.state.settings.secure_cookies
    if mode in {"1", "true", "yes", "on"}:
        return True
    if mode in {"0", "false", "no", "off"}:
        return False
    return request.url.scheme == "https"


def anonymous_cookie_token(request: Request) -> str | None:
    """The ``distmon_csrf`` cookie's value when it has the shape of a token we issue, else None."""
    value = request.cookies.get(security.CSRF_COOKIE)
    return value if value and _ANONYMOUS_TOKEN.fullmatch(value) else None


def anonymous_csrf_token(request: Request) -> tuple[str, bool]:
    """The double-submit token for login/register forms; (token, needs to be set as a cookie).

    A cookie that is not of our shape is replaced, never adopted.
    """
    existing = anonymous_cookie_token(request)
    if existing:
        return existing, False
    return security.new_secret(), True


def set_csrf_cookie(request: Request, response, token: str) -> None:
    response.set_cookie(
        security.CSRF_COOKIE, token, httponly=True, samesite="lax", secure=secure_cookies(request), path="/"
    )


def set_session_cookie(request: Request, response, cookie: str) -> None:
    response.set_cookie(
        security.SESSION_COOKIE,
        cookie,
        max_age=security.SESSION_TTL_SECONDS,
        httponly=True,
        samesite="lax",
        secure=secure_cookies(request),
        path="/",
    )


def login_url(request: Request) -> str:
    target = request.url.path
    if request.url.query:
        target += "?" + request.url.query
    return "/login?next=" + quote(security.safe_next_url(target), safe="")


def make_templates() -> Jinja2Templates:
    templates = Jinja2Templates(directory=str(TEMPLATES_DIR))
    env = templates.env
    env.autoescape = True  # every template, whatever its extension
    env.filters["q"] = lambda value: quote(str(value), safe="")
    env.filters["duration"] = format_duration
    env.filters["percent"] = format_percent
    env.filters["when"] = format_when
    from dashboard.routes.charts import fleet_matrix_cells, line_chart, outcome_timeline

    env.globals["line_chart"] = line_chart
    env.globals["outcome_timeline"] = outcome_timeline
    env.globals["fleet_matrix_cells"] = fleet_matrix_cells
    env.globals["minion_links"] = minion_links
    env.globals["test_links"] = test_links
    return templates


# The links of macros.html minion_link/test_link, joined in Python: a page listing a few per row
# for 50 rows (/failures) spent a third of its rendering in macro calls. Markup % and
# Markup.format escape through Python formatters, slower than escape() on each value.
def minion_links(names: list[str], shown: int) -> Markup:
    links = (f'<a href="/minions/{escape(quote(str(name), safe=""))}">{escape(name)}</a>' for name in names[:shown])
    return Markup(", ".join(links))  # noqa: S704 (each value escaped above)


def test_links(nodeids: list[str], shown: int) -> Markup:
    links = (f'<a class="nodeid" href="/tests?{escape(do_urlencode({"nodeid": nodeid}))}">{escape(nodeid)}</a>'
             for nodeid in nodeids[:shown])
    return Markup(", ".join(links))  # noqa: S704 (each value escaped above)


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.2f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 120:
        return f"{minutes} min {secs} s"
    return f"{minutes // 60} h {minutes % 60} min"


def format_percent(value: float | None) -> str:
    return "–" if value is None else f"{value * 100:.1f} %"


def format_when(value: str | None) -> str:
    if not value:
        return "–"
    from dashboard.queries import parse_iso

    moment = parse_iso(value)
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC") if moment else value
