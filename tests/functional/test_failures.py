"""Triage end to end on fixtures: signatures stored at ingest, /failures verdicts and separating
grains, new / fixed / still failing, mutes with expiry, the audit log, FTS, the backfill."""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime, timedelta

import pytest

from dashboard import failures, triage
from dashboard.__main__ import main as cli
from dashboard.db import connect_sync, run_transaction
from tests.functional.conftest import ADMIN, XSS, ingest, result_document, write_inbox, write_job

pytestmark = pytest.mark.anyio

FLEET = {
    "web-1": {"os": "Debian", "osrelease": "11", "roles": ["web", "edge"], "virtual": "kvm"},
    "web-2": {"os": "Debian", "osrelease": "11", "roles": ["web"], "virtual": "physical"},
    "db-1": {"os": "Debian", "osrelease": "12", "roles": ["db"], "virtual": "kvm"},
    "db-2": {"os": "Debian", "osrelease": "12", "roles": ["db"], "virtual": "physical"},
}
OK = "tests/test_fleet.py::test_ok"
EVERYWHERE = "tests/test_fleet.py::test_everywhere"
ON_WEB = "tests/test_fleet.py::test_only_on_11"
FLAKY = "tests/test_fleet.py::test_flaky"
START = datetime(2026, 11, 20, 8, 0, tzinfo=UTC)


def failed(nodeid: str, message: str, line: int, exception: str = "AssertionError", outcome: str = "failed") -> dict:
    file = nodeid.split("::")[0]
    return {"nodeid": nodeid, "outcome": outcome, "message": f"{exception}: {message}",
            "longrepr": f"def test():\n>       check()\nE       {exception}: {message}\n\n{file}:{line}: {exception}"}


def jid_of(job: int) -> str:
    return f"20261120{job:02d}0000000001"  # one salt job per round, run on every minion


def passed(nodeid: str) -> dict:
    return {"nodeid": nodeid, "outcome": "passed"}


def fleet_run(job: int, minion: str, *, flaky_fails: bool = False, web_fails: bool = True,
              extra: list[dict] | None = None, broken_from: int = 0) -> dict:
    index = list(FLEET).index(minion)
    tests = [
        passed(OK),
        # Messages differ by numbers (and a temp path) only: one signature for the whole fleet.
        failed(EVERYWHERE, f"expected 3 rows, got {job + index} in /tmp/pytest-of-ci/pytest-{job}/db{index}", 40)
        if job >= broken_from else passed(EVERYWHERE),
        failed(ON_WEB, f"timeout after {30 + index}.5 s talking to 10.0.0.{index}", 55, "TimeoutError")
        if minion.startswith("web") and web_fails else passed(ON_WEB),
        failed(FLAKY, "race lost", 70) if flaky_fails else passed(FLAKY),
        *(extra or []),
    ]
    doc = result_document(minion, jid_of(job), START + timedelta(hours=job), tests,
                          grains=FLEET[minion])
    # The code changes once, when the everywhere-failure starts (when it starts after job 0).
    doc["result"]["code_hash"] = ("c0de" if job >= broken_from else "01d0") * 16
    return doc


async def seed_fleet(app, jobs: int = 3, broken_from: int = 0) -> None:
    for job in range(jobs):
        for minion in FLEET:
            # web-1's flaky test flips every job on unchanged code.
            write_inbox(app.settings.inbox, fleet_run(job, minion, flaky_fails=(minion == "web-1" and job % 2 == 1),
                                                      broken_from=broken_from))
        write_job(app.settings.inbox, jid_of(job), list(FLEET), START + timedelta(hours=job))
    await ingest(app)


async def logged_in(app) -> None:
    assert (await app.register(*ADMIN)).status_code == 303
    assert (await app.login(*ADMIN)).status_code == 303


def by_test(page: dict) -> dict[str, dict]:
    return {row["tests"][0]: row for row in page["failures"]}


# -- signatures at ingest ---------------------------------------------------------------------


