"""Users, sessions and API tokens: the data functions behind login, admin pages and the CLI.

Writes are plain functions of a ``sqlite3.Connection`` (suffix ``_tx``), so the web app
runs them through ``Database.write`` (one writer, ``BEGIN IMMEDIATE``) and the CLI runs the
very same functions through ``dashboard.db.run_transaction`` on its own connection. That
transaction is what makes "the first user becomes admin" hold under concurrent sign-ups,
across processes too.
"""

# SQL here is built only from constant column lists and '?' placeholders; values are always bound.
# ruff: noqa: S608

from __future__ import annotations

import re
import sqlite3
from datetime import UTC, datetime, timedelta
from typing import Any

from dashboard import security

USERNAME_MAX = 64
# Any printable characters: output is escaped everywhere; control characters are refused.
_USERNAME_BAD = re.compile(r"[\x00-\x1f\x7f]")
# A token's last_used_at is refreshed at most this often (a write per API call would be waste).
TOKEN_TOUCH_SECONDS = 60


class UserError(ValueError):
    """A refusal whose message is safe to show on the form."""


def iso_now(delta: timedelta | None = None) -> str:
    """UTC now (plus delta) as ISO 8601 with Z, the format every timestamp column uses."""
    moment = datetime.now(UTC)
    if delta:
        moment += delta
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def check_username(username: str) -> str:
    """The username stripped, or UserError with a message for the form."""
    username = (username or "").strip()
    if not username:
        raise UserError("Enter a username.")
    if len(username) > USERNAME_MAX:
        raise UserError(f"The username must be at most {USERNAME_MAX} characters long.")
    if _USERNAME_BAD.search(username):
        raise UserError("The username must not contain control characters.")
    return username


# -- writes (run inside one transaction) ---------------------------------------------------


def create_user_tx(
    conn: sqlite3.Connection, username: str, password_hash: bytes, *, admin: bool = False, status: str = "pending"
) -> dict[str, Any]:
    """Insert a user; the very first user is always an active admin. Returns {"created", "is_admin", "status"}."""
    first = conn.execute("SELECT 1 FROM users LIMIT 1").fetchone() is None
    if conn.execute("SELECT 1 FROM users WHERE username = ?", (username,)).fetchone():
        return {"created": False, "is_admin": False, "status": None}
    if first:
        admin, status = True, "active"
    cur = conn.execute(
        "INSERT INTO users (username, password_hash, is_admin, status, created_at) VALUES (?, ?, ?, ?, ?)",
        (username, password_hash, int(admin), status, iso_now()),
    )
    return {"created": True, "id": cur.lastrowid, "is_admin": admin, "status": status}


def create_session_tx(conn: sqlite3.Connection, user_id: int, session_hash: str, csrf_token: str,
                      old_session_hash: str | None = None) -> None:
    """Store a new session (and drop the one it replaces, so a fixed id is useless after login)."""
    if old_session_hash:
        conn.execute("DELETE FROM sessions WHERE id_hash = ?", (old_session_hash,))
    # Expired sessions go when anyone logs in: cheap, bounded by the number of sessions.
    conn.execute("DELETE FROM sessions WHERE expires_at < ?", (iso_now(),))
    conn.execute(
        "INSERT INTO sessions (id_hash, user_id, csrf_token, created_at, expires_at) VALUES (?, ?, ?, ?, ?)",
        (session_hash, user_id, csrf_token, iso_now(),
         iso_now(timedelta(seconds=security.SESSION_TTL_SECONDS))),
    )


def delete_session_tx(conn: sqlite3.Connection, session_hash: str) -> None:
    conn.execute("DELETE FROM sessions WHERE id_hash = ?", (session_hash,))


def set_password_tx(conn: sqlite3.Connection, user_id: int, password_hash: bytes,
                    keep_session_hash: str | None = None) -> None:
    """Replace the hash and end every other session of the user (and keep their tokens)."""
    conn.execute("UPDATE users SET password_hash = ? WHERE id = ?", (password_hash, user_id))
    conn.execute("DELETE FROM sessions WHERE user_id = ? AND id_hash IS NOT ?", (user_id, keep_session_hash))


