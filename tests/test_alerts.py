"""Alert delivery against real local receivers: an HTTP server and an SMTP server on 127.0.0.1."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email import message_from_bytes
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from copml.operate.delivery import Alert, Delivery, deliver, encode, sign
from copml.spec import Alerts, Smtp

SECRET = b"s3cret-for-tests"
BACKOFF = 0.25


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """urllib honours proxy variables; the receivers here are local."""
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)


def _alert() -> Alert:
    return Alert(
        key="policy:escalate",
        project="churn",
        title="recall below 0.70 for 3 windows",
        severity="critical",
        at=datetime(2024, 5, 1, 12, 30, tzinfo=UTC),
        details={"recall": 0.64, "threshold": 0.7, "windows": 3},
    )


class Sleeps(list[float]):
    """An injected ``sleep`` that records the back-off instead of waiting."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


@dataclass
class Receiver:
    """A real HTTP receiver; ``requests`` holds (headers, body) of every POST it saw."""

    url: str
    requests: list[tuple[dict[str, str], bytes]] = field(default_factory=list)


@pytest.fixture
def receiver() -> Iterator[Callable[[Callable[[int], int]], Receiver]]:
    """Start receivers whose status for the n-th request (0-based) comes from ``status``."""
    started: list[tuple[ThreadingHTTPServer, threading.Thread]] = []
    release = threading.Event()

    def start(status: Callable[[int], int]) -> Receiver:
        lock = threading.Lock()
        record = Receiver(url="")

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with lock:
                    n = len(record.requests)
                    record.requests.append((dict(self.headers.items()), body))
                code = status(n)
                if code == 0:  # hang until the test ends: the client must time out
                    release.wait()
                    return
                self.send_response(code)
                if 300 <= code < 400:
                    self.send_header("Location", "/elsewhere")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
        thread.start()
        started.append((server, thread))
        record.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
        return record

    yield start
    release.set()
    for server, thread in started:
        server.shutdown()
        server.server_close()
        thread.join()


def _webhook(deliveries: list[Delivery]) -> Delivery:
    assert deliveries[0].channel == "log"
    (found,) = [d for d in deliveries if d.channel == "webhook"]
    return found


def test_retries_5xx_then_succeeds_with_signed_body(receiver: Callable[..., Receiver]) -> None:
    hook = receiver(lambda n: 503 if n < 2 else 200)
    sleeps = Sleeps()
    before = int(time.time())
    config = Alerts(webhook=hook.url, retries=5, backoff_seconds=BACKOFF)

    deliveries = deliver(_alert(), config, SECRET, sleep=sleeps)

    delivery = _webhook(deliveries)
    assert delivery.ok and delivery.attempts == 3, delivery
    assert "200" in delivery.detail
    assert sleeps == [BACKOFF, 2 * BACKOFF]
    assert len(hook.requests) == 3
    headers, body = hook.requests[-1]
    expected = "sha256=" + hmac.new(SECRET, body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(expected, headers["X-Copml-Signature"])
    assert not hmac.compare_digest(sign(body, b"wrong"), headers["X-Copml-Signature"])
    assert before <= int(headers["X-Copml-Timestamp"]) <= int(time.time())
    assert headers["Content-Type"] == "application/json"
    assert body == encode(_alert())  # compact, sorted keys: the exact bytes that were signed
    payload = json.loads(body)
    assert payload["details"] == {"recall": 0.64, "threshold": 0.7, "windows": 3}
    assert payload["key"] == "policy:escalate"
    assert payload["severity"] == "critical"
    assert datetime.fromisoformat(payload["at"]) == _alert().at


@pytest.mark.parametrize("code", [500, 503, 429])
def test_receiver_that_always_fails_gives_up(receiver: Callable[..., Receiver], code: int) -> None:
    hook = receiver(lambda n: code)
    sleeps = Sleeps()
    config = Alerts(webhook=hook.url, retries=3, backoff_seconds=BACKOFF)

    delivery = _webhook(deliver(_alert(), config, SECRET, sleep=sleeps))

    assert not delivery.ok
    assert delivery.attempts == 4 == len(hook.requests)
    assert f"HTTP {code}" in delivery.detail
    assert sleeps == [BACKOFF, 2 * BACKOFF, 4 * BACKOFF]


@pytest.mark.parametrize("code", [400, 401, 404, 302])
def test_refusal_is_not_retried(receiver: Callable[..., Receiver], code: int) -> None:
    hook = receiver(lambda n: code)
    sleeps = Sleeps()
    config = Alerts(webhook=hook.url, retries=5, backoff_seconds=BACKOFF)

    delivery = _webhook(deliver(_alert(), config, SECRET, sleep=sleeps))

    assert not delivery.ok
    assert delivery.attempts == 1 == len(hook.requests)
    assert f"HTTP {code}" in delivery.detail
    assert sleeps == []


def test_closed_port_is_a_reported_connection_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    sleeps = Sleeps()
    config = Alerts(webhook=f"http://127.0.0.1:{port}/hook", retries=2, backoff_seconds=BACKOFF)

    deliveries = deliver(_alert(), config, SECRET, sleep=sleeps)

    delivery = _webhook(deliveries)
    assert not delivery.ok
    assert delivery.attempts == 3
    assert delivery.detail.startswith("connection error"), delivery.detail
    assert "refused" in delivery.detail.lower()
    assert "Traceback" not in delivery.detail
    assert sleeps == [BACKOFF, 2 * BACKOFF]
    assert deliveries[0] == Delivery("log", True, 1, "logged")


def test_silent_receiver_times_out_and_is_retried(receiver: Callable[..., Receiver]) -> None:
    hook = receiver(lambda n: 0 if n == 0 else 200)
    sleeps = Sleeps()
    config = Alerts(webhook=hook.url, retries=2, backoff_seconds=BACKOFF)

    delivery = _webhook(deliver(_alert(), config, SECRET, sleep=sleeps, timeout_s=0.3))

    assert delivery.ok and delivery.attempts == 2, delivery
    assert sleeps == [BACKOFF]


def test_always_logged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="copml.alerts"):
        deliveries = deliver(_alert(), Alerts(), SECRET, sleep=Sleeps())

    assert deliveries == [Delivery("log", True, 1, "logged")]
    (record,) = [r for r in caplog.records if r.name == "copml.alerts"]
    assert record.levelno == logging.CRITICAL
    assert "policy:escalate" in record.getMessage() and "0.64" in record.getMessage()


