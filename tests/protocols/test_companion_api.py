"""The Companion endpoints in process (moto): params, multipart create/sign/list/complete/abort."""
from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from broker.config import schemas
from broker.s3.post import decode_policy
from tests.conftest import ACME_KEY, audit_lines
from tests.protocols.conftest import call

MiB = 1024 * 1024
VIDEO = {"filename": "clip.mp4", "type": "video/mp4", "metadata": {"profile": "videos", "name": "clip.mp4",
                                                                    "type": "video/mp4"}}


def params(broker: Any, filename: str = "me.png", type_: str = "image/png", **meta: str) -> Any:
    query = {"filename": filename, "type": type_, **{f"metadata[{k}]": v for k, v in meta.items()}}
    return call(broker, "GET", "/s3/params", query=query)


def create(broker: Any, body: dict[str, Any] = VIDEO, **kwargs: Any) -> Any:
    return call(broker, "POST", "/s3/multipart", body, **kwargs)


def started(broker: Any) -> dict[str, Any]:
    answer = create(broker)
    assert answer.status == 200, answer
    return answer.body


def companion_audit(stream: Any) -> list[dict[str, Any]]:
    records = audit_lines(stream)
    for rec in records:
        schemas.validator("audit").validate(rec)
    return records


# --------------------------------------------------------------------------- /s3/params


def test_params_is_a_presigned_post_from_the_same_rules(fu_broker: Any, audit_stream: Any) -> None:
    answer = params(fu_broker, name="me.png", type="image/png", relativePath="null", profile="avatars")

    assert answer.status == 200, answer
    assert answer.body["method"] == "POST" and answer.body["url"] == "https://broker-uploads.s3.amazonaws.com/"
    fields = answer.body["fields"]
    conditions = decode_policy(fields["policy"])["conditions"]
    assert ["content-length-range", 1, 5 * MiB] in conditions
    assert {"key": fields["key"]} in conditions and fields["key"].startswith("uploads/web-app/avatars/")
    (rec,) = companion_audit(audit_stream)
    assert rec["protocol"] == "companion" and rec["event"] == "upload" and rec["decision"] == "allowed"


@pytest.mark.parametrize("query, status, message", [
    pytest.param({"filename": "x.html", "type": "text/html"}, 403, "content type text/html is not allowed",
                 id="denied_type"),
    pytest.param({"filename": "me.png", "type": "image/png", "metadata[size]": str(6 * MiB)}, 413,
                 "too large: 6 MiB", id="declared_size_too_large"),
    pytest.param({"filename": "me.png", "type": "image/png", "metadata[size]": "6e6"}, 400,
                 "metadata[size] must be a whole number", id="size_not_a_number"),
    pytest.param({"filename": "me.png", "type": "image/png", "metadata[evil]": "1"}, 403,
                 "metadata evil may not be set", id="unknown_metadata"),
    pytest.param({"filename": "me.png", "type": "image/png", "metadata[profile]": "nope"}, 403,
                 "has no profile 'nope'", id="unknown_profile"),
    pytest.param({"type": "image/png"}, 400, "filename and type are required", id="no_filename"),
    pytest.param({"filename": "../../etc/passwd", "type": "image/png"}, 400, "base name", id="path_in_filename"),
])
def test_params_refusals_have_a_message_uppy_can_show(fu_broker: Any, audit_stream: Any, query: dict[str, str],
                                                      status: int, message: str) -> None:
    answer = call(fu_broker, "GET", "/s3/params", query=query)

    assert answer.status == status
    assert message in answer.body["message"], answer
    assert companion_audit(audit_stream)[-1]["decision"] in ("denied", "error")


@pytest.mark.parametrize("method, path", [
    ("GET", "/s3/params"), ("POST", "/s3/multipart"), ("GET", "/s3/multipart/u1/1"), ("GET", "/s3/multipart/u1/batch"),
    ("GET", "/s3/multipart/u1"), ("POST", "/s3/multipart/u1/complete"), ("DELETE", "/s3/multipart/u1"),
])
def test_every_route_needs_authentication(fu_broker: Any, method: str, path: str) -> None:
    answer = call(fu_broker, method, path, {} if method == "POST" else None, api_key=None)

    assert answer.status == 401 and "API key" in answer.body["message"]


