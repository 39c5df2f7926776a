"""Helpers of the fault suite: documents, spools, polling, and the dashboard as a killable process.

:class:`DashboardProcess` runs ``python -m dashboard serve`` (uvicorn with the shipped limits) in a subprocess on a free port over
its own SQLite file, so a case can SIGKILL it and start it again. It runs in its own directory
(never the repo root: ``.run/stack.env`` there would leak the local stack's settings in) with
every ``DISTMON_*`` setting explicit.

Counting: runs are read from the dashboard's database through a read-only connection.
"Duplicates" is what a double delivery would leave behind: rows beyond one per (minion, jid),
``minions.runs`` summaries beyond the rows, result rows beyond the documents' tests, and
(where a case checks it) runs that ``/api/runs`` lists more than once.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import resource
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from cryptography.hazmat.primitives import serialization

from dashboard.signing import sign_document
from tests.conftest import REPO_ROOT
from tools.storage_host import free_port

FAULT_MINIONS = ("fault-1", "fault-2")
DATA = Path(__file__).resolve().parent / "data"
# pytest plugins installed in the venv are not needed by the suites run here; skipping their
# autoload keeps each pytestrun job short.
NO_AUTOLOAD = {"PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
ADMIN_USER, ADMIN_PASSWORD = "faults-admin", "faults-admin-password-1"


# -- small helpers ----------------------------------------------------------------------------


def wait_for(predicate, timeout: float, interval: float = 0.1, message: str = ""):
    """Poll ``predicate`` until it returns something truthy or ``timeout`` passes; return its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


def unique_jids(count: int) -> list[str]:
    """``count`` fresh 20-digit jids (Salt's shape), unique across cases of one run."""
    base = time.time_ns() // 1000 % 10**14
    return [f"{base:014d}{index:06d}" for index in range(count)]


def iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def result_document(minion: str, jid: str, tests: int = 10, pad: int = 0, started: datetime | None = None) -> dict:
    """A valid distmon-result/1 document (docs/result-format.md) with ``tests`` passing tests.

    ``pad`` adds that many bytes of captured stdout per test (bigger files for transfer faults).
    """
    started = started or datetime.now(UTC)
    finished = started + timedelta(seconds=0.01 * tests)
    entries = [
        {
            "nodeid": f"tests/test_fault.py::test_{index}", "outcome": "passed", "when": "call",
            "duration": 0.01, "file": "tests/test_fault.py", "line": index + 1, "markers": [],
            "message": None, "longrepr": None, "stdout": ("x" * pad) if pad else None, "stderr": None,
        }
        for index in range(tests)
    ]  # fmt: skip
    return {
        "format": "distmon-result/1", "jid": jid, "minion_id": minion, "fun": "pytestrun.run",
        "fun_args": ["salt://sample_tests"], "success": True, "retcode": 0, "returned_at": iso(finished),
        "grains": {"os": "Debian", "saltversion": "3008.4"},
        "result": {
            "status": "passed", "exitcode": 0,
            "counts": {"passed": tests, "failed": 0, "skipped": 0, "xfailed": 0, "xpassed": 0, "errors": 0},
            "tests": entries, "started_at": iso(started), "finished_at": iso(finished),
            "duration": 0.01 * tests, "paths": ["salt://sample_tests"], "args": [],
            "python": sys.executable, "python_version": "3.11.2", "pytest_version": "9.2.0", "minion_id": minion,
        },
    }  # fmt: skip


def minion_private_key(minion):
    """The minion's own Salt key (what its returner signs with)."""
    return _load_private_key(str(Path(minion.config["pki_dir"]) / "minion.pem"))


@functools.lru_cache(maxsize=16)
def _load_private_key(path: str):
    # Loading checks the RSA key's consistency, which costs far more than a signature: once per key.
    return serialization.load_pem_private_key(Path(path).read_bytes(), password=None)


def signed_document(minion, jid: str, **kwargs) -> dict:
    return sign_document(result_document(minion.id, jid, **kwargs), minion_private_key(minion))


def seed_spool(spool_dir: Path, documents: list[dict]) -> None:
    """Put documents in a spool exactly as the returner leaves them: ``<spool_dir>/<jid>.json``."""
    spool_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    base = time.time() - len(documents)
    for index, doc in enumerate(documents):
        path = spool_dir / f"{doc['jid']}.json"
        path.write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")
        os.utime(path, (base + index, base + index))  # oldest first, like real arrivals


