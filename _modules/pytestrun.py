"""Run pytest on the minion and return its results as data (distmon-result/1).

``pytestrun.run`` starts pytest in a subprocess (argv list, no shell, its own
session and process group), loads a small plugin of ours with ``-p`` and reads
the results that plugin streams (one JSON line per report, flushed), never the
terminal output. The return value is the ``result`` object of
``docs/result-format.md``; the job's ``retcode`` is 0 only when status is
``passed``.

Needs: a POSIX minion, ``psutil`` (a Salt dependency), and pytest in the chosen
interpreter (the minion's own Python by default, or ``python=`` a virtualenv's).

Why the plugin source lives in this file: Salt's loader imports every ``.py`` in
``_modules/`` as an execution module, so a plugin file next to this one would be
loaded (and fail) as a module. The source below is written once into
``<cachedir>/pytestrun/plugin/distmon_pytestrun_<sha>.py`` (the name carries a hash
of the source, so an upgraded module never runs a stale plugin) and that
directory is put first on the child's ``PYTHONPATH``.

Configuration (minion config, grains or pillar, read with ``config.get``):

.. code-block:: yaml

    # Cap for each captured field (stdout, stderr, longrepr) of one test, in bytes
    # of UTF-8; longer text is cut and "…[truncated N bytes]" appended.
    pytestrun.max_output: 65536
    # Fire distmon/run/<status> on the master's event bus after every run (docs/events.md).
    pytestrun.events: true
    # Seconds the run waits at most for that event to leave (it never fails the run).
    pytestrun.event_timeout: 5
    # The event asks the re-run reactor (states/reactor/distmon_rerun.sls) to re-run the
    # new failures; false: never for this minion (a run's rerun_new_failures= wins).
    pytestrun.rerun_new_failures: true

Node ids and pytest's config:

- ``salt://`` paths: node ids are relative to the salt:// root of the fileserver
  environment (``sample_tests/test_x.py::test_y``), the same on every minion
  whatever its cachedir: pytest gets ``--rootdir=<cachedir>/files/<saltenv>``.
  The config file is the tree's own, found as pytest finds one (``pytest.toml``,
  ``pytest.ini``, ``pyproject.toml`` with ``[tool.pytest...]``, ``tox.ini`` with
  ``[pytest]``, ``setup.cfg`` with ``[tool:pytest]``; nearest directory at or above
  the tests, up to the salt:// root), cached with the tests and passed with ``-c``.
  Without one, ``-c <cachedir>/pytestrun/empty.ini`` and ``--confcutdir=<the root>``:
  no ini file or conftest.py above the minion's cache applies. Every conftest.py
  of the tree from its root down to the tests is cached and applies (with the
  tree's own config file, from that file's directory down, as pytest does). ``--rootdir``,
  ``-c``/``--config-file`` or ``--confcutdir`` in ``args`` win over ours. One run
  takes salt:// paths of one saltenv, not local paths as well.
- Local paths: pytest's own rules (rootdir and config file from the paths and the
  directories above them, like ``python -m pytest <path>`` in ``cwd``).

The result's ``rootdir`` says which directory the node ids and ``file`` fields
are relative to on that minion.

Code fingerprint: the result's ``code_hash`` is computed by the plugin once collection
is done (no extra process; each file read once): sha256 over the collected test files,
every conftest.py pytest loaded and the ini file in use, each taken as its path relative
to the rootdir plus its bytes. The same tests and config give the same hash on every
minion; an edit to any of those files changes it. The code under test (an installed
package, an application) is not covered. ``null`` when collection never finished.

Exit status: ``passed`` gives retcode 0; everything else, ``no_tests`` included
(pytest itself exits 5 when nothing ran, and a scheduled run that silently
collects nothing is a failure worth seeing), gives retcode 1.

Errors: what pytestrun can check itself (a missing or unreadable path, a ``salt://`` path
the master does not serve, salt:// and local paths or two saltenvs in one run, an
interpreter that does not exist or lacks pytest, args that cannot be split, bad keyword
arguments) raises a Salt error naming it. What only pytest can judge (an unknown option,
a node id that matches nothing, a broken conftest.py) comes back as a result with status
``usage_error`` and pytest's own words in ``message`` (retcode 1), so the returner and the
dashboard still record the attempt.

Events: after every ``run`` the minion fires ``distmon/run/<status>`` on the master's event
bus (``event.fire_master``: through the minion's own connection in a job, so no new one),
with the jid, paths, counts and the node ids that are ``new`` failures and ``fixed`` compared
with this minion's previous run of the same paths and args (kept per paths+args in
``<cachedir>/pytestrun/history/``). Firing is best effort in a thread with a short timeout and
skipped on a masterless minion: it never fails or slows the run. Tags and data: docs/events.md.

Process cleanup: when pytest exits, whatever is left in its process group is
killed; on ``timeout`` the group, every recorded descendant and every process
carrying this run's environment marker (descendants that escaped into another
session) get SIGTERM, then SIGKILL after a short grace.

CLI Example:

.. code-block:: bash

    salt 'web-*' pytestrun.run /srv/tests/test_x.py
    salt 'web-*' pytestrun.run salt://sample_tests args='-k "not slow"' timeout=60
"""

from __future__ import annotations

import datetime
import hashlib
import importlib
import json
import logging
import os
import posixpath
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from typing import Any, NamedTuple

from salt.exceptions import CommandExecutionError, SaltInvocationError

log = logging.getLogger(__name__)

__virtualname__ = "pytestrun"

_PACKAGE = "saltext.distmon.utils."
# The shared library (_utils/) this module uses: the run event's firing and what a re-run runs.
LIBRARY_PROBES = ("distmon_events.fire_best_effort", "distmon_summary.rerun_paths")

STATUSES = ("passed", "failed", "no_tests", "usage_error", "internal_error", "interrupted", "timeout", "error")
OUTCOMES = ("passed", "failed", "skipped", "xfailed", "xpassed", "error")
DEFAULT_MAX_OUTPUT = 64 * 1024
# Seconds between SIGTERM and SIGKILL when a run times out.
KILL_GRACE = 1.0
MARKER_VAR = "DISTMON_PYTESTRUN_RUN"
# pytest's exit codes (pytest.ExitCode) -> our status, for a session that finished.
EXIT_STATUS = {0: "passed", 1: "failed", 2: "interrupted", 3: "internal_error", 4: "usage_error", 5: "no_tests"}
# The files pytest takes its config from when it finds them, in its order of precedence within one directory.
CONFIG_NAMES = ("pytest.toml", ".pytest.toml", "pytest.ini", ".pytest.ini", "pyproject.toml", "tox.ini", "setup.cfg")

