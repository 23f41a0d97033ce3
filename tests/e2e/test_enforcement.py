"""The store refuses every upload the rules forbid, even with fields the broker really issued.

Each test asks the running broker (``live``: waitress + SeaweedFS or Ceph RGW, which both
enforce POST policies as S3 does, with the differences the tests state) for a form over HTTP,
tampers with it the way a hostile client could, posts it to the store, and checks both the
store's answer and that nothing was stored.
"""
from __future__ import annotations

import base64
import calendar
import hashlib
import hmac
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from botocore.exceptions import ClientError

from tests.conftest import ACME_KEY, WEB_KEY
from tests.stack import Live, write_rules
from tests.store_suite import live, store, verifying  # noqa: F401 - the store suite: SeaweedFS and Ceph RGW

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + os.urandom(64)


# --------------------------------------------------------------------------- helpers


def ask(url: str, filename: str, content_type: str, size: int, profile: str | None = None,
        api_key: str = WEB_KEY) -> dict[str, Any]:
    """POST /uploads on the broker at url; the 200 body (fails the test on anything else)."""
    body: dict[str, Any] = {"filename": filename, "content_type": content_type, "size": size}
    if profile:
        body["profile"] = profile
    response = requests.post(f"{url}/uploads", json=body, headers={"x-api-key": api_key}, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def post_form(url: str, fields: dict[str, str], data: bytes, filename: str = "upload.bin",
              file_type: str = "application/octet-stream") -> requests.Response:
    """POST like a browser form: every field as a plain form field, then ``file`` last."""
    parts: list[tuple[str, Any]] = [(name, (None, value)) for name, value in fields.items()]
    parts.append(("file", (filename, data, file_type)))
    return requests.post(url, files=parts, timeout=30)


def s3_error(response: requests.Response) -> str:
    """The ``<Code>`` of an S3 XML error body ('' if there is none)."""
    text = response.text
    start = text.find("<Code>")
    return text[start + 6:text.find("</Code>")] if start >= 0 else ""


def stored(live: Live, key: str) -> bytes | None:
    """The object's bytes, or None if the key does not exist."""
    try:
        return live.s3.get_object(Bucket=live.bucket, Key=key)["Body"].read()
    except ClientError as exc:
        if exc.response["Error"]["Code"] in ("NoSuchKey", "404"):
            return None
        raise


def etags(live: Live) -> dict[str, str]:
    """Every key in the bucket with its ETag: a snapshot to prove nothing was written."""
    out: dict[str, str] = {}
    for page in live.s3.get_paginator("list_objects_v2").paginate(Bucket=live.bucket):
        for obj in page.get("Contents", []):
            out[obj["Key"]] = obj["ETag"]
    return out


def assert_refused(live: Live, response: requests.Response, status: int, codes: set[str],
                   before: dict[str, str], *keys: str) -> None:
    """The store said no with one of codes, and the bucket is exactly as it was before."""
    assert (response.status_code, s3_error(response) in codes) == (status, True), response.text
    for key in keys:
        assert stored(live, key) is None, f"{key} was stored although the store refused the upload"
    assert etags(live) == before


@pytest.fixture()
def snapshot(live: Live) -> dict[str, str]:
    """The bucket's keys and ETags before the test posts anything."""
    return etags(live)


# --------------------------------------------------------------------------- allowed


def test_allowed_upload_is_stored_byte_for_byte(live: Live, snapshot: dict[str, str]) -> None:
    grant = ask(live.url, "me.png", "image/png", len(PNG), "avatars")

    response = post_form(grant["url"], grant["fields"], PNG, "me.png", "image/png")

    assert response.status_code == 201, response.text
    assert f"<Key>{grant['key']}</Key>" in response.text
    assert stored(live, grant["key"]) == PNG
    head = live.s3.head_object(Bucket=live.bucket, Key=grant["key"])
    assert head["ContentType"] == "image/png"
    assert head["ETag"].strip('"') == hashlib.md5(PNG).hexdigest()
    assert set(etags(live)) - set(snapshot) == {grant["key"]}


# --------------------------------------------------------------------------- size


def test_file_over_max_bytes_is_refused(live: Live, snapshot: dict[str, str]) -> None:
    grant = ask(live.url, "big.png", "image/png", 1000, "avatars")  # declares a small size
    too_big = PNG + b"\x00" * (grant["max_bytes"] + 1 - len(PNG))

    response = post_form(grant["url"], grant["fields"], too_big, "big.png", "image/png")

    assert_refused(live, response, 400, {"EntityTooLarge"}, snapshot, grant["key"])


def test_file_under_min_bytes_is_refused(live: Live, snapshot: dict[str, str]) -> None:
    grant = ask(live.url, "clip.mp4", "video/mp4", 5000, "videos")
    assert grant["min_bytes"] == 1000
    too_small = os.urandom(grant["min_bytes"] - 1)

    response = post_form(grant["url"], grant["fields"], too_small, "clip.mp4", "video/mp4")

    assert_refused(live, response, 400, {"EntityTooSmall"}, snapshot, grant["key"])


# --------------------------------------------------------------------------- tampered fields


def _other_key(grant: dict[str, Any]) -> str:
    head, _, name = grant["key"].rpartition("/")
    return f"{head}/{'0' * 32}{Path(name).suffix}"


def _other_client(grant: dict[str, Any]) -> str:
    return "partners/partner-acme/invoices/" + grant["key"].rpartition("/")[2]


def _filename_key(grant: dict[str, Any]) -> str:
    return grant["key"].rpartition("/")[0] + "/${filename}"


@pytest.mark.parametrize("new_key, stored_as", [
    pytest.param(_other_key, _other_key, id="another_key_same_prefix"),
    pytest.param(_other_client, _other_client, id="another_clients_prefix"),
    pytest.param(_filename_key, lambda g: g["key"].rpartition("/")[0] + "/evil.png", id="filename_key"),
])
def test_changed_key_is_refused(live: Live, snapshot: dict[str, str],
                                new_key: Callable[[dict[str, Any]], str],
                                stored_as: Callable[[dict[str, Any]], str]) -> None:
    grant = ask(live.url, "me.png", "image/png", len(PNG), "avatars")
    fields = {**grant["fields"], "key": new_key(grant)}

    response = post_form(grant["url"], fields, PNG, "evil.png", "image/png")

    assert_refused(live, response, 403, {"AccessDenied"}, snapshot, grant["key"], stored_as(grant))


def test_key_of_another_grant_cannot_be_overwritten(live: Live) -> None:
    first = ask(live.url, "first.png", "image/png", len(PNG), "avatars")
    assert post_form(first["url"], first["fields"], PNG, "first.png", "image/png").status_code == 201
    second = ask(live.url, "second.png", "image/png", len(PNG), "avatars")
    before = etags(live)

    response = post_form(second["url"], {**second["fields"], "key": first["key"]}, b"\x89PNG evil",
                         "second.png", "image/png")

    assert_refused(live, response, 403, {"AccessDenied"}, before, second["key"])
    assert stored(live, first["key"]) == PNG


def test_changed_content_type_is_refused(live: Live, snapshot: dict[str, str]) -> None:
    grant = ask(live.url, "me.png", "image/png", len(PNG), "avatars")
    fields = {**grant["fields"], "Content-Type": "text/html"}

    response = post_form(grant["url"], fields, b"<script>alert(1)</script>", "me.png", "text/html")

    assert_refused(live, response, 403, {"AccessDenied"}, snapshot, grant["key"])


@pytest.mark.parametrize("extra", [
    pytest.param({"x-amz-meta-owner": "someone-else"}, id="user_metadata"),
    pytest.param({"x-amz-website-redirect-location": "https://evil.example/"}, id="website_redirect"),
    pytest.param({"x-amz-storage-class": "STANDARD_IA"}, id="storage_class"),
    pytest.param({"x-amz-server-side-encryption": "AES256"}, id="encryption"),
    pytest.param({"x-amz-tagging": "<Tagging><TagSet></TagSet></Tagging>"}, id="tagging"),
])
def test_extra_uncovered_field_is_refused(live: Live, snapshot: dict[str, str],
                                          extra: dict[str, str]) -> None:
    grant = ask(live.url, "me.png", "image/png", len(PNG), "avatars")
    fields = {**grant["fields"], **extra}

    response = post_form(grant["url"], fields, PNG, "me.png", "image/png")

    if live.store.kind == "rgw" and "x-amz-storage-class" in extra:
        # RGW 16.2 knows no STANDARD_IA placement and says so before it looks at the policy.
        assert_refused(live, response, 400, {"InvalidArgument"}, snapshot, grant["key"])
    else:
        assert_refused(live, response, 403, {"AccessDenied"}, snapshot, grant["key"])


# SeaweedFS 4.48 checks coverage for x-amz-* fields and the ones it knows (acl, key, ...), but stores an
# uncovered Content-Disposition, Cache-Control, Content-Encoding, Content-Language or Expires, and an
# unknown field, where AWS S3 answers "Extra input fields"; the verifier catches the headers it stored
# (tests/e2e/test_verification.py). Ceph RGW 16.2 refuses them all, as AWS does.
@pytest.mark.parametrize("extra", [
    pytest.param({"Content-Disposition": "inline; filename=page.html"}, id="content_disposition"),
    pytest.param({"Cache-Control": "public, max-age=31536000"}, id="cache_control"),
    pytest.param({"Content-Encoding": "gzip"}, id="content_encoding"),
    pytest.param({"foo": "bar"}, id="unknown_field"),
])
def test_uncovered_content_fields_are_refused_by_rgw_and_stored_by_seaweedfs(
        live: Live, snapshot: dict[str, str], extra: dict[str, str]) -> None:
    clip = b"\x00\x00\x00\x18ftypisom" + os.urandom(2000)
    grant = ask(live.url, "clip.mp4", "video/mp4", len(clip), "videos")  # a rule that signs none of them

    response = post_form(grant["url"], {**grant["fields"], **extra}, clip, "clip.mp4", "video/mp4")

    if live.store.kind == "rgw":
        assert_refused(live, response, 403, {"AccessDenied"}, snapshot, grant["key"])
    else:
        assert response.status_code == 201, response.text
        assert stored(live, grant["key"]) == clip


def test_changed_acl_is_refused(live: Live, snapshot: dict[str, str]) -> None:
    """A signed acl changed is refused by both stores. A form that signs no acl: RGW refuses an added one (as
    AWS does); SeaweedFS 4.48 takes it, so rules meant for SeaweedFS should sign an acl."""
    grant = ask(live.url, "me.png", "image/png", len(PNG), "avatars")
    fields = {**grant["fields"], "acl": "public-read"}

    response = post_form(grant["url"], fields, PNG, "me.png", "image/png")

    if "acl" in grant["fields"] or live.store.kind == "rgw":
        assert_refused(live, response, 403, {"AccessDenied"}, snapshot, grant["key"])
    else:
        assert response.status_code == 201, response.text


def test_an_acl_added_to_a_form_that_signs_none(live: Live, snapshot: dict[str, str]) -> None:
    """A form signed without an acl condition (boto3's, not the broker's): RGW refuses an added acl, as AWS
    does; SeaweedFS 4.48 takes it. A rule with `acl:` signs one, which both stores then hold to."""
    key = f"uploads/acl-check/{os.urandom(8).hex()}.png"
    form = live.s3.generate_presigned_post(live.bucket, key, Conditions=[["content-length-range", 1, 1000]],
                                           ExpiresIn=60)

    response = post_form(form["url"], {**form["fields"], "acl": "public-read"}, PNG, "me.png", "image/png")

    if live.store.kind == "rgw":
        assert_refused(live, response, 403, {"AccessDenied"}, snapshot, key)
    else:
        assert response.status_code == 204, response.text
        assert stored(live, key) == PNG
        live.s3.delete_object(Bucket=live.bucket, Key=key)


# --------------------------------------------------------------------------- signature


def _forged(signature: str) -> str:
    return hmac.new(b"not the store's secret", signature.encode(), hashlib.sha256).hexdigest()


@pytest.mark.parametrize("tamper", [
    pytest.param(_forged, id="forged_signature"),
    pytest.param(lambda s: s[:-8], id="truncated_signature"),
    pytest.param(lambda s: "", id="empty_signature"),
])
def test_bad_signature_is_refused(live: Live, snapshot: dict[str, str],
                                  tamper: Callable[[str], str]) -> None:
    grant = ask(live.url, "me.png", "image/png", len(PNG), "avatars")
    fields = {**grant["fields"], "x-amz-signature": tamper(grant["fields"]["x-amz-signature"])}

    response = post_form(grant["url"], fields, PNG, "me.png", "image/png")

    assert_refused(live, response, 403, {"SignatureDoesNotMatch", "AccessDenied"}, snapshot, grant["key"])


def test_policy_rewritten_without_resigning_is_refused(live: Live, snapshot: dict[str, str]) -> None:
    grant = ask(live.url, "me.png", "image/png", len(PNG), "avatars")
    policy = json.loads(base64.b64decode(grant["fields"]["policy"]))
    policy["conditions"] = [c for c in policy["conditions"]
                            if not (isinstance(c, list) and c[0] == "content-length-range")]
    fields = {**grant["fields"], "policy": base64.b64encode(json.dumps(policy).encode()).decode()}

    response = post_form(grant["url"], fields, PNG, "me.png", "image/png")

    assert_refused(live, response, 403, {"SignatureDoesNotMatch", "AccessDenied"}, snapshot, grant["key"])


# --------------------------------------------------------------------------- expiry


@pytest.fixture(scope="module")
def short_lived_broker(live: Live, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A second broker on the same store whose avatars forms expire after 1 second; yields its URL."""
    from broker.adapters.wsgi import ServerThread, WsgiApp
    from broker.service import build
    from broker.config import Settings

    work = tmp_path_factory.mktemp("short-lived")
    rules_path = work / "rules.yaml"
    doc = write_rules(rules_path, [])
    for rule in doc["clients"]["web-app"]["rules"]:
        rule["expires_in"] = 1
    rules_path.write_text(yaml.safe_dump(doc, sort_keys=False))
    settings = Settings(rules=str(rules_path), audit_file=str(work / "audit.jsonl"),
                        s3_endpoint_url=live.store.endpoint_url, s3_addressing_style="path")
    server = ServerThread(WsgiApp(build(settings, s3_client=live.s3, audit_stream=None)))
    try:
        yield server.url
    finally:
        server.close()


def test_expired_policy_is_refused(live: Live, short_lived_broker: str, snapshot: dict[str, str]) -> None:
    grant = ask(short_lived_broker, "me.png", "image/png", len(PNG), "avatars")
    expires = calendar.timegm(time.strptime(grant["expires_at"], "%Y-%m-%dT%H:%M:%SZ"))
    # The policy's expiration has one-second resolution: wait until it is surely in the past.
    time.sleep(max(0.0, expires - time.time() + 1.2))

    response = post_form(grant["url"], grant["fields"], PNG, "me.png", "image/png")

    assert_refused(live, response, 403, {"AccessDenied"}, snapshot, grant["key"])
    assert "expire" in response.text.lower()


# --------------------------------------------------------------------------- replay


def test_fields_for_one_profile_refuse_another_file_type(live: Live, snapshot: dict[str, str]) -> None:
    grant = ask(live.url, "me.png", "image/png", len(PNG), "avatars")
    pdf = b"%PDF-1.7\n" + os.urandom(200)
    fields = {**grant["fields"], "Content-Type": "application/pdf"}

    response = post_form(grant["url"], fields, pdf, "invoice.pdf", "application/pdf")

    assert_refused(live, response, 403, {"AccessDenied"}, snapshot, grant["key"])


def test_another_file_type_in_the_file_part_is_stored_only_as_the_signed_type(live: Live) -> None:
    """The file part's own headers cannot change what was granted: the key and type are the signed ones."""
    grant = ask(live.url, "me.png", "image/png", len(PNG), "avatars")
    html = b"<html><script>alert(1)</script></html>"

    response = post_form(grant["url"], grant["fields"], html, "page.html", "text/html")

    assert response.status_code == 201, response.text
    head = live.s3.head_object(Bucket=live.bucket, Key=grant["key"])
    assert (grant["key"].endswith(".png"), head["ContentType"]) == (True, "image/png")
    assert stored(live, grant["key"]) == html


def test_fields_of_one_client_do_not_open_another_clients_profile(live: Live,
                                                                   snapshot: dict[str, str]) -> None:
    web = ask(live.url, "doc.pdf", "application/pdf", 300, "documents")
    acme = ask(live.url, "inv.pdf", "application/pdf", 300, "invoices", api_key=ACME_KEY)
    # web-app's signature over partner-acme's key: the policy still pins web-app's key.
    fields = {**web["fields"], "key": acme["key"]}

    response = post_form(web["url"], fields, b"%PDF-1.7\n", "inv.pdf", "application/pdf")

    assert_refused(live, response, 403, {"AccessDenied"}, snapshot, web["key"], acme["key"])


# --------------------------------------------------------------------------- reuse


def test_keys_are_unique_per_grant_and_reusing_fields_rewrites_only_their_own_key(live: Live) -> None:
    first = ask(live.url, "same.png", "image/png", len(PNG), "avatars")
    second = ask(live.url, "same.png", "image/png", len(PNG), "avatars")
    assert first["key"] != second["key"]
    assert post_form(second["url"], second["fields"], PNG, "same.png", "image/png").status_code == 201
    assert post_form(first["url"], first["fields"], PNG, "same.png", "image/png").status_code == 201
    before = etags(live)
    replacement = b"\x89PNG again " + os.urandom(32)

    response = post_form(first["url"], first["fields"], replacement, "same.png", "image/png")

    # A POST policy cannot make a form single-use: within its expiry the same fields write
    # the same key again. They can never write any other key.
    assert response.status_code == 201, response.text
    after = etags(live)
    changed = {k for k in after if before.get(k) != after[k]}
    assert (changed, set(after) - set(before)) == ({first["key"]}, set())
    assert stored(live, first["key"]) == replacement
    assert stored(live, second["key"]) == PNG


# --------------------------------------------------------------------------- headers a rule sets


def test_the_headers_a_rule_sets_are_stored_by_seaweedfs_and_dropped_by_rgw(live: Live) -> None:
    """avatars signs Content-Disposition and Cache-Control into its forms. SeaweedFS stores both; Ceph RGW
    16.2 takes the form and drops both (on a POST only), so on RGW the verifier rejects every upload of such a
    rule (header_not_allowed): rules for RGW must not set them (docs/LOCAL.md, the store matrix)."""
    grant = ask(live.url, "me.png", "image/png", len(PNG), "avatars")
    assert {"Content-Disposition", "Cache-Control"} <= set(grant["fields"])

    response = post_form(grant["url"], grant["fields"], PNG, "me.png", "image/png")

    assert response.status_code == 201, response.text
    head = live.s3.head_object(Bucket=live.bucket, Key=grant["key"])
    kept = (head.get("ContentDisposition"), head.get("CacheControl"))
    if live.store.kind == "rgw":
        assert kept == (None, None)
    else:
        assert kept == (grant["fields"]["Content-Disposition"], grant["fields"]["Cache-Control"])
