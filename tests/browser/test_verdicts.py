"""The upload page shows what the verifier found, in a real Chromium, against a store whose events reach it."""
from __future__ import annotations

from typing import Any

import pytest

from tests.browser.files import choose_file, upload_one
from tests.stack import Verifying
from tests.test_sniff import png


def test_the_page_shows_verified_or_why_a_file_was_rejected(page: Any, verifying_demo: Verifying) -> None:
    verifying = verifying_demo
    page.goto(verifying.url + "/")
    page.wait_for_selector("body[data-ready=true]", timeout=10000)  # its session, from the demo backend
    choose_file(page, "#files", "me.png", "image/png", data=png())
    page.wait_for_selector(".upload[data-verdict='verified']", timeout=30000)
    assert page.inner_text(".upload[data-verdict='verified'] .verdict").strip() == "verified"

    choose_file(page, "#files", "cat.png", "image/png", data=b"<html><script>alert(1)</script></html>")
    page.wait_for_selector(".upload[data-verdict='rejected']", timeout=30000)
    text = page.inner_text(".upload[data-verdict='rejected'] .verdict")
    assert text == "rejected: the bytes are HTML, not image/png", text
    page.screenshot(path=str(verifying.audit_path.parent / "verdicts.png"), full_page=True)


MiB = 1024 * 1024
MP4_HEAD = b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2"


@pytest.mark.parametrize("page_name, results, input_selector, profile, name, mime, size", [
    pytest.param("fineuploader", "fineUploaderResults", "#files", "avatars", "me.png", "image/png", None,
                 id="fine_uploader_one_post"),
    pytest.param("fineuploader", "fineUploaderResults", "#files", "videos", "clip.mp4", "video/mp4", 6 * MiB,
                 id="fine_uploader_chunked"),
    pytest.param("uppy", "uppyResults", ".uppy-Dashboard-input", "avatars", "me.png", "image/png", None,
                 id="uppy_one_post"),
    pytest.param("uppy", "uppyResults", ".uppy-Dashboard-input", "videos", "clip.mp4", "video/mp4", 6 * MiB,
                 id="uppy_multipart"),
])
def test_every_page_shows_the_verdict(page: Any, verifying_demo: Verifying, page_name: str, results: str,
                                      input_selector: str, profile: str, name: str, mime: str,
                                      size: int | None) -> None:
    verifying = verifying_demo
    page.goto(f"{verifying.url}/{page_name}.html", wait_until="load")
    page.wait_for_selector("body[data-ready=true]", timeout=10000)
    if page_name == "fineuploader":
        page.select_option("#profile", profile)
    else:
        page.fill("#profile", profile)
    result, _ = upload_one(page, input_selector, results, name, mime, data=png() if size is None else None,
                           size=size, head=MP4_HEAD)
    assert result["state"] == "done", result
    page.wait_for_selector("li[data-verdict='verified']", timeout=30000)
    assert page.inner_text("li[data-verdict='verified'] .verdict").strip() == "verified"
    line = verifying.wait_for_verdict(result["key"])
    assert line["verdict"] == "verified", line
