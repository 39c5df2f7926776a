"""Failure signatures: the masking rules and what makes two failures the same (docs/triage.md)."""

from __future__ import annotations

import pytest

from dashboard.signatures import failure_signature, is_signature, mask

LONG = """def test_fetch():
>       helper(3)

tests/test_api.py:12:<SP>
_ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _

    def helper(x):
>       raise ConnectionError(f"no answer from {x}")
E       ConnectionError: no answer from 10.0.0.{n}

lib/client.py:88: ConnectionError""".replace("<SP>", " ")  # pytest writes "path:line: " for a frame


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("got 3 items, expected 4", "got <n> items, expected <n>"),
        ("object at 0x7f3a2c1b9d30", "object at <hex>"),
        ("commit 3f8a36e1c0 not found", "commit <hex> not found"),
        ("job 1b4e28ba-2fa1-11d2-883f-0016d3cca427 failed", "job <uuid> failed"),
        ("at 2026-11-28T07:00:00.123456Z and 12:30:01", "at <time> and <time>"),
        ("no such file /tmp/pytest-of-root/pytest-7/test_x0/out.txt", "no such file <tmp>"),
        ("KeyError 'alice' vs \"bob\"", "KeyError '<str>' vs \"<str>\""),
        ("node42 on py3 talks to web-1", "node42 on py3 talks to web-<n>"),
        ("ratio   1.5e-3\n  too   low", "ratio <n> too low"),
    ],
)
def test_mask_replaces_volatile_parts(text, expected):
    assert mask(text) == expected


def test_messages_differing_only_by_numbers_share_a_signature():
    a = failure_signature("tests/test_a.py::test_x", "AssertionError: got 3 items", "tests/test_a.py:12: AssertionError")
    b = failure_signature("tests/test_a.py::test_x", "AssertionError: got 17 items", "tests/test_a.py:12: AssertionError")
    assert a == b
    assert (a.exception, a.message, a.location) == ("AssertionError", "got <n> items", "tests/test_a.py:12")
    assert is_signature(a.signature)


def test_a_different_exception_type_is_a_different_signature():
    a = failure_signature("tests/test_a.py::test_x", "ValueError: bad 3", "tests/test_a.py:12: ValueError")
    b = failure_signature("tests/test_a.py::test_x", "TypeError: bad 3", "tests/test_a.py:12: TypeError")
    assert a.signature != b.signature


def test_a_different_failing_line_is_a_different_signature():
    a = failure_signature("tests/test_a.py::test_x", "AssertionError: x", "tests/test_a.py:12: AssertionError")
    b = failure_signature("tests/test_a.py::test_x", "AssertionError: x", "tests/test_a.py:13: AssertionError")
    assert a.signature != b.signature


def test_location_is_the_tests_own_frame_not_the_library_frame():
    first = failure_signature("tests/test_api.py::test_fetch", None, LONG.replace("{n}", "7"))
    again = failure_signature("tests/test_api.py::test_fetch", None, LONG.replace("{n}", "9").replace(":88:", ":91:"))
    assert first.location == "tests/test_api.py:12"
    assert first.exception == "ConnectionError"
    assert first.message == "no answer from <n>"
    # The library moved a line: still the same failure of this test.
    assert first.signature == again.signature


def test_parametrized_cases_failing_at_one_line_share_a_signature():
    a = failure_signature("tests/test_a.py::test_p[1]", "assert 1 == 2", "tests/test_a.py:5: AssertionError")
    b = failure_signature("tests/test_a.py::test_p[2]", "assert 2 == 3", "tests/test_a.py:5: AssertionError")
    assert a.signature == b.signature


def test_message_with_and_without_type_prefix_mask_alike():
    a = failure_signature("t.py::x", "AssertionError: assert 1 == 2", "t.py:3: AssertionError")
    b = failure_signature("t.py::x", "assert 1 == 2", "t.py:3: AssertionError")
    assert a.signature == b.signature


def test_no_traceback_falls_back_to_the_message_type_and_the_file():
    sig = failure_signature("tests/test_b.py::test_y", "RuntimeError: boom", None)
    assert (sig.exception, sig.location) == ("RuntimeError", "tests/test_b.py")
    bare = failure_signature("tests/test_b.py::test_y", None, None)
    assert bare.exception == "Failed" and is_signature(bare.signature)


def test_is_signature_rejects_anything_but_16_hex_digits():
    assert not is_signature("../../etc/passwd")
    assert not is_signature("ABCDEF0123456789")
    assert not is_signature("")

