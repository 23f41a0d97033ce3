"""``make run`` as a user runs it: start, use, refuse a second copy, Ctrl-C, nothing left behind."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from broker.dev.store import pick_free_ports, port_is_free, s3_client_for
from broker.ledger.sqlite import SqliteLedger

ROOT = Path(__file__).resolve().parents[2]
READY = "Press Ctrl-C to stop"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def devrun_env(data_dir: Path, port: int, s3_port: int, base_port: int) -> dict[str, str]:
    return {**os.environ, "BROKER_DATA_DIR": str(data_dir), "BROKER_PORT": str(port),
            "BROKER_STORE_PORT": str(s3_port), "BROKER_STORE_BASE_PORT": str(base_port),
            "PYTHONUNBUFFERED": "1"}


def run_once(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run ``python -m broker.dev.run`` expecting it to refuse to start."""
    return subprocess.run([sys.executable, "-m", "broker.dev.run"], env=env, cwd=ROOT, text=True,
                          capture_output=True, timeout=60)


@dataclass
class Running:
    process: subprocess.Popen[str]
    output: list[str]
    env: dict[str, str]
    data_dir: Path
    url: str
    ports: list[int]


def processes_using(data_dir: Path) -> list[int]:
    """Pids of processes whose command line mentions data_dir (the store it started)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if str(data_dir).encode() in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


@pytest.fixture()
def running(tmp_path: Path) -> Iterator[Running]:
    """``python -m broker.dev.run`` in its own session (like a terminal), up and ready."""
    port = free_port()
    s3_port, base_port = pick_free_ports()
    env = devrun_env(tmp_path / "var", port, s3_port, base_port)
    process = subprocess.Popen([sys.executable, "-m", "broker.dev.run"], env=env, cwd=ROOT, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    output: list[str] = []
    ready = threading.Event()

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            output.append(line)
            if READY in line:
                ready.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert ready.wait(40), "make run did not become ready:\n" + "".join(output)
        ports = [port, s3_port, *range(base_port, base_port + 4)]
        yield Running(process, output, env, tmp_path / "var", f"http://127.0.0.1:{port}", ports)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        reader.join(timeout=5)
        assert process.stdout is not None
        process.stdout.close()
        for pid in processes_using(tmp_path / "var"):
            os.kill(pid, signal.SIGKILL)


def test_make_run_serves_refuses_a_second_copy_and_stops_cleanly_on_ctrl_c(running: Running) -> None:
    text = "".join(running.output)
    assert f"upload page   {running.url}/" in text
    assert "x-api-key: demo-web-app-key" in text
    assert "Traceback" not in text

    page = requests.get(running.url + "/", timeout=5)
    assert page.status_code == 200 and "<title>Upload broker</title>" in page.text
    grant = requests.post(running.url + "/uploads", headers={"x-api-key": "demo-web-app-key"},
                          json={"filename": "me.png", "content_type": "image/png", "size": 1200},
                          timeout=5)
    assert grant.status_code == 200, grant.text
    creds = json.loads((running.data_dir / "store" / "credentials.json").read_text())
    s3 = s3_client_for(grant.json()["url"].rsplit("/", 1)[0], creds["access_key"], creds["secret_key"])
    cors = s3.get_bucket_cors(Bucket="broker-uploads")["CORSRules"][0]
    assert running.url in cors["AllowedOrigins"] and "ETag" in cors["ExposeHeaders"]
    lifecycle = {r["ID"]: r for r in s3.get_bucket_lifecycle_configuration(Bucket="broker-uploads")["Rules"]}
    assert lifecycle["abort-incomplete-multipart"]["AbortIncompleteMultipartUpload"] == {"DaysAfterInitiation": 1}
    assert lifecycle["expire-quarantine"]["Filter"]["Prefix"] == "quarantine/"
    ledger = SqliteLedger(running.data_dir / "ledger.db")  # make run keeps the grant ledger there
    assert ledger.get(grant.json()["grant_id"]) is not None
    audit = (running.data_dir / "audit.jsonl").read_text().splitlines()
    assert json.loads(audit[-1])["decision"] == "allowed"

    again = run_once(running.env)
    assert again.returncode == 1
    assert f"already running (pid {running.process.pid})" in again.stderr
    assert "Traceback" not in again.stderr + again.stdout

    os.killpg(running.process.pid, signal.SIGINT)  # what Ctrl-C in its terminal does
    assert running.process.wait(timeout=20) == 0
    deadline = time.monotonic() + 5  # the reader thread takes the last lines
    while "stopped." not in "".join(running.output) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "stopped." in "".join(running.output)
    assert processes_using(running.data_dir) == []
    assert all(port_is_free("127.0.0.1", port) for port in running.ports)


@pytest.mark.parametrize("taken, expected", [
    pytest.param("broker", ["(the broker)", "BROKER_PORT="], id="broker_port"),
    pytest.param("s3", ["(s3)", "BROKER_STORE_PORT"], id="store_s3_port"),
    pytest.param("master", ["(master)", "BROKER_STORE_BASE_PORT"], id="store_base_port"),
])
def test_a_taken_port_gives_a_clear_message_not_a_traceback(tmp_path: Path, taken: str,
                                                            expected: list[str]) -> None:
    port = free_port()
    s3_port, base_port = pick_free_ports()
    blocked = {"broker": port, "s3": s3_port, "master": base_port}[taken]
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", blocked))
        holder.listen()

        result = run_once(devrun_env(tmp_path / "var", port, s3_port, base_port))

    assert result.returncode == 1
    assert f"port {blocked} " in result.stderr
    for fragment in expected:
        assert fragment in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert processes_using(tmp_path / "var") == []
