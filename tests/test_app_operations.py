"""What operators read: who and under which rules in each audit line, request ids in every error,
``/health`` that fails when the rules in force are not the latest, the OpenAPI document, 405's Allow."""
from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from broker.adapters import apigw
from broker.app import with_request_id
from broker.config import schemas
from broker.web import HttpRequest, HttpResponse
from tests.conftest import ACME_KEY, NOW, ROOT, WEB_KEY, audit_lines, post_json

AVATAR = {"filename": "me.png", "content_type": "image/png", "size": 1200, "profile": "avatars"}
EVENTS = ROOT / "tests" / "events"


def event(name: str) -> dict[str, Any]:
    return json.loads((EVENTS / f"{name}.json").read_text())


class LambdaContext:
    aws_request_id = "8f5e0c1a-1111-4222-8333-944455556666"


# --------------------------------------------------------------------------- the audit line


def test_audit_line_names_the_key_the_rules_and_the_origin(broker: Any, audit_stream: io.StringIO) -> None:
    status, _, _ = post_json(broker, "/uploads", AVATAR, headers={"origin": "http://localhost:8000"})
    assert status == 200
    (rec,) = audit_lines(audit_stream)
    schemas.validator("audit").validate(rec)
    stored = hashlib.sha256(WEB_KEY.encode()).hexdigest()
    assert rec["key_fingerprint"] == stored[:8]  # find the key in rules.yaml by its first 8 characters
    assert rec["rules"] == broker.rules.current().digest
    assert rec["origin"] == "http://localhost:8000"
    assert "lambda_request_id" not in rec and "principal" not in rec  # not on Lambda; an API key, no authorizer
    line = audit_stream.getvalue()
    assert WEB_KEY not in line and stored not in line and stored[8:16] not in line  # never the key or its hash


def test_two_keys_of_one_client_are_told_apart(make_broker: Any, rules_text: str, audit_stream: io.StringIO) -> None:
    second = hashlib.sha256(b"second-web-app-key").hexdigest()
    first = hashlib.sha256(WEB_KEY.encode()).hexdigest()
    text = rules_text.replace(f"      - {first}", f"      - {first}\n      - {second}", 1)
    assert second in text
    broker = make_broker(text)
    post_json(broker, "/uploads", AVATAR)
    post_json(broker, "/uploads", AVATAR, api_key="second-web-app-key")
    assert [r["key_fingerprint"] for r in audit_lines(audit_stream)] == [first[:8], second[:8]]


@pytest.mark.parametrize("name, principal, user", [
    pytest.param("apigw-v2-jwt", "group:mobile-users", "0f1e2d3c", id="jwt"),
    pytest.param("apigw-v1-cognito", "group:mobile-users", "7d8ca528-4931-4254-9273-ea5ee853f271", id="cognito"),
    pytest.param("apigw-v1-lambda-authorizer", "principal:partner-gateway", None, id="lambda-authorizer"),
])
def test_authorizer_callers_are_named(broker: Any, audit_stream: io.StringIO, name: str, principal: str,
                                      user: str | None) -> None:
    answer = apigw.handle(broker, event(name), LambdaContext())
    assert answer["statusCode"] == 200, answer["body"]
    (rec,) = audit_lines(audit_stream)
    schemas.validator("audit").validate(rec)
    assert rec["principal"] == principal and rec.get("user") == user
    assert rec["lambda_request_id"] == LambdaContext.aws_request_id != rec["request_id"]
    assert rec["rules"] == broker.rules.current().digest and "key_fingerprint" not in rec


def test_session_callers_are_named_by_their_user(broker: Any, audit_stream: io.StringIO) -> None:
    status, session, _ = post_json(broker, "/sessions", {"user": "alice", "profiles": ["avatars"]})
    assert status == 200, session
    status, _, _ = post_json(broker, "/uploads", AVATAR, api_key=None,
                             headers={"authorization": f"Bearer {session['token']}"})
    assert status == 200
    minted, used = audit_lines(audit_stream)
    assert minted["event"] == "session"
    assert minted["key_fingerprint"] == hashlib.sha256(WEB_KEY.encode()).hexdigest()[:8]
    assert used["user"] == "alice" and used["session"] == minted["session"] and "key_fingerprint" not in used
    assert session["token"] not in audit_stream.getvalue()
    for rec in (minted, used):
        schemas.validator("audit").validate(rec)


