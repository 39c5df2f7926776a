"""pytestrun_overhead: ``pytestrun.run`` on a minion vs ``python -m pytest`` of the same suite.

The value: ``pytestrun.run(<suite dir>)`` called through Salt's minion loader with web-1's
configuration (the stack's, when rendered; cachedir moved to a temp dir), that is exactly the
module code a minion runs, minus Salt's transport (pipeline_overhead measures that). The
floor: ``<same interpreter> -m pytest <suite dir>`` from the same working directory, output
to /dev/null. One warm-up of each, then ``ROUNDS`` alternating pairs; the median-ratio pair is reported.
Target: value <= 1.05 x floor + 0.1 s.

Two suites: sample_tests (the demo suite: 15 tests, one sleeps 1 s) and bench/suites/many
(1,000 quick tests, where any per-test cost of the streaming plugin would show).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import REPO, RUN, SUITES, Figure, median_pair, say

ROUNDS = 5
TARGET = "<=1.05x+0.1s"


def load_pytestrun(cachedir: Path):
    """The pytestrun module as a minion's loader builds it (web-1's config, our cachedir)."""
    import salt.config
    import salt.loader

    config = RUN / "salt" / "web-1" / "minion"
    opts = salt.config.minion_config(str(config) if config.exists() else None)
    opts["cachedir"] = str(cachedir)
    opts["file_client"] = "local"
    opts["module_dirs"] = [str(REPO / "_modules")]
    opts["grains"] = {}
    utils = salt.loader.utils(opts)
    modules = salt.loader.minion_mods(opts, utils=utils, whitelist=["pytestrun", "cp", "config", "cmd"])
    return modules["pytestrun.run"]


def time_pytestrun(run_fn, suite: Path) -> tuple[float, dict]:
    started = time.perf_counter()
    result = run_fn(str(suite), timeout=600)
    return time.perf_counter() - started, result


def time_pytest(suite: Path) -> tuple[float, int]:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pytest", str(suite)], cwd=suite, stdin=subprocess.DEVNULL,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return time.perf_counter() - started, done.returncode


def measure(run_fn, suite: Path, rounds: int) -> tuple[list[float], list[float], dict]:
    time_pytestrun(run_fn, suite)  # warm-up: writes the plugin, fills the page cache
    time_pytest(suite)
    ours, floors, result = [], [], {}
    for index in range(rounds):
        # Alternate which goes first, so a slow phase of the machine hits both alike.
        if index % 2 == 0:
            seconds, result = time_pytestrun(run_fn, suite)
            ours.append(seconds)
            floors.append(time_pytest(suite)[0])
        else:
            floors.append(time_pytest(suite)[0])
            seconds, result = time_pytestrun(run_fn, suite)
            ours.append(seconds)
    return ours, floors, result


def run(quick: bool = False) -> list[Figure]:
    rounds = 2 if quick else ROUNDS
    cachedir = Path(tempfile.mkdtemp(prefix="distmon-bench-pytestrun-"))
    figures = []
    try:
        run_fn = load_pytestrun(cachedir)
        for name, suite in (("pytestrun_overhead", REPO / "sample_tests"),
                            ("pytestrun_overhead_1000", SUITES / "many")):
            ours, floors, result = measure(run_fn, suite, rounds)
            counts = result.get("counts", {})
            say(f"{name}: pytestrun.run {[round(s, 2) for s in ours]} s, pytest {[round(s, 2) for s in floors]} s; "
                f"last result {result.get('status')} {counts}")
            tests = sum(counts.values())
            if tests == 0:
                raise RuntimeError(f"pytestrun.run of {suite} reported no tests: {result.get('message')}")
            value, floor = median_pair(ours, floors)
            figures.append(Figure(
                name, value, "s", floor, TARGET,
                note=f"pytestrun.run of {suite.relative_to(REPO)} ({tests} results) via the minion loader vs "
                     f"`python -m pytest` of it, same interpreter; the median-ratio pair of {rounds} alternating pairs",
                extra={"pytestrun_seconds": ours, "pytest_seconds": floors, "results": tests},
            ))
    finally:
        shutil.rmtree(cachedir, ignore_errors=True)
    return figures
