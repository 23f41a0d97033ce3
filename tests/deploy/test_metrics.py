"""EMF metric lines: the pure record, and one line per decision when the broker has a writer."""
from __future__ import annotations

import io
import json
from typing import Any

import pytest

from broker.metrics import EmfWriter, emf_record
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


def test_writer_swallows_a_broken_stream() -> None:
    class Broken(io.StringIO):
        def write(self, _: str) -> int:
            raise OSError("closed")

    EmfWriter(Broken())({"decision": "allowed"})  # no exception: a lost data point only


@pytest.mark.parametrize("body, decision", [
    pytest.param({"filename": "me.png", "content_type": "image/png", "size": 1000}, "allowed", id="allowed"),
    pytest.param({"filename": "me.exe", "content_type": "application/x-msdownload"}, "denied", id="denied"),
])
def test_broker_emits_one_emf_line_per_decision(make_broker: Any, audit_stream: io.StringIO,
                                                body: dict[str, Any], decision: str) -> None:
    broker = make_broker()
    emf = io.StringIO()
    broker.metrics = EmfWriter(emf)
    post_json(broker, "/uploads", body)
    (line,) = emf.getvalue().splitlines()
    record = json.loads(line)
    assert (record["client"], record["profile"], record["decision"]) == ("web-app", "avatars", decision)
    assert "_aws" not in audit_stream.getvalue()  # the audit line stays separate


def test_no_metrics_by_default(make_broker: Any) -> None:
    broker = make_broker()
    assert broker.metrics is None
    status, _, _ = post_json(broker, "/uploads", {"filename": "me.png", "content_type": "image/png"})
    assert status == 200


def test_decisions_of_every_protocol_are_counted(make_broker: Any) -> None:
    """Companion's params route audits through Broker.emit, so it is counted like /uploads."""
    from tests.protocols.conftest import call

    broker = make_broker()
    emf = io.StringIO()
    broker.metrics = EmfWriter(emf)
    answer = call(broker, "GET", "/s3/params", query={"filename": "me.exe", "type": "application/x-msdownload"})
    assert answer.status == 403
    (line,) = emf.getvalue().splitlines()
    assert json.loads(line)["decision"] == "denied"