def test_a_refused_call_still_names_the_rules_in_force(broker: Any, audit_stream: io.StringIO) -> None:
    post_json(broker, "/uploads", AVATAR, api_key="not-a-key")
    (rec,) = audit_lines(audit_stream)
    assert rec["decision"] == "error" and rec["rules"] == broker.rules.current().digest
    assert "key_fingerprint" not in rec  # an unknown key is not fingerprinted: it may be anything


def test_a_hostile_origin_is_cut_and_kept_on_one_line(broker: Any, audit_stream: io.StringIO) -> None:
    post_json(broker, "/uploads", AVATAR, headers={"origin": "https://x\u2028\n{" + "a" * 1000})
    (line,) = audit_stream.getvalue().splitlines()
    rec = json.loads(line)
    assert len(rec["origin"]) == 256
    schemas.validator("audit").validate(rec)


# --------------------------------------------------------------------------- request ids in errors


@pytest.mark.parametrize("method, path, body, api_key, status", [
    pytest.param("POST", "/uploads", AVATAR, "not-a-key", 401, id="401"),
    pytest.param("POST", "/uploads", {**AVATAR, "size": 12_000_000}, WEB_KEY, 413, id="413-denial"),
    pytest.param("POST", "/uploads", {**AVATAR, "profile": "invoices"}, WEB_KEY, 403, id="403-denial"),
    pytest.param("POST", "/uploads", {"filename": "x.png"}, WEB_KEY, 400, id="400"),
    pytest.param("POST", "/nowhere", {}, WEB_KEY, 404, id="404"),
    pytest.param("GET", "/uploads", b"", WEB_KEY, 405, id="405"),
    pytest.param("POST", "/fineuploader/signature", {"conditions": []}, WEB_KEY, 400, id="fineuploader-400"),
    pytest.param("GET", "/s3/params", b"", ACME_KEY, 403, id="companion-403"),
])
def test_every_error_body_carries_the_audit_lines_request_id(broker: Any, audit_stream: io.StringIO, method: str,
                                                              path: str, body: Any, api_key: str, status: int) -> None:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    resp = broker.handle(HttpRequest(method, path, {"content-type": "application/json", "x-api-key": api_key},
                                     {"filename": ["x.exe"], "type": ["application/x-msdownload"]}, raw,
                                     "203.0.113.9", "req-7"))
    assert resp.status == status, resp.body
    answer = json.loads(resp.body)
    schemas.validator("error").validate(answer)
    assert answer["request_id"] == resp.headers["X-Request-Id"] == "req-7"
    audited = audit_lines(audit_stream)
    assert audited and {r["request_id"] for r in audited} == {"req-7"}


def test_a_drawn_request_id_is_the_same_in_body_header_and_audit(broker: Any, audit_stream: io.StringIO) -> None:
    resp = broker.handle(HttpRequest("POST", "/uploads", {"x-api-key": "nope"}, {}, b"{}"))
    rid = json.loads(resp.body)["request_id"]
    assert len(rid) == 32 and resp.headers["X-Request-Id"] == rid
    (rec,) = audit_lines(audit_stream)
    assert rec["request_id"] == rid


def test_an_unparseable_lambda_event_answers_with_its_request_id(broker: Any, audit_stream: io.StringIO) -> None:
    answer = apigw.handle(broker, {"version": "2.0", "requestContext": {"http": "not an object"}}, LambdaContext())
    body = json.loads(answer["body"])
    assert 400 <= answer["statusCode"] < 500
    assert body["request_id"] == answer["headers"]["X-Request-Id"] == LambdaContext.aws_request_id
    (rec,) = audit_lines(audit_stream)
    assert rec["request_id"] == LambdaContext.aws_request_id


