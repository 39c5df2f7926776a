"""Security primitives of the dashboard: passwords, session ids, CSRF, login rate limit, headers.

Configuration (dashboard/config.py; callers pass the values in):

.. code-block:: yaml

    DISTMON_BCRYPT_ROUNDS: 12      # Settings.bcrypt_rounds, the ``rounds`` argument here; tests use 4
    DISTMON_SECURE_COOKIES: auto   # auto: Secure when the request is https; 1; 0

- Passwords: bcrypt called directly (passlib breaks with bcrypt 5), hashed and checked in a
  worker thread so the event loop never blocks for the ~250 ms a cost-12 hash takes.
  8 characters minimum, 72 bytes (UTF-8) maximum: bcrypt ignores or refuses the rest, so the
  form refuses it with a clear message instead of silently truncating.
- Sessions: the cookie ``distmon_session`` holds 32 random bytes; the database stores only
  their sha256 (a leaked database row cannot be replayed as a cookie).
- CSRF: every form POST carries ``csrf_token``. Logged in, it must equal the session's token
  (and only that); anonymous (login, register), it must equal the ``distmon_csrf`` cookie
  (double submit; the cookie is SameSite=Lax so a cross-site POST never carries it; a cookie
  not shaped like a token we issue is replaced, never adopted; a login rotates it). A request
  whose ``Origin`` names another host, or whose ``Sec-Fetch-Site`` is ``cross-site``, is
  refused too. Behind a reverse proxy, pass the browser's Host through (nginx:
  ``proxy_set_header Host $host``), list it in ``DISTMON_ALLOWED_HOSTS`` and the proxy's
  address in ``DISTMON_TRUSTED_PROXIES`` so https is seen (Secure cookies) and Origin matches.
- Login rate limit: stored in the database (dashboard/users.py, docs/security.md), per account
  and per client address; the address is the direct peer's unless it is a trusted proxy.
- Headers: :data:`SECURITY_HEADERS` on every response, error pages included (app.py wraps the
  whole middleware stack in :class:`SecurityHeadersMiddleware`); ``Cache-Control: no-store``
  on everything but ``/static/``; ``Strict-Transport-Security`` over https.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
from urllib.parse import urlsplit

import bcrypt

SESSION_COOKIE = "distmon_session"
CSRF_COOKIE = "distmon_csrf"
SESSION_TTL_SECONDS = 7 * 24 * 3600
PASSWORD_MIN_CHARS = 8
PASSWORD_MAX_BYTES = 72
TOKEN_PREFIX = "dm_"  # noqa: S105 (a prefix, not a secret)

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = [
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"permissions-policy", b"camera=(), microphone=(), geolocation=()"),
]
NO_STORE = (b"cache-control", b"no-store")
# Sent only over https (directly, or from a trusted proxy that says so): one year, as ASVS asks.
STRICT_TRANSPORT_SECURITY = (b"strict-transport-security", b"max-age=31536000")


class PasswordPolicyError(ValueError):
    """The password is refused before hashing; the message is shown to the user."""


DEFAULT_BCRYPT_ROUNDS = 12  # Settings.bcrypt_rounds' default; clamped there to bcrypt's 4..31


def check_password_policy(password: str) -> bytes:
    """Return the password's UTF-8 bytes, or raise PasswordPolicyError with a message for the form."""
    if len(password) < PASSWORD_MIN_CHARS:
        raise PasswordPolicyError(f"The password must be at least {PASSWORD_MIN_CHARS} characters long.")
    encoded = password.encode("utf-8")
    if len(encoded) > PASSWORD_MAX_BYTES:
        raise PasswordPolicyError(
            f"The password is too long: at most {PASSWORD_MAX_BYTES} bytes in UTF-8 "
            f"(this one has {len(encoded)}). Accented letters and emoji take 2-4 bytes each."
        )
    return encoded


def hash_password_sync(password: str, rounds: int = DEFAULT_BCRYPT_ROUNDS) -> bytes:
    """bcrypt hash of a password that passed the policy (raises PasswordPolicyError)."""
    encoded = check_password_policy(password)
    return bcrypt.hashpw(encoded, bcrypt.gensalt(rounds=rounds))


async def hash_password(password: str, rounds: int = DEFAULT_BCRYPT_ROUNDS) -> bytes:
    """hash_password_sync in a worker thread."""
    return await asyncio.to_thread(hash_password_sync, password, rounds)


_dummy_hashes: dict[int, bytes] = {}


def _dummy_hash(rounds: int) -> bytes:
    # A hash at the current cost, so checking an unknown user costs what checking a known one does.
    if rounds not in _dummy_hashes:
        _dummy_hashes[rounds] = bcrypt.hashpw(secrets.token_bytes(16), bcrypt.gensalt(rounds=rounds))
    return _dummy_hashes[rounds]


def verify_password_sync(password: str, stored_hash: bytes | str | None, rounds: int = DEFAULT_BCRYPT_ROUNDS) -> bool:
    """True when password matches stored_hash; with no hash, burns the same time and returns False."""
    encoded = password.encode("utf-8")
    if len(encoded) > PASSWORD_MAX_BYTES:
        # Could never have been set; still spend the time of a check.
        encoded = encoded[:PASSWORD_MAX_BYTES]
        stored_hash, real = None, False
    else:
        real = stored_hash is not None
    if isinstance(stored_hash, str):
        stored_hash = stored_hash.encode()
    try:
        matched = bcrypt.checkpw(encoded, stored_hash if real else _dummy_hash(rounds))
    except ValueError:
        return False
    return matched and real


async def verify_password(
    password: str, stored_hash: bytes | str | None, rounds: int = DEFAULT_BCRYPT_ROUNDS
) -> bool:
    """verify_password_sync in a worker thread (``rounds``: the cost of the stand-in hash)."""
    return await asyncio.to_thread(verify_password_sync, password, stored_hash, rounds)


def new_secret() -> str:
    """32 random bytes, URL-safe: session ids and CSRF tokens."""
    return secrets.token_urlsafe(32)


def new_api_token() -> str:
    """A fresh API token (shown once; only its sha256 is stored)."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def sha256_hex(value: str) -> str:
    """sha256 of a secret, as stored in the database."""
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


def tokens_equal(a: str | None, b: str | None) -> bool:
    """Constant-time comparison; False when either side is empty."""
    if not a or not b:
        return False
    return hmac.compare_digest(a.encode("utf-8"), b.encode("utf-8"))


def cross_site_request(headers, host: str | None) -> bool:
    """True when the browser says the request comes from another site (Origin / Sec-Fetch-Site)."""
    if headers.get("sec-fetch-site", "").lower() == "cross-site":
        return True
    origin = headers.get("origin")
    if origin and host:
        if origin == "null":
            return True
        if urlsplit(origin).netloc.lower() != host.lower():
            return True
    return False


def safe_next_url(value: str | None, default: str = "/") -> str:
    """A local redirect target: a path on this site, never another host or a javascript: URL."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return default
    if any(ord(ch) < 32 for ch in value):
        return default
    parts = urlsplit(value)
    if parts.scheme or parts.netloc:
        return default
    return value


class SecurityHeadersMiddleware:
    """Pure ASGI middleware adding the security headers to every HTTP response."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        extra = []
        if not scope["path"].startswith("/static/"):
            # Pages and API answers hold test results and tokens: never kept in a browser's or proxy's cache.
            extra.append(NO_STORE)
        if scope.get("scheme") == "https":
            extra.append(STRICT_TRANSPORT_SECURITY)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                headers.extend(item for item in (*SECURITY_HEADERS, *extra) if item[0] not in present)
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)
