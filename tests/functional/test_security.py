"""Attacks on the dashboard: auth on every route, CSRF, XSS, open redirects, rate limits,
password limits, user enumeration, cookies, session rotation and replay, concurrent sign-ups,
SQL metacharacters in filters."""

from __future__ import annotations

import asyncio
import re
from html.parser import HTMLParser
from urllib.parse import quote

import httpx
import pytest
from fastapi.routing import iter_route_contexts

from dashboard import security, users
from tests.functional.conftest import ADMIN, JS_URL, SEED, XSS, XSS_MINION

pytestmark = pytest.mark.anyio

PUBLIC = {"/login", "/register"}
RAW_XSS = XSS  # what must never appear unescaped
SQL_PAYLOADS = ["' OR 1=1 --", '" OR ""="', "1; DROP TABLE runs; --", "%", "\\", "') UNION SELECT username, "
                "password_hash FROM users --", "*", "%' --"]


def strip_tokens(html: str) -> str:
    return re.sub(r'name="csrf_token" value="[^"]+"', "", html)


class AttributeCollector(HTMLParser):
    """Every (tag, attribute, value) of a page, as a browser's parser sees them."""

    def __init__(self):
        super().__init__()
        self.attributes: list[tuple[str, str, str]] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attributes += [(tag, name, value or "") for name, value in attrs]


def parse(html: str) -> AttributeCollector:
    collector = AttributeCollector()
    collector.feed(html)
    return collector


def concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "1", path)


# -- every route needs a login ------------------------------------------------------------


async def test_every_route_requires_login(seeded_app):
    # FastAPI 0.165 keeps included routers lazily: iter_route_contexts flattens the table.
    routes = [route for route in iter_route_contexts(seeded_app.app.routes) if route.methods]
    assert len(routes) > 25
    checked = 0
    async with seeded_app.new_client() as anonymous:
        for route in routes:
            if route.path in PUBLIC:
                continue
            for method in route.methods - {"HEAD"}:
                response = await anonymous.request(method, concrete(route.path))
                if route.path.startswith("/api/"):
                    assert response.status_code == 401, (method, route.path, response.status_code)
                    assert response.headers["www-authenticate"] == "Bearer"
                else:
                    assert response.status_code == 303, (method, route.path, response.status_code)
                    assert response.headers["location"].startswith("/login?next=")
                checked += 1
        assert checked >= 25
        # The public ones and static files answer without a login.
        for path in ("/login", "/register", "/static/style.css", "/static/app.js"):
            assert (await anonymous.get(path)).status_code == 200, path
        # A deep link survives the detour through the login page.
        response = await anonymous.get("/runs?minion=web-1")
        assert response.headers["location"] == "/login?next=" + quote("/runs?minion=web-1", safe="")


async def test_security_headers_on_every_response(seeded_app):
    async with seeded_app.new_client() as anonymous:
        responses = [await anonymous.get(path) for path in ("/login", "/static/style.css", "/api/runs", "/")]
    responses += [await seeded_app.http.get(path) for path in ("/", "/runs/999999", "/api/runs")]
    for response in responses:
        csp = response.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["referrer-policy"] == "same-origin"
        assert response.headers["x-frame-options"] == "DENY"


async def test_no_inline_scripts_or_styles_in_pages(seeded_app):
    for path in ("/", "/runs", "/minions/web-1", "/tests?nodeid=" + quote(SEED.flaky), "/account", "/admin/users"):
        page = parse((await seeded_app.http.get(path)).text)
        scripts = [value for tag, name, value in page.attributes if tag == "script" and name == "src"]
        assert page.tags.count("script") == len(scripts) == 1, path  # only /static/app.js
        assert "style" not in page.tags, path
        assert not [a for a in page.attributes if a[1] == "style" or a[1].startswith("on")], path


# -- escaping -----------------------------------------------------------------------------


