"""EMF metric lines: the pure record, its cached rendering, one line per decision on the audit stream."""
from __future__ import annotations

import io
import json
from typing import Any

import pytest

from broker.audit import AuditLog
from broker.metrics import EmfLines, emf_record
from tests.conftest import NOW, post_json


@pytest.mark.parametrize("rec, dims", [
    pytest.param({"time": "2026-11-28T14:49:31.000Z", "client": "web-app", "profile": "avatars",
                  "decision": "allowed"}, ("web-app", "avatars", "allowed"), id="allowed"),
    pytest.param({"time": "2026-11-28T14:49:31.000Z", "client": "web-app", "profile": None,
                  "decision": "denied"}, ("web-app", "-", "denied"), id="denied-no-profile"),
    pytest.param({"time": "not a time", "decision": "error"}, ("-", "-", "error"), id="error-no-client"),
])
def test_emf_record(rec: dict[str, Any], dims: tuple[str, str, str]) -> None:
    out = emf_record(rec)
    meta = out["_aws"]
    (directive,) = meta["CloudWatchMetrics"]
    assert directive == {"Namespace": "UploadBroker",
                         "Dimensions": [["client", "profile", "decision"], ["decision"]],
                         "Metrics": [{"Name": "Count", "Unit": "Count"}]}
    assert (out["client"], out["profile"], out["decision"]) == dims
    assert out["Count"] == 1
    expected_ms = int(NOW.timestamp() * 1000) if rec["time"].startswith("2026") else 0
    assert meta["Timestamp"] == expected_ms
    # every dimension and metric named in the directive is a top-level member (EMF rule)
    for name in {*sum(directive["Dimensions"], []), "Count"}:
        assert name in out


@pytest.mark.parametrize("rec", [
    pytest.param({"time": "2026-11-28T14:49:31.000Z", "client": "web-app", "profile": "avatars",
                  "decision": "allowed"}, id="allowed"),
    pytest.param({"time": "2026-11-28T14:49:31.999Z", "client": "web-app", "decision": "denied"}, id="millis"),
    pytest.param({"time": "2026-11-28T14:49:32.001Z", "client": 'we"b\u2028', "profile": '"Timestamp":-1',
                  "decision": "denied"}, id="hostile-profile"),
    pytest.param({"time": "0999-01-01T00:00:00.000Z", "client": "c", "decision": "allowed"}, id="old-year"),
    pytest.param({"time": "not a time", "client": "c", "decision": "allowed"}, id="bad-time"),
    pytest.param({"time": "2026-13-28T14:49:31.000Z", "client": "c", "decision": "allowed"}, id="month-13"),
])
def test_lines_are_exactly_the_record(rec: dict[str, Any]) -> None:
    lines = EmfLines()
    for _ in range(2):  # rendered, then from the cached template
        assert lines(rec) == json.dumps(emf_record(rec), separators=(",", ":")) + "\n"


def test_only_decisions_are_counted() -> None:
    assert EmfLines()({"time": "2026-11-28T14:49:31.000Z", "decision": "error"}) == ""


def test_lines_never_fail_the_request() -> None:
    assert EmfLines()({"decision": "allowed", "client": object(), "time": 12}) .startswith('{"_aws"')
    assert EmfLines()({"decision": "allowed", "time": "2026-11-28T14:49:31.000Z",
                       "client": float("nan")}).endswith("\n")


def test_metric_lines_share_the_audit_write_and_skip_the_file(tmp_path: Any) -> None:
    writes: list[str] = []

    class Stream(io.StringIO):
        def write(self, text: str) -> int:
            writes.append(text)
            return len(text)

    log = AuditLog(stream=Stream(), path=str(tmp_path / "audit.jsonl"))
    log.emit({"decision": "allowed"}, also="{\"_aws\":1}\n")
    assert writes == ['{"decision":"allowed"}\n{"_aws":1}\n']  # one write: never torn apart
    assert (tmp_path / "audit.jsonl").read_text() == '{"decision":"allowed"}\n'


@pytest.mark.parametrize("body, decision", [
    pytest.param({"filename": "me.png", "content_type": "image/png", "size": 1000}, "allowed", id="allowed"),
    pytest.param({"filename": "me.exe", "content_type": "application/x-msdownload"}, "denied", id="denied"),
])
def test_broker_emits_one_emf_line_per_decision(make_broker: Any, audit_stream: io.StringIO,
                                                body: dict[str, Any], decision: str) -> None:
    broker = make_broker()
    broker.metrics = EmfLines()
    post_json(broker, "/uploads", body)
    audit_line, emf_line = audit_stream.getvalue().splitlines()
    record = json.loads(emf_line)
    assert (record["client"], record["profile"], record["decision"]) == ("web-app", "avatars", decision)
    assert "_aws" not in audit_line and json.loads(audit_line)["decision"] == decision


def test_no_metrics_by_default(make_broker: Any) -> None:
    broker = make_broker()
    assert broker.metrics is None
    status, _, _ = post_json(broker, "/uploads", {"filename": "me.png", "content_type": "image/png"})
    assert status == 200


def test_decisions_of_every_protocol_are_counted(make_broker: Any, audit_stream: io.StringIO) -> None:
    """Companion's params route audits through Broker.emit, so it is counted like /uploads."""
    from tests.protocols.conftest import call

    broker = make_broker()
    broker.metrics = EmfLines()
    answer = call(broker, "GET", "/s3/params", query={"filename": "me.exe", "type": "application/x-msdownload"})
    assert answer.status == 403
    (line,) = [json.loads(x) for x in audit_stream.getvalue().splitlines() if "_aws" in x]
    assert line["decision"] == "denied"
