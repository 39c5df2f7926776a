"""The failures view's pure parts: which grains separate failing from passing minions."""

from __future__ import annotations

from dashboard.failures import separating_grains


def test_separating_grains_rank_by_share_and_skip_identifying_grains():
    failing = [{"osrelease": "11", "roles": ["web", "edge"], "host": "a", "pythonversion": [3, 9, 2, "final", 0]},
               {"osrelease": "11", "roles": ["web"], "host": "b", "pythonversion": [3, 11, 2, "final", 0]}]
    passing = [{"osrelease": "12", "roles": ["db"], "host": "c", "pythonversion": [3, 11, 2, "final", 0]},
               {"osrelease": "11", "roles": ["db"], "host": "d", "pythonversion": [3, 11, 2, "final", 0]}]
    ranked = separating_grains(failing, passing)
    labels = [g["label"] for g in ranked]
    assert labels[0] == "roles=web: 2 of 2 failing, 0 of 2 passing"
    assert "osrelease=11: 2 of 2 failing, 1 of 2 passing" in labels
    assert "pythonversion=3.9.2: 1 of 2 failing, 0 of 2 passing" in labels  # a version list is one value
    assert not [g for g in ranked if g["grain"] == "host"]  # differs on every minion: names, explains nothing
    assert separating_grains([], passing) == []


def test_on_a_large_fleet_ranking_uses_a_sample_but_the_counts_shown_are_exact():
    failing = [{"osrelease": "11", "rack": f"r{n % 40}"} for n in range(1500)]
    passing = [{"osrelease": "11" if n < 7 else "12", "rack": f"r{n % 40}"} for n in range(4000)]
    [top, *_] = separating_grains(failing, passing)
    assert top["label"] == "osrelease=11: 1500 of 1500 failing, 7 of 4000 passing"
