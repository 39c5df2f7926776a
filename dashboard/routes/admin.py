"""The admin page: approve, disable, enable, promote and delete users."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import RedirectResponse

from dashboard import users
from dashboard.deps import AdminDep, CsrfFormDep, DbDep, RowId
from dashboard.routes.common import render

router = APIRouter(prefix="/admin", tags=["admin"])

ACTIONS = {
    "approve": (users.set_status_tx, "active"),
    "enable": (users.set_status_tx, "active"),
    "disable": (users.set_status_tx, "disabled"),
    "make-admin": (users.set_admin_tx, True),
    "drop-admin": (users.set_admin_tx, False),
    "delete": (users.delete_user_tx, None),
}


@router.get("/users", include_in_schema=False)
async def users_page(request: Request, auth: AdminDep, db: DbDep, error: str = ""):
    return render(request, "admin_users.html", {"users": await users.list_users(db)})


@router.post("/users/{user_id}/{action}", include_in_schema=False)
async def user_action(request: Request, user_id: RowId, action: str, auth: AdminDep, form: CsrfFormDep, db: DbDep):
    if action not in ACTIONS:
        raise HTTPException(status_code=404, detail="Unknown action.")
    if user_id == auth.user["id"] and action in {"disable", "delete", "drop-admin"}:
        return render(request, "admin_users.html", {"users": await users.list_users(db),
                                                    "error": "You cannot do that to your own account."},
                      status_code=400)
    fn, arg = ACTIONS[action]
    try:
        if arg is None:
            await db.write(fn, user_id)
        else:
            await db.write(fn, user_id, arg)
    except users.UserError as err:
        return render(request, "admin_users.html", {"users": await users.list_users(db), "error": str(err)},
                      status_code=400)
    return RedirectResponse("/admin/users", status_code=303)
