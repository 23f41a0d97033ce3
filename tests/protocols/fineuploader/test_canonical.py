"""broker.canonical: only the four calls of a multipart upload of the granted key are ever signed."""
from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from broker.protocols.fineuploader.canonical import Operation, check_rest, parse_string_to_sign
from broker.protocols.fineuploader.policy import SigningLimits
from tests.conftest import NOW
from tests.protocols import fu

KEY = "uploads/web-app/videos/2026-11-28/0123456789abcdef0123456789abcdef.mp4"
HOST = "127.0.0.1:8333"
UPLOAD_ID = "26c7cf8b9527528_a331722c7e39.4bb-283def~016784af700"
FIELDS = {"Content-Type": "video/mp4", "acl": "private", "x-amz-meta-source": "web-app",
          "success_action_status": "201"}
PART_SHA = "a" * 64


def limits(**changes: Any) -> SigningLimits:
    base = dict(bucket="broker-uploads", key=KEY, filename="clip.mp4", fields=FIELDS, min_bytes=1000,
                max_bytes=2 * 1024**3, region="us-east-1", access_key_id="AKIDBROKER", session_token=None,
                now=NOW, not_after=NOW + timedelta(seconds=1800), multipart=True, max_parts=410,
                hosts=(HOST,))
    base.update(changes)
    return SigningLimits(**base)


def initiate_headers() -> dict[str, str]:
    return fu.initiate_headers(acl="private", filename="clip.mp4", params={"source": "web-app"})


def sts(method: str = "POST", query: str = "uploads=", extra: dict[str, str] | None = None,
        payload: str = fu.EMPTY_SHA256, **kwargs: Any) -> str:
    headers = fu.rest_headers(host=HOST, now=NOW, payload_hash=payload, extra=extra)
    return fu.string_to_sign(method=method, key=KEY, query=query, headers=headers, payload_hash=payload,
                             now=NOW, **kwargs)


def check(text: str, **changes: Any) -> tuple[Any, list[str]]:
    parsed, problems = parse_string_to_sign(text)
    if parsed is None:
        return None, [str(p) for p in problems]
    rest, problems = check_rest(parsed, limits(**changes))
    return rest, [str(p) for p in problems]


VALID = [
    pytest.param(sts(extra=initiate_headers()), Operation.INITIATE, None, id="initiate"),
    pytest.param(sts("PUT", f"partNumber=3&uploadId={UPLOAD_ID}", payload=PART_SHA), Operation.UPLOAD_PART, 3,
                 id="upload_part"),
    pytest.param(sts("POST", f"uploadId={UPLOAD_ID}", payload=PART_SHA), Operation.COMPLETE, None, id="complete"),
    pytest.param(sts("DELETE", f"uploadId={UPLOAD_ID}"), Operation.ABORT, None, id="abort"),
    pytest.param(sts(extra=initiate_headers(), uri=f"/broker-uploads/{KEY}"), Operation.INITIATE, None,
                 id="initiate_path_style_uri"),
]


@pytest.mark.parametrize("text, operation, part", VALID)
def test_the_four_multipart_calls_are_accepted(text: str, operation: Operation, part: int | None) -> None:
    rest, problems = check(text)

    assert problems == []
    assert rest.operation is operation and rest.part_number == part and rest.key == KEY
    assert "host" not in dict(rest.headers)  # the host comes from the store's own URL
    if operation is not Operation.INITIATE:
        assert rest.upload_id_decoded == UPLOAD_ID


