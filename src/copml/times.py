"""Times given by people: one reading for every option, API field and file column.

A time is ISO 8601: a date (``2026-03-01``) or a date and time (``2026-03-01T00:00Z``,
``2026-03-01 06:30:00+02:00``). A time without a zone is UTC, and every time comes back
zone-aware in UTC, so naive and aware values never meet (pandas refuses to compare them).
Anything else is refused naming the option or field, never echoing the value (it may be
anything a client sent).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

from copml.errors import CopmlError

if TYPE_CHECKING:  # pandas only for files: the CLI's help must answer at once
    import pandas as pd

# Window and retention arithmetic (calendar months, pandas timestamps) stays well inside
# these bounds; a time outside them is a typo, not a backfill.
EARLIEST = datetime(1900, 1, 1, tzinfo=UTC)
LATEST = datetime(2200, 1, 1, tzinfo=UTC)
HELP = "ISO 8601, e.g. 2026-03-01 or 2026-03-01T06:00Z; a time without a zone is UTC"


class TimeError(CopmlError):
    """A time that cannot be read, or lies outside the years copml accepts."""


def utc(value: datetime) -> datetime:
    """``value`` in UTC; a naive value is taken to be UTC already."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _refusal(name: str) -> str:
    return f"{name}: not a time between {EARLIEST.year} and {LATEST.year - 1}; use {HELP}"


def parse(value: str | datetime, name: str) -> datetime:
    """``value`` as a zone-aware UTC time; a :class:`TimeError` naming ``name`` if it is not
    one (``name`` is the option or field the value came from)."""
    if isinstance(value, datetime):
        found = value
    elif isinstance(value, str):
        try:
            found = datetime.fromisoformat(value.strip())
        except ValueError:
            raise TimeError(_refusal(name)) from None
    else:
        raise TimeError(_refusal(name))
    try:
        found = utc(found)
    except OverflowError:  # an offset that moves year 1 or 9999 off the calendar
        raise TimeError(_refusal(name)) from None
    if not EARLIEST <= found < LATEST:
        raise TimeError(_refusal(name))
    return found


def parse_optional(value: str | datetime | None, name: str) -> datetime | None:
    """:func:`parse`, or ``None`` for no value (an option left out)."""
    return None if value is None else parse(value, name)


def parse_column(values: pd.Series, name: str) -> pd.Series:
    """A column of times, read as :func:`parse` reads one, for a whole file at once; a
    :class:`TimeError` naming ``name`` and the count of values that are not times."""
    import pandas as pd

    found = pd.to_datetime(values, utc=True, format="ISO8601", errors="coerce")
    bad = found.isna() | (found < EARLIEST) | (found >= LATEST)
    if bad.any():
        raise TimeError(f"{name}: {int(bad.sum())} values are not times; use {HELP}")
    return found
