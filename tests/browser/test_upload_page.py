"""The upload page in real headless Chromium, against the live broker and store.

The page gets a session from make run's demo backend (``GET /demo/session``, which calls
``POST /sessions`` with the API key: the page never holds one), asks the broker for a form
through ``broker.js``, posts the file straight to SeaweedFS, and must show what happened: the
key for a stored file, the broker's reason for a denied one, the store's error for a refused
one. Each test also checks what the store really holds.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

import pytest

from tests.stack import Live

FINAL_STATES = ("stored", "denied", "refused", "error")
PNG = b"\x89PNG\r\n\x1a\n" + os.urandom(300)


def row_selector(name: str) -> str:
    return f'li.upload[data-file="{name}"]'


def finished_rows(page: Any, names: list[str], timeout: float = 20_000) -> dict[str, dict[str, str]]:
    """Wait until every named file's row reaches a final state; return what each row shows."""
    page.wait_for_function(
        """([names, finals]) => names.every(n => {
             const row = document.querySelector(`li.upload[data-file="${CSS.escape(n)}"]`);
             return row && finals.includes(row.dataset.state);
           })""",
        arg=[names, list(FINAL_STATES)], timeout=timeout)
    rows = {}
    for name in names:
        row = page.locator(row_selector(name))
        rows[name] = {
            "state": row.get_attribute("data-state") or "",
            "status": row.locator(".status").inner_text(),
            "message": row.locator(".message").inner_text() if row.locator(".message").is_visible() else "",
            "key": row.locator(".key").inner_text() if row.locator(".result").is_visible() else "",
            "etag": row.locator(".etag").inner_text() if row.locator(".result").is_visible() else "",
            "progress": row.locator(".progress").get_attribute("aria-valuenow") or "",
        }
    return rows


def stored_bytes(demo: Live, key: str) -> bytes:
    return demo.s3.get_object(Bucket=demo.bucket, Key=key)["Body"].read()


@pytest.fixture()
def opened(page: Any, demo: Live) -> Any:
    """The upload page, loaded from the live broker with its session, failing the test on any page error."""
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(demo.url + "/", wait_until="load")
    assert page.title() == "Upload broker"
    page.wait_for_selector("body[data-ready=true]", timeout=10000)
    assert "web-app" in page.inner_text("#session")
    yield page
    assert errors == []


@pytest.mark.parametrize("profile, name, data, key_pattern, content_type", [
    pytest.param("avatars", "me.png", PNG, r"uploads/web-app/avatars/\d{4}-\d\d-\d\d/[0-9a-f]{32}\.png",
                 "image/png", id="avatar_png"),
    pytest.param("documents", "Notes 2026.txt", b"meeting notes\n" * 40,
                 r"uploads/web-app/documents/\d{4}-\d\d-\d\d/[0-9a-f]{32}/Notes-2026\.txt",
                 "text/plain", id="document_txt"),
])
def test_allowed_file_is_stored_and_the_page_shows_its_key(
        opened: Any, demo: Live, tmp_path: Path, profile: str, name: str, data: bytes,
        key_pattern: str, content_type: str) -> None:
    path = tmp_path / name
    path.write_bytes(data)
    opened.fill("#profile", profile)

    opened.set_input_files("#files", str(path))

    row = finished_rows(opened, [name])[name]
    assert (row["state"], row["status"], row["progress"]) == ("stored", "stored", "100")
    assert re.fullmatch(key_pattern, row["key"]), row["key"]
    assert stored_bytes(demo, row["key"]) == data
    assert row["etag"].strip('"') == hashlib.md5(data).hexdigest()
    head = demo.s3.head_object(Bucket=demo.bucket, Key=row["key"])
    assert head["ContentType"].split(";")[0] == content_type
    grant = [r for r in demo.audit_records() if r.get("key") == row["key"] and r.get("event") == "upload"]
    assert grant[0]["session"] and grant[0]["user"] == "demo-user"  # the page's session, not an API key


