"""Login, logout, registration, and the account page (password change, API tokens).

What a visitor can learn about other accounts: nothing from login (one message and status for
an unknown name and a wrong password, and the same bcrypt cost for both) and nothing from
registration in approval mode (a taken name gets the same "wait for approval" answer; the
password is hashed before the name is looked at).
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse

from dashboard import deps, security, users
from dashboard.deps import AuthDep, CsrfFormDep, DbDep, OptionalAuthDep, RowId, SettingsDep
from dashboard.routes.common import render

router = APIRouter(tags=["account"])

LOGIN_FAILED = "Invalid username or password."
TOO_MANY_FAILURES = "Too many failed attempts. Wait a few minutes and try again."
PENDING_MESSAGE = "Thank you. An admin must approve the account before you can log in."
REGISTERED_MESSAGES = {
    "admin": "Account created. You are the first user, so you are the admin. Log in.",
    "open": "Account created. Log in.",
}


def _field(form, name: str) -> str:
    value = form.get(name)
    return value if isinstance(value, str) else ""


def _client_address(request: Request) -> str:
    # The peer as uvicorn reports it: X-Forwarded-For counts only from DISTMON_TRUSTED_PROXIES
    # (dashboard/serve.py), so a client cannot pick a new address per guess.
    return request.client.host if request.client else "unknown"


@router.get("/login", include_in_schema=False)
async def login_page(request: Request, auth: OptionalAuthDep, next: str = "/", registered: str = ""):
    return render(request, "login.html", {
        "next": security.safe_next_url(next),
        "notice": REGISTERED_MESSAGES.get(registered),
        "logged_in": auth is not None,
    })


@router.post("/login", include_in_schema=False)
async def login(request: Request, form: CsrfFormDep, db: DbDep, settings: SettingsDep):
    username = _field(form, "username").strip()[: users.USERNAME_MAX * 4]
    password = _field(form, "password")
    next_url = security.safe_next_url(_field(form, "next"))
    address = _client_address(request)

    def again(message: str, status: int):
        return render(request, "login.html", {"next": next_url, "error": message, "username": username},
                      status_code=status)

    if await users.login_blocked(db, settings, username, address):
        return again(TOO_MANY_FAILURES, 429)
    if len(password.encode("utf-8")) > security.PASSWORD_MAX_BYTES:
        return again(f"Passwords are at most {security.PASSWORD_MAX_BYTES} bytes (UTF-8); this one is longer.", 400)
    user = await users.authenticate(db, username, password, rounds=settings.bcrypt_rounds)
    if user is None:
        await db.write(users.record_login_failure_tx, username, address, settings.login_failure_window)
        return again(LOGIN_FAILED, 401)
    # The password was right: telling its owner why they cannot come in reveals nothing new.
    if user["status"] == "pending":
        return again("Your account is waiting for an admin's approval.", 403)
    if user["status"] != "active":
        return again("This account is disabled. Ask an admin.", 403)
    await db.write(users.clear_login_failures_tx, username)
    cookie, _csrf = await users.start_session(db, user["id"], request.cookies.get(security.SESSION_COOKIE))
    response = RedirectResponse(next_url, status_code=303)
    deps.set_session_cookie(request, response, cookie)
    # The anonymous token served the login form only: a new one for the next anonymous form.
    deps.set_csrf_cookie(request, response, security.new_secret())
    return response


@router.post("/logout", include_in_schema=False)
async def logout(request: Request, auth: AuthDep, form: CsrfFormDep, db: DbDep):
    cookie = request.cookies.get(security.SESSION_COOKIE)
    if cookie:
        await users.end_session(db, cookie)
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(security.SESSION_COOKIE, path="/", httponly=True, samesite="lax",
                           secure=deps.secure_cookies(request))
    return response


@router.get("/register", include_in_schema=False)
async def register_page(request: Request, settings: SettingsDep):
    return render(request, "register.html", {"closed": settings.registration == "closed"})


@router.post("/register", include_in_schema=False)
async def register(request: Request, form: CsrfFormDep, db: DbDep, settings: SettingsDep):
    username = _field(form, "username")
    password = _field(form, "password")
    confirm = _field(form, "password2")

    def again(message: str, status: int):
        return render(request, "register.html", {"error": message, "username": username,
                                                 "closed": settings.registration == "closed"},
                      status_code=status)

    if password != confirm:
        return again("The two passwords differ.", 400)
    try:
        outcome = await users.register(db, username, password, settings.registration, rounds=settings.bcrypt_rounds)
    except security.PasswordPolicyError as err:
        return again(str(err), 400)
    except users.UserError as err:
        return again(str(err), 403 if settings.registration == "closed" else 400)
    if outcome["created"] and outcome["is_admin"]:
        return RedirectResponse("/login?registered=admin", status_code=303)
    if settings.registration == "open":
        # Taken or not, the same answer: the login page then says nothing more either.
        return RedirectResponse("/login?registered=open", status_code=303)
    return render(request, "register.html", {"notice": PENDING_MESSAGE, "done": True})


@router.get("/account", include_in_schema=False)
async def account_page(request: Request, auth: AuthDep, db: DbDep):
    return render(request, "account.html", {"tokens": await users.list_tokens(db, auth.user["id"])})


@router.post("/account/password", include_in_schema=False)
async def change_password(request: Request, auth: AuthDep, form: CsrfFormDep, db: DbDep, settings: SettingsDep):
    new = _field(form, "new_password")
    context = {"tokens": await users.list_tokens(db, auth.user["id"])}
    if new != _field(form, "new_password2"):
        return render(request, "account.html", {**context, "error": "The two new passwords differ."}, status_code=400)
    # Guessing the current password here (a stolen session) is held to the login limit too.
    username, address = auth.user["username"], _client_address(request)
    if await users.login_blocked(db, settings, username, address):
        return render(request, "account.html", {**context, "error": TOO_MANY_FAILURES}, status_code=429)
    try:
        await users.change_password(db, {**auth.user, "id_hash": auth.session_hash},
                                    _field(form, "current_password"), new, rounds=settings.bcrypt_rounds)
    except users.WrongPassword as err:
        await db.write(users.record_login_failure_tx, username, address, settings.login_failure_window)
        return render(request, "account.html", {**context, "error": str(err)}, status_code=400)
    except (security.PasswordPolicyError, users.UserError) as err:
        return render(request, "account.html", {**context, "error": str(err)}, status_code=400)
    return render(request, "account.html", {**context, "notice": "Password changed. Your other sessions ended."})


@router.post("/account/tokens", include_in_schema=False)
async def create_token(request: Request, auth: AuthDep, form: CsrfFormDep, db: DbDep):
    token = await users.create_token(db, auth.user["id"], _field(form, "name"))
    return render(request, "account.html", {"tokens": await users.list_tokens(db, auth.user["id"]),
                                            "new_token": token})


@router.post("/account/tokens/{token_id}/delete", include_in_schema=False)
async def delete_token(request: Request, token_id: RowId, auth: AuthDep, form: CsrfFormDep, db: DbDep):
    await db.write(users.delete_token_tx, auth.user["id"], token_id)
    return RedirectResponse("/account", status_code=303)
