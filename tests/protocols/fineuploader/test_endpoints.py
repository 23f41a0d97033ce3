"""The Fine Uploader endpoints in process (moto): key -> signature -> success, and every refusal."""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from typing import Any

import pytest

from broker.config import schemas
from broker.core.grants import GrantToken, issue_token
from tests.conftest import ACME_KEY, NOW, audit_lines
from tests.protocols import fu
from tests.protocols.conftest import SECRET, call

VIRTUAL_HOST = "broker-uploads.s3.amazonaws.com"
AVATAR = {"filename": "me.png", "content_type": "image/png", "size": 1200, "profile": "avatars"}
VIDEO = {"filename": "clip.mp4", "content_type": "video/mp4", "size": 6 * 1024 * 1024, "profile": "videos"}


def creds(broker: Any) -> Any:
    return broker.store._client._request_signer._credentials.get_frozen_credentials()


def reference_signature(secret: str, date: str, region: str, message: str) -> str:
    """SigV4 from its definition (hmac + hashlib only), to check the broker's botocore signing."""
    key = ("AWS4" + secret).encode()
    for part in (date, region, "s3", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return hmac.new(key, message.encode(), hashlib.sha256).hexdigest()


def key_for(broker: Any, body: dict[str, Any] = AVATAR, api_key: str | None = None) -> dict[str, Any]:
    answer = call(broker, "POST", "/fineuploader/key", body, **({"api_key": api_key} if api_key else {}))
    assert answer.status == 200, answer
    return answer.body


def sign(broker: Any, body: Any, grant: str | None, **kwargs: Any) -> Any:
    headers = {"x-upload-grant": grant} if grant else {}
    return call(broker, "POST", "/fineuploader/signature", body, headers=headers,
                query=kwargs.pop("query", {"v4": "true"}), **kwargs)


def avatar_policy(broker: Any, granted: dict[str, Any], **changes: Any) -> dict[str, Any]:
    args = dict(key=granted["key"], bucket=granted["bucket"], content_type="image/png",
                access_key=creds(broker).access_key, now=NOW, filename="me.png", params=granted["params"])
    args.update(changes)
    return fu.policy_document(**args)


# --------------------------------------------------------------------------- config and key


def test_config_tells_the_page_how_to_set_up_fine_uploader(fu_broker: Any) -> None:
    answer = call(fu_broker, "GET", "/fineuploader/config")

    assert answer.status == 200
    assert answer.body["accessKey"] == creds(fu_broker).access_key
    assert answer.body["bucket"] == "broker-uploads" and answer.body["host"] == VIRTUAL_HOST
    assert answer.body["partSize"] == 5 * 1024 * 1024
    assert {p["name"]: p["multipart"] for p in answer.body["profiles"]} == {
        "avatars": False, "documents": False, "videos": True}
    assert "secret" not in json.dumps(answer.body).lower()


def test_key_is_server_random_and_comes_with_the_params_to_send(fu_broker: Any, audit_stream: Any) -> None:
    granted = key_for(fu_broker)

    assert re.fullmatch(r"uploads/web-app/avatars/2026-11-28/[0-9a-f]{32}\.png", granted["key"])
    assert granted["params"] == {"Cache-Control": "public, max-age=86400",
                                 "Content-Disposition": 'inline; filename="me.png"'}
    assert granted["acl"] == "private" and granted["grantHeader"] == "x-upload-grant"
    assert granted["expiresAt"] == "2026-11-28T14:54:31Z"
    (rec,) = audit_lines(audit_stream)
    schemas.validator("audit").validate(rec)
    assert rec["event"] == "fineuploader_key" and rec["decision"] == "allowed" and rec["key"] == granted["key"]
    assert granted["grant"] not in audit_stream.getvalue()


@pytest.mark.parametrize("body, status, reason", [
    pytest.param({**AVATAR, "content_type": "text/html", "filename": "x.html"}, 403,
                 "content type text/html is not allowed for avatars", id="denied_type"),
    pytest.param({**AVATAR, "size": 6_000_000}, 413, "too large", id="too_large"),
    pytest.param({**AVATAR, "profile": "nope"}, 403, "has no profile 'nope'", id="unknown_profile"),
])
def test_a_denied_file_gets_fine_uploaders_error_shape(fu_broker: Any, audit_stream: Any, body: dict[str, Any],
                                                       status: int, reason: str) -> None:
    answer = call(fu_broker, "POST", "/fineuploader/key", body)

    assert answer.status == status
    assert reason in answer.body["error"] and answer.body["invalid"] is True
    schemas.validator("error").validate(answer.body)
    (rec,) = audit_lines(audit_stream)
    assert rec["decision"] == "denied" and reason in rec["reason"]


def test_a_rule_fine_uploader_cannot_satisfy_is_refused_up_front(broker_with: Any) -> None:
    broker = broker_with({"avatars": {"storage_class": "STANDARD_IA"}})

    answer = call(broker, "POST", "/fineuploader/key", AVATAR)

    assert answer.status == 403 and "Fine Uploader cannot request" in answer.body["error"]


@pytest.mark.parametrize("path, method", [
    ("/fineuploader/config", "GET"), ("/fineuploader/key", "POST"), ("/fineuploader/signature", "POST"),
    ("/fineuploader/success", "POST"),
])
def test_no_api_key_is_401_in_fine_uploaders_shape(fu_broker: Any, audit_stream: Any, path: str, method: str) -> None:
    answer = call(fu_broker, method, path, {} if method == "POST" else None, api_key=None,
                  query={"v4": "true"})

    assert answer.status == 401
    assert "API key" in answer.body["error"] and answer.body["invalid"] is True
    schemas.validator("error").validate(answer.body)
    (rec,) = audit_lines(audit_stream)
    assert rec["decision"] == "error" and rec["protocol"] == "fineuploader"


# --------------------------------------------------------------------------- policy signing


def test_policy_is_checked_tightened_and_signed_with_sigv4(fu_broker: Any, audit_stream: Any) -> None:
    granted = key_for(fu_broker)
    doc = avatar_policy(fu_broker, granted, size_range=(0, 10485760))

    answer = sign(fu_broker, doc, granted["grant"])

    assert answer.status == 200, answer
    signed = json.loads(base64.b64decode(answer.body["policy"]))
    assert signed["expiration"] == "2026-11-28T14:54:31.000Z"
    assert signed["conditions"][-1] == ["content-length-range", 1, 5 * 1024 * 1024]
    assert answer.body["signature"] == reference_signature(
        creds(fu_broker).secret_key, "20261128", "us-east-1", answer.body["policy"])
    rec = audit_lines(audit_stream)[-1]
    schemas.validator("audit").validate(rec)
    assert rec["event"] == "fineuploader_policy" and rec["decision"] == "allowed"
    assert rec["key"] == granted["key"] and rec["expires_at"] == "2026-11-28T14:54:31.000Z"
    line = audit_stream.getvalue()
    for secret in (answer.body["signature"], answer.body["policy"], granted["grant"], "demo-web-app-key",
                   "x-amz-credential", creds(fu_broker).secret_key):
        assert secret not in line


def test_a_tampered_policy_is_refused_and_audited(fu_broker: Any, audit_stream: Any) -> None:
    granted = key_for(fu_broker)
    doc = avatar_policy(fu_broker, granted, key="partners/partner-acme/invoices/2026-11-28/" + "0" * 32 + ".pdf")

    answer = sign(fu_broker, doc, granted["grant"])

    assert answer.status == 403
    assert answer.body["error"].startswith("key must be the granted key")
    assert answer.body["check"] == "condition_not_allowed" and "signature" not in answer.body
    rec = audit_lines(audit_stream)[-1]
    schemas.validator("audit").validate(rec)
    assert rec["decision"] == "denied" and rec["event"] == "fineuploader_policy"


def _other_clients_token(broker: Any) -> str:
    return key_for(broker, {"filename": "i.pdf", "content_type": "application/pdf", "size": 10},
                   api_key=ACME_KEY)["grant"]


@pytest.mark.parametrize("grant, reason", [
    pytest.param(None, "send the grant token", id="no_token"),
    pytest.param(issue_token(GrantToken("web-app", "avatars", "broker-uploads",
                                        f"uploads/web-app/avatars/2026-11-28/{1:032x}.png",
                                        "me.png", "image/png", 10, int(NOW.timestamp()) + 60), b"forged" * 6),
                 "not issued by this broker", id="forged"),
    pytest.param(_other_clients_token, "issued to another client", id="another_clients_token"),
    pytest.param(issue_token(GrantToken("web-app", "avatars", "broker-uploads", "uploads/web-app/avatars/x.png",
                                        "me.png", "image/png", 10, int(NOW.timestamp()) + 60), SECRET),
                 "is no longer a key avatars can grant", id="key_of_the_wrong_shape"),
    pytest.param(issue_token(GrantToken("web-app", "avatars", "broker-uploads", "k", "me.exe",
                                        "application/x-msdownload", 10, int(NOW.timestamp()) + 60), SECRET),
                 "not allowed for avatars", id="rules_now_deny_the_file"),
    pytest.param(issue_token(GrantToken("web-app", "avatars", "broker-uploads", "k", "me.png", "image/png", 10,
                                        int(NOW.timestamp())), SECRET), "expired", id="expired"),
])
def test_signing_needs_a_live_grant_of_this_client(fu_broker: Any, grant: Any, reason: str) -> None:
    granted = key_for(fu_broker)
    token = grant(fu_broker) if callable(grant) else grant

    answer = sign(fu_broker, avatar_policy(fu_broker, granted), token)

    assert answer.status == 403 and reason in answer.body["error"], answer


def test_only_signature_version_4(fu_broker: Any) -> None:
    granted = key_for(fu_broker)

    answer = sign(fu_broker, avatar_policy(fu_broker, granted), granted["grant"], query={})

    assert answer.status == 400 and "signature version 4" in answer.body["error"]


@pytest.mark.parametrize("body", [b"not json", b"[]", b'"x"', b"{}", b'{"headers": 5}', b"null"])
def test_malformed_bodies_are_refused_never_signed(fu_broker: Any, body: bytes) -> None:
    granted = key_for(fu_broker)

    answer = sign(fu_broker, body, granted["grant"])

    assert 400 <= answer.status < 500 and "signature" not in answer.body and answer.body["invalid"] is True


# --------------------------------------------------------------------------- chunked signing


def video_sts(broker: Any, granted: dict[str, Any], method: str, query: str, payload: str = fu.EMPTY_SHA256,
              extra: dict[str, str] | None = None) -> str:
    headers = fu.rest_headers(host=VIRTUAL_HOST, now=NOW, payload_hash=payload, extra=extra)
    return fu.string_to_sign(method=method, key=granted["key"], query=query, headers=headers,
                             payload_hash=payload, now=NOW)


def test_initiate_is_signed_over_the_stores_own_canonical_request(fu_broker: Any, audit_stream: Any) -> None:
    granted = key_for(fu_broker, VIDEO)
    text = video_sts(fu_broker, granted, "POST", "uploads=",
                     extra=fu.initiate_headers(acl="private", filename="clip.mp4"))

    answer = sign(fu_broker, {"headers": text}, granted["grant"])

    assert answer.status == 200, answer
    algorithm, date, scope, canonical = text.split("\n", 3)
    string_to_sign = "\n".join([algorithm, date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    assert answer.body == {"signature": reference_signature(creds(fu_broker).secret_key, "20261128",
                                                            "us-east-1", string_to_sign)}
    rec = audit_lines(audit_stream)[-1]
    schemas.validator("audit").validate(rec)
    assert rec["event"] == "fineuploader_initiate" and rec["decision"] == "allowed"


def test_chunked_upload_of_a_profile_without_multipart_is_refused(fu_broker: Any) -> None:
    granted = key_for(fu_broker)
    text = video_sts(fu_broker, granted, "POST", "uploads=",
                     extra=fu.initiate_headers(acl="private", filename="me.png", params=granted["params"]))

    answer = sign(fu_broker, {"headers": text}, granted["grant"])

    assert answer.status == 403 and answer.body["check"] == "multipart_not_allowed"


def test_a_get_object_string_to_sign_is_refused(fu_broker: Any, audit_stream: Any) -> None:
    granted = key_for(fu_broker, VIDEO)

    answer = sign(fu_broker, {"headers": video_sts(fu_broker, granted, "GET", "")}, granted["grant"])

    assert answer.status == 403 and "GetObject" in answer.body["error"]
    assert audit_lines(audit_stream)[-1]["decision"] == "denied"


def _upload_parts(s3: Any, key: str, sizes: list[int]) -> str:
    upload_id = s3.create_multipart_upload(Bucket="broker-uploads", Key=key, ContentType="video/mp4")["UploadId"]
    for number, size in enumerate(sizes, 1):
        s3.upload_part(Bucket="broker-uploads", Key=key, UploadId=upload_id, PartNumber=number, Body=b"v" * size)
    return upload_id


@pytest.mark.parametrize("sizes, status, check", [
    pytest.param([6000, 4000], 200, None, id="within_the_rule"),
    pytest.param([6000, 4001], 413, "too_large", id="one_byte_over"),
    pytest.param([500], 403, "too_small", id="under_the_minimum"),
])
def test_complete_is_signed_only_when_the_stored_parts_fit_the_rule(broker_with: Any, s3_client: Any,
                                                                     audit_stream: Any, sizes: list[int],
                                                                     status: int, check: str | None) -> None:
    broker = broker_with({"videos": {"max_bytes": 10000}})
    granted = key_for(broker, {**VIDEO, "size": 10000})
    upload_id = _upload_parts(s3_client, granted["key"], sizes)

    answer = sign(broker, {"headers": video_sts(broker, granted, "POST", f"uploadId={upload_id}", "c" * 64)},
                  granted["grant"])

    assert answer.status == status, answer
    rec = audit_lines(audit_stream)[-1]
    schemas.validator("audit").validate(rec)
    assert rec["event"] == "fineuploader_complete" and rec["size"] == sum(sizes) and rec["size_at"] == "signing"
    if check:
        assert answer.body["check"] == check and "aborted" in answer.body["error"]
        uploads = s3_client.list_multipart_uploads(Bucket="broker-uploads", Prefix=granted["key"])
        assert uploads.get("Uploads", []) == []
    else:
        assert set(answer.body) == {"signature"}


# --------------------------------------------------------------------------- upload success


def _success(broker: Any, granted: dict[str, Any], **form: str) -> Any:
    fields = {"key": granted["key"], "uuid": "u-1", "name": "me.png", "bucket": granted["bucket"], "etag": '"e"'}
    fields.update(form)
    return call(broker, "POST", "/fineuploader/success", form=fields, headers={"x-upload-grant": granted["grant"]})


@pytest.mark.parametrize("stored, form, status, reason", [
    pytest.param((1200, "image/png"), {}, 200, None, id="as_granted"),
    pytest.param((1200, "text/html"), {}, 403, "the stored type text/html is not the granted image/png",
                 id="other_type"),
    pytest.param((6 * 1024 * 1024, "image/png"), {}, 413, "too large", id="too_large"),
    pytest.param(None, {}, 403, "is not in the store", id="missing"),
    pytest.param((1200, "image/png"), {"key": "uploads/web-app/avatars/2026-11-28/" + "f" * 32 + ".png"}, 403,
                 "but the grant is for", id="another_key"),
])
def test_upload_success_checks_the_stored_object(fu_broker: Any, s3_client: Any, audit_stream: Any,
                                                 stored: tuple[int, str] | None, form: dict[str, str],
                                                 status: int, reason: str | None) -> None:
    granted = key_for(fu_broker)
    if stored:
        s3_client.put_object(Bucket="broker-uploads", Key=granted["key"], Body=b"p" * stored[0],
                             ContentType=stored[1])

    answer = _success(fu_broker, granted, **form)

    assert answer.status == status, answer
    rec = audit_lines(audit_stream)[-1]
    schemas.validator("audit").validate(rec)
    assert rec["event"] == "upload_success"
    if reason is None:
        assert answer.body["success"] is True and rec["decision"] == "allowed" and rec["size"] == 1200
    else:
        assert reason in answer.body["error"] and rec["decision"] == "denied"
    exists = bool(s3_client.list_objects_v2(Bucket="broker-uploads", Prefix=granted["key"]).get("KeyCount"))
    assert exists is (stored is not None and (status == 200 or "key" in form))
