"""Hypothesis on Lambda event parsing: every event shape, mutated at random, through the whole path.

Starting from each sample under ``tests/events/`` (API Gateway REST v1, HTTP API v2, Function
URL, REST non-proxy passthrough and bare body), Hypothesis replaces, deletes or retypes any
part of the event (headers, body, base64 flag, method, path, authorizer claims, ...). Then:

- ``apigw.to_request`` returns a request or raises ``InvalidRequest``, nothing else;
- ``apigw.handle`` never raises, never answers >= 500, and answers in the event's own shape
  with a body matching its schema;
- every grant is within the caller's rule (decoded policy), and every refusal or grant has
  exactly one valid audit line.
"""
from __future__ import annotations

import base64
import copy
import io
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.config import schemas
from broker.adapters import apigw
from broker.core.rules import api_key_hash
from broker.errors import BrokerError, InvalidRequest
from broker.models import Credentials
from broker.core.rules import identify
from reliability.oracle import body_violations, grant_violations
from tests.conftest import ROOT, audit_lines
from tests.reliability.conftest import fuzz_settings
from tests.reliability.test_fuzz_api import API_KEYS, plausible_uploads

SAMPLES = sorted((ROOT / "tests" / "events").glob("*.json"))
#: Generated events per sample file (scaled by RELIABILITY_SCALE).
EVENT_EXAMPLES = 80

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)
#: Where events carry what the broker reads; a mutation targets one of these (or any top key).
PATHS = [
    ("headers",), ("headers", "x-api-key"), ("headers", "X-Api-Key"), ("headers", "content-type"),
    ("headers", "origin"), ("multiValueHeaders",), ("multiValueHeaders", "x-api-key"),
    ("body",), ("isBase64Encoded",), ("httpMethod",), ("path",), ("rawPath",), ("version",),
    ("queryStringParameters",), ("multiValueQueryStringParameters",),
    ("requestContext",), ("requestContext", "http"), ("requestContext", "http", "method"),
    ("requestContext", "http", "sourceIp"), ("requestContext", "stage"), ("requestContext", "domainName"),
    ("requestContext", "requestId"), ("requestContext", "identity"),
    ("requestContext", "authorizer"), ("requestContext", "authorizer", "principalId"),
    ("requestContext", "authorizer", "claims"), ("requestContext", "authorizer", "claims", "cognito:groups"),
    ("requestContext", "authorizer", "jwt", "claims", "cognito:groups"),
    ("requestContext", "authorizer", "lambda"),
    ("body-json",), ("params",), ("params", "header"), ("params", "header", "x-api-key"),
    ("context",), ("context", "authorizer-principal-id"),
    ("filename",), ("content_type",), ("size",), ("profile",),
]
SPECIAL_VALUES = st.sampled_from([
    "POST", "GET", "OPTIONS", "post", "/uploads", "/health", "/live/uploads", "$default", "live",
    "mobile-users", "[mobile-users]", ["mobile-users"],
    "application/json", "text/plain", "x.lambda-url.eu-west-1.on.aws", "2.0", "1.0", True, False,
    "!!!not base64", base64.b64encode(b'{"filename":"a.png","content_type":"image/png"}').decode(),
    base64.b64encode(b"\xff\xfe").decode(), "", None, [], {}, 0, -1, 10**30,
])


def _set(event: dict[str, Any], path: tuple[str, ...], value: Any, delete: bool) -> None:
    node: Any = event
    for part in path[:-1]:
        if not isinstance(node, dict):
            return
        node = node.setdefault(part, {})
    if isinstance(node, dict):
        if delete:
            node.pop(path[-1], None)
        else:
            node[path[-1]] = value


@st.composite
def mutated_events(draw: Any, base: dict[str, Any], ruleset: Any) -> Any:
    """A sample event with a few parts replaced, deleted or retyped; sometimes a new body."""
    event = copy.deepcopy(base)
    if draw(st.integers(0, 2)) == 0:  # a plausible upload request in the event's own place for it
        api_key, body = draw(plausible_uploads(ruleset))
        if "body-json" in event:
            event["body-json"] = body
            _set(event, ("params", "header", "x-api-key"), api_key, api_key is None)
        elif "requestContext" in event:
            event["body"] = json.dumps(body)
            event["isBase64Encoded"] = False
            _set(event, ("headers", "x-api-key"), api_key, api_key is None)
        else:
            event = body
    for _ in range(draw(st.integers(0, 3))):
        keys = [(k,) for k in event] if isinstance(event, dict) else []
        path = draw(st.sampled_from(PATHS + keys))
        # API keys go where credentials go: a 400 names the offending value of any other field
        # (truncated), so a key sent as, say, the body would be in the audit line by design.
        value = draw(st.one_of(JSON_VALUES, SPECIAL_VALUES, *(
            [API_KEYS] if str(path[-1]).lower() == "x-api-key" else [])))
        if isinstance(event, dict):
            _set(event, path, value, delete=draw(st.integers(0, 4)) == 0)
    if draw(st.integers(0, 30)) == 0:  # not even an object
        event = draw(JSON_VALUES)
    return event