@pytest.mark.parametrize("method, path, event", [
    pytest.param("GET", "/s3/params", "companion_error", id="companion"),
    pytest.param("POST", "/fineuploader/key", "fineuploader_error", id="fineuploader"),
    pytest.param("GET", "/uploads/verdict", "verification_error", id="verification"),
    pytest.param("POST", "/uploads", "upload", id="native"),
])
def test_each_protocols_errors_are_audited_under_its_own_event(fu_broker: Any, audit_stream: Any, method: str,
                                                               path: str, event: str) -> None:
    answer = call(fu_broker, method, path, {} if method == "POST" else None, api_key=None)
    rec = audit_lines(audit_stream)[-1]
    assert answer.status == 401 and (rec["decision"], rec["event"], rec["error"]) == ("error", event, "unauthenticated")


# --------------------------------------------------------------------------- multipart


def test_create_starts_the_upload_with_the_grants_fields(fu_broker: Any, s3_client: Any, audit_stream: Any) -> None:
    body = started(fu_broker)

    assert body["bucket"] == "broker-uploads" and body["key"].startswith("uploads/web-app/videos/2026-11-28/")
    uploads = s3_client.list_multipart_uploads(Bucket="broker-uploads", Prefix=body["key"])["Uploads"]
    assert [u["UploadId"] for u in uploads] == [body["uploadId"]]
    (rec,) = companion_audit(audit_stream)
    assert rec["event"] == "multipart_create" and rec["upload_id"] == body["uploadId"]


@pytest.mark.parametrize("body, status, message", [
    pytest.param({"filename": "me.png", "type": "image/png", "metadata": {}}, 403,
                 "avatars does not allow multipart uploads", id="profile_without_multipart"),
    pytest.param({**VIDEO, "type": "image/png", "filename": "x.png"}, 403, "not allowed for videos", id="denied_type"),
    pytest.param({**VIDEO, "metadata": {"profile": "videos", "size": 3 * 1024**3}}, 413, "too large", id="too_large"),
    pytest.param({**VIDEO, "metadata": "x"}, 400, "metadata must be an object", id="metadata_not_object"),
    pytest.param([], 400, "the body must be", id="not_an_object"),
])
def test_create_refusals(fu_broker: Any, s3_client: Any, body: Any, status: int, message: str) -> None:
    answer = create(fu_broker, body)

    assert answer.status == status and message in answer.body["message"], answer


def test_a_part_url_is_signed_for_the_granted_upload(fu_broker: Any, audit_stream: Any) -> None:
    body = started(fu_broker)

    answer = call(fu_broker, "GET", f"/s3/multipart/{body['uploadId']}/2", query={"key": body["key"]})

    assert answer.status == 200 and answer.body["expires"] == 1800
    url = urlsplit(answer.body["url"])
    assert url.path == "/" + body["key"]
    query = parse_qs(url.query)
    assert query["partNumber"] == ["2"] and query["uploadId"] == [body["uploadId"]]
    rec = companion_audit(audit_stream)[-1]
    assert rec["event"] == "multipart_sign_part" and rec["part_number"] == 2 and rec["decision"] == "allowed"


def test_batch_signs_several_parts(fu_broker: Any) -> None:
    body = started(fu_broker)

    answer = call(fu_broker, "GET", f"/s3/multipart/{body['uploadId']}/batch",
                  query={"key": body["key"], "partNumbers": "1,2,3"})

    assert answer.status == 200 and sorted(answer.body["presignedUrls"]) == ["1", "2", "3"]


OTHER_CLIENT = "partners/partner-acme/invoices/2026-11-28/" + "0" * 32 + ".pdf"
MOBILE = "uploads/mobile/photos/2026/11/" + "0" * 32 + ".jpg"
AVATAR_KEY = "uploads/web-app/avatars/2026-11-28/" + "0" * 32 + ".png"


