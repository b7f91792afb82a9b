"""The forms people post to the dashboard, and the redirect that answers them (no
JavaScript: forms post, the server redirects).

A form is read only when it comes from this site's own pages, as
``application/x-www-form-urlencoded`` UTF-8 within a size limit and, with a session, with
that session's CSRF token.
"""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

from fastapi import HTTPException, Request
from fastapi.responses import RedirectResponse

from copml.ui.auth import Session

_MAX_BYTES = 64 * 1024


def _same_site(request: Request) -> bool:
    """Whether a form post comes from this site's own pages: its Origin (or, lacking one,
    its Referer) names the host it was sent to. Browsers send Origin on every form post,
    so another site cannot log a person in with its own key (login CSRF); a program that
    sends neither is no browser and is let through."""
    source = request.headers.get("origin") or request.headers.get("referer")
    if source is None:
        return True
    host = request.headers.get("host", "").lower()
    return bool(host) and urlsplit(source).netloc.lower() == host


async def read(request: Request, session: Session | None) -> dict[str, str]:
    """The posted fields (the last value of each); 4xx when the form may not be read."""
    if not _same_site(request):
        raise HTTPException(403, "the form was posted from another site (Origin/Referer)")
    kind = request.headers.get("content-type", "").split(";")[0].strip()
    if kind != "application/x-www-form-urlencoded":
        raise HTTPException(415, "send the form as application/x-www-form-urlencoded")
    body = await request.body()
    if len(body) > _MAX_BYTES:
        raise HTTPException(413, f"the form is over {_MAX_BYTES // 1024} KiB")
    try:
        fields = parse_qs(body.decode("utf-8"), keep_blank_values=True)
    except UnicodeDecodeError:
        raise HTTPException(400, "the form is not UTF-8") from None
    values = {k: v[-1] for k, v in fields.items()}
    if session is not None and not session.csrf_ok(values.get("csrf")):
        raise HTTPException(403, "the form's CSRF token is missing or stale: reload the page")
    return values


def reason(values: dict[str, str], what: str) -> str:
    """The form's ``reason``, recorded with ``what``; a 422 when blank or too long."""
    text = values.get("reason", "").strip()
    if not text:
        raise HTTPException(422, f"reason: say why; it is recorded with the {what}")
    if len(text) > 2000:
        raise HTTPException(422, "reason: at most 2000 characters")
    return text


def back(url: str) -> RedirectResponse:
    """See other: where a browser goes after a post (or to log in)."""
    return RedirectResponse(url, 303)
