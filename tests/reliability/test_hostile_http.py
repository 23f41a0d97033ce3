"""Hostile raw HTTP at both servers: ``broker serve`` (granian) and ``make run``'s (waitress).

Each case is bytes on a socket, as an attacker sends them: query-string and header floods, a
header too large, broken chunked encoding, contradictory lengths, pipelined requests with a bad
one among them, broken request lines. The servers may refuse a request (4xx) or drop the
connection; they may never answer 500 or above, and they must still serve a real request after
every case. Every 4xx the broker itself writes is JSON with a request id. An ``x_api_key`` header
is no credential on waitress; on granian's WSGI it still is (issue 16, marked below).
"""
from __future__ import annotations

import io
import json
import os
import re
import socket
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.adapters.test_wsgi import Served, serving
from tests.conftest import ROOT, WEB_KEY

UPLOAD = b'{"filename": "me.png", "content_type": "image/png", "size": 1200}'


def request(method: str = "POST", path: str = "/uploads", *, headers: list[tuple[str, str]] | None = None,
            body: bytes = UPLOAD, version: str = "HTTP/1.1", length: bool = True) -> bytes:
    lines = [f"{method} {path} {version}", "Host: 127.0.0.1", f"x-api-key: {WEB_KEY}",
             "Content-Type: application/json"]
    if length:
        lines.append(f"Content-Length: {len(body)}")
    lines += [f"{name}: {value}" for name, value in headers or []]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def chunked(raw_chunks: bytes) -> bytes:
    head = (f"POST /uploads HTTP/1.1\r\nHost: 127.0.0.1\r\nx-api-key: {WEB_KEY}\r\n"
            "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n").encode()
    return head + raw_chunks


