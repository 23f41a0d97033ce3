"""The local store (broker.dev.store) enforces presigned POST policies as S3 does, and starts safely."""
from __future__ import annotations

import dataclasses
import hashlib
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests
from botocore.exceptions import ClientError

from broker.dev.store import (
    ENV_BASE_PORT,
    ENV_S3_PORT,
    Store,
    StoreConfig,
    StoreError,
    pick_free_ports,
    upload_cors_rules,
)

ORIGIN = "http://127.0.0.1:5173"


def post_form(url: str, fields: dict[str, str], data: bytes, filename: str = "upload.bin",
              origin: str | None = None) -> requests.Response:
    """POST like a browser form: every field as a plain form field, the file last."""
    parts: list[tuple[str, tuple[str | None, Any] | tuple[str, bytes, str]]] = [
        (name, (None, value)) for name, value in fields.items()
    ]
    parts.append(("file", (filename, data, "application/octet-stream")))
    headers = {"Origin": origin} if origin else {}
    return requests.post(url, files=parts, headers=headers, timeout=10)


def error_code(response: requests.Response) -> str:
    """The <Code> of an S3 XML error body."""
    text = response.text
    start = text.find("<Code>")
    return text[start + 6 : text.find("</Code>")] if start >= 0 else ""


def object_exists(client: Any, bucket: str, key: str) -> bool:
    try:
        client.head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if exc.response["ResponseMetadata"]["HTTPStatusCode"] == 404:
            return False
        raise
    return True


def presign(client: Any, bucket: str, key: str, max_size: int = 1024, **kwargs: Any) -> dict[str, Any]:
    conditions = [["content-length-range", 0, max_size], *kwargs.pop("Conditions", [])]
    return client.generate_presigned_post(bucket, key, Conditions=conditions, ExpiresIn=300, **kwargs)


def test_upload_with_correct_fields_is_stored(store: Store, make_bucket: Callable[..., str]) -> None:
    client = store.s3_client()
    bucket = make_bucket()
    body = b"hello from a browser form\n" * 10
    post = presign(client, bucket, "uploads/ok.txt")
    assert "x-amz-signature" in post["fields"], "the client must sign with SigV4"
    assert post["url"] == store.bucket_url(bucket)

    response = post_form(post["url"], post["fields"], body)

    assert response.status_code == 204, response.text
    assert response.headers["ETag"] == f'"{hashlib.md5(body).hexdigest()}"'
    assert client.get_object(Bucket=bucket, Key="uploads/ok.txt")["Body"].read() == body


def test_success_action_status_201_returns_xml(store: Store, make_bucket: Callable[..., str]) -> None:
    client = store.s3_client()
    bucket = make_bucket()
    post = presign(client, bucket, "uploads/201.txt", Fields={"success_action_status": "201"},
                   Conditions=[{"success_action_status": "201"}])

    response = post_form(post["url"], post["fields"], b"abc")

    assert response.status_code == 201, response.text
    assert "<Key>uploads/201.txt</Key>" in response.text
    assert response.headers["ETag"] == f'"{hashlib.md5(b"abc").hexdigest()}"'


def test_file_larger_than_content_length_range_is_refused(store: Store, make_bucket: Callable[..., str]) -> None:
    client = store.s3_client()
    bucket = make_bucket()
    post = presign(client, bucket, "uploads/big.bin", max_size=100)

    response = post_form(post["url"], post["fields"], b"x" * 101)

    assert response.status_code == 400, response.text
    assert error_code(response) == "EntityTooLarge"
    assert not object_exists(client, bucket, "uploads/big.bin")
    assert client.list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0


def test_modified_key_is_refused(store: Store, make_bucket: Callable[..., str]) -> None:
    client = store.s3_client()
    bucket = make_bucket()
    post = presign(client, bucket, "uploads/granted.txt")
    fields = {**post["fields"], "key": "uploads/chosen-by-client.txt"}

    response = post_form(post["url"], fields, b"data")

    assert response.status_code == 403, response.text
    assert error_code(response) == "AccessDenied"
    assert client.list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0


def test_forged_signature_is_refused(store: Store, make_bucket: Callable[..., str]) -> None:
    client = store.s3_client()
    bucket = make_bucket()
    post = presign(client, bucket, "uploads/forged.txt")
    fields = {**post["fields"], "x-amz-signature": "0" * 64}

    response = post_form(post["url"], fields, b"data")

    assert response.status_code == 403, response.text
    assert error_code(response) == "SignatureDoesNotMatch"
    assert not object_exists(client, bucket, "uploads/forged.txt")


def test_policy_signed_with_another_secret_is_refused(store: Store, make_bucket: Callable[..., str]) -> None:
    bucket = make_bucket()
    config = dataclasses.replace(store.config, secret_key="not-the-secret")
    post = presign(Store(config).s3_client(), bucket, "uploads/other-secret.txt")

    response = post_form(post["url"], post["fields"], b"data")

    assert response.status_code == 403, response.text
    assert error_code(response) == "SignatureDoesNotMatch"


