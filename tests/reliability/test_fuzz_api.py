"""Property-based fuzzing of the HTTP API over loopback, against this suite's own broker server.

Three generators, every response checked the same way (``check_exchange``):

- schemathesis, from ``schemas/openapi.yaml`` (every operation in it, schema-valid and
  schema-violating requests), with its own checks: no 5xx, documented status codes, content
  types and response schemas;
- a plausible-request generator, close to what real clients send, so that many requests are
  granted and every grant is checked against the rules by decoding its signed policy;
- raw requests: any method, path, headers and body bytes.

Each asserts: no status >= 500, every body JSON matching ``error.schema.json`` (>= 400) or
``upload-response.schema.json`` (200 from ``POST /uploads``), no grant outside the rules, and
exactly one audit line per audited request.
"""
from __future__ import annotations

import json
import string
from collections import Counter
from datetime import datetime, timezone
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import given
from hypothesis import strategies as st
from schemathesis.checks import (content_type_conformance, not_a_server_error,
                                 response_schema_conformance, status_code_conformance)
from schemathesis.generation import GenerationMode

from reliability.oracle import body_violations, client_for_key, grant_violations
from tests.conftest import ACME_KEY, ROOT, WEB_KEY
from tests.reliability.conftest import BOGUS_KEY, examples, fuzz_settings

SCHEMA = schemathesis.openapi.from_path(ROOT / "schemas" / "openapi.yaml")
OPERATIONS = [result.ok() for result in SCHEMA.get_all_operations()]
SCHEMATHESIS_CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
                       response_schema_conformance]
#: Valid keys most of the time, so that most requests get past authentication.
API_KEYS = st.sampled_from([WEB_KEY, WEB_KEY, WEB_KEY, ACME_KEY, ACME_KEY, BOGUS_KEY, None])
#: schemathesis examples over all operations and modes, shared out evenly (scaled by
#: RELIABILITY_SCALE); POST /uploads, the main endpoint, gets a double share.
SCHEMATHESIS_EXAMPLES = 600
PLAUSIBLE_EXAMPLES = 600
RAW_EXAMPLES = 300


class Exchanges:
    """Checks every response of one test and remembers what must be in the audit log."""

    def __init__(self, server: Any, watch: Any, figure: str) -> None:
        self.server = server
        self.watch = watch
        self.figure = figure
        self.statuses: Counter[int] = Counter()
        self.audited: list[str] = []
        self.grants = 0

    def check(self, method: str, path: str, api_key: str | None, asked: Any, status: int,
              headers: Any, body: bytes) -> None:
        """Assert one response is well-formed and within the rules; count it."""
        self.statuses[status] += 1
        self.watch.count(self.figure)
        self.watch.count("fuzz: total generated HTTP requests")
        assert status < 500, (status, body[:300])
        request_id = _header(headers, "x-request-id")
        if status >= 400 and method not in ("HEAD",):
            assert body_violations(status, body) == [], (method, path, body[:300])
        if status >= 400 or (method == "POST" and path == "/uploads"):
            assert request_id, "every audited answer carries X-Request-Id"
            self.audited.append(request_id)
        if status == 200 and method == "POST" and path == "/uploads":
            assert body_violations(status, body) == [], body[:300]
        if status == 200 and method != "HEAD" and body[:1] == b"{":
            doc = json.loads(body)
            if isinstance(doc, dict) and isinstance(doc.get("fields"), dict) and "policy" in doc["fields"]:
                self.grants += 1
                self.watch.count("fuzz: grants checked against the rules")
                self.watch.secret(doc["fields"].get("x-amz-signature"), "a signature the broker issued")
                client = client_for_key(self.server.ruleset, api_key)
                problems = grant_violations(self.server.ruleset, client,
                                            asked if isinstance(asked, dict) else {}, doc,
                                            now=datetime.now(timezone.utc))
                assert problems == [], (asked, problems)

    def assert_audited_once(self) -> None:
        """Every audited request id is in the audit file exactly once, as a valid record."""
        from broker.config import schemas

        records = self.server.audit_records()
        counts = Counter(r["request_id"] for r in records)
        missing = [rid for rid in self.audited if counts[rid] != 1]
        assert missing == [], f"{len(missing)} request ids not audited exactly once: {missing[:5]}"
        validator = schemas.validator("audit")
        mine = set(self.audited)
        for rec in records:
            if rec["request_id"] in mine:
                assert list(validator.iter_errors(rec)) == [], rec


def _header(headers: Any, name: str) -> str | None:
    """One header's value from a requests or schemathesis response (lists of values)."""
    for key, value in dict(headers).items():
        if key.lower() == name:
            return value[0] if isinstance(value, list) else value
    return None


def _set_api_key(headers: Any, api_key: str | None) -> dict[str, Any]:
    out = {k: v for k, v in dict(headers or {}).items() if k.lower() != "x-api-key"}
    if api_key is not None:
        out["x-api-key"] = api_key
    return out


