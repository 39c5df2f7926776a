"""The JSON API: shapes, filters, cursor pagination, bearer tokens, the OpenAPI schema."""

from __future__ import annotations

import pytest

from dashboard import users
from tests.functional.conftest import SEED

pytestmark = pytest.mark.anyio

COUNT_KEYS = {"passed", "failed", "skipped", "xfailed", "xpassed", "errors"}


async def test_api_runs_shape_and_counts(seeded_app):
    response = await seeded_app.http.get("/api/runs")
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"runs", "next"} and body["next"] is None
    assert len(body["runs"]) == 7
    run = body["runs"][0]
    assert {"id", "jid", "minion", "status", "counts", "started_at", "duration"} <= set(run)
    assert set(run["counts"]) == COUNT_KEYS
    started = [r["started_at"] for r in body["runs"]]
    assert started == sorted(started, reverse=True)
    web1_last = next(r for r in body["runs"] if r["minion"] == "web-1")
    assert web1_last["jid"] == SEED.jids[2]
    assert web1_last["status"] == "failed"
    assert web1_last["counts"] == {"passed": 3, "failed": 1, "skipped": 1, "xfailed": 0, "xpassed": 0, "errors": 1}


async def test_api_runs_filters(seeded_app):
    get = seeded_app.http.get
    assert {r["minion"] for r in (await get("/api/runs", params={"minion": "web-2"})).json()["runs"]} == {"web-2"}
    by_jid = (await get("/api/runs", params={"jid": SEED.jids[0]})).json()["runs"]
    assert sorted(r["minion"] for r in by_jid) == ["web-1", "web-2"]
    passed = (await get("/api/runs", params={"status": "passed", "minion": "web-1"})).json()["runs"]
    assert [r["jid"] for r in passed] == [SEED.jids[0]]
    assert (await get("/api/runs", params={"minion": "nobody"})).json() == {"runs": [], "next": None}
    assert (await get("/api/runs", params={"status": "bogus"})).status_code == 400
    assert (await get("/api/runs", params={"limit": 0})).status_code == 400
    assert (await get("/api/runs", params={"since": "yesterday"})).status_code == 400


async def test_api_runs_cursor_pagination_is_complete_and_stable(seeded_app):
    seen, cursor = [], None
    while True:
        params = {"limit": 3} | ({"cursor": cursor} if cursor else {})
        body = (await seeded_app.http.get("/api/runs", params=params)).json()
        seen += [r["id"] for r in body["runs"]]
        cursor = body["next"]
        if not cursor:
            break
    everything = [r["id"] for r in (await seeded_app.http.get("/api/runs")).json()["runs"]]
    assert seen == everything
    assert (await seeded_app.http.get("/api/runs", params={"cursor": "not-a-cursor"})).status_code == 400


async def test_api_run_detail_minions_tests(seeded_app):
    runs = (await seeded_app.http.get("/api/runs", params={"minion": "web-2"})).json()["runs"]
    detail = (await seeded_app.http.get(f"/api/runs/{runs[0]['id']}")).json()
    assert detail["grains"]["os"] == "Debian"
    assert {f["nodeid"] for f in detail["failures"]} == {SEED.broken, SEED.xss_test}
    broken = next(f for f in detail["failures"] if f["nodeid"] == SEED.broken)
    assert broken["longrepr"] == SEED.traceback and broken["stdout"] == SEED.stdout_marker
    assert len(detail["results"]) == 6
    assert (await seeded_app.http.get("/api/runs/424242")).status_code == 404
    assert (await seeded_app.http.get("/api/runs/abc")).status_code == 400

    minions = {m["name"]: m for m in (await seeded_app.http.get("/api/minions")).json()["minions"]}
    assert {"web-1", "web-2"} <= set(minions)
    assert minions["web-1"]["runs"] == 3 and minions["web-1"]["last_status"] == "failed"

    test = (await seeded_app.http.get("/api/tests", params={"nodeid": SEED.flaky})).json()
    assert test["flips"] == 4 and test["runs"] == 6 and test["fails"] == 2
    assert [m["minion"] for m in test["minions"]] == ["web-1", "web-2"]
    assert (await seeded_app.http.get("/api/tests", params={"nodeid": "nope"})).status_code == 404
    found = (await seeded_app.http.get("/api/tests", params={"q": "test_web"})).json()["tests"]
    assert len(found) == 4

    job = (await seeded_app.http.get(f"/api/jobs/{SEED.jids[1]}")).json()
    assert job["missing"] == ["db-1"] and job["counts"]["failed"] == 4


async def test_openapi_documents_the_api(seeded_app):
    schema = (await seeded_app.http.get("/api/openapi.json")).json()
    paths = schema["paths"]
    for path in ("/api/runs", "/api/runs/{run_id}", "/api/minions", "/api/tests", "/api/jobs/{jid}"):
        assert path in paths, path
    params = {p["name"] for p in paths["/api/runs"]["get"]["parameters"]}
    assert {"minion", "jid", "status", "limit", "cursor"} <= params
    assert "Run" in schema["components"]["schemas"]
    assert not any(p.startswith(("/login", "/runs/")) for p in paths)  # HTML routes stay out


async def test_bearer_token_from_account_page(seeded_app):
    page = await seeded_app.post_form("/account/tokens", {"name": "ci"})
    assert page.status_code == 200
    token = page.text.split('<code class="token">', 1)[1].split("<", 1)[0]
    async with seeded_app.new_client() as anonymous:
        assert (await anonymous.get("/api/runs")).status_code == 401
        ok = await anonymous.get("/api/runs", headers={"Authorization": f"Bearer {token}"})
        assert ok.status_code == 200 and len(ok.json()["runs"]) == 7
        me = (await anonymous.get("/api/me", headers={"Authorization": f"Bearer {token}"})).json()
        assert me == {"username": "admin", "is_admin": True, "via": "token"}
        # HTML pages accept the token as well.
        assert (await anonymous.get("/", headers={"Authorization": f"Bearer {token}"})).status_code == 200
        wrong = await anonymous.get("/api/runs", headers={"Authorization": f"Bearer {token}x"})
        assert wrong.status_code == 401
    rows = await users.list_tokens(seeded_app.db, 1)
    assert rows[0]["name"] == "ci" and rows[0]["last_used_at"]
    stored = await seeded_app.db.fetchval("SELECT token_hash FROM api_tokens WHERE name = 'ci'")
    assert token not in stored  # only the sha256 is stored
