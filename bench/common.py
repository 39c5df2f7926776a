"""What every benchmark shares: a figure, its target, the one-line format, stats, the stack's coordinates.

A figure is printed as ``<name> <value> <unit> <floor> <ratio> <target> ok|SHORT`` (see
bench/run.py for what floor, ratio and target mean for each figure). Everything here is
plain Python with no timing of its own, so tests/unit/test_bench_format.py can check it.
"""

from __future__ import annotations

import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RUN = REPO / ".run"
BENCH_RUN = RUN / "bench"
VENV_PY = REPO / ".venv" / "bin" / "python"
VENV_BIN = REPO / ".venv" / "bin"
SUITES = Path(__file__).resolve().parent / "suites"


def say(message: str) -> None:
    """Progress for the human, on stderr: stdout carries the figure lines only."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- targets -----------------------------------------------------------------------------

_CLAUSE = re.compile(
    r"^(?P<op><=|>=|==)(?P<num>\d+(?:\.\d+)?)(?P<x>x)?(?:\+(?P<plus>\d+(?:\.\d+)?))?(?P<unit>[A-Za-z/%]+)?$"
)


class TargetError(ValueError):
    """A target string this module cannot read, or whose unit differs from the figure's."""


def meets(target: str, value: float | None, floor: float | None, unit: str) -> bool:
    """True when ``value`` meets every ``&``-joined clause of ``target``.

    Clauses: ``<=N<unit>`` / ``>=N<unit>`` / ``==N`` compare the value itself;
    ``<=Nx`` / ``>=Nx`` compare the ratio value/floor; ``<=Nx+M<unit>`` means
    value <= N*floor + M. ``-`` is no target (informational: always met).
    A missing value (the measurement failed) never meets a target.
    """
    if target == "-":
        return True
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return False
    for clause in target.split("&"):
        match = _CLAUSE.match(clause)
        if not match:
            raise TargetError(f"cannot read target clause {clause!r} of {target!r}")
        op, number = match["op"], float(match["num"])
        if match["unit"] and match["unit"] != unit:
            raise TargetError(f"target {target!r} is in {match['unit']}, the figure in {unit}")
        if match["x"]:
            if not floor:
                return False
            bound = number * floor + float(match["plus"] or 0)
        else:
            if match["plus"]:
                raise TargetError(f"'+M' needs a ratio ('Nx+M'): {clause!r}")
            bound = number
        ok = {"<=": value <= bound, ">=": value >= bound, "==": value == bound}[op]
        if not ok:
            return False
    return True


# -- figures -----------------------------------------------------------------------------


def format_number(value: float | None) -> str:
    """A number in a fixed, readable form with no exponent: ``-`` for a missing one."""
    if value is None or (isinstance(value, float) and (math.isnan(value) or math.isinf(value))):
        return "-"
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:.0f}"
    if magnitude >= 100:
        return f"{value:.1f}"
    if magnitude >= 10:
        return f"{value:.2f}"
    return f"{value:.3f}"


def ratio_of(value: float | None, floor: float | None) -> float | None:
    if value is None or floor is None or floor == 0:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    return value / floor


@dataclass
class Figure:
    """One measured figure with its same-run floor and its target."""

    name: str
    value: float | None
    unit: str
    floor: float | None
    target: str
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        return ratio_of(self.value, self.floor)

    @property
    def ok(self) -> bool:
        return meets(self.target, self.value, self.floor, self.unit)

    def line(self) -> str:
        """``<name> <value> <unit> <floor> <ratio> <target> ok|SHORT``, single spaces, no spaces inside fields."""
        for token in (self.name, self.unit, self.target):
            if not token or any(ch.isspace() for ch in token):
                raise ValueError(f"figure field {token!r} must be one non-empty word")
        ratio = self.ratio
        return " ".join([
            self.name,
            format_number(self.value),
            self.unit,
            format_number(self.floor),
            "-" if ratio is None else f"{ratio:.3f}",
            self.target,
            "ok" if self.ok else "SHORT",
        ])

    def record(self, context: dict[str, Any]) -> dict[str, Any]:
        """The results.json object: the line's fields as numbers, plus the run's context."""
        data = asdict(self)
        data.update(ratio=self.ratio, ok=self.ok, verdict="ok" if self.ok else "SHORT", line=self.line())
        data.update(context)
        return data


# -- statistics --------------------------------------------------------------------------


def percentile(samples: list[float], pct: float) -> float:
    """The pct-th percentile by linear interpolation between closest ranks (numpy's default)."""
    if not samples:
        raise ValueError("no samples")
    ordered = sorted(samples)
    if len(ordered) == 1:
        return ordered[0]
    rank = (len(ordered) - 1) * pct / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def median(samples: list[float]) -> float:
    return statistics.median(samples)


