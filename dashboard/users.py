"""Users, sessions, API tokens and login failures: the data functions behind login, admin pages and the CLI.

Writes are plain functions of a ``sqlite3.Connection`` (suffix ``_tx``), so the web app
runs them through ``Database.write`` (one writer, ``BEGIN IMMEDIATE``) and the CLI runs the
very same functions through ``dashboard.db.run_transaction`` on its own connection. That
transaction is what makes "the first user becomes admin" hold under concurrent sign-ups,
across processes too.

Usernames: NFKC-normalised, then 1-64 characters, each a letter, a combining mark, a decimal
digit (any script) or one of ``. _ - @``, starting with a letter or a digit. Spaces, bidi
overrides, zero-width and other invisible characters, and C0/C1 controls are refused. A name
that looks like an existing one (confusable characters, ``confusables`` package, case
included: ``аdmin`` with a Cyrillic а, ``Admin``, ``adrnin``) is answered like a taken one.

Login failures are rows of ``login_failures`` (migration 4), so the limit holds across
restarts and for every worker on the database: more than ``login_max_failures_account``
failures for one account, or ``login_max_failures_address`` from one client address, within
``login_failure_window`` seconds, and the next attempts answer 429 without checking the
password, until the oldest failure leaves the window. A successful login clears its account's
failures (not its address's). An IPv6 client counts by its /64: a host usually holds the whole
range and could take a new address for every guess.
"""

# SQL here is built only from constant column lists and '?' placeholders; values are always bound.
# ruff: noqa: S608

from __future__ import annotations

import asyncio
import ipaddress
import sqlite3
import time
import unicodedata
from datetime import UTC, datetime, timedelta
from typing import Any

from dashboard import security

USERNAME_MAX = 64
USERNAME_PUNCTUATION = frozenset("._-@")
# Letters, combining marks and decimal digits of any script. Not: Zs (spaces), Cf (bidi
# overrides, zero-width), Cc (C0/C1 controls), Co/Cn (private, unassigned), symbols.
_USERNAME_CATEGORIES = frozenset({"Lu", "Ll", "Lt", "Lm", "Lo", "Mn", "Mc", "Nd"})
_MAX_MARKS_IN_A_ROW = 2  # enough for any real letter after NFKC; refuses stacked "zalgo" marks
# A token's last_used_at is refreshed at most this often (a write per API call would be waste).
TOKEN_TOUCH_SECONDS = 60


class UserError(ValueError):
    """A refusal whose message is safe to show on the form."""


class WrongPassword(UserError):
    """The current password given to confirm a change is wrong (counts as a failed login)."""


def iso_now(delta: timedelta | None = None) -> str:
    """UTC now (plus delta) as ISO 8601 with Z, the format every timestamp column uses."""
    moment = datetime.now(UTC)
    if delta:
        moment += delta
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def normalize_username(username: str | None) -> str:
    """NFKC form without surrounding whitespace: how a username is stored and looked up."""
    return unicodedata.normalize("NFKC", username or "").strip()


def _describe(char: str) -> str:
    return f"U+{ord(char):04X} {unicodedata.name(char, 'unnamed character')}"


def check_username(username: str) -> str:
    """The username normalised (see the module docstring), or UserError with a message for the form."""
    username = normalize_username(username)
    if not username:
        raise UserError("Enter a username.")
    if len(username) > USERNAME_MAX:
        raise UserError(f"The username must be at most {USERNAME_MAX} characters long.")
    marks = 0
    for char in username:
        category = unicodedata.category(char)
        if char not in USERNAME_PUNCTUATION and category not in _USERNAME_CATEGORIES:
            raise UserError(
                "A username may contain letters, digits and . _ - @ only "
                f"(no spaces, invisible or control characters): {_describe(char)} is not allowed."
            )
        marks = marks + 1 if category in {"Mn", "Mc"} else 0
        if marks > _MAX_MARKS_IN_A_ROW:
            raise UserError("The username stacks too many combining marks on one letter.")
    if unicodedata.category(username[0])[0] not in {"L", "N"}:
        raise UserError("The username must start with a letter or a digit.")
    return username


def lookalike(username: str, others: list[str]) -> str | None:
    """The first of ``others`` that ``username`` could be mistaken for (equal, case or homoglyphs), or None."""
    import confusables  # loads its mapping on import: only when someone registers

    folded = username.casefold()
    for other in others:
        if other.casefold() == folded or confusables.is_confusable(username, other):
            return other
    return None


# -- writes (run inside one transaction) ---------------------------------------------------


