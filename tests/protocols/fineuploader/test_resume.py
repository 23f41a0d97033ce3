"""POST /fineuploader/key?resume=<key> in process (moto): Fine Uploader continuing an interrupted upload."""
from __future__ import annotations

from typing import Any

import pytest

from broker.config import schemas
from tests.conftest import audit_lines
from tests.protocols.conftest import call

VIDEO = {"filename": "clip.mp4", "content_type": "video/mp4", "size": 6 * 1024 * 1024, "profile": "videos"}


def resume(broker: Any, key: str, body: dict[str, Any] = VIDEO) -> Any:
    return call(broker, "POST", "/fineuploader/key", body, query={"resume": key})


def started(broker: Any, s3: Any) -> tuple[str, str]:
    """A key the broker granted for VIDEO, with a multipart upload started for it (as Fine Uploader does)."""
    key = call(broker, "POST", "/fineuploader/key", VIDEO).body["key"]
    upload_id = s3.create_multipart_upload(Bucket="broker-uploads", Key=key)["UploadId"]
    return key, upload_id


def test_an_unfinished_upload_continues_under_its_key(fu_broker: Any, s3_client: Any, audit_stream: Any) -> None:
    key, upload_id = started(fu_broker, s3_client)

    answer = resume(fu_broker, key)

    assert answer.status == 200, answer
    assert answer.body["key"] == key and answer.body["grant"]
    rec = audit_lines(audit_stream)[-1]
    schemas.validator("audit").validate(rec)
    assert (rec["event"], rec["decision"], rec["key"], rec["upload_id"]) == ("fineuploader_key", "allowed", key,
                                                                             upload_id)


@pytest.mark.parametrize("change, words", [
    pytest.param(lambda k: k, "the store holds no unfinished upload", id="nothing_in_the_store"),
    pytest.param(lambda k: k.replace("/videos/", "/avatars/"), "is not one videos grants", id="other_profile"),
    pytest.param(lambda k: k.replace("uploads/web-app/", "partners/partner-acme/"), "is not one videos grants",
                 id="other_client"),
    pytest.param(lambda k: k[:-4] + "x.mp4", "is not one videos grants", id="not_the_template"),
])
def test_anything_else_fails_at_once_saying_why(fu_broker: Any, s3_client: Any, audit_stream: Any,
                                                change: Any, words: str) -> None:
    key = change(call(fu_broker, "POST", "/fineuploader/key", VIDEO).body["key"])
    if "/videos/" not in key or "x.mp4" in key:  # an upload the store does hold, under the foreign key
        s3_client.create_multipart_upload(Bucket="broker-uploads", Key=key)

    answer = resume(fu_broker, key)

    assert answer.status == 403 and answer.body["check"] == "key_not_granted", answer
    assert answer.body["error"].startswith("cannot resume: ") and words in answer.body["error"]
    assert "add the file again" in answer.body["error"]
    rec = audit_lines(audit_stream)[-1]
    schemas.validator("audit").validate(rec)
    assert rec["event"] == "fineuploader_key" and rec["decision"] == "denied"


def test_the_file_is_still_decided_by_the_rules(fu_broker: Any, s3_client: Any) -> None:
    key, _ = started(fu_broker, s3_client)
    answer = resume(fu_broker, key, {**VIDEO, "content_type": "text/plain", "filename": "clip.txt"})
    assert answer.status == 403 and answer.body["check"] == "content_type_not_allowed", answer


def test_a_profile_without_multipart_has_nothing_to_resume(fu_broker: Any, s3_client: Any) -> None:
    key = call(fu_broker, "POST", "/fineuploader/key",
               {"filename": "me.png", "content_type": "image/png", "size": 100, "profile": "avatars"}).body["key"]
    answer = resume(fu_broker, key, {"filename": "me.png", "content_type": "image/png", "size": 100,
                                     "profile": "avatars"})
    assert answer.status == 403 and "does not allow chunked uploads" in answer.body["error"], answer