def median_pair(values: list[float], floors: list[float]) -> tuple[float, float]:
    """The (value, floor) pair, measured side by side, whose ratio value/floor is the median one.

    Pairs are measured back to back, so a slow phase of a shared machine slows both halves of a
    pair alike; taking one real pair (rather than the median of each column) keeps the printed
    ratio exactly value/floor. With an even count the upper middle pair is taken.
    """
    if not values or len(values) != len(floors):
        raise ValueError("need as many floors as values, at least one")
    pairs = sorted(zip(values, floors, strict=True), key=lambda pair: pair[0] / pair[1])
    return pairs[len(pairs) // 2]


# -- context ------------------------------------------------------------------------------


def context() -> dict[str, Any]:
    """Where and when: machine, cores, load, date (UTC), git commit, Python."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=REPO, capture_output=True,
                                text=True, check=False).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        commit, dirty = "", ""
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = None
    return {
        "machine": platform.node(),
        "cpus": os.cpu_count(),
        "load_1min_at_start": load,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "commit": commit + ("-dirty" if dirty else ""),
        "python": platform.python_version(),
    }


# -- the local stack -------------------------------------------------------------------------


def stack_env() -> dict[str, str]:
    """The coordinates `make up` wrote to .run/stack.env."""
    sys.path.insert(0, str(REPO))
    from tools.stack import read_stack_env

    values = read_stack_env(RUN / "stack.env")
    if not values:
        raise RuntimeError(f"{RUN / 'stack.env'} is missing: run `make up` first (make bench does)")
    return values


def salt_cli(*argv: str, timeout: float = 600, check: bool = False) -> subprocess.CompletedProcess:
    """Run a Salt CLI (salt, salt-run, ...) against the stack's master config."""
    cmd = [str(VENV_BIN / argv[0]), "-c", str(RUN / "salt" / "master"), *argv[1:]]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=timeout, check=check)


class StackToken:
    """An API token for the stack's dashboard for the length of a ``with`` block, then gone.

    The user ``bench`` is made through the dashboard's own CLI with a random password nobody
    sees, and the token with ``python -m dashboard token create``. On exit the token is deleted,
    and so is the user when this block created it: on a fresh stack the first user becomes the
    admin, and that must stay the person who runs `make demo` and registers, not the bench.
    """

    def __init__(self, username: str = "bench"):
        self.username = username
        self.db_path = Path(stack_env()["DISTMON_DB"])
        self.token: str | None = None
        self.created_user = False

    def _user_id(self) -> int | None:
        import sqlite3

        conn = sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, timeout=30)
        try:
            row = conn.execute("SELECT id FROM users WHERE username = ?", (self.username,)).fetchone()
        finally:
            conn.close()
        return row[0] if row else None

    def __enter__(self) -> str:
        import secrets

        if self._user_id() is None:
            created = subprocess.run(
                [str(VENV_PY), "-m", "dashboard", "--env-file", str(RUN / "stack.env"), "user", "create", self.username,
             "--password-stdin"],
                input=secrets.token_urlsafe(24) + "\n", capture_output=True, text=True, cwd=REPO, check=False,
                env={**os.environ, "DISTMON_BCRYPT_ROUNDS": "4"},
            )
            if created.returncode != 0:
                raise RuntimeError(f"could not create the bench user: {created.stderr.strip()}")
            self.created_user = True
        made = subprocess.run(
            [str(VENV_PY), "-m", "dashboard", "--env-file", str(RUN / "stack.env"), "token", "create", self.username,
             "--label", "bench"],
            capture_output=True, text=True, cwd=REPO, check=False,
        )
        if made.returncode != 0:
            self.__exit__(None, None, None)
            raise RuntimeError(f"could not create an API token: {made.stderr.strip()}")
        self.token = made.stdout.strip().splitlines()[-1]
        return self.token

    def __exit__(self, *exc_info: object) -> None:
        sys.path.insert(0, str(REPO))
        from dashboard import security
        from dashboard.db import connect_sync, run_transaction

        user_id = self._user_id()
        if user_id is None:
            return
        token_hash = security.sha256_hex(self.token) if self.token else None
        created = self.created_user

        def forget(conn) -> None:
            if token_hash:
                conn.execute("DELETE FROM api_tokens WHERE token_hash = ?", (token_hash,))
            if created:
                # The user this block made (possibly the database's first admin): gone with its rows.
                conn.execute("DELETE FROM sessions WHERE user_id = ?", (user_id,))
                conn.execute("DELETE FROM api_tokens WHERE user_id = ?", (user_id,))
                conn.execute("DELETE FROM users WHERE id = ?", (user_id,))

        conn = connect_sync(self.db_path)
        try:
            run_transaction(conn, forget)
        finally:
            conn.close()


def runs_for_jid(client, jid: str) -> list[dict]:
    """The runs /api/runs lists for a jid (client: an httpx.Client with the token set)."""
    response = client.get("/api/runs", params={"jid": jid, "limit": 200})
    response.raise_for_status()
    return response.json()["runs"]


def wait_for_runs(client, jid: str, count: int, timeout: float, interval: float = 0.05) -> tuple[float, int]:
    """Poll /api/runs?jid= until ``count`` runs are listed: (monotonic time seen, runs seen)."""
    deadline = time.monotonic() + timeout
    seen = 0
    while True:
        seen = len(runs_for_jid(client, jid))
        now = time.monotonic()
        if seen >= count or now > deadline:
            return now, seen
        time.sleep(interval)


def write_json(path: Path, data: Any) -> None:
    temp = path.with_name(path.name + ".tmp")
    temp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    os.replace(temp, path)
