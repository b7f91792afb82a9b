"""The action state machine: actions are rows, ``pending → running → succeeded | failed``.

A policy that holds creates its actions once per window (:func:`plan`); they run in the
declared order, each claimed by one process (:func:`execute_pending`), and a failure skips the
rest of the chain but for the actions people must hear. An action whose process died is found
by the next pass, marked failed and retried (:func:`recover`), so none is left half done. What
each action does is :mod:`copml.operate.handlers`.
"""

from __future__ import annotations

import os
import socket
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import Connection, Engine, insert, select, update

from copml import events
from copml.errors import CopmlError
from copml.operate import handlers
from copml.operate.evaluation import Evaluation
from copml.project import Project
from copml.store import actions as rows
from copml.store import json_safe, open_store

MAX_ATTEMPTS = 3


class ActionState(StrEnum):
    """An action's state; the values are what the store holds."""

    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


# The only moves there are: claimed by a process, then finished either way.
_MOVES = {
    ActionState.PENDING: {ActionState.RUNNING},
    ActionState.RUNNING: {ActionState.SUCCEEDED, ActionState.FAILED},
}


def _move(
    conn: Connection, action_id: int, source: ActionState, target: ActionState, **values: Any
) -> bool:
    """Move one action from ``source`` to ``target``; false when it was no longer in
    ``source`` (another process moved it first)."""
    if target not in _MOVES.get(source, set()):
        raise ValueError(f"an action cannot go from {source} to {target}")
    return bool(
        conn.execute(
            update(rows)
            .where(rows.c.id == action_id, rows.c.state == source.value)
            .values(state=target.value, **values)
        ).rowcount
    )


def _owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _alive(owner: str | None) -> bool:
    """Whether the process that claimed an action still runs (same host only)."""
    if not owner:
        return False
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname():
        return True  # another machine's process: not ours to judge
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, ValueError):
        return False
    except PermissionError:
        pass  # it exists, under another user
    return True


def _pending(
    *, kind: str, policy: str | None, window_end: datetime, at: datetime
) -> dict[str, Any]:
    """The columns of a new pending action."""
    return {
        "kind": kind,
        "policy": policy,
        "window_end": window_end,
        "state": ActionState.PENDING.value,
        "created_at": at,
    }


def plan(project: Project, evaluation: Evaluation, at: datetime) -> None:
    """Create the policy's actions for this window, once (the unique key makes it so)."""
    policy = next(p for p in project.spec.policies if p.name == evaluation.policy)
    engine = open_store(project.db_url)
    with engine.begin() as conn:
        exists = conn.execute(
            select(rows.c.id).where(
                rows.c.policy == policy.name, rows.c.window_end == evaluation.window_end
            )
        ).first()
        if exists:
            return
        for kind in policy.do:
            conn.execute(
                insert(rows).values(
                    **_pending(
                        kind=kind, policy=policy.name, window_end=evaluation.window_end, at=at
                    ),
                    attempt=1,
                    evidence=json_safe(
                        {"when": policy.when, "values": evaluation.values, "chain": policy.do}
                    ),
                )
            )
        events.record(
            conn,
            events.Kind.POLICY_FIRED,
            actor=f"policy:{policy.name}",
            subject=events.project_subject(project.spec.project),
            reason=policy.when,
            evidence=json_safe({"values": evaluation.values, "do": policy.do}),
            at=at,
        )


def _interrupted(owner: str | None, *, sole: bool) -> bool:
    """Whether an action ``owner`` left running was interrupted.

    This process runs no action while it recovers, so one in its own name was left by an
    earlier process with the same host and pid (a restarted container's pid 1); a process
    that leads a shared store alone (``sole``) runs every action there is, so any other
    owner's was left by a process that died, on any machine. Else the owner is looked up."""
    return sole or owner == _owner() or not _alive(owner)


