"""Fine Uploader S3 5.16.2 (its UI, ``qq.s3.FineUploader``) configured as docs/FRONTENDS.md shows the page.

The whole page is the one in the docs: the vendored bundle and its default template, a session
from the app backend (make run's demo backend), and ``fineuploader-broker.js`` (served by the
broker) filling in Fine Uploader's documented S3 options. No other glue. Small and chunked
uploads store exactly the bytes; a denied type and an oversized file fail at once and Fine
Uploader's own file list shows the broker's reason; nothing is stored.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from tests.browser.conftest import TEST_FILES
from tests.browser.files import assert_stored_as_chosen, audit_of, sha256_of, upload_one
from tests.stack import Live

MiB = 1024 * 1024
PNG = b"\x89PNG\r\n\x1a\n" + os.urandom(2000)
TEMPLATE = (Path(__file__).resolve().parents[2] / "broker" / "static" / "vendor" / "fine-uploader" / "templates"
            / "default.html").read_text()

#: The page of docs/FRONTENDS.md ("Fine Uploader: the whole page"), with the test's hooks in callbacks.
PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>Fine Uploader</title><link rel="icon" href="data:,">
<link rel="stylesheet" href="/vendor/fine-uploader/fine-uploader-new.min.css">
<script src="/vendor/fine-uploader/s3.fine-uploader.min.js"></script>
<script src="/fineuploader-broker.js"></script>
</head><body>
{template}
<div id="uploader"></div>
<script>
(async () => {{
  const session = await (await fetch("/demo/session")).json();          // from your app backend
  const broker = await FineUploaderBroker.connect({{endpoint: location.origin, token: session.token,
                                                   profile: {profile!r}}});
  const uploader = new qq.s3.FineUploader(broker.options({{
    element: document.getElementById("uploader"),{extra}
    resume: {{enabled: true}},
    failedUploadTextDisplay: {{mode: "custom"}},
    callbacks: {{  // the test's hooks
      onComplete: (id, name, response) => {{
        if (response && response.success) results[id] = {{state: "done", key: uploader.getKey(id)}};
      }},
      onError: (id, name, reason) => {{ if (id != null) results[id] = {{state: "failed", reason}}; }},
    }},
  }}));
  broker.attach(uploader);
  window.results = {{}};
  window.uploader = uploader;
  document.body.dataset.ready = "true";
}})();
</script></body></html>"""


def open_page(page: Any, live: Live, profile: str, extra: str = "") -> None:
    TEST_FILES[f"/fu-{profile}.html"] = ("text/html; charset=utf-8",
                                         PAGE.format(template=TEMPLATE, profile=profile, extra=extra).encode())
    page.goto(f"{live.url}/fu-{profile}.html", wait_until="load")
    page.wait_for_selector("body[data-ready=true]", timeout=10000)


def upload(page: Any, name: str, mime: str, *, data: bytes | None = None, size: int | None = None,
           timeout: float = 30000) -> tuple[dict[str, Any], str]:
    return upload_one(page, "#uploader .qq-upload-button input[type=file]", "results", name, mime, data=data,
                      size=size, head=PNG[:8], timeout=timeout)


@pytest.mark.parametrize("profile, name, mime, size, parts", [
    pytest.param("avatars", "me.png", "image/png", None, 0, id="one_post"),
    pytest.param("videos", "clip.mp4", "video/mp4", 6 * MiB, 2, id="chunked_5MiB_plus_1MiB"),
])
def test_allowed_upload_stores_exactly_the_bytes(page: Any, demo: Live, errors: Any, profile: str, name: str,
                                                 mime: str, size: int | None, parts: int) -> None:
    seen = len(demo.audit_records())
    open_page(page, demo, profile)

    result, digest = upload(page, name, mime, data=PNG if size is None else None, size=size)

    assert result["state"] == "done", result
    assert_stored_as_chosen(demo, result["key"], profile, digest, mime)
    records = [r for r in audit_of(demo, "fineuploader", seen) if r["decision"] == "allowed"]
    events = [r["event"] for r in records]
    assert events[0] == "fineuploader_key" and events[-1] == "upload_success"
    assert events.count("fineuploader_upload_part") == parts
    assert all(r["session"] and r["user"] == "demo-user" for r in records)  # the page's session, no API key


def test_request_params_are_the_files_metadata_checked_by_the_rule(page: Any, demo: Live, errors: Any) -> None:
    open_page(page, demo, "documents", extra='\n    request: {params: {title: "Holiday"}},')

    result, _ = upload(page, "notes.txt", "text/plain", data=b"meeting notes\n" * 40)

    assert result["state"] == "done", result
    head = demo.s3.head_object(Bucket=demo.bucket, Key=result["key"])
    assert head["Metadata"] == {"title": "Holiday", "source": "web-app", "qqfilename": "notes.txt"}, head["Metadata"]


