"""``copml ui``: the dashboard over one or more projects (server-rendered, works offline)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path


def run(
    paths: list[Path],
    host: str,
    port: int,
    *,
    announce: Callable[[str], None] = print,
    secure_cookies: bool = False,
    forwarded_allow_ips: str = "127.0.0.1",
) -> None:
    """Serve the dashboard over the projects in ``paths`` until interrupted.

    Requests from ``forwarded_allow_ips`` (a TLS-ending proxy) are taken at their
    ``X-Forwarded-Proto``, so cookies set over https are Secure; ``secure_cookies``
    marks them Secure always.
    """
    import uvicorn

    from copml.ui.app import create_app
    from copml.ui.projects import discover

    shown = discover(paths)
    app = create_app(shown, secure_cookies=secure_cookies)
    names = ", ".join(s.name for s in shown)
    where = f"[{host}]" if ":" in host else host
    announce(f"copml ui: {names} at http://{where}:{port}/ (log in with an API key)")
    if host not in ("127.0.0.1", "::1", "localhost"):
        announce("keys and session cookies cross the network: put TLS (a reverse proxy) in front")
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        proxy_headers=True,
        forwarded_allow_ips=forwarded_allow_ips,
    )
