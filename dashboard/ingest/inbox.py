"""The inbox on disk: scanning it, and moving files out of it (quarantine, archive).

Only final names are acted on (``^[0-9A-Za-z_.-]+\\.(json|xml)$``); dot-names and ``.part``
names are uploads in progress, left alone until they have not changed for
``settings.stale_upload_age`` seconds: then they are abandoned and quarantined (a crashed
upload, or ``..json``, would otherwise stay for ever and fill the disk). Directories are opened with ``O_NOFOLLOW`` and every later operation is relative to
that descriptor, so a symlink (or a directory swapped for one) is never followed.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from dashboard.config import Settings
from dashboard.ingest.records import Candidate, InboxDir, IngestReport, utc_now
from dashboard.models import id_problem

log = logging.getLogger(__name__)


JOBS_DIR = "_jobs"
JSON_NAME = re.compile(r"^[0-9A-Za-z_.-]+\.json$")
XML_NAME = re.compile(r"^[0-9A-Za-z_.-]+\.xml$")


def _label(name: str) -> str:
    """A directory or file name made safe to create under the quarantine/archive root."""
    safe = re.sub(r"[^0-9A-Za-z_.-]", "_", name)[:200].lstrip(".")
    return safe or "_invalid"


def _unique(target: Path) -> Path:
    if not os.path.lexists(target):
        return target
    return target.with_name(f"{target.name}.{time.time_ns()}")


def _move_out(dir_fd: int, name: str, target: Path, made: set[Path] | None = None) -> None:
    """Move ``name`` (relative to ``dir_fd``, never followed) to ``target``.

    ``made``: directories this caller already made (each is made once per batch of moves).
    """
    if made is None or target.parent not in made:
        target.parent.mkdir(parents=True, exist_ok=True)
        if made is not None:
            made.add(target.parent)
    try:
        os.rename(name, target, src_dir_fd=dir_fd)
        return
    except OSError as err:
        if err.errno != errno.EXDEV:
            raise
    # Another filesystem: copy what the entry itself is (a link stays a link), then unlink.
    info = os.lstat(name, dir_fd=dir_fd)
    if stat.S_ISLNK(info.st_mode):
        os.symlink(os.readlink(name, dir_fd=dir_fd), target)
        os.unlink(name, dir_fd=dir_fd)
    elif stat.S_ISREG(info.st_mode):
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd)
        with os.fdopen(fd, "rb") as src, open(target, "xb") as dst:
            shutil.copyfileobj(src, dst)
        os.unlink(name, dir_fd=dir_fd)
    elif stat.S_ISDIR(info.st_mode):
        # Rare (quarantining a whole directory across filesystems): resolve through /proc's fd link.
        shutil.move(os.path.join(f"/proc/self/fd/{dir_fd}", name), target)
    else:
        os.unlink(name, dir_fd=dir_fd)
        target.with_name(target.name + ".gone").write_text("a special file (fifo/socket/device) was removed\n")


def quarantine_entry(settings: Settings, dir_fd: int, dir_label: str, name: str, reason: str) -> bool:
    """Move an inbox entry to ``<quarantine>/<dir_label>/<name>`` with a ``.reason`` file; True on success."""
    target = _unique(Path(settings.quarantine) / _label(dir_label) / _label(name))
    reason_file = target.with_name(target.name + ".reason")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        # The reason first: a crash between the two leaves a reason without a file, never the reverse.
        reason_file.write_text(
            f"reason: {reason}\nwhen: {utc_now()}\nentry: {dir_label!r}/{name!r}\n", encoding="utf-8", errors="replace"
        )
        _move_out(dir_fd, name, target)
    except FileNotFoundError:
        reason_file.unlink(missing_ok=True)
        return False  # gone already (another ingester, or the uploader replaced it)
    except OSError as err:
        log.error("cannot quarantine %r/%r (%s): %s", dir_label, name, reason, err)
        return False
    log.warning("quarantined %r/%r: %s", dir_label, name, reason)
    with _QUARANTINE_LOCK:
        _QUARANTINED.setdefault(str(settings.quarantine), []).append((f"{dir_label}/{name}", reason))
    return True


def _in_progress(settings: Settings, entry: os.DirEntry, bad: list[tuple[str, str]]) -> bool:
    """True for an upload's temporary name (``.<jid>.json.<random>.part``): skipped, or added to ``bad`` once abandoned."""
    if not (entry.name.startswith(".") or entry.name.endswith(".part")):
        return False
    reason = _abandoned(settings, entry)
    if reason:
        bad.append((entry.name, reason))
    return True