PLUGIN_SOURCE = r'''
"""distmon pytestrun plugin: streams every report as one JSON line (written by _modules/pytestrun.py)."""
import hashlib
import json
import os
import platform
import sys

import pytest

_OUT = os.environ.get("DISTMON_PYTESTRUN_OUT")
_MAX = int(os.environ.get("DISTMON_PYTESTRUN_MAX_OUTPUT") or 65536)
_COLLECT = os.environ.get("DISTMON_PYTESTRUN_COLLECT") == "1"
_PID = os.getpid()
_OUTCOMES = ("passed", "failed", "skipped", "xfailed", "xpassed", "error")
_state = {"config": None, "setup": {}, "markers": {}, "fh": None, "teardowns": [], "terminal": None}


def _emit(record):
    fh = _state["fh"]
    # A test that forks and lets the child carry on would otherwise report twice.
    if fh is None or os.getpid() != _PID:
        return
    if _state["teardowns"]:
        # Passed teardowns ride along with the next record: one write and flush per test, not two.
        record["teardowns"] = _state["teardowns"]
        _state["teardowns"] = []
    # One unbuffered write per record: a run killed on timeout keeps every report written before.
    os.write(fh, (json.dumps(record) + "\n").encode("utf-8"))


def _text(value):
    if value is None:
        return None
    if not isinstance(value, str):
        value = str(value)
    # Lone surrogates cannot travel through msgpack/JSON as UTF-8: make them visible escapes.
    data = value.encode("utf-8", "backslashreplace")
    if len(data) > _MAX:
        cut = len(data) - _MAX
        return data[:_MAX].decode("utf-8", "ignore") + "\u2026[truncated %d bytes]" % cut
    return data.decode("utf-8")


if _OUT:
    _state["fh"] = os.open(_OUT, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    _emit({"k": "hello", "python_version": platform.python_version(),
           "pytest_version": pytest.__version__, "python": sys.executable, "pid": _PID})


def pytest_configure(config):
    # Under pytest-xdist only the controller reports; workers stay silent.
    if hasattr(config, "workerinput"):
        _state["fh"] = None
    _state["config"] = config


def pytest_sessionstart(session):
    _emit({"k": "start", "rootdir": str(session.config.rootpath)})


def _code_hash(session):
    """sha256 (first 16 bytes, hex) over the collected test files, the conftest.py files that
    applied and the ini file: each as its path relative to rootdir plus its bytes, sorted."""
    config = session.config
    root = str(config.rootpath)
    paths = set()
    for item in session.items:
        path = getattr(item, "path", None)
        if path is not None:
            paths.add(str(path))
    for plugin in config.pluginmanager.get_plugins():
        # Only modules: some plugin objects answer any attribute, __file__ included.
        source = getattr(plugin, "__file__", None) if type(plugin) is type(os) else None
        if isinstance(source, str) and os.path.basename(source) == "conftest.py":
            paths.add(str(source))
    if config.inipath is not None:
        paths.add(str(config.inipath))
    digest = hashlib.sha256()
    for path in sorted(paths):
        try:
            with open(path, "rb") as handle:
                data = handle.read()
        except OSError:
            # A test item that is not a file (a doctest of a module gone, a plugin's own item): skip it.
            continue
        name = os.path.relpath(path, root).encode("utf-8", "backslashreplace")
        # Length-prefixed, so no two different file sets can produce the same byte stream.
        digest.update(b"%d:%s%d:" % (len(name), name, len(data)))
        digest.update(data)
    return digest.hexdigest()[:32]


def pytest_collection_finish(session):
    record = {"k": "collected", "n": len(session.items)}
    try:
        record["code_hash"] = _code_hash(session)
    except Exception:  # never let the fingerprint break a run: the result just carries none
        record["code_hash"] = None
    if _COLLECT:
        record["ids"] = [_text(item.nodeid) for item in session.items]
    _emit(record)


def pytest_deselected(items):
    _emit({"k": "other", "cat": "deselected", "n": len(items)})


def pytest_warning_recorded(warning_message, when, nodeid, location):
    _emit({"k": "other", "cat": "warnings", "n": 1})


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item, nextitem):
    _state["markers"][item.nodeid] = list(dict.fromkeys(mark.name for mark in item.iter_markers()))


def _message(report, category):
    if category in ("xfailed", "xpassed"):
        reason = getattr(report, "wasxfail", "") or ""
        if reason:
            return _text(reason.splitlines()[0])
    longrepr = report.longrepr
    if longrepr is None:
        return None
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return _text(str(longrepr[2]).splitlines()[0] if longrepr[2] else "")
    crash = getattr(longrepr, "reprcrash", None)
    if crash is not None and crash.message:
        return _text(crash.message.splitlines()[0])
    text = str(longrepr)
    lines = [line for line in text.splitlines() if line.strip()]
    error_lines = [line[1:].strip() for line in lines if line.startswith("E ")]
    if error_lines:
        return _text(error_lines[-1])
    return _text(lines[0].strip()) if lines else None


def _sections(report, phase):
    out, err = [], []
    for title, content in report.sections:
        if title == "Captured stdout " + phase:
            out.append(content)
        elif title == "Captured stderr " + phase:
            err.append(content)
    return "".join(out) or None, "".join(err) or None


def _entry(report, category, when):
    outcome = "error" if category == "error" else category
    location = getattr(report, "location", None) or (None, None, None)
    duration = float(getattr(report, "duration", 0.0) or 0.0)
    if when == "call":
        duration += _state["setup"].pop(report.nodeid, 0.0)
    longrepr = None
    if report.longrepr is not None and not (outcome == "skipped" and isinstance(report.longrepr, tuple)):
        longrepr = _text(report.longreprtext)
    if when == "collect":
        file = report.nodeid.split("::")[0] or (str(report.fspath) if report.fspath else "")
        line = None
    else:
        file = location[0]
        line = location[1] + 1 if isinstance(location[1], int) else None
    return {
        "k": "entry",
        "nodeid": _text(report.nodeid),
        "outcome": outcome,
        "when": when,
        "duration": duration,
        "file": _text(file),
        "line": line,
        "markers": _state["markers"].get(report.nodeid, []),
        "message": _message(report, category),
        "longrepr": longrepr,
        "stdout": _text(report.capstdout or None) if when != "collect" else None,
        "stderr": _text(report.capstderr or None) if when != "collect" else None,
    }


def _category(report):
    """The summary-line category of this report, exactly as the terminal reporter filed it."""
    config = _state["config"]
    terminal = _state["terminal"]
    if terminal is None:
        terminal = _state["terminal"] = config.pluginmanager.get_plugin("terminalreporter") or False
    stats = getattr(terminal, "stats", None)
    if isinstance(stats, dict):
        # We run after the terminal reporter (trylast): the report it just filed is last in its list.
        for category, reports in stats.items():
            if reports and reports[-1] is report:
                return category
    # No terminal reporter (-p no:terminal): ask the hook it would have asked.
    status = config.hook.pytest_report_teststatus(report=report, config=config)
    return status[0] if status else ""


@pytest.hookimpl(trylast=True)
def pytest_runtest_logreport(report):
    if _state["fh"] is None:
        return
    category = _category(report)
    counted = getattr(report, "count_towards_summary", True)
    if category in _OUTCOMES:
        if counted:
            _emit(_entry(report, category, report.when))
        return
    if category:
        if counted:
            _emit({"k": "other", "cat": category, "n": 1})
        return
    if report.when == "setup":
        _state["setup"][report.nodeid] = float(report.duration or 0.0)
    elif report.when == "teardown":
        out, err = _sections(report, "teardown")
        _state["teardowns"].append([_text(report.nodeid), float(report.duration or 0.0), _text(out), _text(err)])


def pytest_collectreport(report):
    if _state["fh"] is None or not getattr(report, "count_towards_summary", True):
        return
    if report.failed:
        _emit(_entry(report, "error", "collect"))
    elif report.skipped:
        _emit(_entry(report, "skipped", "collect"))


def pytest_keyboard_interrupt(excinfo):
    message = str(excinfo.value) or excinfo.typename
    _emit({"k": "interrupt", "message": _text(message)})


def pytest_internalerror(excrepr, excinfo):
    _emit({"k": "internal", "message": _text(str(excrepr))})


def pytest_sessionfinish(session, exitstatus):
    _emit({"k": "finish", "exitstatus": int(exitstatus)})
'''

