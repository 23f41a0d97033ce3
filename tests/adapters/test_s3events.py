"""S3 event notifications -> objects to verify, and ``lambda_handler.verify_handler`` around them."""
from __future__ import annotations

import copy
import importlib
import json
import sys
from dataclasses import dataclass, field
from typing import Any, Iterator

import pytest

from broker.adapters import s3events
from broker.adapters.s3events import CreatedObject, Malformed, decode_key, parse
from broker.errors import RulesUnavailable, StoreUnavailable
from broker.timefmt import parse_iso_z
from tests.conftest import ROOT

QUARANTINE = "quarantine/"

#: One record as S3 sends it (https://docs.aws.amazon.com/AmazonS3/latest/userguide/notification-content-structure.html)
RECORD: dict[str, Any] = {
    "eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": "us-east-1",
    "eventTime": "2026-11-28T14:49:31.000Z", "eventName": "ObjectCreated:Post",
    "userIdentity": {"principalId": "AWS:AROAEXAMPLE:broker-signer"},
    "requestParameters": {"sourceIPAddress": "203.0.113.9"},
    "responseElements": {"x-amz-request-id": "C3D13FE58DE4C810", "x-amz-id-2": "FMyUVURIY8/IgAtTv8xRjskZQpcIZ9KG4V5Wp6S7S/JRWeUWerMUE5JgHvANOjpD"},
    "s3": {"s3SchemaVersion": "1.0", "configurationId": "verifier",
           "bucket": {"name": "broker-uploads", "ownerIdentity": {"principalId": "A3NL1KOZZKExample"},
                      "arn": "arn:aws:s3:::broker-uploads"},
           "object": {"key": "uploads/web-app/avatars/2026-11-28/0a1b.png", "size": 1234,
                      "eTag": "d41d8cd98f00b204e9800998ecf8427e", "sequencer": "0055AED6DCD90281E5"}},
}


def record(*, name: str = "ObjectCreated:Post", key: Any = "uploads/web-app/avatars/2026-11-28/0a1b.png",
           bucket: Any = "broker-uploads", etag: Any = "d41d8cd98f00b204e9800998ecf8427e") -> dict[str, Any]:
    out = copy.deepcopy(RECORD)
    out["eventName"] = name
    out["s3"]["bucket"]["name"] = bucket
    out["s3"]["object"]["key"] = key
    if etag is None:
        del out["s3"]["object"]["eTag"]
    else:
        out["s3"]["object"]["eTag"] = etag
    return out


def without(path: tuple[str, ...]) -> dict[str, Any]:
    out = copy.deepcopy(RECORD)
    node = out
    for name in path[:-1]:
        node = node[name]
    del node[path[-1]]
    return out


@pytest.mark.parametrize("rec, expected", [
    pytest.param(record(), CreatedObject("broker-uploads", "uploads/web-app/avatars/2026-11-28/0a1b.png",
                                         "d41d8cd98f00b204e9800998ecf8427e"), id="post"),
    pytest.param(record(name="ObjectCreated:CompleteMultipartUpload", etag="abc-3"),
                 CreatedObject("broker-uploads", "uploads/web-app/avatars/2026-11-28/0a1b.png", "abc-3"),
                 id="multipart"),
    pytest.param(record(key="uploads/web-app/documents/d/0a1b/my+cv+%282%29.pdf"),
                 CreatedObject("broker-uploads", "uploads/web-app/documents/d/0a1b/my cv (2).pdf",
                               "d41d8cd98f00b204e9800998ecf8427e"), id="plus-is-a-space"),
    pytest.param(record(key="uploads/a/b/c%2Bd.pdf"), CreatedObject(
        "broker-uploads", "uploads/a/b/c+d.pdf", "d41d8cd98f00b204e9800998ecf8427e"), id="encoded-plus-is-a-plus"),
    pytest.param(record(key="uploads/a/b/%C3%A9t%C3%A9%20%E2%82%AC.txt"), CreatedObject(
        "broker-uploads", "uploads/a/b/été €.txt", "d41d8cd98f00b204e9800998ecf8427e"), id="utf-8"),
    pytest.param(record(key="uploads/a/b/100%25.txt"), CreatedObject(
        "broker-uploads", "uploads/a/b/100%.txt", "d41d8cd98f00b204e9800998ecf8427e"), id="encoded-percent"),
    pytest.param(record(etag=None), CreatedObject("broker-uploads", "uploads/web-app/avatars/2026-11-28/0a1b.png"),
                 id="no-etag"),
    pytest.param(record(etag=""), CreatedObject("broker-uploads", "uploads/web-app/avatars/2026-11-28/0a1b.png"),
                 id="empty-etag"),
])
def test_created_objects(rec: dict[str, Any], expected: CreatedObject) -> None:
    parsed = parse({"Records": [rec]}, quarantine_prefix=QUARANTINE)
    assert parsed.objects == (expected,) and parsed.ignored == 0 and parsed.malformed == ()


