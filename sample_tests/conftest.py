"""Shared by the sample tests; shipped with them over salt:// so it applies on every minion."""

import pytest


def pytest_configure(config):
    # Registered here (not only in an ini file) so the samples run cleanly from a minion's cache too.
    config.addinivalue_line("markers", "slow: takes a second or two")


@pytest.fixture
def inventory():
    return {"web": 2, "db": 1}
