"""Pytest fixtures for the real local stack: SeaweedFS + the broker's HTTP server.

Registered from ``tests/conftest.py``; any test under ``tests/`` can ask for:

- ``store``: a SeaweedFS ``weed mini`` on free ports (session)
- ``make_bucket``: a factory making new uniquely named buckets in that store
- ``live``: the broker served over HTTP (waitress, in a thread) against that store, with
  the example ``rules.yaml`` (its CORS origins plus the server's own origin), bucket
  ``broker-uploads`` created with CORS from the rules, and a JSON Lines audit file.
"""
from __future__ import annotations

import itertools
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from broker.dev.store import Store, StoreConfig, StoreError, pick_free_ports, upload_cors_rules

ROOT = Path(__file__).resolve().parent.parent
_bucket_numbers = itertools.count(1)


@pytest.fixture(scope="session")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    """A SeaweedFS store running for the whole session on free ports, in a fresh directory."""
    for attempt in range(3):  # free ports can be taken by another process between pick and bind
        data_dir = tmp_path_factory.mktemp("store")
        s3_port, base_port = pick_free_ports()
        running = Store(StoreConfig.generate(data_dir, s3_port=s3_port, base_port=base_port))
        try:
            running.start(timeout=30)
            break
        except StoreError as exc:
            if "already in use" not in str(exc) or attempt == 2:
                raise
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture()
def make_bucket(store: Store) -> Callable[..., str]:
    """A factory: make_bucket(cors_rules=None, prefix="t") creates a new, uniquely named bucket."""

    def make(cors_rules: list[dict[str, Any]] | None = None, prefix: str = "t") -> str:
        name = f"{prefix}-{os.getpid()}-{next(_bucket_numbers)}"
        return store.ensure_bucket(name, cors_rules)

    return make


@dataclass
class Live:
    """The running broker: its URL, the store behind it, and the files it uses."""

    url: str
    store: Store
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


@pytest.fixture(scope="session")
def live(store: Store, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """The broker's HTTP server against the real store, for end-to-end and browser tests."""
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


@dataclass
class Verifying:
    """A second local stack whose store posts every new object to the broker's verifier (as make run does)."""

    url: str
    store: Store
    broker: Any
    s3: Any
    audit_path: Path
    rules_path: Path
    bucket: str = "broker-uploads"

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


@pytest.fixture(scope="session")
def verifying(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Verifying]:
    """Broker + SeaweedFS with its webhook pointed at the broker and a SQLite grant ledger (as make run);
    ``videos`` limited to 6 MiB (fast multipart)."""
    from broker.adapters.wsgi import ServerThread, WsgiApp
    from broker.config import Settings
    from broker.dev.store import Webhook
    from broker.service import build

    work = tmp_path_factory.mktemp("verifying")
    rules_path, audit_path = work / "rules.yaml", work / "audit.jsonl"
    doc = write_rules(rules_path, [])
    for rule in doc["clients"]["web-app"]["rules"]:
        if rule["name"] == "videos":
            rule["max_bytes"] = 6 * 1024 * 1024
    rules_path.write_text(yaml.safe_dump(doc, sort_keys=False))
    token = "e" * 40
    for attempt in range(3):
        s3_port, base_port = pick_free_ports()
        config = StoreConfig.generate(work / f"store-{attempt}", s3_port=s3_port, base_port=base_port)
        s3 = Store(config).s3_client()
        settings = Settings(rules=str(rules_path), rules_reload_seconds=0.5, audit_file=str(audit_path),
                            s3_endpoint_url=config.endpoint_url, s3_addressing_style="path",
                            grant_secret="g" * 32, events_token=token,
                            ledger=f"sqlite:///{work / 'ledger.db'}")  # as make run: a SQLite ledger
        broker = build(settings, s3_client=s3, audit_stream=None)
        server = ServerThread(WsgiApp(broker), "127.0.0.1", 0)
        # Events for web-app's uploads only: partner-acme's prefix stands for objects no event reaches.
        running = Store(config, webhook=Webhook(f"{server.url}/events/seaweedfs", token,
                                                ("/buckets/broker-uploads/uploads/",)))
        try:
            running.start(timeout=30)
            break
        except StoreError as exc:
            server.close()
            if "already in use" not in str(exc) or attempt == 2:
                raise
    origins = [server.url, server.url.replace("127.0.0.1", "localhost")]
    doc["cors"]["allowed_origins"].extend(origins)
    rules_path.write_text(yaml.safe_dump(doc, sort_keys=False))
    broker.rules.refresh()
    running.ensure_bucket("broker-uploads", upload_cors_rules(doc["cors"]["allowed_origins"]))
    try:
        yield Verifying(server.url, running, broker, s3, audit_path, rules_path)
    finally:
        server.close()
        running.stop()