def set_status_tx(conn: sqlite3.Connection, user_id: int, status: str) -> None:
    """Approve (active) or disable a user; disabling ends their sessions at once."""
    if status not in {"active", "disabled", "pending"}:
        raise UserError(f"Unknown status {status!r}.")
    row = conn.execute("SELECT is_admin, status FROM users WHERE id = ?", (user_id,)).fetchone()
    if row is None:
        raise UserError("No such user.")
    if status != "active" and row[0] and _active_admins(conn) <= 1 and row[1] == "active":
        raise UserError("The last active admin cannot be disabled.")
    conn.execute("UPDATE users SET status = ? WHERE id = ?", (status, user_id))
    if status != "active":
        conn.execute("DELETE FROM sessions WHERE user_id = ?", (user_id,))


def set_admin_tx(conn: sqlite3.Connection, user_id: int, is_admin: bool) -> None:
    row = conn.execute("SELECT is_admin, status FROM users WHERE id = ?", (user_id,)).fetchone()
    if row is None:
        raise UserError("No such user.")
    if not is_admin and row[0] and row[1] == "active" and _active_admins(conn) <= 1:
        raise UserError("The last active admin cannot lose admin rights.")
    conn.execute("UPDATE users SET is_admin = ? WHERE id = ?", (int(is_admin), user_id))


def delete_user_tx(conn: sqlite3.Connection, user_id: int) -> None:
    row = conn.execute("SELECT is_admin, status FROM users WHERE id = ?", (user_id,)).fetchone()
    if row is None:
        raise UserError("No such user.")
    if row[0] and row[1] == "active" and _active_admins(conn) <= 1:
        raise UserError("The last active admin cannot be deleted.")
    # Explicit deletes: ON DELETE CASCADE only acts when the connection enabled foreign keys.
    conn.execute("DELETE FROM sessions WHERE user_id = ?", (user_id,))
    conn.execute("DELETE FROM api_tokens WHERE user_id = ?", (user_id,))
    conn.execute("DELETE FROM users WHERE id = ?", (user_id,))


def create_token_tx(conn: sqlite3.Connection, user_id: int, token_hash: str, name: str) -> int:
    cur = conn.execute(
        "INSERT INTO api_tokens (user_id, token_hash, name, created_at) VALUES (?, ?, ?, ?)",
        (user_id, token_hash, name, iso_now()),
    )
    return cur.lastrowid


def delete_token_tx(conn: sqlite3.Connection, user_id: int, token_id: int) -> int:
    return conn.execute("DELETE FROM api_tokens WHERE id = ? AND user_id = ?", (token_id, user_id)).rowcount


def touch_token_tx(conn: sqlite3.Connection, token_id: int) -> None:
    conn.execute("UPDATE api_tokens SET last_used_at = ? WHERE id = ?", (iso_now(), token_id))


def _active_admins(conn: sqlite3.Connection) -> int:
    return conn.execute("SELECT COUNT(*) FROM users WHERE is_admin = 1 AND status = 'active'").fetchone()[0]


# -- the app's async API -------------------------------------------------------------------


async def register(
    db, username: str, password: str, registration: str, *, rounds: int = security.DEFAULT_BCRYPT_ROUNDS
) -> dict[str, Any]:
    """Sign a user up. Raises UserError / PasswordPolicyError with a message for the form.

    The password is hashed before the name is looked at, so a taken name costs the same time;
    callers show the same message for "taken" as for "pending" (see routes/auth.py).
    """
    username = check_username(username)
    password_hash = await security.hash_password(password, rounds)
    status = "active" if registration == "open" else "pending"
    return await db.write(_register_tx, username, password_hash, status, registration)


def _register_tx(conn, username, password_hash, status, registration):
    # Closed means closed, even on an empty database: the first admin then comes from the CLI.
    if registration == "closed":
        raise UserError("Registration is closed. Ask an admin to create your account.")
    return create_user_tx(conn, username, password_hash, status=status)