async def test_hostile_strings_are_rendered_escaped(seeded_app):
    web1_last = await seeded_app.db.fetchval(
        "SELECT r.id FROM runs r JOIN minions m ON m.id = r.minion_id WHERE m.name = 'web-1' ORDER BY r.id DESC LIMIT 1"
    )
    pages = {
        "run (test id, message, traceback, stderr, grains)": f"/runs/{web1_last}",
        "fleet (minion id)": "/",
        "runs (minion id)": "/runs",
        "minion (id, grains)": "/minions/" + quote(XSS_MINION, safe=""),
        "test (test id)": "/tests?nodeid=" + quote(SEED.xss_test, safe=""),
        "test (minion id in the SVG timeline and chart)": "/tests?nodeid=" + quote(SEED.stable, safe=""),
        "flaky": "/flaky",
        "compare": f"/compare?a=1&b={web1_last}",
        "job (minion id)": f"/jobs/{SEED.jids[2]}",
    }
    for name, path in pages.items():
        response = await seeded_app.http.get(path)
        assert response.status_code == 200, name
        html = response.text
        assert RAW_XSS not in html, name
        assert "<img src=x" not in html, name
    run_html = (await seeded_app.http.get(pages["run (test id, message, traceback, stderr, grains)"])).text
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in run_html
    assert "Traceback &lt;script&gt;" in run_html
    minion_html = (await seeded_app.http.get(pages["minion (id, grains)"])).text
    assert "&#34;&gt;&lt;img src=x onerror=alert(1)&gt;" in minion_html
    # The minion link encodes the id into the path: no attribute breakout.
    fleet_html = (await seeded_app.http.get("/")).text
    assert 'href="/minions/%22%3E%3Cimg%20src%3Dx%20onerror%3Dalert%281%29%3E"' in fleet_html
    # The JSON API carries the raw strings, as JSON (the client escapes).
    api = (await seeded_app.http.get(f"/api/runs/{web1_last}")).json()
    assert api["grains"]["evil"] == XSS


async def test_username_is_rendered_escaped(seeded_app):
    # Markup is refused as a username now; a name stored before that rule must still come out escaped.
    password_hash = security.hash_password_sync("password-xss-1", rounds=4)
    await seeded_app.db.write(lambda conn: users.create_user_tx(conn, XSS, password_hash))
    html = (await seeded_app.http.get("/admin/users")).text
    assert RAW_XSS not in html
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in html


async def test_javascript_urls_never_become_links(seeded_app):
    for path in ("/", "/minions/web-1", "/minions/" + quote(XSS_MINION, safe=""), "/runs", "/account"):
        html = (await seeded_app.http.get(path)).text
        assert JS_URL in html or path in ("/", "/runs", "/account")  # grains show it as text
        links = [value for _tag, name, value in parse(html).attributes if name in ("href", "src", "action")]
        assert links and not [v for v in links if not v.startswith("/")], (path, links)
    async with seeded_app.new_client() as visitor:
        page = await visitor.get("/login", params={"next": JS_URL})
        assert 'name="next" value="/"' in page.text
        for target in (JS_URL, "//evil.example/", "https://evil.example/", "/\\evil.example", " /x"):
            token = await seeded_app.csrf(visitor)
            response = await visitor.post("/login", data={"username": ADMIN[0], "password": ADMIN[1],
                                                           "csrf_token": token, "next": target})
            assert response.status_code == 303
            assert response.headers["location"] == "/", target
        token = await seeded_app.csrf(visitor)
        response = await visitor.post("/login", data={"username": ADMIN[0], "password": ADMIN[1],
                                                       "csrf_token": token, "next": "/runs?status=failed"})
        assert response.headers["location"] == "/runs?status=failed"


# -- CSRF ---------------------------------------------------------------------------------