async def test_failed_results_get_signatures_at_ingest_and_numbers_do_not_split_them(tmp_path, make_app):
    async with make_app(tmp_path) as app:
        await seed_fleet(app, jobs=2)
        rows = await app.db.fetchall(
            "SELECT t.nodeid, x.outcome, x.signature FROM results x JOIN tests t ON t.id = x.test_id")
        assert all((row["signature"] is None) == (row["outcome"] == "passed") for row in rows)
        everywhere = {row["signature"] for row in rows if row["nodeid"] == EVERYWHERE}
        on_web = {row["signature"] for row in rows if row["nodeid"] == ON_WEB and row["signature"]}
        assert len(everywhere) == 1 and len(on_web) == 1 and everywhere != on_web
        [meta] = await app.db.fetchall("SELECT * FROM signatures WHERE signature = ?", (everywhere.pop(),))
        assert meta["exception"] == "AssertionError"
        assert meta["message"] == "expected <n> rows, got <n> in <tmp>"
        assert meta["location"] == "tests/test_fleet.py:40"
        assert meta["occurrences"] == 8  # 4 minions x 2 jobs
        assert meta["first_seen"].startswith("2026-11-20T08:00") and meta["last_seen"].startswith("2026-11-20T09:00")
        latest = await app.db.fetchall("SELECT last_signature FROM test_status WHERE last_outcome = 'passed'")
        assert all(row["last_signature"] is None for row in latest)


# -- the failures view ------------------------------------------------------------------------


async def test_api_failures_gives_each_verdict_and_the_separating_grains(tmp_path, make_app):
    async with make_app(tmp_path) as app:
        await seed_fleet(app, jobs=5, broken_from=1)
        await logged_in(app)
        page = (await app.http.get("/api/failures")).json()
        rows = by_test(page)
        assert set(rows) == {EVERYWHERE, ON_WEB}  # the flaky test passed last on web-1 (job 4)

        everywhere = rows[EVERYWHERE]
        assert everywhere["verdict"] == "everywhere"
        assert everywhere["minions_failing"] == sorted(FLEET) and everywhere["minions_passing"] == []
        assert everywhere["first_run"] and everywhere["first_seen"].startswith("2026-11-20T09:00")
        # It started with job 1, which brought new code: the test or the code, not the machines.
        assert "code change" in everywhere["code_note"] and everywhere["code_change"]["changed"] is True
        first = (await app.http.get(f"/api/runs/{everywhere['first_run']}")).json()
        assert first["started_at"].startswith("2026-11-20T09:00")

        some = rows[ON_WEB]
        assert some["verdict"] == "some-minions" and some["exception"] == "TimeoutError"
        assert some["minions_failing"] == ["web-1", "web-2"] and some["minions_passing"] == ["db-1", "db-2"]
        grains = {(g["grain"], g["value"]): g for g in some["grains"]}
        assert grains[("osrelease", "11")] == {**grains[("osrelease", "11")], "failing": 2, "passing": 0}
        # A list grain separates by each of its elements: roles=web is on both failing minions.
        assert grains[("roles", "web")]["failing"] == 2 and grains[("roles", "web")]["passing"] == 0
        assert ("roles", "edge") not in grains or grains[("roles", "edge")]["score"] < 1
        assert ("virtual", "kvm") not in grains  # on one failing and one passing minion: separates nothing
        assert some["grains"][0]["score"] == 1.0
        # Most minions first.
        assert [row["tests"][0] for row in page["failures"]] == [EVERYWHERE, ON_WEB]

        # One more job where web-1's flaky test fails again: flipped on the same code → flaky.
        write_inbox(app.settings.inbox, fleet_run(6, "web-1", flaky_fails=True, broken_from=1))
        await ingest(app)
        rows = by_test((await app.http.get("/api/failures")).json())
        assert rows[FLAKY]["verdict"] == "flaky" and rows[FLAKY]["minions_failing"] == ["web-1"]
        assert rows[FLAKY]["minions_passing"] == ["db-1", "db-2", "web-2"]


async def test_long_lists_are_capped_with_exact_counts_beside_them(tmp_path, make_app, monkeypatch):
    monkeypatch.setattr(failures, "ROW_LIST_CAP", 1)
    monkeypatch.setattr(failures, "LIST_CAP", 3)
    async with make_app(tmp_path) as app:
        await seed_fleet(app, jobs=2)
        await logged_in(app)
        page = (await app.http.get("/api/failures")).json()
        everywhere, some = page["failures"][0], by_test(page)[ON_WEB]
        assert everywhere["minions_failing_count"] == 4 and len(everywhere["minions_failing"]) == 1
        assert everywhere["tests_count"] == 1 and everywhere["failing_now"] == 4
        assert some["minions_passing_count"] == 2 and len(some["minions_passing"]) == 1
        assert page["summary"]["failing_pairs_now"] == 7  # 4 + 2 + the flaky one: from the summaries
        detail = (await app.http.get(f"/api/failures/{everywhere['signature']}")).json()
        assert detail["minions_failing_count"] == 4 and len(detail["minions_failing"]) == 3
        assert detail["latest_count"] == 4 and len(detail["latest"]) == 3
        html = (await app.http.get(f"/failures/{everywhere['signature']}")).text
        assert "Failing (4)" in html and "and 1 more" in html


