"""Shared fixtures: the example rules, a moto-backed S3 client, a broker with a fixed clock."""
from __future__ import annotations

import io
import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import pytest

pytest_plugins = ["tests.stack", "tests.ci_skips"]

#: Test tiers as markers (``make test`` runs them all; ``make test-fast`` none of them):
#: ``store`` needs a real store (SeaweedFS; Ceph RGW too in tests.stack.STORE_SUITE), ``browser`` a real
#: Chromium, ``soak`` is the reliability suite (fuzzers, adversarial inputs, faults, load; its sizes scale
#: with RELIABILITY_SCALE).
STORE_FIXTURES = frozenset({"store", "live", "make_bucket", "verifying", "store_kind"})
#: Modules that start SeaweedFS themselves (through ``make run`` or their own ``Store``).
STARTS_A_STORE = ("tests/dev/test_run_e2e.py", "tests/dev/test_store.py")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test with its tier, from the fixtures it uses and where it lives."""
    for item in items:
        path = Path(str(item.fspath)).resolve().relative_to(ROOT).as_posix()
        if STORE_FIXTURES & set(getattr(item, "fixturenames", ())) or path.startswith(STARTS_A_STORE):
            item.add_marker(pytest.mark.store)
        if path.startswith("tests/browser/"):
            item.add_marker(pytest.mark.browser)
            item.add_marker(pytest.mark.store)
        if path.startswith("tests/reliability/"):
            item.add_marker(pytest.mark.soak)

ROOT = Path(__file__).resolve().parent.parent
NOW = datetime(2026, 11, 28, 14, 49, 31, tzinfo=timezone.utc)
WEB_KEY = "demo-web-app-key"
ACME_KEY = "demo-partner-acme-key"

os.environ.setdefault("AWS_ACCESS_KEY_ID", "AKIDTESTTESTTEST")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "test-secret-key-never-logged")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")


@pytest.fixture(scope="session")
def rules_text() -> str:
    return (ROOT / "rules.yaml").read_text()


@pytest.fixture(scope="session")
def ruleset(rules_text: str) -> Any:
    from broker.config import load_rules

    return load_rules(rules_text, source="rules.yaml")


@pytest.fixture
def s3_client() -> Iterator[Any]:
    import boto3
    from botocore.config import Config
    from moto import mock_aws

    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1",
                              config=Config(signature_version="s3v4"))
        client.create_bucket(Bucket="broker-uploads")
        yield client


class Ids:
    """Deterministic random ids for tests that need to predict keys."""

    def __init__(self) -> None:
        self.n = 0

    def __call__(self) -> str:
        self.n += 1
        return f"{self.n:032x}"


@pytest.fixture
def audit_stream() -> io.StringIO:
    return io.StringIO()


def audit_lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


@pytest.fixture
def make_broker(rules_text: str, s3_client: Any, audit_stream: io.StringIO) -> Any:
    from broker.service import assemble
    from broker.audit import AuditLog
    from broker.s3.store import S3Store
    from broker.config.sources import RulesProvider, StaticSource

    def make(text: str | None = None, **kwargs: Any) -> Any:
        provider = RulesProvider(StaticSource(text or rules_text), reload_seconds=3600)
        provider.refresh()
        return assemble(provider, S3Store(s3_client), AuditLog(stream=audit_stream),
                        clock=kwargs.pop("clock", lambda: NOW), new_id=kwargs.pop("new_id", Ids()), **kwargs)

    return make


@pytest.fixture
def broker(make_broker: Any) -> Any:
    return make_broker()


def post_json(broker: Any, path: str, body: Any, *, api_key: str | None = WEB_KEY,
              headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any], dict[str, str]]:
    """POST a JSON body through Broker.handle; returns (status, json body, headers)."""
    from broker.web import HttpRequest

    hdrs = {"content-type": "application/json", **(headers or {})}
    if api_key:
        hdrs["x-api-key"] = api_key
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    resp = broker.handle(HttpRequest("POST", path, hdrs, {}, raw, "203.0.113.9", "req-1"))
    return resp.status, json.loads(resp.body) if resp.body else {}, resp.headers
