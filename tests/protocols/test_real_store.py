"""Against SeaweedFS and Ceph RGW (which both check signatures and part sizes like S3): the size rule at completion.

A broker in process (rules with ``videos`` limited to 6 MiB) over the session's real store:
uploads of 5 MiB + 1 MiB complete and store exactly those bytes; 5 MiB + 2 MiB are refused at
completion, the upload is aborted and nothing is stored, through both Companion and Fine
Uploader's chunked signing (whose requests the store verifies against the broker's signatures,
path-style URL included).
"""
from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import audit_lines
from tests.protocols import fu
from tests.protocols.conftest import call, rules_with
from tests.protocols.fu import FineUploaderClient
from tests.store_suite import live, store, verifying  # noqa: F401 - the store suite: SeaweedFS and Ceph RGW

MiB = 1024 * 1024
BUCKET = "broker-uploads"
VIDEO = {"filename": "clip.mp4", "content_type": "video/mp4", "size": 6 * MiB, "profile": "videos"}


@pytest.fixture(scope="module")
def store_broker(store: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Any, io.StringIO]]:
    """(broker, s3 client, audit stream): the broker's real clock, rules with videos up to 6 MiB."""
    from broker.service import build
    from broker.config import Settings

    rules = tmp_path_factory.mktemp("store-rules") / "rules.yaml"
    rules.write_text(rules_with({"videos": {"max_bytes": 6 * MiB}}))
    s3 = store.s3_client()
    store.ensure_bucket(BUCKET)
    stream = io.StringIO()
    broker = build(Settings(rules=str(rules), rules_reload_seconds=3600, s3_endpoint_url=store.endpoint_url,
                            s3_addressing_style="path", grant_secret="k" * 32), s3_client=s3, audit_stream=stream)
    yield broker, s3, stream


def state(s3: Any, key: str) -> tuple[int, int]:
    """(objects, pending multipart uploads) under key."""
    objects = s3.list_objects_v2(Bucket=BUCKET, Prefix=key).get("KeyCount", 0)
    pending = len(s3.list_multipart_uploads(Bucket=BUCKET, Prefix=key).get("Uploads", []))
    return objects, pending


# --------------------------------------------------------------------------- Companion


def companion_upload(broker: Any, sizes: list[int]) -> tuple[dict[str, Any], Any, bytes]:
    started = call(broker, "POST", "/s3/multipart", {"filename": "clip.mp4", "type": "video/mp4",
                                                     "metadata": {"profile": "videos"}})
    assert started.status == 200, started
    body = started.body
    data = os.urandom(sum(sizes))
    parts, offset = [], 0
    for number, size in enumerate(sizes, 1):
        signed = call(broker, "GET", f"/s3/multipart/{body['uploadId']}/{number}", query={"key": body["key"]})
        assert signed.status == 200, signed
        put = requests.put(signed.body["url"], data=data[offset:offset + size], timeout=30)
        assert put.status_code == 200, put.text
        parts.append({"PartNumber": number, "ETag": put.headers["ETag"]})
        offset += size
    done = call(broker, "POST", f"/s3/multipart/{body['uploadId']}/complete", {"parts": parts},
                query={"key": body["key"]})
    return body, done, data


def test_companion_multipart_within_the_rule_is_stored(store_broker: Any) -> None:
    broker, s3, _ = store_broker

    body, done, data = companion_upload(broker, [5 * MiB, 1 * MiB])

    assert done.status == 200, done
    assert done.body["location"].endswith(f"/{BUCKET}/{body['key']}")
    stored = s3.get_object(Bucket=BUCKET, Key=body["key"])
    assert stored["ContentType"] == "video/mp4"
    assert hashlib.sha256(stored["Body"].read()).digest() == hashlib.sha256(data).digest()


