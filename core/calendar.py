"""The one holiday calendar: the holidays a shop plans for, their dates in any year, and the words
that name them in text (for the judge's timeliness rule and the environment's "upcoming holidays")."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import date, timedelta


def nth_weekday(year: int, month: int, weekday: int, n: int) -> date:
    """The n-th ``weekday`` (Mon=0) of a month; n=-1 for the last."""
    if n > 0:
        d = date(year, month, 1)
        return d + timedelta(days=(weekday - d.weekday()) % 7 + 7 * (n - 1))
    d = date(year + (month == 12), month % 12 + 1, 1) - timedelta(days=1)
    return d - timedelta(days=(d.weekday() - weekday) % 7)


def easter(year: int) -> date:
    """Gregorian Easter Sunday (anonymous Gregorian algorithm)."""
    a, b, c = year % 19, year // 100, year % 100
    d, e = b // 4, b % 4
    f = (b + 8) // 25
    g = (b - f + 1) // 3
    h = (19 * a + b - d - g + 15) % 30
    i, k = c // 4, c % 4
    l_ = (32 + 2 * e + 2 * i - h - k) % 7
    m = (a + 11 * h + 22 * l_) // 451
    month = (h + l_ - 7 * m + 114) // 31
    day = (h + l_ - 7 * m + 114) % 31 + 1
    return date(year, month, day)


#: an alias of Christmas for matching text; not listed as a date of its own
HOLIDAY_SEASON = "holiday season"

#: (name, pattern, date of the holiday in a given year); longer names first so "New Year's Eve" is not
#: also read as "New Year's Day"
HOLIDAYS: tuple[tuple[str, re.Pattern[str], Callable[[int], date]], ...] = tuple(
    (name, re.compile(pat, re.I), when) for name, pat, when in (
        ("New Year's Eve", r"\bnew\s+year'?s\s+eve\b", lambda y: date(y, 12, 31)),
        ("New Year's Day", r"\bnew\s+year(?:'?s)?(?:\s+day)?\b", lambda y: date(y, 1, 1)),
        ("Christmas", r"\b(?:christmas|x-?mas)\b", lambda y: date(y, 12, 25)),
        (HOLIDAY_SEASON, r"\b(?:holiday\s+season|the\s+holidays)\b", lambda y: date(y, 12, 25)),
        ("Valentine's Day", r"\bvalentine(?:'?s)?\b", lambda y: date(y, 2, 14)),
        ("St Patrick's Day", r"\b(?:st\.?|saint)\s+patrick(?:'?s)?\b", lambda y: date(y, 3, 17)),
        ("Easter", r"\beaster\b", easter),
        ("Cinco de Mayo", r"\bcinco\s+de\s+mayo\b", lambda y: date(y, 5, 5)),
        ("Mother's Day", r"\bmother'?s'?\s+day\b", lambda y: nth_weekday(y, 5, 6, 2)),
        ("Memorial Day", r"\bmemorial\s+day\b", lambda y: nth_weekday(y, 5, 0, -1)),
        ("Father's Day", r"\bfather'?s'?\s+day\b", lambda y: nth_weekday(y, 6, 6, 3)),
        ("Independence Day", r"\b(?:independence\s+day|(?:fourth|4th)\s+of\s+july|july\s+4(?:th)?)\b",
         lambda y: date(y, 7, 4)),
        ("Labor Day", r"\blabou?r\s+day\b", lambda y: nth_weekday(y, 9, 0, 1)),
        ("Halloween", r"\bhallowe'?en\b", lambda y: date(y, 10, 31)),
        ("Black Friday", r"\bblack\s+friday\b", lambda y: nth_weekday(y, 11, 3, 4) + timedelta(days=1)),
        ("Thanksgiving", r"\bthanksgiving\b", lambda y: nth_weekday(y, 11, 3, 4)),
    )
)


def holiday_dates(year: int) -> list[tuple[date, str]]:
    """Every holiday of ``year`` as (date, name), in date order."""
    return sorted((when(year), name) for name, _, when in HOLIDAYS if name != HOLIDAY_SEASON)


def holidays_between(start: date, end: date) -> list[tuple[date, str]]:
    """The holidays from ``start`` to ``end`` (both inclusive, across years), in date order."""
    return [(d, name) for y in range(start.year, end.year + 1) for d, name in holiday_dates(y) if start <= d <= end]


def upcoming_holidays(now: date, days: int = 30) -> list[str]:
    """The holidays from ``now`` to ``days`` days ahead, as "Halloween (Oct 31)"."""
    end = date.max if (date.max - now).days < days else now + timedelta(days=days)
    return [f"{name} ({when:%b %d})" for when, name in holidays_between(now, end)]