PLUGIN_DIGEST = hashlib.sha256(PLUGIN_SOURCE.encode("utf-8")).hexdigest()[:16]
PLUGIN_MODULE = f"distmon_pytestrun_{PLUGIN_DIGEST}"


def __virtual__():
    if not hasattr(os, "killpg") or not hasattr(os, "waitid"):
        return (False, "pytestrun needs a POSIX minion (process groups and waitid)")
    try:
        import psutil  # noqa: F401  (a Salt dependency; needed to kill a timed-out process tree)
    except ImportError:
        return (False, "pytestrun needs the psutil package in the minion's Python")
    try:
        for name in LIBRARY_PROBES:
            _lib(name)
    except (ImportError, AttributeError):
        return (False, "pytestrun: the shared library _utils/distmon_*.py is not loaded: run saltutil.sync_all "
                       "(or pip install saltext-distmon)")
    return __virtualname__


def _lib(name: str):
    """``module.function`` from the synced ``_utils`` library, else from the installed saltext-distmon package."""
    module, _, function = name.partition(".")
    return __utils__[name] if name in __utils__ else getattr(importlib.import_module(_PACKAGE + module), function)


# ---------------------------------------------------------------- helpers


def _utc_now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _work_root() -> str:
    return os.path.join(__opts__["cachedir"], "pytestrun")


def _split_paths(path: Any) -> list[str]:
    """A list, or a comma-separated string; commas inside [...] (parametrize ids) do not split."""
    if isinstance(path, (list, tuple)):
        items = []
        for item in path:
            if not isinstance(item, str):
                raise SaltInvocationError(f"path entries must be strings, got {type(item).__name__}: {item!r}")
            items.append(item)
    elif isinstance(path, str):
        items, depth, current = [], 0, []
        for char in path:
            if char == "[":
                depth += 1
            elif char == "]" and depth:
                depth -= 1
            if char == "," and depth == 0:
                items.append("".join(current))
                current = []
            else:
                current.append(char)
        items.append("".join(current))
    else:
        raise SaltInvocationError(f"path must be a string or a list of strings, got {type(path).__name__}")
    items = [item.strip() for item in items if item.strip()]
    if not items:
        raise SaltInvocationError("path is empty: give a test file, directory, node id or salt:// path")
    return items


def _split_args(args: Any) -> list[str]:
    if args is None or args == "":
        return []
    if isinstance(args, str):
        try:
            return shlex.split(args)
        except ValueError as err:
            raise SaltInvocationError(f"args {args!r} cannot be split like a shell would: {err}") from err
    if isinstance(args, (list, tuple)):
        out = []
        for item in args:
            if isinstance(item, bool) or not isinstance(item, (str, int, float)):
                raise SaltInvocationError(f"args entries must be strings, got {type(item).__name__}: {item!r}")
            out.append(str(item))
        return out
    raise SaltInvocationError(f"args must be a string or a list of strings, got {type(args).__name__}")


def _check_env(env: Any) -> dict[str, str]:
    if env is None or env == "":
        return {}
    if not isinstance(env, dict):
        raise SaltInvocationError(f"env must be a mapping of variable names to values, got {type(env).__name__}")
    out = {}
    for key, value in env.items():
        if not isinstance(key, str) or not key or "=" in key or "\0" in key:
            raise SaltInvocationError(f"env has an invalid variable name: {key!r}")
        text = "" if value is None else str(value)
        if "\0" in text:
            raise SaltInvocationError(f"env value of {key} contains a NUL byte")
        out[key] = text
    return out


def _check_timeout(timeout: Any) -> float | None:
    if timeout is None or timeout == 0:
        return None
    try:
        value = float(timeout)
    except (TypeError, ValueError) as err:
        raise SaltInvocationError(f"timeout must be a number of seconds, got {timeout!r}") from err
    if not value > 0:
        raise SaltInvocationError(f"timeout must be positive (or 0 for none), got {timeout!r}")
    return value


def _max_output(max_output: Any) -> int:
    if max_output is None:
        max_output = __salt__["config.get"]("pytestrun.max_output", DEFAULT_MAX_OUTPUT)
    try:
        value = int(max_output)
    except (TypeError, ValueError) as err:
        raise SaltInvocationError(f"max_output must be a number of bytes, got {max_output!r}") from err
    if value < 1:
        raise SaltInvocationError(f"max_output must be at least 1 byte, got {max_output!r}")
    return value


def _cap(text: str | None, limit: int) -> str | None:
    if text is None:
        return None
    data = text.encode("utf-8", "backslashreplace")
    if len(data) <= limit:
        return text
    return data[:limit].decode("utf-8", "ignore") + f"\u2026[truncated {len(data) - limit} bytes]"


def _resolve_python(python: str | None) -> str:
    if python is None or python == "":
        own = sys.executable or shutil.which("python3") or ""
        import importlib.util

        if not own or importlib.util.find_spec("pytest") is None:
            raise CommandExecutionError(
                f"pytest is not installed for the minion's Python ({own or 'unknown'}): install the "
                "'pytest' package into it, or pass python=<a virtualenv's python that has pytest>"
            )
        return own
    if not isinstance(python, str):
        raise SaltInvocationError(f"python must be a path to an interpreter, got {type(python).__name__}")
    candidate = python if os.sep in python else (shutil.which(python) or python)
    if not os.path.isfile(candidate):
        raise CommandExecutionError(f"the Python interpreter {python} does not exist on this minion")
    if not os.access(candidate, os.X_OK):
        raise CommandExecutionError(f"the Python interpreter {python} is not executable")
    return os.path.abspath(candidate)


class SaltTree(NamedTuple):
    """Where a salt:// run's tests live on this minion, and which pytest config governs them."""

    saltenv: str
    # <cachedir>/files/<saltenv>: the cached salt:// root, given to pytest as --rootdir.
    root: str
    # The tree's own config file (cached), or None when the tree has none and ours (empty) applies.
    config: str | None