@pytest.mark.parametrize("rec", [
    pytest.param(record(name="ObjectRemoved:Delete"), id="removed"),
    pytest.param(record(name="ObjectTagging:Put"), id="tagging"),
    pytest.param(record(name="ObjectRestore:Completed"), id="restore"),
    pytest.param(record(key="quarantine/uploads/web-app/avatars/2026-11-28/0a1b.png"), id="quarantine-copy"),
    pytest.param(record(key="quarantine%2Fuploads/x.png"), id="quarantine-encoded-slash"),
])
def test_ignored_records(rec: dict[str, Any]) -> None:
    parsed = parse({"Records": [rec]}, quarantine_prefix=QUARANTINE)
    assert parsed == s3events.ParsedEvent(ignored=1)


@pytest.mark.parametrize("rec, reason", [
    pytest.param("not a record", "not an object", id="string"),
    pytest.param(None, "not an object", id="null"),
    pytest.param(without(("eventName",)), "no eventName", id="no-event-name"),
    pytest.param(without(("s3",)), "no s3.bucket or s3.object", id="no-s3"),
    pytest.param(without(("s3", "object")), "no s3.bucket or s3.object", id="no-object"),
    pytest.param(record(bucket=""), "s3.bucket.name", id="empty-bucket"),
    pytest.param(record(bucket=7), "s3.bucket.name", id="bucket-not-a-string"),
    pytest.param(without(("s3", "object", "key")), "s3.object.key is not a string", id="no-key"),
    pytest.param(record(key=["a"]), "s3.object.key is not a string", id="key-not-a-string"),
    pytest.param(record(key=""), "empty", id="empty-key"),
    pytest.param(record(key="uploads/%FF%FE.png"), "s3.object.key", id="not-utf-8"),
    pytest.param(record(key="a" * 1025), "longer than 1024 bytes", id="too-long"),
])
def test_malformed_records_are_reported_not_raised(rec: Any, reason: str) -> None:
    good = record()
    parsed = parse({"Records": [good, rec, good]}, quarantine_prefix=QUARANTINE)
    assert len(parsed.objects) == 2
    (bad,) = parsed.malformed
    assert bad.index == 1 and reason in bad.reason


@pytest.mark.parametrize("event, expected", [
    pytest.param({"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": "broker-uploads"},
                 s3events.ParsedEvent(ignored=1), id="test-event"),
    pytest.param({"Records": []}, s3events.ParsedEvent(), id="no-records"),
    pytest.param({}, s3events.ParsedEvent(malformed=(Malformed(-1, "the event has no Records list"),)), id="empty"),
    pytest.param([], s3events.ParsedEvent(malformed=(Malformed(-1, "the event has no Records list"),)), id="list"),
    pytest.param({"Records": "x"}, s3events.ParsedEvent(malformed=(Malformed(-1, "the event has no Records list"),)),
                 id="records-not-a-list"),
])
def test_whole_events(event: Any, expected: s3events.ParsedEvent) -> None:
    assert parse(event, quarantine_prefix=QUARANTINE) == expected


