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