def _salt_levels(rel_dir: str) -> list[str]:
    """``a/b`` -> ``["a/b", "a", ""]``: a directory of the salt:// tree and each one above it, to the root."""
    levels = []
    while rel_dir:
        levels.append(rel_dir)
        rel_dir = posixpath.dirname(rel_dir)
    levels.append("")
    return levels


def _has_pytest_config(local: str) -> bool:
    """Whether pytest would take this file as its config file if it found it (findpaths' rules)."""
    name = os.path.basename(local)
    if name in ("pytest.toml", ".pytest.toml", "pytest.ini", ".pytest.ini"):
        return True  # these count even when empty
    try:
        with open(local, encoding="utf-8", errors="replace") as handle:
            text = handle.read()
    except OSError as err:
        raise CommandExecutionError(f"could not read the cached {local}: {err}") from err
    if name == "pyproject.toml":
        try:
            import tomllib
        except ImportError:  # Python 3.10: look for the table headers pytest reads
            return re.search(r"^\s*\[\s*tool\.pytest\s*[\].]", text, re.MULTILINE) is not None
        try:
            tool = tomllib.loads(text).get("tool")
        except tomllib.TOMLDecodeError:
            return True  # pytest would refuse it too: let it say why, as a usage_error result
        return isinstance(tool, dict) and isinstance(tool.get("pytest"), dict)
    section = "pytest" if name == "tox.ini" else "tool:pytest"
    return re.search(rf"^\[{re.escape(section)}\]\s*$", text, re.MULTILINE) is not None


def _cache_salt_file(rel: str, env: str) -> str:
    local = __salt__["cp.cache_file"](f"salt://{rel}", saltenv=env)
    if not local:
        raise CommandExecutionError(f"salt://{rel}: the master lists it but the minion could not fetch it")
    return local


def _fetch_salt_path(rel: str, saltenv: str, served: set[str]) -> tuple[str, bool]:
    """Cache a salt:// file or directory from the master; return (local path, is a directory)."""
    if rel in served:
        return _cache_salt_file(rel, saltenv), False
    if not any(name.startswith(rel + "/") for name in served):
        raise CommandExecutionError(f"salt://{rel} is not served by the master (saltenv {saltenv})")
    cached = __salt__["cp.cache_dir"](f"salt://{rel}", saltenv=saltenv) or []
    local_dir = os.path.join(__opts__["cachedir"], "files", saltenv, *rel.split("/"))
    if not cached or not os.path.isdir(local_dir):
        raise CommandExecutionError(f"salt://{rel}: the minion could not fetch this directory from the master")
    _prune_stale(local_dir, {os.path.normpath(path) for path in cached})
    return local_dir, True


def _prune_stale(local_dir: str, keep: set[str]) -> None:
    """Files the master no longer serves must not run again from the minion's cache."""
    for root, dirs, files in os.walk(local_dir):
        dirs[:] = [name for name in dirs if name not in ("__pycache__", ".pytest_cache")]
        for name in files:
            full = os.path.normpath(os.path.join(root, name))
            if full not in keep:
                try:
                    os.unlink(full)
                except OSError as err:
                    log.warning("pytestrun: could not remove stale cached file %s: %s", full, err)


def _sync_conftests(rel_dirs: set[str], env: str, root: str, served: set[str]) -> None:
    """conftest.py of every directory from the salt:// root down to the tests, as on the master; stale ones go."""
    for rel_dir in sorted(rel_dirs):
        rel = posixpath.join(rel_dir, "conftest.py")
        if rel in served:
            _cache_salt_file(rel, env)
            continue
        stale = os.path.join(root, *rel.split("/"))
        if os.path.isfile(stale):
            try:
                os.unlink(stale)
            except OSError as err:
                log.warning("pytestrun: could not remove stale cached file %s: %s", stale, err)


def _tree_config(start: str, env: str, served: set[str]) -> str | None:
    """The config file pytest would pick in the salt:// tree: nearest directory first, its precedence by name."""
    for level in _salt_levels(start):
        for name in CONFIG_NAMES:
            rel = posixpath.join(level, name)
            if rel in served:
                local = _cache_salt_file(rel, env)
                if _has_pytest_config(local):
                    return local
    return None


def _resolve_salt_paths(paths: list[str], saltenv: str) -> tuple[list[str], SaltTree]:
    """Cache salt:// paths (one saltenv per run) with their conftest.py files and config; return pytest's targets."""
    import salt.utils.url

    envs, parsed = set(), []
    for given in paths:
        url, sep, node = given.partition("::")
        rel, url_env = salt.utils.url.parse(url)
        rel = (rel or "").strip("/")
        if not rel:
            raise SaltInvocationError(f"{url}: name a file or directory under salt://, not the root")
        envs.add(url_env or saltenv)
        parsed.append((rel, sep, node))
    if len(envs) > 1:
        raise SaltInvocationError(
            f"salt:// paths of one run must come from one saltenv (node ids are relative to its root), "
            f"got {', '.join(sorted(envs))}"
        )
    env = envs.pop()
    # One listing of the whole environment: the tree's config file and conftest.py may sit at its root.
    served = set(__salt__["cp.list_master"](saltenv=env) or [])
    root = os.path.join(__opts__["cachedir"], "files", env)
    targets, test_dirs, above = [], [], set()
    for rel, sep, node in parsed:
        local, is_dir = _fetch_salt_path(rel, env, served)
        if node and is_dir:
            raise SaltInvocationError(f"node id salt://{rel}{sep}{node}: the part before '::' must be a file")
        test_dir = rel if is_dir else posixpath.dirname(rel)
        test_dirs.append(test_dir)
        # A directory's own conftest.py files came with cp.cache_dir; those above it did not.
        above.update(_salt_levels(posixpath.dirname(rel) if is_dir else test_dir))
        targets.append(local + sep + node)
    _sync_conftests(above, env, root, served)
    start = posixpath.commonpath(test_dirs) if all(test_dirs) else ""
    return targets, SaltTree(env, root, _tree_config(start, env, served))


def _resolve_paths(paths: list[str], cwd: str | None, saltenv: str,
                   pyargs: bool) -> tuple[list[str], SaltTree | None]:
    """Turn each given path into what pytest gets on its command line (and the salt:// tree, if any)."""
    remote = [given for given in paths if given.startswith("salt://")]
    if remote:
        if len(remote) != len(paths):
            raise SaltInvocationError(
                "salt:// and local paths cannot be mixed in one run: node ids of salt:// tests are "
                "relative to the salt:// root, those of local tests to pytest's own rootdir"
            )
        return _resolve_salt_paths(paths, saltenv)
    resolved = []
    for given in paths:
        target, sep, node = given.partition("::")
        if pyargs and not os.path.exists(target if os.path.isabs(target) else os.path.join(cwd or "", target)):
            resolved.append(given)  # a module name for --pyargs
            continue
        if not os.path.isabs(target):
            if not cwd:
                raise SaltInvocationError(f"path {given} is relative: give an absolute path, or cwd=")
            target = os.path.join(cwd, target)
        if not os.path.exists(target):
            raise CommandExecutionError(f"path {target} does not exist on this minion")
        if not os.access(target, os.R_OK):
            raise CommandExecutionError(f"path {target} is not readable on this minion")
        if node and not os.path.isfile(target):
            raise SaltInvocationError(f"node id {given}: the part before '::' must be a file")
        resolved.append(os.path.abspath(target) + sep + node)
    return resolved, None


