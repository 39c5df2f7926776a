"""What the ingester passes between its rooms: found files, validated records, a pass's report."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from dashboard.models import format_timestamp


@dataclass
class IngestReport:
    """What one ingest pass did."""

    ingested: int = 0  # runs stored
    duplicates: int = 0  # files whose (minion, jid) was already stored
    quarantined: int = 0  # files (or entries) moved to quarantine
    results: int = 0  # test results written
    manifests: int = 0  # job manifests stored
    deferred: int = 0  # files left in the inbox after a transient database error

    def __bool__(self) -> bool:
        return any((self.ingested, self.duplicates, self.quarantined, self.manifests, self.deferred))


@dataclass
class Candidate:
    """A final-named regular file found in an inbox directory."""

    dir_name: str
    name: str
    kind: str  # result | junit | job
    size: int
    mtime: float
    inbox_dir: InboxDir


@dataclass
class InboxDir:
    """An inbox subdirectory held open by descriptor (opened without following symlinks)."""

    name: str
    fd: int


@dataclass
class RunRecord:
    candidate: Candidate
    minion: str
    jid: str
    fun: str
    source: str
    status: str
    exitcode: int | None
    counts: dict[str, int]
    started_at: str
    finished_at: str | None
    duration: float | None
    returned_at: str
    paths: str
    args: str
    python_version: str | None
    pytest_version: str | None
    grains: str
    message: str | None
    signed: int
    # Built off the writer's thread (see _flatten): result rows without run/test ids, and per
    # test (worst outcome, summed duration, file, line) for the summaries and the tests table.
    rows: list[tuple]
    per_test: dict[str, tuple[str, float, str | None, int | None]]
    # The result's code fingerprint (pytestrun's code_hash); None when unknown (JUnit, older minions).
    code_hash: str | None = None
    # Failure signatures (dashboard/signatures.py), computed with the rows: per test the signature
    # of its worst failing entry, per signature its (exception, masked message, location).
    test_signatures: dict[str, str] = field(default_factory=dict)
    signature_parts: dict[str, tuple[str, str, str]] = field(default_factory=dict)
    # ... and how many result rows of the run carry each signature.
    signature_counts: dict[str, int] = field(default_factory=dict)
    # The jid whose failures this run re-ran (pytestrun.run rerun_of=...), else None.
    rerun_of: str | None = None
    # Set by the validation worker for a SQLite store (store.stage_results): (the batch's staged
    # result rows as a serialized SQLite database, this run's first rowid in it, its number of results);
    # ``rows`` then keeps only the failed/error rows the writer still reads (signatures, webhooks).
    staged: tuple[Any, int, int] | None = None  # (store.StagedBatch, first rowid, count)

    @property
    def result_count(self) -> int:
        return self.staged[2] if self.staged else len(self.rows)


@dataclass
class JobRecord:
    candidate: Candidate
    jid: str
    fun: str | None
    tgt: str | None
    tgt_type: str | None
    targeted: str
    started_at: str | None


@dataclass
class Rejected:
    candidate: Candidate
    reason: str


def utc_now() -> str:
    return format_timestamp(datetime.now(UTC))
