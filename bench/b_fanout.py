"""fanout_20: 20 extra minions on the stack's master; distmon.run of a trivial test vs test.ping.

Starts ``bench-01`` .. ``bench-20`` against the running stack's salt-master: configs rendered
from salt/minion.conf as tools/stack.py renders the stack's own (same storage host, same
returner options), root dirs under .run/bench/, their keys pre-seeded into the master's
pki/master/minions as tools/stack.py's seed_minion_keys does (keys kept in .run/bench for the
next run). Modules are synced with ``saltutil.sync_all``.

The value: ``salt-run distmon.run path=bench/suites/trivial tgt='bench-*'`` from the CLI's
start until ``/api/runs?jid=`` lists 20 runs. The floor: ``salt 'bench-*' test.ping`` (CLI)
until all 20 answered. One warm-up each, ``ROUNDS`` alternating pairs, the median-ratio pair. No ratio
target is set for it; ``fanout_20_delivered`` (runs of the last job visible in the API, must
be 20) is the pass/fail figure.

At the end (and on any failure) every bench minion is stopped by its pid file, leftovers are
looked up by their own config dir on the command line and killed by pid, and their keys are
removed from the master, so ``salt '*'`` on the stack never waits for them. Their runs stay
in the stack's database.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time

from bench.b_pipeline import distmon_run_until_visible
from bench.common import (
    BENCH_RUN,
    RUN,
    SUITES,
    VENV_BIN,
    Figure,
    StackToken,
    median,
    median_pair,
    runs_for_jid,
    salt_cli,
    say,
    stack_env,
)

COUNT = 20
IDS = tuple(f"bench-{index:02d}" for index in range(1, COUNT + 1))
ROUNDS = 3
MASTER_ACCEPTED = RUN / "salt" / "master" / "pki" / "minions"


def prepare_minions() -> None:
    """Render each bench minion's config and put its public key among the master's accepted keys."""
    import subprocess

    from tools.stack import render, seed_minion_key, storage_host, template_values

    # The SFTP account's name is only known once the storage host is prepared: take it from stack.env.
    values = {**template_values(storage_host()), "RUN": str(BENCH_RUN), "SSH_USER": stack_env()["DISTMON_SSH_USER"]}
    (BENCH_RUN / "log").mkdir(parents=True, exist_ok=True)
    for minion_id in IDS:
        render("minion.conf", BENCH_RUN / "salt" / minion_id / "minion", {**values, "MINION_ID": minion_id})
        # A clean cache each run: nothing spooled or synced by an earlier run carries over.
        shutil.rmtree(BENCH_RUN / "salt" / minion_id / "cache", ignore_errors=True)
        seed_minion_key(MASTER_ACCEPTED.parent, BENCH_RUN / "salt" / minion_id, minion_id)
    for minion_id in IDS:
        subprocess.run([str(VENV_BIN / "salt-minion"), "-c", str(BENCH_RUN / "salt" / minion_id), "-d"],
                       check=True, cwd=BENCH_RUN)


def answering(timeout: int = 10) -> set[str]:
    done = salt_cli("salt", "bench-*", "test.ping", "--out", "json", "--static", "-t", str(timeout))
    try:
        return {mid for mid, ok in json.loads(done.stdout or "{}").items() if ok is True}
    except json.JSONDecodeError:
        return set()


def wait_answering(timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    seen: set[str] = set()
    while time.monotonic() < deadline:
        seen = answering()
        if seen >= set(IDS):
            return
        time.sleep(2)
    raise RuntimeError(f"only {len(seen)} of {COUNT} bench minions answered within {timeout:.0f} s: "
                       f"missing {sorted(set(IDS) - seen)}")


def _pid(minion_id: str) -> int | None:
    try:
        return int((BENCH_RUN / f"{minion_id}.pid").read_text().strip())
    except (OSError, ValueError):
        return None


def _leftovers() -> list[int]:
    """Pids of processes started from a bench minion's config dir (our own minions, nothing else)."""
    import psutil

    marker = str(BENCH_RUN / "salt") + "/"
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if marker in cmdline and "salt-minion" in cmdline:
            found.append(proc.info["pid"])
    return found