def write_inbox_file(inbox: Path, doc: dict) -> Path:
    """Drop a document into an inbox the way the returner does: temporary dot-name, then rename."""
    directory = inbox / doc["minion_id"]
    directory.mkdir(parents=True, exist_ok=True)
    temporary = directory / f".{doc['jid']}.json.{uuid.uuid4().hex[:12]}.part"
    temporary.write_text(json.dumps(doc), encoding="utf-8")
    final = directory / f"{doc['jid']}.json"
    temporary.rename(final)
    return final


def final_files(directory: Path) -> list[Path]:
    """Final-named files (what the ingester acts on) below ``directory``; dot-names are uploads in progress."""
    if not directory.exists():
        return []
    return sorted(p for p in directory.rglob("*") if p.is_file() and not p.name.startswith(".")
                  and not p.name.endswith(".reason"))


# -- the dashboard as a process ------------------------------------------------------------------


@dataclass
class Ledger:
    """What the database holds for a case's (minion, jid) pairs (read-only)."""

    expected: set[tuple[str, str]]
    rows: int  # rows in runs for the expected pairs
    present: set[tuple[str, str]]  # expected pairs that have a run
    summary_excess: int  # sum over the minions of minions.runs - rows in runs (the ingester's summary)
    results: int  # rows in results of those runs
    by_pair: dict[tuple[str, str], dict] = field(default_factory=dict)

    @property
    def seen(self) -> int:
        return len(self.present)

    def duplicates(self, expected_results: int | None = None) -> int:
        """Runs or results stored more than once for the case (0 when every delivery counted once)."""
        extra_results = max(0, self.results - expected_results) if expected_results is not None else 0
        return (self.rows - len(self.present)) + max(0, self.summary_excess) + extra_results


