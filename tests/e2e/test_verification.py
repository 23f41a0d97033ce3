"""Each attack on what lands, replayed against SeaweedFS and Ceph RGW with their events wired to the verifier
(as make run does: SeaweedFS's webhook to ``/events/seaweedfs``, RGW's bucket notifications to ``/events/s3``).

The broker signs correctly in every case below; the store then holds something the rules do
not allow: bytes that are not the declared type, headers nobody signed, a multipart object
whose part was swapped after the broker checked the sizes. Within seconds of the store's
event, the object is no longer at its granted key, it sits in quarantine, and a ``rejected``
verification line names the failed check. Legitimate uploads through every protocol are
verified and tagged.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from typing import Any

import requests

from tests.conftest import ROOT
from tests.protocols import fu
from tests.protocols.conftest import call
from tests.stack import Verifying
from tests.store_suite import live, store, verifying  # noqa: F401 - the store suite: SeaweedFS and Ceph RGW
from tests.test_sniff import png

MiB = 1024 * 1024
MP4_HEAD = b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2"


def mp4(size: int) -> bytes:
    return (MP4_HEAD + os.urandom(size))[:size]


def post_form(stack: Verifying, request: dict[str, Any], body: bytes, *, extra: dict[str, str] | None = None) -> str:
    """Ask the broker for a form, post ``body`` with it (plus ``extra`` fields nobody signed); the key."""
    grant = call(stack.broker, "POST", "/uploads", request)
    assert grant.status == 200, grant
    fields = {**grant.body["fields"], **(extra or {})}
    stored = requests.post(grant.body["url"], data=fields, files={"file": ("f", body, request["content_type"])},
                           timeout=30)
    assert stored.status_code in (200, 201, 204), stored.text
    return str(grant.body["key"])


def assert_quarantined(stack: Verifying, key: str, check: str) -> dict[str, Any]:
    line = stack.wait_for_verdict(key)
    assert line["verdict"] == "rejected" and line["action"] == "quarantined", line
    assert check in [c["check"] for c in line["checks"]], line
    assert not stack.settled(key), "a rejected object stayed at its granted key"
    held = stack.s3.head_object(Bucket=stack.bucket, Key=f"quarantine/{key}")
    assert held["ContentDisposition"] == "attachment"
    tags = {t["Key"]: t["Value"] for t in stack.s3.get_object_tagging(Bucket=stack.bucket,
                                                                       Key=f"quarantine/{key}").get("TagSet", [])}
    assert tags["broker-verdict"] == "rejected" and tags["broker-check"] == line["check"]
    return line


def assert_verified(stack: Verifying, key: str) -> dict[str, Any]:
    line = stack.wait_for_verdict(key)
    assert line["verdict"] == "verified" and line["action"] == "tagged", line
    assert stack.settled(key)
    tags = stack.s3.get_object_tagging(Bucket=stack.bucket, Key=key).get("TagSet", [])  # RGW: no TagSet if none
    assert {"Key": "broker-verdict", "Value": "verified"} in tags
    answer = call(stack.broker, "GET", "/uploads/verdict", query={"key": key})
    assert answer.body["status"] == "verified"
    return line


# --------------------------------------------------------------------------- native POST


def test_a_real_png_is_verified(verifying: Verifying) -> None:
    data = png()
    key = post_form(verifying, {"filename": "me.png", "content_type": "image/png", "size": len(data)}, data)
    line = assert_verified(verifying, key)
    assert line["sniffed"] == "image/png" and line["source"] == verifying.events_source


def test_html_posing_as_a_png_is_quarantined(verifying: Verifying) -> None:
    page = b"<html><body><script>fetch('/steal?c='+document.cookie)</script></body></html>"
    key = post_form(verifying, {"filename": "me.png", "content_type": "image/png", "size": len(page)}, page)
    line = assert_quarantined(verifying, key, "active_content")
    assert line["reason"].startswith("the bytes are HTML, not image/png")
    answer = call(verifying.broker, "GET", "/uploads/verdict", query={"key": key})
    assert answer.body["message"] == "rejected: the bytes are HTML, not image/png"


def test_an_svg_with_a_script_through_a_wildcard_rule_is_quarantined(verifying: Verifying) -> None:
    svg = b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>'
    key = post_form(verifying, {"filename": "a.png", "content_type": "image/png", "size": len(svg)}, svg)
    assert_quarantined(verifying, key, "active_content")


def test_headers_the_store_took_although_nobody_signed_them_are_caught(verifying: Verifying) -> None:
    """SeaweedFS stores uncovered Content-Disposition and Cache-Control fields of a POST (AWS refuses them);
    Ceph RGW refuses the form, as AWS does."""
    data = mp4(2000)
    request = {"filename": "clip.mp4", "content_type": "video/mp4", "size": len(data), "profile": "videos"}
    extra = {"Content-Disposition": "inline; filename=page.html", "Cache-Control": "public"}
    if verifying.store.kind == "rgw":
        grant = call(verifying.broker, "POST", "/uploads", request)
        refused = requests.post(grant.body["url"], data={**grant.body["fields"], **extra},
                                files={"file": ("f", data, "video/mp4")}, timeout=30)
        assert refused.status_code == 403 and "Policy missing condition" in refused.text, refused.text
        assert not verifying.exists(grant.body["key"]) and verifying.verifications(grant.body["key"]) == []
        return
    key = post_form(verifying, request, data, extra=extra)
    line = assert_quarantined(verifying, key, "header_not_allowed")  # the store took the form, and the fields
    assert {c["actual"] for c in line["checks"]} >= {"inline; filename=page.html", "public"}


# --------------------------------------------------------------------------- Fine Uploader, chunked


def fine_uploader(stack: Verifying) -> fu.FineUploaderClient:
    client = fu.FineUploaderClient(stack.broker, stack.store.endpoint_url)
    client.key()
    return client


def initiate(client: fu.FineUploaderClient, unsigned: dict[str, str] | None = None) -> str:
    """Fine Uploader's initiate, with the file's type signed as it sends it (unless a test sends its own, unsigned)."""
    extra = fu.initiate_headers(acl="private", filename="clip.mp4")
    if not unsigned:
        extra["Content-Type"] = "video/mp4"  # without it SeaweedFS guesses the type from the key, RGW does not
    started = client.send("POST", "uploads=", extra=extra, unsigned=unsigned)
    assert started.status_code == 200, started.text
    return started.text.split("<UploadId>")[1].split("</UploadId>")[0]


def put_part(client: fu.FineUploaderClient, upload_id: str, number: int, data: bytes) -> str:
    put = client.send("PUT", f"partNumber={number}&uploadId={upload_id}", data)
    assert put.status_code == 200, put.text
    return str(put.headers["ETag"])


def complete_xml(etags: list[str]) -> bytes:
    parts = "".join(f"<Part><PartNumber>{n}</PartNumber><ETag>{e}</ETag></Part>" for n, e in enumerate(etags, 1))
    return f"<CompleteMultipartUpload>{parts}</CompleteMultipartUpload>".encode()


def test_fine_uploader_chunked_within_the_rule_is_verified(verifying: Verifying) -> None:
    client = fine_uploader(verifying)
    upload_id = initiate(client)
    etags = [put_part(client, upload_id, 1, mp4(5 * MiB)), put_part(client, upload_id, 2, os.urandom(MiB))]
    done = client.send("POST", f"uploadId={upload_id}", complete_xml(etags))
    assert done.status_code == 200, done.text
    assert_verified(verifying, client.grant["key"])


def test_a_part_swapped_after_the_broker_checked_the_sizes_is_quarantined(verifying: Verifying) -> None:
    """The completion's signature covers only a hash of its body, so the body can name a part that does not
    exist yet: the broker sees 5 + 1 MiB when it signs, the store completes 5 + 2 MiB (the rule allows 6)."""
    client = fine_uploader(verifying)
    upload_id = initiate(client)
    first = mp4(5 * MiB)
    etag1 = put_part(client, upload_id, 1, first)
    put_part(client, upload_id, 2, os.urandom(MiB))
    swap = os.urandom(2 * MiB)
    body = complete_xml([etag1, f'"{hashlib.md5(swap).hexdigest()}"'])  # the swap's ETag, known in advance
    completion = client.prepare("POST", f"uploadId={upload_id}", body)  # the broker lists 5 + 1 MiB: signs
    assert isinstance(completion, dict), completion
    put_part(client, upload_id, 2, swap)  # after the broker looked
    done = requests.request(**completion, timeout=30)  # the signature given before still works
    assert done.status_code == 200, done.text
    line = assert_quarantined(verifying, client.grant["key"], "too_large")
    assert line["size"] == 7 * MiB


def test_unsigned_headers_on_a_signed_multipart_initiate_are_caught(verifying: Verifying) -> None:
    """The broker signs the initiate; the client adds Content-Type and Content-Disposition nobody signed,
    and the store applies them: an HTML page, served inline, under a video key."""
    client = fine_uploader(verifying)
    upload_id = initiate(client, unsigned={"Content-Type": "text/html", "Content-Disposition": "inline"})
    page = b"<html><script>alert(document.domain)</script>" + b" " * 2000 + b"</html>"
    etag = put_part(client, upload_id, 1, page)
    assert client.send("POST", f"uploadId={upload_id}", complete_xml([etag])).status_code == 200
    line = assert_quarantined(verifying, client.grant["key"], "content_type_not_allowed")
    checks = {c["check"] for c in line["checks"]}
    assert {"active_content", "header_not_allowed"} <= checks, line


# --------------------------------------------------------------------------- Uppy (Companion)


def test_uppy_single_post_and_multipart_are_verified(verifying: Verifying) -> None:
    data = png()
    params = call(verifying.broker, "GET", "/s3/params", query={"filename": "me.png", "type": "image/png"})
    assert params.status == 200, params
    posted = requests.post(params.body["url"], data=params.body["fields"],
                           files={"file": ("me.png", data, "image/png")}, timeout=30)
    assert posted.status_code in (200, 201, 204), posted.text
    assert_verified(verifying, params.body["fields"]["key"])

    started = call(verifying.broker, "POST", "/s3/multipart", {"filename": "clip.mp4", "type": "video/mp4",
                                                                 "metadata": {"profile": "videos"}})
    assert started.status == 200, started
    key, upload_id = started.body["key"], started.body["uploadId"]
    parts = []
    for number, body in enumerate([mp4(5 * MiB), os.urandom(MiB)], 1):
        signed = call(verifying.broker, "GET", f"/s3/multipart/{upload_id}/{number}", query={"key": key})
        put = requests.put(signed.body["url"], data=body, timeout=30)
        assert put.status_code == 200, put.text
        parts.append({"PartNumber": number, "ETag": put.headers["ETag"]})
    done = call(verifying.broker, "POST", f"/s3/multipart/{upload_id}/complete", {"parts": parts}, query={"key": key})
    assert done.status == 200, done
    assert_verified(verifying, key)


# --------------------------------------------------------------------------- events as stores deliver them


def event(key: str) -> bytes:
    return json.dumps({"event_type": "create", "key": f"/buckets/broker-uploads/{key}",
                       "message": {"new_entry": {"name": key.rsplit("/", 1)[-1]}}}).encode()


def s3_event(key: str) -> bytes:
    """An S3 event notification record as Ceph RGW posts it (the key as stored, not URL-encoded)."""
    return json.dumps({"Records": [{"eventVersion": "2.2", "eventSource": "ceph:s3", "eventName": "ObjectCreated:Post",
                                    "s3": {"bucket": {"name": "broker-uploads"}, "object": {"key": key}}}]}).encode()


def deliver(stack: Verifying, key: str) -> Any:
    """The event of ``key`` again, as the stack's store sends it (SeaweedFS: a bearer token; RGW: ?token=)."""
    if stack.events_path == "/events/s3":
        return requests.post(f"{stack.url}/events/s3?token={'e' * 40}", data=s3_event(key), timeout=30,
                             headers={"content-type": "application/json"})
    return requests.post(f"{stack.url}/events/seaweedfs", data=event(key), timeout=30,
                         headers={"authorization": "Bearer " + "e" * 40, "content-type": "application/json"})