def _has_inputs(operation: Any) -> bool:
    return bool(list(operation.iter_parameters())) or bool(list(operation.body))


#: Negative generation needs something to violate: an operation without inputs has none.
RUNS = [pytest.param(op, mode, id=f"{op.label.replace(' ', '_')}-{mode.value}")
        for op in OPERATIONS for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
        if mode is GenerationMode.POSITIVE or _has_inputs(op)]


def _share(operation: Any) -> int:
    weight = 2 if operation.label == "POST /uploads" else 1
    total = sum(2 if op.label == "POST /uploads" else 1 for op, _ in (p.values for p in RUNS))
    return max(20, SCHEMATHESIS_EXAMPLES * weight // total)


@pytest.mark.parametrize("operation, mode", RUNS)
def test_schemathesis(rel_server: Any, watch: Any, operation: Any, mode: GenerationMode) -> None:
    """Every operation of the OpenAPI document, fuzzed from its schema."""
    session = requests.Session()
    seen = Exchanges(rel_server, watch, "fuzz: schemathesis requests")

    @given(case=operation.as_strategy(generation_mode=mode), api_key=API_KEYS)
    @fuzz_settings(_share(operation))
    def exchange(case: Any, api_key: str | None) -> None:
        case.headers = _set_api_key(case.headers, api_key)
        response = case.call(base_url=rel_server.url, session=session, timeout=15)
        case.validate_response(response, checks=SCHEMATHESIS_CHECKS)
        seen.check(case.method.upper(), case.formatted_path, api_key, case.body, response.status_code,
                   response.headers, response.content)

    exchange()
    session.close()
    seen.assert_audited_once()
    assert seen.statuses, "schemathesis generated nothing"


# --------------------------------------------------------------------------- plausible requests

def _profiles(ruleset: Any) -> list[str]:
    return sorted({name for c in ruleset.clients.values() for name in c.rules}) + ["nope", "Avatars"]


def _content_types(ruleset: Any) -> list[str]:
    from broker.core.mediatypes import EXTENSION_TYPES

    found = {t for c in ruleset.clients.values() for r in c.rules.values() for t in r.content_types}
    found |= {t for types in EXTENSION_TYPES.values() for t in types}
    return sorted(t.replace("*", "mp4") for t in found) + ["text/html", "application/x-msdownload"]


def _extensions() -> list[str]:
    from broker.core.mediatypes import EXTENSION_TYPES

    return sorted(EXTENSION_TYPES) + ["", ".PNG", ".Pdf", ".exe", ".png.exe", ".svg", ".php", "."]


def _sizes(ruleset: Any) -> list[int]:
    edges = {0, 1, 5 * 1000**3, 5 * 1000**3 + 1}
    for c in ruleset.clients.values():
        for r in c.rules.values():
            edges |= {r.min_bytes - 1, r.min_bytes, r.max_bytes, r.max_bytes + 1}
    return sorted(e for e in edges if e >= 0)


def _mixed_case(text: str, mask: int) -> str:
    return "".join(c.upper() if mask >> (i % 60) & 1 else c.lower() for i, c in enumerate(text))


@st.composite
def content_types(draw: Any, allowed: list[str], everything: list[str]) -> str:
    """Mostly a type the rule allows, in any case, with random (sometimes malformed) parameters."""
    base = draw(st.sampled_from(allowed)) if allowed and draw(st.integers(0, 3)) else \
        draw(st.sampled_from(everything))
    if draw(st.integers(0, 2)) == 0:
        base = _mixed_case(base, draw(st.integers(0, 2**60)))
    params = draw(st.lists(st.sampled_from(["charset=utf-8", 'Charset="UTF-8"', "charset=ISO-8859-1",
                                            "x=y", "boundary=abc", " ", "a", "=x", 'x="y']),
                           max_size=2)) if draw(st.integers(0, 2)) == 0 else []
    return "; ".join([base, *params])


@st.composite
def plausible_uploads(draw: Any, ruleset: Any) -> tuple[str | None, dict[str, Any]]:
    """(API key, POST /uploads body) close to what real clients send, often with one thing wrong."""
    from broker.core.mediatypes import EXTENSION_TYPES

    api_key = draw(API_KEYS)
    client = client_for_key(ruleset, api_key)
    rules = list(client.rules.values()) if client else list(
        next(iter(ruleset.clients.values())).rules.values())
    rule = draw(st.sampled_from(rules))
    exts = list(rule.extensions) or [e for e, types in EXTENSION_TYPES.items()
                                      if any(t.split("/")[0] + "/*" in rule.content_types or t in
                                             rule.content_types for t in types)] or [".bin"]
    ext = draw(st.sampled_from(exts)) if draw(st.integers(0, 4)) else draw(st.sampled_from(_extensions()))
    allowed = sorted(t for t in EXTENSION_TYPES.get(ext.lower(), ()) if t in rule.content_types
                     or t.split("/")[0] + "/*" in rule.content_types)
    stem = draw(st.text(alphabet=string.ascii_letters + string.digits + " -_.()éü日本",
                        min_size=1, max_size=30))
    body: dict[str, Any] = {
        "filename": stem + (_mixed_case(ext, draw(st.integers(0, 7))) if draw(st.booleans()) else ext),
        "content_type": draw(content_types(allowed, _content_types(ruleset))),
    }
    if draw(st.booleans()):
        body["size"] = draw(st.integers(rule.min_bytes, rule.max_bytes)) if draw(st.integers(0, 2)) else \
            draw(st.sampled_from(_sizes(ruleset)))
    choice = draw(st.integers(0, 5))
    if choice < 4:
        body["profile"] = rule.name
    elif choice == 4:
        body["profile"] = draw(st.sampled_from(_profiles(ruleset)))
    if rule.client_metadata and draw(st.booleans()):
        body["metadata"] = {draw(st.sampled_from(rule.client_metadata)):
                            draw(st.text(alphabet=string.printable[:-5], max_size=40))}
    elif draw(st.integers(0, 7)) == 0:
        body["metadata"] = {draw(st.sampled_from(["x", "Title", "source", "a" * 70])): "v"}
    if draw(st.integers(0, 11)) == 0:  # a client trying to choose what the broker decides
        body[draw(st.sampled_from(["key", "bucket", "acl", "expires_in", "max_bytes"]))] = "x"
    return api_key, body


def test_plausible_uploads(rel_server: Any, watch: Any) -> None:
    """Near-valid requests: many grants, each decoded and checked against its rule."""
    session = requests.Session()
    seen = Exchanges(rel_server, watch, "fuzz: plausible upload requests")

    @given(req=plausible_uploads(rel_server.ruleset))
    @fuzz_settings(PLAUSIBLE_EXAMPLES)
    def exchange(req: tuple[str | None, dict[str, Any]]) -> None:
        api_key, body = req
        response = session.post(f"{rel_server.url}/uploads", json=body,
                                headers=_set_api_key({}, api_key), timeout=15)
        seen.check("POST", "/uploads", api_key, body, response.status_code, response.headers,
                   response.content)

    exchange()
    session.close()
    seen.assert_audited_once()
    # The generator must really exercise the grant path, not only refusals.
    assert seen.statuses[200] >= examples(PLAUSIBLE_EXAMPLES) // 8, seen.statuses
    assert seen.statuses[403] and seen.statuses[400] and seen.statuses[401], seen.statuses


# --------------------------------------------------------------------------- raw requests

PATHS = ["/uploads", "/health", "/", "/index.html", "/uploads/", "/UPLOADS", "/uploads/../health",
         "/%2e%2e/%2e%2e/etc/passwd", "/..%2f..%2fetc", "/s3/params", "/s3/multipart",
         "/s3/multipart/x/1", "/sign", "/sign/success", "/vendor/../../rules.yaml", "//uploads",
         "/uploads?x=1", "/uploads%00", "/\u202euploads"]


@st.composite
def raw_requests(draw: Any) -> tuple[str, str, dict[str, str], bytes]:
    """Any method, a path from a hostile list, odd headers and arbitrary body bytes."""
    method = draw(st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"]))
    path = draw(st.sampled_from(PATHS))
    headers = {"content-type": draw(st.sampled_from([
        "application/json", "APPLICATION/JSON; charset=utf-8", "text/plain", "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x", "application/vnd.api+json", "", "*/*"]))}
    if draw(st.booleans()):
        headers["origin"] = draw(st.sampled_from(["http://localhost:8000", "https://evil.example", "null"]))
    if draw(st.booleans()):
        body = draw(st.binary(max_size=200))
    else:  # a JSON object with the API's field names (and others), holding values of any type
        body = json.dumps(draw(st.dictionaries(
            st.sampled_from(["filename", "content_type", "size", "profile", "metadata", "key", ""]),
            st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
            | st.lists(st.integers(), max_size=3), max_size=5))).encode()
    return method, path, headers, body


def test_raw_requests(rel_server: Any, watch: Any) -> None:
    """Arbitrary methods, paths and bodies: never a 5xx, always a JSON error for a refusal."""
    session = requests.Session()
    seen = Exchanges(rel_server, watch, "fuzz: raw HTTP requests")

    @given(req=raw_requests(), api_key=API_KEYS)
    @fuzz_settings(RAW_EXAMPLES)
    def exchange(req: tuple[str, str, dict[str, str], bytes], api_key: str | None) -> None:
        method, path, headers, body = req
        response = session.request(method, f"{rel_server.url}{path}", data=body,
                                   headers=_set_api_key(headers, api_key), timeout=15)
        seen.check(method, path.split("?")[0], api_key, None, response.status_code, response.headers,
                   response.content)

    exchange()
    session.close()
    seen.assert_audited_once()