def _abandoned(settings: Settings, entry: os.DirEntry) -> str | None:
    """Why an in-progress entry is abandoned (untouched for longer than the stale age), or None."""
    try:
        age = time.time() - entry.stat(follow_symlinks=False).st_mtime
    except FileNotFoundError:
        return None  # renamed to its final name meanwhile
    if age <= settings.stale_upload_age:
        return None
    return (f"an abandoned upload: an in-progress (dot or .part) name untouched for {age:.0f} s, "
            f"longer than DISTMON_STALE_UPLOAD_AGE ({settings.stale_upload_age:g} s)")
# Files quarantined by this process, per quarantine folder, not yet in the webhook outbox (the
# pass writes them after its batches). A crash in between loses only the notice: the file and its
# .reason stay in the quarantine folder.
_QUARANTINED: dict[str, list[tuple[str, str]]] = {}
_QUARANTINE_LOCK = threading.Lock()


def take_quarantined(settings: Settings) -> list[tuple[str, str]]:
    """(entry, reason) of what was quarantined since the last call, for the webhook outbox."""
    with _QUARANTINE_LOCK:
        return _QUARANTINED.pop(str(settings.quarantine), [])


def _final_entries(
    settings: Settings, dir_fd: int, bad: list[tuple[str, str]], symlink: str
) -> Iterator[tuple[str, os.stat_result]]:
    """(name, lstat) of a directory's entries in name order, but for uploads in progress and
    symlinks: those go to ``bad`` (a symlink with the reason ``symlink``; it is never followed)."""
    with os.scandir(dir_fd) as listing:
        entries = sorted(listing, key=lambda entry: entry.name)
    for entry in entries:
        if _in_progress(settings, entry, bad):
            continue
        try:
            info = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue
        if stat.S_ISLNK(info.st_mode):
            bad.append((entry.name, symlink))
            continue
        yield entry.name, info


def _quarantine_all(settings: Settings, dir_fd: int, label: str, bad: list[tuple[str, str]], report: IngestReport) -> None:
    for name, reason in bad:
        if quarantine_entry(settings, dir_fd, label, name, reason):
            report.quarantined += 1


def _scan_dir(settings: Settings, inbox_dir: InboxDir, report: IngestReport) -> list[Candidate]:
    jobs = inbox_dir.name == JOBS_DIR
    found: list[Candidate] = []
    bad: list[tuple[str, str]] = []
    for name, info in _final_entries(settings, inbox_dir.fd, bad, "a symlink where a file belongs (not followed)"):
        if not stat.S_ISREG(info.st_mode):
            bad.append((name, "not a regular file (directory, fifo, socket or device)"))
        elif JSON_NAME.match(name):
            found.append(Candidate(inbox_dir.name, name, "job" if jobs else "result", info.st_size, info.st_mtime, inbox_dir))
        elif XML_NAME.match(name) and not jobs:
            found.append(Candidate(inbox_dir.name, name, "junit", info.st_size, info.st_mtime, inbox_dir))
        else:
            bad.append((name, "unexpected file name (want <jid>.json or <name>.xml)"))
    _quarantine_all(settings, inbox_dir.fd, inbox_dir.name, bad, report)
    return found


