"""Faults: bad rules mid-run, never-good rules, the store down, an unwritable audit log, kill -9.

Each broker here is served over HTTP by waitress (``ServerThread``) as in ``broker serve``, with
its own rules file and audit file in a temporary directory.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import requests
import yaml

from broker.config import schemas
from tests.conftest import ROOT, WEB_KEY

AVATAR = {"filename": "me.png", "content_type": "image/png", "size": 1200}


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def dummy_s3(*, endpoint: str | None = None, token: str | None = None, secret: str = "dummy-secret") -> Any:
    """A SigV4 S3 client for a store that may not exist: signing a form needs none."""
    import boto3
    from botocore.config import Config

    return boto3.client("s3", region_name="us-east-1", endpoint_url=endpoint,
                        aws_access_key_id="AKIDFAULTS0000000001", aws_secret_access_key=secret,
                        aws_session_token=token,
                        config=Config(signature_version="s3v4", s3={"addressing_style": "path"},
                                      connect_timeout=1, read_timeout=1, retries={"max_attempts": 1}))


class Served:
    """A broker built from settings, served over HTTP; ``post`` and ``health`` talk to it."""

    def __init__(self, rules_path: Path, audit_path: Path, s3: Any, reload_seconds: float = 0.05) -> None:
        from broker.adapters.wsgi import ServerThread, WsgiApp
        from broker.service import build
        from broker.config import Settings

        settings = Settings(rules=str(rules_path), rules_reload_seconds=reload_seconds,
                            audit_file=str(audit_path), s3_addressing_style="path")
        self.broker = build(settings, s3_client=s3, audit_stream=None)
        self.server = ServerThread(WsgiApp(self.broker), "127.0.0.1", 0, threads=4)
        self.audit_path = audit_path
        self.session = requests.Session()

    def post(self, body: Any = AVATAR, api_key: str = WEB_KEY) -> requests.Response:
        """POST /uploads."""
        return self.session.post(f"{self.server.url}/uploads", json=body, headers={"x-api-key": api_key},
                                 timeout=10)

    def health(self) -> requests.Response:
        """GET /health."""
        return self.session.get(f"{self.server.url}/health", timeout=10)

    def audit_records(self) -> list[dict[str, Any]]:
        """Every audit line so far, parsed (fails on a torn or invalid line)."""
        if not self.audit_path.exists():
            return []
        return [json.loads(line) for line in self.audit_path.read_text().split("\n") if line]

    def close(self) -> None:
        """Stop serving (client connections first: waitress waits for open ones)."""
        self.session.close()
        self.server.close()


@pytest.fixture
def serve(tmp_path: Path, watch: Any) -> Iterator[Callable[..., Served]]:
    """A factory for served brokers; every audit file is handed to the secrets watch."""
    started: list[Served] = []

    def make(rules: str | None = None, *, s3: Any = None, audit_path: Path | None = None,
             reload_seconds: float = 0.05) -> Served:
        rules_path = tmp_path / "rules.yaml"
        if rules is None:
            shutil.copy(ROOT / "rules.yaml", rules_path)
        else:
            rules_path.write_text(rules)
        audit = audit_path or tmp_path / "audit.jsonl"
        watch.files.add(audit)
        served = Served(rules_path, audit, s3 or dummy_s3(), reload_seconds)
        started.append(served)
        return served

    yield make
    for served in started:
        served.close()


def replace_atomically(path: Path, text: str) -> None:
    """Swap in new file contents the way editors and deploy tools do (write, then rename)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class Traffic:
    """A thread posting requests without pause until stopped; keeps every status."""

    def __init__(self, served: Served) -> None:
        self.served = served
        self.statuses: Counter[int] = Counter()
        self.max_bytes: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with requests.Session() as session:
            while not self._stop.is_set():
                r = session.post(f"{self.served.server.url}/uploads", json=AVATAR,
                                 headers={"x-api-key": WEB_KEY}, timeout=10)
                self.statuses[r.status_code] += 1
                if r.status_code == 200:
                    self.max_bytes.add(r.json()["max_bytes"])

    def stop(self) -> None:
        """Stop and wait for the thread."""
        self._stop.set()
        self._thread.join(timeout=15)


