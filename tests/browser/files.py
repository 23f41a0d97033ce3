"""Choosing files in a page's ``<input type=file>`` without sending megabytes through the driver.

Small files are handed over as bytes (Playwright's ``set_input_files``). Large ones are made in
the page (random bytes, ``crypto.getRandomValues``) and put into the input with a
``DataTransfer``, as a drop would; the page returns their SHA-256 so the test can compare the
stored object without ever holding the bytes.
"""
from __future__ import annotations

import hashlib
from typing import Any

_MAKE_FILE = """async ([selector, name, type, size, head]) => {
  const bytes = new Uint8Array(size);
  for (let i = 0; i < size; i += 65536) crypto.getRandomValues(bytes.subarray(i, Math.min(i + 65536, size)));
  bytes.set(head.slice(0, size));
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
  const transfer = new DataTransfer();
  transfer.items.add(new File([bytes], name, { type }));
  const input = document.querySelector(selector);
  input.files = transfer.files;
  input.dispatchEvent(new Event("change", { bubbles: true }));
  return Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("");
}"""


def choose_file(page: Any, selector: str, name: str, mime: str, *, data: bytes | None = None,
                size: int | None = None, head: bytes = b"") -> str:
    """Put one file into the file input at ``selector``; returns the file's SHA-256 (hex)."""
    if data is not None:
        page.set_input_files(selector, files=[{"name": name, "mimeType": mime, "buffer": data}])
        return hashlib.sha256(data).hexdigest()
    assert size is not None
    return str(page.evaluate(_MAKE_FILE, [selector, name, mime, size, list(head)]))


def sha256_of(body: Any) -> str:
    """SHA-256 (hex) of a streaming body, read in chunks."""
    digest = hashlib.sha256()
    for chunk in iter(lambda: body.read(1 << 20), b""):
        digest.update(chunk)
    return digest.hexdigest()


def assert_stored_as_chosen(live: Any, key: str, profile: str, digest: str, mime: str) -> None:
    """The object at ``key`` is under the profile's prefix, byte for byte the chosen file, with its type."""
    assert key.startswith(f"uploads/web-app/{profile}/"), key
    stored = live.s3.get_object(Bucket=live.bucket, Key=key)
    assert sha256_of(stored["Body"]) == digest
    assert stored["ContentType"] == mime


def upload_one(page: Any, selector: str, results: str, name: str, mime: str, *,
               data: bytes | None = None, size: int | None = None, head: bytes = b"",
               timeout: float = 30000) -> tuple[dict[str, Any], str]:
    """Choose one file, wait until the page's ``window[results]`` says it is done or failed.

    Returns that file's result object and its SHA-256 (hex).
    """
    digest = choose_file(page, selector, name, mime, data=data, size=size, head=head)
    page.wait_for_function(
        f"Object.values(window.{results}).some(r => r.state === 'done' || r.state === 'failed')",
        timeout=timeout)
    found = page.evaluate(f"Object.values(window.{results})")
    assert len(found) == 1, found
    return found[0], digest


def audit_of(live: Any, protocol: str, since: int) -> list[dict[str, Any]]:
    """The audit records of ``protocol`` (``fineuploader``, ``companion``) written after the first ``since``."""
    return [r for r in live.audit_records()[since:] if r.get("protocol") == protocol]
