"""Pytest fixtures for the real local stack: a real S3-compatible store + the broker's HTTP server.

Registered from ``tests/conftest.py``; any test under ``tests/`` can ask for:

- ``store``: the store of the test's ``store_kind`` (session): SeaweedFS ``weed mini`` on free ports,
  or Ceph RGW (a one-node cluster, :mod:`broker.dev.rgw`), each started once per session
- ``make_bucket``: a factory making new uniquely named buckets in that store
- ``live``: the broker served over HTTP (waitress, in a thread) against that store, with
  the example ``rules.yaml`` (its CORS origins plus the server's own origin), bucket
  ``broker-uploads`` created with CORS from the rules, and a JSON Lines audit file.
- ``verifying``: a second stack whose store sends each new object's event to the broker's verifier.

These are SeaweedFS's. A test module joins the **store suite**, where every test that uses one of
them runs on both stores (``test_x[seaweedfs]``, ``test_x[rgw]``), by importing ``store``, ``live``
and ``verifying`` from :mod:`tests.store_suite`.
"""
from __future__ import annotations

import itertools
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from broker.dev.rgw import Rgw, RgwConfig
from broker.dev.store import Store, StoreConfig, StoreError, pick_free_ports, upload_cors_rules

ROOT = Path(__file__).resolve().parent.parent
_bucket_numbers = itertools.count(1)

#: The stores every test of the store suite runs against.
STORES = ("seaweedfs", "rgw")
#: Seconds each store took to start in this session (printed at the end of the run).
START_SECONDS: dict[str, float] = {}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """In the store suite (tests.store_suite's fixtures), a test that uses a store runs once per store."""
    if "store_kind" in metafunc.fixturenames:
        metafunc.parametrize("store_kind", STORES, scope="module")


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if START_SECONDS:
        started = ", ".join(f"{kind} {seconds:.1f} s" for kind, seconds in START_SECONDS.items())
        terminalreporter.write_line(f"stores started (once each): {started}")


def _started(kind: str, start: Callable[[], Any]) -> Any:
    """start(), retried when a port picked as free was taken meanwhile (by another process)."""
    began = time.monotonic()
    for attempt in range(3):
        try:
            running = start()
            break
        except StoreError as exc:
            if "already in use" not in str(exc) or attempt == 2:
                raise
    START_SECONDS[kind] = START_SECONDS.get(kind, 0.0) + time.monotonic() - began
    return running


def start_rgw(data_dir: Path) -> Rgw:
    """A Ceph RGW one-node cluster on free ports, in data_dir (stop it when done)."""
    s3_port, mon_port = pick_free_ports()
    return Rgw(RgwConfig.generate(data_dir, s3_port=s3_port, mon_port=mon_port)).start(timeout=90)


@pytest.fixture(scope="session")
def seaweedfs_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    """A SeaweedFS store running for the whole session on free ports, in a fresh directory."""

    def start() -> Store:
        s3_port, base_port = pick_free_ports()
        config = StoreConfig.generate(tmp_path_factory.mktemp("store"), s3_port=s3_port, base_port=base_port)
        return Store(config).start(timeout=30)

    running = _started("seaweedfs", start)
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="session")
def rgw_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rgw]:
    """A Ceph RGW cluster running for the whole session on free ports, in a fresh directory."""
    running = _started("rgw", lambda: start_rgw(tmp_path_factory.mktemp("rgw")))
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="session")
def store(seaweedfs_store: Store) -> Store:
    """The session's SeaweedFS (in the store suite: the store of the test's kind)."""
    return seaweedfs_store


@pytest.fixture()
def make_bucket(store: Any) -> Callable[..., str]:
    """A factory: make_bucket(cors_rules=None, prefix="t") creates a new, uniquely named bucket."""

    def make(cors_rules: list[dict[str, Any]] | None = None, prefix: str = "t") -> str:
        name = f"{prefix}-{os.getpid()}-{next(_bucket_numbers)}"
        return store.ensure_bucket(name, cors_rules)

    return make


@dataclass
class Live:
    """The running broker: its URL, the store behind it, and the files it uses."""

    url: str
    store: Any
    broker: Any
    s3: Any
    rules_path: Path
    audit_path: Path
    bucket: str = "broker-uploads"

    def audit_records(self) -> list[dict[str, Any]]:
        """Every audit line written so far, parsed."""
        return [json.loads(line) for line in self.audit_path.read_text().splitlines() if line]

    def objects(self, prefix: str = "") -> dict[str, int]:
        """Keys and sizes currently stored in the bucket under prefix."""
        out: dict[str, int] = {}
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                out[obj["Key"]] = obj["Size"]
        return out


