"""The browser tooling works: headless Chromium loads a local page, runs its JavaScript and the vendored bundles."""
from __future__ import annotations

import mimetypes
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

VENDOR = Path(__file__).resolve().parents[2] / "broker" / "static" / "vendor"

PAGE = b"""<!doctype html>
<html><head><meta charset="utf-8"><title>smoke</title></head>
<body><p id="out">JavaScript did not run</p>
<script>
  document.getElementById("out").textContent = "ran " + (6 * 7);
  fetch("/ping").then(r => r.text()).then(t => { window.pingResult = t; });
</script>
</body></html>
"""


BUNDLES_PAGE = b"""<!doctype html>
<html><head><meta charset="utf-8"><title>bundles</title>
<link rel="stylesheet" href="/vendor/uppy/uppy.min.css">
<link rel="stylesheet" href="/vendor/fine-uploader/fine-uploader-new.min.css">
<script src="/vendor/fine-uploader/s3.fine-uploader.min.js"></script>
<script src="/vendor/uppy/uppy.min.js"></script>
</head><body></body></html>
"""


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/ping":
            body, kind = b"pong", "text/plain"
        elif self.path == "/bundles.html":
            body, kind = BUNDLES_PAGE, "text/html; charset=utf-8"
        elif self.path.startswith("/vendor/"):
            target = (VENDOR / self.path.removeprefix("/vendor/")).resolve()
            if VENDOR not in target.parents or not target.is_file():
                self.send_error(404)
                return
            body, kind = target.read_bytes(), mimetypes.guess_type(target.name)[0] or "application/octet-stream"
        else:
            body, kind = PAGE, "text/html; charset=utf-8"
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def site() -> Iterator[str]:
    """A tiny site served from a thread on 127.0.0.1; yields its base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_javascript_runs_in_a_local_page(page: Any, site: str) -> None:
    page.goto(site + "/", wait_until="load")

    assert page.title() == "smoke"
    assert page.text_content("#out") == "ran 42"
    page.wait_for_function("window.pingResult === 'pong'", timeout=5000)
    assert page.evaluate("navigator.userAgent").find("Chrome") >= 0


def test_vendored_bundles_load_with_a_plain_script_tag(page: Any, site: str) -> None:
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))

    page.goto(site + "/bundles.html", wait_until="load")

    assert errors == []
    assert page.evaluate("typeof qq.s3.FineUploader") == "function"
    assert page.evaluate("qq.version") == "5.16.2"
    assert page.evaluate("[typeof Uppy.Uppy, typeof Uppy.AwsS3, typeof Uppy.Dashboard]") == ["function"] * 3
    assert page.evaluate("Uppy.Uppy.VERSION").split(".")[0] == "6"
