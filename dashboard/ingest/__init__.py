"""The ingester: inbox files -> validated runs and test results in SQLite.

The returner uploads ``<inbox>/<minion_id>/<jid>.json`` (temporary dot-name, then rename);
the runner writes job manifests to ``<inbox>/_jobs/<jid>.json``; other CI systems may drop
JUnit XML as ``<inbox>/<source>/<name>.xml``. This module turns them into rows.

.. code-block:: yaml

    # environment of the storage host (dashboard/config.py)
    DISTMON_INBOX: .run/host/chroot/inbox
    DISTMON_ARCHIVE: <db dir>/archive         # ingested files move here ...
    DISTMON_ARCHIVE_MODE: archive             # ... or `delete`
    DISTMON_QUARANTINE: <db dir>/quarantine   # rejected files, each with <name>.reason
    DISTMON_MAX_FILE_BYTES: 20000000          # larger files are quarantined unread
    DISTMON_PUBKEYS_DIR: (none)               # accepted minion keys, see dashboard/signing.py
    DISTMON_REQUIRE_SIGNATURE: 0
    DISTMON_ACCEPT_JUNIT: 1
    DISTMON_JUNIT_SOURCES: ""                 # sources whose JUnit XML is accepted even when
                                              # signatures are required (comma separated)
    DISTMON_SCAN_INTERVAL: 0.2                # seconds between inbox scans
    DISTMON_INGEST_WORKER: 1                  # 0: never validate in a worker process
    # all of them are fields of dashboard.config.Settings

How it works, and why:

- Watching is a periodic ``os.scandir`` of the inbox (no inotify package here). It is cheap
  (one directory read per minion per scan), and because every scan sees everything, the
  start-up scan and the backstop are the same code: nothing is missed after downtime.
- Only final names are acted on (``^[0-9A-Za-z_.-]+\\.(json|xml)$``); dot-names are uploads in
  progress. Directories are opened with ``O_NOFOLLOW`` and every later operation is relative to
  that descriptor, so a symlink (or a directory swapped for one) is never followed.
- Each file is validated (dashboard/models.py, dashboard/signing.py) BEFORE the transaction;
  a bad one goes to ``<quarantine>/<dir>/<name>`` with ``<name>.reason`` and ingest goes on.
- Valid files are written in batches (one transaction for up to :data:`BATCH_FILES` files or
  :data:`BATCH_BYTES`); if a batch fails, its files are retried one per transaction, so one file
  cannot sink the others. A file the database refuses is quarantined; a database-level error
  (locked, disk full) leaves it in the inbox for the next scan (``deferred``).
- A pass with more than one batch validates in a worker process (``python -c`` child over
  pipes; ``DISTMON_INGEST_WORKER=0`` turns it off) while this process writes: validation and
  writing are both CPU-bound Python and cannot overlap in threads under the GIL. If the worker
  fails, that batch is validated in-process and a new worker is started for the next pass.
- Idempotent on (minion, jid): after the commit the file is archived (or deleted). A crash
  between the commit and the move leaves the file in the inbox; the next scan finds its
  (minion, jid) already stored, counts it as a duplicate and archives it. Nothing is counted
  twice. A re-upload of a stored (minion, jid) with different content is also a duplicate:
  **the first stored version is kept** (a jid names one job; a returner retry carries the
  same document), and the later file is archived beside the first with a ``.dup-<ns>`` suffix.
- Summaries are maintained in the same transaction: ``minions`` (first/last seen, newest run,
  runs), ``test_status`` (latest outcome per minion and test, runs, fails, flips, failing
  streak start, last pass, total duration, ``code_flips``) and ``counters`` (``runs``, ``results``, ``tests``).
  "Latest" is by (started_at, run id): a run that arrives after a newer one does not overwrite
  it; its tests' rows are recomputed from their history instead. A test's outcome in a run is
  the worst of its entries (failed > error > passed > xpassed > xfailed > skipped); failed and
  error are fails, passed/xpassed/xfailed are passes, skipped is neither: a flip is a change
  between pass and fail (skips in between are ignored), ``first_fail_at`` opens a failing
  streak and a pass closes it. ``flips`` counts every flip; ``code_flips`` only those where the
  run that gave the previous verdict carried the same, known, ``code_hash`` (the result's code
  fingerprint, stored in ``runs.code_hash``; ``test_status.last_code_hash`` is that of the latest
  verdict): a flip across a code change is a fix or a regression, not flakiness.

The rooms of this package:

- :mod:`dashboard.ingest.inbox`: scanning the inbox; quarantining and archiving files.
- :mod:`dashboard.ingest.validate`: reading and validating files into records (no database).
- :mod:`dashboard.ingest.store`: every database write of the ingester (one transaction per batch).
- :mod:`dashboard.ingest.status`: the verdict/flip/streak rules, shared with dashboard/seed.py.
- :mod:`dashboard.ingest.worker`: the validation worker process.
- :mod:`dashboard.ingest.passes`: the passes (``ingest_pending``, ``run_ingester``, ``ingest_pending_sync``).
- :mod:`dashboard.ingest.records`: what passes between them.
"""


from dashboard.ingest.inbox import JOBS_DIR, archive_file, quarantine_entry, scan_inbox
from dashboard.ingest.passes import (
    BATCH_BYTES,
    BATCH_FILES,
    CRASH_AFTER_COMMIT_ENV,
    ingest_pending,
    ingest_pending_sync,
    run_ingester,
)
from dashboard.ingest.records import Candidate, InboxDir, IngestReport, JobRecord, Rejected, RunRecord
from dashboard.ingest.status import FAIL, PASS, PRECEDENCE, fold_status
from dashboard.ingest.store import IdCache, write_records
from dashboard.ingest.validate import Preparer
from dashboard.ingest.worker import warm_up_validation_worker

__all__ = [
    "BATCH_BYTES",
    "BATCH_FILES",
    "CRASH_AFTER_COMMIT_ENV",
    "FAIL",
    "JOBS_DIR",
    "PASS",
    "PRECEDENCE",
    "Candidate",
    "IdCache",
    "InboxDir",
    "IngestReport",
    "JobRecord",
    "Preparer",
    "Rejected",
    "RunRecord",
    "archive_file",
    "fold_status",
    "ingest_pending",
    "ingest_pending_sync",
    "quarantine_entry",
    "run_ingester",
    "scan_inbox",
    "warm_up_validation_worker",
    "write_records",
]