class DashboardProcess:
    """``python -m dashboard serve`` in a subprocess over its own database; killable and restartable.

    ``extra_env`` adds or overrides ``DISTMON_*`` settings; ``nofile`` sets the process's
    descriptor limit (soft and hard), as a service manager would.
    """

    def __init__(self, root: Path, inbox: Path, *, pubkeys_dir: Path | None = None, require_signature: bool = False,
                 scan_interval: float = 0.1, extra_env: dict[str, str] | None = None, nofile: int | None = None,
                 command: list[str] | None = None):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.inbox = Path(inbox)
        self.db_path = self.root / "distmon.sqlite"
        self.archive = self.root / "archive"
        self.quarantine = self.root / "quarantine"
        self.log_path = self.root / "dashboard.log"
        self.pubkeys_dir = pubkeys_dir
        self.require_signature = require_signature
        self.scan_interval = scan_interval
        self.extra_env = dict(extra_env or {})
        self.nofile = nofile
        # The launcher: the shipped one unless a case compares with another (e.g. bare uvicorn).
        self.command = command or [sys.executable, "-m", "dashboard", "serve"]
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self._token: str | None = None

    def env(self) -> dict[str, str]:
        env = {key: value for key, value in os.environ.items() if not key.startswith("DISTMON_")}
        env.update({
            "PYTHONPATH": str(REPO_ROOT),
            "DISTMON_DB": str(self.db_path),
            "DISTMON_INBOX": str(self.inbox),
            "DISTMON_ARCHIVE": str(self.archive),
            "DISTMON_ARCHIVE_MODE": "archive",
            "DISTMON_QUARANTINE": str(self.quarantine),
            "DISTMON_PUBKEYS_DIR": str(self.pubkeys_dir or ""),
            "DISTMON_REQUIRE_SIGNATURE": "1" if self.require_signature else "0",
            "DISTMON_ACCEPT_JUNIT": "0",
            "DISTMON_INGEST": "1",
            "DISTMON_SCAN_INTERVAL": str(self.scan_interval),
            "DISTMON_REGISTRATION": "closed",
            "DISTMON_BCRYPT_ROUNDS": "4",
        })  # fmt: skip
        env.update(self.extra_env)
        return env

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> None:
        assert self.proc is None, "already running"
        self.port = free_port()
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [*self.command, "--host", "127.0.0.1", "--port", str(self.port), "--log-level", "warning",
                 "--no-access-log"],
                cwd=self.root, env=self.env(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, preexec_fn=self._limit_descriptors if self.nofile else None,
            )  # fmt: skip
        self.starts += 1

        def answers():
            if self.proc.poll() is not None:
                raise AssertionError(f"dashboard exited with {self.proc.returncode}; see {self.log_path}:\n"
                                     + self.log_path.read_text(errors="replace")[-2000:])
            try:
                return httpx.get(f"{self.url}/login", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        assert wait_for(answers, timeout, 0.1), f"dashboard did not answer within {timeout} s; see {self.log_path}"

    def _limit_descriptors(self) -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (self.nofile, self.nofile))

    def kill(self) -> None:
        """SIGKILL: no shutdown, no lifespan exit, exactly a crash."""
        if self.proc is None:
            return
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        self.proc = None

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.kill()
        self.proc = None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # -- reading ----------------------------------------------------------------------------------
    @contextlib.contextmanager
    def read_only(self):
        conn = sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, timeout=30)
        try:
            yield conn
        finally:
            conn.close()

    def ledger(self, pairs) -> Ledger:
        """Count what is stored for the (minion, jid) ``pairs``."""
        expected = {(str(m), str(j)) for m, j in pairs}
        minions = sorted({m for m, _ in expected})
        marks = ",".join("?" * len(minions))
        try:
            with self.read_only() as conn:
                rows = conn.execute(
                    "SELECT m.name, r.jid, r.status, r.signed, r.message, "
                    "(SELECT COUNT(*) FROM results res WHERE res.run_id = r.id) "
                    f"FROM runs r JOIN minions m ON m.id = r.minion_id WHERE m.name IN ({marks})",  # noqa: S608
                    minions,
                ).fetchall()
                excess = conn.execute(
                    "SELECT COALESCE(SUM(m.runs - (SELECT COUNT(*) FROM runs r WHERE r.minion_id = m.id)), 0) "
                    f"FROM minions m WHERE m.name IN ({marks})",  # noqa: S608
                    minions,
                ).fetchone()[0]
        except sqlite3.OperationalError as err:
            if "no such table" in str(err) or "unable to open" in str(err):
                return Ledger(expected, 0, set(), 0, 0)
            raise
        mine = [row for row in rows if (row[0], row[1]) in expected]
        by_pair = {(m, j): {"status": s, "signed": g, "message": msg, "results": n} for m, j, s, g, msg, n in mine}
        return Ledger(expected, len(mine), set(by_pair), excess, sum(row[5] for row in mine), by_pair)

    def wait_runs(self, pairs, timeout: float = 60.0) -> Ledger:
        """Poll until every pair has a run (or the timeout passes); return the ledger."""
        expected = {(str(m), str(j)) for m, j in pairs}
        wait_for(lambda: self.ledger(expected).seen >= len(expected), timeout, 0.1)
        return self.ledger(expected)

    def quarantined(self, directory: str) -> dict[str, str]:
        """``{file name: reason}`` of what the ingester quarantined from inbox directory ``directory``."""
        folder = self.quarantine / directory
        if not folder.exists():
            return {}
        return {p.name: (folder / f"{p.name}.reason").read_text(errors="replace")
                for p in folder.iterdir() if not p.name.endswith(".reason")}

    # -- the API as a user --------------------------------------------------------------------------
    def cli(self, *args: str, stdin: str | None = None) -> str:
        done = subprocess.run([sys.executable, "-m", "dashboard", *args], cwd=self.root, env=self.env(),
                              input=stdin, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, f"python -m dashboard {' '.join(args)}: {done.stderr}"
        return done.stdout

    def token(self) -> str:
        if self._token is None:
            self.cli("user", "create", ADMIN_USER, "--admin", "--password-stdin", stdin=ADMIN_PASSWORD + "\n")
            self._token = self.cli("token", "create", ADMIN_USER, "--label", "faults").strip().splitlines()[-1]
        return self._token

    def api_runs(self, **filters) -> list[tuple[str, str]]:
        """Every run the API lists (all pages), as (minion, jid): what a user of the dashboard sees."""
        seen: list[tuple[str, str]] = []
        cursor = None
        with self.client() as client:
            while True:
                params = {**filters, "limit": 500, **({"cursor": cursor} if cursor else {})}
                page = client.get("/api/runs", params=params)
                assert page.status_code == 200, page.text[:500]
                body = page.json()
                seen.extend((run["minion"], run["jid"]) for run in body["runs"])
                cursor = body.get("next")
                if not cursor:
                    return seen

    def api_listed(self, pairs) -> tuple[int, int]:
        """(how many of ``pairs`` /api/runs lists, how many times beyond once): the user's view of a case."""
        expected = {(str(m), str(j)) for m, j in pairs}
        listed = [pair for minion in sorted({m for m, _ in expected}) for pair in self.api_runs(minion=minion)
                  if pair in expected]
        return len(set(listed)), len(listed) - len(set(listed))

    def client(self, **kwargs) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.token()}"},
                            timeout=kwargs.pop("timeout", 30), **kwargs)
