"""How figures and times are written for people: one rule for the CLI, reports, card and UI."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta, timezone

import numpy as np
import pytest

from copml import display


@pytest.mark.parametrize("missing", [None, math.nan, float("nan"), np.float64("nan")])
def test_a_missing_or_unknown_figure_is_a_dash(missing: object) -> None:
    assert display.figure(missing) == display.MISSING == "—"
    assert display.figure(missing, places=4) == "—"


def test_floats_are_rounded_to_the_places_asked() -> None:
    assert display.figure(1 / 3) == "0.333"
    assert display.figure(2 / 3, places=4) == "0.6667"
    assert display.figure(0.5) == "0.500"
    assert display.figure(-0.00004) == "-0.000"
    assert display.figure(np.float64(0.125), places=2) == "0.12"  # numpy floats are floats
    assert display.figure(math.inf) == "inf"


def test_counts_stay_whole_flags_read_yes_no_and_text_passes_through() -> None:
    assert display.figure(1_250) == "1250"
    assert display.figure(0, places=4) == "0"
    assert display.figure(True) == "yes"
    assert display.figure(False, places=4) == "no"
    assert display.figure("3 *") == "3 *"


def test_a_time_is_shown_in_utc_whatever_zone_it_came_in() -> None:
    naive = datetime(2026, 3, 1, 6, 30)  # a naive time is UTC already
    paris = datetime(2026, 3, 1, 7, 30, tzinfo=timezone(timedelta(hours=1)))
    for value in (naive, paris, "2026-03-01T07:30:00+01:00", "2026-03-01 06:30"):
        assert display.when(value) == "2026-03-01\u00a006:30"
        assert display.when(value, display.DOCUMENT) == "2026-03-01 06:30 UTC"
    assert display.when(None) == display.when(None, display.DOCUMENT) == "—"


def test_a_table_cell_keeps_a_date_and_its_time_together() -> None:
    shown = display.when(datetime(2026, 12, 31, 23, 59, tzinfo=UTC))
    assert " " not in shown and shown.split("\u00a0") == ["2026-12-31", "23:59"]


def test_milliseconds_since_the_epoch_read_as_mlflow_writes_them() -> None:
    at = datetime(2026, 3, 1, 6, 30, tzinfo=UTC)
    ms = int(at.timestamp() * 1000)
    assert display.when_ms(ms) == display.when(at)
    assert display.when_ms(ms, display.DOCUMENT) == "2026-03-01 06:30 UTC"
    assert display.when_ms(0) == display.when_ms(None) == "—"  # MLflow's "not recorded"


def test_the_model_card_writes_figures_by_the_same_rule_with_four_places() -> None:
    from copml.model_card import fmt

    for value in (None, math.nan, 0.61234567, 1 / 3, 12, True, "v3"):
        assert fmt(value) == display.figure(value, places=4)
    assert fmt(0.61234567) == "0.6123"


def test_long_work_counts_its_rows_on_a_terminal_only() -> None:
    import io

    from rich.console import Console

    chunks = [list(range(10)), list(range(15)), list(range(5))]
    screen = io.StringIO()
    terminal = Console(file=screen, force_terminal=True, width=120)
    assert list(display.counted(chunks, "scoring", 30, console=terminal)) == chunks
    assert "30/30" in screen.getvalue() and "rows/s" in screen.getvalue()
    quiet = io.StringIO()
    assert list(display.counted(chunks, "scoring", 30, console=Console(file=quiet))) == chunks
    assert quiet.getvalue() == ""
