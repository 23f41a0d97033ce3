"""The verifier over HTTP, in process (moto for the S3 calls): the store's events in, verdicts out."""
from __future__ import annotations

import json
from typing import Any

import pytest

from broker.protocols.verification import object_of_event
from tests.conftest import ACME_KEY, audit_lines
from tests.protocols.conftest import call
from tests.test_sniff import png

TOKEN = "t" * 40
UUID = "0123456789abcdef0123456789abcdef"
KEY = f"uploads/web-app/avatars/2026-11-28/{UUID}.png"


def event(key: str, *, kind: str = "create", directory: bool = False) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": key.rsplit("/", 1)[-1], "attributes": {"file_size": 1, "mime": "image/png"}}
    if directory:
        entry["is_directory"] = True
    return {"event_type": kind, "key": f"/buckets/broker-uploads/{key}", "message": {"new_entry": entry}}


def _update(*, tags_only: bool) -> dict[str, Any]:
    """A filer ``update``: the verifier's tagging (same chunks), or the same form posted again (new chunks)."""
    body = event(KEY, kind="update")
    old = {**body["message"]["new_entry"], "chunks": [{"file_id": "3,01637037d6"}],
           "extended": {"Seaweed-X-Amz-ETag": "YWJj"}}
    new = {**old, "extended": {**old["extended"], "X-Amz-Tagging-broker-verdict": "dmVyaWZpZWQ="}}
    if not tags_only:
        new = {**new, "chunks": [{"file_id": "4,0255aa11"}], "extended": {"Seaweed-X-Amz-ETag": "ZGVm"}}
    body["message"] = {"old_entry": old, "new_entry": new}
    return body


@pytest.mark.parametrize("body, found", [
    pytest.param(event(KEY), ("broker-uploads", KEY), id="object_created"),
    pytest.param(event(KEY, kind="update"), None, id="update_without_old_entry_is_ignored"),
    pytest.param(_update(tags_only=True), None, id="tagging_update_is_ignored"),
    pytest.param(_update(tags_only=False), ("broker-uploads", KEY), id="object_posted_again_over_itself"),
    pytest.param(event(KEY, kind="delete"), None, id="delete_is_ignored"),
    pytest.param(event("uploads/web-app", directory=True), None, id="directory"),
    pytest.param({**event(KEY), "key": "/buckets/broker-uploads/.uploads/abc/0001.part"}, None, id="multipart_part"),
    pytest.param({**event(KEY), "key": "/topics/x"}, None, id="not_a_bucket"),
    pytest.param({**event(KEY), "key": "/buckets/broker-uploads/"}, None, id="no_key"),
    pytest.param([], None, id="not_an_object"),
    pytest.param({"event_type": "create", "key": 7}, None, id="malformed"),
])
def test_which_filer_events_are_objects(body: Any, found: Any) -> None:
    assert object_of_event(body) == found


@pytest.fixture
def verifying(make_broker: Any, s3_client: Any) -> Any:
    broker = make_broker(events_token=TOKEN)
    s3_client.put_object(Bucket="broker-uploads", Key=KEY, Body=png(), ContentType="image/png",
                         CacheControl="public, max-age=86400", ContentDisposition='inline; filename="me.png"')
    return broker


def post_event(broker: Any, body: Any, token: str | None = TOKEN) -> Any:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    return call(broker, "POST", "/events/seaweedfs", json.dumps(body).encode(), api_key=None, headers=headers)


def test_an_event_verifies_the_object_and_the_verdict_is_asked_back(verifying: Any, audit_stream: Any,
                                                                    s3_client: Any) -> None:
    pending = call(verifying, "GET", "/uploads/verdict", query={"key": KEY})
    assert (pending.status, pending.body["status"]) == (200, "pending")
    answer = post_event(verifying, event(KEY))
    assert (answer.status, answer.body["status"], answer.body["action"]) == (200, "verified", "tagged"), answer
    tags = s3_client.get_object_tagging(Bucket="broker-uploads", Key=KEY)["TagSet"]
    assert {"Key": "broker-verdict", "Value": "verified"} in tags
    etag = s3_client.head_object(Bucket="broker-uploads", Key=KEY)["ETag"].strip('"')
    assert {"Key": "broker-etag", "Value": etag} in tags
    verdict = call(verifying, "GET", "/uploads/verdict", query={"key": KEY})
    assert verdict.body == {"key": KEY, "status": "verified", "message": "verified"}
    rec = [r for r in audit_lines(audit_stream) if r["event"] == "verification"]
    assert len(rec) == 1 and rec[0]["source"] == "seaweedfs-webhook" and rec[0]["request_id"] == "req-1"


def test_a_rejected_object_says_why_from_its_quarantined_copy(verifying: Any, s3_client: Any) -> None:
    s3_client.put_object(Bucket="broker-uploads", Key=KEY, Body=b"<html><script>x</script>", ContentType="image/png",
                         CacheControl="public, max-age=86400", ContentDisposition="inline")
    assert post_event(verifying, event(KEY)).body["status"] == "rejected"
    verdict = call(verifying, "GET", "/uploads/verdict", query={"key": KEY})
    assert verdict.body["status"] == "rejected" and verdict.body["check"] == "active_content"
    assert verdict.body["message"] == "rejected: the bytes are HTML, not image/png"


@pytest.mark.parametrize("token, status", [(None, 401), ("wrong" * 8, 401)])
def test_events_need_the_token(verifying: Any, token: str | None, status: int) -> None:
    assert post_event(verifying, event(KEY), token=token).status == status


def test_without_a_token_configured_there_is_no_event_endpoint(make_broker: Any) -> None:
    assert post_event(make_broker(), event(KEY)).status == 404


def test_a_verdict_only_for_the_callers_own_keys(verifying: Any) -> None:
    answer = call(verifying, "GET", "/uploads/verdict", query={"key": KEY}, api_key=ACME_KEY)
    assert answer.status == 404 and "not a key the broker grants to partner-acme" in answer.body["message"]
    assert call(verifying, "GET", "/uploads/verdict", query={"key": KEY}, api_key=None).status == 401
    assert call(verifying, "GET", "/uploads/verdict").status == 400
    missing = call(verifying, "GET", "/uploads/verdict", query={"key": KEY.replace(UUID, "f" * 32)})
    assert missing.body["status"] == "missing"