HOSTILE = [
    # other S3 operations on the granted key
    pytest.param(sts("GET", ""), "(that is GetObject) is not signed", id="GetObject"),
    pytest.param(sts("HEAD", ""), "HeadObject", id="HeadObject"),
    pytest.param(sts("DELETE", ""), "(that is DeleteObject) is not signed", id="DeleteObject"),
    pytest.param(sts("PUT", "", extra={"x-amz-copy-source": "/broker-uploads/uploads/mobile/secret.jpg"}),
                 "(that is CopyObject) is not signed", id="CopyObject"),
    pytest.param(sts("PUT", "", payload=PART_SHA), "(that is PutObject) is not signed", id="PutObject"),
    pytest.param(sts("PUT", "acl=", extra={"x-amz-acl": "public-read"}), "(that is PutObjectAcl) is not signed",
                 id="PutObjectAcl"),
    pytest.param(sts("PUT", "tagging="), "PutObjectTagging", id="PutObjectTagging"),
    pytest.param(sts("GET", f"uploadId={UPLOAD_ID}"), "ListParts", id="ListParts"),
    pytest.param(sts("POST", "uploads=&x-id=CopyObject", extra=initiate_headers()), "is not signed",
                 id="initiate_with_extra_query"),
    pytest.param(sts("POST", "delete="), "is not signed", id="DeleteObjects"),
    pytest.param(sts("PUT", f"uploadId={UPLOAD_ID}&partNumber=1"), "is not signed", id="query_not_canonical_order"),
    # headers smuggled into the canonical request
    pytest.param(sts("PUT", f"partNumber=1&uploadId={UPLOAD_ID}", payload=PART_SHA,
                     extra={"x-amz-copy-source": "/broker-uploads/uploads/mobile/x.jpg"}),
                 "x-amz-copy-source may not be sent with upload_part", id="UploadPartCopy"),
    pytest.param(sts("PUT", f"partNumber=1&uploadId={UPLOAD_ID}", payload=PART_SHA, extra={"x-amz-acl": "public-read"}),
                 "may not be sent with upload_part", id="acl_on_part"),
    pytest.param(sts("POST", f"uploadId={UPLOAD_ID}", payload=PART_SHA, extra={"x-amz-meta-evil": "1"}),
                 "may not be sent with complete", id="metadata_on_complete"),
    pytest.param(sts(extra={**initiate_headers(), "x-amz-website-redirect-location": "https://evil.example/"}),
                 "is not a header the broker signs", id="redirect_on_initiate"),
    pytest.param(sts(extra={**initiate_headers(), "x-amz-acl": "public-read"}), "x-amz-acl must be private",
                 id="public_acl_on_initiate"),
    pytest.param(sts(extra={**initiate_headers(), "x-amz-meta-evil": "1"}), "x-amz-meta-evil was not granted",
                 id="metadata_on_initiate"),
    pytest.param(sts(extra={**initiate_headers(), "x-amz-storage-class": "GLACIER"}), "is not set by the rule",
                 id="storage_class_on_initiate"),
    pytest.param(sts(extra={**initiate_headers(), "Content-Type": "text/html"}), "content-type must be video/mp4",
                 id="signed_other_type_on_initiate"),
    pytest.param(sts(extra={"x-amz-meta-qqfilename": "clip.mp4"}), "x-amz-acl is required", id="initiate_without_acl"),
    pytest.param(sts(extra={"x-amz-acl": "private"}), "x-amz-meta-source is required", id="initiate_without_rule_meta"),
    pytest.param(sts(extra=initiate_headers()).replace("x-amz-acl:private",
                                                       "x-amz-acl:private\r\nx-amz-acl:public-read"),
                 "control character U+000D", id="crlf_injection"),
    pytest.param(sts(extra=initiate_headers()).replace("x-amz-acl:private", "x-amz-acl:private\nx-amz-acl:public-read"),
                 "signed headers must list exactly", id="header_line_added"),
    pytest.param(sts(extra=initiate_headers()).replace("x-amz-acl:private\n", "x-amz-acl:private\nx-amz-acl:private\n"),
                 "a header appears twice", id="duplicate_header"),
    pytest.param(sts(extra=initiate_headers()).replace(";x-amz-acl;", ";"), "signed headers must list exactly",
                 id="signed_headers_omit_one"),
    pytest.param(sts(extra=initiate_headers()).replace("host:", "Host:"), "not a lower-case", id="header_upper_case"),
    pytest.param(sts(extra=initiate_headers()).replace(f"host:{HOST}", f"host:{HOST}/broker-uploads"),
                 "is not the store's", id="host_with_bucket_path"),
    pytest.param(sts(extra=initiate_headers()).replace(f"host:{HOST}", "host:s3.amazonaws.com"),
                 "is not the store's", id="another_host"),
    pytest.param(sts(extra=initiate_headers()).replace("\nhost:", "\nx-forwarded-host:"), "host must be signed",
                 id="no_host"),
    # another key, bucket, date, scope
    pytest.param(sts(extra=initiate_headers(), uri="/uploads/mobile/photos/2026/11/" + "0" * 32 + ".jpg"),
                 "is not the granted key", id="another_clients_key"),
    pytest.param(sts(extra=initiate_headers(), uri=f"/other-bucket/{KEY}"), "is not the granted key",
                 id="another_bucket"),
    pytest.param(sts(extra=initiate_headers(), uri=f"/{KEY}/../../secret"), "is not the granted key", id="dot_dot"),
    pytest.param(sts(extra=initiate_headers(), region="eu-west-1"), "the scope must be", id="another_region"),
    pytest.param(sts(extra=initiate_headers()).replace("AWS4-HMAC-SHA256", "AWS4-HMAC-SHA1", 1), "algorithm must be",
                 id="another_algorithm"),
    pytest.param(sts(extra=initiate_headers()).replace(fu.amz_date(NOW), "20261128T190000Z"), "15 minutes",
                 id="skewed_date"),
    # bodies and hashes
    pytest.param(sts(extra=initiate_headers(), payload=PART_SHA), "a initiate request has no body",
                 id="initiate_with_body"),
    pytest.param(sts("PUT", f"partNumber=1&uploadId={UPLOAD_ID}", payload="UNSIGNED-PAYLOAD"),
                 "must be the payload's SHA-256", id="unsigned_payload"),
    pytest.param(sts("PUT", f"partNumber=1&uploadId={UPLOAD_ID}", payload=PART_SHA)[:-1] + "b",
                 "payload hash differs", id="hash_mismatch"),
    # part numbers and upload ids
    pytest.param(sts("PUT", f"partNumber=0&uploadId={UPLOAD_ID}", payload=PART_SHA), "is not 1..10000", id="part_0"),
    pytest.param(sts("PUT", f"partNumber=01&uploadId={UPLOAD_ID}", payload=PART_SHA), "is not 1..10000", id="part_01"),
    pytest.param(sts("PUT", f"partNumber=411&uploadId={UPLOAD_ID}", payload=PART_SHA),
                 "more than the rule's size allows",
                 id="part_beyond_rule"),
    pytest.param(sts("PUT", "partNumber=1&uploadId=a/b", payload=PART_SHA), "uploadId", id="upload_id_slash"),
    pytest.param(sts("POST", "uploads=x", extra=initiate_headers()), "must be exactly 'uploads='", id="uploads_value"),
    # structure
    pytest.param(sts(extra=initiate_headers()) + "\nextra", "nothing after them", id="trailing_line"),
    pytest.param("AWS4-HMAC-SHA256\n20261128T144931Z\nscope", "needs the algorithm", id="truncated"),
    pytest.param("", "non-empty string", id="empty"),
    pytest.param(12, "non-empty string", id="number"),
    pytest.param("x" * 20000, "longer than", id="huge"),
]


@pytest.mark.parametrize("text, message", HOSTILE)
def test_anything_else_is_refused_with_the_reason(text: Any, message: str) -> None:
    rest, problems = check(text)

    assert rest is None
    assert any(message in p for p in problems), problems


def test_session_token_must_be_the_brokers() -> None:
    text = sts(extra={**initiate_headers(), "x-amz-security-token": "STOLEN"})

    assert check(text, session_token="TOKEN")[1]
    assert check(sts(extra={**initiate_headers(), "x-amz-security-token": "TOKEN"}), session_token="TOKEN")[1] == []
    assert any("x-amz-security-token must be signed" in p for p in check(sts(extra=initiate_headers()),
                                                                         session_token="TOKEN")[1])
