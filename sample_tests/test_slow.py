"""A slow test (about a second), so durations show up."""

import time

import pytest


@pytest.mark.slow
def test_takes_a_second():
    started = time.monotonic()
    time.sleep(1.0)
    assert time.monotonic() - started >= 1.0
