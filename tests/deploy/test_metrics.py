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


@pytest.mark.parametrize("rec, dims", [
    pytest.param({"time": "2026-11-28T14:49:31.000Z", "decision": "error", "status": 503,
                  "error": "audit_unavailable", "client": "web-app"}, ("5xx", "audit_unavailable"), id="503"),
    pytest.param({"time": "2026-11-28T14:49:31.000Z", "decision": "error", "status": 401,
                  "error": "unauthenticated"}, ("4xx", "unauthenticated"), id="401"),
    pytest.param({"time": "not a time", "decision": "error"}, ("5xx", "-"), id="no-status"),
])
def test_emf_error_record(rec: dict[str, Any], dims: tuple[str, str]) -> None:
    out = emf_record(rec)
    meta = out["_aws"]
    (directive,) = meta["CloudWatchMetrics"]
    assert directive == {"Namespace": "UploadBroker", "Dimensions": [["status_class"], ["status_class", "error"]],
                         "Metrics": [{"Name": "Errors", "Unit": "Count"}]}
    assert (out["status_class"], out["error"]) == dims and out["Errors"] == 1
    assert "client" not in out and "Count" not in out  # errors are not decisions: Count stays allowed/denied
    for name in {*sum(directive["Dimensions"], []), "Errors"}:
        assert name in out


def test_error_lines_are_exactly_the_record() -> None:
    lines = EmfLines()
    for rec in ({"time": "2026-11-28T14:49:31.000Z", "decision": "error", "status": 500, "error": "internal_error"},
                {"time": "2026-11-28T14:49:31.001Z", "decision": "error", "status": 404, "error": "not_found"},
                {"time": "2026-11-28T14:49:32.000Z", "decision": "error", "status": 500, "error": "internal_error"}):
        assert lines(rec) == json.dumps(emf_record(rec), separators=(",", ":")) + "\n"


def test_only_decisions_and_errors_are_counted() -> None:
    assert EmfLines()({"time": "2026-11-28T14:49:31.000Z", "event": "verification", "verdict": "verified"}) == ""


def test_count_line_and_error_line() -> None:
    from broker.metrics import count_line, error_line

    line = json.loads(count_line("RulesReloadFailed", millis=1234))
    assert line == {"_aws": {"Timestamp": 1234, "CloudWatchMetrics": [{
        "Namespace": "UploadBroker", "Dimensions": [["service"]],
        "Metrics": [{"Name": "RulesReloadFailed", "Unit": "Count"}]}]},
        "service": "broker", "RulesReloadFailed": 1}
    err = json.loads(error_line(503, "service_unavailable"))
    assert (err["status_class"], err["error"], err["Errors"]) == ("5xx", "service_unavailable", 1)
    assert err["_aws"]["Timestamp"] > 1_700_000_000_000  # now, in epoch milliseconds


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


def _emf(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(x) for x in stream.getvalue().splitlines() if x.startswith('{"_aws"')]


@pytest.mark.parametrize("path, api_key, status, dims", [
    pytest.param("/uploads", "not-a-key", 401, ("4xx", "unauthenticated"), id="401"),
    pytest.param("/nowhere", None, 404, ("4xx", "not_found"), id="404"),
    pytest.param("/health", None, 405, ("4xx", "method_not_allowed"), id="405"),
])
def test_broker_counts_each_error_answer(make_broker: Any, audit_stream: io.StringIO, path: str,
                                         api_key: str | None, status: int, dims: tuple[str, str]) -> None:
    broker = make_broker()
    broker.metrics = EmfLines()
    answer, body, _ = post_json(broker, path, {"filename": "me.png", "content_type": "image/png"}, api_key=api_key)
    assert answer == status
    (line,) = _emf(audit_stream)
    assert (line["status_class"], line["error"]) == dims and line["Errors"] == 1


def test_a_500_is_audited_and_counted(make_broker: Any, audit_stream: io.StringIO) -> None:
    broker = make_broker()
    broker.metrics = EmfLines()

    def explode(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("boom")

    broker.store.sign_post = explode
    status, body, headers = post_json(broker, "/uploads", {"filename": "me.png", "content_type": "image/png"})
    assert status == 500 and body["request_id"] == headers["X-Request-Id"] == "req-1"
    lines = [json.loads(x) for x in audit_stream.getvalue().splitlines()]
    errors = [x for x in lines if x.get("decision") == "error"]
    assert [(x["status"], x["error"], x["request_id"]) for x in errors] == [(500, "internal_error", "req-1")]
    assert [(x["status_class"], x["error"]) for x in _emf(audit_stream) if "Errors" in x] == [("5xx", "internal_error")]


def test_fail_closed_503_is_counted_though_the_audit_file_is_gone(make_broker: Any, audit_stream: io.StringIO,
                                                                    tmp_path: Any) -> None:
    """The audit file cannot be written: nothing is issued (503) and the stream still counts the 5xx."""
    broker = make_broker()
    broker.metrics = EmfLines()
    broker.audit_log = AuditLog(stream=audit_stream, path=str(tmp_path / "audit.jsonl"))
    (tmp_path / "audit.jsonl").unlink()
    (tmp_path / "audit.jsonl").mkdir()  # a directory where the file was: every write fails
    broker.audit_log.close()
    status, body, _ = post_json(broker, "/uploads", {"filename": "me.png", "content_type": "image/png"})
    assert (status, body["error"]) == (503, "audit_unavailable") and "fields" not in body
    assert [(x["status_class"], x["error"]) for x in _emf(audit_stream)] == [("5xx", "audit_unavailable")]


def test_install_counts_each_failed_rules_reload(s3_client: Any, audit_stream: io.StringIO, tmp_path: Any) -> None:
    from broker.config.sources import FileSource, RulesProvider
    from broker.metrics import install
    from broker.s3.store import S3Store
    from broker.service import assemble
    from tests.conftest import ROOT

    rules = tmp_path / "rules.yaml"
    rules.write_text((ROOT / "rules.yaml").read_text())
    provider = RulesProvider(FileSource(str(rules)), reload_seconds=0, log=lambda *a, **k: None)
    provider.refresh()
    broker = assemble(provider, S3Store(s3_client), AuditLog(stream=audit_stream))
    install(broker)
    assert isinstance(broker.metrics, EmfLines)
    rules.write_text("clients: [unclosed\n")
    for _ in range(3):  # every failed poll counts: an alarm stays raised while the source is broken
        provider.refresh()
    counted = [x for x in _emf(audit_stream) if "RulesReloadFailed" in x]
    assert len(counted) == 3 and all(x["service"] == "broker" for x in counted)
    assert provider.failures == 3
