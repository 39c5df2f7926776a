"""The signature page's list of every minion's latest outcome, paged by cursor and filtered by outcome."""

from __future__ import annotations

import html
import re
from datetime import UTC, datetime

import pytest

from dashboard import failures
from tests.functional.conftest import ingest, result_document, write_inbox
from tests.functional.test_failures import logged_in

pytestmark = pytest.mark.anyio

MINIONS = [f"m-{n:02d}" for n in range(9)]
TEST_A = "tests/test_shared.py::test_a"
TEST_B = "tests/test_shared.py::test_b"
START = datetime(2026, 11, 20, 8, 0, tzinfo=UTC)


def outcome_of(test: str, minion: str) -> dict:
    """Test A fails with the shared signature on m-00..m-06, passes on m-07, fails differently on m-08;
    test B fails with it on m-00..m-02, is skipped on m-03 and passes elsewhere."""
    index = MINIONS.index(minion)
    shared = {"outcome": "failed", "message": "AssertionError: shared breakage",
              "longrepr": "E       AssertionError: shared breakage\n\ntests/test_shared.py:40: AssertionError"}
    if test == TEST_A:
        if index == 8:
            return {"outcome": "failed", "message": "KeyError: 'other'",
                    "longrepr": "E       KeyError: 'other'\n\ntests/test_shared.py:12: KeyError"}
        return shared if index < 7 else {"outcome": "passed"}
    if index == 3:
        return {"outcome": "skipped"}
    return shared if index < 3 else {"outcome": "passed"}


EXPECTED = {(minion, test): outcome_of(test, minion)["outcome"] for minion in MINIONS for test in (TEST_A, TEST_B)}


async def pages(app, query: str = "") -> list[dict]:
    """Every page of the API's ``latest``, following ``next``."""
    seen, cursor = [], None
    while True:
        params = {"cursor": cursor} if cursor else {}
        if query:
            params["outcome"] = query
        response = await app.http.get(f"/api/failures/{app.signature}", params=params)
        assert response.status_code == 200, response.text
        body = response.json()
        assert len(body["latest"]) <= failures.LIST_CAP
        seen.append(body)
        cursor = body["next"]
        if not cursor:
            return seen


async def test_paging_the_latest_outcomes_visits_every_minion_exactly_once(tmp_path, make_app, monkeypatch):
    monkeypatch.setattr(failures, "LIST_CAP", 4)
    async with make_app(tmp_path) as app:
        for minion in MINIONS:
            tests = [{"nodeid": test, **outcome_of(test, minion)} for test in (TEST_A, TEST_B)]
            write_inbox(app.settings.inbox, result_document(minion, "20261120080000000001", START, tests))
        await ingest(app)
        await logged_in(app)
        rows = (await app.http.get("/api/failures?test=test_shared")).json()["failures"]
        [shared] = [row for row in rows if row["exception"] == "AssertionError"]
        app.signature = shared["signature"]
        assert shared["tests_count"] == 2 and shared["minions_failing_count"] == 7

        walked = await pages(app)
        assert len(walked) == 5 and all(page["latest_count"] == 18 for page in walked)
        latest = [row for page in walked for row in page["latest"]]
        pairs = [(row["minion"], row["nodeid"]) for row in latest]
        assert len(pairs) == len(set(pairs)) == 18  # each (minion, test) once
        assert {pair: row["last_outcome"] for pair, row in zip(pairs, latest, strict=True)} == EXPECTED
        assert {minion for minion, _ in pairs} == set(MINIONS)
        # Those failing with the signature come first.
        signed = [row["last_signature"] == app.signature for row in latest]
        assert signed == [True] * 10 + [False] * 8

        for budget in (failures.LATEST_SCAN_BUDGET, 3):  # 3: filtered pages end short, where their scan ends
            monkeypatch.setattr(failures, "LATEST_SCAN_BUDGET", budget)
            for query, wanted in (("signature", 10), ("passing", 6), ("other", 2)):
                filtered = [row for page in await pages(app, query) for row in page["latest"]]
                assert len(filtered) == wanted
                assert len({(row["minion"], row["nodeid"]) for row in filtered}) == wanted
        assert len(await pages(app, "other")) == 7  # both tests' 18 rows read 3 at a time, then the end
        monkeypatch.setattr(failures, "LATEST_SCAN_BUDGET", 2000)
        others = [row for page in await pages(app, "other") for row in page["latest"]]
        assert {(row["minion"], row["last_outcome"]) for row in others} == {("m-08", "failed"), ("m-03", "skipped")}

        # The page: a next link that carries the filter, followed to the end.
        path, shown = f"/failures/{app.signature}?outcome=passing", []
        while path:
            page = await app.http.get(path)
            assert page.status_code == 200
            shown += re.findall(r'<tr><td><a href="/minions/([^"]+)"', page.text.split('id="latest"')[1].split("</table>")[0])
            found = re.search(r'<a href="([^"]+)" rel="next">', page.text)
            path = html.unescape(found.group(1)) if found else None
            assert path is None or "outcome=passing" in path
        assert len(shown) == 6

        for bad in ("not-a-cursor!", "WzIsMSwxXQ", "WyJ4IiwxLDFd"):  # junk, [2,1,1], ["x",1,1]
            for url in (f"/api/failures/{app.signature}", f"/failures/{app.signature}"):
                response = await app.http.get(url, params={"cursor": bad})
                assert response.status_code == 400 and "cursor" in response.text.lower()
        response = await app.http.get(f"/api/failures/{app.signature}", params={"outcome": "broken"})
        assert response.status_code == 400 and "outcome" in response.text
