"""Issue 16: clients that stall mid-request cost ``broker serve`` a socket each, never a worker."""
from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from typing import Iterator

import pytest

from broker.adapters import rsgi, wsgi

from tests.adapters.test_wsgi import Served, start
from tests.conftest import WEB_KEY

UPLOAD = json.dumps({"filename": "me.png", "content_type": "image/png", "size": 1200}).encode()
STALLED = 100
HEAD = b"POST /uploads HTTP/1.1\r\nHost: broker\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
SLACK = 5.0  # seconds past the deadline for the server to get round to closing (a busy CI machine)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    served = start(tmp_path_factory.mktemp("stalled"), "--workers", "2")
    try:
        yield served
    finally:
        if served.proc.poll() is None:
            served.proc.kill()
            served.proc.wait()


def timed(port: int, method: str, path: str, body: bytes | None, headers: dict[str, str]) -> tuple[int, float]:
    """One request on a new connection: its status and how long the answer took."""
    began = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        response.read()
        return response.status, time.monotonic() - began
    finally:
        conn.close()


def closed_at(sock: socket.socket, began: float, until: float) -> tuple[float | None, bytes]:
    """When (seconds after ``began``) the server closed ``sock``, None if not by ``until``; and what it sent first."""
    answer = b""
    while time.monotonic() < until:
        sock.settimeout(max(0.01, until - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        except OSError:  # reset: closed as well
            return time.monotonic() - began, answer
        if chunk == b"":
            return time.monotonic() - began, answer
        answer += chunk
    return None, answer


def test_stalled_bodies_do_not_stop_health_or_uploads_and_are_closed_by_the_deadline(served: Served) -> None:
    began = time.monotonic()
    silent = [socket.create_connection(("127.0.0.1", served.port)) for _ in range(STALLED // 2)]
    for sock in silent:
        sock.sendall(HEAD + b"{")  # 1 byte of 100, then nothing
    trickling = [socket.create_connection(("127.0.0.1", served.port)) for _ in range(STALLED - STALLED // 2)]
    mute = socket.create_connection(("127.0.0.1", served.port))  # connects, then sends nothing at all
    stop = threading.Event()

    for sock in trickling:
        sock.sendall(HEAD)

    def trickle() -> None:  # 1 byte a second on each, forever (never 100 bytes before the deadline)
        while not stop.wait(1.0):
            for sock in trickling:
                try:
                    sock.sendall(b" ")
                except (OSError, ValueError):  # the server closed it (what it should do), or the test did
                    pass

    trickler = threading.Thread(target=trickle, daemon=True)
    trickler.start()
    try:
        slow: list[str] = []
        rounds = 0
        while time.monotonic() - began < 5:
            status, took = timed(served.port, "GET", "/health", None, {})
            if status != 200 or took > 1:
                slow.append(f"/health {status} in {took:.2f} s")
            status, took = timed(served.port, "POST", "/uploads", UPLOAD,
                                 {"content-type": "application/json", "x-api-key": WEB_KEY})
            if status != 200 or took > 1:
                slow.append(f"POST /uploads {status} in {took:.2f} s")
            rounds += 1
            time.sleep(0.1)
        assert slow == [] and rounds >= 5

        until = began + max(rsgi.BODY_SECONDS, wsgi.HEADER_SECONDS) + SLACK
        closed = [closed_at(sock, began, until) for sock in [*silent, *trickling, mute]]
        still_open = [i for i, (at, _) in enumerate(closed) if at is None]
        assert still_open == [], f"{len(still_open)} stalled connections still open, e.g. #{still_open[0]}"
        head, _, body = closed[0][1].partition(b"\r\n\r\n")  # a stalled body is answered before the close
        assert head.startswith(b"HTTP/1.1 408") and json.loads(body)["error"] == "request_timeout"
    finally:
        stop.set()
        trickler.join(timeout=5)
        for sock in [*silent, *trickling, mute]:
            sock.close()


@pytest.mark.parametrize("name", ["x_api_key", "X_Api_Key", "x-api_key"])
def test_a_credential_header_with_underscores_is_not_read(served: Served, name: str) -> None:
    status, _ = timed(served.port, "POST", "/uploads", UPLOAD, {"content-type": "application/json", name: WEB_KEY})
    assert status == 401
    status, _ = timed(served.port, "POST", "/uploads", UPLOAD,
                      {"content-type": "application/json", "x-api-key": WEB_KEY})
    assert status == 200


def test_the_upload_page_and_a_head_request_are_served(served: Served) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", served.port, timeout=5)
    try:
        conn.request("GET", "/")
        response = conn.getresponse()
        page = response.read()
        assert response.status == 200 and b"<html" in page.lower()
        assert response.getheader("content-type") == "text/html; charset=utf-8"
        conn.request("HEAD", "/")
        response = conn.getresponse()
        assert response.status == 200 and response.read() == b""
        assert response.getheader("content-length") == str(len(page))
    finally:
        conn.close()


@pytest.mark.parametrize("pairs, expected", [
    pytest.param([("X-Api-Key", "k")], {"x-api-key": "k"}, id="lower_cased"),
    pytest.param([("x_api_key", "k")], {}, id="underscore_dropped"),
    pytest.param([("x-api-key", "a"), ("X-API-KEY", "b")], {"x-api-key": "a, b"}, id="repeated_joined"),
])
def test_request_headers(pairs: list[tuple[str, str]], expected: dict[str, str]) -> None:
    assert rsgi.request_headers(pairs) == expected


@pytest.mark.parametrize("client, expected", [
    pytest.param("127.0.0.1:5555", "127.0.0.1", id="ipv4"),
    pytest.param("[::1]:5555", "::1", id="ipv6"),
    pytest.param("::1", "::1", id="ipv6_no_port"),
    pytest.param("", None, id="none"),
])
def test_source_ip(client: str, expected: str | None) -> None:
    assert rsgi.source_ip(client) == expected


def test_waitress_drops_underscore_headers_too() -> None:
    """``make run`` and the tests serve through waitress, which drops such names before the environ."""
    app_seen: list[dict[str, str]] = []

    def app(environ, start_response):  # type: ignore[no-untyped-def]
        app_seen.append(wsgi.to_request(environ, 100).headers)  # type: ignore[arg-type]
        start_response("200 OK", [("Content-Length", "0")])
        return [b""]

    server = wsgi.ServerThread(app)  # type: ignore[arg-type]
    try:
        status, _ = timed(server.port, "GET", "/", None, {"x_api_key": WEB_KEY})
    finally:
        server.close()
    assert status == 200 and "x-api-key" not in app_seen[0]


def test_threads_run_requests_off_the_event_loop(tmp_path_factory: pytest.TempPathFactory) -> None:
    served = start(tmp_path_factory.mktemp("threads"), "--workers", "1", "--threads", "2")
    try:
        status, _ = timed(served.port, "POST", "/uploads", UPLOAD,
                          {"content-type": "application/json", "x-api-key": WEB_KEY})
        assert status == 200
        assert served.stop() == 0
    finally:
        if served.proc.poll() is None:
            served.proc.kill()
            served.proc.wait()
