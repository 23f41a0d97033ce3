"""Pieces the Fine Uploader and Companion adapters share: decide without signing, audit."""
from __future__ import annotations

import dataclasses
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from broker import audit
from broker.core import rules
from broker.errors import AuditUnavailable
from broker.timefmt import iso_z
from broker.models import Check, Client, Decision, Grant, Rule, RuleSet, UploadRequest

if TYPE_CHECKING:
    from broker.app import Call


def decide(call: "Call", client: Client, ruleset: RuleSet, request: UploadRequest) -> Decision:
    """The rules engine's decision for one request, with a fresh server-random key."""
    return rules.evaluate(ruleset, client, request, now=call.now, random_id=call.broker.new_id(),
                          user=call.user(), session=call.session)


def deny(client: str, profile: str | None, check: Check, reason: str, *,
         expected: Any = None, actual: Any = None) -> Decision:
    """A denial naming the check that failed."""
    return Decision(False, client, profile, check=check, reason=reason, expected=expected, actual=actual)


def with_key(decision: Decision, bucket: str, key: str) -> Decision:
    """The decision with its grant bound to an already issued key (re-evaluation makes a new one)."""
    assert decision.grant is not None
    return dataclasses.replace(decision, grant=dataclasses.replace(decision.grant, bucket=bucket, key=key))


def record(call: "Call", *, event: str, decision: Decision | None = None,
           request: UploadRequest | None = None, signed: Any = None, **extra: Any) -> dict[str, Any]:
    """An audit record for a decision (or, with ``decision=None``, the fields given). Pure."""
    rec = audit.record(now=call.now, context=call.context, decision=decision, request=request,
                       signed=signed, event=event, client=call.client_id)
    rec.update({k: v for k, v in extra.items() if v is not None})
    return rec


def allowed_record(call: "Call", *, event: str, rule: Rule, **extra: Any) -> dict[str, Any]:
    """An audit record for an allowed step of an upload already granted (sign, list, complete). Pure."""
    rec = audit.record(now=call.now, context=call.context, event=event, client=rule.client)
    rec.update(decision="allowed", status=200, profile=rule.name, bucket=rule.bucket)
    rec.update({k: v for k, v in extra.items() if v is not None})
    return rec


def emit_or_undo(call: "Call", rec: dict[str, Any], undo: Any) -> None:
    """Write an audit record; if it cannot be written, undo what was done and fail (503)."""
    try:
        call.broker.emit(rec)
    except AuditUnavailable:
        undo()
        raise


def lifetime(call: "Call", ruleset: RuleSet, rule: Rule, key: str) -> int:
    """Seconds a signature for this rule may live: the rule's, capped by the rules and credentials."""
    grant = Grant(client=rule.client, profile=rule.name, bucket=rule.bucket, key=key, content_type="",
                  min_bytes=rule.min_bytes, max_bytes=rule.max_bytes,
                  expires_in=min(rule.expires_in, ruleset.max_expires_in), fields={})
    return call.broker.store.expires_in(grant, call.now)


def expiry(call: "Call", seconds: int) -> str:
    """``now + seconds`` as an ISO 8601 UTC time."""
    return iso_z(call.now + timedelta(seconds=seconds))
