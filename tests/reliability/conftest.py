"""Reliability suite fixtures: an own broker server, counters for the figures, and the secrets watch.

The secrets watch is a plugin registered for the whole session (not only this folder): it keeps
every captured stdout/stderr/log section of every test in the run, every ``io.StringIO`` fixture
(the in-process audit streams of the unit tests), and the audit files of ``live`` and of this
suite's servers. ``test_secrets.py`` is moved to the very end of the run and scans all of it.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pytest
from hypothesis import HealthCheck, settings

from tests.conftest import ACME_KEY, ROOT, WEB_KEY

#: An API key no rule knows; it is sent often and must never be logged either.
BOGUS_KEY = "bogus-key-7c1e0d9a-never-logged"
LAST_TESTS = ("test_secrets.py",)
#: Scale every example count by this (``make soak`` runs the fuzzers with a larger one).
SCALE = float(os.environ.get("RELIABILITY_SCALE", "1"))


def examples(n: int) -> int:
    """An example count scaled by ``RELIABILITY_SCALE``."""
    return max(1, int(n * SCALE))


def fuzz_settings(n: int) -> settings:
    """Hypothesis settings for a fuzz test of ``n`` examples: reproducible unless asked otherwise."""
    return settings(
        max_examples=examples(n), deadline=None, database=None,
        derandomize=os.environ.get("RELIABILITY_RANDOM") != "1",
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                               HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
    )


@dataclass(eq=False)  # plugins must be hashable
class SecretsWatch:
    """Collects everything the run logs, and the secrets that must not be in it."""

    sections: list[tuple[str, str, str]] = field(default_factory=list)
    streams: list[tuple[str, io.StringIO]] = field(default_factory=list)
    files: set[Path] = field(default_factory=set)
    secrets: dict[str, str] = field(default_factory=dict)  # value -> what it is
    figures: Counter[str] = field(default_factory=Counter)
    notes: dict[str, str] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def secret(self, value: str | None, what: str) -> None:
        """Remember a value that must appear in no log or audit line."""
        if value and len(value) >= 8:
            with self.lock:
                self.secrets.setdefault(value, what)

    def count(self, name: str, n: int = 1) -> None:
        """Add to one of the figures printed at the end of the run."""
        with self.lock:
            self.figures[name] += n

    def note(self, name: str, value: str) -> None:
        """A measured value printed at the end of the run."""
        with self.lock:
            self.notes[name] = value

    @pytest.hookimpl(hookwrapper=True)
    def pytest_fixture_setup(self, fixturedef: Any, request: Any) -> Iterator[None]:
        outcome = yield
        try:
            value = outcome.get_result()
        except BaseException:  # noqa: BLE001 - a failed fixture has nothing to watch
            return
        if isinstance(value, io.StringIO):
            self.streams.append((f"{request.node.nodeid} [{fixturedef.argname}]", value))
        audit_path = getattr(value, "audit_path", None)
        if isinstance(audit_path, Path):  # the live fixture, this suite's servers
            self.files.add(audit_path)
        store_config = getattr(value, "config", None)
        self.secret(getattr(store_config, "secret_key", None), "the store's secret key (signing secret)")
        grant_secret = getattr(getattr(value, "broker", None), "grant_secret", None)
        if isinstance(grant_secret, bytes):
            self.secret(grant_secret.decode(errors="replace"), "the broker's grant secret")

    def pytest_runtest_logreport(self, report: Any) -> None:
        for name, text in report.sections:
            if text:
                self.sections.append((report.nodeid, name, text))

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.figures or self.notes:
            terminalreporter.section("reliability figures")
            for name, value in sorted({**self.figures, **self.notes}.items()):
                terminalreporter.write_line(f"{name}: {value}")


WATCH = SecretsWatch()


def pytest_configure(config: pytest.Config) -> None:
    if not config.pluginmanager.has_plugin("reliability-secrets-watch"):
        config.pluginmanager.register(WATCH, "reliability-secrets-watch")
    for key, what in ((WEB_KEY, "API key web-app"), (ACME_KEY, "API key partner-acme"),
                      (BOGUS_KEY, "unknown API key sent by the tests"),
                      (os.environ.get("AWS_SECRET_ACCESS_KEY"), "AWS_SECRET_ACCESS_KEY"),
                      (os.environ.get("AWS_SESSION_TOKEN"), "AWS_SESSION_TOKEN")):
        WATCH.secret(key, what)


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config,
                                  items: list[pytest.Item]) -> None:
    """Run the secrets scan after every other test of the session, whatever its folder."""
    last = [i for i in items if i.path.name in LAST_TESTS]
    if last:
        items[:] = [i for i in items if i.path.name not in LAST_TESTS] + last


@pytest.fixture(scope="session")
def watch() -> SecretsWatch:
    """The session's secrets watch (register secrets, files and figures with it)."""
    return WATCH


@dataclass
class RelServer:
    """This suite's own broker over HTTP against the real store."""

    url: str
    broker: Any
    ruleset: Any
    rules_path: Path
    audit_path: Path
    audit_stream: io.StringIO
    s3: Any
    store: Any

    def audit_records(self) -> list[dict[str, Any]]:
        """Every audit line in the file so far, parsed (JSON Lines: records end at "\\n" only)."""
        return [json.loads(line) for line in self.audit_path.read_text().split("\n") if line]


@pytest.fixture(scope="session")
def rel_server(store: Any, tmp_path_factory: pytest.TempPathFactory,
               watch: SecretsWatch) -> Iterator[RelServer]:
    """A broker served by waitress with a copy of rules.yaml, its own audit file and stream."""
    from broker.adapters.wsgi import ServerThread, WsgiApp
    from broker.service import build
    from broker.config import Settings
    from broker.dev.store import upload_cors_rules

    work = tmp_path_factory.mktemp("reliability")
    rules_path, audit_path = work / "rules.yaml", work / "audit.jsonl"
    shutil.copy(ROOT / "rules.yaml", rules_path)
    stream = io.StringIO()
    s3 = store.s3_client()
    settings_ = Settings(rules=str(rules_path), rules_reload_seconds=3600, audit_file=str(audit_path),
                         s3_endpoint_url=store.endpoint_url, s3_addressing_style="path")
    broker = build(settings_, s3_client=s3, audit_stream=stream)
    ruleset = broker.rules.current()
    for bucket in ruleset.buckets():
        store.ensure_bucket(bucket, upload_cors_rules(list(ruleset.cors_origins)))
    watch.files.add(audit_path)
    watch.streams.append(("rel_server audit stream", stream))
    watch.secret(store.config.secret_key, "the store's secret key (the broker's signing secret)")
    server = ServerThread(WsgiApp(broker), "127.0.0.1", 0, threads=4)
    try:
        yield RelServer(server.url, broker, ruleset, rules_path, audit_path, stream, s3, store)
    finally:
        server.close()