def _empty_config() -> str:
    """Our explicit, empty pytest config: with it, no ini file above the minion's cache is looked for."""
    path = os.path.join(_work_root(), "empty.ini")
    if not os.path.exists(path):
        os.makedirs(_work_root(), exist_ok=True)
        temp = f"{path}.{os.getpid()}.tmp"
        with open(temp, "w", encoding="utf-8") as handle:
            handle.write("[pytest]\n")
        os.replace(temp, path)
    return path


def _gives_option(extra: list[str], *names: str) -> bool:
    """Whether the user's args already set one of these pytest options (theirs win over ours)."""
    for arg in extra:
        if arg == "--":
            return False
        for name in names:
            # Long options also as --name=value; the short -c also glued to its value (-cfile).
            if arg == name or arg.startswith(name + "=") or (len(name) == 2 and arg.startswith(name)):
                return True
    return False


def _build_argv(interpreter: str, extra: list[str], targets: list[str], tree: SaltTree | None,
                collect: bool = False) -> list[str]:
    """pytest's command line; for a salt:// run, the rootdir and config that make node ids minion-independent."""
    argv = [interpreter, "-m", "pytest", "-p", PLUGIN_MODULE]
    if collect:
        argv += ["--collect-only", "-q"]
    if tree is not None:
        # Node ids are relative to the rootdir: the salt:// root gives `dir/test_x.py::test_y` on
        # every minion, wherever its cachedir is.
        if not _gives_option(extra, "--rootdir"):
            argv.append(f"--rootdir={tree.root}")
        if not _gives_option(extra, "-c", "--config-file"):
            if tree.config is not None:
                argv += ["-c", tree.config]
            else:
                # Without -c, pytest would search upwards from the cache and could take an ini
                # (addopts, markers, timeout...) that belongs to whatever holds the cachedir.
                argv += ["-c", _empty_config()]
                if not _gives_option(extra, "--confcutdir"):
                    # conftest.py files above the salt:// root are not the tree's either.
                    argv.append(f"--confcutdir={tree.root}")
    return [*argv, *extra, *targets]


def _plugin_dir() -> str:
    directory = os.path.join(_work_root(), "plugin")
    target = os.path.join(directory, PLUGIN_MODULE + ".py")
    if not os.path.exists(target):
        os.makedirs(directory, exist_ok=True)
        temp = f"{target}.{os.getpid()}.tmp"
        with open(temp, "w", encoding="utf-8") as handle:
            handle.write(PLUGIN_SOURCE)
        os.replace(temp, target)
    return directory


def _signal_tree(pid: int, descendants: list, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
    for proc in descendants:
        try:
            proc.send_signal(sig)
        except Exception as err:  # noqa: BLE001  (gone already, or never ours)
            log.debug("pytestrun: could not signal pid %s: %s", proc.pid, err)


def _marked_processes(marker: str, since: float) -> list:
    """Processes carrying this run's marker. Only those created since the run began can, so
    reading every process's environment (the costly part on a busy minion) is skipped."""
    import psutil

    found = []
    me = os.getpid()
    for proc in psutil.process_iter(["create_time"]):
        if proc.pid == me or (proc.info["create_time"] or 0) < since:
            continue
        try:
            if proc.environ().get(MARKER_VAR) == marker:
                found.append(proc)
        except (psutil.Error, OSError):
            continue
    return found


def _kill_tree(pid: int, marker: str, since: float) -> int:
    """SIGTERM then SIGKILL pytest's group, its recorded descendants and anything carrying our marker."""
    import psutil

    try:
        descendants = psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        descendants = []
    descendants += [proc for proc in _marked_processes(marker, since) if proc not in descendants and proc.pid != pid]
    _signal_tree(pid, descendants, signal.SIGTERM)
    deadline = time.monotonic() + KILL_GRACE
    while time.monotonic() < deadline:
        leader_done = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
        if leader_done and not any(_alive(proc) for proc in descendants):
            break
        time.sleep(0.02)
    _signal_tree(pid, descendants, signal.SIGKILL)
    for proc in _marked_processes(marker, since):
        try:
            proc.kill()
        except psutil.Error:
            pass
    return len(descendants) + 1


def _alive(proc) -> bool:
    import psutil

    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _tail(path: str, limit: int = 4096) -> str:
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - limit))
            return handle.read().decode("utf-8", "replace").strip()
    except OSError:
        return ""


def _read_stream(path: str) -> list[dict]:
    records = []
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                try:
                    records.append(json.loads(line))
                except ValueError:
                    continue  # a line cut short by a kill
    except FileNotFoundError:
        pass
    return records


def _execute(argv: list[str], cwd: str, env: dict[str, str], timeout: float | None,
             max_output: int, collect: bool) -> dict:
    """Run pytest with our plugin; return the raw facts of the run."""
    run_dir = os.path.join(_work_root(), "runs", uuid.uuid4().hex)
    os.makedirs(run_dir)
    stream = os.path.join(run_dir, "stream.jsonl")
    marker = os.path.basename(run_dir)
    child_env = dict(os.environ)
    child_env.update(env)
    plugin_dir = _plugin_dir()
    child_env["PYTHONPATH"] = os.pathsep.join(filter(None, [plugin_dir, child_env.get("PYTHONPATH")]))
    child_env["DISTMON_PYTESTRUN_OUT"] = stream
    child_env["DISTMON_PYTESTRUN_MAX_OUTPUT"] = str(max_output)
    child_env["DISTMON_PYTESTRUN_COLLECT"] = "1" if collect else "0"
    child_env[MARKER_VAR] = marker
    timed_out = threading.Event()
    killed = [0]
    try:
        # Files, not pipes: a grandchild that keeps a pipe open would block us until the timeout.
        with open(os.path.join(run_dir, "stdout"), "wb") as out, open(os.path.join(run_dir, "stderr"), "wb") as err:
            started_at = _utc_now()
            start = time.monotonic()
            # create_time has clock-tick resolution: a second of slack never misses a child.
            spawned_since = time.time() - 1.0
            try:
                proc = subprocess.Popen(argv, cwd=cwd, env=child_env, stdin=subprocess.DEVNULL,
                                        stdout=out, stderr=err, start_new_session=True, close_fds=True)
            except OSError as exc:
                raise CommandExecutionError(f"could not start {argv[0]}: {type(exc).__name__}: {exc}") from exc

            def on_timeout():
                timed_out.set()
                killed[0] = _kill_tree(proc.pid, marker, spawned_since)

            timer = None
            if timeout is not None:
                timer = threading.Timer(timeout, on_timeout)
                timer.daemon = True
                timer.start()
            try:
                # Wait without reaping, so the process group id cannot be reused before we clean it.
                while True:
                    try:
                        os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
                        break
                    except InterruptedError:
                        continue
                    except ChildProcessError:
                        break
                duration = time.monotonic() - start
                finished_at = _utc_now()
            finally:
                if timer is not None:
                    timer.cancel()
                    if timed_out.is_set():
                        timer.join()
                # Whatever the tests left behind in pytest's process group goes with it, and so
                # does anything that escaped into a session of its own (it still carries our
                # marker): pytest may have died by a signal without any timeout firing.
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
                for leftover in _marked_processes(marker, spawned_since):
                    if leftover.pid != proc.pid:
                        try:
                            leftover.kill()
                        except Exception as exc:  # noqa: BLE001  (gone already)
                            log.debug("pytestrun: could not kill pid %s: %s", leftover.pid, exc)
                returncode = proc.wait()
        return {
            "records": _read_stream(stream),
            "returncode": returncode,
            "timed_out": timed_out.is_set(),
            "killed": killed[0],
            "started_at": started_at,
            "finished_at": finished_at,
            "duration": round(duration, 6),
            "stderr_tail": _tail(os.path.join(run_dir, "stderr")),
            "stdout_tail": _tail(os.path.join(run_dir, "stdout")),
        }
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


