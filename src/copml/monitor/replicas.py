"""The serving replicas a store has seen, from their heartbeats: which address and process,
which model version each had loaded, and whether it still beats.

Several ``copml serve`` processes (workers of one server, replicas behind a load balancer)
share one store; each beats every ``heartbeat`` seconds with its address and pid, so the
store itself answers "what is serving, and with which version" without asking the servers.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, select

from copml import times
from copml.store import heartbeats

# A replica is live while its last beat is younger than this many of its own intervals.
LIVE_INTERVALS = 3
# How far back a replica that stopped beating is still listed (as not live).
SEEN_WITHIN = timedelta(hours=1)


@dataclass(frozen=True)
class Replica:
    replica: str  # host:port as served
    pid: int | None
    model_version: str | None
    last_beat: datetime
    ok: bool  # it had a champion loaded at its last beat
    live: bool  # its last beat is younger than LIVE_INTERVALS of its intervals


def replicas(engine: Engine, now: datetime | None = None) -> list[Replica]:
    """Every replica that beat within :data:`SEEN_WITHIN` of ``now``, by address and pid."""
    now = times.utc(now) if now is not None else datetime.now(UTC)
    h = heartbeats.c
    with engine.connect() as conn:
        rows = conn.execute(
            select(h.replica, h.pid, h.model_version, h.at, h.ok, h.detail)
            .where(h.source == "server", h.replica.is_not(None), h.at >= now - SEEN_WITHIN)
            .order_by(h.at)
        ).all()
    latest = {(r.replica, r.pid): r for r in rows}  # ordered by time: the last one wins
    found = []
    for (replica, pid), r in sorted(latest.items(), key=lambda item: (item[0][0], item[0][1] or 0)):
        at = times.utc(r.at)
        interval = float(r.detail or 10.0)
        live = now - at <= timedelta(seconds=LIVE_INTERVALS * interval)
        found.append(Replica(replica, pid, r.model_version, at, bool(r.ok), live))
    return found