def _wait_for(condition: Callable[[], bool], seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


# --------------------------------------------------------------------------- rules


def test_rules_broken_mid_run_keep_the_last_good_rules(serve: Callable[..., Served], capfd: Any) -> None:
    served = serve()
    rules_path = Path(served.broker.rules.source)
    good = served.health().json()["rules"]
    doc = yaml.safe_load(rules_path.read_text())
    traffic = Traffic(served)
    breakages: list[tuple[str, Callable[[], None]]] = [
        ("invalid YAML", lambda: replace_atomically(rules_path, "clients: [unclosed\n")),
        ("schema-invalid", lambda: replace_atomically(rules_path, rules_path.read_text().replace(
            "max_bytes: 5 MiB", "max_bytes: -1"))),
        ("empty file", lambda: replace_atomically(rules_path, "")),
        ("a directory", lambda: (rules_path.unlink(), rules_path.mkdir())),
        ("missing", lambda: rules_path.rmdir()),
    ]
    try:
        for what, breakage in breakages:
            checked = served.broker.rules._checked_at  # noqa: SLF001 - wait for a real re-check
            breakage()
            _wait_for(lambda: served.broker.rules._checked_at > checked + 0.05)  # noqa: SLF001
            answer = served.health()  # a load balancer sees that the latest rules are not in force
            health = answer.json()
            assert answer.status_code == 503 and health["status"] == "degraded", (what, health)
            assert health["rules"] == good and health["reload_error"] == "rules_invalid", (what, health)
            assert served.post().status_code == 200, what
        doc["clients"]["web-app"]["rules"][0]["max_bytes"] = "1 MiB"
        replace_atomically(rules_path, yaml.safe_dump(doc))
        _wait_for(lambda: served.health().json()["rules"] != good)
        answer = served.health()
        assert answer.status_code == 200 and answer.json()["reload_error"] is None
        assert served.post().json()["max_bytes"] == 1024**2
    finally:
        traffic.stop()
    assert set(traffic.statuses) == {200}, traffic.statuses  # not one request failed meanwhile
    assert traffic.max_bytes <= {5 * 1024**2, 1024**2}
    log = capfd.readouterr().err
    assert log.count('"event": "rules_reload_failed"') >= 1 and "cannot read the rules file" in log


@pytest.mark.parametrize("rules", [
    pytest.param("clients: [unclosed\n", id="invalid_yaml"),
    pytest.param((ROOT / "rules.yaml").read_text().replace("max_bytes: 5 MiB", "max_bytes: 0 B")
                 .replace("min_bytes: 1", "min_bytes: 10"), id="schema_or_semantic_problem"),
    pytest.param("", id="empty"),
])
def test_a_broker_that_never_had_good_rules_issues_nothing(serve: Callable[..., Served], capfd: Any,
                                                           rules: str) -> None:
    served = serve(rules)
    for _ in range(3):
        response = served.post()
        assert response.status_code == 503 and response.json()["error"] == "rules_unavailable"
        assert "fields" not in response.json()
    assert served.health().status_code == 503
    records = served.audit_records()
    assert len(records) == 3 and {(r["decision"], r["status"], r["error"]) for r in records} == {
        ("error", 503, "rules_unavailable")}
    assert '"event": "rules_reload_failed"' in capfd.readouterr().err
    # Fixing the file is enough: the broker starts issuing at its next check.
    replace_atomically(Path(served.broker.rules.source), (ROOT / "rules.yaml").read_text())
    _wait_for(lambda: served.post().status_code == 200)


# --------------------------------------------------------------------------- store down


def test_the_store_down_changes_nothing_for_signing(serve: Callable[..., Served], watch: Any) -> None:
    """The S3 client points at a closed port and signs with temporary credentials (session token)."""
    token = "FwoGZXIvYXdzEFaultsSessionToken" + secrets.token_hex(24)
    secret = "faults-secret-" + secrets.token_hex(16)
    watch.secret(token, "a session token used to sign")
    watch.secret(secret, "a signing secret")
    served = serve(s3=dummy_s3(endpoint=f"http://127.0.0.1:{closed_port()}", token=token, secret=secret))
    latencies = []
    for i in range(200):
        started = time.perf_counter()
        response = served.post({**AVATAR, "size": 1000 + i})
        latencies.append(time.perf_counter() - started)
        assert response.status_code == 200, response.text
        fields = response.json()["fields"]
        assert fields["x-amz-security-token"] == token
        watch.secret(fields["x-amz-signature"], "a signature the broker issued")
    p99 = statistics.quantiles(latencies, n=100)[98]
    watch.note("faults: store down, p50/p99 of 200 grants",
               f"{statistics.median(latencies) * 1000:.1f} / {p99 * 1000:.1f} ms")
    assert p99 < 0.25, f"p99 {p99 * 1000:.0f} ms with the store down"
    assert len(served.audit_records()) == 200


# --------------------------------------------------------------------------- audit


def test_an_unwritable_audit_log_fails_closed(serve: Callable[..., Served], tmp_path: Path,
                                              capfd: Any) -> None:
    """The audit path is a symlink to /dev/full: every write fails with ENOSPC (even as root)."""
    audit = tmp_path / "audit-link.jsonl"
    audit.symlink_to("/dev/full")
    served = serve(audit_path=audit)
    refused = served.post()
    assert refused.status_code == 503, refused.text
    body = refused.json()
    assert body["error"] == "audit_unavailable" and "fields" not in body
    assert list(schemas.validator("error").iter_errors(body)) == []
    log = capfd.readouterr().err
    assert '"event": "audit_write_failed"' in log and "No space left on device" in log
    # A denial cannot be audited either: 503 as well. A malformed request keeps its own 400
    # (nothing was decided, so the client learns what to fix); both are logged.
    denied = served.post({"filename": "x.svg", "content_type": "image/svg+xml"})
    assert denied.status_code == 503 and denied.json()["error"] == "audit_unavailable"
    malformed = served.post({"filename": "x.png"})
    assert malformed.status_code == 400 and malformed.json()["error"] == "invalid_request"
    assert capfd.readouterr().err.count('"event": "audit_write_failed"') == 2
    # Once the log is writable again the broker issues again, and audits.
    audit.unlink()
    replacement = tmp_path / "audit-real.jsonl"
    audit.symlink_to(replacement)
    assert served.post().status_code == 200
    (rec,) = [json.loads(line) for line in replacement.read_text().split("\n") if line]
    assert rec["decision"] == "allowed"


def test_killed_mid_write_leaves_valid_json_lines(tmp_path: Path, watch: Any) -> None:
    """kill -9 a broker writing audit lines from 4 threads, 3 times: no torn or invalid line.

    Each record is one ``write()`` on an ``O_APPEND`` descriptor, which a signal cannot split.
    """
    audit = tmp_path / "killed.jsonl"
    watch.files.add(audit)
    secret = "kill-secret-" + secrets.token_hex(16)
    watch.secret(secret, "a signing secret")
    env = {**os.environ, "KILL_SECRET": secret, "PYTHONPATH": str(ROOT)}
    sizes = []
    for _ in range(3):
        proc = subprocess.Popen([sys.executable, "-m", "tests.reliability.kill_target", str(audit), "4"],
                                cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
            time.sleep(0.3 + secrets.randbelow(300) / 1000)
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
            proc.stdout.close()  # type: ignore[union-attr]
            proc.stderr.close()  # type: ignore[union-attr]
        assert proc.returncode == -signal.SIGKILL
        sizes.append(audit.stat().st_size)
    data = audit.read_bytes()
    assert data.endswith(b"\n"), "the last line was torn"
    validator = schemas.validator("audit")
    records = [json.loads(line) for line in data.decode().split("\n") if line]
    assert all(not list(validator.iter_errors(r)) for r in records)
    assert len({r["request_id"] for r in records}) == len(records)
    assert Counter(r["decision"] for r in records).keys() == {"allowed", "denied", "error"}
    watch.count("faults: audit lines written by killed brokers (0 torn)", len(records))
    assert sizes == sorted(sizes) and len(records) > 100
