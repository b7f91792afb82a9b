"""Alert delivery: always to the log, and to a signed webhook and/or e-mail when configured.

Delivery never raises: an alert is sent because something already went wrong, so a dead
receiver must not also break the run that noticed it. Each channel reports a :class:`Delivery`
(ok, attempts, last status or error) that the caller can record.

Webhook receivers authenticate a request by recomputing the signature over the raw body::

    expected = "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
    hmac.compare_digest(expected, request.headers["X-Copml-Signature"])

Use :func:`hmac.compare_digest`, never ``==``, so the comparison does not leak timing. The
``X-Copml-Timestamp`` header (unix seconds of the attempt) is not covered by the signature;
to reject replays, check the signed ``at`` field of the body instead.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import logging
import math
import smtplib
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from email.message import EmailMessage
from typing import Any, Literal

from copml.spec import Alerts
from copml.store import json_safe

logger = logging.getLogger("copml.alerts")

SIGNATURE_HEADER = "X-Copml-Signature"
TIMESTAMP_HEADER = "X-Copml-Timestamp"
SEVERITIES = ("warning", "critical")

Channel = Literal["webhook", "email", "log"]


@dataclass
class Alert:
    """One thing a person should know about; ``key`` lets receivers de-duplicate repeats."""

    key: str
    project: str
    title: str
    severity: str
    at: datetime
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise ValueError(f"severity must be one of {SEVERITIES}, not {self.severity!r}")

    def payload(self) -> dict[str, Any]:
        """The JSON body: every field, ``at`` as ISO 8601 so any receiver can parse it."""
        data = asdict(self)
        data["at"] = self.at.isoformat()
        return data


@dataclass
class Delivery:
    """How one channel fared; ``detail`` is the last status or error, never a traceback."""

    channel: Channel
    ok: bool
    attempts: int
    detail: str


def sign(body: bytes, secret: bytes) -> str:
    """HMAC-SHA256 of the exact body bytes, so a receiver can prove the alert came from us."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def encode(alert: Alert) -> bytes:
    """Compact JSON with sorted keys: stable bytes, so the signature is reproducible."""
    return json.dumps(
        json_safe(alert.payload()), sort_keys=True, separators=(",", ":"), default=_fallback
    ).encode("utf-8")


def deliver(
    alert: Alert,
    config: Alerts,
    secret: bytes,
    *,
    sleep: Callable[[float], None] = time.sleep,
    timeout_s: float = 5.0,
) -> list[Delivery]:
    """Send ``alert`` on every configured channel; failures are reported, never raised."""
    deliveries = [_log(alert)]
    if config.webhook:
        webhook = _webhook(
            alert,
            config.webhook,
            secret,
            config.retries,
            config.backoff_seconds,
            sleep=sleep,
            timeout_s=timeout_s,
        )
        deliveries.append(webhook)
    if config.email:
        deliveries.append(_email(alert, config, timeout_s=timeout_s))
    return deliveries


# -- channels -------------------------------------------------------------------------------


def _log(alert: Alert) -> Delivery:
    """The log is the channel that always exists, so an alert is never silently lost."""
    level = logging.CRITICAL if alert.severity == "critical" else logging.WARNING
    logger.log(
        level,
        "[%s] %s: %s (key=%s) %s",
        alert.severity,
        alert.project,
        alert.title,
        alert.key,
        json.dumps(json_safe(alert.details), sort_keys=True, default=_fallback),
    )
    return Delivery("log", True, 1, "logged")


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect would turn the signed POST into a GET elsewhere: report it instead."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


def _webhook(
    alert: Alert,
    url: str,
    secret: bytes,
    retries: int,
    backoff_seconds: float,
    *,
    sleep: Callable[[float], None],
    timeout_s: float,
) -> Delivery:
    """POST the signed body; retry what may pass later (network, 5xx, 429), not refusals."""
    try:
        body = encode(alert)
        signature = sign(body, secret)
    except Exception as exc:  # an alert that cannot be encoded is a failed delivery
        return Delivery("webhook", False, 0, f"cannot encode alert: {_describe(exc)}")
    attempts = 0
    detail = ""
    for attempt in range(retries + 1):
        if attempt:
            sleep(backoff_seconds * 2 ** (attempt - 1))
        attempts += 1
        ok, retry, detail = _post(url, body, signature, timeout_s)
        if ok or not retry:
            return Delivery("webhook", ok, attempts, detail)
    return Delivery("webhook", False, attempts, detail)


