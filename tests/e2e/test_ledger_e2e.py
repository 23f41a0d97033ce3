"""The grant ledger on the real store (SeaweedFS, its events wired to the verifier, a SQLite ledger).

What the store enforces and what only the ledger catches: a declared size the store holds the
upload to, a form posted twice (the store takes both; the second object is quarantined as
``grant_reused``), and a grant's status over HTTP from issued to verified.
"""
from __future__ import annotations

import time
from typing import Any

import requests

from broker.ledger import VERIFIED
from tests.protocols.conftest import call
from tests.stack import Verifying
from tests.test_sniff import png

from tests.e2e.test_verification import assert_quarantined, assert_verified
from tests.store_suite import live, store, verifying  # noqa: F401 - the store suite: SeaweedFS and Ceph RGW


def grant(stack: Verifying, size: int) -> dict:
    answer = call(stack.broker, "POST", "/uploads",
                  {"filename": "me.png", "content_type": "image/png", "size": size, "profile": "avatars"})
    assert answer.status == 200, answer
    return dict(answer.body)


def post(body: dict, data: bytes) -> requests.Response:
    return requests.post(body["url"], data=body["fields"], files={"file": ("me.png", data, "image/png")}, timeout=30)


def status_of(stack: Verifying, grant_id: str) -> dict:
    answer = call(stack.broker, "GET", f"/uploads/{grant_id}")
    assert answer.status == 200, answer
    return dict(answer.body)


def test_the_store_holds_an_upload_to_its_declared_size(verifying: Verifying) -> None:
    data = png()
    body = grant(verifying, len(data))
    refused = post(body, data + b"\0")  # one byte more than declared
    assert refused.status_code == 400 and "EntityTooLarge" in refused.text, refused.text
    assert post(body, data).status_code in (200, 201, 204)
    assert_verified(verifying, body["key"])


def test_a_grant_status_goes_from_issued_to_verified(verifying: Verifying) -> None:
    data = png()
    body = grant(verifying, len(data))
    assert status_of(verifying, body["grant_id"])["status"] == "issued"
    assert post(body, data).status_code in (200, 201, 204)
    assert_verified(verifying, body["key"])
    got = status_of(verifying, body["grant_id"])
    assert (got["status"], got["size"], got["key"]) == ("verified", len(data), body["key"])


def test_a_form_posted_twice_is_caught_as_grant_reused(verifying: Verifying) -> None:
    first, second = png(), png()[:-12] + b"another file"[:12]
    assert len(first) == len(second) and first != second
    body = grant(verifying, len(first))
    assert post(body, first).status_code in (200, 201, 204)
    assert_verified(verifying, body["key"])
    assert post(body, second).status_code in (200, 201, 204)  # the store takes it: the form is still valid
    deadline = time.monotonic() + 20
    while len(verifying.verifications(body["key"])) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    lines = verifying.verifications(body["key"])
    assert len(lines) == 2, lines
    line = assert_quarantined(verifying, body["key"], "grant_reused")
    assert line["ledger"] == "reused" and line["grant_id"] == body["grant_id"]
    record = verifying.broker.ledger.get(body["grant_id"])
    assert record.status == VERIFIED and record.reused == 1 and record.size == len(first)


def test_with_versioning_the_first_verified_version_can_be_restored(store: Any, make_bucket: Any) -> None:
    """The remediation docs/LEDGER.md gives for a reused grant, tried on SeaweedFS: with bucket
    versioning on, the second object does not destroy the first, which can be copied back."""
    s3 = store.s3_client()
    bucket = make_bucket(prefix="versioned")
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    key = "uploads/web-app/avatars/2026-11-29/0123456789abcdef0123456789abcdef.png"
    first = s3.put_object(Bucket=bucket, Key=key, Body=b"the first, verified file")
    s3.put_object(Bucket=bucket, Key=key, Body=b"the same form posted again")
    versions = [v for v in s3.list_object_versions(Bucket=bucket, Prefix=key)["Versions"] if v["Key"] == key]
    assert len(versions) == 2 and first["VersionId"] in {v["VersionId"] for v in versions}
    s3.copy_object(Bucket=bucket, Key=key, CopySource={"Bucket": bucket, "Key": key, "VersionId": first["VersionId"]})
    assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == b"the first, verified file"