def test_decode_key_keeps_a_long_multibyte_key_by_its_bytes() -> None:
    assert decode_key("%E2%82%AC" * 341) == "€" * 341  # 1,023 bytes
    with pytest.raises(ValueError, match="1024 bytes"):
        decode_key("%E2%82%AC" * 342)


def test_parse_never_raises_on_any_json() -> None:
    from hypothesis import given, settings, strategies as st

    leaf = st.none() | st.booleans() | st.integers() | st.text(max_size=20)
    values = st.recursive(leaf, lambda inner: st.lists(inner, max_size=4)
                          | st.dictionaries(st.sampled_from(["Records", "eventName", "s3", "bucket", "object",
                                                             "name", "key", "eTag", "x"]), inner, max_size=5),
                          max_leaves=30)

    @settings(max_examples=300, deadline=None)
    @given(values)
    def check(event: Any) -> None:
        parsed = parse(event, quarantine_prefix=QUARANTINE)
        assert all(isinstance(o.key, str) and o.key for o in parsed.objects)

    check()


# ----------------------------------------------------------------- handle: the edge, with a fake verifier


@dataclass
class Outcome:
    status: str


@dataclass
class FakeVerifier:
    fail_on: str | None = None
    calls: list[dict[str, Any]] = field(default_factory=list)

    def verify_object(self, bucket: str, key: str, **kwargs: Any) -> Outcome:
        self.calls.append({"bucket": bucket, "key": key, **kwargs})
        if key == self.fail_on:
            raise StoreUnavailable("the store refused to read the object: SlowDown", code="SlowDown")
        return Outcome("rejected" if "bad" in key else "verified")


@dataclass
class FakeRules:
    quarantine_prefix: str = QUARANTINE
    missing: bool = False

    def current(self) -> Any:
        if self.missing:
            raise RulesUnavailable("no valid upload rules are loaded")
        return self


@dataclass
class FakeBroker:
    verifier: FakeVerifier = field(default_factory=FakeVerifier)
    rules: FakeRules = field(default_factory=FakeRules)


@dataclass
class Context:
    aws_request_id: str = "5f0c-req"


def event(*records: dict[str, Any]) -> dict[str, Any]:
    return {"Records": list(records)}


def test_handle_verifies_each_created_object_and_sums_up(capsys: pytest.CaptureFixture[str]) -> None:
    broker = FakeBroker()
    summary = s3events.handle(broker, event(
        record(key="uploads/a/good.png"), record(key="uploads/a/bad.png", etag=None),
        record(name="ObjectRemoved:Delete"), record(key="quarantine/uploads/a/bad.png"), {"eventName": 3},
        record(key="uploads/a/my+file.png")), Context())
    assert summary == {"records": 6, "verified": 2, "rejected": 1, "skipped": 0, "ignored": 2, "malformed": 1}
    assert broker.verifier.calls == [
        {"bucket": "broker-uploads", "key": "uploads/a/good.png", "etag": "d41d8cd98f00b204e9800998ecf8427e",
         "source": "s3-event", "request_id": "5f0c-req"},
        {"bucket": "broker-uploads", "key": "uploads/a/bad.png", "etag": None, "source": "s3-event",
         "request_id": "5f0c-req"},
        {"bucket": "broker-uploads", "key": "uploads/a/my file.png", "etag": "d41d8cd98f00b204e9800998ecf8427e",
         "source": "s3-event", "request_id": "5f0c-req"},
    ]
    (line,) = [json.loads(x) for x in capsys.readouterr().err.splitlines()]
    parse_iso_z(line.pop("time")[:19] + "Z")  # every operational line says when
    assert line == {"level": "error", "event": "s3_event_malformed", "request_id": "5f0c-req", "record": 4,
                    "error": "the record has no eventName"}


