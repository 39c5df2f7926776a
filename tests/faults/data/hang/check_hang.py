"""One test passes, the next hangs (pytestrun's timeout must end it)."""

import time


def test_passes_first():
    assert True


def test_hangs_forever():
    time.sleep(3600)
