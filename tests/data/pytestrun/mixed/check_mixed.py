"""Every outcome pytest knows, in one module."""

import sys
import warnings

import pytest


@pytest.fixture
def broken_setup():
    raise RuntimeError("setup exploded")


@pytest.fixture
def broken_teardown():
    yield
    raise RuntimeError("teardown exploded")


@pytest.fixture
def skipping_fixture():
    pytest.skip("the fixture says skip")


def test_pass():
    assert True


def test_fail():
    assert 1 == 2


@pytest.mark.skip(reason="marker skip")
def test_skip_marker():
    raise AssertionError("never runs")


def test_skip_inline():
    pytest.skip("inline skip")


def test_skip_from_fixture(skipping_fixture):
    raise AssertionError("never runs")


@pytest.mark.xfail(reason="expected to fail")
def test_xfail():
    raise AssertionError("fails as expected")


@pytest.mark.xfail(reason="unexpectedly passes")
def test_xpass():
    assert True


@pytest.mark.xfail(reason="strict: a pass is a failure", strict=True)
def test_xpass_strict():
    assert True


def test_xfail_inline():
    pytest.xfail("inline xfail")


def test_setup_error(broken_setup):
    raise AssertionError("never runs")


@pytest.mark.tagged
def test_teardown_error_after_pass(broken_teardown):
    print("stdout of a test whose teardown fails")


def test_teardown_error_after_fail(broken_teardown):
    raise AssertionError("call failed too")


class TestGroup:
    def test_method_passes(self):
        assert "a" in "abc"

    def test_method_fails(self):
        assert [1, 2] == [1, 3]

    @pytest.mark.parametrize("number", [1, 2])
    def test_method_parametrized(self, number):
        assert number in (1, 2)


@pytest.mark.parametrize(
    "value",
    ["ünïcode", "it's", 'say "hi"', "<script>alert(1)</script>", "a,b", "[x]", "\u2603", "tab\tnl\n"],
)
def test_ids(value):
    assert value != "it's"


@pytest.mark.parametrize("n", range(3), ids=["ü-id", "<b>&amp;", "a::b"])
def test_custom_ids(n):
    assert n < 3


def test_output_and_warning():
    print("to stdout")
    sys.stderr.write("to stderr\n")
    warnings.warn(UserWarning("a warning the summary counts"), stacklevel=1)