def test_handle_without_a_context_has_no_request_id() -> None:
    broker = FakeBroker()
    s3events.handle(broker, event(record()))
    assert broker.verifier.calls[0]["request_id"] is None


def test_a_store_outage_raises_so_lambda_retries() -> None:
    broker = FakeBroker(FakeVerifier(fail_on="uploads/a/2.png"))
    with pytest.raises(StoreUnavailable):
        s3events.handle(broker, event(record(key="uploads/a/1.png"), record(key="uploads/a/2.png"),
                                      record(key="uploads/a/3.png")), Context())
    assert [c["key"] for c in broker.verifier.calls] == ["uploads/a/1.png", "uploads/a/2.png"]


def test_no_rules_raises_so_lambda_retries() -> None:
    broker = FakeBroker(rules=FakeRules(missing=True))
    with pytest.raises(RulesUnavailable):
        s3events.handle(broker, event(record()), Context())
    assert broker.verifier.calls == []


def test_the_quarantine_prefix_comes_from_the_rules_in_force() -> None:
    broker = FakeBroker(rules=FakeRules(quarantine_prefix="held/"))
    summary = s3events.handle(broker, event(record(key="held/x.png"), record(key="quarantine/x.png")))
    assert (summary["ignored"], [c["key"] for c in broker.verifier.calls]) == (1, ["quarantine/x.png"])


# ----------------------------------------------------------------- lambda_handler.verify_handler


@pytest.fixture
def handler_module(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    from moto import mock_aws

    monkeypatch.setenv("BROKER_RULES", str(ROOT / "rules.yaml"))
    with mock_aws():
        sys.modules.pop("lambda_handler", None)
        module = importlib.import_module("lambda_handler")
        yield module
    sys.modules.pop("lambda_handler", None)


def test_verify_handler_calls_the_verifier_for_each_record(handler_module: Any,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    assert handler_module.BROKER is not None  # the real start-up worked
    fake = FakeVerifier()
    monkeypatch.setattr(handler_module, "BROKER", FakeBroker(fake))
    summary = handler_module.verify_handler(event(record(key="uploads/a/1.png"), record(key="uploads/a/2.png")),
                                            Context("req-9"))
    assert summary["verified"] == 2
    assert [(c["key"], c["source"], c["request_id"]) for c in fake.calls] == [
        ("uploads/a/1.png", "s3-event", "req-9"), ("uploads/a/2.png", "s3-event", "req-9")]


def test_verify_handler_raises_on_a_store_outage(handler_module: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(handler_module, "BROKER", FakeBroker(FakeVerifier(fail_on="uploads/a/1.png")))
    with pytest.raises(StoreUnavailable):
        handler_module.verify_handler(event(record(key="uploads/a/1.png")), Context())


def test_verify_handler_raises_when_the_broker_did_not_start(handler_module: Any,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from broker.errors import ServiceUnavailable

    monkeypatch.setattr(handler_module, "BROKER", None)
    monkeypatch.setattr(handler_module, "_START_ERROR", "BROKER_S3_ADDRESSING_STYLE must be ...")
    with pytest.raises(ServiceUnavailable, match="did not start.*BROKER_S3_ADDRESSING_STYLE"):
        handler_module.verify_handler(event(record()), Context())


def test_verify_handler_end_to_end_against_moto(handler_module: Any) -> None:
    """The real broker's verifier, the real store (moto): an unverifiable object is quarantined."""
    import boto3

    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket="broker-uploads")
    key = "uploads/web-app/avatars/2026-11-28/" + "c" * 32 + ".png"
    s3.put_object(Bucket="broker-uploads", Key=key, Body=b"<svg onload=alert(1)>", ContentType="image/png")
    summary = handler_module.verify_handler(event(record(key=key, etag=None)), Context())
    assert summary["rejected"] == 1
    assert s3.list_objects_v2(Bucket="broker-uploads", Prefix="quarantine/")["KeyCount"] == 1
