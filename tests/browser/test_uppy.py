"""Uppy 5 and Uppy 6 AwsS3 (Companion protocol) in headless Chromium against the broker and SeaweedFS.

Each page is configured only as Uppy's documentation says, plus the session endpoint: the page
gets a session from make run's demo backend, points the documented option at
``<broker>/s/<token>`` (Uppy 5: ``endpoint``, Uppy 6: ``companionEndpoint``) and fills Uppy's
``restrictions`` from ``GET /limits`` as they are. No fetch wrapper, no headers, no status text
rewriting. Uppy 6 is the bundle the broker serves (``broker/static/vendor/uppy``); Uppy 5.2.4 is
the npm package's ``dist/uppy.min.js``, unchanged, kept with these tests
(``tests/browser/vendor/uppy5``) and served to the page under the broker's origin.

Small files go in one presigned POST, a 6 MiB file as a real two-part multipart upload (5 MiB +
1 MiB); refused files must show the broker's reason in Uppy (its Dashboard and its error) and
leave nothing stored; an oversized file is refused in the page, before anything is signed.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest

from tests.browser.conftest import TEST_FILES
from tests.browser.files import assert_stored_as_chosen, audit_of, upload_one
from tests.stack import Live

MiB = 1024 * 1024
PNG = b"\x89PNG\r\n\x1a\n" + os.urandom(2000)
UPPY5 = Path(__file__).parent / "vendor" / "uppy5"

#: The page, as Uppy's docs write it; OPTION is the documented option naming the Companion.
PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>Uppy {version}</title><link rel="icon" href="data:,">
<link rel="stylesheet" href="{base}/uppy.min.css"><script src="{base}/uppy.min.js"></script></head>
<body><div id="dashboard"></div>
<script>
(async () => {{
  const broker = window.location.origin;
  const session = await (await fetch(`${{broker}}/demo/session`)).json();   // from the app backend
  const endpoint = `${{broker}}/s/${{session.token}}`;
  const limits = await (await fetch(`${{endpoint}}/limits`)).json();
  const uppy = new Uppy.Uppy({{
      autoProceed: true,
      meta: {{profile: {profile!r}}},
      restrictions: limits.profiles[{profile!r}].restrictions,
    }})
    .use(Uppy.Dashboard, {{inline: true, target: "#dashboard"}})
    .use(Uppy.AwsS3, {{{option}: endpoint, shouldUseMultipart: (file) => file.size > 5 * 1024 * 1024}});
  // what the test reads: each file's outcome, as Uppy reports it
  window.results = {{}};
  uppy.on("upload-success", (file) => {{ results[file.id] = {{state: "done", name: file.name}}; }});
  uppy.on("upload-error", (file, error) => {{ results[file.id] = {{state: "failed", reason: error.message}}; }});
  uppy.on("restriction-failed", (file, error) => {{ results[file.name] = {{state: "failed", reason: error.message}}; }});
  window.uppy = uppy;
  document.body.dataset.ready = "true";
}})();
</script></body></html>"""

VERSIONS = {
    5: {"option": "endpoint", "base": "/test-vendor/uppy5"},
    6: {"option": "companionEndpoint", "base": "/vendor/uppy"},
}


def open_page(page: Any, live: Live, version: int, profile: str) -> None:
    """The page for one Uppy version and profile, served by the broker's server."""
    html = PAGE.format(version=version, profile=profile, **VERSIONS[version])
    TEST_FILES[f"/uppy{version}-test.html"] = ("text/html; charset=utf-8", html.encode())
    for name, ctype in (("uppy.min.js", "application/javascript"), ("uppy.min.css", "text/css")):
        TEST_FILES[f"/test-vendor/uppy5/{name}"] = (ctype, (UPPY5 / name).read_bytes())
    page.goto(f"{live.url}/uppy{version}-test.html", wait_until="load")
    page.wait_for_selector("body[data-ready=true]", timeout=10000)
    assert page.evaluate("Uppy.Uppy.VERSION").split(".")[0] == str(version)


def upload(page: Any, name: str, mime: str, *, data: bytes | None = None, size: int | None = None,
           timeout: float = 30000) -> tuple[dict[str, Any], str]:
    """Choose one file in Uppy's Dashboard, wait until it succeeds or fails; (result, SHA-256)."""
    return upload_one(page, ".uppy-Dashboard-input", "results", name, mime, data=data, size=size, head=PNG[:8],
                      timeout=timeout)


def pending_bytes(live: Live) -> int:
    """Bytes held in parts of multipart uploads neither completed nor aborted."""
    total = 0
    for upload_ in live.s3.list_multipart_uploads(Bucket=live.bucket).get("Uploads", []):
        parts = live.s3.list_parts(Bucket=live.bucket, Key=upload_["Key"], UploadId=upload_["UploadId"])
        total += sum(p["Size"] for p in parts.get("Parts", []))
    return total


