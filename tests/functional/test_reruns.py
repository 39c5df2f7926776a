"""A re-run (reactor or salt-run distmon.rerun) carries rerun_of: stored in runs.rerun_of, linked both ways."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tests.functional.conftest import ADMIN, ingest, result_document, write_inbox

pytestmark = pytest.mark.anyio


async def test_a_rerun_links_to_its_original_and_back(make_app):
    async with make_app(webhooks=0) as app:
        assert (await app.register(*ADMIN)).status_code == 303
        assert (await app.login(*ADMIN)).status_code == 303
        start = datetime.now(UTC) - timedelta(minutes=5)
        original = result_document("web-1", "20261202000000000001", start, [
            {"nodeid": "t.py::test_flaky", "outcome": "failed"}, {"nodeid": "t.py::test_ok", "outcome": "passed"}])
        rerun = result_document("web-1", "20261202000000000002", start + timedelta(minutes=1), [
            {"nodeid": "t.py::test_flaky", "outcome": "passed"}])
        rerun["result"]["rerun_of"] = "20261202000000000001"
        write_inbox(app.settings.inbox, original)
        write_inbox(app.settings.inbox, rerun)
        await ingest(app)
        rows = await app.db.fetchall("SELECT id, jid, rerun_of FROM runs ORDER BY id")
        assert [(r["jid"], r["rerun_of"]) for r in rows] == [
            ("20261202000000000001", None), ("20261202000000000002", "20261202000000000001")]
        first, second = rows[0]["id"], rows[1]["id"]
        page = (await app.http.get(f"/runs/{second}")).text
        assert "Re-run of" in page and f'href="/runs/{first}"' in page
        page = (await app.http.get(f"/runs/{first}")).text
        assert "Re-runs" in page and f'href="/runs/{second}"' in page
        page = (await app.http.get("/jobs/20261202000000000001")).text
        assert 'href="/jobs/20261202000000000002"' in page
        page = (await app.http.get("/jobs/20261202000000000002")).text
        assert "Re-run of" in page


async def test_a_failure_that_passes_on_its_rerun_is_flaky_on_the_failures_page(make_app):
    async with make_app(webhooks=0) as app:
        assert (await app.register(*ADMIN)).status_code == 303
        assert (await app.login(*ADMIN)).status_code == 303
        start = datetime.now(UTC) - timedelta(minutes=5)
        broken = {"nodeid": "t.py::test_net", "outcome": "failed", "message": "OSError: timed out after 3 s",
                  "longrepr": "def test_net():\n>       fetch()\nE       OSError: timed out after 3 s\n\nt.py:7: OSError"}
        # The same failure on two minions; only web-1 re-runs it, and there it passes.
        for minion in ("web-1", "web-2"):
            write_inbox(app.settings.inbox, result_document(minion, "20261202000000000011", start, [broken]))
        await ingest(app)
        before = (await app.http.get("/api/failures")).json()["failures"]
        assert [row["verdict"] for row in before] == ["everywhere"]

        rerun = result_document("web-1", "20261202000000000012", start + timedelta(minutes=1), [
            {"nodeid": "t.py::test_net", "outcome": "passed"}])
        rerun["result"]["rerun_of"] = "20261202000000000011"
        write_inbox(app.settings.inbox, rerun)
        await ingest(app)
        page = (await app.http.get("/api/failures")).json()
        [row] = page["failures"]
        # Still failing on web-2, but it passed when re-run on the same machine: flaky, not some-minions.
        assert row["minions_failing"] == ["web-2"] and row["verdict"] == "flaky", row
        assert row["minions_passed_on_rerun"] == ["web-1"]
        assert page["summary"]["passed_on_rerun"] == 1
        assert (await app.http.get("/api/failures", params={"verdict": "flaky"})).json()["failures"]
