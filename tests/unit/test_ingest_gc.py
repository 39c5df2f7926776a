"""The ingest pass's collector policy (dashboard/ingest/passes.py): young collections every
50,000 allocations and no full collection during a pass; the thresholds as they were after it."""

from __future__ import annotations

import asyncio
import gc

import pytest

from dashboard.ingest import passes


@pytest.fixture(autouse=True)
def _known_thresholds():
    saved = gc.get_threshold()
    gc.set_threshold(700, 10, 10)
    yield
    gc.set_threshold(*saved)


def test_a_pass_raises_the_thresholds_and_restores_them():
    with passes._fewer_collections():
        assert gc.get_threshold() == passes.PASS_GC_THRESHOLD
    assert gc.get_threshold() == (700, 10, 10)


def test_higher_thresholds_set_by_the_process_are_kept():
    gc.set_threshold(100_000, 10, 10)
    with passes._fewer_collections():
        assert gc.get_threshold() == (100_000, 20, 100)
    assert gc.get_threshold() == (100_000, 10, 10)


def test_overlapping_passes_restore_only_when_the_last_ends():
    first, second = passes._fewer_collections(), passes._fewer_collections()
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)
    assert gc.get_threshold() == passes.PASS_GC_THRESHOLD
    second.__exit__(None, None, None)
    assert gc.get_threshold() == (700, 10, 10)


def test_a_failing_pass_restores_them(monkeypatch):
    seen = []

    async def failing_pass(_db, _settings):
        seen.append(gc.get_threshold())
        raise RuntimeError("the database went away")

    monkeypatch.setattr(passes, "_ingest_pass", failing_pass)
    with pytest.raises(RuntimeError):
        asyncio.run(passes.ingest_pending(None, None))
    assert seen == [passes.PASS_GC_THRESHOLD]
    assert gc.get_threshold() == (700, 10, 10)
