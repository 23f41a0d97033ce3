"""Fine Uploader S3 5.16.2 in headless Chromium against the broker and SeaweedFS (``live``).

The page is ``broker/static/fineuploader.html`` served by the broker itself (behind make run's demo
backend, which gives the page its session), using the vendored, unchanged bundle and
``fineuploader-broker.js``. Allowed uploads (one POST, and chunked in two real 5 MiB + 1 MiB parts) must
store exactly the bytes sent; refused ones must show the broker's reason in the page and leave
nothing in the bucket.
"""
from __future__ import annotations

import json
import os
from typing import Any

import pytest

from tests.browser.files import assert_stored_as_chosen, audit_of, upload_one
from tests.stack import Live

MiB = 1024 * 1024
PNG = b"\x89PNG\r\n\x1a\n" + os.urandom(2000)


def open_page(page: Any, demo: Live, profile: str) -> None:
    page.goto(f"{demo.url}/fineuploader.html", wait_until="load")
    page.wait_for_selector("body[data-ready=true]", timeout=10000)
    page.select_option("#profile", profile)


def upload(page: Any, name: str, mime: str, *, data: bytes | None = None, size: int | None = None,
           timeout: float = 30000) -> tuple[dict[str, Any], str]:
    """Choose one file in the page, wait until Fine Uploader is done with it; (result, SHA-256)."""
    return upload_one(page, "#files", "fineUploaderResults", name, mime, data=data, size=size, head=PNG[:8],
                      timeout=timeout)


@pytest.mark.parametrize("profile, name, mime, size, parts", [
    pytest.param("avatars", "me.png", "image/png", None, 0, id="one_post"),
    pytest.param("videos", "clip.mp4", "video/mp4", 6 * MiB, 2, id="chunked_5MiB_plus_1MiB"),
])
def test_allowed_upload_stores_exactly_the_bytes(page: Any, demo: Live, profile: str, name: str,
                                                 mime: str, size: int | None, parts: int) -> None:
    seen = len(demo.audit_records())
    open_page(page, demo, profile)

    result, digest = upload(page, name, mime, data=PNG if size is None else None, size=size)

    assert result["state"] == "done", result
    assert_stored_as_chosen(demo, result["key"], profile, digest, mime)
    events = [r["event"] for r in audit_of(demo, "fineuploader", seen) if r["decision"] == "allowed"]
    assert events[0] == "fineuploader_key" and events[-1] == "upload_success"
    assert events.count("fineuploader_upload_part") == parts
    if parts:
        assert {"fineuploader_initiate", "fineuploader_complete"} <= set(events)
    else:
        assert "fineuploader_policy" in events


def _tamper_key(route: Any) -> None:
    body = json.loads(route.request.post_data)
    for cond in body.get("conditions", []):
        if isinstance(cond, dict) and "key" in cond:
            cond["key"] = cond["key"].replace("uploads/web-app/avatars/", "partners/partner-acme/invoices/")
    route.continue_(post_data=json.dumps(body))


@pytest.mark.parametrize("name, mime, size, tamper, reason", [
    pytest.param("notes.txt", "text/plain", 100, None, "content type text/plain is not allowed for avatars",
                 id="denied_type"),
    pytest.param("huge.png", "image/png", 5 * MiB + 1, None, "too large", id="oversized"),
    pytest.param("me.png", "image/png", 500, _tamper_key, "key must be the granted key", id="tampered_policy"),
])
def test_refused_upload_shows_the_brokers_reason_and_stores_nothing(
        page: Any, demo: Live, name: str, mime: str, size: int, tamper: Any, reason: str) -> None:
    before = demo.objects()
    seen = len(demo.audit_records())
    open_page(page, demo, "avatars")
    if tamper is not None:
        page.route("**/fineuploader/signature**", tamper)

    result, _ = upload(page, name, mime, size=size)

    assert result["state"] == "failed"
    assert reason in result["reason"], result
    assert demo.objects() == before
    denied = [r for r in audit_of(demo, "fineuploader", seen) if r["decision"] == "denied"]
    assert denied and reason in denied[0]["reason"]