@pytest.mark.parametrize("path, key, status, message", [
    pytest.param("/s3/multipart/{id}/1", OTHER_CLIENT, 403, "is not a key the broker grants to web-app",
                 id="another_clients_prefix"),
    pytest.param("/s3/multipart/{id}/1", MOBILE, 403, "is not a key the broker grants", id="another_clients_key"),
    pytest.param("/s3/multipart/{id}/1", AVATAR_KEY, 403, "avatars does not allow multipart", id="non_multipart_rule"),
    pytest.param("/s3/multipart/{id}/1", "uploads/web-app/videos/2026-11-28/mine.mp4", 403, "is not a key",
                 id="client_chosen_name"),
    pytest.param("/s3/multipart/{id}/1", "", 400, "needs the object key", id="no_key"),
    pytest.param("/s3/multipart/{id}/0", None, 400, "is not 1..10000", id="part_0"),
    pytest.param("/s3/multipart/{id}/abc", None, 400, "is not 1..10000", id="part_not_a_number"),
    pytest.param("/s3/multipart/{id}/411", None, 413, "beyond the 410 parts of 5 MiB that videos's limit of 2 GiB",
                 id="part_beyond_the_rule"),
    pytest.param("/s3/multipart/{id}/batch", None, 400, "partNumbers must list", id="batch_without_numbers"),
    pytest.param("/s3/multipart/bad%id/1", None, 400, "upload id is malformed", id="bad_upload_id"),
])
def test_part_signing_is_bound_to_the_grant(fu_broker: Any, audit_stream: Any, path: str, key: str | None,
                                            status: int, message: str) -> None:
    body = started(fu_broker)

    answer = call(fu_broker, "GET", path.format(id=body["uploadId"]),
                  query={"key": body["key"] if key is None else key})

    assert answer.status == status and message in answer.body["message"], answer
    assert companion_audit(audit_stream)[-1]["decision"] in ("denied", "error")


def test_another_client_cannot_touch_web_apps_upload(fu_broker: Any) -> None:
    body = started(fu_broker)

    for method, path in (("GET", "/1"), ("GET", ""), ("DELETE", ""), ("POST", "/complete")):
        answer = call(fu_broker, method, f"/s3/multipart/{body['uploadId']}{path}", {"parts": []},
                      query={"key": body["key"]}, api_key=ACME_KEY)
        assert answer.status == 403 and "partner-acme" in answer.body["message"], (method, path, answer)


def _upload(s3: Any, body: dict[str, Any], sizes: list[int]) -> list[dict[str, Any]]:
    parts = []
    for number, size in enumerate(sizes, 1):
        out = s3.upload_part(Bucket="broker-uploads", Key=body["key"], UploadId=body["uploadId"],
                             PartNumber=number, Body=b"v" * size)
        parts.append({"PartNumber": number, "ETag": out["ETag"]})
    return parts


def test_list_parts(fu_broker: Any, s3_client: Any) -> None:
    body = started(fu_broker)
    _upload(s3_client, body, [10, 20])

    answer = call(fu_broker, "GET", f"/s3/multipart/{body['uploadId']}", query={"key": body["key"]})

    assert answer.status == 200
    assert [(p["PartNumber"], p["Size"]) for p in answer.body] == [(1, 10), (2, 20)]


@pytest.mark.parametrize("sizes, status, check", [
    pytest.param([10000], 200, None, id="within_the_rule"),  # moto, like S3, wants 5 MiB parts but the last
    pytest.param([6000, 4001], 413, "too_large", id="one_byte_over"),
    pytest.param([500], 403, "too_small", id="under_the_minimum"),
])
def test_complete_enforces_the_rules_size_on_the_stored_parts(broker_with: Any, s3_client: Any, audit_stream: Any,
                                                              sizes: list[int], status: int, check: str | None) -> None:
    broker = broker_with({"videos": {"max_bytes": 10000}})
    body = started(broker)
    parts = _upload(s3_client, body, sizes)

    answer = call(broker, "POST", f"/s3/multipart/{body['uploadId']}/complete", {"parts": parts},
                  query={"key": body["key"]})

    assert answer.status == status, answer
    rec = companion_audit(audit_stream)[-1]
    assert rec["event"] == "multipart_complete" and rec["size"] == sum(sizes)
    stored = s3_client.list_objects_v2(Bucket="broker-uploads", Prefix=body["key"]).get("KeyCount", 0)
    pending = s3_client.list_multipart_uploads(Bucket="broker-uploads", Prefix=body["key"]).get("Uploads", [])
    if check is None:
        assert answer.body == {"location": f"https://broker-uploads.s3.amazonaws.com/{body['key']}",
                               "key": body["key"], "bucket": "broker-uploads"}
        head = s3_client.head_object(Bucket="broker-uploads", Key=body["key"])
        assert head["ContentType"] == "video/mp4" and head["ContentLength"] == sum(sizes)
    else:
        assert answer.body["check"] == check and "aborted and nothing is stored" in answer.body["message"]
        assert (stored, pending) == (0, [])