async def test_a_signature_over_several_tests_passes_only_where_it_fails_none_of_them(tmp_path, make_app):
    # Two parametrized cases failing at one line: one signature. db-1 fails [a] and passes [b]:
    # it fails the signature, so it is not a passing minion, and the signature fails everywhere.
    case_a, case_b = "tests/test_p.py::test_p[a]", "tests/test_p.py::test_p[b]"
    async with make_app(tmp_path) as app:
        for minion, outcomes in (("web-1", (True, True)), ("db-1", (True, False))):
            tests = [failed(case, "bad value 7", 12) if fails else passed(case)
                     for case, fails in zip((case_a, case_b), outcomes, strict=True)]
            write_inbox(app.settings.inbox, result_document(minion, jid_of(1), START, tests, grains=FLEET[minion]))
        await ingest(app)
        await logged_in(app)
        [row] = (await app.http.get("/api/failures")).json()["failures"]
        assert row["tests"] == [case_a, case_b] and row["tests_count"] == 2
        assert row["verdict"] == "everywhere" and row["minions_passing"] == [] and row["minions_passing_count"] == 0
        assert row["minions_failing"] == ["db-1", "web-1"] and row["failing_now"] == 2
        # web-2 passes both: now some minions pass.
        write_inbox(app.settings.inbox, result_document("web-2", jid_of(1), START, [passed(case_a), passed(case_b)],
                                                        grains=FLEET["web-2"]))
        await ingest(app)
        [row] = (await app.http.get("/api/failures")).json()["failures"]
        assert row["verdict"] == "some-minions" and row["minions_passing"] == ["web-2"]
        assert row["minions_passing_count"] == 1


async def test_failures_filters_search_and_cursor_paging(tmp_path, make_app):
    async with make_app(tmp_path) as app:
        await seed_fleet(app, jobs=2)
        await logged_in(app)
        get = app.http.get
        assert [r["tests"][0] for r in (await get("/api/failures?verdict=some-minions")).json()["failures"]] == [ON_WEB]
        assert [r["tests"][0] for r in (await get("/api/failures?minion=db-1")).json()["failures"]] == [EVERYWHERE]
        assert [r["tests"][0] for r in (await get("/api/failures?test=only_on")).json()["failures"]] == [ON_WEB]
        # Full-text: a word of the raw message (not the masked one) finds its signature.
        assert [r["tests"][0] for r in (await get("/api/failures?q=talking")).json()["failures"]] == [ON_WEB]
        assert (await get("/api/failures?q=nosuchword")).json()["failures"] == []
        seen, cursor = [], ""
        for _ in range(5):
            page = (await get(f"/api/failures?limit=1&cursor={cursor}")).json()
            seen += [row["tests"][0] for row in page["failures"]]
            if not (cursor := page["next"]):
                break
        assert seen == [EVERYWHERE, ON_WEB, FLAKY]  # 4, 2, then 1 minion failing
        assert (await get("/api/failures?verdict=bogus")).status_code == 400
        assert (await get("/api/failures?cursor=%%%")).status_code == 400
        assert (await get("/api/failures?q=%22%29%28*")).status_code == 400  # no word in it: a message, not a 500

        page = await get("/failures?verdict=some-minions")
        assert page.status_code == 200 and "osrelease=11" in page.text and "some-minions" in page.text
        nav = re.search(r"<nav>(.*?)</nav>", page.text, re.S).group(1)
        assert nav.strip().startswith('<a href="/failures">Failures</a>')

        # /runs?q= finds runs by failure text too (and still by test id).
        runs = (await get("/api/runs?q=talking")).json()["runs"]
        assert {run["minion"] for run in runs} == {"web-1", "web-2"} and len(runs) == 4
        assert len((await get("/api/runs?q=test_flaky")).json()["runs"]) == 8