def test_field_not_covered_by_the_policy_is_refused(store: Store, make_bucket: Callable[..., str]) -> None:
    client = store.s3_client()
    bucket = make_bucket()
    post = presign(client, bucket, "uploads/extra.txt")
    fields = {**post["fields"], "x-amz-meta-owner": "mallory"}

    response = post_form(post["url"], fields, b"data")

    assert response.status_code == 403, response.text
    assert not object_exists(client, bucket, "uploads/extra.txt")


def test_expired_policy_is_refused(store: Store, make_bucket: Callable[..., str]) -> None:
    client = store.s3_client()
    bucket = make_bucket()
    post = client.generate_presigned_post(bucket, "uploads/late.txt", ExpiresIn=-60)

    response = post_form(post["url"], post["fields"], b"data")

    assert response.status_code == 403, response.text
    assert "expired" in response.text.lower()


def test_bucket_cors_rules_are_honoured(store: Store, make_bucket: Callable[..., str]) -> None:
    bucket = make_bucket(cors_rules=upload_cors_rules([ORIGIN]))
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"}

    allowed = requests.options(store.bucket_url(bucket) + "/", headers={"Origin": ORIGIN, **preflight}, timeout=10)
    other = requests.options(store.bucket_url(bucket) + "/", headers={"Origin": "http://evil.test", **preflight},
                             timeout=10)

    assert allowed.status_code == 200
    assert allowed.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert "POST" in allowed.headers["Access-Control-Allow-Methods"]
    exposed = {h.strip().lower() for h in allowed.headers["Access-Control-Expose-Headers"].split(",")}
    assert {"etag", "location"} <= exposed
    assert other.status_code == 403
    assert "Access-Control-Allow-Origin" not in other.headers

    post = presign(store.s3_client(), bucket, "uploads/cors.txt")
    upload = post_form(post["url"], post["fields"], b"cors", origin=ORIGIN)
    assert upload.status_code == 204
    assert upload.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert "etag" in upload.headers["Access-Control-Expose-Headers"].lower()


def test_ensure_bucket_is_idempotent(store: Store) -> None:
    client = store.s3_client()
    store.ensure_bucket("idempotent-bucket")
    store.ensure_bucket("idempotent-bucket", upload_cors_rules([ORIGIN]))
    store.ensure_bucket("idempotent-bucket")
    rules = client.get_bucket_cors(Bucket="idempotent-bucket")["CORSRules"]
    assert rules[0]["AllowedOrigins"] == [ORIGIN]


def test_invalid_bucket_name_says_why(store: Store) -> None:
    with pytest.raises(StoreError, match="bucket names are"):
        store.ensure_bucket("ab")


def test_second_store_on_the_same_s3_port_is_refused(store: Store, tmp_path: Path) -> None:
    _, base_port = pick_free_ports()
    second = Store(StoreConfig.generate(tmp_path, s3_port=store.config.s3_port, base_port=base_port))

    with pytest.raises(StoreError) as raised:
        second.start(timeout=5)

    message = str(raised.value)
    assert f"port {store.config.s3_port} (s3)" in message
    assert ENV_S3_PORT in message
    assert not second.running


def test_second_store_on_the_same_base_port_is_refused(store: Store, tmp_path: Path) -> None:
    s3_port, _ = pick_free_ports()
    second = Store(StoreConfig.generate(tmp_path, s3_port=s3_port, base_port=store.config.master_port))

    with pytest.raises(StoreError) as raised:
        second.start(timeout=5)

    message = str(raised.value)
    assert f"port {store.config.master_port} (master)" in message
    assert ENV_BASE_PORT in message


def test_process_that_exits_at_once_is_reported_with_its_log(tmp_path: Path) -> None:
    s3_port, base_port = pick_free_ports()
    broken = Store(StoreConfig.generate(tmp_path, s3_port=s3_port, base_port=base_port), weed_binary="/bin/false")

    with pytest.raises(StoreError, match="exited with code 1") as raised:
        broken.start(timeout=5)

    assert str(broken.log_path) in str(raised.value)
    assert not broken.running


def test_credentials_are_generated_once_and_kept_private(tmp_path: Path) -> None:
    first = StoreConfig.generate(tmp_path, s3_port=20001, base_port=20010)
    again = StoreConfig.generate(tmp_path, s3_port=20002, base_port=20020)

    assert (first.access_key, first.secret_key) == (again.access_key, again.secret_key)
    assert len(first.secret_key) >= 30
    assert stat.S_IMODE((tmp_path / "credentials.json").stat().st_mode) == 0o600
    assert StoreConfig.generate(tmp_path / "other").access_key != first.access_key


def test_ports_from_environment(tmp_path: Path) -> None:
    config = StoreConfig.from_env(tmp_path, {ENV_S3_PORT: "21000", ENV_BASE_PORT: "21100"})
    assert (config.s3_port, config.master_port, config.admin_port) == (21000, 21100, 21103)

    with pytest.raises(StoreError, match=ENV_S3_PORT):
        StoreConfig.from_env(tmp_path, {ENV_S3_PORT: "eighty"})
    with pytest.raises(StoreError, match="55534"):
        StoreConfig.generate(tmp_path, s3_port=60000)
    with pytest.raises(StoreError, match="used twice"):
        StoreConfig.generate(tmp_path, s3_port=21000, base_port=11000)  # master gRPC = 21000
