"""Tests that pass: the happy path."""


def test_addition():
    assert 1 + 1 == 2


def test_inventory_fixture(inventory):
    assert sum(inventory.values()) == 3


class TestStrings:
    def test_upper(self):
        assert "distmon".upper() == "DISTMON"

    def test_split(self):
        assert "a,b".split(",") == ["a", "b"]