async def test_signature_page_shows_history_latest_outcomes_a_traceback_and_a_chart(tmp_path, make_app):
    async with make_app(tmp_path) as app:
        await seed_fleet(app, jobs=3)
        write_inbox(app.settings.inbox, fleet_run(4, "db-1", extra=[failed(f"tests/test_x.py::test_{XSS}", XSS, 9)]))
        await ingest(app)
        await logged_in(app)
        rows = by_test((await app.http.get("/api/failures")).json())
        signature = rows[ON_WEB]["signature"]
        page = await app.http.get(f"/failures/{signature}")
        assert page.status_code == 200
        assert "TimeoutError" in page.text and "talking to 10.0.0.0" in page.text  # the full traceback
        assert page.text.count('href="/runs/') >= 6 and "<svg" in page.text and "<title>" in page.text
        detail = (await app.http.get(f"/api/failures/{signature}")).json()
        assert detail["state"] == "open" and len(detail["history"]) == 6
        assert {(r["minion"], r["last_outcome"]) for r in detail["latest"]} == {
            ("web-1", "failed"), ("web-2", "failed"), ("db-1", "passed"), ("db-2", "passed")}
        assert detail["chart"] and all(0 <= p["pass_rate"] <= 1 for p in detail["chart"])
        xss = by_test((await app.http.get("/api/failures?minion=db-1&test=test_x")).json())
        xss_page = await app.http.get(f"/failures/{next(iter(xss.values()))['signature']}")
        assert XSS not in xss_page.text and "&lt;script&gt;" in xss_page.text
        assert (await app.http.get("/failures/0123456789abcdef")).status_code == 404
        assert (await app.http.get("/failures/..%2Fetc")).status_code in (400, 404)
        assert (await app.http.get("/api/failures/nothex")).status_code == 400


# -- new / fixed / still failing --------------------------------------------------------------


async def test_run_and_job_pages_mark_new_still_failing_and_fixed(tmp_path, make_app):
    async with make_app(tmp_path) as app:
        await seed_fleet(app, jobs=2)
        # Job 2: the web failure is fixed, a new failure appears on web-1, the everywhere one goes on.
        new = failed("tests/test_fleet.py::test_new", "boom 1", 90, "RuntimeError")
        for minion in FLEET:
            write_inbox(app.settings.inbox, fleet_run(2, minion, web_fails=False,
                                                      extra=[new] if minion == "web-1" else None))
        write_job(app.settings.inbox, jid_of(2), list(FLEET), START + timedelta(hours=2))
        await ingest(app)
        await logged_in(app)
        run_id = await app.db.fetchval(
            "SELECT r.id FROM runs r JOIN minions m ON m.id = r.minion_id WHERE m.name = 'web-1' "
            "ORDER BY r.started_at DESC LIMIT 1")
        run = (await app.http.get(f"/api/runs/{run_id}")).json()
        changes = run["changes"]
        assert [e["nodeid"] for e in changes["new"]] == ["tests/test_fleet.py::test_new"]
        assert [e["nodeid"] for e in changes["still_failing"]] == [EVERYWHERE]
        assert changes["still_failing"][0]["since"]["started_at"].startswith("2026-11-20T08:00")
        assert changes["fixed"] == [FLAKY, ON_WEB]  # the flaky test failed on web-1 in job 1
        page = await app.http.get(f"/runs/{run_id}")
        assert "1 new" in page.text and "1 still failing" in page.text and "2 fixed" in page.text
        assert "still failing since 2026-11-20 08:00" in page.text

        job = (await app.http.get(f"/api/jobs/{jid_of(2)}")).json()
        # Summed over the minions: 1 new (web-1), 4 still failing (everywhere), 3 fixed (2 on web-1, web-2).
        assert job["changes"]["totals"] == {"new": 1, "still_failing": 4, "fixed": 3}
        job_page = await app.http.get(f"/jobs/{jid_of(2)}")
        assert "1 new" in job_page.text and "4 still failing" in job_page.text and "3 fixed" in job_page.text
        # The very first run of a minion: everything failing is new.
        first = await app.db.fetchval("SELECT MIN(id) FROM runs")
        assert (await app.http.get(f"/api/runs/{first}")).json()["changes"]["previous_run"] is None


# -- triage: mutes, known issues, the audit log -----------------------------------------------


