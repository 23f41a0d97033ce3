"""``audit.record`` builds its dict member by member; its slow twin is the plain definition below
(every field, then every None dropped). The two must agree, member for member and in order."""
from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest

from broker import audit
from broker.core import rules
from broker.core.grants import grant_id_for
from broker.errors import AuditUnavailable, BrokerError, InvalidRequest, Unauthenticated
from broker.models import Check, Decision, RequestContext, SignedPost, UploadRequest
from broker.timefmt import iso_z
from tests.conftest import NOW


def plain_record(*, now: Any, context: RequestContext, decision: Decision | None = None,
                 request: UploadRequest | None = None, signed: SignedPost | None = None,
                 error: BrokerError | None = None, client: str | None = None, event: str = "upload") -> dict[str, Any]:
    """The slow twin: a dict of every field, then the None ones dropped."""
    rec: dict[str, Any] = {
        "time": iso_z(now, millis=True), "event": event, "request_id": context.request_id,
        "protocol": context.protocol, "transport": context.transport, "source_ip": context.source_ip,
        "user_agent": (context.user_agent or "")[:256] or None,
        "client": decision.client if decision else client, "profile": decision.profile if decision else None,
        "session": context.session, "user": context.user,
    }
    if request is not None:
        rec["content_type"] = request.content_type[:256]
        rec["size"] = request.size
    if decision is not None and decision.allowed and decision.grant is not None:
        grant = decision.grant
        rec.update(decision="allowed", status=200, bucket=grant.bucket, key=grant.key,
                   grant_id=grant_id_for(grant.bucket, grant.key),
                   content_type=grant.content_type, size_range=[grant.min_bytes, grant.max_bytes])
        if signed is not None:
            rec["expires_at"] = iso_z(signed.expires_at, millis=True)
            rec["conditions"] = audit.public_conditions(signed.conditions)
    elif decision is not None:
        rec.update(decision="denied", status=decision.status, check=decision.check.value
                   if decision.check else None, reason=decision.reason,
                   expected=decision.expected, actual=decision.actual, retry_after=decision.retry_after)
    elif error is not None:
        rec.update(decision="error", status=error.status, error=error.code,
                   reason=error.message[:500], path=error.details.get("path"), check=error.details.get("check"))
    out = {k: v for k, v in rec.items() if v is not None}
    out.update(context.fields)
    return out


CONTEXTS = [
    pytest.param(RequestContext("r1"), id="bare"),
    pytest.param(RequestContext("r2", "203.0.113.9", "ua/1" * 100, "companion", "wsgi"), id="long-agent"),
    pytest.param(RequestContext("r3", None, "", session="a" * 32, user="alice",
                                fields={"origin": "https://app.example", "rules": "d1d4", "key_fingerprint": "0123abcd"}),
                 id="session-and-fields"),
    pytest.param(RequestContext("r4", fields={"principal": "group:x", "user": "sub-1", "lambda_request_id": "l"}),
                 id="authorizer"),
]


def _cases(ruleset: Any) -> list[dict[str, Any]]:
    client = ruleset.clients["web-app"]
    ok = UploadRequest("me.png", "image/png", 1200)
    allowed = rules.evaluate(ruleset, client, ok, now=NOW, random_id="f" * 32)
    big = UploadRequest("me.png", "image/png", 10**10)
    denied = rules.evaluate(ruleset, client, big, now=NOW, random_id="f" * 32)
    assert allowed.allowed and not denied.allowed
    signed = SignedPost("https://b.example/", {"key": "k"}, NOW + timedelta(minutes=5),
                        ({"bucket": "b"}, {"X-Amz-Credential": "AKID/x"}, ["content-length-range", 1, 5],
                         {"x-amz-security-token": "tok"}, {"key": "k"}))
    quota = Decision(False, "web-app", "avatars", check=Check.QUOTA_EXCEEDED, reason="quota",
                     expected={"uploads_per_hour": 1}, actual={"uploads_per_hour": 1}, retry_after=30)
    return [
        {"decision": allowed, "request": ok, "signed": signed},
        {"decision": allowed, "request": UploadRequest("me.png", "image/png", None)},
        {"decision": allowed},
        {"decision": denied, "request": big},
        {"decision": quota, "request": ok, "event": "fineuploader_signature"},
        {"decision": replace(denied, profile=None, check=None, expected=None, actual=0)},
        {"error": InvalidRequest("bad " * 200, path="$.size"), "client": "web-app"},
        {"error": Unauthenticated("who?")},
        {"error": AuditUnavailable("disk full"), "event": "companion_error"},
        {"error": BrokerError("the broker failed")},
        {"client": "web-app", "event": "multipart_sign"},
        {},
    ]


@pytest.mark.parametrize("context", CONTEXTS)
def test_record_agrees_with_its_plain_definition(ruleset: Any, context: RequestContext) -> None:
    for case in _cases(ruleset):
        fast = audit.record(now=NOW, context=context, **case)
        slow = plain_record(now=NOW, context=context, **case)
        assert list(fast.items()) == list(slow.items()), case  # the same members, in the same order
        assert None not in fast.values()


def test_the_twin_check_can_fail(ruleset: Any) -> None:
    """A record missing one member, or with them in another order, is told apart."""
    context = RequestContext("r1", "203.0.113.9", "ua")
    case = _cases(ruleset)[0]
    slow = plain_record(now=NOW, context=context, **case)
    fast = audit.record(now=NOW, context=context, **case)
    assert list(fast.items()) == list(slow.items())
    reordered = dict(reversed(list(fast.items())))
    assert list(reordered.items()) != list(slow.items())
    fast.pop("grant_id")
    assert list(fast.items()) != list(slow.items())


def test_conditions_never_carry_the_credential_or_token(ruleset: Any) -> None:
    case = _cases(ruleset)[0]
    rec = audit.record(now=NOW, context=RequestContext("r1"), **case)
    assert rec["conditions"] == [{"bucket": "b"}, ["content-length-range", 1, 5], {"key": "k"}]
