"""AWS Lambda events <-> HttpRequest/HttpResponse.

Supported events (samples under ``tests/events/``):

- API Gateway REST API, Lambda proxy integration (payload format 1.0)
- API Gateway HTTP API (payload format 2.0) and Lambda Function URLs (same format)
- API Gateway REST API, non-proxy integration, with the "Method Request passthrough"
  mapping template (``body-json``/``params``/``context``), or the request body itself as
  the event (as in the original design; no headers, so no API key: see README)
"""
from __future__ import annotations

import base64
import binascii
import json
from typing import Any, Mapping
from urllib.parse import parse_qs

from broker.errors import BrokerError, InvalidRequest
from broker.web import HttpRequest, HttpResponse

MAX_EVENT_HEADER_BYTES = 16 * 1024


def kind_of(event: Any) -> str:
    """Which event format this is: v1, v2, function-url, passthrough or non-proxy."""
    if not isinstance(event, dict):
        return "invalid"
    if event.get("version") == "2.0" and isinstance(event.get("requestContext"), dict):
        domain = str(event["requestContext"].get("domainName", ""))
        return "function-url" if ".lambda-url." in domain else "v2"
    if "httpMethod" in event and "requestContext" in event:
        return "v1"
    if "body-json" in event and "params" in event:
        return "passthrough"
    return "non-proxy"


