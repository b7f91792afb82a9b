"""Outside availability checks of a running server, recorded for monitoring."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime

from copml.project import Project
from copml.store import heartbeats, open_store


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    latency_ms: float
    detail: str


def probe(project: Project, url: str, *, timeout: float = 5.0) -> ProbeResult:
    """GET ``url``/readyz: up means a 200 within ``timeout``; the result is stored."""
    start = time.perf_counter()
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/readyz", timeout=timeout) as answer:
            ok, detail = answer.status == 200, f"HTTP {answer.status}"
    except urllib.error.HTTPError as exc:
        ok, detail = False, f"HTTP {exc.code}"
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        ok, detail = False, f"unreachable: {getattr(exc, 'reason', exc)}"
    latency = (time.perf_counter() - start) * 1000
    project.ensure_home()
    with open_store(project.db_url).begin() as conn:
        conn.execute(
            heartbeats.insert().values(
                at=datetime.now(UTC), source="probe", ok=ok, latency_ms=latency, detail=detail
            )
        )
    return ProbeResult(ok, latency, detail)