def test_request_params_the_rule_does_not_allow_fail_with_the_reason(page: Any, demo: Live, errors: Any) -> None:
    open_page(page, demo, "avatars", extra='\n    request: {params: {title: "Holiday"}},')

    result, _ = upload(page, "me.png", "image/png", data=PNG)

    assert result["state"] == "failed" and "metadata title may not be set for avatars" in result["reason"], result


@pytest.mark.parametrize("name, mime, size, reason", [
    pytest.param("notes.txt", "text/plain", 100, "content type text/plain is not allowed for avatars",
                 id="denied_type"),
    pytest.param("huge.png", "image/png", 5 * MiB + 1, "too large: 5.2 MB, the limit for avatars is 5 MiB",
                 id="oversized"),
])
def test_refused_upload_shows_the_brokers_reason_and_stores_nothing(
        page: Any, demo: Live, errors: Any, name: str, mime: str, size: int, reason: str) -> None:
    before = demo.objects()
    seen = len(demo.audit_records())
    open_page(page, demo, "avatars")

    result, _ = upload(page, name, mime, size=size)

    assert result["state"] == "failed" and reason in result["reason"], result
    shown = page.locator("#uploader .qq-upload-fail .qq-upload-status-text")
    shown.wait_for(timeout=10000)
    assert reason in shown.inner_text()  # what the person reads in Fine Uploader's list
    assert demo.objects() == before
    denied = [r for r in audit_of(demo, "fineuploader", seen) if r["decision"] == "denied"]
    assert denied and reason in denied[0]["reason"]


def _interrupt(page: Any, demo: Live, data: bytes) -> str:
    """Start a chunked upload of ``data`` and cut it after its first part; returns its key."""
    page.route(lambda url: "partNumber=2" in url, lambda route: route.abort())
    result, _ = upload(page, "clip.mp4", "video/mp4", data=data)
    assert result["state"] == "failed", result
    page.unroute_all()
    assert page.evaluate("uploader.getResumableFilesData().length") == 1  # Fine Uploader's resume record
    key = page.evaluate("uploader.getResumableFilesData()[0].key")
    assert demo.s3.list_multipart_uploads(Bucket=demo.bucket, Prefix=key).get("Uploads"), "no unfinished upload"
    return str(key)


def test_a_readded_file_resumes_under_its_original_grant(page: Any, demo: Live, errors: Any) -> None:
    data = b"\x00\x00\x00\x18ftypisom" + os.urandom(6 * MiB - 12)
    open_page(page, demo, "videos")
    key = _interrupt(page, demo, data)
    seen = len(demo.audit_records())

    open_page(page, demo, "videos")  # later: the page again, the same file added again
    result, digest = upload(page, "clip.mp4", "video/mp4", data=data)

    assert result == {"state": "done", "key": key}, result
    assert sha256_of(demo.s3.get_object(Bucket=demo.bucket, Key=key)["Body"]) == digest
    records = audit_of(demo, "fineuploader", seen)
    assert [r["decision"] for r in records] == ["allowed"] * len(records), records
    first = records[0]
    assert first["event"] == "fineuploader_key" and first["key"] == key and first["upload_id"]
    events = [r["event"] for r in records]
    assert events.count("fineuploader_upload_part") == 1 and "fineuploader_initiate" not in events  # only part 2
    assert not demo.s3.list_multipart_uploads(Bucket=demo.bucket, Prefix=key).get("Uploads")


def test_a_readded_file_whose_upload_is_gone_fails_at_once_with_the_reason(
        page: Any, demo: Live, errors: Any) -> None:
    data = b"\x00\x00\x00\x18ftypisom" + os.urandom(6 * MiB - 12)
    open_page(page, demo, "videos")
    key = _interrupt(page, demo, data)
    for unfinished in demo.s3.list_multipart_uploads(Bucket=demo.bucket, Prefix=key)["Uploads"]:
        demo.s3.abort_multipart_upload(Bucket=demo.bucket, Key=key, UploadId=unfinished["UploadId"])
    before = demo.objects()
    seen = len(demo.audit_records())

    open_page(page, demo, "videos")
    result, _ = upload(page, "clip.mp4", "video/mp4", data=data)

    reason = "cannot resume: the store holds no unfinished upload for " + key
    assert result["state"] == "failed" and result["reason"].startswith(reason), result
    assert "add the file again" in result["reason"]
    shown = page.locator("#uploader .qq-upload-fail .qq-upload-status-text")
    shown.wait_for(timeout=10000)
    assert reason in shown.inner_text()
    records = audit_of(demo, "fineuploader", seen)
    assert len(records) == 1 and records[0]["decision"] == "denied" and records[0]["check"] == "key_not_granted"
    assert demo.objects() == before
