"""The HTML pages over data that came through the real ingester (see conftest.SEED)."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from html import unescape
from urllib.parse import quote, urlencode

import pytest

from tests.functional.conftest import SEED, XSS_MINION

pytestmark = pytest.mark.anyio


async def run_ids(app, minion: str) -> list[int]:
    rows = await app.db.fetchall(
        "SELECT r.id FROM runs r JOIN minions m ON m.id = r.minion_id WHERE m.name = ? ORDER BY r.started_at", (minion,)
    )
    return [row["id"] for row in rows]


async def test_fleet_matrix_pass_rate_and_missing_minion(seeded_app):
    page = await seeded_app.http.get("/")
    assert page.status_code == 200
    html = page.text
    for minion in SEED.minions:
        assert f'href="/minions/{minion}"' in html
    # Test files as matrix columns; web-1's test_web.py cell is failing (test_broken fails now).
    assert 'title="tests/test_web.py"' in html
    assert re.search(r'class="cell fail" title="web-1 · tests/test_web.py: 1 failing', html)
    assert re.search(r'class="cell pass" title="web-1 · tests/test_new.py: 0 failing', html)
    assert "pass rate" in html
    # Latest runs, newest first, wired for live updates.
    assert "data-live-after=" in html


async def test_runs_list_filters_and_cursor(seeded_app):
    page = await seeded_app.http.get("/runs", params={"minion": "web-1"})
    assert page.status_code == 200
    ids = [int(x) for x in re.findall(r'href="/runs/(\d+)">#', page.text)]
    assert sorted(ids) == sorted(await run_ids(seeded_app, "web-1"))
    failed = await seeded_app.http.get("/runs", params={"status": "failed", "minion": "web-2"})
    assert len(re.findall(r'href="/runs/(\d+)">#', failed.text)) == 2
    # Text search on test ids: only the last job ran test_added.
    searched = await seeded_app.http.get("/runs", params={"q": "test_added"})
    assert len(re.findall(r'href="/runs/(\d+)">#', searched.text)) == 2
    dated = await seeded_app.http.get("/runs", params={"since": "2026-11-02"})
    assert "No runs match." in dated.text
    dated = await seeded_app.http.get("/runs", params={"since": "2026-11-01", "until": "2026-11-01"})
    assert len(re.findall(r'href="/runs/(\d+)">#', dated.text)) == 7
    # Cursor pagination: pages of 2 reach every run exactly once.
    seen, params = [], {"limit": "2"}
    for _ in range(10):
        page = await seeded_app.http.get("/runs", params=params)
        seen += [int(x) for x in re.findall(r'href="/runs/(\d+)">#', page.text)]
        match = re.search(r'rel="next" href="/runs\?([^"]+)"', page.text)
        if not match:
            break
        params = dict(pair.split("=", 1) for pair in unescape(match.group(1)).split("&"))
        params = {k: v.replace("%3D", "=") for k, v in params.items()}
    assert len(seen) == len(set(seen)) == 7


async def test_run_page_failures_collapsed_with_traceback_and_history_links(seeded_app):
    run_id = (await run_ids(seeded_app, "web-1"))[-1]
    page = await seeded_app.http.get(f"/runs/{run_id}")
    assert page.status_code == 200
    html = page.text
    assert html.count('<details class="failure"') == 2  # test_broken failed + the xss test errored in setup
    assert SEED.stdout_marker in html
    assert "assert 1 == 2" in html
    assert f'href="/tests?{urlencode({"nodeid": SEED.broken})}"' in html
    assert f'href="/jobs/{SEED.jids[2]}"' in html
    assert "JUnit XML" in html and "osrelease" not in html  # grains of this run: os, evil, url
    assert "Debian" in html
    previous = (await run_ids(seeded_app, "web-1"))[-2]
    assert f'href="/compare?a={previous}&amp;b={run_id}"' in html


async def test_job_page_lists_minions_and_the_one_that_never_returned(seeded_app):
    page = await seeded_app.http.get(f"/jobs/{SEED.jids[0]}")
    assert page.status_code == 200
    assert "Targeted but never returned" in page.text
    assert 'href="/minions/db-1"' in page.text
    for run_id in [(await run_ids(seeded_app, m))[0] for m in SEED.minions]:
        assert f'href="/runs/{run_id}"' in page.text
    assert (await seeded_app.http.get("/jobs/nope")).status_code == 404


async def test_minion_page_charts_and_grains(seeded_app):
    page = await seeded_app.http.get("/minions/web-2")
    assert page.status_code == 200
    assert page.text.count("<svg") == 2
    assert page.text.count("<circle") == 6  # 3 runs x (pass rate + duration)
    assert "Failing now" in page.text and SEED.broken in page.text
    assert (await seeded_app.http.get("/minions/nope")).status_code == 404


async def test_test_page_timeline_flakiness_first_failure_last_pass(seeded_app):
    page = await seeded_app.http.get("/tests", params={"nodeid": SEED.flaky})
    assert page.status_code == 200
    html = page.text
    assert len(re.findall(r'<rect x="\d+" y="0" width="7"', html)) == 6  # 3 runs on each of 2 minions
    assert "4 pass/fail flips" in html  # pass, fail, pass on each minion
    broken = await seeded_app.http.get("/tests", params={"nodeid": SEED.broken})
    assert "2026-11-01 13:00:05 UTC" in broken.text  # first failure: start of the failing streak
    assert "2026-11-01 12:00:05 UTC" in broken.text  # last pass
    search = await seeded_app.http.get("/tests", params={"q": "test_fl"})
    assert SEED.flaky in search.text and SEED.broken not in search.text


async def test_flaky_and_slowest(seeded_app):
    flaky = await seeded_app.http.get("/flaky")
    assert SEED.flaky in flaky.text
    assert SEED.stable not in flaky.text
    slowest = await seeded_app.http.get("/slowest")
    order = [SEED.broken, SEED.stable, SEED.flaky]
    positions = [slowest.text.index(quote(nodeid, safe="")) for nodeid in order]
    assert positions == sorted(positions)


async def test_compare_two_runs(seeded_app):
    first, second, third = await run_ids(seeded_app, "web-1")
    page = await seeded_app.http.get("/compare", params={"a": first, "b": second})
    assert page.status_code == 200
    sections = dict(re.findall(r"<h2>([A-Za-z ]+) \((\d+)\)</h2>", page.text))
    assert sections == {"New failures": "2", "Fixed": "0", "Still failing": "0", "Added tests": "0",
                        "Removed tests": "0"}
    diff = (await seeded_app.http.get("/api/compare", params={"a": second, "b": third})).json()
    assert diff["fixed"] == [SEED.flaky]
    assert diff["still_failing"] == [SEED.broken]
    assert diff["added"] == sorted([SEED.added, SEED.xss_test])
    assert diff["new_failures"] == [SEED.xss_test]
    bad = await seeded_app.http.get("/compare", params={"a": "x';--", "b": "1"})
    assert bad.status_code == 400


async def test_exports_junit_xml_and_json(seeded_app):
    run_id = (await run_ids(seeded_app, "web-1"))[-1]
    xml = await seeded_app.http.get(f"/runs/{run_id}/junit.xml")
    assert xml.status_code == 200 and xml.headers["content-type"].startswith("application/xml")
    suite = ET.fromstring(xml.content)
    assert suite.get("failures") == "1" and suite.get("errors") == "1"
    cases = {case.get("name"): case for case in suite.iter("testcase")}
    assert cases["test_broken"].find("failure").text == SEED.traceback
    assert cases["test_ok"].find("failure") is None
    exported = json.loads((await seeded_app.http.get(f"/runs/{run_id}/export.json")).content)
    assert exported["id"] == run_id and exported["minion"] == "web-1"
    assert {t["nodeid"] for t in exported["tests"]} >= {SEED.broken, SEED.added}
    assert (await seeded_app.http.get("/runs/999999/junit.xml")).status_code == 404


async def test_live_endpoint_returns_only_newer_runs(seeded_app):
    latest = await seeded_app.db.fetchval("SELECT MAX(id) FROM runs")
    data = (await seeded_app.http.get("/api/live", params={"after": latest - 2})).json()
    assert [run["id"] for run in data["runs"]] == [latest - 1, latest]
    assert data["latest"] == latest
    assert (await seeded_app.http.get("/api/live", params={"after": latest})).json()["runs"] == []


async def test_hostile_minion_name_page(seeded_app):
    page = await seeded_app.http.get("/minions/" + quote(XSS_MINION, safe=""))
    assert page.status_code == 200
    assert "<img src=x" not in page.text


async def test_empty_database_pages(make_app):
    async with make_app() as app:
        await app.register("first", "first-password")
        await app.login("first", "first-password")
        for path in ("/", "/runs", "/tests", "/tests?q=x", "/flaky", "/slowest", "/compare", "/account",
                     "/admin/users", "/api/runs", "/api/minions", "/api/fleet", "/api/flaky", "/api/slowest",
                     "/api/live"):
            response = await app.http.get(path)
            assert response.status_code == 200, (path, response.status_code)
        runs = await app.http.get("/runs")
        assert "data-live-after=\"0\"" in runs.text and "No runs yet" in runs.text
        assert (await app.http.get("/api/runs")).json() == {"runs": [], "next": None}