def _dict(value: Any, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidRequest(f"malformed event: {what} must be an object", path=f"$.{what}")
    return value


def _headers(raw: Any, multi: Any = None) -> dict[str, str]:
    headers: dict[str, str] = {}
    total = 0
    for name, value in _dict(raw, "headers").items():
        if isinstance(value, list):
            value = value[0] if value else ""
        if not isinstance(name, str) or not isinstance(value, str):
            raise InvalidRequest("malformed event: header names and values must be strings",
                                 path="$.headers")
        total += len(name) + len(value)
        headers[name.lower()] = value
    for name, values in _dict(multi, "multiValueHeaders").items():
        if isinstance(name, str) and isinstance(values, list) and values and isinstance(values[0], str):
            headers.setdefault(name.lower(), values[0])
            total += len(name) + len(values[0])
    if total > MAX_EVENT_HEADER_BYTES:
        raise InvalidRequest(f"the request headers exceed {MAX_EVENT_HEADER_BYTES} bytes", path="$.headers")
    return headers


def _query(raw: Any, multi: Any = None, raw_string: Any = None) -> dict[str, list[str]]:
    """Query parameters; the raw query string (v2) wins, since its parsed form joins repeats with ','."""
    if isinstance(raw_string, str) and raw_string:
        try:
            return parse_qs(raw_string, keep_blank_values=True, max_num_fields=200)
        except ValueError:
            raise InvalidRequest("the query string has too many parameters", path="$.rawQueryString") from None
    out: dict[str, list[str]] = {}
    for name, values in _dict(multi, "multiValueQueryStringParameters").items():
        if isinstance(values, list):
            out[str(name)] = [str(v) for v in values]
    for name, value in _dict(raw, "queryStringParameters").items():
        out.setdefault(str(name), [str(value) if value is not None else ""])
    return out


def _body(event: Mapping[str, Any]) -> bytes:
    body = event.get("body")
    if body is None:
        return b""
    if not isinstance(body, str):
        raise InvalidRequest("malformed event: body must be a string", path="$.body")
    if event.get("isBase64Encoded"):
        try:
            return base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidRequest("the body is marked base64 but is not valid base64", path="$.body") from None
    return body.encode("utf-8", "surrogatepass")


def _principals(authorizer: Any) -> tuple[str, ...]:
    """Identity strings from an authorizer: ``sub:``, ``principal:`` and ``group:`` entries."""
    if not isinstance(authorizer, dict):
        return ()
    found: list[str] = []
    claims = authorizer.get("claims")
    if isinstance(authorizer.get("jwt"), dict):
        claims = authorizer["jwt"].get("claims")
    lam = authorizer.get("lambda") if isinstance(authorizer.get("lambda"), dict) else authorizer
    if isinstance(claims, dict) and isinstance(claims.get("sub"), str):
        found.append(f"sub:{claims['sub']}")
    principal = lam.get("principalId")
    if isinstance(principal, str) and principal:
        found.append(f"principal:{principal}")
    if isinstance(claims, dict):
        groups = claims.get("cognito:groups")
        if isinstance(groups, str):
            groups = groups.strip("[]").replace(",", " ").split()
        if isinstance(groups, list):
            found.extend(f"group:{g}" for g in groups if isinstance(g, str) and g)
    return tuple(found)


def to_request(event: Any, context: Any = None) -> tuple[HttpRequest, str]:
    """Parse a Lambda event into an HttpRequest; raises ``InvalidRequest`` if malformed."""
    kind = kind_of(event)
    aws_id = str(getattr(context, "aws_request_id", "") or "")
    if kind == "invalid":
        raise InvalidRequest("malformed event: expected a JSON object", path="$")
    if kind in ("v2", "function-url"):
        rc = _dict(event.get("requestContext"), "requestContext")
        http = _dict(rc.get("http"), "requestContext.http")
        path = str(event.get("rawPath") or http.get("path") or "/")
        stage = rc.get("stage")
        if isinstance(stage, str) and stage != "$default" and path.startswith(f"/{stage}/"):
            path = path[len(stage) + 1:]
        return HttpRequest(
            method=str(http.get("method", "GET")).upper(), path=path,
            headers=_headers(event.get("headers")), query=_query(event.get("queryStringParameters"),
                                                            raw_string=event.get("rawQueryString")),
            body=_body(event), source_ip=_str(http.get("sourceIp")),
            request_id=_str(rc.get("requestId")) or aws_id,
            principals=_principals(rc.get("authorizer")),
        ), kind
    if kind == "v1":
        rc = _dict(event.get("requestContext"), "requestContext")
        identity = _dict(rc.get("identity"), "requestContext.identity")
        return HttpRequest(
            method=str(event.get("httpMethod") or "GET").upper(), path=str(event.get("path") or "/"),
            headers=_headers(event.get("headers"), event.get("multiValueHeaders")),
            query=_query(event.get("queryStringParameters"), event.get("multiValueQueryStringParameters")),
            body=_body(event), source_ip=_str(identity.get("sourceIp")),
            request_id=_str(rc.get("requestId")) or aws_id,
            principals=_principals(rc.get("authorizer")),
        ), kind
    if kind == "passthrough":
        params = _dict(event.get("params"), "params")
        ctx = _dict(event.get("context"), "context")
        principal = ctx.get("authorizer-principal-id")
        return HttpRequest(
            method="POST", path="/uploads",
            headers={**_headers(params.get("header")), "content-type": "application/json"},
            body=_json_bytes(event.get("body-json"), "$.body-json"),
            source_ip=_str(ctx.get("source-ip")), request_id=_str(ctx.get("request-id")) or aws_id,
            principals=(f"principal:{principal}",) if isinstance(principal, str) and principal else (),
        ), kind
    # non-proxy with the body as the event: there are no headers, so nobody is identified
    return HttpRequest(method="POST", path="/uploads", headers={"content-type": "application/json"},
                       body=_json_bytes(event, "$"), request_id=aws_id), kind


def _json_bytes(value: Any, path: str) -> bytes:
    """Re-encode an already parsed body; a body nested too deeply for that is a 400, not a crash."""
    try:
        return json.dumps(value).encode()
    except (RecursionError, ValueError, TypeError):
        raise InvalidRequest("the request body is nested too deeply or is not JSON", path=path) from None


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def to_event_response(response: HttpResponse, kind: str) -> dict[str, Any]:
    """Render a response in the shape the event's integration expects."""
    if kind in ("passthrough", "non-proxy"):
        # Non-proxy integrations return the body itself; errors carry "status" for the
        # integration response's mapping (see README, "REST API without proxy").
        body = json.loads(response.body) if response.body else {}
        if response.status >= 400 and isinstance(body, dict):
            body["status"] = response.status
        return body
    text = response.body.decode("utf-8")
    return {"statusCode": response.status, "headers": dict(response.headers), "body": text,
            "isBase64Encoded": False}


def handle(broker: Any, event: Any, context: Any = None) -> dict[str, Any]:
    """The whole Lambda path: event -> request -> broker -> event response. Never raises."""
    kind = kind_of(event)
    try:
        request, kind = to_request(event, context)
    except BrokerError as exc:
        from broker.app import Call, RequestContext  # an unparseable event is still audited

        call = Call(broker, HttpRequest("POST", "/"), broker.clock(),
                    RequestContext(request_id=str(getattr(context, "aws_request_id", "") or "-"),
                                   transport=f"lambda-{kind}"))
        # error_response gives the body its request_id and the X-Request-Id header
        return to_event_response(broker.error_response(call, exc), "v1" if kind == "invalid" else kind)
    invocation = getattr(context, "aws_request_id", None)  # the Lambda request id, in Lambda's own log lines
    return to_event_response(broker.handle(request, transport=f"lambda-{kind}",
                                           invocation=invocation if isinstance(invocation, str) else None), kind)
