"""``broker serve`` as an operator runs it: granian worker processes, each with its own broker."""
from __future__ import annotations

import contextlib
import http.client
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest

from broker import service
from broker.adapters import wsgi

from tests.conftest import WEB_KEY

ROOT = Path(__file__).resolve().parents[2]
UPLOAD = json.dumps({"filename": "me.png", "content_type": "image/png", "size": 1234}).encode()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Served:
    """A running ``broker serve`` and where its output goes."""

    proc: subprocess.Popen[bytes]
    port: int
    work: Path

    def post(self, conn: http.client.HTTPConnection, headers: dict[str, str]) -> tuple[int, dict[str, Any], str]:
        conn.request("POST", "/uploads", body=UPLOAD, headers={"content-type": "application/json", **headers})
        response = conn.getresponse()
        return response.status, json.loads(response.read()), response.getheader("X-Request-Id") or ""

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)


def start(work: Path, *args: str, env: dict[str, str] | None = None) -> Served:
    """``broker serve ARGS`` on a free loopback port; returns once /health answers 200."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "broker", "serve", "--host", "127.0.0.1", "--port", str(port), *args],
        cwd=ROOT, env=env or dict(os.environ), stdin=subprocess.DEVNULL,
        stdout=(work / "stdout.log").open("wb"), stderr=(work / "stderr.log").open("wb"))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"broker serve exited with {proc.returncode}:\n"
                                 f"{(work / 'stderr.log').read_text()}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                conn.close()
                return Served(proc, port, work)
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise AssertionError("broker serve did not answer /health within 60 s")


@contextlib.contextmanager
def serving(work: Path, *args: str, env: dict[str, str] | None = None) -> Iterator[Served]:
    """``broker serve ARGS`` (see :func:`start`) for the ``with`` block; killed after it if still running."""
    served = start(work, *args, env=env)
    try:
        yield served
    finally:
        if served.proc.poll() is None:
            served.proc.kill()
            served.proc.wait()


@pytest.fixture
def two_workers(tmp_path: Path) -> Iterator[Served]:
    env = {**os.environ, "HTTP_X_API_KEY": WEB_KEY}  # must not become a header of every request
    env.pop("BROKER_GRANT_SECRET", None)
    with serving(tmp_path, "--workers", "2", "--rules", str(ROOT / "rules.yaml"),
                 "--audit-file", str(tmp_path / "audit.jsonl"), env=env) as served:
        yield served


def test_two_workers_answer_and_audit_one_complete_line_per_request(two_workers: Served) -> None:
    sent: list[str] = []
    problems: list[str] = []

    def client() -> None:  # one keep-alive connection, several requests
        conn = http.client.HTTPConnection("127.0.0.1", two_workers.port, timeout=30)
        try:
            for _ in range(15):
                status, body, request_id = two_workers.post(conn, {"x-api-key": WEB_KEY})
                if status != 200 or not body["fields"].get("x-amz-signature") or not request_id:
                    problems.append(f"{status} {body}")
                sent.append(request_id)
        finally:
            conn.close()

    clients = [threading.Thread(target=client) for _ in range(8)]
    for t in clients:
        t.start()
    for t in clients:
        t.join(timeout=120)
    conn = http.client.HTTPConnection("127.0.0.1", two_workers.port, timeout=30)
    status, body, request_id = two_workers.post(conn, {})  # no key: the server's HTTP_X_API_KEY is no header
    assert (status, body["error"]) == (401, "unauthenticated")
    sent.append(request_id)
    conn.request("POST", "/uploads", body=iter([UPLOAD[:9], UPLOAD[9:]]), encode_chunked=True,
                 headers={"content-type": "application/json", "x-api-key": WEB_KEY})
    response = conn.getresponse()
    assert response.status == 200 and json.loads(response.read())["fields"]  # a chunked body is read too
    sent.append(response.getheader("X-Request-Id") or "")
    conn.close()
    assert two_workers.stop() == 0
    assert problems == [] and len(sent) == 8 * 15 + 2

    raw = (two_workers.work / "audit.jsonl").read_bytes()
    assert raw.endswith(b"\n")
    lines = raw.splitlines()
    records = [json.loads(line) for line in lines]  # every line whole: no torn or interleaved line
    assert Counter(rec["request_id"] for rec in records) == Counter(sent)
    stdout = [line for line in (two_workers.work / "stdout.log").read_bytes().splitlines() if line]
    assert Counter(stdout) == Counter(lines)  # the same lines on stdout, each whole

    log = [json.loads(line) for line in (two_workers.work / "stderr.log").read_text().splitlines()
           if line.startswith("{")]
    events = Counter(entry["event"] for entry in log)
    assert events["rules_loaded"] == 3  # checked once by broker serve, then once by each worker
    assert events["grant_secret_random"] == 1  # one secret, made by broker serve, shared by its workers
    assert events["session_secret_random"] == 1  # the same for session tokens
    serving = next(entry for entry in log if entry["event"] == "serving")
    assert serving["workers"] == 2


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (Linux /proc)."""
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                stat = Path(f"/proc/{name}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(name))
    return found


@pytest.mark.skipif(not Path("/proc/self/stat").exists() and not os.environ.get("CI"),  # never skipped on CI
                    reason="finds the workers through Linux /proc")
def test_a_killed_worker_is_replaced_and_the_server_says_so_on_stderr(tmp_path: Path) -> None:
    served = start(tmp_path, "--workers", "2")
    try:
        workers = children(served.proc.pid)
        assert len(workers) == 2
        os.kill(workers[0], signal.SIGKILL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            now = children(served.proc.pid)
            if len(now) == 2 and workers[0] not in now:
                break
            time.sleep(0.2)
        else:
            raise AssertionError(f"no new worker within 60 s: {now}")
        for _ in range(10):
            conn = http.client.HTTPConnection("127.0.0.1", served.port, timeout=30)
            assert served.post(conn, {"x-api-key": WEB_KEY})[0] == 200
            conn.close()
        assert served.stop() == 0  # even while the new worker may still be starting
        for pid in now:
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)
    finally:
        if served.proc.poll() is None:
            served.proc.kill()
            served.proc.wait()
    log = [json.loads(line) for line in (tmp_path / "stderr.log").read_text().splitlines()]  # all JSON
    assert any(entry["event"] == "server" and entry["message"].startswith("Unexpected exit from worker-")
               for entry in log)
    assert all(json.loads(line)["event"] == "upload" for line in (tmp_path / "stdout.log").read_text().splitlines())


@pytest.mark.parametrize("args, message", [
    pytest.param(["--audit-file", "/nonexistent-dir/audit.jsonl"], "cannot open the audit log", id="audit_file"),
    pytest.param(["--rules", "{tmp}/missing.yaml"], "the rules do not load", id="missing_rules"),
    pytest.param(["--workers", "0"], "--workers: must be 1 or more", id="no_workers"),
])
def test_start_up_errors_say_why_and_exit_non_zero(tmp_path: Path, args: list[str], message: str) -> None:
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    result = subprocess.run([sys.executable, "-m", "broker", "serve", "--port", str(free_port()), *args],
                            capture_output=True, text=True, cwd=ROOT, timeout=120, stdin=subprocess.DEVNULL)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr


def test_help_teaches_workers_and_threads() -> None:
    result = subprocess.run([sys.executable, "-m", "broker", "serve", "--help"], capture_output=True,
                            text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 0
    for words in ("--workers N", "--threads N", "number of CPUs", "BROKER_AUDIT_FILE", "BROKER_GRANT_SECRET"):
        assert words in result.stdout


def test_a_worker_that_cannot_load_the_rules_exits_with_the_reason(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    bad = tmp_path / "rules.yaml"
    bad.write_text("version: 1\n")
    monkeypatch.setattr(os, "environ", {**os.environ, "BROKER_RULES": str(bad)})
    with pytest.raises(SystemExit) as exc:
        service.serve_worker()
    assert "the rules do not load" in str(exc.value.code) and "'bucket' is required here" in str(exc.value.code)


def test_a_worker_drops_http_variables_from_its_environment() -> None:
    env = {"HTTP_X_API_KEY": "k", "HTTP_PROXY": "http://proxy:3128", "HTTPS_PROXY": "http://p:1", "PATH": "/bin"}
    wsgi.drop_http_variables(env)
    assert env == {"http_proxy": "http://proxy:3128", "HTTPS_PROXY": "http://p:1", "PATH": "/bin"}
    env = {"HTTP_PROXY": "http://upper", "http_proxy": "http://lower"}
    wsgi.drop_http_variables(env)
    assert env == {"http_proxy": "http://lower"}  # urllib and botocore prefer the lower-case one anyway


@pytest.mark.parametrize("size, refused", [(10, False), (100, False), (101, True)])
def test_a_body_without_length_is_read_up_to_the_limit(size: int, refused: bool) -> None:
    from broker.errors import PayloadTooLarge

    environ = {"REQUEST_METHOD": "POST", "PATH_INFO": "/uploads", "wsgi.input_terminated": True,
               "wsgi.input": io.BytesIO(b"x" * size)}  # as granian hands over a chunked body
    if refused:
        with pytest.raises(PayloadTooLarge):
            wsgi.to_request(environ, 100)
    else:
        assert wsgi.to_request(environ, 100).body == b"x" * size


def test_line_stream_writes_each_line_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    read_fd, write_fd = os.pipe()
    calls: list[int] = []
    real_write = os.write

    def short_write(fd: int, data: Any) -> int:  # as a signal or a full pipe would cut it
        calls.append(len(data))
        return real_write(fd, bytes(data[:7]))

    try:
        stream = wsgi.LineStream(write_fd)
        line = '{"decision": "allowed", "name": "é"}\n'
        assert stream.write(line) == len(line)
        monkeypatch.setattr(os, "write", short_write)
        stream.write(line)
        monkeypatch.undo()
        stream.flush()
        os.close(write_fd)
        with os.fdopen(read_fd, "rb") as reader:
            assert reader.read() == (line * 2).encode()
        assert calls[0] == len(line.encode()) and len(calls) > 1
    finally:
        for fd in (write_fd,):
            try:
                os.close(fd)
            except OSError:
                pass


def test_a_query_flood_is_a_400_with_a_request_id_and_an_audit_line(broker: Any, audit_stream: Any) -> None:
    """More query parameters than the adapter parses: never a 500, on the WSGI side as on Lambda's."""
    started: list[Any] = []
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/health", "wsgi.input": io.BytesIO(b""),
               "QUERY_STRING": "&".join(f"p{i}=1" for i in range(wsgi.MAX_QUERY_FIELDS + 1)),
               "REMOTE_ADDR": "203.0.113.7"}
    body = b"".join(wsgi.WsgiApp(broker)(environ, lambda status, headers: started.append((status, headers))))
    status, headers = started[0]
    assert status.startswith("400 ")
    answer = json.loads(body)
    assert answer["error"] == "invalid_request" and "more than 200 parameters" in answer["message"]
    request_id = dict(headers)["X-Request-Id"]
    (rec,) = [json.loads(line) for line in audit_stream.getvalue().splitlines()]
    assert rec["request_id"] == request_id and rec["status"] == 400 and rec["path"] == "$.query"


def test_a_session_minted_by_one_worker_works_in_every_other(two_workers: Served) -> None:
    """broker serve shares one session secret among its workers (without BROKER_SESSION_SECRET)."""
    conn = http.client.HTTPConnection("127.0.0.1", two_workers.port, timeout=30)
    conn.request("POST", "/sessions", body=b'{"user": "alice"}',
                 headers={"content-type": "application/json", "x-api-key": WEB_KEY})
    minted = conn.getresponse()
    token = json.loads(minted.read())["token"]
    conn.close()
    assert minted.status == 200
    statuses = []
    for _ in range(12):  # a new connection each time: the requests spread over both workers
        conn = http.client.HTTPConnection("127.0.0.1", two_workers.port, timeout=30)
        conn.request("POST", "/uploads", body=UPLOAD,
                     headers={"content-type": "application/json", "authorization": f"Bearer {token}"})
        statuses.append(conn.getresponse().status)
        conn.close()
    assert statuses == [200] * 12
    assert token not in (two_workers.work / "audit.jsonl").read_text()
