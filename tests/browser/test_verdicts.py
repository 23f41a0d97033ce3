"""The upload page shows what the verifier found, in a real Chromium, against a store whose events reach it."""
from __future__ import annotations

from typing import Any

from tests.browser.files import choose_file
from tests.stack import Verifying
from tests.test_sniff import png


def test_the_page_shows_verified_or_why_a_file_was_rejected(page: Any, verifying: Verifying) -> None:
    page.goto(verifying.url + "/")
    page.fill("#api-key", "demo-web-app-key")
    choose_file(page, "#files", "me.png", "image/png", data=png())
    page.wait_for_selector(".upload[data-verdict='verified']", timeout=30000)
    assert page.inner_text(".upload[data-verdict='verified'] .verdict").strip() == "verified"

    choose_file(page, "#files", "cat.png", "image/png", data=b"<html><script>alert(1)</script></html>")
    page.wait_for_selector(".upload[data-verdict='rejected']", timeout=30000)
    text = page.inner_text(".upload[data-verdict='rejected'] .verdict")
    assert text == "rejected: the bytes are HTML, not image/png", text
    page.screenshot(path=str(verifying.audit_path.parent / "verdicts.png"), full_page=True)
