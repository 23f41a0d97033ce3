"""The broker's own JSON API: ``POST /uploads`` -> presigned POST form."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from broker.config import schemas
from broker.errors import InvalidRequest, NotFound
from broker.models import Decision, SignedPost, UploadRequest
from broker.core.sizes import human_size
from broker.timefmt import iso_z
from broker.web import HttpResponse

if TYPE_CHECKING:
    from broker.app import Broker, Call


def register(broker: "Broker") -> None:
    """Add ``POST /uploads``, ``GET /health`` and ``GET /openapi.yaml``."""
    broker.router.add("POST", "/uploads", create_upload)
    broker.router.add("GET", "/health", health)
    broker.router.add("GET", "/openapi.yaml", openapi)


def parse_upload_request(body: Any) -> UploadRequest:
    """Validate a ``POST /uploads`` body against its schema; 400 names every bad field."""
    validator = schemas.validator("upload-request")
    if not validator.accepts(body):  # not proven valid by the compiled check: ask jsonschema
        _refuse(validator, body)
    size = body.get("size")
    return UploadRequest(body["filename"], body["content_type"], None if size is None else int(size),
                         body.get("profile"), body.get("metadata") or {}, body.get("sha256"))


def _refuse(validator: Any, body: Any) -> None:
    """Raise the 400 naming every schema error of ``body`` (if it has none, return)."""
    errors = sorted(validator.iter_errors(body), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        first = errors[0]
        path = schemas.json_path(first.absolute_path)
        raise InvalidRequest(
            f"{path}: {_message(first)}", path=path,
            errors=[{"path": schemas.json_path(e.absolute_path), "message": _message(e)}
                    for e in errors[:10]],
        )


def _message(err: Any) -> str:
    if err.validator == "additionalProperties":
        return f"unknown field(s): {err.message.split('(')[-1].rstrip(')')}"
    if err.validator == "required":
        return err.message
    if isinstance(err.instance, (str, int, float)) and len(repr(err.instance)) > 80:
        return f"value does not satisfy '{err.validator}' ({err.validator_value!r})"
    return err.message


def create_upload(call: "Call") -> HttpResponse:
    """Decide and, if allowed, sign one upload (the broker's main endpoint)."""
    ruleset = call.ruleset()
    client = call.client(ruleset)
    request = parse_upload_request(call.request.json(call.broker.max_body_bytes))
    decision, signed = call.broker.issue(call, client, ruleset, request)
    if not decision.allowed:
        return HttpResponse.json(decision.status, denial_body(decision), denial_headers(decision))
    assert signed is not None and decision.grant is not None
    return HttpResponse.json(200, grant_body(decision, signed))


def grant_body(decision: Decision, signed: SignedPost) -> dict[str, Any]:
    """The 200 body: where to post, the fields to send, and what was granted."""
    grant = decision.grant
    assert grant is not None
    return {
        "url": signed.url,
        "fields": dict(signed.fields),
        "grant_id": grant.grant_id,
        "key": grant.key,
        "bucket": grant.bucket,
        "expires_at": iso_z(signed.expires_at),
        "max_bytes": grant.max_bytes,
        "min_bytes": grant.min_bytes,
        "content_type": grant.content_type,
        "profile": grant.profile,
    }


def denial_body(decision: Decision) -> dict[str, Any]:
    """The 403/413 body: which rule, which check, what it expected and what it got."""
    body: dict[str, Any] = {
        "error": "denied",
        "message": decision.reason,
        "client": decision.client,
        "rule": decision.profile,
        "check": decision.check.value if decision.check else None,
        "expected": decision.expected,
        "actual": decision.actual,
    }
    if decision.check is not None and decision.check.value == "too_large":
        body["limit"] = human_size(int(decision.expected))  # type: ignore[arg-type]
    if decision.retry_after is not None:  # quota_exceeded: which quota, its limit, the usage so far
        (quota, limit), = decision.expected.items()
        body.update(quota=quota, limit=limit, usage=decision.actual[quota], retry_after=decision.retry_after)
    return body


def denial_headers(decision: Decision) -> dict[str, str]:
    """Headers a denial carries: ``Retry-After`` when a quota will have room again."""
    return {"Retry-After": str(decision.retry_after)} if decision.retry_after is not None else {}


def health(call: "Call") -> HttpResponse:
    """Whether the broker can issue, under the latest rules (no secrets, no client list; the source is
    read only when a check is due, as for any request).

    200 ``ok``: the rules in force are the latest the source holds. 503 ``degraded``: the last
    reload failed, so the broker still issues under the last good rules but an operator's
    change is not in force (a load balancer takes it out; the log and ``RulesReloadFailed``
    say why). 503 ``unavailable``: no rules ever loaded, nothing is issued.
    """
    provider = call.broker.rules
    try:
        provider.current()  # re-checks the source when a check is due, as a request would
    except Exception as exc:  # noqa: BLE001 - health reports, never raises
        return HttpResponse.json(503, {"status": "unavailable", "error": "rules_unavailable",
                                       "message": str(exc), **_rules_state(provider),
                                       "request_id": call.context.request_id})
    state = _rules_state(provider)
    if state["reload_error"] is None:
        return HttpResponse.json(200, {"status": "ok", **state})
    return HttpResponse.json(503, {
        "status": "degraded", "error": "rules_stale",
        "message": f"the rules could not be reloaded ({state['reload_error']}) since {state['failing_since']}; "
                   f"the last good rules ({state['rules']}) are still in force, so a change may not be; "
                   "the broker's log (rules_reload_failed) says why",
        **state, "request_id": call.context.request_id,
    })


def _rules_state(provider: Any) -> dict[str, Any]:
    state = dict(provider.status())
    state.pop("source", None)  # where the rules live is the operator's business, not the public's
    return state


OPENAPI = Path(__file__).resolve().parent.parent.parent / "schemas" / "openapi.yaml"
_openapi: list[bytes] = []  # the document's bytes, read on the first request for it


def openapi(call: "Call") -> HttpResponse:
    """The broker's OpenAPI document (``schemas/openapi.yaml``), as it ships."""
    if not _openapi:
        try:
            _openapi.append(OPENAPI.read_bytes())
        except OSError as exc:
            raise NotFound(f"the OpenAPI document is not installed with this broker ({exc.strerror})") from None
    return HttpResponse(200, _openapi[0], {"Content-Type": "application/yaml", "Cache-Control": "no-cache",
                                           "X-Content-Type-Options": "nosniff"})