async def test_csrf_required_on_every_form_post(make_app):
    async with make_app() as app:
        await app.register(*ADMIN)
        await app.login(*ADMIN)
        async with app.new_client() as second:
            await app.login(*ADMIN, client=second)
            other_token = await app.csrf(second, "/account")
            own_token = await app.csrf(app.http, "/account")
            assert other_token != own_token
            form = {"name": "t"}
            # No token, another session's token, a forged token: 403.
            assert (await app.http.post("/account/tokens", data=form)).status_code == 403
            assert (await app.http.post("/account/tokens", data={**form, "csrf_token": other_token})).status_code == 403
            assert (await app.http.post("/account/tokens", data={**form, "csrf_token": "x" * 43})).status_code == 403
            # A valid token from a cross-site page is still refused.
            cross = await app.http.post("/account/tokens", data={**form, "csrf_token": own_token},
                                        headers={"Origin": "https://evil.example"})
            assert cross.status_code == 403
            cross = await app.http.post("/account/tokens", data={**form, "csrf_token": own_token},
                                        headers={"Sec-Fetch-Site": "cross-site"})
            assert cross.status_code == 403
            assert await app.db.fetchval("SELECT COUNT(*) FROM api_tokens") == 0
            ok = await app.http.post("/account/tokens", data={**form, "csrf_token": own_token},
                                     headers={"Origin": "http://testserver"})
            assert ok.status_code == 200
            # Logout and admin actions too.
            assert (await app.http.post("/logout")).status_code == 403
            assert (await app.http.post("/admin/users/1/disable")).status_code == 403
        # Login and register without the double-submit cookie's value: 403.
        async with app.new_client() as fresh:
            response = await fresh.post("/login", data={"username": ADMIN[0], "password": ADMIN[1]})
            assert response.status_code == 403
            response = await fresh.post("/register", data={"username": "x", "password": "p" * 10,
                                                           "password2": "p" * 10, "csrf_token": "guess"})
            assert response.status_code == 403


# -- passwords, enumeration, rate limit --------------------------------------------------


async def test_password_length_rules(make_app):
    async with make_app() as app:
        too_long = "a" * 73
        response = await app.register("alice", too_long)
        assert response.status_code == 400
        assert "at most 72 bytes" in response.text
        accented = "é" * 37  # 37 characters, 74 bytes
        response = await app.register("alice", accented)
        assert response.status_code == 400 and "74" in response.text
        response = await app.register("alice", "short")
        assert response.status_code == 400 and "at least 8" in response.text
        assert await app.db.fetchval("SELECT COUNT(*) FROM users") == 0
        exactly = "b" * 72
        assert (await app.register("alice", exactly)).status_code == 303
        assert (await app.login("alice", exactly)).status_code == 303
        response = await app.login("alice", exactly + "c")
        assert response.status_code == 400 and "at most 72 bytes" in response.text


async def test_unknown_and_known_usernames_are_indistinguishable(make_app):
    async with make_app() as app:
        await app.register(*ADMIN)
        async with app.new_client() as a, app.new_client() as b:
            known = await app.login(ADMIN[0], "wrong-password", client=a)
            unknown = await app.login("nobody-here", "wrong-password", client=b)
            assert known.status_code == unknown.status_code == 401
            known_html = strip_tokens(known.text).replace(ADMIN[0], "NAME")
            unknown_html = strip_tokens(unknown.text).replace("nobody-here", "NAME")
            assert known_html == unknown_html
            assert "Invalid username or password." in known_html
        # Registration in approval mode: a taken name gets the same answer as a new one.
        async with app.new_client() as c, app.new_client() as d:
            taken = await app.register(ADMIN[0], "another-password", client=c)
            fresh = await app.register("newcomer", "another-password", client=d)
            assert taken.status_code == fresh.status_code == 200
            assert strip_tokens(taken.text) == strip_tokens(fresh.text)
        # The unknown user's check costs a real bcrypt verification too.
        assert not security.verify_password_sync("x" * 10, None, 4)


async def test_login_rate_limit(make_app):
    async with make_app(login_max_failures_account=5) as app:
        await app.register(*ADMIN)
        for _ in range(5):
            assert (await app.login(ADMIN[0], "wrong-password")).status_code == 401
        blocked = await app.login(*ADMIN)
        assert blocked.status_code == 429
        assert "Too many failed attempts" in blocked.text
        # Another username from the same address is not locked out by these failures.
        bob_hash = security.hash_password_sync("bob-password", 4)
        await app.db.write(lambda conn: users.create_user_tx(conn, "bob", bob_hash, status="active"))
        assert (await app.login("bob", "bob-password")).status_code == 303