def _post(url: str, body: bytes, signature: str, timeout_s: float) -> tuple[bool, bool, str]:
    """One attempt: (ok, worth retrying, detail)."""
    request = urllib.request.Request(
        url,
        data=body,
        method="POST",
        headers={
            "Content-Type": "application/json",
            "User-Agent": "copml-alerts",
            SIGNATURE_HEADER: signature,
            TIMESTAMP_HEADER: str(int(time.time())),
        },
    )
    try:
        with _OPENER.open(request, timeout=timeout_s) as response:
            return True, False, _status(response.status, response.reason)
    except urllib.error.HTTPError as exc:
        exc.close()
        retry = exc.code >= 500 or exc.code == 429
        return False, retry, _status(exc.code, exc.reason)
    except urllib.error.URLError as exc:
        reason = exc.reason
        kind = "timeout" if isinstance(reason, TimeoutError) else "connection error"
        return False, True, f"{kind}: {_describe(reason)}"
    except TimeoutError as exc:
        return False, True, f"timeout: {_describe(exc)}"
    except (OSError, http.client.HTTPException) as exc:
        return False, True, f"connection error: {_describe(exc)}"
    except Exception as exc:  # e.g. a malformed URL: retrying cannot help
        return False, False, f"error: {_describe(exc)}"


def _email(alert: Alert, config: Alerts, *, timeout_s: float) -> Delivery:
    """One message to every recipient; the SMTP server does its own retrying."""
    try:
        message = EmailMessage()
        message["From"] = config.smtp.sender
        message["To"] = ", ".join(config.email)
        message["Subject"] = _one_line(f"[copml] {alert.project}: {alert.title}")
        message.set_content(_text(alert))
        with smtplib.SMTP(config.smtp.host, config.smtp.port, timeout=timeout_s) as smtp:
            refused = smtp.send_message(message)
    except Exception as exc:  # SMTP, socket and header errors alike: report, do not raise
        return Delivery("email", False, 1, _describe(exc))
    if refused:
        return Delivery("email", True, 1, f"sent; refused: {', '.join(sorted(refused))}")
    return Delivery("email", True, 1, f"sent to {len(config.email)} recipient(s)")


# -- helpers --------------------------------------------------------------------------------


def _text(alert: Alert) -> str:
    """The e-mail body: the same facts as the webhook, one per line."""
    lines = [
        alert.title,
        "",
        f"project:  {alert.project}",
        f"severity: {alert.severity}",
        f"at:       {alert.at.isoformat()}",
        f"key:      {alert.key}",
    ]
    if alert.details:
        lines += ["", "details:"]
        for name in sorted(alert.details, key=str):
            value = alert.details[name]
            if not isinstance(value, str):
                value = json.dumps(json_safe(value), sort_keys=True, default=_fallback)
            lines.append(f"  {name}: {value}")
    return "\n".join(lines) + "\n"


def _status(code: int, reason: object) -> str:
    return f"HTTP {code} {reason}".rstrip()


def _describe(exc: object) -> str:
    """``Type: message`` on one line: enough to act on, no traceback."""
    if isinstance(exc, BaseException):
        text = str(exc) or repr(exc)
        return _one_line(f"{type(exc).__name__}: {text}")
    return _one_line(str(exc))


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _fallback(value: Any) -> Any:
    """numpy scalars and the like: their Python value if they have one, else their text."""
    item = getattr(value, "item", None)
    if callable(item):
        try:
            converted = item()
        except Exception:
            return str(value)
        if isinstance(converted, float) and not math.isfinite(converted):
            return None
        return converted
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)