#: (case, the bytes sent). The body of a real upload where a body is wanted.
CASES: list[tuple[str, bytes]] = [
    ("query flood", request(path="/uploads?" + "&".join(f"a{i}=1" for i in range(5000)))),
    ("query flood on health", request("GET", "/health?" + "a=1&" * 3000, body=b"", length=False)),
    ("query of one key repeated", request(path="/s3/params?" + "filename=x.png&" * 2000)),
    ("header flood", request(headers=[(f"x-h{i}", "v") for i in range(300)])),
    ("one huge header", request(headers=[("x-big", "v" * 200_000)])),
    ("api key repeated", request(headers=[("x-api-key", WEB_KEY)] * 50)),
    ("underscore credential beside the real one", request(headers=[("x_api_key", WEB_KEY)])),
    ("header without colon", request(headers=[("x-broken", "v")]).replace(b"x-broken: v", b"x-broken v")),
    ("control bytes in a header", request(headers=[("x-c", "a\x00b\x07c")])),
    ("non-latin header bytes", request(headers=[("x-u", "é")]).replace("é".encode("latin-1"), "é".encode())),
    ("negative content-length", request(length=False, headers=[("Content-Length", "-5")])),
    ("non-numeric content-length", request(length=False, headers=[("Content-Length", "12abc")])),
    ("huge content-length", request(length=False, headers=[("Content-Length", "99999999999999999999")])),
    ("two content-lengths", request(length=False, headers=[("Content-Length", "3"), ("Content-Length", "70")])),
    ("length and chunked", request(headers=[("Transfer-Encoding", "chunked")])),
    ("chunk size not hex", chunked(b"zz\r\n" + UPLOAD + b"\r\n0\r\n\r\n")),
    ("chunk size overflow", chunked(b"FFFFFFFFFFFFFFFFFFFF\r\n" + UPLOAD + b"\r\n0\r\n\r\n")),
    ("chunk longer than said", chunked(b"5\r\n" + UPLOAD + b"\r\n0\r\n\r\n")),
    ("chunked without terminator", chunked(f"{len(UPLOAD):x}\r\n".encode() + UPLOAD + b"\r\n")),
    ("chunk extensions galore", chunked(f"{len(UPLOAD):x};" .encode() + b"x=y;" * 2000 + b"\r\n" + UPLOAD
                                        + b"\r\n0\r\n\r\n")),
    ("trailer flood", chunked(f"{len(UPLOAD):x}\r\n".encode() + UPLOAD + b"\r\n0\r\n"
                              + b"".join(f"t{i}: v\r\n".encode() for i in range(500)) + b"\r\n")),
    ("pipelined 50", request() * 50),
    ("pipelined with a broken one inside", request() * 5 + b"GARBAGE / HTTP/1.1\r\n\r\n" + request() * 5),
    ("pipelined body smuggling", request(body=UPLOAD + b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")),
    ("invalid method", request(method="BR@KEN")),
    ("HTTP/0.9", b"GET /health\r\n\r\n"),
    ("HTTP/2 preface on HTTP/1", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
    ("absurd version", request(version="HTTP/9.9")),
    ("very long path", request(path="/uploads/" + "a" * 100_000)),
    ("null byte in the path", request(path="/uploads/\x00abc")),
    ("utf-8 in the path", request("GET", "/uploads/" + "é" * 10, body=b"", length=False).replace(
        ("é" * 10).encode("latin-1"), ("é" * 10).encode())),
    ("percent garbage in the path", request("GET", "/uploads/%zz%%00%ff", body=b"", length=False)),
    ("absolute-form target", request(path="http://evil.example/uploads")),
    ("asterisk target on POST", request(path="*")),
    ("deep JSON", request(body=b"[" * 100_000 + b"]" * 100_000)),
    ("JSON with a NaN", request(body=b'{"filename": "x.png", "content_type": "image/png", "size": NaN}')),
    ("headers sent, the body never comes", request()[:-len(UPLOAD) - 4]),
    ("bare LF line endings", request().replace(b"\r\n", b"\n")),
]


def exchange(port: int, data: bytes, *, wait: float = 1.5, idle: float = 0.3) -> bytes:
    """Send ``data`` and read what comes back: up to ``wait`` s for the first byte, then until the
    server closes or says nothing more for ``idle`` s (the socket is left open: some servers drop
    a half-closed client's request)."""
    got = io.BytesIO()
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as sock:
        try:
            sock.sendall(data)
        except OSError:  # the server closed first (a flood refused early): what it said still counts
            pass
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            sock.settimeout(idle if got.tell() else max(0.01, deadline - time.monotonic()))
            try:
                chunk = sock.recv(65536)
            except (socket.timeout, OSError):
                break
            if not chunk:
                break
            got.write(chunk)
    return got.getvalue()


_STATUS = re.compile(rb"HTTP/1\.[01] (\d{3}) ")


def statuses(answer: bytes) -> list[int]:
    """The status code of every response in ``answer`` (pipelined answers come one after another)."""
    return [int(m.group(1)) for m in _STATUS.finditer(answer)]


def healthy(port: int) -> bool:
    answer = exchange(port, request(), wait=5)
    return statuses(answer)[:1] == [200]


@pytest.fixture(scope="module")
def granian(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    work = tmp_path_factory.mktemp("hostile-serve")
    env = dict(os.environ)
    env.pop("BROKER_LEDGER", None)
    with serving(work, "--workers", "2", "--rules", str(ROOT / "rules.yaml"),
                 "--audit-file", str(work / "audit.jsonl"), env=env) as served:
        yield served


@pytest.fixture(scope="module")
def waitress(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from broker.adapters.wsgi import ServerThread, WsgiApp
    from broker.config import Settings
    from broker.service import build

    work = tmp_path_factory.mktemp("hostile-waitress")
    settings = Settings(rules=str(ROOT / "rules.yaml"), audit_file=str(work / "audit.jsonl"),
                        s3_endpoint_url="http://127.0.0.1:9", s3_addressing_style="path")
    server = ServerThread(WsgiApp(build(settings, audit_stream=None)), "127.0.0.1", 0)
    server.work = work  # type: ignore[attr-defined]
    try:
        yield server
    finally:
        server.close()


def _attack(port: int, work: Path, watch: Any) -> None:
    five_hundreds: dict[str, list[int]] = {}
    answered = 0
    for case, data in CASES:
        got = statuses(exchange(port, data))
        answered += len(got)
        if any(code >= 500 for code in got):
            five_hundreds[case] = got
        assert healthy(port), f"the server stopped answering after: {case}"
    assert not five_hundreds, five_hundreds
    watch.count("hostile raw HTTP: cases sent (x2 servers)", len(CASES))
    watch.count("hostile raw HTTP: responses read, none >= 500", answered)
    lines = [json.loads(line) for line in (work / "audit.jsonl").read_text().splitlines() if line.strip()]
    errors = [r for r in lines if r.get("decision") == "error"]
    assert errors and all(r.get("request_id") and 400 <= r["status"] < 500 for r in errors), errors[:3]


def test_broker_serve_takes_hostile_raw_http(granian: Served, watch: Any) -> None:
    _attack(granian.port, granian.work, watch)


def test_make_run_server_takes_hostile_raw_http(waitress: Any, watch: Any) -> None:
    _attack(waitress.port, waitress.work, watch)


def _underscore_key() -> bytes:
    return request().replace(f"x-api-key: {WEB_KEY}\r\n".encode(), b"x_api_key: " + WEB_KEY.encode() + b"\r\n")


def test_an_underscore_header_is_never_a_credential_on_make_runs_server(waitress: Any) -> None:
    """``x_api_key`` must not be read as ``x-api-key``: proxies and WSGI servers fold ``_`` into ``-``,
    so it could smuggle a credential past a proxy that strips ``x-api-key``. waitress drops such names."""
    got = exchange(waitress.port, _underscore_key())
    assert statuses(got)[:1] == [401], got[:200]


def test_an_underscore_header_is_never_a_credential_on_broker_serve(granian: Served) -> None:
    """broker serve (RSGI: raw header names) drops ``_`` names as waitress does (adapters/rsgi.py)."""
    got = exchange(granian.port, _underscore_key())
    assert statuses(got)[:1] == [401], got[:200]
