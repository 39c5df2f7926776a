"""1,000 quick tests for the bench: per-test cost of pytestrun's streaming plugin shows at this count.

Mostly passes, with a few failures, skips and captured output, so every reporting path is used.
"""

import pytest


@pytest.mark.parametrize("number", range(990))
def test_square_is_not_negative(number):
    if number % 100 == 0:
        print(f"checking {number}")
    assert number * number >= 0


@pytest.mark.parametrize("number", range(5))
def test_fails_on_purpose(number):
    assert number < 0, "a failure with a traceback, as a real suite has now and then"


@pytest.mark.parametrize("number", range(5))
def test_skipped(number):
    pytest.skip("skipped on purpose")
