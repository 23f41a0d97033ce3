"""Lambda events of every supported shape, from tests/events/, through lambda_handler's path."""
from __future__ import annotations

import base64
import copy
import json
from pathlib import Path
from typing import Any

import pytest

from broker.adapters import apigw
from broker.s3.post import decode_policy
from tests.conftest import audit_lines

EVENTS = Path(__file__).resolve().parents[1] / "events"


def load(name: str) -> dict[str, Any]:
    return json.loads((EVENTS / f"{name}.json").read_text())


def response(result: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    return result["statusCode"], json.loads(result["body"])


@pytest.mark.parametrize("name, kind, client, profile", [
    pytest.param("apigw-v1-proxy", "v1", "web-app", "avatars", id="rest_v1_api_key"),
    pytest.param("apigw-v1-cognito", "v1", "mobile", "photos", id="rest_v1_cognito_group_base64"),
    pytest.param("apigw-v1-lambda-authorizer", "v1", "partner-acme", "invoices", id="rest_v1_lambda_authorizer"),
    pytest.param("apigw-v2-http", "v2", "partner-acme", "invoices", id="http_api_v2_stage_path"),
    pytest.param("apigw-v2-jwt", "v2", "mobile", "photos", id="http_api_v2_jwt"),
    pytest.param("function-url", "function-url", "web-app", "documents", id="function_url"),
])
def test_proxy_events_get_a_grant(broker: Any, audit_stream: Any, name: str, kind: str,
                                  client: str, profile: str) -> None:
    event = load(name)
    assert apigw.kind_of(event) == kind
    status, body = response(apigw.handle(broker, event))
    assert status == 200, body
    assert body["profile"] == profile
    assert body["key"].startswith(("uploads/", "partners/")) and f"/{client}/{profile}/" in body["key"]
    policy = decode_policy(body["fields"]["policy"])
    assert {"key": body["key"]} in policy["conditions"]
    (rec,) = audit_lines(audit_stream)
    assert rec["client"] == client and rec["decision"] == "allowed"
    assert rec["transport"] == f"lambda-{kind}"


def test_request_ids_and_source_ip_reach_the_audit(broker: Any, audit_stream: Any) -> None:
    apigw.handle(broker, load("apigw-v1-proxy"))
    (rec,) = audit_lines(audit_stream)
    assert rec["request_id"] == "c6af9ac6-7b61-11e6-9a41-93e8deadbeef"
    assert rec["source_ip"] == "203.0.113.10"


def test_charset_is_kept_and_normalised(broker: Any) -> None:
    status, body = response(apigw.handle(broker, load("function-url")))
    assert status == 200
    assert body["fields"]["Content-Type"] == "text/plain; charset=utf-8"


def test_cors_headers_for_an_allowed_origin(broker: Any) -> None:
    result = apigw.handle(broker, load("apigw-v1-proxy"))
    assert result["headers"]["Access-Control-Allow-Origin"] == "http://localhost:8000"


def test_cors_headers_absent_for_another_origin(broker: Any) -> None:
    event = load("apigw-v1-proxy")
    event["headers"]["Origin"] = "https://evil.example"
    result = apigw.handle(broker, event)
    assert "Access-Control-Allow-Origin" not in result["headers"]


def test_preflight(broker: Any) -> None:
    result = apigw.handle(broker, load("apigw-v1-options"))
    assert result["statusCode"] == 204
    assert result["headers"]["Access-Control-Allow-Origin"] == "http://localhost:8000"
    assert "POST" in result["headers"]["Access-Control-Allow-Methods"]
    assert "x-api-key" in result["headers"]["Access-Control-Allow-Headers"]


def test_non_proxy_passthrough_template(broker: Any) -> None:
    result = apigw.handle(broker, load("rest-non-proxy-passthrough"))
    assert result["profile"] == "statements" and "fields" in result


def test_non_proxy_body_event_cannot_identify_a_client(broker: Any, audit_stream: Any) -> None:
    result = apigw.handle(broker, load("rest-non-proxy-body"))
    assert result["status"] == 401 and result["error"] == "unauthenticated"
    assert audit_lines(audit_stream)[0]["decision"] == "error"


def _mutate(name: str, path: list[Any], value: Any) -> dict[str, Any]:
    event = copy.deepcopy(load(name))
    target = event
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value
    return event


@pytest.mark.parametrize("event, status, code", [
    pytest.param(_mutate("apigw-v1-proxy", ["body"], "{not json"), 400, "invalid_request", id="body_not_json"),
    pytest.param(_mutate("apigw-v1-proxy", ["body"], "[1, 2]"), 400, "invalid_request", id="body_not_object"),
    pytest.param(_mutate("apigw-v1-proxy", ["body"], 42), 400, "invalid_request", id="body_wrong_type"),
    pytest.param({**_mutate("apigw-v1-proxy", ["body"], "%%%"), "isBase64Encoded": True}, 400,
                 "invalid_request", id="body_bad_base64"),
    pytest.param(_mutate("apigw-v1-proxy", ["headers"], ["x"]), 400, "invalid_request", id="headers_not_object"),
    pytest.param(_mutate("apigw-v1-proxy", ["headers"], {"x-api-key": 7}), 400, "invalid_request", id="header_not_string"),
    pytest.param(_mutate("apigw-v1-proxy", ["body"], "x" * 200_000), 413, "payload_too_large", id="huge_body"),
    pytest.param(_mutate("apigw-v1-proxy", ["headers", "Content-Type"], "text/xml"), 415, "unsupported_media_type", id="xml_body"),
    pytest.param(_mutate("apigw-v1-proxy", ["headers", "x-api-key"], "wrong"), 401, "unauthenticated", id="wrong_key"),
    pytest.param(_mutate("apigw-v1-proxy", ["path"], "/nope"), 404, "not_found", id="unknown_path"),
    pytest.param(_mutate("apigw-v1-proxy", ["httpMethod"], "DELETE"), 405, "method_not_allowed", id="wrong_method"),
    pytest.param(_mutate("apigw-v2-http", ["requestContext", "http"], "POST"), 400, "invalid_request", id="v2_http_not_object"),
    pytest.param(_mutate("apigw-v1-proxy", ["requestContext", "identity"], "x"), 400, "invalid_request",
                 id="v1_identity_not_object"),
])
def test_malformed_events_get_a_4xx_json_error(broker: Any, event: dict[str, Any], status: int, code: str) -> None:
    got_status, body = response(apigw.handle(broker, event))
    assert (got_status, body["error"]) == (status, code), body
    assert body["message"]


@pytest.mark.parametrize("event", [None, [], "string", 42, {"version": "2.0", "requestContext": "x"}],
                         ids=["none", "list", "string", "number", "v2_context_not_object"])
def test_events_that_are_not_objects(broker: Any, event: Any) -> None:
    result = apigw.handle(broker, event)
    body = result if "statusCode" not in result else json.loads(result["body"])
    status = result.get("statusCode", body.get("status"))
    assert 400 <= status < 500 and body["error"] in ("invalid_request", "unauthenticated")


def test_lambda_handler_module(monkeypatch: pytest.MonkeyPatch) -> None:
    """The real entry point builds once at import and answers a sample event."""
    import importlib
    import sys

    from moto import mock_aws

    monkeypatch.setenv("BROKER_RULES", str(Path(__file__).resolve().parents[2] / "rules.yaml"))
    with mock_aws():
        sys.modules.pop("lambda_handler", None)
        module = importlib.import_module("lambda_handler")
        status, body = response(module.handler(load("apigw-v2-http"), None))
    assert status == 200 and body["profile"] == "invoices"


def test_lambda_handler_fails_closed_on_bad_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib
    import sys

    monkeypatch.setenv("BROKER_S3_ADDRESSING_STYLE", "sideways")
    sys.modules.pop("lambda_handler", None)
    module = importlib.import_module("lambda_handler")
    status, body = response(module.handler(load("apigw-v2-http"), None))
    sys.modules.pop("lambda_handler", None)
    assert status == 503 and body["error"] == "service_unavailable"


def test_base64_body_is_decoded(broker: Any) -> None:
    event = load("apigw-v1-proxy")
    event["body"] = base64.b64encode(event["body"].encode()).decode()
    event["isBase64Encoded"] = True
    status, _ = response(apigw.handle(broker, event))
    assert status == 200


@pytest.mark.parametrize("event, expected", [
    pytest.param({"version": "2.0", "rawPath": "/s3/params", "rawQueryString": "filename=a%2Cb.png&type=image%2Fpng",
                  "queryStringParameters": {"filename": "a,b.png", "type": "image/png"},
                  "requestContext": {"http": {"method": "GET"}}},
                 {"filename": ["a,b.png"], "type": ["image/png"]}, id="v2_comma_in_a_value"),
    pytest.param({"version": "2.0", "rawPath": "/s3/params", "rawQueryString": "x=1&x=2",
                  "queryStringParameters": {"x": "1,2"}, "requestContext": {"http": {"method": "GET"}}},
                 {"x": ["1", "2"]}, id="v2_repeated"),
    pytest.param({"httpMethod": "GET", "path": "/s3/params", "requestContext": {},
                  "queryStringParameters": {"filename": "a,b.png"},
                  "multiValueQueryStringParameters": {"filename": ["a,b.png"]}},
                 {"filename": ["a,b.png"]}, id="v1_comma_in_a_value"),
])
def test_query_values_keep_their_commas(event: dict[str, Any], expected: dict[str, list[str]]) -> None:
    request, _ = apigw.to_request(event)
    assert dict(request.query) == expected


def test_lambda_handler_that_cannot_start_is_counted_and_names_each_request(monkeypatch: pytest.MonkeyPatch,
                                                                            capsys: Any) -> None:
    """On Lambda, a failed start writes the StartupFailed count once; each 503 then carries its request
    id (API Gateway's) and is counted as a 5xx, as the broker counts its own."""
    import importlib
    import sys

    monkeypatch.setenv("BROKER_S3_ADDRESSING_STYLE", "sideways")
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "upload-broker-test")
    sys.modules.pop("lambda_handler", None)
    try:
        module = importlib.import_module("lambda_handler")
        started = capsys.readouterr()
        result = module.handler(load("apigw-v2-http"), None)
        answered = capsys.readouterr()
    finally:
        sys.modules.pop("lambda_handler", None)
    (count,) = [json.loads(x) for x in started.out.splitlines() if x.startswith('{"_aws"')]
    assert count["StartupFailed"] == 1 and count["service"] == "broker"
    assert count["_aws"]["CloudWatchMetrics"][0]["Metrics"] == [{"Name": "StartupFailed", "Unit": "Count"}]
    assert '"event": "startup_failed"' in started.err
    status, body = response(result)
    request_id = load("apigw-v2-http")["requestContext"]["requestId"]
    assert status == 503 and body["request_id"] == result["headers"]["X-Request-Id"] == request_id
    (error,) = [json.loads(x) for x in answered.out.splitlines()]
    assert (error["status_class"], error["error"], error["Errors"]) == ("5xx", "service_unavailable", 1)
