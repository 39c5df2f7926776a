"""The verdict rules of one test on one minion: shared by the ingester and dashboard/seed.py.

A test's outcome in a run is the worst of its entries (failed > error > passed > xpassed >
xfailed > skipped); failed and error are fails, passed/xpassed/xfailed are passes, skipped is
neither: a flip is a change between pass and fail (skips in between are ignored),
``first_fail_at`` opens a failing streak and a pass closes it. ``flips`` counts every flip;
``code_flips`` only those where the run that gave the previous verdict carried the same, known,
``code_hash``.
"""

from __future__ import annotations

# Outcome precedence when a test has several entries in one run (e.g. passed + teardown error).
PRECEDENCE = {"failed": 0, "error": 1, "passed": 2, "xpassed": 3, "xfailed": 4, "skipped": 5}
FAIL = frozenset({"failed", "error"})
PASS = frozenset({"passed", "xpassed", "xfailed"})


def fold_status(
    row: dict | None, minion_id: int, test_id: int, run_id: int, started_at: str, outcome: str, duration: float,
    code_hash: str | None = None, signature: str | None = None,
) -> dict:
    """Apply one run's outcome of one test to its test_status row (runs must come oldest first).

    Updates ``row`` in place (a new row when None) and returns it. ``code_hash`` is the run's
    code fingerprint: a flip also counts in ``code_flips`` when the run that gave the previous
    verdict had the same, known, code hash (a fix or a regression is not flakiness).
    ``signature`` is the failure signature of the test's worst entry in that run, if it failed.
    """
    if row is None:
        row = {
            "minion_id": minion_id,
            "test_id": test_id,
            "runs": 0,
            "fails": 0,
            "flips": 0,
            "first_fail_at": None,
            "last_pass_at": None,
            "total_duration": 0.0,
            "last_code_hash": None,
            "code_flips": 0,
            "last_signature": None,
        }
    # The last pass/fail verdict, skipping neutral outcomes (skipped): a failing streak is open
    # exactly when first_fail_at is set; otherwise the last verdict was a pass if there ever was one.
    # (Each outcome is classified once: this runs once per test and run, 50,000 times a bench pass.)
    row["runs"] += 1
    row["total_duration"] += duration or 0.0
    if outcome in FAIL:
        row["fails"] += 1
        if not row["first_fail_at"]:
            if row["last_pass_at"]:
                _flip(row, code_hash)
            row["first_fail_at"] = started_at
        # The hash of the latest verdict, not of the latest run: a skip in between changes nothing.
        row["last_code_hash"] = code_hash
        # The failure signature of the latest run (NULL unless it failed): the failures page's "open".
        row["last_signature"] = signature
    else:
        if outcome in PASS:
            if row["first_fail_at"]:
                _flip(row, code_hash)
                row["first_fail_at"] = None
            row["last_pass_at"] = started_at
            row["last_code_hash"] = code_hash
        row["last_signature"] = None
    row["last_run_id"] = run_id
    row["last_outcome"] = outcome
    row["last_started_at"] = started_at
    return row


def _flip(row: dict, code_hash: str | None) -> None:
    """A flip between pass and fail; also a code flip when the previous verdict's run had the same code."""
    row["flips"] += 1
    if code_hash and code_hash == row["last_code_hash"]:
        row["code_flips"] += 1
