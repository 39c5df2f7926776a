"""Tests that print megabytes: captured output is capped, counts stay exact."""

import sys


def test_prints_megabytes_and_fails():
    sys.stdout.write("o" * 3_000_000)
    sys.stderr.write("e" * 2_000_000)
    raise AssertionError("x" * 200_000)


def test_prints_a_megabyte_and_passes():
    sys.stdout.write("ü" * 500_000)


def test_quiet():
    assert True
