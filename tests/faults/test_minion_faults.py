"""Faults between the minions and the storage host, end to end: minion -> spool -> sshd -> inbox -> dashboard.

Every case ends by counting runs in the real dashboard process's database: runs expected vs
runs seen, and zero duplicates. The storage hosts here are this suite's own; the shared
session host and minions are never touched.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import threading
import time
import uuid
from pathlib import Path

import psutil
import pytest

from tests.conftest import make_storage_host
from tests.faults.helpers import (
    DATA,
    FAULT_MINIONS,
    NO_AUTOLOAD,
    final_files,
    seed_spool,
    signed_document,
    unique_jids,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.faults]

SAMPLE = "salt://sample_tests/test_passing.py"
ENV_ARG = f"env={json.dumps(NO_AUTOLOAD)}"


def spool_path(minion, name: str) -> Path:
    """A spool directory of this case on the minion (the minion runs on this machine)."""
    return Path(minion.config["cachedir"]) / "distmon" / f"{name}-{uuid.uuid4().hex[:8]}"


def spooled_jids(spool_dir: Path) -> list[str]:
    if not spool_dir.exists():
        return []
    return sorted(p.name[: -len(".json")] for p in spool_dir.iterdir()
                  if p.name.endswith(".json") and not p.name.startswith("."))


def flush(fault_cli, minion_id: str, **options) -> dict:
    ret = fault_cli.run("distmon.flush", *[f"{k}={v}" for k, v in options.items()], minion_tgt=minion_id)
    assert isinstance(ret.data, dict), f"distmon.flush on {minion_id} answered {ret}"
    return ret.data


# -- storage host down for a whole run ---------------------------------------------------------------------


def test_storage_host_down_for_a_whole_run(fault_cli, fault_minions, fault_host, fault_dashboard, fault_table):
    runs = 3
    targets = ",".join(FAULT_MINIONS)
    # The minions' configured spool (<cachedir>/distmon/spool): no other case of this suite uses it.
    spools = {m.id: Path(m.config["cachedir"]) / "distmon" / "spool" for m in fault_minions}
    assert all(spooled_jids(spool) == [] for spool in spools.values())
    tests_per_run: dict[str, int] = {}
    fault_host.stop()
    try:
        assert not fault_host.is_running()
        for _ in range(runs):
            # One job on every minion, each returning to the (down) storage host.
            ret = fault_cli.run("pytestrun.run", SAMPLE, ENV_ARG, "--return", "distmon",
                                "--return_kwargs", json.dumps({"deadline": 5}), "-L", minion_tgt=targets)
            assert ret.returncode == 0 and sorted(ret.data) == sorted(FAULT_MINIONS), ret
            tests_per_run = {m: len(result["tests"]) for m, result in ret.data.items()}

        # The returner runs after the job's return: wait until each result is spooled and has failed once.
        def all_waiting():
            return all(
                len(spooled_jids(spools[m])) == runs
                and all((spools[m] / f"{jid}.json.err").exists() for jid in spooled_jids(spools[m]))
                for m in FAULT_MINIONS
            )

        assert wait_for(all_waiting, 60, 0.2), {m: spooled_jids(spools[m]) for m in FAULT_MINIONS}
        errors = {json.loads((spools[m] / f"{j}.json.err").read_text())["last_error"]
                  for m in FAULT_MINIONS for j in spooled_jids(spools[m])}
        assert all("cannot reach" in e for e in errors), errors
        expected = {(m, j) for m in FAULT_MINIONS for j in spooled_jids(spools[m])}
        assert fault_dashboard.ledger(expected).seen == 0, "nothing can arrive while the host is down"
    finally:
        fault_host.start()

    flushed = fault_cli.run("distmon.flush", "-L", minion_tgt=targets)
    assert flushed.returncode == 0 and sorted(flushed.data) == sorted(FAULT_MINIONS), flushed
    delivered = {m: report["delivered"] for m, report in flushed.data.items()}
    ledger = fault_dashboard.wait_runs(expected, timeout=60)
    expected_results = sum(tests_per_run[m] for m, _ in expected)
    api_seen, api_repeats = fault_dashboard.api_listed(expected)
    duplicates = ledger.duplicates(expected_results) + api_repeats
    fault_table.record(f"storage host down for a whole run ({runs} jobs x {len(FAULT_MINIONS)} minions)",
                       len(expected), ledger.seen, duplicates,
                       f"spooled {len(expected)}, delivered {sum(map(len, delivered.values()))} by one flush; "
                       f"/api/runs lists {api_seen}")
    assert {(m, j) for m, jids in delivered.items() for j in jids} == expected, delivered
    assert ledger.seen == api_seen == len(expected) == len(FAULT_MINIONS) * runs
    assert duplicates == 0, ledger
    assert all(row["signed"] == 1 and row["status"] == "passed" for row in ledger.by_pair.values()), ledger.by_pair
    assert all(spooled_jids(spools[m]) == [] for m in FAULT_MINIONS)


# -- a blackholed storage host -------------------------------------------------------------------------------




def test_blackholed_host_returner_gives_up_minion_answers(fault_cli, fault_minions, fault_dashboard, blackhole,
                                                           fault_table):
    port, held = blackhole
    minion = fault_minions[0]
    deadline = 6
    margin = 15  # a loaded 2-core machine (load 40 seen here): the bound is the deadline plus scheduling slack
    spool_dir = spool_path(minion, "blackhole")
    kwargs = json.dumps({"port": port, "deadline": deadline, "spool_dir": str(spool_dir)})
    ret = fault_cli.run("pytestrun.run", SAMPLE, ENV_ARG, "--return", "distmon", "--return_kwargs", kwargs,
                        minion_tgt=minion.id)
    assert ret.returncode == 0, ret
    returned_at = time.monotonic()
    assert wait_for(lambda: held, 30, 0.05), "the returner never connected to the blackhole"
    (jid,) = wait_for(lambda: spooled_jids(spool_dir), 10, 0.05)
    error_file = spool_dir / f"{jid}.json.err"

    pings: list[tuple[bool, float]] = []

    def ping_until_given_up():
        while not error_file.exists() and time.monotonic() - returned_at < deadline + margin:
            started = time.monotonic()
            answer = fault_cli.run("test.ping", minion_tgt=minion.id)
            pings.append((answer.returncode == 0 and answer.data is True, time.monotonic() - started))

    pinger = threading.Thread(target=ping_until_given_up)
    pinger.start()
    gave_up = wait_for(error_file.exists, deadline + margin + 5, 0.05)
    gave_up_after = time.monotonic() - returned_at
    pinger.join()
    state = json.loads(error_file.read_text()) if gave_up else {}

    # Delivered once the minion's own (working) storage host is used.
    report = flush(fault_cli, minion.id, spool_dir=spool_dir)
    ledger = fault_dashboard.wait_runs({(minion.id, jid)}, timeout=60)
    fault_table.record("storage host blackholed", 1, ledger.seen, ledger.duplicates(len(ret.data["tests"])),
                       f"gave up after {gave_up_after:.1f} s (deadline {deadline} s); "
                       f"{sum(ok for ok, _ in pings)}/{len(pings)} pings answered meanwhile")
    assert gave_up, f"the returner did not give up within {deadline + margin} s"
    assert "deadline" in state["last_error"], state
    assert gave_up_after <= deadline + margin, gave_up_after
    assert len(pings) >= 1 and all(ok for ok, _ in pings), pings
    assert report["delivered"] == [jid], report
    assert ledger.seen == 1 and ledger.duplicates(len(ret.data["tests"])) == 0


# -- sshd sessions killed mid-transfer during a burst ------------------------------------------------------------


def test_sshd_killed_mid_transfer_during_a_burst(fault_cli, fault_minions, fault_host, fault_dashboard, fault_table):
    burst = 500
    tests_per_doc = 5
    minion = fault_minions[1]
    spool_dir = spool_path(minion, "burst")
    jids = unique_jids(burst)
    # ~16 KB documents, so an upload of the burst takes long enough to be cut in the middle.
    seed_spool(spool_dir, [signed_document(minion, jid, tests=tests_per_doc, pad=3000) for jid in jids])
    expected = {(minion.id, jid) for jid in jids}

    remote_dir = fault_host.inbox / minion.id
    stop = threading.Event()
    kills: list[int] = []  # sessions killed per strike; each strike hits while an upload is under way

    def partials() -> set[str]:
        try:
            return {name for name in os.listdir(remote_dir) if name.endswith(".part")}
        except FileNotFoundError:
            return set()

    def kill_sessions_mid_transfer():
        rng = random.Random(8)
        stale: set[str] = set()  # partial files of killed uploads stay behind; they are not a transfer
        while not stop.is_set():
            if not partials() - stale:
                time.sleep(0.002)
                continue
            # Some files go through, then the session dies in the middle of the next one.
            time.sleep(rng.uniform(0.05, 0.3))
            killed = fault_host.kill_sessions()
            if killed:
                kills.append(killed)
            time.sleep(0.05)
            stale |= partials()

    killer = threading.Thread(target=kill_sessions_mid_transfer, daemon=True)
    killer.start()
    interrupted = flushes = 0
    try:
        # Flush again and again while sessions die, until a few transfers were cut in the middle.
        while spooled_jids(spool_dir) and flushes < 20 and interrupted < 3:
            report = flush(fault_cli, minion.id, spool_dir=spool_dir, deadline=20)
            flushes += 1
            if report["waiting"] and report["delivered"]:
                interrupted += 1  # cut in the middle of the burst: some went, the rest waits
    finally:
        stop.set()
        killer.join()
    cut_flushes = flushes
    # No more faults: whatever waits is delivered by ordinary flushes.
    while spooled_jids(spool_dir) and flushes < cut_flushes + 10:
        flush(fault_cli, minion.id, spool_dir=spool_dir)
        flushes += 1

    ledger = fault_dashboard.wait_runs(expected, timeout=120)
    leftovers = [p.name for p in (fault_host.inbox / minion.id).iterdir() if p.name.endswith(".part")]
    quarantined = fault_dashboard.quarantined(minion.id)
    api_seen, api_repeats = fault_dashboard.api_listed(expected)
    duplicates = ledger.duplicates(burst * tests_per_doc) + api_repeats
    fault_table.record("sshd sessions killed mid-transfer, burst of 500", burst, ledger.seen, duplicates,
                       f"{len(kills)} kills, {interrupted} cut flushes of {flushes}; /api/runs lists {api_seen}; "
                       f"{len(leftovers)} .part left (never ingested), {len(quarantined)} quarantined")
    assert interrupted >= 1 and kills, f"no transfer was cut ({flushes} flushes, kills {kills}): the fault never hit"
    assert spooled_jids(spool_dir) == [], "results still spooled after the faults stopped"
    assert quarantined == {}, quarantined  # a partial file never reached the ingester
    assert ledger.seen == burst == api_seen, f"{burst - ledger.seen} results missing (API lists {api_seen})"
    assert duplicates == 0, ledger
    assert all(row["results"] == tests_per_doc and row["signed"] == 1 for row in ledger.by_pair.values())


# -- the inbox's disk is full ---------------------------------------------------------------------------------------


@pytest.fixture
def full_disk_host(faults_root):
    """A storage host whose inbox is a 1 MiB tmpfs (mounted at <host>/chroot/inbox, owned by the SFTP user)."""
    host = make_storage_host(faults_root / f"fullhost-{uuid.uuid4().hex[:6]}")
    owner = host.inbox.stat()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0755", "tmpfs", str(host.inbox)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        host.stop()
        pytest.skip(f"cannot mount a small tmpfs for the inbox (needs root and mount rights): {mounted.stderr.strip()}")
    try:
        os.chown(host.inbox, owner.st_uid, owner.st_gid)
        yield host
    finally:
        host.stop()
        host.kill_sessions()
        if subprocess.run(["umount", str(host.inbox)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(host.inbox)], capture_output=True)


def test_inbox_disk_full(fault_cli, fault_minions, full_disk_host, own_dashboards, pubkeys_dir, fault_table):
    minion = fault_minions[0]
    host = full_disk_host
    dashboard = own_dashboards("diskfull", host.inbox, pubkeys_dir=pubkeys_dir, require_signature=True)
    dashboard.start()
    count, tests_per_doc = 5, 40
    jids = unique_jids(count)
    docs = [signed_document(minion, jid, tests=tests_per_doc, pad=1000) for jid in jids]  # ~50 KB each
    spool_dir = spool_path(minion, "diskfull")
    seed_spool(spool_dir, docs)
    expected = {(minion.id, jid) for jid in jids}
    # Fill the disk but for a few KB (a dot-name: the ingester leaves it alone).
    filler = host.inbox / ".filler"
    free = os.statvfs(host.inbox).f_bavail * os.statvfs(host.inbox).f_frsize
    filler.write_bytes(b"\0" * max(free - 8192, 0))
    options = {**host.returner_config(), "spool_dir": spool_dir, "deadline": 15}

    full = flush(fault_cli, minion.id, **options)
    still_spooled = spooled_jids(spool_dir)
    corrupt = []
    for path in final_files(host.inbox):
        try:
            json.loads(path.read_text())
        except ValueError:
            corrupt.append(path.name)
    assert dashboard.alive()
    stored_while_full = dashboard.ledger(expected).seen

    filler.unlink()
    room = flush(fault_cli, minion.id, **options)
    ledger = dashboard.wait_runs(expected, timeout=60)
    api_seen, api_repeats = dashboard.api_listed(expected)
    duplicates = ledger.duplicates(count * tests_per_doc) + api_repeats
    reasons = sorted({item["reason"] for item in full["waiting"]})
    fault_table.record("inbox disk full, then room again", count, ledger.seen, duplicates,
                       f"while full: {len(full['delivered'])} delivered ({'; '.join(reasons)[:60]}), "
                       f"{len(still_spooled)} stayed spooled, "
                       f"{len(corrupt)} corrupt; after: {len(room['delivered'])} delivered")
    assert full["delivered"] == [] and len(full["waiting"]) == count, full
    assert all(reason.startswith("upload failed") for reason in reasons), reasons
    assert still_spooled == sorted(jids)
    assert corrupt == [] and stored_while_full == 0
    assert dashboard.quarantined(minion.id) == {}
    assert sorted(room["delivered"]) == sorted(jids) and room["waiting"] == [], room
    assert ledger.seen == count == api_seen and duplicates == 0, (ledger, api_seen)


# -- tests that hang, fork and kill their own group ------------------------------------------------------------------


def marked_processes(marker: str) -> list[str]:
    """Processes that carry ``marker`` in their argv or environment (a run's leftovers)."""
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            if marker in (proc.info["cmdline"] or []) or proc.environ().get("DISTMON_TEST_MARKER") == marker:
                found.append(f"{proc.pid}: {' '.join(proc.info['cmdline'] or [])}")
        except (psutil.Error, OSError):
            continue
    return found


def run_hanging_suite(fault_cli, minion, dashboard, name: str, spool_dir: Path) -> dict:
    """Run tests/faults/data/<name> with timeout=5 and the distmon returner; what came back, stored, survived."""
    marker = f"distmon-fault-{name}-{uuid.uuid4().hex}"
    env = json.dumps({**NO_AUTOLOAD, "DISTMON_TEST_MARKER": marker})
    ret = fault_cli.run("pytestrun.run", str(DATA / name), "timeout=5", f"env={env}", "--return", "distmon",
                        "--return_kwargs", json.dumps({"spool_dir": str(spool_dir)}), minion_tgt=minion.id)
    # pytestrun cleans up before it returns; a short poll allows for the kernel's reaping.
    wait_for(lambda: not marked_processes(marker), 3, 0.2)
    survivors = marked_processes(marker)
    paths = json.dumps([str(DATA / name)])

    def stored():
        with dashboard.read_only() as conn:
            return conn.execute(
                "SELECT r.jid, r.status, r.message FROM runs r JOIN minions m ON m.id = r.minion_id "
                "WHERE m.name = ? AND r.paths = ?", (minion.id, paths)).fetchall()

    rows = wait_for(stored, 60, 0.2)
    return {"ret": ret.data, "rows": rows, "survivors": survivors, "marker": marker}


def kill_marked(marker: str) -> None:
    """End what a run left behind (the suite must not leave orphans either)."""
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if marker in (proc.info["cmdline"] or []) or proc.environ().get("DISTMON_TEST_MARKER") == marker:
                proc.kill()
        except (psutil.Error, OSError):
            continue


def test_hanging_and_forking_tests_time_out_without_orphans(fault_cli, fault_minions, fault_dashboard, fault_table):
    minion = fault_minions[0]
    spool_dir = spool_path(minion, "hang")
    outcomes = {name: run_hanging_suite(fault_cli, minion, fault_dashboard, name, spool_dir)
                for name in ("hang", "fork_hang")}
    for outcome in outcomes.values():
        kill_marked(outcome["marker"])
    statuses = {name: [row[1] for row in o["rows"]] for name, o in outcomes.items()}
    orphans = sum(len(o["survivors"]) for o in outcomes.values())
    fault_table.record("a test hangs; a test forks a child that hangs", 2, sum(1 for s in statuses.values() if s),
                       sum(max(0, len(s) - 1) for s in statuses.values()),
                       "stored " + ", ".join(f"{n}={'/'.join(s) or '-'}" for n, s in statuses.items())
                       + f"; orphans {orphans}")
    for name, outcome in outcomes.items():
        ret = outcome["ret"]
        assert isinstance(ret, dict) and ret.get("status") == "timeout", (name, ret)
        assert ret["counts"]["passed"] == 1 and "within 5 s" in ret["message"], (name, ret)
        assert statuses[name] == ["timeout"], (name, outcome["rows"])
        assert outcome["survivors"] == [], f"{name}: processes outlived their run: {outcome['survivors']}"
    assert spooled_jids(spool_dir) == []


def test_test_killing_its_process_group(fault_cli, fault_minions, fault_dashboard, fault_table):
    minion = fault_minions[0]
    spool_dir = spool_path(minion, "killpg")
    outcome = run_hanging_suite(fault_cli, minion, fault_dashboard, "killpg", spool_dir)
    kill_marked(outcome["marker"])
    ret, statuses = outcome["ret"], [row[1] for row in outcome["rows"]]
    fault_table.record("a test kills its own process group", 1, len(statuses), max(0, len(statuses) - 1),
                       f"stored {'/'.join(statuses) or '-'}; orphans {len(outcome['survivors'])}")
    assert isinstance(ret, dict) and ret.get("status") == "error" and "SIGKILL" in ret["message"], ret
    assert ret["counts"]["passed"] == 1, ret["counts"]
    assert statuses == ["error"], outcome["rows"]
    assert spooled_jids(spool_dir) == []
    # pytest died of a signal with no timeout firing: the escaped child must still be gone.
    assert outcome["survivors"] == [], f"processes outlived their run: {outcome['survivors']}"