def _pytest_missing(raw: dict, python: str) -> None:
    """Raise the clear error when the interpreter could not even import pytest or our plugin."""
    if any(rec.get("k") == "hello" for rec in raw["records"]):
        return
    if raw["timed_out"]:
        raise CommandExecutionError(f"pytest did not start within the timeout with {python}")
    stderr = raw["stderr_tail"]
    if "No module named pytest" in stderr:
        raise CommandExecutionError(
            f"pytest is not installed for {python}: install the 'pytest' package "
            f"({python} -m pip install pytest)"
        )
    detail = stderr.splitlines()[-1] if stderr else f"exit code {raw['returncode']}"
    raise CommandExecutionError(f"could not start pytest with {python}: {detail}")


def _build_result(raw: dict, max_output: int) -> dict:
    counts = dict.fromkeys(("passed", "failed", "skipped", "xfailed", "xpassed", "errors"), 0)
    other: dict[str, int] = {}
    tests: list[dict] = []
    primary: dict[str, dict] = {}
    facts: dict[str, Any] = {}
    for rec in raw["records"]:
        # Passed teardowns of earlier tests: their time and output belong to those tests' entries.
        for nodeid, duration, stdout, stderr in rec.pop("teardowns", ()):
            entry = primary.get(nodeid)
            if entry is not None:
                entry["duration"] += duration
                if stdout:
                    entry["stdout"] = _cap((entry["stdout"] or "") + stdout, max_output)
                if stderr:
                    entry["stderr"] = _cap((entry["stderr"] or "") + stderr, max_output)
        kind = rec.pop("k", None)
        if kind == "entry":
            outcome = rec["outcome"]
            if outcome not in OUTCOMES:
                continue
            counts["errors" if outcome == "error" else outcome] += 1
            tests.append(rec)
            nodeid = rec["nodeid"]
            if rec["when"] == "call" or nodeid not in primary:
                primary[nodeid] = rec
            elif rec["when"] == "teardown":
                # The test's own entry carries setup + call + teardown, a failed teardown too.
                primary[nodeid]["duration"] += rec["duration"]

        elif kind == "other":
            other[rec["cat"]] = other.get(rec["cat"], 0) + int(rec.get("n", 1))
        elif kind in ("hello", "start", "collected", "finish", "interrupt", "internal"):
            facts[kind] = rec
    for entry in tests:
        entry["duration"] = round(float(entry["duration"]), 6)
    return {"counts": counts, "counts_other": other, "tests": tests, "facts": facts}


def _status(raw: dict, facts: dict, timeout: float | None) -> tuple[str, str | None, int | None]:
    """(status, message, exitcode) from how the process ended and what the plugin saw."""
    returncode = raw["returncode"]
    if raw["timed_out"]:
        return ("timeout", f"pytest did not finish within {timeout:g} s: killed its process tree "
                f"({raw['killed']} processes)", None)
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return ("error", f"pytest was killed by {name} before it finished", None)
    finished = "finish" in facts
    status = EXIT_STATUS.get(returncode)
    if status == "usage_error":
        return status, _last_lines(raw["stderr_tail"] or raw["stdout_tail"]) or "pytest usage error", returncode
    if status == "internal_error":
        # The traceback's last line names the exception; the whole of it is in the minion's log.
        text = facts.get("internal", {}).get("message") or raw["stdout_tail"]
        if text:
            log.info("pytestrun: pytest internal error:\n%s", text)
        return status, "INTERNALERROR " + (_last_lines(text, 1) or "(no detail)"), returncode
    if status is None or not finished:
        detail = _last_lines(raw["stderr_tail"])
        message = f"pytest exited with code {returncode} before its session finished"
        return "error", message + (f": {detail}" if detail else ""), returncode
    if status == "interrupted":
        message = facts.get("interrupt", {}).get("message") or "pytest was interrupted"
        return status, message, returncode
    if status == "no_tests":
        return status, "no tests ran", returncode
    return status, None, returncode


def _last_lines(text: str, count: int = 12) -> str:
    lines = [line for line in (text or "").splitlines() if line.strip()]
    return "\n".join(lines[-count:])


def _save_last(result: dict) -> None:
    path = os.path.join(_work_root(), "last.json")
    temp = f"{path}.{os.getpid()}.tmp"
    try:
        os.makedirs(_work_root(), exist_ok=True)
        with open(temp, "w", encoding="utf-8") as handle:
            json.dump(result, handle)
        os.replace(temp, path)
    except OSError as err:
        log.warning("pytestrun: could not keep the last result in %s: %s", path, err)


# -- events on the master's bus ------------------------------------------------------------------

EVENT_PREFIX = "distmon/run/"
DEFAULT_EVENT_TIMEOUT = 5.0
# Node ids per list in one event: the bus carries the gist, the dashboard has the rest.
MAX_EVENT_IDS = 500
_FAIL = frozenset({"failed", "error"})
_PASS = frozenset({"passed", "xpassed", "xfailed"})


def _verdicts(tests: list[dict]) -> dict[str, str]:
    """nodeid -> "fail" | "pass" for this run (worst entry wins; skipped gives no verdict)."""
    verdicts: dict[str, str] = {}
    for entry in tests:
        outcome, nodeid = entry.get("outcome"), entry.get("nodeid")
        if outcome in _FAIL:
            verdicts[nodeid] = "fail"
        elif outcome in _PASS and verdicts.get(nodeid) != "fail":
            verdicts[nodeid] = "pass"
    return verdicts


def _history_path(paths: list[str], args: list[str]) -> str:
    key = hashlib.sha256(json.dumps([sorted(paths), args]).encode("utf-8")).hexdigest()[:32]
    return os.path.join(_work_root(), "history", f"{key}.json")


