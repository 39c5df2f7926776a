"""The ingest passes: scan, validate (maybe in the worker), store, then archive, in batches."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import gc
import logging
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar
from weakref import WeakKeyDictionary

from dashboard.config import Settings
from dashboard.db import Database
from dashboard.dialect import transient_errors
from dashboard.ingest.inbox import ArchiveDirs, archive_files, quarantine_entry, scan_inbox, take_quarantined
from dashboard.ingest.records import Candidate, InboxDir, IngestReport, JobRecord, RunRecord
from dashboard.ingest.store import IdCache, write_quarantine_notices, write_records
from dashboard.ingest.validate import Preparer, prepare_chunk, sort_out
from dashboard.ingest.worker import discard_worker, validation_worker, warm_up_validation_worker

log = logging.getLogger(__name__)
T = TypeVar("T")


# Files per transaction. 200 files of 50 results (10,000 results) commit in ~0.1 s, short
# enough that the web app's own writes (logins, sessions) never wait long behind the ingester;
# fewer, larger transactions write each hot summary row and index page once per batch, not
# once per 100 files (the writer's CPU per 50,000 results: ~0.43 s at 100, ~0.37 s at 200).
BATCH_FILES = 200
# ... and at most this many bytes of files per transaction, so a few huge runs (10,000s of tests
# each) neither hold the write lock for long nor sit in memory all at once.
BATCH_BYTES = 8_000_000
# Test hook (Settings.test_crash_after_commit): exit right after a commit, before the files are
# moved (crash-safety tests).
CRASH_AFTER_COMMIT_ENV = "DISTMON_TEST_CRASH_AFTER_COMMIT"


# The first batch of a pass with several is small, and each next one twice the last, up to
# BATCH_FILES: the writer waits only for the first (small) validation, and while it stores a
# batch the worker validates one about as long to store.
FIRST_BATCH_FILES = 20


def _batches(candidates: list[Candidate]) -> Iterator[list[Candidate]]:
    batch: list[Candidate] = []
    size = 0
    limit = FIRST_BATCH_FILES if len(candidates) > BATCH_FILES else BATCH_FILES
    for candidate in candidates:
        if batch and (len(batch) >= limit or size + candidate.size > BATCH_BYTES):
            limit = min(BATCH_FILES, limit * 2)
            yield batch
            batch, size = [], 0
        batch.append(candidate)
        size += candidate.size
    if batch:
        yield batch


# A pass allocates a few hundred thousand short-lived objects (records, rows), most of which live
# across several young collections: at the default thresholds (700, 10, 10) that sets off a full
# collection of the whole process every few passes (70-150 ms of CPU in the middle of a pass,
# more in a big process). During a pass the young generation is collected every 50,000
# allocations instead (as in the validation worker) and full collections wait; the thresholds
# are restored when the last running pass ends.
PASS_GC_THRESHOLD = (50_000, 20, 100)
_gc_lock = threading.Lock()
_gc_passes = 0
_gc_saved: tuple[int, int, int] | None = None


@contextlib.contextmanager
def _fewer_collections() -> Iterator[None]:
    global _gc_passes, _gc_saved
    with _gc_lock:
        if _gc_passes == 0:
            _gc_saved = gc.get_threshold()
            gc.set_threshold(*(max(ours, theirs) for ours, theirs in zip(PASS_GC_THRESHOLD, _gc_saved, strict=True)))
        _gc_passes += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_passes -= 1
            if _gc_passes == 0 and _gc_saved is not None:
                gc.set_threshold(*_gc_saved)
                _gc_saved = None


# -- the passes --------------------------------------------------------------------------------


@dataclass
class _IngestState:
    preparer: Preparer
    ids: IdCache = field(default_factory=IdCache)


_STATES: WeakKeyDictionary[Database, _IngestState] = WeakKeyDictionary()


def _state(db: Database, settings: Settings) -> _IngestState:
    state = _STATES.get(db)
    if state is None or state.preparer.settings is not settings:
        state = _IngestState(Preparer(settings), state.ids if state else IdCache())
        _STATES[db] = state
    return state


async def _prepare(
    work: _FileWork, preparer: Preparer, chunk: list[Candidate], *, in_worker: bool
) -> tuple[list[RunRecord | JobRecord], int]:
    worker = validation_worker(preparer.settings) if in_worker else None
    if worker is not None:
        items = [(c.dir_name, c.name, c.kind, c.size, c.mtime) for c in chunk]
        try:
            outcomes = await work.run(worker.validate, preparer.settings, items)
        except asyncio.CancelledError:
            raise
        except Exception as err:  # the worker died or misbehaved: validate here instead
            log.warning("validation worker failed (%s: %s); validating in-process", type(err).__name__, err)
            discard_worker(worker)
        else:
            if len(outcomes) == len(chunk):
                return await work.run(sort_out, preparer.settings, chunk, outcomes)
            discard_worker(worker)
    return await work.run(prepare_chunk, preparer, chunk)


def _transient(err: BaseException) -> bool:
    """A database error that is about the database (locked, disk full, I/O), not about the file."""
    return isinstance(err, transient_errors())


def _count(records: list, outcomes: list[str], report: IngestReport) -> None:
    for record, outcome in zip(records, outcomes, strict=True):
        if outcome == "ingested":
            report.ingested += 1
            report.results += record.result_count
        elif outcome == "duplicate":
            report.duplicates += 1
            log.info("duplicate %s/%s: already stored, archiving the file", record.minion, record.jid)
        else:
            report.manifests += 1


def _archive(settings: Settings, records: list, outcomes: list[str], dirs: ArchiveDirs) -> None:
    moves = [(record.candidate, outcome == "duplicate") for record, outcome in zip(records, outcomes, strict=True)]
    archive_files(settings, moves, dirs)


class _FileWork:
    """Runs a pass's file-system work in threads and owns the pass's directory descriptors.

    The descriptors are closed only once no thread uses them any more, even when the pass is
    cancelled mid-way (a cancelled await does not stop its thread; a descriptor number closed
    under a running thread could be reused for another directory).
    """

    def __init__(self) -> None:
        self.opened: list[InboxDir] = []
        self._archive_dirs: ArchiveDirs | None = None
        self._busy = 0
        self._closing = False
        self._lock = threading.Lock()

    def run(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        with self._lock:
            if self._closing:
                raise RuntimeError("this ingest pass is over: its directory descriptors are released")
            self._busy += 1
        future = _FILE_THREADS.submit(fn, *args)
        future.add_done_callback(self._done)
        return asyncio.wrap_future(future)

    def _done(self, _future: concurrent.futures.Future) -> None:
        with self._lock:
            self._busy -= 1
            close = self._closing and self._busy == 0
        if close:
            self._close()

    def close(self) -> None:
        with self._lock:
            self._closing = True
            close = self._busy == 0
        if close:
            self._close()

    def archive_dirs(self, settings: Settings) -> ArchiveDirs:
        """The pass's archive directories (closed with its other descriptors)."""
        with self._lock:
            if self._archive_dirs is None:
                self._archive_dirs = ArchiveDirs(settings)
            return self._archive_dirs

    def _close(self) -> None:
        with self._lock:
            opened, self.opened = self.opened, []
            archive_dirs, self._archive_dirs = self._archive_dirs, None
        if archive_dirs is not None:
            archive_dirs.close()
        for inbox_dir in opened:
            try:
                os.close(inbox_dir.fd)
            except OSError:
                pass


