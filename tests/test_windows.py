"""A metric window is one calendar period; `for N windows` is N distinct periods in a row
(issue 12.3)."""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import select

from batches import month
from copml.feedback import load
from copml.project import Project
from copml.score import score
from copml.spec import Duration
from copml.store import metric_windows, open_store, policy_evaluations
from test_cli import run
from test_operate import _spec


def _at(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)  # type: ignore[misc]


@pytest.mark.parametrize(
    ("span", "at", "expected"),
    [
        ("1 month", _at(2026, 3, 1), (_at(2026, 2, 1), _at(2026, 3, 1))),
        ("1 month", _at(2026, 3, 1, 0, 10), (_at(2026, 3, 1), _at(2026, 4, 1))),
        ("1 month", _at(2026, 12, 31, 23), (_at(2026, 12, 1), _at(2027, 1, 1))),
        ("3 months", _at(2026, 5, 17), (_at(2026, 4, 1), _at(2026, 7, 1))),
        ("1 week", _at(2026, 3, 4, 12), (_at(2026, 3, 2), _at(2026, 3, 9))),  # Monday to Monday
        ("1 day", _at(2026, 3, 4, 12), (_at(2026, 3, 4), _at(2026, 3, 5))),
        ("1 hour", _at(2026, 3, 4, 12), (_at(2026, 3, 4, 11), _at(2026, 3, 4, 12))),
        ("1 year", _at(2026, 3, 4), (_at(2026, 1, 1), _at(2027, 1, 1))),
    ],
)
def test_a_window_is_the_calendar_period_of_the_evaluation_time(
    span: str, at: datetime, expected: tuple[datetime, datetime]
) -> None:
    from copml.monitor.window import period

    assert period(Duration.model_validate(span), at) == expected


ALWAYS = """
policies:
  - name: escalate
    when: accuracy <= 0.99 for 3 windows
    do: [alert]
"""


def _month(project: Project, tmp_path: Path, first: datetime, last: datetime, seed: int) -> None:
    """A batch scored on the first day of a month, and who churned, loaded on its last."""
    batch, outcome = month(tmp_path / f"m{seed}", seed=seed)
    score(project, batch, tmp_path / f"out{seed}.csv", at=first.replace(hour=6))
    truth = tmp_path / f"truth{seed}.csv"
    outcome.to_csv(truth, index=False)
    load(project, truth, at=last)


def _stored(project: Project) -> list[tuple[datetime, datetime, int]]:
    mw = metric_windows.c
    query = select(mw.window_start, mw.window_end, mw.n_predictions).order_by(mw.window_end)
    with open_store(project.db_url).connect() as conn:
        return [
            (s.replace(tzinfo=UTC), e.replace(tzinfo=UTC), n) for s, e, n in conn.execute(query)
        ]


def test_monitor_then_operate_in_the_same_month_store_one_window(
    churn: Project, tmp_path: Path
) -> None:
    """The exact sequence of the issue: two computations ten minutes apart stored two
    overlapping one-month windows over the same predictions, so a `for 3 windows` policy
    held after two months of data."""
    project = _spec(churn, ALWAYS)
    _month(project, tmp_path, _at(2026, 1, 1), _at(2026, 1, 31), seed=11)
    _month(project, tmp_path, _at(2026, 2, 1), _at(2026, 2, 28), seed=12)
    run("monitor", "--at", "2026-02-01T00:00Z", cwd=project.root)
    run("monitor", "--at", "2026-03-01T00:00Z", cwd=project.root)
    done = run("operate", "--once", "--at", "2026-03-01T00:10Z", "--json", cwd=project.root)
    stored = _stored(project)
    assert [(s, e) for s, e, _ in stored[:2]] == [
        (_at(2026, 1, 1), _at(2026, 2, 1)),
        (_at(2026, 2, 1), _at(2026, 3, 1)),
    ]
    assert [n for _, _, n in stored[:2]] == [500, 500]  # each month's predictions, once
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(stored))  # no overlap
    (evaluation,) = json.loads(done.stdout)["evaluations"]
    assert evaluation["outcome"] is not True and not evaluation["acted"]
    # Computing February again replaces its figures: still one window for the period.
    run("monitor", "--at", "2026-02-15T12:00Z", cwd=project.root)
    assert len([w for w in _stored(project) if w[1] == _at(2026, 3, 1)]) == 1
    # A third month makes three distinct periods in a row: now the policy holds.
    from copml.monitor.window import monitor
    from copml.operate.runner import operate_once

    _month(project, tmp_path, _at(2026, 3, 1), _at(2026, 3, 31), seed=13)
    monitor(project, end=_at(2026, 4, 1))
    result = operate_once(project, at=_at(2026, 4, 1))
    assert [(e.outcome, e.acted) for e in result.evaluations] == [(True, True)]
    assert len(result.evaluations[0].values["accuracy"]) == 3


def test_a_gap_between_periods_is_not_skipped_over(churn: Project, tmp_path: Path) -> None:
    """Three stored windows with a month missing between them are not 3 windows in a row."""
    from copml.monitor.window import monitor
    from copml.operate.runner import operate_once

    project = _spec(churn, ALWAYS)
    for seed, (first, last) in enumerate(
        [(_at(2026, 1, 1), _at(2026, 1, 31)), (_at(2026, 3, 1), _at(2026, 3, 31))], start=21
    ):
        _month(project, tmp_path, first, last, seed=seed)
    monitor(project, end=_at(2026, 2, 1))
    monitor(project, end=_at(2026, 4, 1))
    monitor(project, end=_at(2026, 4, 1, 0, 10))  # April, under way: no predictions yet
    result = operate_once(project, at=_at(2026, 4, 1))
    assert [e.outcome for e in result.evaluations] == [None]  # February was never computed
    january, february, march = result.evaluations[0].values["accuracy"]
    assert february is None and january is not None and march is not None
    with open_store(project.db_url).connect() as conn:
        assert conn.execute(select(policy_evaluations.c.acted)).scalars().all() == [False]
