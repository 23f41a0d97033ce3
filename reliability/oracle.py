"""Independent checks of what the broker answered: is the body well-formed, is a grant within its rule?

Used by the fuzzing tests and by ``make soak``. The checks decode the signed policy itself (not
the broker's own view of it) and compare it with the rules, so a grant the policy makes wider
than the rule is caught even if the response's other fields look right.
"""
from __future__ import annotations

import base64
import json
import re
from datetime import datetime, timedelta, timezone
from typing import Any, Mapping

from broker.core.keys import rule_prefix
from broker.config import schemas
from broker.core.rules import api_key_hash
from broker.core.keys import extension
from broker.core.mediatypes import extension_agrees, parse_content_type, type_matches
from broker.models import Client, Rule, RuleSet

#: Form fields that are not covered by a policy condition by design.
UNCOVERED_BY_DESIGN = frozenset({"policy", "x-amz-signature", "file"})
_UUID = re.compile(r"[0-9a-f]{32}")
_KEY_CHARS = re.compile(r"^[A-Za-z0-9!_.*'()/=-]+$")


def client_for_key(ruleset: RuleSet, api_key: str | None) -> Client | None:
    """The client an API key identifies, or None."""
    if not api_key:
        return None
    cid = ruleset.by_api_key.get(api_key_hash(api_key))
    return ruleset.clients.get(cid) if cid else None


def body_violations(status: int, body: bytes, *, grant_schema: str | None = "upload-response") -> list[str]:
    """Problems with a response body: not JSON, or not matching its schema.

    Every status >= 400 must carry an ``error.schema.json`` body; a 200 from an endpoint that
    issues forms must match ``grant_schema`` (None: do not check 200 bodies here).
    """
    if status in (204, 304) and not body:
        return []
    try:
        doc = json.loads(body)
    except ValueError:
        return [f"{status}: the body is not JSON: {body[:120]!r}"]
    name = "error" if status >= 400 else (grant_schema if status == 200 else None)
    if name is None:
        return []
    return [f"{status}: {schemas.json_path(e.absolute_path)}: {e.message[:200]}"
            for e in schemas.validator(name).iter_errors(doc)]


def decode_policy(policy_b64: str) -> dict[str, Any]:
    """The JSON policy document inside a presigned POST's ``policy`` field."""
    return json.loads(base64.b64decode(policy_b64, validate=True))


def rule_for_key(client: Client, key: str) -> Rule | None:
    """The client's rule whose fixed key prefix is the longest one ``key`` starts with."""
    matches = [r for r in client.rules.values() if key.startswith(rule_prefix(r))]
    return max(matches, key=lambda r: len(rule_prefix(r))) if matches else None


def _conditions(fields: Mapping[str, Any]) -> list[Any]:
    try:
        conditions = decode_policy(str(fields.get("policy", ""))).get("conditions")
    except (ValueError, TypeError):
        return []
    return conditions if isinstance(conditions, list) else []