@pytest.mark.parametrize("version", [5, 6])
@pytest.mark.parametrize("profile, name, mime, size, multipart", [
    pytest.param("avatars", "me.png", "image/png", None, False, id="one_post"),
    pytest.param("videos", "clip.mp4", "video/mp4", 6 * MiB, True, id="multipart_5MiB_plus_1MiB"),
])
def test_allowed_upload_stores_exactly_the_bytes(page: Any, demo: Live, errors: Any, version: int, profile: str,
                                                 name: str, mime: str, size: int | None, multipart: bool) -> None:
    seen = len(demo.audit_records())
    open_page(page, demo, version, profile)

    result, digest = upload(page, name, mime, data=PNG if size is None else None, size=size)

    assert result["state"] == "done", result
    events = [r for r in audit_of(demo, "companion", seen) if r["decision"] == "allowed"]
    assert all(r["session"] and r["user"] == "demo-user" for r in events)  # the page's session, no API key
    assert_stored_as_chosen(demo, events[0]["key"], profile, digest, mime)
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


@pytest.mark.parametrize("version", [5, 6])
@pytest.mark.parametrize("profile, name, mime, size, tamper, reason", [
    # .png passes Uppy's restrictions (type *or* extension); the broker wants both
    pytest.param("avatars", "notes.png", "text/plain", 100, None,
                 "content type text/plain is not allowed for avatars", id="denied_type"),
    pytest.param("videos", "clip.mp4", "video/mp4", 6 * MiB, _tamper_part_key,
                 "is not a key the broker grants to web-app", id="tampered_part_signing"),
])
def test_refused_upload_shows_the_brokers_reason_and_stores_nothing(
        page: Any, demo: Live, errors: Any, version: int, profile: str, name: str, mime: str, size: int,
        tamper: Any, reason: str) -> None:
    before = demo.objects(), pending_bytes(demo)
    seen = len(demo.audit_records())
    open_page(page, demo, version, profile)
    if tamper is not None:
        page.route("**/s3/multipart/*/1?*", tamper)

    result, _ = upload(page, name, mime, size=size)

    assert result["state"] == "failed"
    assert reason in result["reason"], result
    # What the person sees: the file's error tooltip (the "?" next to its name) and the informer.
    details = page.locator("#dashboard .uppy-Dashboard-Item-errorDetails")
    details.wait_for(timeout=10000)
    assert reason in (details.get_attribute("aria-label") or "")
    assert reason in (page.locator("#dashboard .uppy-Informer [role=tooltip]").first.get_attribute("aria-label") or "")
    assert (demo.objects(), pending_bytes(demo)) == before
    denied = [r for r in audit_of(demo, "companion", seen) if r["decision"] == "denied"]
    assert denied and reason in denied[0]["reason"]


@pytest.mark.parametrize("version", [5, 6])
@pytest.mark.parametrize("profile, name, mime, size, limit", [
    pytest.param("avatars", "huge.png", "image/png", 5 * MiB + 1, "5 MB", id="oversized"),
    pytest.param("avatars", "notes.txt", "text/plain", 100, "image/png", id="type_from_limits"),
])
def test_restrictions_from_limits_refuse_in_the_page_before_anything_is_signed(
        page: Any, demo: Live, errors: Any, version: int, profile: str, name: str, mime: str, size: int,
        limit: str) -> None:
    before = demo.objects()
    open_page(page, demo, version, profile)
    seen = len(demo.audit_records())

    result, _ = upload(page, name, mime, size=size)

    assert result["state"] == "failed" and limit in result["reason"], result
    page.wait_for_function("(limit) => document.body.innerText.includes(limit)", arg=limit, timeout=10000)
    assert demo.audit_records()[seen:] == []  # the broker was never asked
    assert demo.objects() == before


def _forge_token(route: Any) -> None:
    """The session token in the path altered on its way to the broker."""
    parts = urlsplit(route.request.url)
    head, _, rest = parts.path.partition("/s/")
    token, _, tail = rest.partition("/")
    forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    route.continue_(url=f"{parts.scheme}://{parts.netloc}{head}/s/{forged}/{tail}?{parts.query}")


def test_uppy_6_shows_why_the_session_is_refused(page: Any, demo: Live, errors: Any) -> None:
    open_page(page, demo, 6, "avatars")
    page.route("**/s3/params?*", _forge_token)

    result, _ = upload(page, "me.png", "image/png", data=PNG)

    reason = "the session token was not issued by this broker (or was altered)"
    assert result == {"state": "failed", "reason": f"Companion request failed: {reason}"}, result