# Two threads: one validates the next chunk while the other moves the files of the last one.
_FILE_THREADS = concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="distmon-ingest")


async def _store(
    db: Database, settings: Settings, state: _IngestState, work: _FileWork, records: list, report: IngestReport,
    archiving: list[asyncio.Future],
) -> None:
    """Commit ``records`` in one transaction, then archive their files; on failure retry one by one.

    The archiving runs in a file thread, its future added to ``archiving``: the next batch's
    transaction need not wait for this one's files to move (the pass awaits them all).
    """
    try:
        # Every reference the batch writes is an id read or inserted in its own transaction, or of a
        # row never deleted (minions, tests): SQLite need not look each one up again (Database.write).
        outcomes = await db.write(write_records, records, state.ids, on_rollback=state.ids.clear,
                                  check_foreign_keys=False)
    except Exception as err:
        if len(records) == 1:
            await _handle_failure(settings, work, records[0], err, report)
            return
        log.warning("batch of %d files failed (%s: %s); retrying them one by one", len(records), type(err).__name__, err)
        for record in records:
            await _store(db, settings, state, work, [record], report, archiving)
        return
    _crash_hook(settings)
    _count(records, outcomes, report)
    archiving.append(work.run(_archive, settings, records, outcomes, work.archive_dirs(settings)))


