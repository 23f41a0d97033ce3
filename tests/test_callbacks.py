"""Signed callbacks over real HTTP: a local server records each request and answers a script of statuses."""
from __future__ import annotations

import itertools
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from broker.callbacks import Delivery, Notifier, env_secret, redact
from broker.core.callbacks import (
    DELIVERY_HEADER,
    EVENT_HEADER,
    SIGNATURE_HEADER,
    delivery_id,
    payload,
    verify,
)

SECRET = b"whsec-never-in-a-log-0123456789"
SECRET_ENV = "ACME_CALLBACK_SECRET"
T = 1_764_341_371


@dataclass
class Reply:
    """One scripted answer: a status, its headers, a delay before it, or a wait for ``release``."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    block: bool = False


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


class Receiver:
    """A real HTTP server on 127.0.0.1: records every request and answers ``script`` in order (then 200)."""

    def __init__(self) -> None:
        self.requests: list[Received] = []
        self.script: list[Reply] = []
        self.release = threading.Event()
        self.arrived = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with receiver.arrived:
                    receiver.requests.append(Received(self.path, dict(self.headers), body))
                    reply = receiver.script.pop(0) if receiver.script else Reply()
                    receiver.arrived.notify_all()
                if reply.block:
                    receiver.release.wait(5)
                time.sleep(reply.delay)
                try:
                    self.send_response(reply.status)
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                except OSError:  # the client gave up (a timeout test)
                    pass

            def log_message(self, format: str, *args: Any) -> None:  # the paths hold test tokens: keep quiet
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.block_on_close = False
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)

    def wait_for(self, count: int, timeout: float = 2.0) -> None:
        with self.arrived:
            assert self.arrived.wait_for(lambda: len(self.requests) >= count, timeout), self.requests


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    r.thread.start()
    yield r
    r.release.set()
    r.server.shutdown()
    r.server.server_close()


def body_for(etag: str = '"e1"', status: str = "verified") -> dict[str, Any]:
    return payload(grant_id="a" * 32, client="acme", profile="avatars", bucket="broker-uploads",
                   key="uploads/acme/avatars/x.png", size=1200, etag=etag, content_type="image/png", status=status,
                   checks=[] if status == "verified" else [("too_large", "too large")],
                   verified_at="2026-11-28T14:54:31Z")


def notifier(waits: list[float] | None = None, **options: Any) -> Notifier:
    """Inline delivery, the test secret, a clock that ticks a second per reading, recorded (not slept) waits."""
    ticks = itertools.count(T)
    settings: dict[str, Any] = {"secrets": {SECRET_ENV: SECRET}.get, "sleep": (waits if waits is not None else []).append,
                                "clock": lambda: float(next(ticks)), "background": False, "timeout": 1.0}
    return Notifier(**{**settings, **options})


def log_lines(err: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in err.splitlines() if line.startswith("{")]


def timestamp_of(header: str) -> int:
    return int(header.split(",")[0].removeprefix("t="))


# --------------------------------------------------------------------------- one delivery


def test_a_delivery_is_signed_json_that_verifies(receiver: Receiver) -> None:
    sent = body_for()
    result = notifier().notify(receiver.url + "/hooks", SECRET_ENV, sent)
    assert result == Delivery(ok=True, attempts=1, status=200, error=None, delivery_id=sent["delivery_id"])
    (got,) = receiver.requests
    assert got.path == "/hooks" and json.loads(got.body) == sent
    assert got.headers["Content-Type"] == "application/json"
    assert got.headers["User-Agent"] == "broker-callback/1"
    assert got.headers[DELIVERY_HEADER] == delivery_id("a" * 32, "e1")
    assert got.headers[EVENT_HEADER] == "upload.verified"
    signature = got.headers[SIGNATURE_HEADER]
    assert verify(SECRET, signature, got.body, now=timestamp_of(signature))
    assert not verify(b"another-secret", signature, got.body, now=timestamp_of(signature))


def test_retries_carry_one_delivery_id_and_a_fresh_signature_each(receiver: Receiver) -> None:
    receiver.script = [Reply(503), Reply(503), Reply(200)]
    waits: list[float] = []
    result = notifier(waits).notify(receiver.url, SECRET_ENV, body_for())
    assert result is not None and (result.ok, result.attempts, result.status) == (True, 3, 200)
    assert waits == [0.5, 1.0]
    assert len({r.headers[DELIVERY_HEADER] for r in receiver.requests}) == 1
    stamps = [timestamp_of(r.headers[SIGNATURE_HEADER]) for r in receiver.requests]
    assert stamps == sorted(set(stamps)) and len(stamps) == 3
    assert all(verify(SECRET, r.headers[SIGNATURE_HEADER], r.body, now=s) for r, s in zip(receiver.requests, stamps))


def test_retries_stop_at_attempts(receiver: Receiver, capfd: pytest.CaptureFixture[str]) -> None:
    receiver.script = [Reply(500)] * 5
    waits: list[float] = []
    result = notifier(waits, attempts=3).notify(receiver.url, SECRET_ENV, body_for())
    assert result is not None and (result.ok, result.attempts, result.status) == (False, 3, 500)
    assert len(receiver.requests) == 3 and waits == [0.5, 1.0]
    (line,) = log_lines(capfd.readouterr().err)
    assert line["event"] == "callback_failed" and line["attempts"] == 3 and line["status"] == 500


def test_the_last_backoff_repeats(receiver: Receiver) -> None:
    receiver.script = [Reply(502)] * 4
    waits: list[float] = []
    notifier(waits, attempts=4, backoff=(0.1, 0.2)).notify(receiver.url, SECRET_ENV, body_for())
    assert waits == [0.1, 0.2, 0.2]


@pytest.mark.parametrize("status", [400, 401, 403, 404, 410, 422])
def test_other_4xx_are_not_retried(receiver: Receiver, status: int) -> None:
    receiver.script = [Reply(status), Reply(200)]
    waits: list[float] = []
    result = notifier(waits).notify(receiver.url, SECRET_ENV, body_for())
    assert result is not None and (result.ok, result.attempts, result.status) == (False, 1, status)
    assert result.error and "not retried" in result.error
    assert len(receiver.requests) == 1 and waits == []


def test_408_is_retried(receiver: Receiver) -> None:
    receiver.script = [Reply(408), Reply(204)]
    result = notifier().notify(receiver.url, SECRET_ENV, body_for())
    assert result is not None and (result.ok, result.attempts, result.status) == (True, 2, 204)


@pytest.mark.parametrize("retry_after, wait", [
    pytest.param("7", 7.0, id="seconds"),
    pytest.param("0", 0.0, id="now"),
    pytest.param("120", 60.0, id="capped_at_a_minute"),
    pytest.param("soon", 0.5, id="unreadable_falls_back_to_backoff"),
])
def test_429_honours_retry_after(receiver: Receiver, retry_after: str, wait: float) -> None:
    receiver.script = [Reply(429, {"Retry-After": retry_after}), Reply(200)]
    waits: list[float] = []
    result = notifier(waits).notify(receiver.url, SECRET_ENV, body_for())
    assert result is not None and result.ok and result.attempts == 2
    assert waits == [wait]


def test_retry_after_as_an_http_date(receiver: Receiver) -> None:
    receiver.script = [Reply(503, {"Retry-After": formatdate(T + 31, usegmt=True)}), Reply(200)]
    waits: list[float] = []
    notifier(waits).notify(receiver.url, SECRET_ENV, body_for())
    assert len(waits) == 1 and 29 <= waits[0] <= 31  # the clock ticked once or twice meanwhile


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_redirects_are_never_followed(receiver: Receiver, status: int) -> None:
    receiver.script = [Reply(status, {"Location": receiver.url + "/elsewhere"})]
    waits: list[float] = []
    result = notifier(waits).notify(receiver.url + "/hooks", SECRET_ENV, body_for())
    assert result is not None and (result.ok, result.attempts, result.status) == (False, 1, status)
    assert result.error and "redirect" in result.error and "not followed" in result.error
    assert [r.path for r in receiver.requests] == ["/hooks"] and waits == []


def test_a_timeout_is_retried(receiver: Receiver) -> None:
    receiver.script = [Reply(200, delay=1.0), Reply(200)]
    started = time.monotonic()
    result = notifier(timeout=0.05).notify(receiver.url, SECRET_ENV, body_for())
    assert result is not None and (result.ok, result.attempts, result.status) == (True, 2, 200)
    assert len(receiver.requests) == 2 and time.monotonic() - started < 0.9


def test_a_timeout_on_every_attempt_fails_with_no_status(receiver: Receiver) -> None:
    receiver.script = [Reply(200, delay=0.3)] * 2
    result = notifier(timeout=0.05, attempts=2).notify(receiver.url, SECRET_ENV, body_for())
    assert result is not None and (result.ok, result.attempts, result.status) == (False, 2, None)
    assert result.error == "timed out waiting for the receiver"


def test_a_refused_connection_is_retried() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    waits: list[float] = []
    result = notifier(waits, attempts=2).notify(f"http://127.0.0.1:{port}/hooks", SECRET_ENV, body_for())
    assert result is not None and (result.ok, result.attempts, result.status) == (False, 2, None)
    assert result.error and "ConnectionRefused" in result.error and waits == [0.5]


# --------------------------------------------------------------------------- nothing sent


@pytest.mark.parametrize("secrets", [
    pytest.param(lambda name: None, id="unset"),
    pytest.param(lambda name: b"", id="empty"),
    pytest.param(lambda name: 1 / 0, id="the_secret_store_fails"),
])
def test_no_secret_means_no_request(receiver: Receiver, secrets: Any) -> None:
    result = notifier(secrets=secrets).notify(receiver.url, SECRET_ENV, body_for())
    assert result is not None and (result.ok, result.attempts, result.status) == (False, 0, None)
    assert result.error and SECRET_ENV in result.error and "never sent unsigned" in result.error
    assert receiver.requests == []


@pytest.mark.parametrize("url, body, problem", [
    pytest.param("http://example.com/hooks", body_for(), "https://", id="plain_http"),
    pytest.param("https://alice:pw@example.com/", body_for(), "user or password", id="userinfo"),
    pytest.param("{url}", {"event": "upload.verified"}, "delivery_id", id="not_built_by_payload"),
    pytest.param("{url}", {**body_for(), "event": "x\r\nEvil: 1"}, "delivery_id or event", id="odd_event"),
    pytest.param("{url}", {**body_for(), "size": object()}, "not JSON", id="not_json"),
])
def test_a_bad_url_or_payload_sends_nothing(receiver: Receiver, url: str, body: dict[str, Any], problem: str) -> None:
    result = notifier().notify(url.format(url=receiver.url), SECRET_ENV, body)
    assert result is not None and not result.ok and result.attempts == 0
    assert result.error and problem in result.error and receiver.requests == []


def test_env_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SECRET_ENV, "s3cret")
    assert env_secret(SECRET_ENV) == b"s3cret"
    monkeypatch.setenv(SECRET_ENV, "")
    assert env_secret(SECRET_ENV) is None
    monkeypatch.delenv(SECRET_ENV)
    assert env_secret(SECRET_ENV) is None


# --------------------------------------------------------------------------- in the background


def test_background_delivery_and_close_waits(receiver: Receiver, capfd: pytest.CaptureFixture[str]) -> None:
    n = notifier(background=True)
    receiver.script = [Reply(200, delay=0.05)] * 3
    assert [n.notify(receiver.url, SECRET_ENV, body_for(f'"e{i}"')) for i in range(3)] == [None] * 3
    assert n.close(timeout=2)
    assert len(receiver.requests) == 3
    assert [line["event"] for line in log_lines(capfd.readouterr().err)] == ["callback_delivered"] * 3
    assert n.notify(receiver.url, SECRET_ENV, body_for()) is None  # a closed notifier starts again
    assert n.close(timeout=2) and len(receiver.requests) == 4


def test_a_full_queue_drops_and_logs_without_blocking(receiver: Receiver, capfd: pytest.CaptureFixture[str]) -> None:
    n = notifier(background=True, workers=1, queue_size=1)
    receiver.script = [Reply(200, block=True)]
    first, queued, dropped = (body_for(f'"e{i}"') for i in range(3))
    n.notify(receiver.url, SECRET_ENV, first)
    receiver.wait_for(1)  # the one worker is busy with the first
    n.notify(receiver.url, SECRET_ENV, queued)
    started = time.monotonic()
    assert n.notify(receiver.url, SECRET_ENV, dropped) is None
    assert time.monotonic() - started < 0.5
    assert not n.close(timeout=0.05)  # still waiting on the receiver
    receiver.release.set()
    assert n.close(timeout=2)
    assert [json.loads(r.body)["etag"] for r in receiver.requests] == ["e0", "e1"]
    lines = log_lines(capfd.readouterr().err)
    (drop,) = [line for line in lines if line["event"] == "callback_dropped"]
    assert drop["delivery_id"] == dropped["delivery_id"] and drop["level"] == "error" and "full" in drop["error"]
    assert [line["event"] for line in lines].count("callback_delivered") == 2


# --------------------------------------------------------------------------- what the logs may hold


def test_logs_never_hold_the_secret_the_signature_or_the_query(receiver: Receiver,
                                                                capfd: pytest.CaptureFixture[str]) -> None:
    url = receiver.url + "/hooks?token=hunter2"
    receiver.script = [Reply(503), Reply(200), Reply(400), Reply(302, {"Location": "/x?token=hunter2"})]
    n = notifier()
    for status in ("verified", "rejected", "rejected"):
        n.notify(url, SECRET_ENV, body_for(status=status))
    notifier(secrets=lambda name: None).notify(url, SECRET_ENV, body_for())
    err = capfd.readouterr().err
    lines = log_lines(err)
    assert [line["event"] for line in lines] == ["callback_delivered", "callback_failed", "callback_failed",
                                                 "callback_failed"]
    assert {line["url"] for line in lines} == {receiver.url + "/hooks"}
    signatures = [r.headers[SIGNATURE_HEADER] for r in receiver.requests]
    assert len(signatures) == 4 and receiver.requests[0].path == "/hooks?token=hunter2"
    for secret in (SECRET.decode(), "hunter2", "v1=", *signatures, *(s.split("v1=")[1] for s in signatures)):
        assert secret not in err


@pytest.mark.parametrize("url, logged", [
    pytest.param("https://api.acme.example/hooks?token=x#f", "https://api.acme.example/hooks", id="query"),
    pytest.param("https://u:p@api.acme.example:8443/h", "https://api.acme.example:8443/h", id="userinfo"),
    pytest.param("http://[::1]:3000/h", "http://[::1]:3000/h", id="ipv6"),
    pytest.param("https://[::1/", "(unparseable url)", id="unparseable"),
])
def test_redact(url: str, logged: str) -> None:
    assert redact(url) == logged