async def test_login_failures_leave_the_window(make_app):
    async with make_app(login_max_failures_account=2, login_failure_window=1) as app:
        await app.register(*ADMIN)
        for _ in range(2):
            assert (await app.login(ADMIN[0], "wrong-password")).status_code == 401
        assert (await app.login(*ADMIN)).status_code == 429
        # Age the stored failures past the window (instead of sleeping through it).
        await app.db.write(lambda conn: conn.execute("UPDATE login_failures SET failed_at = failed_at - 5"))
        assert (await app.login(*ADMIN)).status_code == 303
        assert await app.db.fetchval("SELECT COUNT(*) FROM login_failures WHERE scope = 'account'") == 0


# -- sessions -----------------------------------------------------------------------------


async def test_session_cookie_flags_rotation_and_logout_replay(make_app):
    async with make_app() as app:
        await app.register(*ADMIN)
        async with app.new_client() as victim:
            # A session id planted before login is never adopted.
            victim.cookies.set(security.SESSION_COOKIE, "planted-by-attacker", domain="testserver.local")
            planted = await app.login(*ADMIN, client=victim)
            assert planted.cookies[security.SESSION_COOKIE] != "planted-by-attacker"
        response = await app.login(*ADMIN)
        set_cookie = response.headers["set-cookie"]
        assert "distmon_session=" in set_cookie
        assert "HttpOnly" in set_cookie and "SameSite=lax" in set_cookie and "Path=/" in set_cookie
        assert "Secure" not in set_cookie  # plain http in this test
        first = response.cookies[security.SESSION_COOKIE]
        assert first != "planted-by-attacker" and len(first) >= 40
        stored = {r["id_hash"] for r in await app.db.fetchall("SELECT id_hash FROM sessions")}
        assert security.sha256_hex(first) in stored
        assert all(first not in id_hash for id_hash in stored)  # the cookie itself is not stored
        # Logging in again rotates the id and kills the previous one.
        second = (await app.login(*ADMIN)).cookies[security.SESSION_COOKIE]
        assert second != first
        async with app.new_client() as replay:
            replay.cookies.set(security.SESSION_COOKIE, first)
            assert (await replay.get("/api/runs")).status_code == 401
        # Logout deletes the session: replaying the cookie afterwards gets 401.
        token = await app.csrf(app.http, "/account")
        response = await app.http.post("/logout", data={"csrf_token": token})
        assert response.status_code == 303
        assert 'distmon_session=""' in response.headers["set-cookie"] or "Max-Age=0" in response.headers["set-cookie"]
        async with app.new_client() as replay:
            replay.cookies.set(security.SESSION_COOKIE, second)
            assert (await replay.get("/api/runs")).status_code == 401
            assert (await replay.get("/")).status_code == 303
        assert await app.db.fetchval("SELECT COUNT(*) FROM sessions WHERE id_hash IN (?, ?)",
                                     (security.sha256_hex(first), security.sha256_hex(second))) == 0


async def test_secure_cookie_over_https(make_app):
    async with make_app() as app:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app.app), base_url="https://testserver") as tls:
            await app.register(*ADMIN, client=tls)
            response = await app.login(*ADMIN, client=tls)
            assert response.status_code == 303
            assert "Secure" in response.headers["set-cookie"]


async def test_thirty_concurrent_first_registrations_make_exactly_one_admin(make_app):
    async with make_app() as app:
        clients = [app.new_client() for _ in range(30)]
        try:
            tokens = await asyncio.gather(*(app.csrf(c, "/register") for c in clients))

            async def sign_up(index: int):
                return await clients[index].post("/register", data={
                    "username": f"user{index}", "password": "concurrent-1", "password2": "concurrent-1",
                    "csrf_token": tokens[index]})

            responses = await asyncio.gather(*(sign_up(i) for i in range(30)))
        finally:
            await asyncio.gather(*(c.aclose() for c in clients))
        assert all(r.status_code in (200, 303) for r in responses)
        rows = await app.db.fetchall("SELECT username, is_admin, status FROM users")
        assert len(rows) == 30
        admins = [r for r in rows if r["is_admin"]]
        assert len(admins) == 1 and admins[0]["status"] == "active"
        assert sum(r["status"] == "pending" for r in rows) == 29
        assert sum(r.status_code == 303 for r in responses) == 1  # only the admin is sent to log in


