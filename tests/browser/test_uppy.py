"""Uppy 6 AwsS3 (Companion protocol) in headless Chromium against the broker and SeaweedFS (``live``).

The page is ``broker/web/uppy.html`` served by the broker, using the vendored, unchanged
bundle. Small files go in one presigned POST, a 6 MiB file as a real two-part multipart upload
(5 MiB + 1 MiB); refused files must show the broker's reason in Uppy and leave nothing stored.
"""
from __future__ import annotations

import os
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest

from tests.browser.files import sha256_of, upload_one
from tests.stack import Live

MiB = 1024 * 1024
PNG = b"\x89PNG\r\n\x1a\n" + os.urandom(2000)


def open_page(page: Any, live: Live, profile: str) -> None:
    page.goto(f"{live.url}/uppy.html", wait_until="load")
    page.wait_for_selector("body[data-ready=true]", timeout=10000)
    page.fill("#profile", profile)


def upload(page: Any, name: str, mime: str, *, data: bytes | None = None, size: int | None = None,
           timeout: float = 30000) -> tuple[dict[str, Any], str]:
    """Choose one file in Uppy's Dashboard, wait until it succeeds or fails; (result, SHA-256)."""
    return upload_one(page, ".uppy-Dashboard-input", "uppyResults", name, mime, data=data, size=size, head=PNG[:8],
                      timeout=timeout)


def pending_bytes(live: Live) -> int:
    """Bytes held in parts of multipart uploads neither completed nor aborted (Uppy keeps a failed
    upload for a retry; it has no parts when the broker refused to sign its first one)."""
    total = 0
    for upload in live.s3.list_multipart_uploads(Bucket=live.bucket).get("Uploads", []):
        parts = live.s3.list_parts(Bucket=live.bucket, Key=upload["Key"], UploadId=upload["UploadId"])
        total += sum(p["Size"] for p in parts.get("Parts", []))
    return total


def companion_audit(live: Live, since: int) -> list[dict[str, Any]]:
    return [r for r in live.audit_records()[since:] if r.get("protocol") == "companion"]


@pytest.mark.parametrize("profile, name, mime, size, multipart", [
    pytest.param("avatars", "me.png", "image/png", None, False, id="one_post"),
    pytest.param("videos", "clip.mp4", "video/mp4", 6 * MiB, True, id="multipart_5MiB_plus_1MiB"),
])
def test_allowed_upload_stores_exactly_the_bytes(page: Any, live: Live, profile: str, name: str, mime: str,
                                                 size: int | None, multipart: bool) -> None:
    seen = len(live.audit_records())
    open_page(page, live, profile)

    result, digest = upload(page, name, mime, data=PNG if size is None else None, size=size)

    assert result["state"] == "done", result
    events = [r for r in companion_audit(live, seen) if r["decision"] == "allowed"]
    key = events[0]["key"]
    assert key.startswith(f"uploads/web-app/{profile}/")
    stored = live.s3.get_object(Bucket=live.bucket, Key=key)
    assert sha256_of(stored["Body"]) == digest
    assert stored["ContentType"] == mime
    names = [r["event"] for r in events]
    if multipart:
        assert names[0] == "multipart_create" and names[-1] == "multipart_complete"
        assert names.count("multipart_sign_part") == 2
        assert events[-1]["size"] == size
    else:
        assert names == ["upload"]


def _tamper_part_key(route: Any) -> None:
    parts = urlsplit(route.request.url)
    query = parse_qs(parts.query)
    query["key"] = [query["key"][0].replace("uploads/web-app/videos/", "uploads/mobile/photos/")]
    route.continue_(url=f"{parts.scheme}://{parts.netloc}{parts.path}?{urlencode(query, doseq=True)}")


@pytest.mark.parametrize("profile, name, mime, size, tamper, reason", [
    pytest.param("avatars", "notes.txt", "text/plain", 100, None,
                 "content type text/plain is not allowed for avatars", id="denied_type"),
    pytest.param("avatars", "huge.png", "image/png", 5 * MiB + 1, None, "too large", id="oversized"),
    pytest.param("videos", "clip.mp4", "video/mp4", 6 * MiB, _tamper_part_key,
                 "is not a key the broker grants to web-app", id="tampered_part_signing"),
])
def test_refused_upload_shows_the_brokers_reason_and_stores_nothing(
        page: Any, live: Live, profile: str, name: str, mime: str, size: int, tamper: Any, reason: str) -> None:
    before = live.objects(), pending_bytes(live)
    seen = len(live.audit_records())
    open_page(page, live, profile)
    if tamper is not None:
        page.route("**/s3/multipart/*/1?*", tamper)

    result, _ = upload(page, name, mime, size=size)

    assert result["state"] == "failed"
    assert reason in result["reason"], result
    assert (live.objects(), pending_bytes(live)) == before
    denied = [r for r in companion_audit(live, seen) if r["decision"] == "denied"]
    assert denied and reason in denied[0]["reason"]
