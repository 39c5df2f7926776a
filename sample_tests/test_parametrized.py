"""Parametrized tests: one report per parameter set."""

import pytest


@pytest.mark.parametrize(("value", "expected"), [(1, 2), (2, 4), (10, 20)])
def test_double(value, expected):
    assert value * 2 == expected


@pytest.mark.parametrize("name", ["web-1", "web-2", "db-1"])
def test_minion_names_are_short(name):
    assert len(name) <= 8
