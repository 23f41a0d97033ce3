"""``POST /events/s3``: S3 event notification records over HTTP (Ceph RGW's push endpoint), in process with moto.

The same route is exercised against a real Ceph RGW by tests/e2e/test_verification.py (``[rgw]``).
"""
from __future__ import annotations

import json
from typing import Any

import pytest

from broker.adapters.s3events import CreatedObject, parse
from tests.protocols.conftest import call
from tests.test_sniff import png

TOKEN = "t" * 40
KEY = "uploads/web-app/avatars/2026-11-28/0123456789abcdef0123456789abcdef.png"


def record(key: str, name: str = "ObjectCreated:Post", source: str = "ceph:s3") -> dict[str, Any]:
    return {"eventVersion": "2.2", "eventSource": source, "eventName": name,
            "s3": {"bucket": {"name": "broker-uploads"}, "object": {"key": key, "size": 69, "eTag": "abc"}}}


@pytest.fixture
def broker(make_broker: Any, s3_client: Any) -> Any:
    s3_client.put_object(Bucket="broker-uploads", Key=KEY, Body=png(), ContentType="image/png",
                         CacheControl="public, max-age=86400", ContentDisposition='inline; filename="me.png"')
    return make_broker(events_token=TOKEN)


def post(broker: Any, body: Any, *, query: dict[str, str] | None = None, headers: dict[str, str] | None = None) -> Any:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return call(broker, "POST", "/events/s3", raw, api_key=None, headers=headers,
                query={"token": TOKEN} if query is None else query)


def test_an_rgw_record_verifies_its_object(broker: Any) -> None:
    answer = post(broker, {"Records": [record(KEY)]})
    assert (answer.status, answer.body["status"], answer.body["key"], answer.body["action"]) == (
        200, "verified", KEY, "tagged"), answer
    again = post(broker, {"Records": [record(KEY)]})
    assert again.body["status"] == "skipped" and "already verified" in again.body["note"]


def test_the_token_may_come_as_a_bearer_header(broker: Any) -> None:
    answer = post(broker, {"Records": [record(KEY)]}, query={}, headers={"authorization": f"Bearer {TOKEN}"})
    assert (answer.status, answer.body["status"]) == (200, "verified"), answer


@pytest.mark.parametrize("query, headers", [
    pytest.param({}, {}, id="no_token"),
    pytest.param({"token": "x" * 40}, {}, id="wrong_token"),
    pytest.param({}, {"authorization": "Bearer " + "x" * 40}, id="wrong_bearer"),
])
def test_without_the_token_nothing_is_judged(broker: Any, query: dict[str, str], headers: dict[str, str],
                                             s3_client: Any) -> None:
    answer = post(broker, {"Records": [record(KEY)]}, query=query, headers=headers)
    assert answer.status == 401 and "BROKER_EVENTS_TOKEN" in answer.body["message"], answer
    assert s3_client.get_object_tagging(Bucket="broker-uploads", Key=KEY)["TagSet"] == []


def test_without_an_events_token_the_route_does_not_exist(make_broker: Any) -> None:
    answer = post(make_broker(), {"Records": [record(KEY)]})
    assert answer.status == 404


@pytest.mark.parametrize("body, where", [
    pytest.param(b"not json", "$", id="not_json"),
    pytest.param({"no": "records"}, "$.Records", id="no_records"),
    pytest.param({"Records": [{"eventName": "ObjectCreated:Put"}]}, "$.Records[0]", id="no_object"),
])
def test_a_body_naming_no_object_is_a_400_that_says_where(broker: Any, body: Any, where: str) -> None:
    answer = post(broker, body)
    assert answer.status == 400 and answer.body["path"] == where, answer


def test_other_events_and_the_quarantine_are_ignored(broker: Any) -> None:
    answer = post(broker, {"Records": [record(KEY, name="ObjectRemoved:Delete"), record("quarantine/" + KEY)]})
    assert answer.body == {"status": "ignored", "objects": [], "ignored": 2, "malformed": 0}


def test_rgw_keys_are_taken_as_stored_and_aws_keys_are_decoded() -> None:
    """RGW sends the key as stored; AWS URL-encodes it (``+`` for a space)."""
    raw = "uploads/a b+c%41.png"
    ceph = parse({"Records": [record(raw)]}, quarantine_prefix="quarantine/")
    aws = parse({"Records": [record(raw, source="aws:s3")]}, quarantine_prefix="quarantine/")
    assert ceph.objects == (CreatedObject("broker-uploads", raw, "abc"),)
    assert aws.objects == (CreatedObject("broker-uploads", "uploads/a b cA.png", "abc"),)