def test_payload_and_validation() -> None:
    payload = _alert().payload()
    assert set(payload) == {"key", "project", "title", "severity", "at", "details"}
    assert payload["at"] == "2024-05-01T12:30:00+00:00"
    with pytest.raises(ValueError, match="severity"):
        Alert("k", "p", "t", "fatal", datetime.now(UTC), {})
    odd = Alert("k", "p", "t", "warning", datetime.now(UTC), {"psi": float("nan")})
    assert json.loads(encode(odd))["details"] == {"psi": None}


# -- e-mail ---------------------------------------------------------------------------------


class Inbox:
    """An aiosmtpd handler that keeps every message it is given."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], Message]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        content = envelope.original_content or envelope.content
        self.messages.append(
            (envelope.mail_from, list(envelope.rcpt_tos), message_from_bytes(content))
        )
        return "250 OK"


class _PortZeroController(Controller):
    """aiosmtpd on a socket already bound to port 0, so the real port is known up front."""

    def __init__(self, handler: Any) -> None:
        self._sock = socket.create_server(("127.0.0.1", 0))
        super().__init__(handler, hostname="127.0.0.1", port=self._sock.getsockname()[1])

    def _create_server(self) -> Any:
        return self.loop.create_server(self._factory_invoker, sock=self._sock)


@pytest.fixture
def smtp_server() -> Iterator[tuple[Inbox, int]]:
    inbox = Inbox()
    controller = _PortZeroController(inbox)
    controller.start()
    try:
        yield inbox, controller.port
    finally:
        controller.stop()


def test_email_to_local_smtp(smtp_server: tuple[Inbox, int]) -> None:
    inbox, port = smtp_server
    config = Alerts(
        email=["oncall@example.com", "owner@example.com"],
        smtp=Smtp(host="127.0.0.1", port=port, sender="copml@example.com"),
    )

    deliveries = deliver(_alert(), config, SECRET, sleep=Sleeps())

    (email,) = [d for d in deliveries if d.channel == "email"]
    assert email.ok and email.attempts == 1, email
    (mail_from, rcpt_tos, message) = inbox.messages[0]
    assert mail_from == "copml@example.com"
    assert rcpt_tos == ["oncall@example.com", "owner@example.com"]
    assert message["Subject"] == "[copml] churn: recall below 0.70 for 3 windows"
    body = message.get_payload(decode=True).decode()
    assert "recall: 0.64" in body and "threshold: 0.7" in body and "policy:escalate" in body


def test_email_failure_is_reported_not_raised() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = Alerts(email=["oncall@example.com"], smtp=Smtp(host="127.0.0.1", port=port))

    deliveries = deliver(_alert(), config, SECRET, sleep=Sleeps(), timeout_s=1.0)

    (email,) = [d for d in deliveries if d.channel == "email"]
    assert not email.ok
    assert "ConnectionRefusedError" in email.detail
    assert "Traceback" not in email.detail