async def test_a_mute_by_grain_hides_failures_from_failing_now_until_it_expires(tmp_path, make_app):
    async with make_app(tmp_path) as app:
        await seed_fleet(app, jobs=1)
        await logged_in(app)
        rows = by_test((await app.http.get("/api/failures")).json())
        signature = rows[ON_WEB]["signature"]
        before = (await app.http.get("/api/failures")).json()["summary"]
        assert before["failing_now"] == 2

        # Muted on osrelease=11 (both failing minions): still listed, marked, out of the figures.
        await app.db.write(lambda conn: triage.add_mute(conn, "admin", kind="signature", target=signature,
                                                        expires="2h", grain="osrelease", grain_value="11"))
        page = (await app.http.get("/api/failures")).json()
        row = by_test(page)[ON_WEB]
        assert row["muted"] is True and row["minions_muted"] == ["web-1", "web-2"] and row["failing_now"] == 0
        assert page["summary"]["failing_now"] == 1 and page["summary"]["muted"] == 1
        assert page["failures"][-1]["signature"] == signature  # muted rows go last
        html = (await app.http.get("/failures")).text
        assert "muted" in html and signature in html
        minion_page = (await app.http.get("/minions/web-1")).text
        assert re.search(r'badge s-muted">muted</span> <a class="nodeid"[^>]*>tests/test_fleet.py::test_only_on_11', minion_page)
        assert f'href="/failures/{signature}"' in minion_page
        assert 's-muted' not in (await app.http.get("/minions/db-1")).text

        # A grain that matches no failing minion mutes nothing; a list grain matches by element.
        conn = connect_sync(app.settings.db_path)
        try:
            assert failures.is_muted(conn, signature, ON_WEB, "web-1") is True
            assert failures.is_muted(conn, signature, ON_WEB, "db-1") is False
            later = datetime.now(UTC) + timedelta(hours=3)
            assert failures.is_muted(conn, signature, ON_WEB, "web-1", now=later) is False  # expired
            run_transaction(conn, lambda c: triage.add_mute(c, "admin", kind="test", target=EVERYWHERE, expires="1h",
                                                            grain="roles", grain_value="db"))
            assert failures.is_muted(conn, None, EVERYWHERE, "db-2") is True
            assert failures.is_muted(conn, None, EVERYWHERE, "web-2") is False
            # A mute whose time is up counts for nothing (made an hour ago, for 30 minutes).
            run_transaction(conn, lambda c: triage.add_mute(c, "admin", kind="test", target=EVERYWHERE, expires="30m",
                                                            now=datetime.now(UTC) - timedelta(hours=1)))
            assert failures.is_muted(conn, None, EVERYWHERE, "web-1") is False
        finally:
            conn.close()
        everywhere = by_test((await app.http.get("/api/failures")).json())[EVERYWHERE]
        assert everywhere["minions_muted"] == ["db-1", "db-2"] and everywhere["failing_now"] == 2
        for expires in ("400d", "2020-01-01", "soon"):
            with pytest.raises(triage.TriageError):
                await app.db.write(lambda conn, e=expires: triage.add_mute(conn, "admin", kind="test", target=EVERYWHERE,
                                                                           expires=e))