def test_the_page_holds_no_api_key_and_never_sends_one(opened: Any, demo: Live, tmp_path: Path) -> None:
    sent: list[dict[str, str]] = []
    opened.on("request", lambda request: sent.append(request.headers))
    path = tmp_path / "me.png"
    path.write_bytes(PNG)
    opened.set_input_files("#files", str(path))
    assert finished_rows(opened, ["me.png"])["me.png"]["state"] == "stored"
    assert "demo-web-app-key" not in opened.content()
    assert sent and not any("x-api-key" in headers for headers in sent)
    assert any(h.get("authorization", "").startswith("Bearer v1.") for h in sent)


def test_denied_files_show_the_brokers_reason_and_nothing_is_stored(
        opened: Any, demo: Live, tmp_path: Path) -> None:
    big = tmp_path / "huge.png"
    big.write_bytes(b"\x89PNG" + b"\x00" * (12_000_000 - 4))
    text = tmp_path / "notes.txt"
    text.write_bytes(b"not an image\n")
    before = demo.objects()

    opened.set_input_files("#files", [str(big), str(text)])  # two at once, profile avatars

    rows = finished_rows(opened, ["huge.png", "notes.txt"])
    assert rows["huge.png"]["state"] == "denied"
    assert rows["huge.png"]["message"] == "too large: 12 MB, the limit for avatars is 5 MiB"
    assert "413" in rows["huge.png"]["status"] and "too_large" in rows["huge.png"]["status"]
    assert rows["notes.txt"]["state"] == "denied"
    assert rows["notes.txt"]["message"] == "content type text/plain is not allowed for avatars"
    assert "403" in rows["notes.txt"]["status"]
    assert demo.objects() == before
    denials = [r for r in demo.audit_records() if r.get("decision") == "denied"]
    assert {"too_large", "content_type_not_allowed"} <= {r.get("check") for r in denials[-2:]}


def test_a_form_the_store_refuses_shows_the_stores_error(opened: Any, demo: Live, tmp_path: Path) -> None:
    """A form altered after the broker signed it (here: another key) is refused by the store."""

    def tamper(route: Any) -> None:
        response = route.fetch()
        body = response.json()
        body["fields"]["key"] = body["key"].rsplit("/", 1)[0] + "/chosen-by-client.png"
        route.fulfill(response=response, body=json.dumps(body))

    opened.route("**/uploads", tamper)
    path = tmp_path / "tampered.png"
    path.write_bytes(PNG)
    before = demo.objects()

    opened.set_input_files("#files", str(path))

    row = finished_rows(opened, ["tampered.png"])["tampered.png"]
    assert (row["state"], row["status"]) == ("refused", "refused by the store · 403")
    assert row["message"].startswith("AccessDenied: ")
    assert demo.objects() == before


def test_a_dropped_file_is_uploaded(opened: Any, demo: Live) -> None:
    opened.evaluate(
        """(bytes) => {
             const transfer = new DataTransfer();
             transfer.items.add(new File([new Uint8Array(bytes)], "dropped.png", {type: "image/png"}));
             document.querySelector("#drop").dispatchEvent(
               new DragEvent("drop", {dataTransfer: transfer, bubbles: true, cancelable: true}));
           }""",
        list(PNG))

    row = finished_rows(opened, ["dropped.png"])["dropped.png"]
    assert row["state"] == "stored", row
    assert stored_bytes(demo, row["key"]) == PNG


def test_without_an_app_backend_the_page_says_what_is_missing(page: Any, live: Live) -> None:
    """Served by the broker alone (as `broker serve` does), the page has no session and says why."""
    page.goto(live.url + "/", wait_until="load")
    page.wait_for_selector("body[data-ready=false]", timeout=10000)
    assert "no app backend here mints sessions" in page.inner_text("#session")