def stop_minions() -> None:
    """SIGTERM every bench minion by pid file, wait, SIGKILL what is left; remove their master keys."""
    for minion_id in IDS:
        pid = _pid(minion_id)
        if pid:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + 30
    while _leftovers() and time.monotonic() < deadline:
        time.sleep(0.5)
    for pid in _leftovers():
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for minion_id in IDS:
        (MASTER_ACCEPTED / minion_id).unlink(missing_ok=True)
        (BENCH_RUN / f"{minion_id}.pid").unlink(missing_ok=True)
    time.sleep(0.5)
    left = _leftovers()
    if left:
        raise RuntimeError(f"bench minions still running after SIGKILL: pids {left}")


def ping_seconds() -> float:
    started = time.perf_counter()
    seen = answering(timeout=60)
    elapsed = time.perf_counter() - started
    if seen != set(IDS):
        raise RuntimeError(f"test.ping: {len(seen)} of {COUNT} answered")
    return elapsed


def run(quick: bool = False) -> list[Figure]:
    import httpx

    env = stack_env()
    suite = str(SUITES / "trivial")
    rounds = 1 if quick else ROUNDS
    stop_minions()  # a previous run that died half-way must not leave minions or keys behind
    try:
        started = time.monotonic()
        prepare_minions()
        wait_answering()
        say(f"fanout: {COUNT} bench minions answering after {time.monotonic() - started:.0f} s; syncing modules")
        sync = salt_cli("salt", "bench-*", "saltutil.sync_all", "--out", "json", "--static", "-t", "180")
        if sync.returncode != 0:
            raise RuntimeError(f"saltutil.sync_all on the bench minions failed: {sync.stdout[-800:]} {sync.stderr[-800:]}")
        ours, floors, delivered, exits, pytest_seconds = [], [], [], [], []
        with StackToken() as token, httpx.Client(base_url=env["DISTMON_DASHBOARD_URL"],
                                                 headers={"Authorization": f"Bearer {token}"}, timeout=30) as client:
            distmon_run_until_visible(client, suite, IDS, target="bench-*", tgt_type="glob")  # warm-up
            ping_seconds()
            for index in range(rounds):
                pair = []
                for which in (("distmon", "ping") if index % 2 == 0 else ("ping", "distmon")):
                    if which == "distmon":
                        seconds, jid, seen, cli_exit = distmon_run_until_visible(
                            client, suite, IDS, timeout=180, target="bench-*", tgt_type="glob")
                        ours.append(seconds)
                        delivered.append(seen)
                        exits.append(cli_exit)
                        durations = sorted(r["duration"] or 0.0 for r in runs_for_jid(client, jid))
                        pytest_seconds.append(median(durations) if durations else None)
                        pair.append(f"distmon.run {seconds:.2f} s (CLI exit {cli_exit:.2f} s; jid {jid}, {seen} runs; "
                                    f"pytest wall time on each minion: median {pytest_seconds[-1]:.2f} s)")
                    else:
                        floors.append(ping_seconds())
                        pair.append(f"test.ping {floors[-1]:.2f} s")
                say(f"fanout round {index + 1}: " + ", ".join(pair))
    finally:
        stop_minions()
        say("fanout: bench minions stopped, their keys removed from the master")
    note = (f"`salt-run distmon.run` of bench/suites/trivial on {COUNT} extra minions until {COUNT} runs are in "
            f"/api/runs vs `salt 'bench-*' test.ping`; the median-ratio pair of {rounds} alternating pairs")
    value, floor = median_pair(ours, floors)
    return [
        Figure("fanout_20", value, "s", floor, "-", note=note,
               extra={"distmon_seconds": ours, "distmon_cli_exit_seconds": exits, "ping_seconds": floors,
                      "pytest_median_seconds_per_minion": pytest_seconds}),
        Figure("fanout_20_delivered", float(min(delivered)), "runs", float(COUNT), "==20",
               note=f"fewest runs visible in /api/runs for one fan-out job (of {len(delivered)}); floor: minions targeted",
               extra={"delivered": delivered}),
    ]