def recover(project: Project, at: datetime, *, sole: bool = False) -> list[int]:
    """Actions left ``running`` by a process that died: failed, then retried as pending.

    ``sole``: this process holds the store's operator lock (:mod:`copml.operate.leadership`).
    """
    engine = open_store(project.db_url)
    with engine.connect() as conn:
        stale = [
            dict(r._mapping)
            for r in conn.execute(select(rows).where(rows.c.state == ActionState.RUNNING.value))
            if _interrupted(r.owner, sole=sole)
        ]
    recovered = []
    for row in stale:
        if (cleanup := handlers.ON_INTERRUPT.get(row["kind"])) is not None:
            cleanup(project, row["id"])
        with engine.begin() as conn:
            moved = _move(
                conn,
                row["id"],
                ActionState.RUNNING,
                ActionState.FAILED,
                finished_at=at,
                error=f"interrupted: process {row['owner']} ended during the action",
            )
            if not moved:
                continue
            retried = row["attempt"] < MAX_ATTEMPTS
            if retried:
                conn.execute(
                    insert(rows).values(
                        **_pending(
                            kind=row["kind"],
                            policy=row["policy"],
                            window_end=row["window_end"],
                            at=at,
                        ),
                        attempt=row["attempt"] + 1,
                        evidence={**row["evidence"], "retry_of": row["id"]},
                    )
                )
            events.record(
                conn,
                events.Kind.ACTION_RECOVERED,
                actor="system",
                subject=f"action:{row['id']}",
                reason=f"{row['kind']} interrupted (owner {row['owner']} is gone)",
                evidence={"attempt": row["attempt"], "retried": retried},
                at=at,
            )
        recovered.append(row["id"])
    return recovered


def _claim(engine: Engine, action_id: int, at: datetime) -> bool:
    with engine.begin() as conn:
        return _move(
            conn,
            action_id,
            ActionState.PENDING,
            ActionState.RUNNING,
            started_at=at,
            owner=_owner(),
        )


def _finish(
    engine: Engine, action_id: int, state: ActionState, at: datetime, **values: Any
) -> None:
    with engine.begin() as conn:
        _move(
            conn,
            action_id,
            ActionState.RUNNING,
            state,
            finished_at=at,
            **{k: json_safe(v) for k, v in values.items()},
        )


def _chain(engine: Engine, row: dict[str, Any]) -> list[dict[str, Any]]:
    """The actions of the same policy and window, in creation order."""
    with engine.connect() as conn:
        return [
            dict(r._mapping)
            for r in conn.execute(
                select(rows)
                .where(rows.c.policy == row["policy"], rows.c.window_end == row["window_end"])
                .order_by(rows.c.id)
            )
        ]


def _step_of(row: dict[str, Any]) -> int:
    """The action's place in its policy's declared ``do`` list."""
    steps = row["evidence"].get("chain", [])
    return steps.index(row["kind"]) if row["kind"] in steps else len(steps)


def _in_order(pending: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Chains in creation order, each in its declared order, also when a retry was created
    after later steps."""
    first: dict[tuple[Any, Any], int] = {}
    for row in pending:
        first.setdefault((row["policy"], row["window_end"]), row["id"])
    return sorted(
        pending, key=lambda r: (first[(r["policy"], r["window_end"])], _step_of(r), r["id"])
    )


def _broken_by(row: dict[str, Any], chain: list[dict[str, Any]]) -> str | None:
    """The kind of an earlier step of the chain that failed for good, if any."""
    earlier = row["evidence"].get("chain", [])[: _step_of(row)]
    for r in chain:
        if (
            r["kind"] in earlier
            and r["state"] == ActionState.FAILED
            and r["kind"] not in handlers.ALWAYS
            and not any(x["kind"] == r["kind"] and x["id"] > r["id"] for x in chain)
        ):
            return str(r["kind"])
    return None


def execute_pending(project: Project, at: datetime) -> list[dict[str, Any]]:
    """Run every pending action in order; a failure skips the rest of its chain."""
    engine = open_store(project.db_url)
    with engine.connect() as conn:
        pending = [
            dict(r._mapping)
            for r in conn.execute(
                select(rows).where(rows.c.state == ActionState.PENDING.value).order_by(rows.c.id)
            )
        ]
    done = []
    for row in _in_order(pending):
        broken = _broken_by(row, _chain(engine, row))
        if broken is not None and row["kind"] not in handlers.ALWAYS:
            skipped = f"skipped: {broken} failed"
            if _claim(engine, row["id"], at):
                _finish(engine, row["id"], ActionState.FAILED, at, error=skipped)
            done.append({**row, "state": ActionState.FAILED, "error": skipped})
            continue
        if not _claim(engine, row["id"], at):
            continue  # another process took it
        try:
            result = handlers.run(handlers.Step(project, row, _chain(engine, row), at))
        except Exception as exc:
            message = (
                f"{type(exc).__name__}: {exc}" if not isinstance(exc, CopmlError) else str(exc)
            )
            _finish(engine, row["id"], ActionState.FAILED, at, error=message[:2000])
            done.append({**row, "state": ActionState.FAILED, "error": message})
            continue
        _finish(engine, row["id"], ActionState.SUCCEEDED, at, result=result)
        done.append({**row, "state": ActionState.SUCCEEDED, "result": result})
    return done
