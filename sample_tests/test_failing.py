"""One test that fails on purpose, so a demo shows what a failure looks like."""


def test_intentional_failure():
    expected_minions = 4
    print("checking the minion count")
    assert len(["web-1", "web-2", "db-1"]) == expected_minions, "the demo stack has 3 minions, not 4"