async def test_approval_flow_and_admin_only_pages(make_app):
    async with make_app() as app:
        await app.register(*ADMIN)
        async with app.new_client() as bob:
            page = await app.register("bob", "bob-password-1", client=bob)
            assert "must approve" in page.text
            pending = await app.login("bob", "bob-password-1", client=bob)
            assert pending.status_code == 403 and "waiting for an admin" in pending.text
            await app.login(*ADMIN)
            bob_id = await app.db.fetchval("SELECT id FROM users WHERE username = 'bob'")
            response = await app.post_form(f"/admin/users/{bob_id}/approve", {})
            assert response.status_code == 303
            assert (await app.login("bob", "bob-password-1", client=bob)).status_code == 303
            assert (await bob.get("/")).status_code == 200
            assert (await bob.get("/admin/users")).status_code == 403
            forbidden = await app.post_form("/admin/users/1/disable", {}, client=bob)
            assert forbidden.status_code == 403
            # Disabling ends bob's sessions at once.
            assert (await app.post_form(f"/admin/users/{bob_id}/disable", {})).status_code == 303
            assert (await bob.get("/api/runs")).status_code == 401
            # The admin cannot lock themselves out.
            own = await app.post_form("/admin/users/1/delete", {})
            assert own.status_code == 400
            assert (await app.post_form(f"/admin/users/{bob_id}/delete", {})).status_code == 303
            assert await app.db.fetchval("SELECT COUNT(*) FROM users") == 1


async def test_password_change_ends_other_sessions(make_app):
    async with make_app() as app:
        await app.register(*ADMIN)
        await app.login(*ADMIN)
        async with app.new_client() as laptop:
            await app.login(*ADMIN, client=laptop)
            wrong = await app.post_form("/account/password", {"current_password": "nope-nope-nope",
                                                              "new_password": "new-password-1",
                                                              "new_password2": "new-password-1"})
            assert wrong.status_code == 400 and "current password is wrong" in wrong.text
            ok = await app.post_form("/account/password", {"current_password": ADMIN[1],
                                                           "new_password": "new-password-1",
                                                           "new_password2": "new-password-1"})
            assert ok.status_code == 200 and "Password changed" in ok.text
            assert (await app.http.get("/api/me")).status_code == 200
            assert (await laptop.get("/api/me")).status_code == 401
        assert (await app.login(ADMIN[0], ADMIN[1])).status_code == 401
        assert (await app.login(ADMIN[0], "new-password-1")).status_code == 303


async def test_registration_modes(make_app, tmp_path):
    async with make_app(tmp_path / "open", registration="open") as app:
        await app.register(*ADMIN)
        assert (await app.register("carol", "carol-password")).headers["location"] == "/login?registered=open"
        assert (await app.login("carol", "carol-password")).status_code == 303
    async with make_app(tmp_path / "closed", registration="closed") as app:
        assert "Registration is closed" in (await app.http.get("/register")).text
        token = await app.csrf(app.http, "/login")
        response = await app.http.post("/register", data={"username": "dave", "password": "dave-password",
                                                          "password2": "dave-password", "csrf_token": token})
        assert response.status_code == 403
        assert await app.db.fetchval("SELECT COUNT(*) FROM users") == 0


# -- SQL metacharacters ---------------------------------------------------------------------