def _eq_conditions(conditions: list[Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for cond in conditions:
        if isinstance(cond, dict):
            for name, value in cond.items():
                out[name.lower()] = value
        elif isinstance(cond, list) and len(cond) == 3 and cond[0] == "eq":
            out[str(cond[1]).lstrip("$").lower()] = cond[2]
    return out


def grant_violations(
    ruleset: RuleSet,
    client: Client | None,
    asked: Mapping[str, Any],
    grant: Mapping[str, Any],
    *,
    now: datetime | None = None,
    clock_slack: timedelta = timedelta(seconds=120),
) -> list[str]:
    """Every way a 200 ``/uploads`` grant lets the caller do more than its rule allows.

    ``client`` is who the API key identifies (None: nobody, so any grant is a violation),
    ``asked`` the request body sent, ``grant`` the 200 body received.
    """
    if client is None:
        return ["a grant was issued to a caller no rule identifies"]
    fields = grant.get("fields") or {}
    profile = grant.get("profile")
    problems: list[str] = []
    if isinstance(profile, str):  # POST /uploads names the rule; it must be the one asked for
        rule: Rule | None = client.rules.get(profile)
        asked_profile = asked.get("profile") or client.default_profile or (
            next(iter(client.rules)) if len(client.rules) == 1 else None)
        if rule is not None and asked_profile != rule.name:
            problems.append(f"asked for profile {asked_profile!r}, granted {rule.name!r}")
    else:  # other wire formats return only the form: find the rule by the key's prefix
        rule = rule_for_key(client, str(fields.get("key", "")))
        grant = {"key": fields.get("key"), "bucket": _eq_conditions(_conditions(fields)).get("bucket"),
                 "content_type": fields.get("Content-Type"), **grant}
    if rule is None:
        return [f"grant for profile {profile!r} / key {fields.get('key')!r}, which no rule of "
                f"client {client.id!r} covers"]
    try:
        policy = decode_policy(str(fields.get("policy", "")))
    except (ValueError, TypeError) as exc:
        return problems + [f"the policy field does not decode: {exc}"]
    conditions = policy.get("conditions")
    if not isinstance(conditions, list):
        return problems + ["the policy has no conditions list"]
    eq = _eq_conditions(conditions)
    ranges = [c for c in conditions if isinstance(c, list) and c and c[0] == "content-length-range"]
    starts = [c for c in conditions if isinstance(c, list) and c and c[0] == "starts-with"]

    # Bucket and key: exactly one, under the rule's prefix, server-random, never a traversal.
    if starts:
        problems.append(f"starts-with conditions let the client choose values: {starts}")
    if eq.get("bucket") != rule.bucket or grant.get("bucket") != rule.bucket:
        problems.append(f"bucket {eq.get('bucket')!r} is not the rule's {rule.bucket!r}")
    key = eq.get("key")
    if not isinstance(key, str) or key != grant.get("key") or key != fields.get("key"):
        problems.append(f"the signed key {key!r} differs from the key returned {grant.get('key')!r}")
    else:
        if not key.startswith(rule_prefix(rule)):
            problems.append(f"key {key!r} is outside the rule's prefix {rule_prefix(rule)!r}")
        if ".." in key or "//" in key or key.startswith("/") or not _KEY_CHARS.match(key):
            problems.append(f"key {key!r} has a traversal or unsafe characters")
        if len(key.encode()) > 1024:
            problems.append(f"key is {len(key.encode())} bytes; S3 allows 1024")
        if not _UUID.search(key):
            problems.append(f"key {key!r} has no server-random part")

    # Size: the policy's range is exactly the rule's, and the declared size fits in it.
    if ranges != [["content-length-range", rule.min_bytes, rule.max_bytes]]:
        problems.append(f"content-length-range {ranges} is not the rule's "
                        f"[{rule.min_bytes}, {rule.max_bytes}]")
    size = asked.get("size")
    if isinstance(size, (int, float)) and not isinstance(size, bool) and \
            not rule.min_bytes <= size <= rule.max_bytes:
        problems.append(f"declared size {size} is outside the rule's range")

    # Content type: signed exactly, allowed by the rule, agreeing with the extension.
    ctype = eq.get("content-type")
    if not isinstance(ctype, str) or ctype != fields.get("Content-Type") or ctype != grant.get("content_type"):
        problems.append(f"signed Content-Type {ctype!r} differs from the one returned")
    else:
        essence, canonical = parse_content_type(ctype)
        if canonical != ctype:
            problems.append(f"signed Content-Type {ctype!r} is not canonical ({canonical!r})")
        if not type_matches(essence, rule.content_types):
            problems.append(f"content type {essence} is not allowed by rule {rule.name}")
        ext = extension(str(asked.get("filename", "")))
        if rule.extensions and ext not in rule.extensions:
            problems.append(f"file extension {ext!r} is not one of the rule's {list(rule.extensions)}")
        elif rule.extensions and not extension_agrees(ext, essence):
            problems.append(f"a {ext} file cannot be {essence}")

    # Every field S3 will see is bound by a condition with that exact value.
    for name, value in fields.items():
        if name.lower() in UNCOVERED_BY_DESIGN or name.lower().startswith("x-ignore-"):
            continue
        if eq.get(name.lower()) != value:
            problems.append(f"form field {name!r} is not bound by an equal condition")
    extra_meta = {n for n in eq if n.startswith("x-amz-meta-")} - \
        {f"x-amz-meta-{m}" for m in (*rule.client_metadata, *rule.metadata)}
    if extra_meta:
        problems.append(f"metadata the rule does not allow: {sorted(extra_meta)}")
    if eq.get("acl") != rule.acl:
        problems.append(f"acl {eq.get('acl')!r} is not the rule's {rule.acl!r}")

    # Lifetime: never longer than the rule's (and the rules' cap).
    problems.extend(_expiry_violations(policy, grant, rule, ruleset, now, clock_slack))
    return problems


def _expiry_violations(policy: Mapping[str, Any], grant: Mapping[str, Any], rule: Rule,
                       ruleset: RuleSet, now: datetime | None, slack: timedelta) -> list[str]:
    try:
        expires = datetime.strptime(str(policy.get("expiration")), "%Y-%m-%dT%H:%M:%SZ").replace(
            tzinfo=timezone.utc)
    except ValueError:
        return [f"policy expiration {policy.get('expiration')!r} is not a UTC timestamp"]
    problems = []
    if "expires_at" in grant and grant["expires_at"] != policy.get("expiration"):
        problems.append(f"expires_at {grant.get('expires_at')!r} differs from the policy's "
                        f"{policy.get('expiration')!r}")
    if now is not None:
        longest = timedelta(seconds=min(rule.expires_in, ruleset.max_expires_in))
        if expires > now + longest + slack:
            problems.append(f"the form is valid until {expires:%H:%M:%S}, longer than the rule's "
                            f"{longest.total_seconds():.0f}s")
    return problems
