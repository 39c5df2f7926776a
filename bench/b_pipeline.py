"""pipeline_overhead: the whole distmon pipeline vs Salt running pytest bare, on the stack's minions.

The value: ``salt-run distmon.run path=<repo>/sample_tests tgt=web-1,web-2,db-1 tgt_type=list``
(pytestrun on each minion, the distmon returner signing and uploading over SFTP, the job
manifest, the ingester, SQLite) from the CLI's start until ``/api/runs?jid=<jid>`` of the
stack's dashboard lists every minion's run. The floor: ``salt -L web-1,web-2,db-1 cmd.run
'<python> -m pytest <repo>/sample_tests'`` on the same minions until the CLI exits (every
minion answered). Both are CLI processes, so both pay the CLIs' start-up. One warm-up of each,
then ``ROUNDS`` alternating pairs; the pair with the median ratio is reported. Target: ratio <= 1.15.
"""

from __future__ import annotations

import json
import re
import subprocess
import time

from bench.common import (
    REPO,
    RUN,
    VENV_BIN,
    VENV_PY,
    Figure,
    StackToken,
    median_pair,
    runs_for_jid,
    salt_cli,
    say,
    stack_env,
)

ROUNDS = 5
STACK_MINIONS = ("web-1", "web-2", "db-1")
JID_LINE = re.compile(r"^jid (\d+):")


def distmon_run_until_visible(client, path: str, minions: tuple[str, ...], timeout: float = 300,
                              target: str | None = None, tgt_type: str = "list") -> tuple[float, str, int, float]:
    """``salt-run distmon.run`` until /api/runs lists every minion's run: (s, jid, runs seen, s to CLI exit)."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        [str(VENV_BIN / "salt-run"), "-c", str(RUN / "salt" / "master"), "distmon.run", f"path={path}",
         f"tgt={target or ','.join(minions)}", f"tgt_type={tgt_type}"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
    )
    jid = None
    output = []
    for line in proc.stdout:
        output.append(line)
        match = JID_LINE.match(line.strip())
        if match and jid is None:
            jid = match.group(1)
    proc.wait(timeout=timeout)
    cli_exit = time.perf_counter() - started
    if jid is None:
        raise RuntimeError("salt-run distmon.run printed no jid:\n" + "".join(output)[-2000:])
    deadline = time.perf_counter() + timeout
    while True:
        seen = len(runs_for_jid(client, jid))
        if seen >= len(minions):
            return time.perf_counter() - started, jid, seen, cli_exit
        if time.perf_counter() > deadline:
            return float("nan"), jid, seen, cli_exit
        time.sleep(0.02)


def salt_cmd_pytest(path: str, minions: tuple[str, ...]) -> float:
    """Seconds for ``salt -L ... cmd.run '<python> -m pytest <path>'`` until every minion answered."""
    started = time.perf_counter()
    done = salt_cli("salt", "-L", ",".join(minions), "cmd.run", f"{VENV_PY} -m pytest {path}", f"cwd={path}",
                    "--out", "json", "--static", "-t", "300")
    elapsed = time.perf_counter() - started
    try:
        answered = json.loads(done.stdout or "{}")
    except json.JSONDecodeError:
        answered = {}
    missing = [m for m in minions if not isinstance(answered.get(m), str) or "passed" not in answered[m]]
    if missing:
        raise RuntimeError(f"cmd.run pytest: no pytest summary from {missing}: {done.stdout[-1000:]} {done.stderr[-500:]}")
    return elapsed


def run(quick: bool = False) -> list[Figure]:
    import httpx

    env = stack_env()
    suite = str(REPO / "sample_tests")
    rounds = 1 if quick else ROUNDS
    ours, floors, delivered, exits = [], [], [], []
    with StackToken() as token, httpx.Client(base_url=env["DISTMON_DASHBOARD_URL"],
                                             headers={"Authorization": f"Bearer {token}"}, timeout=30) as client:
        distmon_run_until_visible(client, suite, STACK_MINIONS)  # warm-up (minion job processes, caches)
        salt_cmd_pytest(suite, STACK_MINIONS)
        for index in range(rounds):
            pair = []
            for which in (("distmon", "salt") if index % 2 == 0 else ("salt", "distmon")):
                if which == "distmon":
                    seconds, jid, seen, cli_exit = distmon_run_until_visible(client, suite, STACK_MINIONS)
                    ours.append(seconds)
                    delivered.append(seen)
                    exits.append(cli_exit)
                    pair.append(f"distmon.run {seconds:.2f} s (CLI exit at {cli_exit:.2f} s; jid {jid}, "
                                f"{seen} runs visible)")
                else:
                    floors.append(salt_cmd_pytest(suite, STACK_MINIONS))
                    pair.append(f"cmd.run pytest {floors[-1]:.2f} s")
            say(f"pipeline round {index + 1}: " + ", ".join(pair))
    if min(delivered) < len(STACK_MINIONS):
        raise RuntimeError(f"some results never reached /api/runs: {delivered} of {len(STACK_MINIONS)}")
    value, floor = median_pair(ours, floors)
    return [Figure(
        "pipeline_overhead", value, "s", floor, "<=1.15x",
        note="`salt-run distmon.run` of sample_tests on web-1, web-2, db-1 until all 3 runs are in /api/runs "
             f"vs `salt -L ... cmd.run 'python -m pytest sample_tests'`; the median-ratio pair of {rounds} alternating pairs",
        extra={"distmon_seconds": ours, "distmon_cli_exit_seconds": exits, "cmd_run_seconds": floors},
    )]
