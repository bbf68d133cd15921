"""Usage periods: the UTC day and the ISO week (from Monday 00:00 UTC) a moment is in.

Quotas and the usage report count per period; a turn counts in the day and the week in
which it started.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

PERIODS = ("day", "week")


def period_starts(moment: datetime) -> tuple[date, date]:
    """The UTC day of ``moment`` and the Monday starting its ISO week."""
    day = moment.astimezone(UTC).date()
    return day, day - timedelta(days=day.weekday())


PERIOD_LENGTH = {"day": timedelta(days=1), "week": timedelta(days=7)}


def period_bounds(period: str, start: date) -> tuple[datetime, datetime]:
    """When the period that starts on ``start`` begins and when it resets (UTC)."""
    begins = datetime.combine(start, datetime.min.time(), tzinfo=UTC)
    return begins, begins + PERIOD_LENGTH[period]
