"""The one range of dates IntentRec accepts, for data timestamps and for a run's "now".

A date outside it is a typo or a misread unit (epoch milliseconds read as seconds land in the year
49,000; ``9999-12-31`` overflows the holiday calendar's next year), so it is an error that names the
value, never something passed on to ``datetime`` arithmetic deep inside a run.
"""

from __future__ import annotations

from datetime import date, datetime

from core.errors import IntentRecError

#: first accepted instant (inclusive); negative unix epochs fall before it
EARLIEST = datetime(1970, 1, 1)
#: first rejected instant (exclusive)
LATEST = datetime(2100, 1, 1)


def in_range(when: datetime | date) -> bool:
    if not isinstance(when, datetime):
        when = datetime(when.year, when.month, when.day)
    return EARLIEST <= when < LATEST


def check_date(when: datetime | date, what: str) -> None:
    """Raise one clear :class:`IntentRecError` when ``when`` is outside [EARLIEST, LATEST)."""
    if not in_range(when):
        raise IntentRecError(f"{what} {when.isoformat()} is outside the supported range "
                             f"{EARLIEST:%Y-%m-%d} to {LATEST:%Y-%m-%d} (exclusive)")