def write_rules(path: Path, extra_origins: list[str], base: Path = ROOT / "rules.yaml") -> dict[str, Any]:
    """Copy the example rules to ``path``, adding CORS origins; returns the parsed document."""
    doc = yaml.safe_load(base.read_text())
    origins = doc.setdefault("cors", {}).setdefault("allowed_origins", [])
    origins.extend(o for o in extra_origins if o not in origins)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return doc


def _live_on(store: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    from broker.adapters.wsgi import ServerThread, WsgiApp
    from broker.service import build
    from broker.config import Settings

    work = tmp_path_factory.mktemp("live")
    rules_path, audit_path = work / "rules.yaml", work / "audit.jsonl"
    write_rules(rules_path, [])
    s3 = store.s3_client()
    settings = Settings(rules=str(rules_path), rules_reload_seconds=0.5, audit_file=str(audit_path),
                        s3_endpoint_url=store.endpoint_url, s3_addressing_style="path")
    broker = build(settings, s3_client=s3, audit_stream=None)
    server = ServerThread(WsgiApp(broker), "127.0.0.1", 0)
    doc = write_rules(rules_path, [server.url, server.url.replace("127.0.0.1", "localhost")])
    broker.rules.refresh()
    store.ensure_bucket("broker-uploads", upload_cors_rules(doc["cors"]["allowed_origins"]))
    try:
        yield Live(server.url, store, broker, s3, rules_path, audit_path)
    finally:
        server.close()


@pytest.fixture(scope="session")
def seaweedfs_live(seaweedfs_store: Store, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """The broker's HTTP server against the session's SeaweedFS."""
    yield from _live_on(seaweedfs_store, tmp_path_factory)


@pytest.fixture(scope="session")
def rgw_live(rgw_store: Rgw, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """The broker's HTTP server against the session's Ceph RGW."""
    yield from _live_on(rgw_store, tmp_path_factory)


@pytest.fixture(scope="session")
def live(seaweedfs_live: Live) -> Live:
    """The broker's HTTP server against the real store (SeaweedFS), for end-to-end and browser tests."""
    return seaweedfs_live


@dataclass
class Verifying:
    """A second local stack whose store posts every new object to the broker's verifier (as make run does)."""

    url: str
    store: Any
    broker: Any
    s3: Any
    audit_path: Path
    rules_path: Path
    bucket: str = "broker-uploads"
    #: The route the store's events arrive at, and the ``source`` of the verdicts they bring.
    events_path: str = "/events/seaweedfs"
    events_source: str = "seaweedfs-webhook"

    def verifications(self, key: str | None = None) -> list[dict[str, Any]]:
        """The verification audit lines written so far (for one key, if given)."""
        lines = [json.loads(line) for line in self.audit_path.read_text().splitlines() if line]
        return [r for r in lines if r.get("event") == "verification" and (key is None or r.get("key") == key)]

    def wait_for_verdict(self, key: str, timeout: float = 20.0) -> dict[str, Any]:
        """The verification line for ``key``, once the store's event has reached the verifier."""
        import time

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.verifications(key)
            if found:
                return found[-1]
            time.sleep(0.1)
        raise AssertionError(f"no verification of {key} within {timeout} s; lines: {self.verifications()}")

    def exists(self, key: str) -> bool:
        """Whether ``key`` is stored now."""
        return self.s3.list_objects_v2(Bucket=self.bucket, Prefix=key).get("KeyCount", 0) > 0

    def settled(self, key: str, timeout: float = 20.0) -> bool:
        """Whether ``key`` is stored, once the verifier is done with it (the line is written before it acts)."""
        import time

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.exists(key):
                return False
            try:
                tags = self.s3.get_object_tagging(Bucket=self.bucket, Key=key)["TagSet"]
            except self.s3.exceptions.NoSuchKey:
                continue  # moved away between the two reads: the next look says so
            if any(t["Key"] == "broker-verdict" for t in tags):
                return True
            time.sleep(0.1)
        return self.exists(key)


EVENTS_TOKEN = "e" * 40


def _verifying_broker(work: Path, endpoint_url: str, s3: Any,
                      kind: str = "seaweedfs") -> tuple[Any, Any, dict[str, Any]]:
    """(broker, its server, its rules document): events token, SQLite ledger, videos up to 6 MiB. On RGW,
    avatars set no Cache-Control nor Content-Disposition: RGW 16.2 drops both from every POST form, so the
    verifier would reject every avatar (tests/e2e/test_verification.py states it)."""
    from broker.adapters.wsgi import ServerThread, WsgiApp
    from broker.config import Settings
    from broker.service import build

    rules_path = work / "rules.yaml"
    doc = write_rules(rules_path, [])
    for rule in doc["clients"]["web-app"]["rules"]:
        if rule["name"] == "videos":
            rule["max_bytes"] = 6 * 1024 * 1024
        if rule["name"] == "avatars" and kind == "rgw":
            rule.pop("cache_control", None)
            rule.pop("content_disposition", None)
    rules_path.write_text(yaml.safe_dump(doc, sort_keys=False))
    settings = Settings(rules=str(rules_path), rules_reload_seconds=0.5, audit_file=str(work / "audit.jsonl"),
                        s3_endpoint_url=endpoint_url, s3_addressing_style="path",
                        grant_secret="g" * 32, events_token=EVENTS_TOKEN,
                        ledger=f"sqlite:///{work / 'ledger.db'}")  # as make run: a SQLite ledger
    broker = build(settings, s3_client=s3, audit_stream=None)
    return broker, ServerThread(WsgiApp(broker), "127.0.0.1", 0), doc


def _with_origins(work: Path, broker: Any, server: Any, doc: dict[str, Any]) -> list[str]:
    origins = [server.url, server.url.replace("127.0.0.1", "localhost")]
    doc["cors"]["allowed_origins"].extend(origins)
    (work / "rules.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    broker.rules.refresh()
    return list(doc["cors"]["allowed_origins"])


@pytest.fixture(scope="session")
def seaweedfs_verifying(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Verifying]:
    """Broker + its own SeaweedFS whose webhook posts to the broker, and a SQLite grant ledger (as make run)."""
    from broker.dev.store import Webhook

    work = tmp_path_factory.mktemp("verifying")
    for attempt in range(3):
        s3_port, base_port = pick_free_ports()
        config = StoreConfig.generate(work / f"store-{attempt}", s3_port=s3_port, base_port=base_port)
        s3 = Store(config).s3_client()
        broker, server, doc = _verifying_broker(work, config.endpoint_url, s3)
        # Events for web-app's uploads only: partner-acme's prefix stands for objects no event reaches.
        running = Store(config, webhook=Webhook(f"{server.url}/events/seaweedfs", EVENTS_TOKEN,
                                                ("/buckets/broker-uploads/uploads/",)))
        try:
            running.start(timeout=30)
            break
        except StoreError as exc:
            server.close()
            if "already in use" not in str(exc) or attempt == 2:
                raise
    running.ensure_bucket("broker-uploads", upload_cors_rules(_with_origins(work, broker, server, doc)))
    try:
        yield Verifying(server.url, running, broker, s3, work / "audit.jsonl", work / "rules.yaml")
    finally:
        server.close()
        running.stop()


@pytest.fixture(scope="session")
def rgw_verifying(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Verifying]:
    """Broker + its own Ceph RGW whose bucket notifications post to the broker (``/events/s3``), and a
    SQLite grant ledger. A cluster of its own: notifications are per bucket, and ``live``'s
    ``broker-uploads`` must not reach a verifier."""
    work = tmp_path_factory.mktemp("verifying-rgw")
    running = _started("rgw (verifying)", lambda: start_rgw(work / "rgw"))
    try:
        s3 = running.s3_client()
        broker, server, doc = _verifying_broker(work, running.endpoint_url, s3, "rgw")
        try:
            running.ensure_bucket("broker-uploads", upload_cors_rules(_with_origins(work, broker, server, doc)))
            # Events for web-app's uploads only: partner-acme's prefix stands for objects no event reaches.
            running.notify("broker-uploads", f"{server.url}/events/s3?token={EVENTS_TOKEN}", ("uploads/",))
            yield Verifying(server.url, running, broker, s3, work / "audit.jsonl", work / "rules.yaml",
                            events_path="/events/s3", events_source="s3-notification")
        finally:
            server.close()
    finally:
        running.stop()


@pytest.fixture(scope="session")
def verifying(seaweedfs_verifying: Verifying) -> Verifying:
    """A stack whose store (SeaweedFS) sends each new object's event to the broker's verifier (as make run);
    ``videos`` limited to 6 MiB (fast multipart)."""
    return seaweedfs_verifying