def scan_inbox(settings: Settings, report: IngestReport, opened: list[InboxDir]) -> list[Candidate]:
    """List every final-named file in the inbox; quarantine entries that do not belong there.

    Opened directory descriptors are appended to ``opened``; the caller closes them.
    """
    try:
        inbox_fd = os.open(settings.inbox, os.O_RDONLY | os.O_DIRECTORY)
    except FileNotFoundError:
        return []
    opened.append(InboxDir("", inbox_fd))
    candidates: list[Candidate] = []
    bad: list[tuple[str, str]] = []
    for name, info in _final_entries(settings, inbox_fd, bad, "a symlink where a minion directory belongs (not followed)"):
        if not stat.S_ISDIR(info.st_mode):
            bad.append((name, "not a directory: the inbox holds one directory per minion"))
            continue
        problem = None if name == JOBS_DIR else id_problem(name)
        if problem:
            bad.append((name, f"invalid minion id as directory name: {problem}"))
            continue
        try:
            fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=inbox_fd)
        except OSError as err:
            if err.errno in (errno.ELOOP, errno.ENOTDIR):
                bad.append((name, "swapped for a symlink or file while scanning (not followed)"))
            continue
        inbox_dir = InboxDir(name, fd)
        opened.append(inbox_dir)
        candidates.extend(_scan_dir(settings, inbox_dir, report))
    _quarantine_all(settings, inbox_fd, "_inbox", bad, report)
    return candidates


# -- moving files after the commit -------------------------------------------------------------


def archive_file(settings: Settings, candidate: Candidate, duplicate: bool, made: set[Path] | None = None) -> None:
    """Move a stored file to the archive (or delete it); ``made`` as for :func:`_move_out`."""
    dir_fd = candidate.inbox_dir.fd
    try:
        if settings.archive_mode == "delete":
            os.unlink(candidate.name, dir_fd=dir_fd)
            return
        target = Path(settings.archive) / _label(candidate.dir_name) / candidate.name
        if duplicate and os.path.lexists(target):
            target = target.with_name(f"{target.name}.dup-{time.time_ns()}")
        _move_out(dir_fd, candidate.name, _unique(target), made)
    except FileNotFoundError:
        pass  # already moved (another ingester did it)
    except OSError as err:
        # Stored already: next scan sees a duplicate and tries the move again.
        log.error("cannot archive %s/%s: %s", candidate.dir_name, candidate.name, err)


class ArchiveDirs:
    """The archive directories a pass moves files into, each made and opened once per pass (thread-safe)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._fds: dict[str, int | None] = {}  # inbox directory name -> its archive directory
        self._lock = threading.Lock()

    def fd(self, dir_name: str) -> int | None:
        """The archive directory of inbox directory ``dir_name``, opened; None when it cannot be."""
        with self._lock:
            if dir_name not in self._fds:
                self._fds[dir_name] = _open_archive_dir(self.settings, dir_name)
            return self._fds[dir_name]

    def close(self) -> None:
        with self._lock:
            fds, self._fds = self._fds, {}
        for fd in fds.values():
            if fd is not None:
                os.close(fd)


def archive_files(settings: Settings, moves: list[tuple[Candidate, bool]], dirs: ArchiveDirs) -> None:
    """:func:`archive_file` for a batch's (candidate, duplicate) pairs: a file whose name is free in
    its archive directory (held open in ``dirs``) moves with one rename between the two
    descriptors (no path built per file). Anything else goes the general way."""
    if settings.archive_mode == "delete":
        for candidate, duplicate in moves:
            archive_file(settings, candidate, duplicate)
        return
    made: set[Path] = set()
    for candidate, duplicate in moves:
        target_fd = dirs.fd(candidate.dir_name)
        name = candidate.name
        if duplicate or target_fd is None or _exists(name, target_fd):
            archive_file(settings, candidate, duplicate, made)
            continue
        try:
            os.rename(name, name, src_dir_fd=candidate.inbox_dir.fd, dst_dir_fd=target_fd)
        except FileNotFoundError:
            pass  # already moved (another ingester did it)
        except OSError:
            archive_file(settings, candidate, duplicate, made)  # another filesystem, a race: the general way


def _open_archive_dir(settings: Settings, dir_name: str) -> int | None:
    directory = Path(settings.archive) / _label(dir_name)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        return os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as err:
        log.error("cannot open the archive directory %s: %s", directory, err)
        return None


def _exists(name: str, dir_fd: int) -> bool:
    try:
        os.lstat(name, dir_fd=dir_fd)
    except FileNotFoundError:
        return False
    return True
