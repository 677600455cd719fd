"""The one accepted date range (core/dates.py) at every door a date comes in by."""

from __future__ import annotations

from datetime import date, datetime

import pytest

from agents.context import Environment
from core.dates import check_date, in_range
from core.errors import IntentRecError
from core.options import parse_date


def test_range_bounds():
    assert in_range(datetime(1970, 1, 1)) and in_range(date(2099, 12, 31))
    assert not in_range(datetime(1969, 12, 31, 23, 59)) and not in_range(date(2100, 1, 1))
    with pytest.raises(IntentRecError, match="^now 9999-12-31 is outside the supported range"):
        check_date(date(9999, 12, 31), "now")


def test_cli_date_option_out_of_range_is_one_clear_error():
    assert parse_date("2017-10-01", "--now") == datetime(2017, 10, 1)
    with pytest.raises(IntentRecError, match=r"^--now 9999-12-31T00:00:00 is outside the supported range"):
        parse_date("9999-12-31", "--now")


@pytest.mark.parametrize("when", ["9999-12-31", date(9999, 12, 31), datetime(1969, 7, 20)])
def test_environment_rejects_dates_the_calendar_cannot_hold(when):
    # before the fix, 9999-12-31 raised "year 10000 is out of range" from the holiday calendar
    with pytest.raises(IntentRecError, match="outside the supported range"):
        Environment.at(when)
    assert Environment.at("2099-12-31").holidays  # the last accepted day still has a calendar