@pytest.mark.parametrize("body, expected", [
    pytest.param(b"{}", {"request_id": "r1"}, id="empty-object"),
    pytest.param(b'{"error":"x"}', {"request_id": "r1", "error": "x"}, id="object"),
    pytest.param(b'{"request_id":"mine","error":"x"}', {"request_id": "mine", "error": "x"}, id="kept"),
])
def test_with_request_id(body: bytes, expected: dict[str, Any]) -> None:
    resp = HttpResponse(400, body, {"Content-Type": "application/json"})
    with_request_id(resp, "r1")
    assert json.loads(resp.body) == expected


def test_with_request_id_leaves_other_bodies_alone() -> None:
    for resp in (HttpResponse(400, b"[1]", {"Content-Type": "application/json"}),
                 HttpResponse(400, b"{not json", {"Content-Type": "text/plain"})):
        before = resp.body
        with_request_id(resp, "r1")
        assert resp.body == before


# --------------------------------------------------------------------------- 405 and Allow


@pytest.mark.parametrize("method, path, allow", [
    pytest.param("GET", "/uploads", "OPTIONS, POST", id="exact"),
    pytest.param("PUT", "/health", "GET, OPTIONS", id="health"),
    pytest.param("DELETE", "/uploads/0123456789abcdef0123456789abcdef", "GET, OPTIONS", id="pattern"),
    pytest.param("PUT", "/s3/multipart/abc", "DELETE, GET, OPTIONS", id="pattern-two-methods"),
])
def test_405_sends_allow(broker: Any, method: str, path: str, allow: str) -> None:
    resp = broker.handle(HttpRequest(method, path, {}, {}, b""))
    assert resp.status == 405
    assert resp.headers["Allow"] == allow
    assert json.loads(resp.body)["allow"] == allow.split(", ")


# --------------------------------------------------------------------------- /health


def _provider(tmp_path: Path, **kwargs: Any) -> Any:
    from broker.config.sources import FileSource, RulesProvider

    rules = tmp_path / "rules.yaml"
    rules.write_text((ROOT / "rules.yaml").read_text())
    times = iter(range(10_000))
    return RulesProvider(FileSource(str(rules)), reload_seconds=0, log=lambda *a, **k: None,
                         wall=lambda: NOW.replace(second=next(times) % 60), **kwargs), rules


def _broker(provider: Any, s3_client: Any, audit_stream: io.StringIO) -> Any:
    from broker.audit import AuditLog
    from broker.s3.store import S3Store
    from broker.service import assemble

    return assemble(provider, S3Store(s3_client), AuditLog(stream=audit_stream), clock=lambda: NOW)


def _health(broker: Any) -> tuple[int, dict[str, Any], dict[str, str]]:
    resp = broker.handle(HttpRequest("GET", "/health", {}, {}, b"", None, "hc-1"))
    return resp.status, json.loads(resp.body), resp.headers


def test_health_fails_while_the_latest_rules_are_not_in_force(tmp_path: Path, s3_client: Any,
                                                              audit_stream: io.StringIO) -> None:
    provider, rules = _provider(tmp_path)
    broker = _broker(provider, s3_client, audit_stream)
    status, body, _ = _health(broker)
    good = body["rules"]
    assert status == 200 and body == {"status": "ok", "rules": good, "loaded_at": "2026-11-28T14:49:00Z",
                                      "reload_error": None, "failing_since": None, "failed_reloads": 0}
    rules.write_text("clients: [unclosed\n")  # an operator's broken push
    status, body, headers = _health(broker)
    assert status == 503, body
    assert body["status"] == "degraded" and body["error"] == "rules_stale"
    assert body["rules"] == good and body["reload_error"] == "rules_invalid"
    assert body["failing_since"] == "2026-11-28T14:49:01Z" and body["failed_reloads"] == 1
    assert body["request_id"] == headers["X-Request-Id"] == "hc-1"
    schemas.validator("error").validate(body)
    assert "unclosed" not in json.dumps(body) and str(rules) not in json.dumps(body)  # words and place: the log's
    assert post_json(broker, "/uploads", AVATAR)[0] == 200  # uploads go on under the last good rules
    status, body, _ = _health(broker)
    assert (status, body["failing_since"], body["failed_reloads"]) == (503, "2026-11-28T14:49:01Z", 3)
    rules.write_text((ROOT / "rules.yaml").read_text().replace("max_bytes: 5 MiB", "max_bytes: 4 MiB", 1))
    status, body, _ = _health(broker)
    assert status == 200 and body["rules"] != good and body["reload_error"] is None and body["failed_reloads"] == 0