async def _handle_failure(settings: Settings, work: _FileWork, record, err: BaseException, report: IngestReport) -> None:
    candidate = record.candidate
    if _transient(err):
        log.warning("database error on %s/%s, left in the inbox for the next scan: %s", candidate.dir_name, candidate.name, err)
        report.deferred += 1
        return
    reason = f"the database rejected it: {type(err).__name__}: {str(err)[:200]}"
    if await work.run(quarantine_entry, settings, candidate.inbox_dir.fd, candidate.dir_name, candidate.name, reason):
        report.quarantined += 1


def _crash_hook(settings: Settings) -> None:
    if settings.test_crash_after_commit:
        os._exit(99)


async def ingest_pending(db: Database, settings: Settings) -> IngestReport:
    """One pass over the inbox: store every valid file found, quarantine the rest."""
    with _fewer_collections():
        return await _ingest_pass(db, settings)


async def _ingest_pass(db: Database, settings: Settings) -> IngestReport:
    state = _state(db, settings)
    report = IngestReport()
    work = _FileWork()
    pending: asyncio.Future | None = None
    archiving: list[asyncio.Future] = []
    try:
        candidates = await work.run(scan_inbox, settings, report, work.opened)
        chunks = list(_batches(candidates))
        in_worker = len(chunks) > 1
        if chunks:
            pending = asyncio.ensure_future(_prepare(work, state.preparer, chunks[0], in_worker=in_worker))
        for index in range(len(chunks)):
            records, quarantined = await pending
            report.quarantined += quarantined
            if index + 1 < len(chunks):
                # Validation of the next chunk overlaps the commit of this one.
                pending = asyncio.ensure_future(_prepare(work, state.preparer, chunks[index + 1], in_worker=in_worker))
            if records:
                await _store(db, settings, state, work, records, report, archiving)
        await asyncio.gather(*archiving)
    finally:
        if pending is not None and not pending.done():
            pending.cancel()  # it must not start new file work once the descriptors are released
        work.close()
    quarantined = take_quarantined(settings)
    if quarantined:
        await db.write(write_quarantine_notices, quarantined)
    if report:
        log.info(
            "ingest: %d runs (%d results), %d duplicates, %d quarantined, %d manifests, %d deferred",
            report.ingested, report.results, report.duplicates, report.quarantined, report.manifests, report.deferred,
        )  # fmt: skip
    return report


async def run_ingester(db: Database, settings: Settings, stop: asyncio.Event) -> None:
    """Scan at start, then every ``settings.scan_interval`` seconds until ``stop`` is set; never dies."""
    interval = max(0.01, float(settings.scan_interval))
    warm_up_validation_worker(settings)
    while not stop.is_set():
        try:
            await ingest_pending(db, settings)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("ingest pass failed; retrying in %.1f s", max(interval, 1.0))
            interval_now = max(interval, 1.0)
        else:
            interval_now = interval
        try:
            await asyncio.wait_for(stop.wait(), timeout=interval_now)
        except TimeoutError:
            pass


def ingest_pending_sync(settings: Settings) -> IngestReport:
    """One ingest pass without a running event loop (CLI, benchmarks)."""

    async def once() -> IngestReport:
        db = Database(settings.db_path)
        await db.open()
        try:
            return await ingest_pending(db, settings)
        finally:
            await db.close()

    return asyncio.run(once())
