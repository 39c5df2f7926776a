"""Builders shared by the ingester's tests: result documents, inbox files, settings."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

from dashboard.config import Settings
from dashboard.db import Database, connect_sync
from dashboard.ingest import IngestReport, ingest_pending_sync
from dashboard.retention import prune
from tests.db_backend import database_location

COUNT_KEYS = {"passed": "passed", "failed": "failed", "skipped": "skipped", "xfailed": "xfailed", "xpassed": "xpassed", "error": "errors"}


def test_entry(nodeid: str, outcome: str = "passed", when: str = "call", **extra: Any) -> dict:
    entry = {
        "nodeid": nodeid,
        "outcome": outcome,
        "when": when,
        "duration": 0.25,
        "file": nodeid.split("::", 1)[0],
        "line": 3,
        "markers": [],
        "message": None if outcome == "passed" else f"{outcome}: reason",
        "longrepr": None if outcome in ("passed", "skipped") else "E   assert 1 == 2",
        "stdout": None,
        "stderr": None,
    }
    entry.update(extra)
    return entry


test_entry.__test__ = False  # a builder, not a test


def make_doc(
    minion: str = "web-1",
    jid: str = "20261128070000000001",
    tests: list[dict] | None = None,
    *,
    started_at: str = "2026-11-28T07:00:00Z",
    grains: dict | None = None,
    **top: Any,
) -> dict:
    """A valid distmon-result/1 document; counts and status follow from ``tests``."""
    if tests is None:
        tests = [test_entry("tests/test_a.py::test_one"), test_entry("tests/test_a.py::test_two", "failed")]
    counts = dict.fromkeys(COUNT_KEYS.values(), 0)
    for entry in tests:
        counts[COUNT_KEYS[entry["outcome"]]] += 1
    status = "failed" if counts["failed"] or counts["errors"] else ("passed" if tests else "no_tests")
    doc = {
        "format": "distmon-result/1",
        "jid": jid,
        "minion_id": minion,
        "fun": "pytestrun.run",
        "fun_args": ["tests"],
        "success": True,
        "retcode": 0 if status == "passed" else 1,
        "returned_at": started_at,
        "grains": grains if grains is not None else {"os": "Debian", "osrelease": "12"},
        "result": {
            "status": status,
            "exitcode": 0 if status == "passed" else 1,
            "counts": counts,
            "tests": tests,
            "started_at": started_at,
            "finished_at": started_at,
            "duration": 1.5,
            "paths": ["tests"],
            "args": [],
            "python": "/usr/bin/python3",
            "python_version": "3.11.2",
            "pytest_version": "9.2.0",
            "minion_id": minion,
        },
    }
    doc.update(top)
    return doc


def drop(inbox: Path, minion: str, name: str, content: bytes | str | dict) -> Path:
    """Write a file into ``<inbox>/<minion>/<name>`` the way the returner does (temp name, rename)."""
    directory = inbox / minion
    directory.mkdir(parents=True, exist_ok=True)
    if isinstance(content, dict):
        content = json.dumps(content)
    if isinstance(content, str):
        content = content.encode("utf-8")
    temp = directory / f".{name}.tmp.part"
    temp.write_bytes(content)
    final = directory / name
    temp.rename(final)
    return final


def drop_doc(inbox: Path, doc: dict) -> Path:
    return drop(inbox, doc["minion_id"], f"{doc['jid']}.json", doc)


def make_settings(root: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "db_path": database_location(root / "db"),
        "inbox": root / "inbox",
        "archive": root / "archive",
        "quarantine": root / "quarantine",
        "scan_interval": 0.05,
    }
    values.update(overrides)
    settings = Settings(**values)
    Path(settings.inbox).mkdir(parents=True, exist_ok=True)
    return settings


def quarantined(settings: Settings) -> dict[str, str]:
    """{relative path: reason text} of everything in quarantine."""
    found = {}
    root = Path(settings.quarantine)
    if not root.exists():
        return found
    for reason in root.rglob("*.reason"):
        found[str(reason.relative_to(root))[: -len(".reason")]] = reason.read_text()
    return found


def ingest(settings) -> IngestReport:
    """One real ingest pass, as the CLI runs it."""
    return ingest_pending_sync(settings)


def rows(settings, sql: str, params=()) -> list[dict]:
    conn = connect_sync(settings.db_path)
    try:
        return [dict(row) for row in conn.execute(sql, params)]
    finally:
        conn.close()


def counters(settings) -> dict[str, int]:
    return {row["name"]: row["value"] for row in rows(settings, "SELECT name, value FROM counters")}


def prune_store(settings: Settings, days: int = 30) -> int:
    """Prune the store as `python -m dashboard prune --older-than <days>d` does: runs removed."""

    async def pruning() -> int:
        async with Database(settings.db_path) as db:
            return await prune(db, timedelta(days=days))

    return asyncio.run(pruning())