def _compare_with_previous(paths: list[str], args: list[str], tests: list[dict]) -> tuple[list[str], list[str]]:
    """(new failures, fixed) vs this minion's previous run of the same paths and args; records this run.

    A test that fails now and did not fail in its last verdict (or never ran here) is new; one that
    passes now after failing is fixed. Skips keep the previous verdict, like the dashboard does.
    """
    path = _history_path(paths, args)
    try:
        with open(path, encoding="utf-8") as handle:
            previous = json.load(handle)
        if not isinstance(previous, dict):
            previous = {}
    except (OSError, ValueError):
        previous = {}
    now = _verdicts(tests)
    new = sorted(nodeid for nodeid, verdict in now.items() if verdict == "fail" and previous.get(nodeid) != "fail")
    fixed = sorted(nodeid for nodeid, verdict in now.items() if verdict == "pass" and previous.get(nodeid) == "fail")
    merged = {**previous, **now}
    temp = f"{path}.{os.getpid()}.tmp"
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(temp, "w", encoding="utf-8") as handle:
            json.dump(merged, handle)
        os.replace(temp, path)
    except OSError as err:
        log.warning("pytestrun: could not keep the verdicts in %s: %s", path, err)
    _forget_old_history(os.path.dirname(path))
    return new, fixed


# Verdicts of paths not run for this long are forgotten (each re-run of some node ids has its own file).
HISTORY_KEEP_SECONDS = 30 * 86400


def _forget_old_history(directory: str) -> None:
    cutoff = time.time() - HISTORY_KEEP_SECONDS
    try:
        with os.scandir(directory) as entries:
            for entry in entries:
                try:
                    if entry.name.endswith(".json") and entry.stat().st_mtime < cutoff:
                        os.unlink(entry.path)
                except OSError:
                    continue
    except OSError:
        return


def _run_event(result: dict, jid: str | None, new: list[str], fixed: list[str],
               rerun_wanted: bool = True, saltenv: str = "base") -> tuple[str, dict]:
    """The (tag, data) of the event fired after a run (docs/events.md)."""
    failed = _lib("distmon_summary.failed_nodeids")(result["tests"])
    data = {
        "jid": jid,
        "minion_id": result.get("minion_id"),
        "status": result["status"],
        "paths": result["paths"],
        "args": result["args"],
        "counts": result["counts"],
        "started_at": result["started_at"],
        "finished_at": result["finished_at"],
        "duration": result["duration"],
        "code_hash": result.get("code_hash"),
        "rerun_of": result.get("rerun_of"),
        "new": new[:MAX_EVENT_IDS],
        "fixed": fixed[:MAX_EVENT_IDS],
        "failed": failed[:MAX_EVENT_IDS],
        "truncated": any(len(ids) > MAX_EVENT_IDS for ids in (new, fixed, failed)),
        # What a reactor needs to re-run the new failures here (never a re-run's own).
        "rerun": {
            "wanted": bool(rerun_wanted and new and not result.get("rerun_of")),
            "paths": _lib("distmon_summary.rerun_paths")(result, new[:MAX_EVENT_IDS]),
            "saltenv": saltenv,
        },
    }
    return EVENT_PREFIX + result["status"], data


def _fire_best_effort(tag: str, data: dict) -> None:
    """Fire on the master's bus in a thread; wait at most ``pytestrun.event_timeout`` seconds."""
    if _lib("distmon_events.masterless")(__opts__) or "event.fire_master" not in __salt__:
        return
    try:
        timeout = float(__salt__["config.get"]("pytestrun.event_timeout", DEFAULT_EVENT_TIMEOUT))
    except (TypeError, ValueError):
        timeout = DEFAULT_EVENT_TIMEOUT
    _lib("distmon_events.fire_best_effort")(__salt__["event.fire_master"], tag, data, timeout,
                                            about=f"job {data.get('jid')} minion {data.get('minion_id')}")


def _off(value) -> bool:
    return value in (False, "false", "False", 0, "0", "no", "off")


def _announce(result: dict, jid: str | None, rerun_new_failures: bool | None = None, saltenv: str = "base") -> dict:
    """Compare with the previous run and fire the event; returns {"new": [...], "fixed": [...]}."""
    new, fixed = _compare_with_previous(result["paths"], result["args"], result["tests"])
    if not _off(__salt__["config.get"]("pytestrun.events", True)):
        if rerun_new_failures is None:
            rerun_new_failures = not _off(__salt__["config.get"]("pytestrun.rerun_new_failures", True))
        tag, data = _run_event(result, jid, new, fixed, bool(rerun_new_failures), saltenv)
        _fire_best_effort(tag, data)
    return {"new": new, "fixed": fixed}


def _check_kwargs(kwargs: dict) -> None:
    unknown = sorted(key for key in kwargs if not key.startswith("__"))
    if unknown:
        raise SaltInvocationError(f"unknown argument(s): {', '.join(unknown)}")


def _saltenv(saltenv: Any) -> str:
    """The saltenv for salt:// paths: the argument, else the minion's config, else base (as cp.cache_file)."""
    if saltenv is not None and saltenv != "":
        if not isinstance(saltenv, str):
            raise SaltInvocationError(f"saltenv must be a string, not {saltenv!r}")
        return saltenv
    return __opts__.get("saltenv") or "base"


def _prepare(path, args, python, cwd, env, saltenv, collect):
    """Check every argument, fetch salt:// paths; return (paths as given, args, interpreter, cwd, env, argv)."""
    paths = _split_paths(path)
    extra = _split_args(args)
    if cwd is not None and cwd != "":
        if not isinstance(cwd, str) or not os.path.isabs(cwd):
            raise SaltInvocationError(f"cwd must be an absolute directory path, got {cwd!r}")
        if not os.path.isdir(cwd):
            raise CommandExecutionError(f"cwd {cwd} is not a directory on this minion")
    else:
        cwd = None
    env_vars = _check_env(env)
    interpreter = _resolve_python(python)
    pyargs = "--pyargs" in extra
    targets, tree = _resolve_paths(paths, cwd, _saltenv(saltenv), pyargs)
    if cwd is None:
        first = targets[0].partition("::")[0]
        if os.path.isdir(first):
            cwd = first
        elif os.path.isfile(first):
            cwd = os.path.dirname(first)
        else:
            cwd = _work_root()
            os.makedirs(cwd, exist_ok=True)
    argv = _build_argv(interpreter, extra, targets, tree, collect=collect)
    return paths, extra, interpreter, cwd, env_vars, argv


# ---------------------------------------------------------------- public functions


