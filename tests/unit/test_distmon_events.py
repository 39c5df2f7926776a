"""_utils/distmon_events.py: which spool event an attempt calls for, and firing that never blocks."""

from __future__ import annotations

import os
import time
from collections import namedtuple

from tests.loader_support import load_loader_module

events = load_loader_module("_utils/distmon_events.py", "distmon_events_under_test")
Entry = namedtuple("Entry", "jid path size mtime inode")


def test_backlog_every_attempt_that_leaves_results_then_drained_once(tmp_path):
    waiting = [Entry("2", str(tmp_path / "2.json"), 10, 1700000000.0, 1), Entry("3", str(tmp_path / "3.json"), 5, 1700000100.0, 2)]
    [(tag, data)] = events.spool_events(str(tmp_path), "web-1", waiting, {"delivered": []}, "host down")
    assert tag == "distmon/spool/backlog"
    assert data == {"minion_id": "web-1", "count": 2, "bytes": 15, "oldest": "2023-11-14T22:13:20.000000Z",
                    "oldest_jid": "2", "last_error": "host down"}
    assert os.path.exists(tmp_path / ".backlog")
    assert events.spool_events(str(tmp_path), "web-1", waiting[1:], {}, "host down")[0][1]["count"] == 1
    [(tag, data)] = events.spool_events(str(tmp_path), "web-1", [], {"delivered": ["3"]}, None)
    assert (tag, data) == ("distmon/spool/drained", {"minion_id": "web-1", "delivered": ["3"]})
    # A normal return afterwards (one in, one out): nothing.
    assert events.spool_events(str(tmp_path), "web-1", [], {"delivered": ["4"]}, None) == []


def test_firing_never_blocks_nor_raises():
    began = time.monotonic()
    assert events.fire_best_effort(lambda data, tag: time.sleep(5), "t", {}, timeout=0.2) is None
    assert events.fire_best_effort(lambda data, tag: 1 / 0, "t", {}, timeout=1) is False
    assert events.fire_best_effort(lambda data, tag: True, "t", {}, timeout=1) is True
    assert time.monotonic() - began < 2


def test_masterless_minions_fire_nothing():
    assert events.masterless({"file_client": "local"}) and events.masterless({"master_type": "disable"})
    assert not events.masterless({"file_client": "remote"})
