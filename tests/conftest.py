"""The shared harness: a real salt-master, real minions and a real sshd storage host.

Everything here is session-scoped so the suite starts each daemon once:

- ``storage_host``: OpenSSH sshd on a loopback port, SFTP only, into an inbox
  (tools/storage_host.py, the same code ``make up`` uses).
- ``salt_master``: pytest-salt-factories master whose file_roots serve this repo's
  ``states/``, ``_modules/``, ``_runners/``, ``_returners/`` and ``sample_tests/``,
  as a real master would; the master syncs its runners, the shared ``_utils``
  library and the outputter with ``salt-run saltutil.sync_all``.
- ``salt_minion`` (``web-1``) and ``salt_minion_2`` (``web-2``): real minions,
  modules synced with ``saltutil.sync_all``, the distmon returner pointed at
  ``storage_host`` with its pinned known_hosts.

Tests that break daemons on purpose (faults) must start their own, with
``start_minion()`` / ``make_storage_host()`` below, and never touch the shared ones.

``--db-backend=postgres`` runs the tests on a real PostgreSQL server (tests/db_backend.py);
``@pytest.mark.sqlite_only`` tests are skipped there.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest
import salt._logging.impl

from tests import db_backend
from tools.storage_host import StorageHost, free_port, remove_external_chroots

REPO_ROOT = Path(__file__).resolve().parent.parent


def _hand_salts_early_log_records_to_pytest() -> None:
    """Remove Salt's temporary log handler from this process; pass what it holds to pytest's handlers.

    Importing ``salt`` into a process whose root logger has no handler installs a
    ``DeferredStreamHandler`` on ``sys.stderr`` as it is at that moment (pytest's
    capture stream): it keeps every warning of the whole session (up to 10,000)
    and writes them at interpreter exit, when that stream is closed, so each one
    became a "--- Logging error --- ValueError: I/O operation on closed file"
    traceback after the test summary. Salt's own CLIs drop it once logging is
    configured (``shutdown_temp_handler``); a test process must do the same. The
    records are not lost: from here on they reach pytest's handlers, which show
    them with the test that logged them.
    """
    salt._logging.impl.shutdown_temp_handler()


_hand_salts_early_log_records_to_pytest()

# sshd's ChrootDirectory needs root-owned, non-world-writable parents: /tmp is not.
HARNESS_ROOT = REPO_ROOT / ".run" / "pytest"
SYNCED_DIRS = ("_modules", "_runners", "_returners", "_utils", "_output", "sample_tests")


def pytest_addoption(parser):
    parser.addoption("--db-backend", choices=db_backend.BACKENDS, default=None,
                     help="database the dashboard's tests use (default: $DISTMON_TEST_DB or sqlite)")


def pytest_configure(config):
    _hand_salts_early_log_records_to_pytest()  # again, in case a plugin imported salt after this module
    chosen = config.getoption("--db-backend")
    if chosen:
        os.environ[db_backend.BACKEND_ENV] = chosen


def pytest_collection_modifyitems(config, items):
    if not db_backend.on_postgres():
        return
    skip = pytest.mark.skip(reason="about SQLite itself (sqlite_only)")
    for item in items:
        if item.get_closest_marker("sqlite_only"):
            item.add_marker(skip)


def pytest_report_header(config):
    return f"distmon database backend: {db_backend.backend()}"


def pytest_unconfigure(config):
    db_backend.shutdown()


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def harness_root():
    root = HARNESS_ROOT / uuid.uuid4().hex[:8]
    root.mkdir(parents=True)
    root.chmod(0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)
    remove_external_chroots(root)


def wait_for(predicate, timeout: float, interval: float = 0.25):
    """Poll ``predicate`` until it returns something truthy or ``timeout`` s pass; return its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return predicate()


def make_storage_host(root: Path) -> StorageHost:
    """Prepare and start an sshd storage host under ``root`` on a free port."""
    host = StorageHost(root=root, port=free_port())
    host.prepare()
    host.start()
    return host


