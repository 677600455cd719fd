"""Parsing of command-line option values shared by the sub-commands."""

from __future__ import annotations

from datetime import datetime

from core.dates import check_date
from core.errors import IntentRecError


def parse_date(value: str | None, option: str) -> datetime | None:
    """``--now`` / ``--cutoff`` style values: ISO-8601 date or date-time, or None when not given.
    A bad value is one clear :class:`IntentRecError` naming the option (printed as one line by ``app.py``)."""
    if not value:
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise IntentRecError(f"{option} {value!r} is not an ISO-8601 date or date-time (e.g. 2017-10-01)") from None
    check_date(when, option)
    return when