def test_health_recovers_when_the_source_answers_with_the_rules_in_force(tmp_path: Path, s3_client: Any,
                                                                         audit_stream: io.StringIO) -> None:
    """A source that was briefly unreachable and then says "unchanged" holds what is in force: ok again."""
    from broker.config.sources import RulesProvider, StaticSource
    from broker.errors import StoreUnavailable

    class Flaky(StaticSource):
        down = False

        def fetch(self, token: Any) -> Any:
            if self.down:
                raise StoreUnavailable("cannot reach S3")
            return super().fetch(token)

    source = Flaky((ROOT / "rules.yaml").read_text())
    provider = RulesProvider(source, reload_seconds=0, log=lambda *a, **k: None)
    broker = _broker(provider, s3_client, audit_stream)
    assert _health(broker)[0] == 200
    source.down = True
    status, body, _ = _health(broker)
    assert (status, body["reload_error"]) == (503, "service_unavailable")
    source.down = False
    assert _health(broker)[0] == 200


def test_health_without_any_rules_is_unavailable(tmp_path: Path, s3_client: Any, audit_stream: io.StringIO) -> None:
    provider, rules = _provider(tmp_path)
    rules.write_text("")
    status, body, headers = _health(_broker(provider, s3_client, audit_stream))
    assert status == 503 and body["status"] == "unavailable" and body["error"] == "rules_unavailable"
    assert body["rules"] is None and body["request_id"] == headers["X-Request-Id"]
    schemas.validator("error").validate(body)


def test_health_costs_no_source_read_between_checks(s3_client: Any, audit_stream: io.StringIO) -> None:
    from broker.config.sources import RulesProvider, StaticSource

    class Counting(StaticSource):
        fetches = 0

        def fetch(self, token: Any) -> Any:
            Counting.fetches += 1
            return super().fetch(token)

    provider = RulesProvider(Counting((ROOT / "rules.yaml").read_text()), reload_seconds=3600)
    broker = _broker(provider, s3_client, audit_stream)
    for _ in range(50):
        assert _health(broker)[0] == 200
    assert Counting.fetches == 1


# --------------------------------------------------------------------------- GET /openapi.yaml


def test_openapi_is_served_as_it_ships(broker: Any) -> None:
    resp = broker.handle(HttpRequest("GET", "/openapi.yaml"))
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "application/yaml"
    assert resp.body == (ROOT / "schemas" / "openapi.yaml").read_bytes()
    assert yaml.safe_load(resp.body)["openapi"].startswith("3.")


def test_openapi_describes_every_route_and_no_other(broker: Any) -> None:
    doc = yaml.safe_load((ROOT / "schemas" / "openapi.yaml").read_text())
    documented = {(method.upper(), path) for path, ops in doc["paths"].items() for method in ops
                  if method in ("get", "post", "put", "delete", "patch")}
    routed = set(broker.router.routes())
    assert routed, "no routes: the comparison would prove nothing"
    assert routed - documented == set(), "routes missing from schemas/openapi.yaml"
    assert documented - routed == set(), "schemas/openapi.yaml describes routes the broker does not serve"


# --------------------------------------------------------------------------- operational log lines


def test_log_lines_say_when(capsys: Any) -> None:
    from datetime import datetime, timezone

    from broker.logs import log_event
    from broker.timefmt import parse_iso_z

    before = datetime.now(timezone.utc).replace(microsecond=0)
    log_event("something_happened", detail=1)
    line = json.loads(capsys.readouterr().err)
    assert list(line)[:3] == ["time", "level", "event"]
    when = line["time"]
    assert len(when) == 24 and when.endswith("Z") and when[19] == "."
    assert before <= parse_iso_z(when[:19] + "Z") <= datetime.now(timezone.utc)