def create_user_tx(
    conn: sqlite3.Connection, username: str, password_hash: bytes, *, admin: bool = False, status: str = "pending",
    compared_up_to: int = 0,
) -> dict[str, Any]:
    """Insert a user; the very first user is always an active admin. Returns {"created", "is_admin", "status"}.

    Not created when the name is taken or looks like a taken one. Names of users with an id up to
    ``compared_up_to`` were already compared by the caller outside the transaction (the
    comparison is slow; the writer must not wait for it): only newer ones are compared here.
    """
    first = conn.execute("SELECT 1 FROM users LIMIT 1").fetchone() is None
    newer = [row[0] for row in conn.execute("SELECT username FROM users WHERE id > ?", (compared_up_to,))]
    if lookalike(username, newer) is not None:
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
    conn.execute("DELETE FROM sessions WHERE user_id = ? AND id_hash IS DISTINCT FROM ?", (user_id, keep_session_hash))


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
    existing = await db.fetchall("SELECT id, username FROM users")
    if await asyncio.to_thread(lookalike, username, [row["username"] for row in existing]) is not None:
        if registration == "closed":
            raise UserError("Registration is closed. Ask an admin to create your account.")
        return {"created": False, "is_admin": False, "status": None}
    compared_up_to = max((row["id"] for row in existing), default=0)
    return await db.write(_register_tx, username, password_hash, status, registration, compared_up_to)


def _register_tx(conn, username, password_hash, status, registration, compared_up_to):
    # Closed means closed, even on an empty database: the first admin then comes from the CLI.
    if registration == "closed":
        raise UserError("Registration is closed. Ask an admin to create your account.")
    return create_user_tx(conn, username, password_hash, status=status, compared_up_to=compared_up_to)


async def authenticate(
    db, username: str, password: str, *, rounds: int = security.DEFAULT_BCRYPT_ROUNDS
) -> dict[str, Any] | None:
    """The user row when the password matches (any status), else None. Same cost either way."""
    row = await db.fetchone(
        "SELECT id, username, password_hash, is_admin, status FROM users WHERE username = ?",
        (normalize_username(username),),
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
        raise WrongPassword("The current password is wrong.")
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


# -- login failures (the persistent rate limit) ---------------------------------------------


def address_key(address: str) -> str:
    """The login limit's key for a client address: IPv4 as is, IPv6 by its /64 (one host's whole range)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address[:64]
    if ip.version == 6:
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


def _failure_keys(username: str, address: str) -> list[tuple[str, str]]:
    return [("account", normalize_username(username).casefold()[:USERNAME_MAX * 4]), ("address", address_key(address))]


async def login_blocked(db, settings, username: str, address: str) -> bool:
    """True when the account or the address has too many recent failed logins."""
    since = time.time() - settings.login_failure_window
    (_, account_key), (_, address_key) = _failure_keys(username, address)
    row = await db.fetchone(
        "SELECT (SELECT COUNT(*) FROM login_failures WHERE scope = 'account' AND key = ? AND failed_at > ?) AS account,"
        " (SELECT COUNT(*) FROM login_failures WHERE scope = 'address' AND key = ? AND failed_at > ?) AS address",
        (account_key, since, address_key, since),
    )
    return row["account"] >= settings.login_max_failures_account or row["address"] >= settings.login_max_failures_address


def record_login_failure_tx(conn: sqlite3.Connection, username: str, address: str, window: float) -> None:
    """Store one failed login for its account and its address; drop rows that left the window."""
    now = time.time()
    conn.execute("DELETE FROM login_failures WHERE failed_at <= ?", (now - window,))
    conn.executemany(
        "INSERT INTO login_failures (scope, key, failed_at) VALUES (?, ?, ?)",
        [(scope, key, now) for scope, key in _failure_keys(username, address)],
    )


def clear_login_failures_tx(conn: sqlite3.Connection, username: str) -> None:
    """Forget an account's failures after its owner logged in (the address's stay counted)."""
    scope, key = _failure_keys(username, "")[0]
    conn.execute("DELETE FROM login_failures WHERE scope = ? AND key = ?", (scope, key))


# -- the CLI's helpers (sync, own connection) ------------------------------------------------


def find_user_sync(conn: sqlite3.Connection, username: str) -> dict[str, Any] | None:
    row = conn.execute(
        "SELECT id, username, is_admin, status, created_at FROM users WHERE username = ?",
        (normalize_username(username),),
    ).fetchone()
    if row is None:
        return None
    return dict(zip(("id", "username", "is_admin", "status", "created_at"), row, strict=True))
