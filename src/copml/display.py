"""How copml writes figures and times for people: one place, so the CLI, the reports, the
model card and the dashboard show the same value the same way.

A missing or unknown figure (``None``, NaN) is a dash, never ``0`` or ``nan``; a time is
shown in UTC. These are for reading only: files and APIs that machines read keep ISO 8601
and plain numbers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sized
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from copml.times import utc

T = TypeVar("T", bound=Sized)
MISSING = "—"
# A document read on its own names the zone; a table cell keeps a date and its time on one
# line (a no-break space) under a page that says its times are UTC.
DOCUMENT = "%Y-%m-%d %H:%M UTC"
CELL = "%Y-%m-%d\u00a0%H:%M"


def figure(value: Any, places: int = 3) -> str:
    """``value`` as a table or text shows it: a float with ``places`` decimals, a count
    whole, a flag yes/no, a dash where it is missing or unknown, anything else as text."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{places}f}"
    return str(value)


def when(value: datetime | str | None, layout: str = CELL) -> str:
    """A time (or an ISO 8601 text of one) in UTC by ``layout``; a naive time is UTC."""
    if value is None:
        return MISSING
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return utc(value).strftime(layout)


def time_left(left: timedelta) -> str:
    """A time to a deadline: ``3 d 4 h``, ``5 h 12 min`` under a day, ``overdue by …`` once
    it is negative (whole minutes, rounded down)."""
    seconds = int(left.total_seconds())
    days, rest = divmod(abs(seconds), 86400)
    span = f"{days} d {rest // 3600} h" if days else f"{rest // 3600} h {rest % 3600 // 60} min"
    return span if seconds >= 0 else f"overdue by {span}"


def when_ms(value: int | None, layout: str = CELL) -> str:
    """A time given in milliseconds since the epoch (MLflow's), as :func:`when` shows it;
    a dash for none (0 is MLflow's "not recorded")."""
    return when(datetime.fromtimestamp(value / 1000, UTC), layout) if value else MISSING


def counted(
    items: Iterable[T],
    description: str,
    total: int,
    unit: str = "rows",
    size: Callable[[T], int] = len,
    console: Any = None,
) -> Iterator[T]:
    """``items`` (chunks of ``size`` units each) with a bar of units done, their rate per
    second and the time left, on a terminal only: elsewhere (CI, a scheduler's log) quiet."""
    if console is None:
        from rich.console import Console

        console = Console(stderr=True)
    if not console.is_terminal:
        yield from items
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    rate = TextColumn(f"{{task.fields[rate]}} {unit}/s")
    with Progress(
        TextColumn(description), BarColumn(), MofNCompleteColumn(), rate, TimeRemainingColumn(),
        console=console, transient=True,
    ) as bar:  # fmt: skip
        task = bar.add_task(description, total=total, rate="…")
        for item in items:
            yield item
            bar.advance(task, size(item))
            speed = bar.tasks[task].speed
            bar.update(task, rate=f"{speed:,.0f}" if speed else "…")