def run(path: str | list, args: str | list | None = None, timeout: float | None = 600,
        python: str | None = None, cwd: str | None = None, env: dict | None = None,
        max_output: int | None = None, saltenv: str | None = None, rerun_of: str | None = None,
        rerun_new_failures: bool | None = None, **kwargs) -> dict:
    """Run pytest on test files, directories, node ids or salt:// paths; return the results.

    path
        A test file, directory, node id (``file.py::TestX::test_y``), ``salt://``
        file, directory or node id (fetched from the master, layout kept; node ids
        then read ``dir/test_x.py::test_y``, relative to the salt:// root), or
        several as a list or comma-separated (all salt:// or all local).
    args
        Extra pytest arguments, a list or a string split like a shell does.
    timeout
        Seconds before the whole process tree is killed (status ``timeout``); 0: none.
    python
        The interpreter that runs pytest (a virtualenv's python); default: the minion's own.
    cwd
        Working directory for pytest (relative paths are taken from it).
    env
        Extra environment variables for pytest, a mapping.
    max_output
        Cap in bytes for each captured field (default ``pytestrun.max_output`` or 64 KiB).
    saltenv
        The fileserver environment for ``salt://`` paths (``salt://x?saltenv=qa`` also
        works). Default: the minion's ``saltenv`` config, else ``base``, as
        ``cp.cache_file`` does.
    rerun_of
        The jid whose failures this run re-runs (the reactor and ``salt-run distmon.rerun`` set
        it); kept in the result, so the dashboard links the re-run to its original.
    rerun_new_failures
        Whether the event asks the re-run reactor to re-run this run's new failures (default:
        ``pytestrun.rerun_new_failures``, true). A re-run never asks for another.

    The result's ``changes`` holds the node ids that are ``new`` failures and ``fixed`` compared
    with this minion's previous run of the same paths and args; the same lists go out in the
    ``distmon/run/<status>`` event (docs/events.md).

    CLI Example:

    .. code-block:: bash

        salt 'web-*' pytestrun.run /srv/tests/test_x.py
        salt 'web-*' pytestrun.run salt://sample_tests args='-k "not slow" -q' timeout=120
        salt 'web-*' pytestrun.run /srv/tests python=/srv/venv/bin/python
    """
    _check_kwargs(kwargs)
    if rerun_of is not None:
        rerun_of = str(rerun_of)
        if not rerun_of or len(rerun_of) > 128 or not re.fullmatch(r"[0-9A-Za-z_.-]+", rerun_of):
            raise SaltInvocationError(f"rerun_of must be a jid (letters, digits, '_', '.', '-'), got {rerun_of!r}")
    limit = _max_output(max_output)
    seconds = _check_timeout(timeout)
    paths, extra, interpreter, workdir, env_vars, argv = _prepare(path, args, python, cwd, env, saltenv, False)
    raw = _execute(argv, workdir, env_vars, seconds, limit, collect=False)
    _pytest_missing(raw, interpreter)
    built = _build_result(raw, limit)
    facts = built["facts"]
    status, message, exitcode = _status(raw, facts, seconds)
    hello = facts.get("hello", {})
    result = {
        "status": status,
        "exitcode": exitcode,
        "counts": built["counts"],
        "counts_other": built["counts_other"],
        "tests": built["tests"],
        "started_at": raw["started_at"],
        "finished_at": raw["finished_at"],
        "duration": raw["duration"],
        "paths": paths,
        "args": extra,
        "python": interpreter,
        "python_version": hello.get("python_version", ""),
        "pytest_version": hello.get("pytest_version", ""),
        "minion_id": __opts__.get("id", ""),
        "rootdir": facts.get("start", {}).get("rootdir"),
        "code_hash": facts.get("collected", {}).get("code_hash"),
    }
    if message:
        result["message"] = message
    if rerun_of:
        result["rerun_of"] = rerun_of
    result["changes"] = _announce(result, kwargs.get("__pub_jid"), rerun_new_failures, _saltenv(saltenv))
    _save_last(result)
    __context__["retcode"] = 0 if status == "passed" else 1
    return result


def collect(path: str | list, args: str | list | None = None, timeout: float | None = 120,
            python: str | None = None, cwd: str | None = None, env: dict | None = None,
            saltenv: str | None = None, **kwargs) -> list[str]:
    """List the test node ids pytest would run for these paths, without running them.

    Takes the same ``path``, ``args``, ``python``, ``cwd``, ``env`` and ``saltenv`` as
    ``pytestrun.run``. Collection errors and usage errors raise a clear error.

    CLI Example:

    .. code-block:: bash

        salt 'web-*' pytestrun.collect salt://sample_tests
        salt 'web-*' pytestrun.collect /srv/tests args='-m "not slow"'
    """
    _check_kwargs(kwargs)
    seconds = _check_timeout(timeout)
    _, _, interpreter, workdir, env_vars, argv = _prepare(path, args, python, cwd, env, saltenv, True)
    raw = _execute(argv, workdir, env_vars, seconds, DEFAULT_MAX_OUTPUT, collect=True)
    _pytest_missing(raw, interpreter)
    built = _build_result(raw, DEFAULT_MAX_OUTPUT)
    status, message, _ = _status(raw, built["facts"], seconds)
    errors = [entry for entry in built["tests"] if entry["outcome"] == "error"]
    if errors:
        listed = "; ".join(f"{entry['nodeid']}: {entry['message']}" for entry in errors[:10])
        raise CommandExecutionError(f"pytest could not collect {len(errors)} item(s): {listed}")
    if status not in ("passed", "no_tests"):
        raise CommandExecutionError(f"collection ended with status {status}: {message}")
    return list(built["facts"].get("collected", {}).get("ids", []))


def version(python: str | None = None) -> dict:
    """Report the pytest and Python versions of the minion (or of ``python=``).

    CLI Example:

    .. code-block:: bash

        salt '*' pytestrun.version
        salt '*' pytestrun.version python=/srv/venv/bin/python
    """
    interpreter = _resolve_python(python)
    probe = "import json, platform, pytest; print(json.dumps([platform.python_version(), pytest.__version__]))"
    try:
        done = subprocess.run([interpreter, "-c", probe], capture_output=True, text=True, timeout=60,
                              stdin=subprocess.DEVNULL, check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise CommandExecutionError(f"could not run {interpreter}: {type(err).__name__}: {err}") from err
    if done.returncode != 0:
        if "No module named" in done.stderr and "pytest" in done.stderr:
            raise CommandExecutionError(
                f"pytest is not installed for {interpreter}: install the 'pytest' package "
                f"({interpreter} -m pip install pytest)"
            )
        raise CommandExecutionError(f"{interpreter} failed: {_last_lines(done.stderr, 3)}")
    python_version, pytest_version = json.loads(done.stdout.strip().splitlines()[-1])
    return {"python": interpreter, "python_version": python_version, "pytest_version": pytest_version}


def last() -> dict:
    """Return the last result this minion's ``pytestrun.run`` produced (kept in its cache).

    CLI Example:

    .. code-block:: bash

        salt '*' pytestrun.last
    """
    path = os.path.join(_work_root(), "last.json")
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError as err:
        raise CommandExecutionError("no pytestrun.run result on this minion yet") from err
    except (OSError, ValueError) as err:
        raise CommandExecutionError(f"the last result in {path} is unreadable: {err}") from err
