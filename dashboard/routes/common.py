"""Helpers shared by the routers: rendering a template with who is logged in and their CSRF token."""

from __future__ import annotations

from typing import Any

from fastapi import Request

from dashboard import deps


def current_auth(request: Request) -> deps.Auth | None:
    return request.state.auth if "auth" in request.state._state else None


def render(request: Request, template: str, context: dict[str, Any] | None = None, *,
           status_code: int = 200, headers: dict | None = None):
    """A TemplateResponse with ``user``, ``csrf_token`` and the settings in its context.

    Anonymous pages get the double-submit CSRF token, set as a cookie on the way out.
    """
    auth = current_auth(request)
    new_cookie = None
    if auth is not None and auth.csrf_token:
        csrf = auth.csrf_token
    else:
        csrf, needs_cookie = deps.anonymous_csrf_token(request)
        new_cookie = csrf if needs_cookie else None
    ctx = {
        "user": auth.user if auth else None,
        "csrf_token": csrf,
        "settings": request.app.state.settings,
        **(context or {}),
    }
    response = request.app.state.templates.TemplateResponse(
        request, template, ctx, status_code=status_code, headers=headers
    )
    if new_cookie:
        deps.set_csrf_cookie(request, response, new_cookie)
    return response