async def test_triage_by_form_api_and_cli_is_audited_and_guarded(tmp_path, make_app):
    async with make_app(tmp_path) as app:
        await seed_fleet(app, jobs=1)
        await logged_in(app)
        signature = by_test((await app.http.get("/api/failures")).json())[EVERYWHERE]["signature"]
        path = f"/failures/{signature}"

        # Form (session + CSRF token).
        response = await app.post_form(f"{path}/known-issue", {"note": "schema migration pending",
                                                               "url": "https://tracker.example/DB-7"}, csrf_from=path)
        assert response.status_code == 303
        response = await app.post_form("/mutes", {"what": f"test:{ON_WEB}", "expires": "1d",
                                                  "grain": "roles", "grain_value": "web", "back": signature},
                                       csrf_from=path)
        assert response.status_code == 303
        assert (await app.http.post(f"{path}/known-issue", data={"note": "x"})).status_code == 403  # no token
        bad = await app.post_form(f"{path}/known-issue", {"note": "x", "url": "javascript:alert(1)"}, csrf_from=path)
        assert bad.status_code == 400 and "http" in bad.text

        # API: a Bearer token; a session needs X-CSRF-Token for writes.
        assert (await app.http.post("/api/mutes", json={"kind": "signature", "target": signature})).status_code == 403
        conn = connect_sync(app.settings.db_path)
        try:
            from dashboard import security, users

            token = security.new_secret()
            run_transaction(conn, users.create_token_tx, 1, security.sha256_hex(token), "triage-test")
        finally:
            conn.close()
        bearer = {"Authorization": f"Bearer {token}"}
        async with app.new_client(headers=bearer) as api:
            created = await api.post("/api/mutes", json={"kind": "signature", "target": signature, "expires": "3h"})
            assert created.status_code == 201, created.text
            assert (await api.delete(f"/api/mutes/{created.json()['id']}")).status_code == 200
            assert (await api.post("/api/mutes", json={"kind": "signature", "target": "f" * 16})).status_code == 400
            assert (await api.put(f"/api/failures/{signature}/known-issue", json={"note": "via API"})).status_code == 200

        # CLI.
        db_arg = ["--db", str(app.settings.db_path)]
        assert cli([*db_arg, "triage", "mute", "--signature", signature, "--grain", "osrelease=12", "--expires", "2h",
                    "--user", "carol"]) == 0
        assert cli([*db_arg, "triage", "mute", "--signature", signature, "--expires", "soon", "--user", "carol"]) == 2

        log = (await app.http.get("/api/triage/log")).json()["log"]
        assert [(e["username"], e["action"]) for e in reversed(log)] == [
            ("admin", "known-issue"), ("admin", "mute"), ("admin", "mute"), ("admin", "unmute"),
            ("admin", "known-issue"), ("carol", "mute")]
        assert all(e["at"] for e in log)
        assert log[-1]["detail"]["note"] == "schema migration pending"
        row = by_test((await app.http.get("/api/failures")).json())[EVERYWHERE]
        assert row["known_issue"]["note"] == "via API" and row["known_issue"]["created_by"] == "admin"
        page = await app.http.get(path)
        assert "via API" in page.text and "carol" in page.text
        assert "known-issue" in (await app.http.get("/triage")).text


# -- for webhooks: what opened and closed -----------------------------------------------------


async def test_signature_changes_say_what_opened_and_closed_with_a_batch(tmp_path, make_app):
    async with make_app(tmp_path) as app:
        await seed_fleet(app, jobs=1)
        write_inbox(app.settings.inbox, fleet_run(1, "web-1", web_fails=False,
                                                  extra=[failed("tests/test_fleet.py::test_new", "boom", 90)]))
        await ingest(app)
        run_id = await app.db.fetchval("SELECT MAX(id) FROM runs")
        conn = connect_sync(app.settings.db_path)
        try:
            changes = failures.signature_changes(conn, [run_id])
        finally:
            conn.close()
        assert [(c.minion, c.tests, c.first_ever) for c in changes.opened] == [
            ("web-1", ["tests/test_fleet.py::test_new"], True)]
        assert [(c.tests, c.open_elsewhere) for c in changes.closed] == [([ON_WEB], True)]  # web-2 still fails


async def seed_sick_host(app) -> None:
    """db-2 fails four tests of its own (a disk), on top of the fleet's usual failures; log in."""
    sick = [failed(f"tests/test_host.py::test_{n}", f"disk error {n}", 10 + n, "OSError") for n in range(4)]
    for minion in FLEET:
        extra = sick if minion == "db-2" else [passed(f"tests/test_host.py::test_{n}") for n in range(4)]
        write_inbox(app.settings.inbox, fleet_run(0, minion, extra=extra))
    await ingest(app)
    await logged_in(app)


async def test_a_minion_failing_many_unrelated_signatures_is_a_sick_host(tmp_path, make_app):
    async with make_app(tmp_path) as app:
        await seed_sick_host(app)
        page = (await app.http.get("/api/failures")).json()
        assert [h["minion"] for h in page["sick_hosts"]] == ["db-2"] and page["sick_hosts"][0]["signatures"] == 4
        assert "Sick hosts" in (await app.http.get("/failures")).text


# -- the backfill -----------------------------------------------------------------------------


