"""Which minions need attention: failing ones, then late ones (silent for twice their usual gap
between runs, and at least a minute more).

:func:`late_after` is the moment a minion turns late; the ingester stores it with the minion
(dashboard/ingest/store.py) so the fleet page counts and orders late minions without reading
their history; the pages show :func:`expected_interval`. A minion is failing by
:func:`failing_minion` (in SQL :data:`FAILING_MINION_SQL`, over ``minions m``), and late only when
it is not failing and its stored ``late_after`` has passed: every count, order and flag of the
fleet uses these two rules.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from dashboard.models import format_timestamp

# Newest-run statuses that need no attention ('' stands for no run).
HEALTHY_STATUSES = ("passed", "no_tests", "")
FAILING_MINION_SQL = "(m.failing > 0 OR COALESCE(m.last_status, '') NOT IN ('passed', 'no_tests', ''))"


def failing_minion(last_status: str | None, failing: int | None) -> bool:
    """A minion needs attention when tests fail on it now or its newest run did not pass."""
    return (failing or 0) > 0 or (last_status or "") not in HEALTHY_STATUSES


def _moment(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def expected_interval(first_seen: str | None, last_seen: str | None, runs: int | None,
                      configured: float | None = None) -> float | None:
    """Seconds expected between a minion's runs: ``configured``, else the mean gap of its history (>= 3 runs)."""
    if configured:
        return float(configured)
    first, last = _moment(first_seen), _moment(last_seen)
    if not first or not last or (runs or 0) < 3:
        return None
    gap = (last - first).total_seconds() / (runs - 1)
    return gap if gap > 0 else None


def late_after(first_seen: str | None, last_seen: str | None, runs: int | None,
               configured: float | None = None) -> str | None:
    """When a minion last seen at ``last_seen`` becomes late (stored form), or None with no interval yet."""
    interval = expected_interval(first_seen, last_seen, runs, configured)
    last = _moment(last_seen)
    if interval is None or last is None:
        return None
    # One slow run is not an alarm: twice the usual gap, and at least a minute more than it.
    return format_timestamp(last + timedelta(seconds=max(2 * interval, interval + 60)))
