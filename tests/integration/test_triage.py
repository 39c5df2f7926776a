"""Triage on the real stack: a grain set on one minion, a test that fails only there and one that
fails everywhere, delivered by the returner, ingested, and judged by ``GET /api/failures``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import pytest

from dashboard import security, users
from dashboard.app import create_app
from dashboard.db import connect_sync, run_transaction
from tests.conftest import wait_for
from tests.functional.ingest_support import ingest, make_settings

pytestmark = pytest.mark.integration

GRAIN, VALUE = "distmon_zone", "blue"
# The suite reads the zone the job was started with; the job for the blue zone is targeted by the grain.
SUITE = '''
import os


def test_resolver_answers():
    records = 0 if os.environ.get("DISTMON_ZONE") == "blue" else 3
    assert records == 3, f"resolver returned {records} records for db.internal"


def test_arithmetic():
    assert 1 + 1 == 3, "arithmetic is broken"


def test_fine():
    pass
'''


@pytest.fixture
def zoned_minion(salt_cli, salt_minion_2):
    """web-2 carries grain distmon_zone=blue for the test (removed afterwards)."""
    ret = salt_cli.run("grains.setval", GRAIN, VALUE, minion_tgt=salt_minion_2.id)
    assert ret.returncode == 0, ret
    try:
        yield salt_minion_2
    finally:
        salt_cli.run("grains.delkey", GRAIN, "force=True", minion_tgt=salt_minion_2.id)


def run_with_return(salt_cli, suite: Path, flag: str, target: str, env: dict | None = None) -> list[str]:
    """Run the suite on the minions ``target`` matches; the ids of the minions that ran it."""
    options = {"grains": ["os", "osrelease", "kernelrelease", GRAIN]}
    args = [flag, "pytestrun.run", str(suite)]
    if env:
        args.append(f"env={json.dumps(env)}")
    ret = salt_cli.run(*args, "--return", "distmon", "--return_kwargs", json.dumps(options), minion_tgt=target)
    assert ret.returncode in (0, 1), ret  # 1: the suite has failures
    return sorted(ret.data) if isinstance(ret.data, dict) and "status" not in ret.data else [target]


def delivered(inbox: Path, minion: str, suite: Path) -> list[Path]:
    """The result files of ``minion`` whose job ran ``suite``."""
    directory = inbox / minion
    if not directory.exists():
        return []
    return [path for path in directory.glob("*.json")
            if not path.name.startswith(".") and str(suite) in path.read_text("utf-8")]


def test_api_failures_names_the_separating_grain_and_the_everywhere_failure(
    salt_cli, salt_minion, zoned_minion, storage_host, tmp_path
):
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "test_zone.py").write_text(SUITE)
    tmp_path.chmod(0o755)
    suite.chmod(0o755)
    # Target by the grain: the blue zone's job (its environment) goes only where the grain is set.
    blue = run_with_return(salt_cli, suite, "-G", f"{GRAIN}:{VALUE}", env={"DISTMON_ZONE": VALUE})
    other = run_with_return(salt_cli, suite, "-C", f"{salt_minion.id} and not G@{GRAIN}:{VALUE}")
    assert (blue, other) == ([zoned_minion.id], [salt_minion.id])

    settings = make_settings(tmp_path / "host")
    for minion in (zoned_minion.id, salt_minion.id):
        files = wait_for(lambda m=minion: delivered(storage_host.inbox, m, suite), timeout=90)
        assert len(files) == 1, f"{minion}: {files}"
        # A private inbox: the session's shared inbox stays as the other tests expect it.
        (Path(settings.inbox) / minion).mkdir(parents=True, exist_ok=True)
        shutil.copy(files[0], Path(settings.inbox) / minion / files[0].name)
    report = ingest(settings)
    assert report.ingested == 2 and report.quarantined == 0, report

    conn = connect_sync(settings.db_path)
    try:
        run_transaction(conn, users.create_user_tx, "qa", security.hash_password_sync("qa-password-123", rounds=4),
                        admin=True, status="active")
        token = security.new_secret()
        run_transaction(conn, users.create_token_tx, 1, security.sha256_hex(token), "integration")
    finally:
        conn.close()

    async def failures() -> dict:
        app = create_app(settings)
        async with app.router.lifespan_context(app):
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1",
                                         headers={"Authorization": f"Bearer {token}"}) as http:
                response = await http.get("/api/failures")
                assert response.status_code == 200, response.text
                return response.json()

    import asyncio

    page = asyncio.run(failures())
    rows = {row["tests"][0].split("::")[-1]: row for row in page["failures"]}
    assert set(rows) == {"test_resolver_answers", "test_arithmetic"}, rows

    zone = rows["test_resolver_answers"]
    assert zone["verdict"] == "some-minions"
    assert zone["minions_failing"] == [zoned_minion.id] and zone["minions_passing"] == [salt_minion.id]
    top = zone["grains"][0]
    assert (top["grain"], top["value"], top["failing"], top["passing"]) == (GRAIN, VALUE, 1, 0), zone["grains"]
    assert "resolver returned <n> records" in zone["message"]

    everywhere = rows["test_arithmetic"]
    assert everywhere["verdict"] == "everywhere"
    assert everywhere["minions_failing"] == sorted([salt_minion.id, zoned_minion.id])
    assert everywhere["exception"] == "AssertionError" and everywhere["location"].endswith("test_zone.py:11")