async def test_sql_metacharacters_in_every_filter(seeded_app):
    get = seeded_app.http.get
    total = len((await get("/api/runs")).json()["runs"])
    for payload in SQL_PAYLOADS:
        for key in ("minion", "jid", "status", "path", "since", "until", "q", "cursor"):
            api = await get("/api/runs", params={key: payload})
            assert api.status_code in (200, 400), (key, payload, api.status_code)
            if api.status_code == 200:
                assert api.json()["runs"] == [], (key, payload)  # nothing matches, nothing leaks
            else:
                assert "detail" in api.json()
            page = await get("/runs", params={key: payload})
            assert page.status_code in (200, 400), (key, payload)
            assert "$2b$" not in page.text  # no bcrypt hash ever leaks
        for path, params in (("/tests", {"q": payload}), ("/tests", {"nodeid": payload}),
                             ("/api/tests", {"q": payload}), ("/api/tests", {"nodeid": payload}),
                             ("/compare", {"a": payload, "b": payload}), ("/api/live", {"after": payload})):
            response = await get(path, params=params)
            assert response.status_code in (200, 400, 404), (path, payload, response.status_code)
            assert "$2b$" not in response.text
        for path in ("/minions/", "/jobs/", "/api/minions/", "/api/jobs/"):
            response = await get(path + quote(payload, safe=""))
            assert response.status_code == 404, (path, payload, response.status_code)
    # Still all there.
    assert len((await get("/api/runs")).json()["runs"]) == total
    assert await seeded_app.db.fetchval("SELECT COUNT(*) FROM users") >= 1


async def test_out_of_range_numbers_and_odd_strings_are_4xx(seeded_app):
    huge = "9" * 25
    cursor_with_huge_id = "WyJ4IiwgMTAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMF0"  # ["x", 10**30]
    for path in (f"/runs/{huge}", f"/api/runs/{huge}", f"/runs/{huge}/export.json", f"/api/live?after={huge}",
                 f"/api/compare?a={huge}&b=1", f"/api/runs?cursor={cursor_with_huge_id}", "/runs?since=9999-99-99",
                 "/api/runs?limit=" + huge, "/runs/-1"):
        response = await seeded_app.http.get(path)
        assert response.status_code == 400, (path, response.status_code)
    for path in ("/runs?q=%00", "/runs?minion=%00", "/api/runs?jid=%00", "/api/tests?q=" + "a" * 4096):
        response = await seeded_app.http.get(path)
        assert response.status_code == 200, path
    for path in ("/tests?nodeid=%00", "/minions/%00", "/jobs/%00"):
        assert (await seeded_app.http.get(path)).status_code == 404, path


# -- hardening after the attack pass (issue 15) ---------------------------------------------


def assert_security_headers(response: httpx.Response) -> None:
    assert "frame-ancestors 'none'" in response.headers.get("content-security-policy", ""), response
    assert response.headers.get("x-content-type-options") == "nosniff", response
    assert response.headers.get("x-frame-options") == "DENY", response


async def test_a_foreign_host_header_is_refused_before_anything_runs(make_app):
    """DNS rebinding: the attacker's page names its own host; on a fresh database it would register the admin."""
    async with make_app(registration="open") as app:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app.app),
                                     base_url="http://rebind.evil.example") as rebound:
            page = await rebound.get("/register")
            assert page.status_code == 400 and "Invalid host header" in page.text
            assert_security_headers(page)
            posted = await rebound.post("/register", data={"username": "mallory", "password": "p" * 12,
                                                           "password2": "p" * 12, "csrf_token": "x" * 43},
                                        headers={"Origin": "http://rebind.evil.example"})
            assert posted.status_code == 400
        assert await app.db.fetchval("SELECT COUNT(*) FROM users") == 0
        assert (await app.http.get("/register")).status_code == 200  # the configured name still works


async def test_error_pages_carry_the_security_headers(make_app):
    async with make_app() as app:
        async def explode():
            raise RuntimeError("an unexpected bug")

        app.app.add_api_route("/explode", explode)  # stands for any route with a bug
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app.app, raise_app_exceptions=False),
                                     base_url="http://testserver") as client:
            crashed = await client.get("/explode")
            assert crashed.status_code == 500 and "Traceback" not in crashed.text
            assert "Internal error" in crashed.text
            assert_security_headers(crashed)
            for path, status in (("/no/such/page", 404), ("/static/missing.css", 404), ("/api/runs", 401),
                                 ("/tests?q=" + "a" * 50_000, 400)):
                response = await client.get(path)
                assert response.status_code == status, path
                assert_security_headers(response)


