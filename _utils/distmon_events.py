"""
Events on the master's bus: firing that never fails or slows the caller (``pytestrun.run``'s
``distmon/run/<status>`` and the spool's), and the spool's own: ``distmon/spool/backlog`` and
``distmon/spool/drained``.

Fired by ``distmon.store`` (the returner's path) and ``distmon.flush`` after each delivery
attempt (docs/events.md):

- ``distmon/spool/backlog`` whenever results are still waiting afterwards: ``minion_id``,
  ``count``, ``bytes``, ``oldest`` (when the oldest waiting result was spooled), ``oldest_jid``,
  ``last_error``.
- ``distmon/spool/drained`` once, when a spool that had a backlog is empty again:
  ``minion_id``, ``delivered`` (jids of this attempt).

A marker file in the spool directory (``.backlog``) remembers that a backlog was announced, so
a normal return (one result in, one out) fires nothing. Firing goes through
``event.fire_master`` (the minion's own connection in a job) in a thread with a short timeout,
and not at all on a masterless minion: it never fails or slows the delivery.
"""

from __future__ import annotations

import contextvars
import datetime
import logging
import os
import threading

log = logging.getLogger(__name__)

BACKLOG_TAG = "distmon/spool/backlog"
DRAINED_TAG = "distmon/spool/drained"
MARKER = ".backlog"
DEFAULT_TIMEOUT = 5.0


def masterless(opts: dict) -> bool:
    """True on a minion without a master to send events to."""
    return bool(opts.get("local") or opts.get("file_client") == "local" or opts.get("master_type") == "disable")


def fire_best_effort(fire, tag: str, data: dict, timeout: float = DEFAULT_TIMEOUT, about: str = "") -> bool | None:
    """Call ``fire(data, tag)`` in a thread; wait at most ``timeout`` s. True sent, False refused, None unknown.

    ``about`` (e.g. ``job <jid> minion <id>``) goes into the warning logged when it was not sent.
    """
    about = f" ({about})" if about else ""
    outcome: list = []

    def send() -> None:
        try:
            outcome.append(fire(data, tag))
        except Exception as err:  # the bus is a courtesy: the result's delivery stands regardless
            outcome.append(err)

    # The loader's dunders (__opts__, __salt__ ...) live in context variables: the thread needs a copy.
    thread = threading.Thread(target=contextvars.copy_context().run, args=(send,), name="distmon-event", daemon=True)
    thread.start()
    thread.join(max(0.0, timeout))
    if thread.is_alive():
        log.warning("distmon: event %s%s not confirmed within %.1f s", tag, about, timeout)
        return None
    if outcome and outcome[0] is not True:
        log.warning("distmon: event %s%s not sent: %s", tag, about, outcome[0])
        return False
    return True


def _iso(timestamp: float) -> str:
    moment = datetime.datetime.fromtimestamp(timestamp, datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def spool_events(spool_dir: str, minion_id: str, entries: list, report: dict, last_error: str | None) -> list:
    """The (tag, data) events this attempt calls for; updates the marker. ``entries``: what still waits."""
    marker = os.path.join(spool_dir, MARKER)
    if entries:
        oldest = entries[0]
        try:
            with open(marker, "a", encoding="utf-8"):
                pass
        except OSError:
            pass
        return [(BACKLOG_TAG, {
            "minion_id": minion_id,
            "count": len(entries),
            "bytes": sum(entry.size for entry in entries),
            "oldest": _iso(oldest.mtime),
            "oldest_jid": oldest.jid,
            "last_error": last_error,
        })]
    if os.path.exists(marker):
        try:
            os.unlink(marker)
        except OSError:
            return []
        return [(DRAINED_TAG, {"minion_id": minion_id, "delivered": list(report.get("delivered", []))})]
    return []
