"""Retention periods in days, months or years, with calendar-correct arithmetic.

A period is added to the instant a recording ended (UTC). Days are exact (n x 24 h). Months
and years move the calendar month (a year is 12 months) and keep the day of the month and the
time of day. When that day does not exist in the target month (31 January + 1 month, 29
February + 1 year), the result rolls forward to the first day of the following month at the
same time of day: never earlier than any reading of the period. (BGB §188(3) and similar
rules end such a period on the last day of the shorter month; rolling forward keeps the
recording up to one day longer, never shorter: the legal period is a minimum.)

Pure: no clock, no I/O.
"""

from __future__ import annotations

import calendar
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

UNITS = ("days", "months", "years")
_UNIT_ALIASES = {"d": "days", "day": "days", "days": "days",
                 "m": "months", "mo": "months", "month": "months", "months": "months",
                 "y": "years", "year": "years", "years": "years"}
_PERIOD = re.compile(r"^\s*(\d+)\s*([a-z]+)\s*$")
MAX_AMOUNT = {"days": 366 * 200, "months": 12 * 200, "years": 200}


class PeriodError(ValueError):
    """A period that cannot be parsed or is out of range."""


@dataclass(frozen=True, slots=True)
class Period:
    amount: int
    unit: str  # one of UNITS

    def __post_init__(self) -> None:
        if self.unit not in UNITS:
            raise PeriodError(f"period unit must be one of {', '.join(UNITS)}, not {self.unit!r}")
        if isinstance(self.amount, bool) or not isinstance(self.amount, int) or self.amount < 1:
            raise PeriodError(f"a period is at least 1 {self.unit}, not {self.amount!r}")
        if self.amount > MAX_AMOUNT[self.unit]:
            raise PeriodError(f"{self.amount} {self.unit} is longer than 200 years")

    @classmethod
    def parse(cls, text: str) -> Period:
        """``30d``, ``6m``, ``7y``, ``10 years``, ``1 month`` ..."""
        found = _PERIOD.match(str(text).lower())
        if not found or found.group(2) not in _UNIT_ALIASES:
            raise PeriodError(f"not a period: {text!r} (write e.g. 30d, 6m or 7y)")
        return cls(int(found.group(1)), _UNIT_ALIASES[found.group(2)])

    def __str__(self) -> str:
        return f"{self.amount}{self.unit[0]}"

    def after(self, start: datetime) -> datetime:
        """The first instant at which ``start`` is at least this period in the past."""
        if start.tzinfo is None:
            raise PeriodError("period arithmetic needs an aware datetime (UTC)")
        if self.unit == "days":
            return start + timedelta(days=self.amount)
        months = self.amount * (12 if self.unit == "years" else 1)
        return add_months(start, months)

    def after_epoch(self, start: float) -> float:
        return self.after(datetime.fromtimestamp(start, UTC)).timestamp()


def add_months(start: datetime, months: int) -> datetime:
    """``start`` moved by whole calendar months; a missing day rolls to the next month's 1st."""
    index = start.year * 12 + (start.month - 1) + months
    year, month = divmod(index, 12)
    month += 1
    if start.day <= calendar.monthrange(year, month)[1]:
        return start.replace(year=year, month=month)
    year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return start.replace(year=year, month=month, day=1)