async def test_over_long_search_input_is_a_400_with_a_message(seeded_app):
    pattern = "a" * 50_001  # as a LIKE pattern over SQLite's 50,000-byte limit: "pattern too complex", a 500
    for path in ("/tests", "/api/tests", "/runs", "/api/runs"):
        for name in ("q", "path"):
            response = await seeded_app.http.get(path, params={name: pattern})
            assert response.status_code == 400, (path, name, response.status_code)
            assert f"Parameter {name} is too long: at most 4096 characters." in response.text
    response = await seeded_app.http.get("/tests", params={"nodeid": "x" * 4097})
    assert response.status_code == 400
    response = await seeded_app.http.get("/minions/" + "m" * 5000)
    assert response.status_code == 400 and "too long" in response.text


async def test_a_logged_in_form_needs_the_session_token_not_the_anonymous_cookie(make_app):
    async with make_app() as app:
        await app.register(*ADMIN)
        assert (await app.login(*ADMIN)).status_code == 303
        # A value the attacker planted as the anonymous cookie (e.g. from a sibling host).
        planted = security.new_secret()
        app.http.cookies.set(security.CSRF_COOKIE, planted)
        forged = await app.http.post("/account/tokens", data={"name": "t", "csrf_token": planted})
        assert forged.status_code == 403
        assert await app.db.fetchval("SELECT COUNT(*) FROM api_tokens") == 0
        session_token = await app.csrf(app.http, "/account")
        assert session_token != planted
        assert (await app.http.post("/account/tokens", data={"name": "t", "csrf_token": session_token})).status_code == 200


async def test_the_anonymous_csrf_cookie_is_not_adopted_when_malformed_and_rotates_at_login(make_app):
    async with make_app() as app:
        await app.register(*ADMIN)
        async with app.new_client() as visitor:
            visitor.cookies.set(security.CSRF_COOKIE, "chosen-by-the-attacker-0123456789")
            page = await visitor.get("/login")
            issued = page.cookies.get(security.CSRF_COOKIE)
            assert issued and issued != "chosen-by-the-attacker-0123456789"
            assert f'value="{issued}"' in page.text
            # The planted value is no CSRF token for the login form either.
            refused = await visitor.post("/login", data={"username": ADMIN[0], "password": ADMIN[1],
                                                         "csrf_token": "chosen-by-the-attacker-0123456789"})
            assert refused.status_code == 403
        async with app.new_client() as visitor:
            before = await app.csrf(visitor, "/login")
            response = await app.login(*ADMIN, client=visitor)
            assert response.status_code == 303
            after = response.cookies.get(security.CSRF_COOKIE)
            assert after and after != before


@pytest.mark.parametrize(
    ("username", "why"),
    [
        ("\u202eadmin", "U+202E RIGHT-TO-LEFT OVERRIDE"),
        ("ad\u200bmin", "U+200B ZERO WIDTH SPACE"),
        ("ad\u0085min", "U+0085"),
        ("ad\u00a0min", "not allowed"),  # NFKC makes it a plain space: refused as a space
        ("bob smith", "U+0020 SPACE"),
        ("<b>", "U+003C LESS-THAN SIGN"),
        ("-bob", "start with a letter or a digit"),
        ("e\u0301\u0301\u0301\u0301", "combining marks"),  # NFKC composes the first into é
    ],
)
async def test_usernames_outside_the_safe_set_are_refused(make_app, username, why):
    async with make_app() as app:
        response = await app.register(username, "password-12345")
        assert response.status_code == 400
        assert why in response.text
        assert await app.db.fetchval("SELECT COUNT(*) FROM users") == 0


async def test_look_alikes_of_existing_names_are_not_created(make_app):
    async with make_app() as app:
        await app.register(*ADMIN)
        for impostor in ("\u0430dmin", "Admin", "ADMIN", "\uff41\uff44\uff4d\uff49\uff4e", "adrnin", "admín"[:0] + "adm1n"):
            async with app.new_client() as client:
                response = await app.register(impostor, "password-12345", client=client)
                assert response.status_code == 200 and "An admin must approve" in response.text, impostor
        names = [row["username"] for row in await app.db.fetchall("SELECT username FROM users")]
        assert names == [ADMIN[0]]
        # Real, different names in any script are fine; NFKC forms are stored.
        for name, stored in (("zoë", "zoë"), ("Дмитрий", "Дмитрий"), ("ﬁona", "fiona"), ("李雷", "李雷")):
            async with app.new_client() as client:
                assert (await app.register(name, "password-12345", client=client)).status_code == 200
            assert await app.db.fetchval("SELECT COUNT(*) FROM users WHERE username = ?", (stored,)) == 1


