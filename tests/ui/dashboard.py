"""What the dashboard tests share besides fixtures: the browser path and the site record."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"


@dataclass(frozen=True)
class Site:
    """The demo project behind the running dashboard, and a key per role."""

    root: Path
    base: str
    slug: str
    keys: dict[str, str]