def _forget_signatures(path) -> dict[int, str]:
    """Make the database look as it did before migration 5 filled anything; return what was there."""
    conn = connect_sync(path)
    try:
        before = {row[0]: row[1] for row in conn.execute("SELECT id, signature FROM results WHERE signature IS NOT NULL")}
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("UPDATE results SET signature = NULL, text_id = NULL")
        conn.execute("DELETE FROM failure_texts")
        conn.execute("UPDATE test_status SET last_signature = NULL")
        conn.execute("DELETE FROM signatures")
        conn.execute("UPDATE signature_backfill SET pending_upto = (SELECT MAX(id) FROM results)")
        conn.execute("COMMIT")
        return before
    finally:
        conn.close()


@pytest.mark.sqlite_only  # rewinds the SQLite file by hand
async def test_backfill_gives_results_stored_before_signatures_the_same_signatures(tmp_path, make_app):
    async with make_app(tmp_path) as app:
        await seed_fleet(app, jobs=3)
        expected_page = (await failures.open_failures(app.db))["failures"]
    before = _forget_signatures(app.settings.db_path)
    assert before
    # The CLI, in small chunks (several transactions).
    assert cli(["--db", str(app.settings.db_path), "backfill-signatures", "--chunk", "7"]) == 0
    conn = connect_sync(app.settings.db_path)
    try:
        after = {row[0]: row[1] for row in conn.execute("SELECT id, signature FROM results WHERE signature IS NOT NULL")}
        assert after == before
        assert failures.backfill_pending(conn) == 0
        # Each failure points at its text again: one per distinct text (the timeouts name their minion).
        assert conn.execute("SELECT count(*) FROM results WHERE signature IS NOT NULL AND text_id IS NULL"
                            ).fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM failure_texts WHERE message LIKE '%talking%'").fetchone()[0] == 2
    finally:
        conn.close()
    async with make_app(tmp_path) as app:
        page = (await failures.open_failures(app.db))["failures"]
        assert [(r["signature"], r["verdict"], r["minions_failing"], r["occurrences"]) for r in page] == [
            (r["signature"], r["verdict"], r["minions_failing"], r["occurrences"]) for r in expected_page]

    # And at the app's start-up, in the background.
    _forget_signatures(app.settings.db_path)
    async with make_app(tmp_path) as app:
        for _ in range(200):
            if await app.db.fetchval("SELECT pending_upto FROM signature_backfill") == 0:
                break
            await asyncio.sleep(0.02)
        assert await app.db.fetchval("SELECT count(*) FROM results WHERE signature IS NOT NULL") == len(before)
        assert len((await failures.open_failures(app.db))["failures"]) == len(expected_page)


async def test_pruning_old_runs_drops_their_failure_texts_and_search_finds_them_no_more(tmp_path, make_app):
    async with make_app(tmp_path) as app:
        await seed_fleet(app, jobs=1)
        from dashboard.retention import prune

        assert await app.db.fetchval("SELECT count(*) FROM failure_texts WHERE message LIKE '%talking%'") == 2
        assert len(await failures.search_run_ids(app.db, "talking")) == 2
        await prune(app.db, timedelta(days=1))
        assert await app.db.fetchval("SELECT count(*) FROM failure_texts") == 0  # no result points at them
        assert await failures.search_run_ids(app.db, "talking") == []
        assert await failures.search_signatures(app.db, "talking") == set()


async def test_fleet_page_flags_sick_hosts_and_leaves_muted_failures_out_of_failing_now(tmp_path, make_app):
    async with make_app(tmp_path) as app:
        await seed_sick_host(app)
        fleet = (await app.http.get("/api/fleet")).json()
        assert [h["minion"] for h in fleet["sick_hosts"]] == ["db-2"] and fleet["muted_failing"] == 0
        page = (await app.http.get("/")).text
        assert "sick host" in page and 'id="sick-hosts"' in page
        failing_before = re.search(r'<span class="big">(\d+)</span> tests failing now', page).group(1)
        signature = by_test((await app.http.get("/api/failures")).json())[EVERYWHERE]["signature"]
        await app.db.write(lambda conn: triage.add_mute(conn, "admin", kind="signature", target=signature,
                                                        expires="1h"))
        fleet = (await app.http.get("/api/fleet")).json()
        assert fleet["muted_failing"] == 4  # the everywhere-failure on all four minions
        page = (await app.http.get("/")).text
        failing_after = re.search(r'<span class="big">(\d+)</span> tests failing now', page).group(1)
        assert int(failing_after) == int(failing_before) - 4 and "(+4 muted)" in page