def test_duplicate_and_late_events_are_judged_once(verifying: Verifying) -> None:
    data = png()
    key = post_form(verifying, {"filename": "me.png", "content_type": "image/png", "size": len(data)}, data)
    assert_verified(verifying, key)
    for _ in range(3):  # at least once: the same event again, later
        assert deliver(verifying, key).json()["status"] == "skipped"
    assert len(verifying.verifications(key)) == 1


def test_an_event_for_an_object_deleted_before_it_arrives_is_harmless(verifying: Verifying) -> None:
    key = f"uploads/web-app/avatars/2026-11-29/{'9' * 32}.png"
    answer = deliver(verifying, key)
    assert answer.status_code == 200 and answer.json()["status"] == "skipped" and "gone" in answer.json()["note"]
    assert verifying.verifications(key) == []


# --------------------------------------------------------------------------- broker verify (the CLI)


def broker_cli(stack: Verifying, *args: str) -> subprocess.CompletedProcess[str]:
    creds = json.loads((stack.store.config.data_dir / "credentials.json").read_text())
    env = {**os.environ, "AWS_ENDPOINT_URL_S3": stack.store.endpoint_url, "AWS_ACCESS_KEY_ID": creds["access_key"],
           "AWS_SECRET_ACCESS_KEY": creds["secret_key"], "AWS_REGION": "us-east-1",
           "BROKER_RULES": str(stack.rules_path), "BROKER_S3_ADDRESSING_STYLE": "path"}
    env.pop("AWS_SESSION_TOKEN", None)
    return subprocess.run([sys.executable, "-m", "broker", "verify", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_broker_verify_judges_objects_the_events_never_reached(verifying: Verifying) -> None:
    """Objects written straight with the store's credentials under partner-acme's prefix, where the stack's
    store sends no events (as for a bucket that predates the verifier, or events that were lost)."""
    prefix = "partners/partner-acme/invoices/2026-11-29/"
    good, evil = f"{prefix}{'a' * 32}.pdf", f"{prefix}{'b' * 32}.pdf"
    for key, body in ((good, b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog >>\nendobj\n"),
                      (evil, b"<html><script>alert(1)</script></html>")):
        verifying.s3.put_object(Bucket=verifying.bucket, Key=key, Body=body, ContentType="application/pdf")
    time.sleep(0.5)
    assert verifying.verifications(evil) == []  # no event came
    dry = broker_cli(verifying, "--dry-run", "--json", f"s3://{verifying.bucket}/{evil}")
    one = json.loads(dry.stdout)
    assert dry.returncode == 1 and one["status"] == "rejected" and one["checks"][0]["check"] == "active_content", dry
    assert verifying.exists(evil) and verifying.verifications(evil) == []  # a dry run changes and audits nothing
    swept = broker_cli(verifying, "--prefix", f"s3://{verifying.bucket}/partners/partner-acme/")
    assert swept.returncode == 1, swept.stderr
    assert f"rejected  s3://{verifying.bucket}/{evil}" in swept.stdout
    assert f"verified  s3://{verifying.bucket}/{good}" in swept.stdout
    assert not verifying.exists(evil) and verifying.exists(f"quarantine/{evil}")
    assert '"event":"verification"' in swept.stderr  # the audit lines, apart from the verdicts
    again = broker_cli(verifying, f"s3://{verifying.bucket}/{good}")
    assert again.returncode == 0 and "already verified" in again.stdout  # judged by the sweep: its verdict stands


def test_broker_verify_says_what_is_wrong_with_its_arguments(verifying: Verifying) -> None:
    both = broker_cli(verifying, f"s3://{verifying.bucket}/x", "--all")
    assert both.returncode == 2 and "give one s3://bucket/key" in both.stderr
    bad = broker_cli(verifying, "--prefix", "uploads/")
    assert bad.returncode == 2 and "is not s3://bucket/prefix/" in bad.stderr


# --------------------------------------------------------------------------- a declared SHA-256, bound in the form


def test_a_declared_sha256_is_checked_by_the_store(verifying: Verifying) -> None:
    """SeaweedFS verifies x-amz-checksum-sha256 on a POST: other bytes than declared are refused (BadDigest).
    Ceph RGW 16.2 neither checks nor keeps it: other bytes are stored, and the verifier, with no checksum of
    the store's to compare, passes them (``broker probe-store`` says "enforced by nothing" there)."""
    data = png()
    digest = hashlib.sha256(data).hexdigest()
    grant = call(verifying.broker, "POST", "/uploads", {"filename": "me.png", "content_type": "image/png",
                                                          "size": len(data), "sha256": digest})
    assert grant.status == 200, grant
    fields = grant.body["fields"]
    other = requests.post(grant.body["url"], data=fields, files={"file": ("me.png", data[:-1] + b"\0", "image/png")},
                          timeout=30)
    if verifying.store.kind == "rgw":
        assert other.status_code == 201, other.text
        stored = verifying.s3.head_object(Bucket=verifying.bucket, Key=grant.body["key"], ChecksumMode="ENABLED")
        assert "ChecksumSHA256" not in stored and stored["Metadata"]["declared-sha256"] == fields["x-amz-checksum-sha256"]
        assert_verified(verifying, grant.body["key"])
        return
    assert other.status_code == 400 and "BadDigest" in other.text
    assert not verifying.exists(grant.body["key"])
    same = requests.post(grant.body["url"], data=fields, files={"file": ("me.png", data, "image/png")}, timeout=30)
    assert same.status_code in (200, 201, 204), same.text
    stored = verifying.s3.head_object(Bucket=verifying.bucket, Key=grant.body["key"], ChecksumMode="ENABLED")
    assert stored["ChecksumSHA256"] == fields["x-amz-checksum-sha256"]
    assert stored["Metadata"]["declared-sha256"] == fields["x-amz-checksum-sha256"]
    assert_verified(verifying, grant.body["key"])  # the verifier compared the store's checksum with it
