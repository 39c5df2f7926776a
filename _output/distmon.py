"""
Show distmon runs as people read them: one line per minion with its failures, then a table.

Used by the ``distmon`` runner (``distmon.run`` and ``distmon.results``
return ``{"data": ..., "outputter": "distmon"}``, and their progress events
name it too), and on demand for ``pytestrun.run`` from the ``salt`` CLI, where
it replaces the nested dump of every test with a compact summary per minion.
``--out json`` / ``--out yaml`` still give the data itself.

The summaries are the shared ``_utils/distmon_summary.py`` (the runner uses the
same code); sync both to the master with ``salt-run saltutil.sync_all``.

CLI Example:

.. code-block:: bash

    salt-run distmon.run path=salt://sample_tests tgt='web-*'
    salt 'web-*' pytestrun.run salt://sample_tests --out distmon
"""

from __future__ import annotations

import importlib

import salt.loader

__virtualname__ = "distmon"

_UTILS = None


def __virtual__():
    return __virtualname__


def _summary(function: str):
    """A function of ``distmon_summary``; outputters get no ``__utils__``, so load it here, once."""
    global _UTILS
    if _UTILS is None:
        _UTILS = salt.loader.utils(__opts__, whitelist=["distmon_summary"])
    name = f"distmon_summary.{function}"
    if name in _UTILS:
        return _UTILS[name]
    return getattr(importlib.import_module("saltext.distmon.utils.distmon_summary"), function)


def _is_row(value) -> bool:
    """A summary row the runner made (flat counts), as opposed to a raw pytestrun return."""
    return isinstance(value, dict) and "status" in value and "failures" in value and "counts" not in value


def output(data, **kwargs):  # noqa: ARG001 - the outputter interface passes options we do not use
    """
    Render a progress event, the runner's rows, or ``pytestrun.run`` returns keyed by minion id.

    CLI Example:

    .. code-block:: bash

        salt 'web-*' pytestrun.run salt://sample_tests --out distmon
    """
    if isinstance(data, dict) and data.get("suffix") == "progress" and isinstance(data.get("event"), dict):
        return str(data["event"].get("message", ""))
    printable = _summary("printable")
    if not isinstance(data, dict):
        return printable(data)
    progress_line = _summary("progress_line")
    minions = {minion: value for minion, value in data.items() if minion != "retcode" or isinstance(value, dict)}
    if minions and all(_is_row(row) for row in minions.values()):
        # The runner's return: the lines were shown as progress; the table sums them up.
        return _summary("format_table")(minions, list(minions))
    summarize = _summary("summarize_return")
    rows = {minion: summarize(ret) for minion, ret in minions.items()}
    lines = [progress_line(minion, row) for minion, row in sorted(rows.items())]
    if len(rows) > 1:  # --static: every minion at once, so the table too
        lines.extend(["", _summary("format_table")(rows, list(rows))])
    return "\n".join(lines)