def test_parts_held_back_from_completion_still_count_against_the_limit(broker_with: Any, s3_client: Any) -> None:
    broker = broker_with({"videos": {"max_bytes": 10000}})
    body = started(broker)
    parts = _upload(s3_client, body, [6000, 9000])

    answer = call(broker, "POST", f"/s3/multipart/{body['uploadId']}/complete", {"parts": parts[:1]},
                  query={"key": body["key"]})

    assert answer.status == 413


@pytest.mark.parametrize("parts, message", [
    pytest.param([], "the body must be", id="empty"),
    pytest.param([{"PartNumber": 1, "ETag": '"nope"'}], "is not stored with that ETag", id="wrong_etag"),
    pytest.param([{"PartNumber": 7, "ETag": '"x"'}], "part 7 is not stored", id="missing_part"),
    pytest.param([{"PartNumber": "1", "ETag": '"x"'}], "PartNumber must be", id="number_as_string"),
    pytest.param([{"PartNumber": 1, "ETag": '"x"'}, {"PartNumber": 1, "ETag": '"x"'}], "ascending", id="duplicate"),
])
def test_complete_rejects_a_malformed_part_list(fu_broker: Any, s3_client: Any, parts: Any, message: str) -> None:
    body = started(fu_broker)
    _upload(s3_client, body, [10])

    answer = call(fu_broker, "POST", f"/s3/multipart/{body['uploadId']}/complete", {"parts": parts},
                  query={"key": body["key"]})

    assert answer.status == 400 and message in answer.body["message"]


def test_abort_deletes_the_parts(fu_broker: Any, s3_client: Any, audit_stream: Any) -> None:
    body = started(fu_broker)
    _upload(s3_client, body, [10])

    answer = call(fu_broker, "DELETE", f"/s3/multipart/{body['uploadId']}", query={"key": body["key"]})

    assert (answer.status, answer.body) == (200, {})
    assert s3_client.list_multipart_uploads(Bucket="broker-uploads", Prefix=body["key"]).get("Uploads", []) == []
    assert companion_audit(audit_stream)[-1]["event"] == "multipart_abort"


def test_batch_signs_each_part_once(fu_broker: Any, audit_stream: Any) -> None:
    """'1,1,1,...' is one signature, not a thousand (presign amplification)."""
    body = started(fu_broker)

    answer = call(fu_broker, "GET", f"/s3/multipart/{body['uploadId']}/batch",
                  query={"key": body["key"], "partNumbers": ",".join(["1"] * 999 + ["2"])})

    assert answer.status == 200 and sorted(answer.body["presignedUrls"]) == ["1", "2"]
    assert audit_lines(audit_stream)[-1]["actual"] == [1, 2]


@pytest.mark.parametrize("upload_id", [".", ".."])
def test_dot_segments_are_not_upload_ids(fu_broker: Any, upload_id: str) -> None:
    body = started(fu_broker)
    answer = call(fu_broker, "GET", f"/s3/multipart/{upload_id}/1", query={"key": body["key"]})
    assert answer.status == 400 and "malformed" in answer.body["message"]


def test_aborting_an_upload_that_is_not_there_is_a_404(fu_broker: Any, audit_stream: Any) -> None:
    body = started(fu_broker)
    assert call(fu_broker, "DELETE", f"/s3/multipart/{body['uploadId']}", query={"key": body["key"]}).status == 200
    again = call(fu_broker, "DELETE", f"/s3/multipart/{body['uploadId']}", query={"key": body["key"]})
    assert again.status == 404 and "no multipart upload" in again.body["message"]
    rec = audit_lines(audit_stream)[-1]
    assert (rec["decision"], rec["status"], rec["error"]) == ("error", 404, "not_found")
