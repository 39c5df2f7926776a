"""A run long enough to restart the master while it goes on."""

import time


def test_quick():
    assert True


def test_takes_a_while():
    time.sleep(8)