@pytest.fixture(scope="session")
def storage_host(harness_root):
    host = make_storage_host(harness_root / "host")
    yield host
    host.stop()


@pytest.fixture
def blackhole():
    """A loopback port that accepts TCP connections and never sends a byte: (port, held sockets)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.settimeout(0.2)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield listener.getsockname()[1], held
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    listener.close()


@pytest.fixture(scope="session")
def file_roots_dir(harness_root) -> Path:
    """A file_roots entry serving the repo's loader modules and sample tests (symlinks).

    Symlinks instead of the repo root itself, so the master never serves .run/ (keys) or .git/.
    """
    srv = harness_root / "srv"
    srv.mkdir()
    for name in SYNCED_DIRS:
        (srv / name).symlink_to(REPO_ROOT / name, target_is_directory=True)
    return srv


@pytest.fixture(scope="session")
def salt_factories_config():
    # Each session's daemons under their own short directory (unix socket paths stay well under
    # 108 bytes): two suites on one machine (CI beside a developer's run) never share /tmp/web-1.
    root = Path(tempfile.mkdtemp(prefix="dm-", dir="/tmp"))
    yield {"start_timeout": 120, "inject_sitecustomize": False, "root_dir": root}
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def salt_master(salt_factories, file_roots_dir, storage_host):
    overrides = {
        # The runner reaches the storage host with the same options as the returner.
        **{f"distmon.{key}": value for key, value in storage_host.returner_config().items()},
        "interface": "127.0.0.1",
        "file_roots": {"base": [str(REPO_ROOT / "states"), str(file_roots_dir)]},
        "fileserver_followsymlinks": True,
        "log_level_logfile": "info",
        # The shipped re-run reactor (docs/events.md). It acts only on runs whose event asks for a
        # re-run: the session's minions say no by default (minion_overrides), a test asks with
        # pytestrun.run rerun_new_failures=True, so no other test sees extra runs.
        "reactor": [{"distmon/run/*": ["salt://reactor/distmon_rerun.sls"]}],
    }
    master = salt_factories.salt_master_daemon("distmon-master", overrides=overrides)
    with master.started():
        ret = master.salt_run_cli(timeout=120).run("saltutil.sync_all")
        assert ret.returncode == 0, ret
        yield master


def minion_overrides(host: StorageHost | None, **extra) -> dict:
    """Minion config that points the distmon returner at ``host``."""
    # No reactor re-runs unless a run asks (see salt_master).
    overrides = {"log_level_logfile": "info", "pytestrun.rerun_new_failures": False}
    if host is not None:
        for key, value in host.returner_config().items():
            overrides[f"distmon.{key}"] = value
    overrides.update(extra)
    return overrides


def start_minion(master, minion_id: str, host: StorageHost | None, **extra):
    """A started-and-synced minion factory; use as a context manager's target."""
    minion = master.salt_minion_daemon(minion_id, overrides=minion_overrides(host, **extra))
    return minion


def sync_minion(master, minion) -> None:
    # salt_cli()'s default --timeout of 5 s is too short for a sync on a loaded 2-core machine.
    ret = master.salt_cli(timeout=120).run("saltutil.sync_all", minion_tgt=minion.id)
    assert ret.returncode == 0, ret


@pytest.fixture(scope="session")
def salt_minion(salt_master, storage_host):
    minion = start_minion(salt_master, "web-1", storage_host)
    with minion.started():
        sync_minion(salt_master, minion)
        yield minion


@pytest.fixture(scope="session")
def salt_minion_2(salt_master, storage_host):
    minion = start_minion(salt_master, "web-2", storage_host)
    with minion.started():
        sync_minion(salt_master, minion)
        yield minion


@pytest.fixture(scope="session")
def salt_cli(salt_master):
    return salt_master.salt_cli(timeout=180)


@pytest.fixture(scope="session")
def salt_run_cli(salt_master):
    return salt_master.salt_run_cli(timeout=180)


@pytest.fixture(scope="session")
def salt_call_cli(salt_minion):
    return salt_minion.salt_call_cli(timeout=180)