def test_companion_multipart_over_the_rule_is_aborted(store_broker: Any) -> None:
    broker, s3, stream = store_broker

    body, done, _ = companion_upload(broker, [5 * MiB, 2 * MiB])

    assert done.status == 413 and "too large: 7 MiB uploaded, the limit for videos is 6 MiB" in done.body["message"]
    assert state(s3, body["key"]) == (0, 0)
    assert audit_lines(stream)[-1]["check"] == "too_large"


def test_the_store_binds_an_upload_id_to_its_key(store_broker: Any) -> None:
    broker, s3, _ = store_broker
    first = call(broker, "POST", "/s3/multipart", {"filename": "a.mp4", "type": "video/mp4",
                                                   "metadata": {"profile": "videos"}}).body
    second = call(broker, "POST", "/s3/multipart", {"filename": "b.mp4", "type": "video/mp4",
                                                    "metadata": {"profile": "videos"}}).body
    signed = call(broker, "GET", f"/s3/multipart/{first['uploadId']}/1", query={"key": second["key"]})

    put = requests.put(signed.body["url"], data=b"x" * 1000, timeout=30)

    assert put.status_code == 404 and "NoSuchUpload" in put.text
    for upload in (first, second):
        call(broker, "DELETE", f"/s3/multipart/{upload['uploadId']}", query={"key": upload["key"]})


# --------------------------------------------------------------------------- Fine Uploader, chunked


def fine_uploader_chunked(broker: Any, store: Any, sizes: list[int]) -> tuple[FineUploaderClient, Any, bytes]:
    client = FineUploaderClient(broker, store.endpoint_url)
    client.key()
    started = client.send("POST", "uploads=", extra=fu.initiate_headers(acl="private", filename="clip.mp4"))
    assert started.status_code == 200, started.text
    upload_id = started.text.split("<UploadId>")[1].split("</UploadId>")[0]
    data = os.urandom(sum(sizes))
    parts, offset = [], 0
    for number, size in enumerate(sizes, 1):
        put = client.send("PUT", f"partNumber={number}&uploadId={upload_id}", data[offset:offset + size])
        assert put.status_code == 200, put.text
        parts.append(f"<Part><PartNumber>{number}</PartNumber><ETag>{put.headers['ETag']}</ETag></Part>")
        offset += size
    xml = f"<CompleteMultipartUpload>{''.join(parts)}</CompleteMultipartUpload>".encode()
    return client, client.send("POST", f"uploadId={upload_id}", xml), data


def test_fine_uploader_chunked_within_the_rule_is_stored(store_broker: Any, store: Any) -> None:
    broker, s3, _ = store_broker

    client, done, data = fine_uploader_chunked(broker, store, [5 * MiB, 1 * MiB])

    assert done.status_code == 200 and "<Key>" in done.text, done.text
    stored = s3.get_object(Bucket=BUCKET, Key=client.grant["key"])
    assert hashlib.sha256(stored["Body"].read()).digest() == hashlib.sha256(data).digest()


def test_fine_uploader_chunked_over_the_rule_is_refused_and_aborted(store_broker: Any, store: Any) -> None:
    broker, s3, stream = store_broker

    client, done, _ = fine_uploader_chunked(broker, store, [5 * MiB, 2 * MiB])

    assert done.status == 413 and "the upload was aborted and nothing is stored" in done.body["error"]
    assert state(s3, client.grant["key"]) == (0, 0)
    rec = audit_lines(stream)[-1]
    assert rec["event"] == "fineuploader_complete" and rec["size"] == 7 * MiB


def test_the_broker_signs_no_request_for_another_key(store_broker: Any, store: Any) -> None:
    broker, s3, _ = store_broker
    client = FineUploaderClient(broker, store.endpoint_url)
    client.key()
    granted = client.grant["key"]
    client.grant = {**client.grant, "key": granted.replace("videos", "avatars")}

    refused = client.send("POST", "uploads=", extra=fu.initiate_headers(acl="private", filename="clip.mp4"))

    assert refused.status == 403 and "is not the granted key" in refused.body["error"]
    assert Path(granted).name not in str(s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads", []))
