"""Fixtures for tests in a real headless Chromium (Debian's package), driven by Playwright.

Chromium comes from Debian (``scripts/install-system-deps.sh``), never from
``playwright install``, which downloads a browser build and fails here.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

#: The browser to drive; BROKER_CHROMIUM overrides it.
CHROMIUM = Path(os.environ.get("BROKER_CHROMIUM", "/usr/bin/chromium"))

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]


@pytest.fixture(scope="session")
def browser_context() -> Iterator[Any]:
    """A Playwright BrowserContext of headless Chromium with a fresh profile, shared by the session."""
    if not (CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK)):
        pytest.fail(
            f"Chromium was not found at {CHROMIUM}: install it with `bash scripts/install-system-deps.sh` "
            "(Debian's `apt-get install -y chromium`), or point BROKER_CHROMIUM at a Chromium binary",
            pytrace=False,
        )
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("Playwright is not installed: `pip install playwright` (never `playwright install`)",
                    pytrace=False)
    profile = tempfile.mkdtemp(prefix="broker-chromium-")
    try:
        with sync_playwright() as playwright:
            context = playwright.chromium.launch_persistent_context(
                user_data_dir=profile,
                executable_path=str(CHROMIUM),
                headless=True,
                args=CHROMIUM_ARGS,
            )
            try:
                yield context
            finally:
                context.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture()
def page(browser_context: Any) -> Iterator[Any]:
    """A new page in the shared browser context, closed after the test."""
    new_page = browser_context.new_page()
    try:
        yield new_page
    finally:
        new_page.close()


@pytest.fixture()
def errors(page: Any) -> Iterator[list[str]]:
    """The page's uncaught JavaScript errors; the test fails if there was any."""
    seen: list[str] = []
    page.on("pageerror", lambda error: seen.append(str(error)))
    yield seen
    assert seen == []


#: Pages and files the tests serve under the broker's origin: {path: (content type, bytes)}. Served
#: by the server itself (not by Playwright's interception: Chromium would then treat the page as
#: outside the loopback address space and block its requests to the store).
TEST_FILES: dict[str, tuple[str, bytes]] = {}


class TestFiles:
    """WSGI middleware answering GET for the paths in TEST_FILES; everything else goes to ``app``."""

    def __init__(self, app: Any) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        found = TEST_FILES.get(environ.get("PATH_INFO") or "")
        if found is None or environ.get("REQUEST_METHOD") != "GET":
            return self.app(environ, start_response)
        ctype, data = found
        start_response("200 OK", [("Content-Type", ctype), ("Content-Length", str(len(data))),
                                  ("Cache-Control", "no-cache")])
        return [data]


def demo_server(broker: Any, store: Any, rules_path: Path, bucket: str = "broker-uploads") -> Any:
    """``broker`` served again with make run's demo app backend (``GET /demo/session``) in front, as make run
    does: a ServerThread whose origin is added to the bucket's CORS rules."""
    import yaml

    from broker.adapters.wsgi import ServerThread, WsgiApp
    from broker.dev.demo import DemoBackend
    from broker.dev.run import DEMO_API_KEY
    from broker.dev.store import upload_cors_rules

    app = TestFiles(DemoBackend(WsgiApp(broker), broker, DEMO_API_KEY))
    server = ServerThread(app, "127.0.0.1", 0)  # type: ignore[arg-type]
    origins = yaml.safe_load(rules_path.read_text())["cors"]["allowed_origins"]
    store.ensure_bucket(bucket, upload_cors_rules([*origins, server.url]))
    return server


@pytest.fixture(scope="module")
def demo(live: Any) -> Iterator[Any]:
    """The ``live`` stack behind make run's demo backend: the same broker, store and audit log, ``url`` changed."""
    import dataclasses

    server = demo_server(live.broker, live.store, live.rules_path, live.bucket)
    try:
        yield dataclasses.replace(live, url=server.url)
    finally:
        server.close()


@pytest.fixture(scope="module")
def verifying_demo(verifying: Any) -> Iterator[Any]:
    """The ``verifying`` stack (store events reach the verifier) behind make run's demo backend."""
    import dataclasses

    server = demo_server(verifying.broker, verifying.store, verifying.rules_path)
    try:
        yield dataclasses.replace(verifying, url=server.url)
    finally:
        server.close()
