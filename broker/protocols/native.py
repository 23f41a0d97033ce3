"""The broker's own JSON API: ``POST /uploads`` -> presigned POST form."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from broker.config import schemas
from broker.core.grants import grant_id_for
from broker.errors import InvalidRequest
from broker.models import Decision, SignedPost, UploadRequest
from broker.core.sizes import human_size
from broker.timefmt import iso_z
from broker.web import HttpResponse

if TYPE_CHECKING:
    from broker.app import Broker, Call


def register(broker: "Broker") -> None:
    """Add ``POST /uploads`` and ``GET /health``."""
    broker.router.add("POST", "/uploads", create_upload)
    broker.router.add("GET", "/health", health)


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
        "grant_id": grant_id_for(grant.bucket, grant.key),
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
    """Liveness and whether rules are loaded (no secrets, no client list)."""
    provider = call.broker.rules
    try:
        ruleset = provider.current()
    except Exception as exc:  # noqa: BLE001 - health reports, never raises
        return HttpResponse.json(503, {"status": "unavailable", "error": "rules_unavailable",
                                       "message": str(exc)})
    return HttpResponse.json(200, {"status": "ok", "rules": ruleset.digest,
                                   "reload_error": provider.last_error is not None})