async def test_the_login_limit_is_stored_and_shared_by_workers_and_restarts(make_app, tmp_path):
    limits = {"login_max_failures_account": 3, "login_max_failures_address": 5}
    async with make_app(tmp_path, **limits) as first:
        await first.register(*ADMIN)
        for _ in range(2):
            assert (await first.login(ADMIN[0], "wrong-password")).status_code == 401
        # A second worker on the same database counts the same failures.
        async with make_app(tmp_path, **limits) as second:
            assert (await second.login(ADMIN[0], "wrong-password")).status_code == 401
            assert (await second.login(*ADMIN)).status_code == 429
        assert (await first.login(*ADMIN)).status_code == 429
    # A restart forgets nothing.
    async with make_app(tmp_path, **limits) as restarted:
        assert (await restarted.login(*ADMIN)).status_code == 429
        # Per address: spreading guesses over many accounts stops at the address limit.
        await restarted.db.write(lambda conn: conn.execute("DELETE FROM login_failures"))
        for index in range(5):
            assert (await restarted.login(f"nobody-{index}", "wrong-password")).status_code == 401
        assert (await restarted.login("nobody-else", "wrong-password")).status_code == 429
        assert (await restarted.login(*ADMIN)).status_code == 429  # same address


async def test_guessing_the_current_password_on_the_account_page_is_limited(make_app):
    async with make_app(login_max_failures_account=3) as app:
        await app.register(*ADMIN)
        assert (await app.login(*ADMIN)).status_code == 303
        form = {"new_password": "new-password-123", "new_password2": "new-password-123"}
        for _ in range(3):
            wrong = await app.post_form("/account/password", {**form, "current_password": "a-guess-1234"})
            assert wrong.status_code == 400 and "current password is wrong" in wrong.text
        right = await app.post_form("/account/password", {**form, "current_password": ADMIN[1]})
        assert right.status_code == 429 and "Too many failed attempts" in right.text
        # The login form counts the same failures.
        async with app.new_client() as other:
            assert (await app.login(*ADMIN, client=other)).status_code == 429


async def test_pages_are_not_cached_and_https_gets_hsts(make_app):
    async with make_app() as app:
        await app.register(*ADMIN)
        await app.login(*ADMIN)
        for path in ("/", "/api/runs", "/login", "/no/such/page"):
            assert (await app.http.get(path)).headers.get("cache-control") == "no-store", path
        static = await app.http.get("/static/style.css")
        assert static.status_code == 200 and static.headers.get("cache-control") != "no-store"
        assert "strict-transport-security" not in static.headers  # plain http
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app.app), base_url="https://testserver") as tls:
            assert (await tls.get("/login")).headers["strict-transport-security"] == "max-age=31536000"


async def test_an_ipv6_client_counts_by_its_slash_64(make_app):
    async with make_app(login_max_failures_address=3) as app:

        def client_from(address: str) -> httpx.AsyncClient:
            transport = httpx.ASGITransport(app=app.app, client=(address, 40000))
            return httpx.AsyncClient(transport=transport, base_url="http://testserver")

        for index in range(3):  # a new address of the same /64 for every guess
            async with client_from(f"2001:db8:0:1::{index + 1:x}") as client:
                assert (await app.login(f"guess-{index}", "wrong-password", client=client)).status_code == 401
        async with client_from("2001:db8:0:1:ffff::9") as same_range, client_from("2001:db8:0:2::1") as other:
            assert (await app.login("guess-x", "wrong-password", client=same_range)).status_code == 429
            assert (await app.login("guess-y", "wrong-password", client=other)).status_code == 401
