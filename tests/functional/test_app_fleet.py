"""The fleet for large fleets, on a small one through the real ingester: counts per state, minions
needing attention first and paged, groups by grain (list grains count each element), the matrix
of a page or a group, a test's minions paged."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from dashboard.app import create_app
from tests.functional.conftest import (
    ADMIN,
    XSS,
    AppClient,
    ingest,
    make_settings,
    result_document,
    write_inbox,
    write_job,
)

pytestmark = pytest.mark.anyio

NOW = datetime.now(UTC).replace(microsecond=0)
PASSING = "tests/test_a.py::test_ok"
BROKEN = "tests/test_b.py::test_broken"
# name: (roles, os, outcome of BROKEN in the newest run, hours since the newest run)
MINIONS = {
    "app-1": (["web", "distmon-minion"], "Debian", "passed", 0),
    "app-2": (["web"], "Debian", "failed", 0),
    "app-3": (["db", "distmon-minion"], "Ubuntu", "passed", 30),  # silent for 30 h after hourly runs: late
    "app-4": (["db"], "Debian", "error", 0),
    "app-5": (["web", "db"], "Ubuntu", "passed", 0),
    "app-6": ([], "Debian", "passed", 0),
    "app-7": (["cache"], XSS, "passed", 0),
}


async def _seed(client: AppClient) -> None:
    inbox = client.settings.inbox
    for name, (roles, os_name, broken, silent_hours) in MINIONS.items():
        newest = NOW - timedelta(hours=silent_hours)
        for back in range(4):  # hourly runs, so the ingester learns an interval
            started = newest - timedelta(hours=3 - back)
            outcome = broken if back == 3 else "passed"
            tests = [{"nodeid": PASSING, "outcome": "passed"}, {"nodeid": BROKEN, "outcome": outcome},
                     {"nodeid": "tests/test_c.py::test_skip", "outcome": "skipped"}]
            doc = result_document(name, f"{started:%Y%m%d%H%M%S}{back:06d}", started, tests,
                                  grains={"os": os_name, "roles": roles, "num_cpus": 2})
            write_inbox(inbox, doc)
    await ingest(client)


@pytest.fixture(scope="module")
async def fleet_app(tmp_path_factory, anyio_backend):
    settings = make_settings(tmp_path_factory.mktemp("fleet"))
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as http:
            client = AppClient(app, settings, http)
            await _seed(client)
            assert (await client.register(*ADMIN)).status_code == 303
            assert (await client.login(*ADMIN)).status_code == 303
            yield client


async def test_counts_and_the_order_needing_attention_first(fleet_app):
    fleet = (await fleet_app.http.get("/api/fleet")).json()
    assert fleet["counts"] == {"minions": 7, "failing": 2, "late": 1, "ok": 4}
    assert fleet["by_status"] == {"passed": 5, "failed": 2}
    # Failing first (by name), then late, then the rest (by name).
    assert [(m["name"], m["attention"]) for m in fleet["minions"]] == [
        ("app-2", "failing"), ("app-4", "failing"), ("app-3", "late"),
        ("app-1", "ok"), ("app-5", "ok"), ("app-6", "ok"), ("app-7", "ok"),
    ]
    assert fleet["late"] == ["app-3"] and fleet["next"] is None
    assert fleet["failing"] == 2 and fleet["tests_tracked"] == 21
    assert fleet["pass_rate"] == pytest.approx(12 / 14)
    assert fleet["files"] == ["tests/test_a.py", "tests/test_b.py", "tests/test_c.py"]
    assert fleet["matrix"]["app-2"]["tests/test_b.py"]["state"] == "fail"
    assert fleet["matrix"]["app-2"]["tests/test_c.py"]["state"] == "skip"
    # Each minion's newest run's counts (not zeros: the page reads them by the run's id).
    last = {m["name"]: m["last_counts"] for m in fleet["minions"]}
    assert last["app-2"] == {"passed": 1, "failed": 1, "skipped": 1, "xfailed": 0, "xpassed": 0, "errors": 0}
    assert last["app-4"]["errors"] == 1 and last["app-1"]["passed"] == 2
    failing = (await fleet_app.http.get("/api/fleet", params={"state": "failing"})).json()
    assert [m["name"] for m in failing["minions"]] == ["app-2", "app-4"]
    assert (await fleet_app.http.get("/api/fleet", params={"state": "sick"})).status_code == 400


async def test_pages_reach_every_minion_once_in_order(fleet_app):
    seen, params = [], {"limit": "3"}
    for _ in range(5):
        page = (await fleet_app.http.get("/api/fleet", params=params)).json()
        assert len(page["minions"]) <= 3
        seen += [m["name"] for m in page["minions"]]
        # The matrix covers exactly the page's minions.
        assert set(page["matrix"]) == {m["name"] for m in page["minions"]}
        if not page["next"]:
            break
        params = {"limit": "3", "cursor": page["next"]}
    assert seen == ["app-2", "app-4", "app-3", "app-1", "app-5", "app-6", "app-7"]
    assert (await fleet_app.http.get("/api/fleet", params={"cursor": "garbage!"})).status_code == 400
    # The HTML page links to the next page, which continues where the first ended.
    first = await fleet_app.http.get("/", params={"state": "ok"})
    assert first.status_code == 200
    assert re.findall(r'<tr class="attention-(\w+)', first.text) == ["ok"] * 4
    minions = (await fleet_app.http.get("/api/minions", params={"limit": "4"})).json()
    assert [m["name"] for m in minions["minions"]] == ["app-1", "app-2", "app-3", "app-4"]
    rest = (await fleet_app.http.get("/api/minions", params={"cursor": minions["next"]})).json()
    assert [m["name"] for m in rest["minions"]] == ["app-5", "app-6", "app-7"] and rest["next"] is None
    assert next(m for m in minions["minions"] if m["name"] == "app-3")["late"] is True


async def test_html_pager_links_the_next_page(fleet_app):
    page = await fleet_app.http.get("/", params={"limit": "2"})  # the page size is fixed for HTML
    assert page.status_code == 200
    assert 'rel="next"' not in page.text  # 7 minions fit on one page of 100
    names = re.findall(r'<td><a href="/minions/([^"]+)">', page.text)
    assert names[:3] == ["app-2", "app-4", "app-3"]
    assert 'class="cell fail" title="app-2 · tests/test_b.py: 1 failing' in page.text


async def test_groups_by_grain_count_each_element_of_a_list(fleet_app):
    fleet = (await fleet_app.http.get("/api/fleet", params={"group": "roles"})).json()
    groups = {g["value"]: g for g in fleet["groups"]["rows"]}
    assert {value: g["minions"] for value, g in groups.items()} == {
        "web": 3, "db": 3, "distmon-minion": 2, "cache": 1}
    assert (groups["web"]["failing_minions"], groups["db"]["failing_minions"]) == (1, 1)
    assert groups["db"]["late_minions"] == 1
    assert groups["web"]["pass_rate"] == pytest.approx(5 / 6)
    assert groups["web"]["failing"] == 1
    # Most failing first.
    assert [g["value"] for g in fleet["groups"]["rows"]][:2] == ["db", "web"]
    assert "roles" in fleet["grains"] and "os" in fleet["grains"] and "num_cpus" in fleet["grains"]
    # One value: counts, page and matrix of its minions only.
    web = (await fleet_app.http.get("/api/fleet", params={"group": "roles", "value": "web"})).json()
    assert web["counts"] == {"minions": 3, "failing": 1, "late": 0, "ok": 2}
    assert [m["name"] for m in web["minions"]] == ["app-2", "app-1", "app-5"]
    assert set(web["matrix"]) == {"app-1", "app-2", "app-5"}
    assert web["groups"] is None
    numbers = (await fleet_app.http.get("/api/fleet", params={"group": "num_cpus"})).json()["groups"]["rows"]
    assert [(g["value"], g["minions"]) for g in numbers] == [("2", 7)]
    assert (await fleet_app.http.get("/api/fleet", params={"group": "no such grain"})).status_code == 400
    assert (await fleet_app.http.get("/api/fleet", params={"group": "absent"})).json()["groups"]["rows"] == []


async def test_group_page_escapes_grain_values_and_links_each_value(fleet_app):
    page = await fleet_app.http.get("/", params={"group": "os"})
    assert page.status_code == 200
    assert XSS not in page.text
    hrefs = re.findall(r'<td><a href="/\?([^"]+)">', page.text)
    values = [parse_qs(urlsplit("?" + href.replace("&amp;", "&")).query)["value"][0] for href in hrefs]
    assert sorted(values) == sorted(["Debian", "Ubuntu", XSS])
    one = await fleet_app.http.get("/", params={"group": "os", "value": XSS})
    matrix = one.text.split("<h2>Latest runs")[0]  # the latest runs below list every minion
    assert one.status_code == 200 and XSS not in one.text and "app-7" in matrix and "app-1" not in matrix


async def test_a_tests_minions_page_with_the_failing_ones_apart(fleet_app):
    test = (await fleet_app.http.get("/api/tests", params={"nodeid": BROKEN, "limit": "4"})).json()
    assert test["minion_count"] == 7 and test["failing_minions"] == 2 and test["passing_minions"] == 5
    assert [m["minion"] for m in test["minions"]] == ["app-1", "app-2", "app-3", "app-4"]
    assert sorted(m["minion"] for m in test["failing_now"]) == ["app-2", "app-4"]
    assert test["runs"] == 28 and test["fails"] == 2 and test["flips"] == 2
    rest = (await fleet_app.http.get("/api/tests", params={"nodeid": BROKEN, "cursor": test["next"]})).json()
    assert [m["minion"] for m in rest["minions"]] == ["app-5", "app-6", "app-7"] and rest["next"] is None
    page = await fleet_app.http.get("/tests", params={"nodeid": BROKEN})
    assert page.status_code == 200 and "Failing now" in page.text and "failing on 2 minions" in page.text


async def test_slowest_reads_the_per_test_totals(fleet_app):
    rows = (await fleet_app.http.get("/api/slowest")).json()["tests"]
    assert {row["nodeid"]: (row["runs"], row["minions"]) for row in rows}[BROKEN] == (28, 7)


async def test_late_agrees_with_attention_and_counts_late(make_app):
    # A failing minion that also went silent is failing (not late): the minions' "late", the page's
    # "late" list and counts.late name the same minions; "overdue" still says it went silent.
    async with make_app() as app:
        for name, outcome, silent_hours in (("fresh", "passed", 0), ("quiet", "passed", 30),
                                             ("quiet-broken", "failed", 30), ("broken", "failed", 0)):
            newest = NOW - timedelta(hours=silent_hours)
            for back in range(4):
                started = newest - timedelta(hours=3 - back)
                write_inbox(app.settings.inbox, result_document(
                    name, f"{started:%Y%m%d%H%M%S}{back:06d}", started,
                    [{"nodeid": BROKEN, "outcome": outcome if back == 3 else "passed"}], grains={"os": "Debian"}))
        await ingest(app)
        assert (await app.register(*ADMIN)).status_code == 303
        assert (await app.login(*ADMIN)).status_code == 303
        for params in ({}, {"group": "os", "value": "Debian"}):
            fleet = (await app.http.get("/api/fleet", params=params)).json()
            assert fleet["counts"] == {"minions": 4, "failing": 2, "late": 1, "ok": 1}
            states = {m["name"]: (m["attention"], m["late"], m["overdue"]) for m in fleet["minions"]}
            assert states == {"broken": ("failing", False, False), "quiet-broken": ("failing", False, True),
                              "quiet": ("late", True, True), "fresh": ("ok", False, False)}
            assert fleet["late"] == ["quiet"] == [m["name"] for m in fleet["minions"] if m["attention"] == "late"]
            late_only = (await app.http.get("/api/fleet", params={**params, "state": "late"})).json()
            assert [m["name"] for m in late_only["minions"]] == ["quiet"]
        groups = (await app.http.get("/api/fleet", params={"group": "os"})).json()["groups"]["rows"]
        assert [(g["value"], g["minions"], g["failing_minions"], g["late_minions"]) for g in groups] == [
            ("Debian", 4, 2, 1)]


async def test_a_jobs_runs_page_with_totals_over_all_of_them(make_app):
    async with make_app() as app:
        started = NOW - timedelta(hours=1)
        jid = "20261201120000000001"
        write_job(app.settings.inbox, jid, [f"job-{i}" for i in range(6)], started)
        for i in range(5):
            outcome = "failed" if i == 3 else "passed"
            write_inbox(app.settings.inbox, result_document(f"job-{i}", jid, started + timedelta(seconds=i),
                                                            [{"nodeid": PASSING, "outcome": outcome}]))
        await ingest(app)
        assert (await app.register(*ADMIN)).status_code == 303
        assert (await app.login(*ADMIN)).status_code == 303
        first = (await app.http.get(f"/api/jobs/{jid}", params={"limit": "2"})).json()
        assert first["returned"] == 5 and first["counts"]["passed"] == 4 and first["counts"]["failed"] == 1
        assert first["missing"] == ["job-5"] and first["missing_count"] == 1 and first["targeted_count"] == 6
        seen, job = [], first
        while True:
            seen += [run["minion"] for run in job["runs"]]
            if not job["next"]:
                break
            job = (await app.http.get(f"/api/jobs/{jid}", params={"limit": "2", "cursor": job["next"]})).json()
        assert seen == ["job-3", "job-0", "job-1", "job-2", "job-4"]  # the failed run first
        page = await app.http.get(f"/jobs/{jid}")
        assert page.status_code == 200 and "5 minions returned of 6 targeted" in page.text
        assert 'href="/minions/job-5"' in page.text
