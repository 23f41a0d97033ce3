"""Helpers for the protocol tests: call Broker.handle with any method, query, headers and body."""
from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlencode

import pytest
import yaml

from tests.conftest import ROOT, WEB_KEY

SECRET = b"g" * 32


class Answer:
    """One response: status, headers and the JSON body."""

    def __init__(self, response: Any) -> None:
        self.status = response.status
        self.headers = response.headers
        self.body = json.loads(response.body) if response.body else None

    def __repr__(self) -> str:
        return f"<{self.status} {self.body}>"


def call(broker: Any, method: str, path: str, body: Any = None, *, api_key: str | None = WEB_KEY,
         headers: dict[str, str] | None = None, query: dict[str, str] | None = None,
         form: dict[str, str] | None = None) -> Answer:
    """Send one request through Broker.handle."""
    from broker.web import HttpRequest

    hdrs = dict(headers or {})
    raw = b""
    if form is not None:
        hdrs["content-type"] = "application/x-www-form-urlencoded"
        raw = urlencode(form).encode()
    elif body is not None:
        hdrs.setdefault("content-type", "application/json")
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    if api_key:
        hdrs["x-api-key"] = api_key
    q = {k: [v] for k, v in (query or {}).items()}
    return Answer(broker.handle(HttpRequest(method, path, hdrs, q, raw, "203.0.113.9", "req-1")))


def rules_with(changes: dict[str, dict[str, Any]]) -> str:
    """The example rules with some of web-app's rules changed (by rule name)."""
    doc = yaml.safe_load((ROOT / "rules.yaml").read_text())
    for rule in doc["clients"]["web-app"]["rules"]:
        rule.update(changes.get(rule["name"], {}))
    return yaml.safe_dump(doc, sort_keys=False)


_ids = itertools.count(1)


def unique_id() -> str:
    """Random ids that never repeat within the test session (the moto store is shared per module)."""
    return f"{next(_ids):032x}"


@pytest.fixture(scope="module")
def s3_client() -> Iterator[Any]:
    """One moto S3 per test module: creating a boto3 client costs ~0.4 s, so not one per test.
    Tests here never reuse a key (``unique_id``) and look only at their own keys."""
    import boto3
    from botocore.config import Config
    from moto import mock_aws

    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1", config=Config(signature_version="s3v4"))
        client.create_bucket(Bucket="broker-uploads")
        yield client


@pytest.fixture
def broker_with(make_broker: Any) -> Callable[..., Any]:
    """A factory: a broker with a known grant secret and web-app's rules changed as given."""

    def make(changes: dict[str, dict[str, Any]] | None = None) -> Any:
        return make_broker(rules_with(changes) if changes else None, grant_secret=SECRET, new_id=unique_id)

    return make


@pytest.fixture
def fu_broker(broker_with: Callable[..., Any]) -> Any:
    """A broker with a known grant secret, so tests can mint tokens of their own."""
    return broker_with()