async def authenticate(
    db, username: str, password: str, *, rounds: int = security.DEFAULT_BCRYPT_ROUNDS
) -> dict[str, Any] | None:
    """The user row when the password matches (any status), else None. Same cost either way."""
    row = await db.fetchone(
        "SELECT id, username, password_hash, is_admin, status FROM users WHERE username = ?",
        ((username or "").strip(),),
    )
    ok = await security.verify_password(password, row["password_hash"] if row else None, rounds)
    return row if ok else None


async def start_session(db, user_id: int, old_cookie: str | None = None) -> tuple[str, str]:
    """Create a session; returns (cookie value, csrf token). The old cookie's session is deleted."""
    cookie = security.new_secret()
    csrf = security.new_secret()
    old_hash = security.sha256_hex(old_cookie) if old_cookie else None
    await db.write(create_session_tx, user_id, security.sha256_hex(cookie), csrf, old_hash)
    return cookie, csrf


async def end_session(db, cookie: str) -> None:
    await db.write(delete_session_tx, security.sha256_hex(cookie))


_USER_COLUMNS = "u.id, u.username, u.is_admin, u.status, u.created_at"


async def user_for_session(db, cookie: str) -> dict[str, Any] | None:
    """The active user owning this unexpired session cookie, with its csrf_token and id_hash."""
    if not cookie or len(cookie) > 256:
        return None
    return await db.fetchone(
        f"SELECT {_USER_COLUMNS}, s.csrf_token, s.id_hash FROM sessions s JOIN users u ON u.id = s.user_id "
        "WHERE s.id_hash = ? AND s.expires_at > ? AND u.status = 'active'",
        (security.sha256_hex(cookie), iso_now()),
    )


async def user_for_token(db, token: str) -> dict[str, Any] | None:
    """The active user owning this API token (refreshing its last_used_at now and then)."""
    if not token or len(token) > 256:
        return None
    row = await db.fetchone(
        f"SELECT {_USER_COLUMNS}, t.id AS token_id, t.last_used_at FROM api_tokens t "
        "JOIN users u ON u.id = t.user_id WHERE t.token_hash = ? AND u.status = 'active'",
        (security.sha256_hex(token),),
    )
    if row is None:
        return None
    stale = iso_now(timedelta(seconds=-TOKEN_TOUCH_SECONDS))
    if not row["last_used_at"] or row["last_used_at"] < stale:
        await db.write(touch_token_tx, row["token_id"])
    return row


async def change_password(
    db, user: dict, current: str, new: str, *, rounds: int = security.DEFAULT_BCRYPT_ROUNDS
) -> None:
    """Check the current password, set the new one, end the user's other sessions."""
    security.check_password_policy(new)
    row = await db.fetchone("SELECT password_hash FROM users WHERE id = ?", (user["id"],))
    if row is None or not await security.verify_password(current, row["password_hash"], rounds):
        raise UserError("The current password is wrong.")
    new_hash = await security.hash_password(new, rounds)
    await db.write(set_password_tx, user["id"], new_hash, user.get("id_hash"))


async def create_token(db, user_id: int, name: str) -> str:
    """A new API token for the user; the clear token is returned once and never stored."""
    name = (name or "").strip()[:100] or "token"
    token = security.new_api_token()
    await db.write(create_token_tx, user_id, security.sha256_hex(token), name)
    return token


async def list_tokens(db, user_id: int) -> list[dict[str, Any]]:
    return await db.fetchall(
        "SELECT id, name, created_at, last_used_at FROM api_tokens WHERE user_id = ? ORDER BY id DESC LIMIT 200",
        (user_id,),
    )


async def list_users(db) -> list[dict[str, Any]]:
    return await db.fetchall(
        "SELECT id, username, is_admin, status, created_at FROM users "
        "ORDER BY status = 'pending' DESC, id LIMIT 1000"
    )


# -- the CLI's helpers (sync, own connection) ------------------------------------------------


def find_user_sync(conn: sqlite3.Connection, username: str) -> dict[str, Any] | None:
    row = conn.execute(
        "SELECT id, username, is_admin, status, created_at FROM users WHERE username = ?", (username.strip(),)
    ).fetchone()
    if row is None:
        return None
    return dict(zip(("id", "username", "is_admin", "status", "created_at"), row, strict=True))
