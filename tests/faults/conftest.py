"""The fault suite's harness: its own storage host, minions and dashboard processes, and the table.

Everything destructive happens to parts started here, never to the shared session fixtures
of tests/conftest.py (``storage_host``, ``web-1``/``web-2``):

- ``fault_host``: an sshd storage host of this suite (``make_storage_host``); cases that stop it
  or kill its sessions start it again before they end.
- ``fault_minions``: ``fault-1`` and ``fault-2``, real minions of the shared ``salt_master``
  whose distmon returner points at ``fault_host``; stopped and their keys deleted when this
  package's tests end (fixtures here are package-scoped), so later suites' ``salt '*'`` never
  sees them.
- ``fault_dashboard``: a :class:`~tests.faults.helpers.DashboardProcess` (uvicorn subprocess)
  reading ``fault_host``'s inbox, signatures required, keys from the master's ``pki/minions``;
  ``own_dashboards`` starts more, each over its own database.
- ``fault_table``: ``fault_table.record(case, expected, seen, duplicates, detail)``; the rows are
  printed as the closing table of the run (``make test-faults``), with the test's real outcome
  in the ``passed`` column; a fault test that recorded nothing still gets a row.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import make_storage_host, start_minion
from tests.faults.helpers import FAULT_MINIONS, DashboardProcess

# -- the closing table ------------------------------------------------------------------------------


@dataclass
class FaultRow:
    nodeid: str
    case: str
    expected: object
    seen: object
    duplicates: object
    detail: str = ""


_ROWS: dict[str, FaultRow] = {}
_FAULT_TESTS: list[str] = []


class FaultTable:
    def __init__(self, nodeid: str):
        self.nodeid = nodeid

    def record(self, case: str, expected, seen, duplicates, detail: str = "") -> None:
        """Record this test's figures (call before asserting, so a failing case still shows them)."""
        _ROWS[self.nodeid] = FaultRow(self.nodeid, case, expected, seen, duplicates, detail)


@pytest.fixture
def fault_table(request) -> FaultTable:
    return FaultTable(request.node.nodeid)


def pytest_collection_modifyitems(config, items):
    _FAULT_TESTS[:] = [item.nodeid for item in items if item.get_closest_marker("faults")]


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    outcomes: dict[str, str] = {}
    for key in ("passed", "failed", "error", "skipped", "xfailed", "xpassed"):
        for report in terminalreporter.stats.get(key, []):
            nodeid = getattr(report, "nodeid", None)
            if nodeid is None:
                continue
            word = {"passed": "yes", "skipped": "skipped"}.get(key, "NO" if key in ("failed", "error") else key)
            if report.when == "call" or word in ("NO", "skipped") or nodeid not in outcomes:
                if outcomes.get(nodeid) != "NO":
                    outcomes[nodeid] = word
    ran = [nodeid for nodeid in _FAULT_TESTS if nodeid in outcomes]
    if not ran:
        return
    rows = []
    for nodeid in ran:
        module = nodeid.split("::", 1)[0].rsplit("/", 1)[-1].removesuffix(".py")
        name = f"{module}::{nodeid.rsplit('::', 1)[-1]}"
        why = "stopped before recording its figures" if "tests/faults/" in nodeid else "another suite's fault test"
        row = _ROWS.get(nodeid) or FaultRow(nodeid, name, "-", "-", "-", why)
        rows.append((row.case, str(row.expected), str(row.seen), str(row.duplicates), outcomes[nodeid], row.detail))
    header = ("case", "expected", "seen", "duplicates", "passed", "detail")
    widths = [max(len(header[i]), *(len(r[i]) for r in rows)) for i in range(5)]
    terminalreporter.section("distmon fault suite")
    line = "  ".join(h.ljust(w) for h, w in zip(header[:5], widths, strict=True)) + "  " + header[5]
    terminalreporter.write_line(line)
    terminalreporter.write_line("-" * min(len(line) + 40, 160))
    for row in rows:
        terminalreporter.write_line("  ".join(c.ljust(w) for c, w in zip(row[:5], widths, strict=True)) + "  " + row[5])


# -- fixtures -------------------------------------------------------------------------------------------


@pytest.fixture(scope="package")
def faults_root(harness_root) -> Path:
    # Under the harness root (root-owned, not group/world writable): sshd chroots need that.
    root = harness_root / "faults"
    root.mkdir(exist_ok=True)
    root.chmod(0o755)
    return root


@pytest.fixture(scope="package")
def fault_host(faults_root):
    host = make_storage_host(faults_root / "host")
    yield host
    host.stop()
    host.kill_sessions()


@pytest.fixture(scope="package")
def fault_minions(salt_master, fault_host):
    """fault-1 and fault-2: real minions of the shared master, returning to ``fault_host``."""
    factories = [start_minion(salt_master, name, fault_host) for name in FAULT_MINIONS]
    try:
        with contextlib.ExitStack() as stack:
            for factory in factories:
                stack.enter_context(factory.started())
            ret = salt_master.salt_cli(timeout=120).run("saltutil.sync_all", "-L",
                                                       minion_tgt=",".join(FAULT_MINIONS))
            assert ret.returncode == 0, ret
            yield factories
    finally:
        # Stopped minions with accepted keys would be "down" targets of every later `salt '*'`
        # in this session (other suites share this master): remove their keys too.
        key_cli = salt_master.salt_key_cli()
        for name in FAULT_MINIONS:
            key_cli.run("-d", name, "-y")


@pytest.fixture(scope="package")
def fault_cli(salt_master):
    return salt_master.salt_cli(timeout=180)


@pytest.fixture(scope="package")
def pubkeys_dir(salt_master) -> Path:
    return Path(salt_master.config["pki_dir"]) / "minions"


@pytest.fixture(scope="package")
def fault_dashboard(faults_root, fault_host, pubkeys_dir):
    """The dashboard process over ``fault_host``'s inbox; signatures required."""
    dashboard = DashboardProcess(faults_root / "dashboard", fault_host.inbox, pubkeys_dir=pubkeys_dir,
                                 require_signature=True)
    dashboard.start()
    yield dashboard
    dashboard.stop()


@pytest.fixture
def own_dashboards(tmp_path):
    """Start extra dashboard processes: ``own_dashboards(name, inbox, **kwargs)``; all stopped at the end."""
    started: list[DashboardProcess] = []

    def factory(name: str, inbox: Path, **kwargs) -> DashboardProcess:
        dashboard = DashboardProcess(tmp_path / name, inbox, **kwargs)
        started.append(dashboard)
        return dashboard

    yield factory
    for dashboard in started:
        dashboard.stop()
