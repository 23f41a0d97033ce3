"""The soak's after-run checks catch what they claim to: lost, doubled, torn lines, leaks, errors."""
from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Callable

import pytest

from reliability.soak import STALL_KIND, Planned, Result, _complete, check, plan
from tests.conftest import ROOT


def _record(request_id: str, status: int) -> bytes:
    rec = {"time": "2026-11-28T14:49:31.000Z", "event": "upload", "request_id": request_id,
           "protocol": "native", "transport": "wsgi", "decision": "error" if status != 200 else "denied",
           "status": status, "error": "invalid_request"}
    return json.dumps(rec, separators=(",", ":")).encode() + b"\n"


def _results(n: int) -> list[Result]:
    planned = Planned("malformed_json", "demo-web-app-key", b"{", frozenset({400}), {})
    return [Result(planned, 400, json.dumps({"error": "invalid_request", "message": "bad", "request_id": f"id-{i}"})
                   .encode(), f"id-{i}", 0.001 * (i + 1)) for i in range(n)]


def _write(work: Path, lines: bytes) -> None:
    (work / "audit.jsonl").write_bytes(lines)
    (work / "server-stdout.log").write_bytes(lines)
    (work / "server-stderr.log").write_text('{"event": "serving"}\n')


@pytest.fixture
def work(tmp_path: Path) -> Path:
    shutil.copy(ROOT / "rules.yaml", tmp_path / "rules.yaml")
    return tmp_path


def test_a_clean_run_passes(work: Path) -> None:
    results = _results(5)
    _write(work, b"".join(_record(r.request_id or "", 400) for r in results))
    figures = check(results, work, {})
    assert figures["failures"] == [] and figures["audit_lines"] == 5
    assert figures["latency_ms"]["p50"] == pytest.approx(3.0)


Breakage = Callable[[list[bytes], list[Result]], tuple[bytes, list[Result]]]


@pytest.mark.parametrize("breakage, expected", [
    pytest.param(lambda ls, rs: (b"".join(ls[:-1]), rs), "1 lost", id="lost"),
    pytest.param(lambda ls, rs: (b"".join(ls + ls[:1]), rs), "1 doubled", id="doubled"),
    pytest.param(lambda ls, rs: (b"".join(ls)[:-5], rs), "torn", id="torn_last_line"),
    pytest.param(lambda ls, rs: (ls[0][:30] + ls[1] + ls[0][30:] + b"".join(ls[2:]), rs), "not JSON",
                 id="interleaved"),
    pytest.param(lambda ls, rs: (b"".join(ls), [Result(rs[0].planned, 503, rs[0].body, "id-0", 0.1),
                                                *rs[1:]]), "got 503", id="server_error"),
    pytest.param(lambda ls, rs: (b"".join(ls), [Result(rs[0].planned, 0, b"", None, 0.1, "reset"),
                                                *rs[1:]]), "got reset", id="connection_error"),
])
def test_broken_runs_fail(work: Path, breakage: Breakage, expected: str) -> None:
    results = _results(5)
    lines = [_record(r.request_id or "", 400) for r in results]
    data, results = breakage(lines, results)
    _write(work, data)
    failures = check(results, work, {})["failures"]
    assert any(expected in f for f in failures), failures


def test_a_secret_in_the_logs_fails(work: Path) -> None:
    results = _results(2)
    _write(work, b"".join(_record(r.request_id or "", 400) for r in results))
    (work / "server-stderr.log").write_text("oops planted-api-key-0451 and " + "ab" * 32 + "\n")
    failures = check(results, work, {"planted-api-key-0451": "an API key", "ab" * 32: "a signature"})["failures"]
    assert any("an API key" in f for f in failures) and any("signature" in f for f in failures)


def test_the_request_mix_is_seeded_and_varied() -> None:
    first, again = random.Random(7), random.Random(7)
    assert [plan(first) for _ in range(50)] == [plan(again) for _ in range(50)]
    rng = random.Random(7)
    kinds = {plan(rng).kind for _ in range(2000)}
    assert len(kinds) == 11, kinds


def _stalled(request_id: str, seconds: float, error: str | None = None) -> Result:
    planned = Planned(STALL_KIND, "demo-web-app-key", b"", frozenset({408}), {})
    body = json.dumps({"error": "request_timeout", "message": "the request body did not arrive within 10 s",
                       "request_id": request_id})
    return Result(planned, 408 if error is None else 0, body.encode(), request_id, seconds, error)


def test_stalled_bodies_answered_408_pass_and_stay_out_of_the_load_latencies(work: Path) -> None:
    results = _results(3) + [_stalled("slow-1", 10.02), _stalled("slow-2", 10.04)]
    _write(work, b"".join(_record(r.request_id or "", r.status) for r in results))
    figures = check(results, work, {})
    assert figures["failures"] == []
    assert figures["stalled_requests"] == 2 and figures["stalled_answered_within_s"] == 10.04
    assert figures["latency_ms"]["max"] == pytest.approx(3.0)  # the load's, not the stalls'


def test_a_stalled_body_left_unanswered_fails(work: Path) -> None:
    results = _results(2) + [_stalled("slow-1", 13.5, error="no answer within 13.5 s")]
    _write(work, b"".join(_record(r.request_id or "", r.status) for r in results[:2]))
    failures = check(results, work, {})["failures"]
    assert any("no answer within 13.5 s" in f for f in failures), failures


@pytest.mark.parametrize("raw, whole", [
    (b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 4\r\n\r\n{}", False),
    (b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 2\r\n\r\n{}", True),
    (b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 2\r\n", False),
])
def test_a_response_is_whole_once_its_content_length_has_arrived(raw: bytes, whole: bool) -> None:
    assert _complete(raw) is whole