def _caller(ruleset: Any, request: Any) -> Any:
    api_key = request.header("x-api-key")
    try:
        return identify(ruleset, Credentials(api_key_hash(api_key) if api_key else None, request.principals))
    except BrokerError:
        return None


@pytest.fixture(scope="module")
def event_broker(rules_text: str, watch: Any) -> tuple[Any, io.StringIO]:
    """One broker for every event test: signing needs no store, so a plain boto3 client does."""
    import boto3
    from botocore.config import Config

    from broker.service import assemble
    from broker.audit import AuditLog
    from broker.s3.store import S3Store
    from broker.config.sources import RulesProvider, StaticSource

    provider = RulesProvider(StaticSource(rules_text), reload_seconds=3600)
    provider.refresh()
    s3 = boto3.client("s3", region_name="us-east-1", config=Config(signature_version="s3v4"))
    stream = io.StringIO()
    watch.streams.append(("event_broker audit stream", stream))
    return assemble(provider, S3Store(s3), AuditLog(stream=stream)), stream


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda p: p.stem)
def test_mutated_events(sample: Path, event_broker: tuple[Any, io.StringIO], ruleset: Any, watch: Any) -> None:
    broker, audit_stream = event_broker
    base = json.loads(sample.read_text())

    @given(event=mutated_events(base, ruleset))
    @fuzz_settings(EVENT_EXAMPLES)
    def exchange(event: Any) -> None:
        watch.count("fuzz: generated Lambda events")
        try:
            request, kind = apigw.to_request(copy.deepcopy(event))
        except InvalidRequest:
            request, kind = None, apigw.kind_of(event)
        lines_before = len(audit_stream.getvalue().splitlines())
        result = apigw.handle(broker, event)
        new_lines = audit_lines(audit_stream)[lines_before:]
        assert isinstance(result, dict)
        if kind in ("passthrough", "non-proxy"):
            status = result.get("status", 200)
            body = json.dumps(result).encode()
        else:
            status, body = result["statusCode"], result["body"].encode()
            assert isinstance(result["headers"], dict)
            assert all(isinstance(k, str) and isinstance(v, str) for k, v in result["headers"].items())
        assert isinstance(status, int) and status < 500, result
        assert body_violations(status, body, grant_schema=None) == [], result
        doc = json.loads(body) if body else {}
        granted = status == 200 and isinstance(doc, dict) and "fields" in doc
        if granted:
            assert request is not None
            assert body_violations(200, json.dumps({k: v for k, v in doc.items() if k != "status"}).encode()) == []
            asked = json.loads(request.body) if request.body else {}
            problems = grant_violations(ruleset, _caller(ruleset, request), asked if isinstance(asked, dict)
                                        else {}, doc, now=datetime.now(timezone.utc))
            assert problems == [], problems
            watch.count("fuzz: grants from Lambda events checked against the rules")
        if granted or status >= 400:
            assert len(new_lines) == 1, new_lines
            assert list(schemas.validator("audit").iter_errors(new_lines[0])) == [], new_lines[0]
            assert new_lines[0]["status"] == status and (("key" in new_lines[0]) == granted)
        else:
            assert len(new_lines) <= 1

    exchange()


@given(event=st.one_of(JSON_VALUES, st.dictionaries(st.sampled_from([p[0] for p in PATHS]), JSON_VALUES)))
@fuzz_settings(200)
def test_to_request_returns_a_request_or_invalid_request(event: Any, watch: Any) -> None:
    """Any JSON value at all: a request, or the broker's own 400, never another exception."""
    watch.count("fuzz: generated Lambda events")
    try:
        request, kind = apigw.to_request(event)
    except InvalidRequest as exc:
        assert exc.status == 400
        return
    assert kind in ("v1", "v2", "function-url", "passthrough", "non-proxy")
    assert isinstance(request.body, bytes) and isinstance(request.path, str)
