"""pytest 9's built-in subtests: the summary line counts them apart."""


def test_with_subtests(subtests):
    for number in range(4):
        with subtests.test(msg="number", number=number):
            assert number != 2


def test_plain():
    assert True
