"""
Summaries of ``pytestrun.run`` returns: one row per minion, its progress line, the table.

Shared by the ``distmon`` runner (``distmon.run``, ``distmon.results``) and the
``distmon`` outputter (``salt '*' pytestrun.run ... --out distmon``), so a run
reads the same whichever way it was started. Everything that came from a
minion is stripped of control characters before it reaches a terminal.
What to run again after a run (``failed_nodeids``, ``rerun_paths``) is shared by
``pytestrun.run``'s event and ``distmon.rerun``.
"""

from __future__ import annotations

import json
import re

COUNT_KEYS = ("passed", "failed", "skipped", "xfailed", "xpassed", "errors")
TABLE_COLUMNS = ("minion", "passed", "failed", "skipped", "errors", "duration", "status")
NO_RETURN = "no_return"
CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f-\x9f]")
MAX_MESSAGE = 2000


def printable(text) -> str:
    """Test ids and messages come from the minions: no control characters reach the terminal."""
    return CONTROL_CHARS.sub("?", str(text))


def first_line(text) -> str:
    lines = str(text or "").strip().splitlines()
    return printable(lines[0][:200]) if lines else ""


def is_pytestrun_return(ret) -> bool:
    """True for what ``pytestrun.run`` returns (as opposed to an error string or a summary row)."""
    return isinstance(ret, dict) and isinstance(ret.get("counts"), dict)


def failed_nodeids(tests) -> list[str]:
    """The node ids that failed or errored (in any phase) in a ``pytestrun.run`` return's ``tests``, sorted."""
    return sorted({entry["nodeid"] for entry in tests or []
                   if isinstance(entry, dict) and entry.get("outcome") in ("failed", "error") and entry.get("nodeid")})


def rerun_paths(ret: dict, nodeids) -> list[str]:
    """Paths for ``pytestrun.run`` that run exactly ``nodeids`` again the way the run ``ret`` found them."""
    paths = [str(path) for path in ret.get("paths") or []]
    if paths and all(path.startswith("salt://") for path in paths):
        return [f"salt://{nodeid}" for nodeid in nodeids]  # node ids are relative to the salt:// root
    root = (ret.get("rootdir") or "").rstrip("/")
    return [f"{root}/{nodeid}" if root else nodeid for nodeid in nodeids]


def summarize_return(ret, retcode=None) -> dict:
    """One minion's summary row from its ``pytestrun.run`` return (any shape)."""
    if not is_pytestrun_return(ret):
        # A string means the minion could not run it: module missing, bad argument, exception.
        message = ret if isinstance(ret, str) else json.dumps(ret, default=str)[:MAX_MESSAGE]
        return {
            "status": "error",
            **dict.fromkeys(COUNT_KEYS, 0),
            "duration": None,
            "retcode": retcode if retcode is not None else 1,
            "message": str(message).strip()[:MAX_MESSAGE],
            "failures": [],
        }
    counts = ret["counts"]
    failures = [
        {"nodeid": test.get("nodeid"), "outcome": test.get("outcome"), "message": test.get("message")}
        for test in ret.get("tests") or []
        if isinstance(test, dict) and test.get("outcome") in ("failed", "error")
    ]
    summary = {
        "status": printable(ret.get("status") or "error")[:40],
        **{key: int(counts.get(key) or 0) for key in COUNT_KEYS},
        "duration": ret.get("duration"),
        "retcode": retcode if retcode is not None else int(ret.get("exitcode") or 0),
        "failures": failures,
    }
    if ret.get("message"):
        summary["message"] = str(ret["message"])
    return summary


def no_return_row(reason: str) -> dict:
    """The row of a targeted minion that did not return."""
    return {
        "status": NO_RETURN,
        **dict.fromkeys(COUNT_KEYS, 0),
        "duration": None,
        "retcode": None,
        "message": reason,
        "failures": [],
    }


def row_failed(row: dict) -> bool:
    return row["status"] != "passed"


def progress_line(minion: str, row: dict, max_failures: int = 5) -> str:
    """What the user sees for one minion: its outcome, then its first failures."""
    minion = printable(minion)
    if row["status"] == NO_RETURN:
        return f"{minion}: did not return ({row['message']})"
    if row["duration"] is None and row["status"] == "error":
        return f"{minion}: error: {first_line(row.get('message'))}"
    duration = f"{row['duration']:.2f} s" if isinstance(row["duration"], int | float) else "-"
    line = (
        f"{minion}: {row['status']}: {row['passed']} passed, {row['failed']} failed, "
        f"{row['skipped']} skipped, {row['errors']} errors in {duration}"
    )
    if row.get("message") and row["status"] != "passed":
        line += f" ({first_line(row['message'])})"
    for failure in row["failures"][:max_failures]:
        reason = first_line(failure.get("message"))
        nodeid = printable(failure["nodeid"])
        line += f"\n    {str(failure['outcome']).upper()} {nodeid}" + (f" - {reason}" if reason else "")
    if len(row["failures"]) > max_failures:
        line += f"\n    ... and {len(row['failures']) - max_failures} more"
    return line


def format_table(rows: dict, targeted) -> str:
    """The summary table: one line per minion, then the minions that did not return."""
    body = []
    for minion in sorted(rows):
        row = rows[minion]
        duration = f"{row['duration']:.2f}" if isinstance(row["duration"], int | float) else "-"
        if row["status"] == NO_RETURN:
            body.append((printable(minion), "-", "-", "-", "-", "-", NO_RETURN))
        else:
            body.append((printable(minion), str(row["passed"]), str(row["failed"]), str(row["skipped"]),
                         str(row["errors"]), duration, printable(row["status"])))
    widths = [max([len(col)] + [len(line[i]) for line in body]) for i, col in enumerate(TABLE_COLUMNS)]

    def fmt(cells):
        return "  ".join(
            cell.ljust(width) if i in (0, len(cells) - 1) else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    lines = [fmt(TABLE_COLUMNS), fmt(["-" * width for width in widths])]
    lines.extend(fmt(line) for line in body)
    missing = sorted(minion for minion, row in rows.items() if row["status"] == NO_RETURN)
    returned = len(rows) - len(missing)
    lines.append("")
    lines.append(f"{returned} of {len(set(targeted) | set(rows))} targeted minions returned")
    if missing:
        lines.append("Did not return: " + ", ".join(printable(minion) for minion in missing))
    return "\n".join(lines)
