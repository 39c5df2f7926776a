"""A run with a targeted minion that is down, and the master restarted in the middle of it.

The shared session master must never be restarted, so this case starts a master of its own
(pytest-salt-factories, configured like tests/conftest.py's) with two minions: ``fault-3``
runs the tests, ``fault-4`` has an accepted key but is stopped. They return to a storage
host of their own, read by a dashboard process whose keys are this master's ``pki/minions``.

Expected: the job page names fault-4 as targeted but never returned, and fault-3's result,
which reached the storage host while the master was restarting, shows.
"""

from __future__ import annotations

import json
import re
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.conftest import REPO_ROOT, make_storage_host, start_minion, sync_minion
from tests.faults.helpers import DATA, DashboardProcess, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.faults]


@dataclass
class DownMinion:
    id: str


def accept_down_minion(master, minion_id: str) -> DownMinion:
    """Put a public key for ``minion_id`` among the master's accepted keys, as `salt-key -a` leaves it."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    accepted = Path(master.config["pki_dir"]) / "minions" / minion_id
    accepted.write_bytes(pem)
    return DownMinion(minion_id)


@pytest.fixture(scope="module")
def own_master_stack(salt_factories, file_roots_dir, faults_root):
    host = make_storage_host(faults_root / f"masterhost-{uuid.uuid4().hex[:6]}")
    overrides = {
        # The runner writes the job manifest to this host, with the returner's option names.
        **{f"distmon.{key}": value for key, value in host.returner_config().items()},
        # A loaded machine can take seconds to log in: the manifest must not be skipped for that.
        "distmon.manifest_deadline": 30,
        "interface": "127.0.0.1",
        "file_roots": {"base": [str(REPO_ROOT / "states"), str(file_roots_dir)]},
        "fileserver_followsymlinks": True,
    }
    master = salt_factories.salt_master_daemon("fault-master", overrides=overrides)
    dashboard = None
    try:
        with master.started():
            assert master.salt_run_cli(timeout=120).run("saltutil.sync_all").returncode == 0
            up = start_minion(master, "fault-3", host)
            # fault-4: a minion whose key the master accepted and which is down (never started here:
            # an accepted key is all the master knows of a minion that is off).
            down = accept_down_minion(master, "fault-4")
            with up.started():
                sync_minion(master, up)
                dashboard = DashboardProcess(faults_root / f"masterdash-{uuid.uuid4().hex[:6]}", host.inbox,
                                             pubkeys_dir=Path(master.config["pki_dir"]) / "minions",
                                             require_signature=True)
                dashboard.start()
                yield master, up, down, host, dashboard
    finally:
        if dashboard is not None:
            dashboard.stop()
        host.stop()
        host.kill_sessions()


def test_master_restarted_during_a_run_with_a_targeted_minion_down(own_master_stack, fault_table):
    master, up, down, host, dashboard = own_master_stack
    run_cli = master.salt_run_cli(timeout=180)
    argv = run_cli.cmdline("distmon.run", f"path={DATA / 'slow'}", f"tgt={up.id},{down.id}", "tgt_type=list",
                           "timeout=5", "gather_job_timeout=5", "max_wait=60")
    driver = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT)
    try:
        def manifest():
            try:
                with dashboard.read_only() as conn:
                    return conn.execute("SELECT jid, targeted FROM jobs WHERE targeted LIKE ?",
                                        (f'%"{down.id}"%',)).fetchone()
            except Exception:  # noqa: BLE001 - the database may still be opening
                return None

        found = wait_for(manifest, 60, 0.1)
        assert found, f"no job manifest reached the storage host; salt-run said: {driver.poll()}"
        jid, targeted = found
        assert sorted(json.loads(targeted)) == [up.id, down.id]
        # The tests on fault-3 take 8 s: restart the master while they run.
        restarted_while_running = driver.poll() is None and dashboard.ledger({(up.id, jid)}).seen == 0
        with master.stopped():
            assert not master.is_running()
        assert master.is_running()
        ledger = dashboard.wait_runs({(up.id, jid)}, timeout=120)
        with dashboard.client() as client:
            api = client.get(f"/api/jobs/{jid}")
            page = client.get(f"/jobs/{jid}")
    finally:
        if driver.poll() is None:
            driver.kill()
        driver.communicate(timeout=30)
    job = api.json() if api.status_code == 200 else {}
    named = re.search(r"Targeted but never returned[^:]*:(.*?)</p>", page.text, re.S)
    fault_table.record("targeted minion down + master restarted mid-run", "1 run, 1 missing",
                       f"{ledger.seen} run, missing {job.get('missing')}", ledger.duplicates(),
                       f"restart while the tests ran: {restarted_while_running}; salt-run exit {driver.returncode}")
    assert restarted_while_running, "the run had finished before the master restart: the fault missed"
    assert ledger.seen == 1 and ledger.duplicates() == 0, ledger
    assert api.status_code == 200 and job["missing"] == [down.id], job
    assert [run["minion"] for run in job["runs"]] == [up.id], job["runs"]
    assert page.status_code == 200 and named and down.id in named.group(1), page.text[:2000]
    assert ledger.by_pair[(up.id, jid)]["status"] == "passed" and ledger.by_pair[(up.id, jid)]["signed"] == 1
