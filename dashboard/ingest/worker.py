"""The validation worker: a child process that validates big passes while this one writes."""

from __future__ import annotations

import gc
import logging
import multiprocessing.connection
import os
import subprocess
import sys
import threading
from pathlib import Path

from dashboard.config import Settings
from dashboard.dialect import is_postgres
from dashboard.ingest.records import Candidate, InboxDir, Rejected
from dashboard.ingest.store import stage_results
from dashboard.ingest.validate import Preparer

log = logging.getLogger(__name__)


# -- validation in a worker process --------------------------------------------------------------
# Validation (JSON, pydantic) and the writer's side are both CPU-bound Python: under the GIL they
# cannot overlap in threads. A pass with more than one batch (after downtime, a benchmark) hands
# validation to one worker process, so it runs on the other core while this process writes. The
# steady trickle (a few files per scan) stays in-process: no round trip for it.
#
# The worker is a plain ``python -c`` child talking over two pipes, not multiprocessing's spawn:
# spawn re-imports the parent's __main__ script in the child, which would re-run any caller's
# unguarded script (a benchmark, a one-off tool). DISTMON_INGEST_WORKER=0 (Settings.ingest_worker)
# turns it off.

WORKER_REPLY_TIMEOUT = 300  # seconds for one batch; a stuck worker is killed and replaced


class _ValidationWorker:
    """One child process that runs :func:`prepare_remote`; requests are serialized."""

    def __init__(self) -> None:
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        # This checkout first on the child's path (the parent may run from anywhere); the child
        # inherits the parent's environment as it is.
        package_root = str(Path(__file__).resolve().parents[2])
        code = (
            f"import sys; sys.path.insert(0, {package_root!r}); "
            f"from dashboard.ingest.worker import worker_main; worker_main({to_child_r}, {from_child_w})"
        )
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-c", code], pass_fds=(to_child_r, from_child_w), stdin=subprocess.DEVNULL
            )
        finally:
            os.close(to_child_r)
            os.close(from_child_w)
        self.to_child = multiprocessing.connection.Connection(to_child_w, readable=False)
        self.from_child = multiprocessing.connection.Connection(from_child_r, writable=False)
        self.lock = threading.Lock()

    def validate(self, settings: Settings, items: list[tuple]) -> list:
        """Blocking (run it in a thread): the outcomes of :func:`prepare_remote` for ``items``."""
        with self.lock:
            self.to_child.send((settings, items))
            if not self.from_child.poll(WORKER_REPLY_TIMEOUT):
                raise TimeoutError(f"no reply from the validation worker in {WORKER_REPLY_TIMEOUT} s")
            return self.from_child.recv()

    def close(self) -> None:
        for connection in (self.to_child, self.from_child):
            try:
                connection.close()
            except OSError:
                pass
        if self.process.poll() is None:
            self.process.kill()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass


_worker: _ValidationWorker | None = None
_worker_lock = threading.Lock()
_worker_preparers: dict[str, Preparer] = {}  # in the worker process: one per settings


def validation_worker(settings: Settings) -> _ValidationWorker | None:
    """The running worker (started if need be), or None when it is off or cannot start."""
    return _start_worker() if settings.ingest_worker else None


def _start_worker() -> _ValidationWorker | None:
    global _worker
    with _worker_lock:
        if _worker is None or _worker.process.poll() is not None:
            if _worker is not None:
                _worker.close()  # it died on its own: release its pipes
            try:
                _worker = _ValidationWorker()
            except OSError as err:
                log.warning("cannot start the validation worker (%s); validating in-process", err)
                return None
        return _worker


def discard_worker(worker: _ValidationWorker) -> None:
    global _worker
    with _worker_lock:
        if _worker is worker:
            _worker = None
    worker.close()


def warm_up_validation_worker(settings: Settings | None = None) -> None:
    """Start the validation worker ahead of the first big pass (its imports take a moment)."""
    if settings is None or settings.ingest_worker:
        _start_worker()


def worker_main(read_fd: int, write_fd: int) -> None:
    """The worker process's loop: (settings, items) in, outcomes out, until the parent goes away."""
    # A batch allocates ~100,000 short-lived containers and no cycles; at the default threshold
    # (700) the collector would run ~150 times a batch over everything alive. Imports are frozen
    # out of its walks, and it runs every 50,000 allocations instead.
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)
    inbound = multiprocessing.connection.Connection(read_fd, writable=False)
    outbound = multiprocessing.connection.Connection(write_fd, readable=False)
    while True:
        try:
            settings, items = inbound.recv()
            outbound.send(prepare_remote(settings, items))
        except (EOFError, OSError):  # the parent went away (exit, SIGKILL): so do we
            return


def prepare_remote(settings: Settings, items: list[tuple[str, str, str, int, float]]) -> list:
    """In the worker: validate files named (dir, name, kind, size, mtime), reading them itself.

    Directories are opened with O_NOFOLLOW like the scanner does. The outcomes travel back
    without their candidate (descriptors mean nothing across processes); the caller re-attaches.
    """
    key = repr(settings)
    preparer = _worker_preparers.get(key)
    if preparer is None:
        preparer = _worker_preparers[key] = Preparer(settings)
    inbox_fd = os.open(settings.inbox, os.O_RDONLY | os.O_DIRECTORY)
    opened: dict[str, InboxDir | None] = {}
    outcomes: list = []
    try:
        for dir_name, name, kind, size, mtime in items:
            if dir_name not in opened:
                try:
                    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
                    opened[dir_name] = InboxDir(dir_name, os.open(dir_name, flags, dir_fd=inbox_fd))
                except OSError as err:
                    log.warning("validation worker cannot open %r: %s", dir_name, err)
                    opened[dir_name] = None
            inbox_dir = opened[dir_name]
            if inbox_dir is None:
                outcomes.append(Rejected(None, "its directory was replaced while being ingested"))  # type: ignore[arg-type]
                continue
            outcome = preparer.prepare(Candidate(dir_name, name, kind, size, mtime, inbox_dir))
            outcome.candidate = None  # type: ignore[assignment]
            outcomes.append(outcome)
    finally:
        for inbox_dir in opened.values():
            if inbox_dir is not None:
                os.close(inbox_dir.fd)
        os.close(inbox_fd)
    if not is_postgres(settings.db_path):  # PostgreSQL's writer COPYs the rows as they are
        stage_results(outcomes)
    return outcomes
