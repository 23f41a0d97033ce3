"""Fine Uploader S3 (5.x, signature version 4) served by the broker, with the rules enforced.

Routes (all need the client's credentials, e.g. ``x-api-key``):

- ``GET /fineuploader/config``: what the page configures Fine Uploader with (store endpoint,
  host, bucket, region, the broker's access key id) and the client's profiles.
- ``POST /fineuploader/key``: the broker's decision for one file (body as ``POST /uploads``).
  Allowed: the server-random key, the params and ACL the page must set for that file, and a
  grant token (:mod:`broker.core.grants`) the page sends back in ``x-upload-grant``. With
  ``?resume=<key>`` (Fine Uploader resuming an interrupted chunked upload): that key instead, if
  the store still holds the unfinished upload and the key is this client's rule's (and user's),
  :mod:`broker.core.resume`; otherwise a denial saying why, so the file fails at once.
- ``POST /fineuploader/signature?v4=true``: signs a policy document (simple upload) or a
  string to sign (chunked upload) **only** after checking it against the re-evaluated rules
  and the token (``policy``, ``canonical`` beside this module); completion of a chunked
  upload is refused, and the upload aborted, if the stored parts exceed the rule.
- ``POST /fineuploader/success``: Fine Uploader's upload-success call; the broker checks the
  stored object's size and type against the grant and deletes it if they break the rule.

Errors use Fine Uploader's shape, ``{"error": "<reason>", "invalid": true}`` (plus ``message``
and the machine ``code``), so the page shows the broker's reason: Fine Uploader displays
``error`` as it is. Every outcome is audit-logged.
"""
from __future__ import annotations

import base64
import json
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Mapping

from broker.audit import public_conditions
from broker.core.grants import (
    TOKEN_HEADER, GrantToken, TokenError, grant_id_for, issue_token, key_matches, verify_token,
)
from broker.core.multipart import MIN_PART_BYTES, max_parts, size_decision, with_outcome
from broker.core.resume import resume_problem
from broker.core.sizes import human_size
from broker.errors import BrokerError, InvalidRequest
from broker.models import Check, Client, Decision, Rule, RuleSet, SignedPost, UploadRequest
from broker.protocols import common
from broker.protocols.fineuploader.canonical import Operation, check_rest, parse_string_to_sign
from broker.protocols.fineuploader.policy import SigningLimits, Violation, check_policy
from broker.protocols.native import denial_body, denial_headers, parse_upload_request
from broker.timefmt import from_unix, iso_z
from broker.web import HttpResponse

if TYPE_CHECKING:
    from broker.app import Broker, Call

PROTOCOL = "fineuploader"
# Object fields Fine Uploader sends from a file's params, unprefixed; x-amz-meta-* lose the prefix.
_PARAM_FIELDS = ("Cache-Control", "Content-Disposition", "x-amz-server-side-encryption",
                 "x-amz-server-side-encryption-aws-kms-key-id")
#: Fine Uploader always sends an ACL (its objectProperties.acl); for a rule without ``acl`` this
#: one is granted. Buckets with ACLs disabled refuse it: their Fine Uploader rules set
#: ``acl: bucket-owner-full-control`` (docs/DEPLOY.md).
DEFAULT_ACL = "private"


def _with_acl(fields: Mapping[str, str]) -> dict[str, str]:
    """The grant's fields as Fine Uploader sends them: always with an ``acl``."""
    return {"acl": DEFAULT_ACL, **fields}


def handlers(broker: "Broker") -> dict[tuple[str, str], Any]:
    """The handler of each Fine Uploader route (the routes: ``broker.protocols.ROUTES``)."""
    endpoints = FineUploader(broker.grant_secret)
    return {
        ("GET", "/fineuploader/config"): _fine_uploader_errors(endpoints.config),
        ("POST", "/fineuploader/key"): _fine_uploader_errors(endpoints.key),
        ("POST", "/fineuploader/signature"): _fine_uploader_errors(endpoints.signature),
        ("POST", "/fineuploader/success"): _fine_uploader_errors(endpoints.success),
    }


def _fine_uploader_errors(handler: Any) -> Any:
    def run(call: "Call") -> HttpResponse:
        try:
            return handler(call)
        except BrokerError as exc:
            response = call.broker.error_response(call, exc)  # audits the error
            return error_response(response.status, exc.message, code=exc.code, headers=response.headers,
                                  **exc.details)
    run.__doc__ = handler.__doc__
    return run


def error_response(status: int, reason: str, *, code: str = "denied",
                   headers: dict[str, str] | None = None, **extra: Any) -> HttpResponse:
    """Fine Uploader's failure shape: it shows ``error`` to the user."""
    body = {"error": reason, "message": reason, "invalid": True, "code": code, **extra}
    hdrs = {k: v for k, v in (headers or {}).items() if k.lower() not in ("content-type", "cache-control")}
    return HttpResponse.json(status, body, hdrs)


def refusal(client: str, profile: str | None, problems: list[Violation],
            check: Check = Check.CONDITION_NOT_ALLOWED) -> Decision:
    """A denial listing every problem found in a signing request (the first one is the reason)."""
    more = f" (and {len(problems) - 1} more problem{'s' if len(problems) > 2 else ''})" if len(problems) > 1 else ""
    return common.deny(client, profile, check, f"{problems[0]}{more}", actual=[str(p) for p in problems[:10]])


def denial_response(decision: Decision) -> HttpResponse:
    """A denial in Fine Uploader's shape, with the broker's usual denial fields alongside."""
    body = denial_body(decision)
    body.pop("error", None)
    reason = body.pop("message") or "denied"
    return error_response(decision.status, reason, headers=denial_headers(decision), **body)


def object_params(fields: dict[str, str] | Any) -> dict[str, str]:
    """The per-file params Fine Uploader must send so its policy carries the grant's fields."""
    params = {}
    for name, value in fields.items():
        if name in _PARAM_FIELDS:
            params[name] = value
        elif name.startswith("x-amz-meta-"):
            params[name[len("x-amz-meta-"):]] = value
    return params


class FineUploader:
    """The Fine Uploader endpoints, sharing the grant secret; S3 calls and signatures go through the store."""

    def __init__(self, secret: bytes) -> None:
        self.secret = secret

    # ------------------------------------------------------------------ config

    def config(self, call: "Call") -> HttpResponse:
        """Everything the page needs to construct Fine Uploader for this client."""
        ruleset = call.ruleset()
        client = call.client(ruleset)
        facts = call.broker.store.sigv4.facts()
        default = client.rules.get(client.default_profile or "") or next(iter(client.rules.values()))
        return HttpResponse.json(200, {
            "endpoint": call.broker.store.sigv4.bucket_url(default.bucket).rstrip("/"),
            "host": call.broker.store.sigv4.host(default.bucket),
            "bucket": default.bucket,
            "region": default.region,
            "accessKey": facts.access_key_id,
            "temporaryCredentials": facts.session_token is not None,
            "partSize": MIN_PART_BYTES,
            "defaultProfile": client.default_profile,
            "profiles": [_profile(rule) for rule in client.rules.values()],
        })

    # ------------------------------------------------------------------ key

    def key(self, call: "Call") -> HttpResponse:
        """Decide one file; if allowed, return its server-random key, params and grant token."""
        ruleset = call.ruleset()
        client = call.client(ruleset)
        request = parse_upload_request(call.request.json(call.broker.max_body_bytes))
        decision = common.decide(call, client, ruleset, request)
        if decision.allowed and decision.grant is not None and "x-amz-storage-class" in decision.grant.fields:
            storage = decision.grant.fields["x-amz-storage-class"]
            decision = common.deny(client.id, decision.profile, Check.CONDITION_NOT_ALLOWED,
                                   f"{decision.profile} stores files as {storage}, which Fine Uploader "
                                   "cannot request; use the native API or Uppy", actual=storage)
        resume = call.request.query_one("resume")
        upload_id = None
        if resume is not None:  # continue an interrupted chunked upload under its original key
            decision, upload_id = self._resumed(call, client, decision, resume)
        else:
            decision = call.broker.record(call, client, decision, request)
        if not decision.allowed or decision.grant is None:
            call.broker.emit(common.record(call, event="fineuploader_key", decision=decision, request=request))
            return denial_response(decision)
        grant = decision.grant
        rule = client.rules[grant.profile]
        seconds = call.broker.store.expires_in(grant, call.now)
        expires_at = int(call.now.timestamp()) + seconds
        token = issue_token(GrantToken(
            client=client.id, profile=grant.profile, bucket=grant.bucket, key=grant.key,
            filename=request.filename, content_type=request.content_type, size=request.size,
            expires_at=expires_at, metadata=dict(request.metadata)), self.secret)
        call.broker.emit(common.record(call, event="fineuploader_key", decision=decision, request=request,
                                       expires_at=_iso(expires_at), upload_id=upload_id))
        return HttpResponse.json(200, {
            "key": grant.key,
            "grantId": grant_id_for(grant.bucket, grant.key),
            "bucket": grant.bucket,
            "endpoint": call.broker.store.sigv4.bucket_url(grant.bucket).rstrip("/"),
            "region": rule.region,
            "acl": _with_acl(grant.fields)["acl"],
            "contentType": grant.content_type,
            "params": object_params(grant.fields),
            "grant": token,
            "grantHeader": TOKEN_HEADER,
            "expiresAt": _iso(expires_at),
            "minBytes": grant.min_bytes,
            "maxBytes": grant.max_bytes,
            "multipart": rule.multipart,
            "profile": grant.profile,
        })

    def _resumed(self, call: "Call", client: Client, decision: Decision, key: str) -> tuple[Decision, str | None]:
        """The decision bound to ``key``, an interrupted upload Fine Uploader resumes, if it may go on.

        The file itself is decided afresh (rules in force, the session's limits); the key must be
        one this client's rule (and user) gets, with an unfinished upload in the store, and, where
        the ledger knows it, granted to this client, profile and user. Its grant was recorded in
        the ledger when first issued, so it is not counted again. Denied: why, and what to do.
        """
        if not decision.allowed or decision.grant is None:
            return decision, None
        rule = client.rules[decision.grant.profile]
        bucket = decision.grant.bucket
        if len(key) > 1024:
            return common.deny(client.id, rule.name, Check.KEY_NOT_GRANTED, "resume: the key is too long"), None
        recorded = None
        if call.broker.ledger is not None:
            found = call.broker.ledger.get(grant_id_for(bucket, key))
            recorded = (found.client, found.profile, found.user) if found is not None else None
        unfinished = call.broker.store.unfinished_uploads(bucket, key) if rule.multipart else []
        problem = resume_problem(rule, key, user=call.user(), unfinished=unfinished, recorded=recorded)
        if problem is not None:
            return common.deny(client.id, rule.name, Check.KEY_NOT_GRANTED, f"cannot resume: {problem}",
                               actual=key[:200]), None
        return common.with_key(decision, bucket, key), unfinished[-1]

    # ------------------------------------------------------------------ signature

    def signature(self, call: "Call") -> HttpResponse:
        """Sign a policy document or a multipart string to sign, after checking every part of it."""
        if call.request.query_one("v4") != "true":
            raise InvalidRequest("only signature version 4 is signed: set signature.version to 4")
        ruleset = call.ruleset()
        client = call.client(ruleset)
        body = call.request.json(call.broker.max_body_bytes)
        granted = self._granted(call, client, ruleset)
        if isinstance(granted, Decision):
            call.broker.emit(common.record(call, event="fineuploader_signature", decision=granted))
            return denial_response(granted)
        decision, token, rule = granted
        limits = self._limits(call, decision, token, rule)
        if isinstance(body, dict) and "headers" in body:
            return self._sign_rest(call, body, decision, rule, limits)
        return self._sign_policy(call, body, decision, rule, limits)

    def _granted(self, call: "Call", client: Client, ruleset: RuleSet) -> Decision | tuple[Decision, GrantToken, Rule]:
        """The token's grant re-decided under the rules in force now, bound to its key."""
        try:
            token = verify_token(call.request.header(TOKEN_HEADER), self.secret, now=call.now)
        except TokenError as exc:
            return common.deny(client.id, None, Check.KEY_NOT_GRANTED, str(exc))
        if token.client != client.id:
            return common.deny(client.id, token.profile, Check.KEY_NOT_GRANTED,
                               "the grant token was issued to another client")
        decision = common.decide(call, client, ruleset, UploadRequest(
            filename=token.filename, content_type=token.content_type, size=token.size,
            profile=token.profile, metadata=token.metadata))
        if not decision.allowed or decision.grant is None:
            return decision
        rule = client.rules[token.profile]
        if token.bucket != decision.grant.bucket or not key_matches(rule, token.key):
            return common.deny(client.id, token.profile, Check.KEY_NOT_GRANTED,
                               f"{token.key} is no longer a key {rule.name} can grant; ask for a new key")
        return common.with_key(decision, token.bucket, token.key), token, rule

    def _limits(self, call: "Call", decision: Decision, token: GrantToken, rule: Rule) -> SigningLimits:
        grant = decision.grant
        assert grant is not None
        facts = call.broker.store.sigv4.facts()
        lifetime = call.broker.store.expires_in(grant, call.now)
        not_after = min(call.now + timedelta(seconds=lifetime),
                        from_unix(token.expires_at))
        return SigningLimits(
            bucket=grant.bucket, key=grant.key, filename=token.filename, fields=_with_acl(grant.fields),
            min_bytes=grant.min_bytes, max_bytes=grant.max_bytes, region=rule.region,
            access_key_id=facts.access_key_id, session_token=facts.session_token, now=call.now,
            not_after=not_after, multipart=rule.multipart, max_parts=max_parts(grant.max_bytes),
            hosts=(call.broker.store.sigv4.host(grant.bucket),),
        )

    def _sign_policy(self, call: "Call", body: Any, decision: Decision, rule: Rule,
                     limits: SigningLimits) -> HttpResponse:
        policy, problems = check_policy(body, limits)
        if policy is None:
            return self._refuse(call, "fineuploader_policy", refusal(decision.client, rule.name, problems))
        amz_date = next(c["x-amz-date"] for c in policy["conditions"] if isinstance(c, dict) and "x-amz-date" in c)
        policy_b64 = base64.b64encode(json.dumps(policy, separators=(",", ":")).encode()).decode()
        signature = call.broker.store.sigv4.sign_policy(policy_b64, amz_date=amz_date, region=rule.region)
        expires_at = datetime.strptime(policy["expiration"], "%Y-%m-%dT%H:%M:%S.000Z").replace(tzinfo=timezone.utc)
        signed = SignedPost(call.broker.store.sigv4.bucket_url(limits.bucket), {}, expires_at,
                            tuple(public_conditions(policy["conditions"])))
        call.broker.emit(common.record(call, event="fineuploader_policy", decision=decision, signed=signed))
        return HttpResponse.json(200, {"policy": policy_b64, "signature": signature})

    def _sign_rest(self, call: "Call", body: dict[str, Any], decision: Decision, rule: Rule,
                   limits: SigningLimits) -> HttpResponse:
        event = "fineuploader_multipart"
        extra = sorted(set(body) - {"headers"})
        if extra:
            problems = [Violation(f"$.{extra[0]}", "a chunked signing request has only 'headers'")]
            return self._refuse(call, event, refusal(decision.client, rule.name, problems))
        if not rule.multipart:
            return self._refuse(call, event, common.deny(
                decision.client, rule.name, Check.MULTIPART_NOT_ALLOWED,
                f"{rule.name} does not allow chunked (multipart) uploads; turn chunking off for it "
                f"(files up to {human_size(min(rule.max_bytes, 5 * 1000**3))} go in one request)"))
        sts, problems = parse_string_to_sign(body["headers"])
        rest = None
        if sts is not None:
            rest, problems = check_rest(sts, limits)
        if rest is None or sts is None:
            return self._refuse(call, event, refusal(decision.client, rule.name, problems))
        event = f"fineuploader_{rest.operation.value}"
        size = None
        if rest.operation is Operation.COMPLETE:
            upload_id = rest.upload_id_decoded or ""
            parts = call.broker.store.list_parts(limits.bucket, limits.key, upload_id)
            total = sum(p.size for p in parts)
            verdict = size_decision(decision.client, rule.name, total, total,
                                    min_bytes=limits.min_bytes, max_bytes=limits.max_bytes)
            if not verdict.allowed:
                call.broker.store.abort_multipart(limits.bucket, limits.key, upload_id)
                verdict = with_outcome(verdict, "the upload was aborted and nothing is stored")
                return self._refuse(call, event, verdict, key=limits.key, upload_id=upload_id, size=total,
                                    size_at="signing")
            size = total
        signature, signed_headers = call.broker.store.sigv4.sign_rest(
            method=rest.method, key=rest.key, query=rest.query, headers=rest.headers, amz_date=rest.amz_date,
            bucket=limits.bucket, region=rule.region)
        if signed_headers != ";".join(sts.request.signed_headers):
            problems = [Violation("$.headers.signed_headers", "the store would expect other signed headers "
                                                              f"({signed_headers})")]
            return self._refuse(call, event, refusal(decision.client, rule.name, problems))
        call.broker.emit(common.allowed_record(
            call, event=event, rule=rule, key=limits.key, upload_id=rest.upload_id_decoded,
            part_number=rest.part_number, size=size, size_at="signing" if size is not None else None,
            content_type=limits.fields.get("Content-Type"),
            size_range=[limits.min_bytes, limits.max_bytes]))
        return HttpResponse.json(200, {"signature": signature})

    def _refuse(self, call: "Call", event: str, decision: Decision, **extra: Any) -> HttpResponse:
        call.broker.emit(common.record(call, event=event, decision=decision, **extra))
        return denial_response(decision)

    # ------------------------------------------------------------------ success

    def success(self, call: "Call") -> HttpResponse:
        """Check the stored object against its grant (size range, type); delete it if it breaks them."""
        ruleset = call.ruleset()
        client = call.client(ruleset)
        form = call.request.form(call.broker.max_body_bytes)
        granted = self._granted(call, client, ruleset)
        event = "upload_success"
        if isinstance(granted, Decision):
            return self._refuse(call, event, granted)
        decision, token, rule = granted
        grant = decision.grant
        assert grant is not None
        if form.get("key") != grant.key or form.get("bucket", grant.bucket) != grant.bucket:
            return self._refuse(call, event, common.deny(
                client.id, rule.name, Check.KEY_NOT_GRANTED,
                f"the upload named {form.get('key', '(no key)')[:200]}, but the grant is for {grant.key}"))
        found = call.broker.store.head(grant.bucket, grant.key)
        if found is None:
            return self._refuse(call, event, common.deny(
                client.id, rule.name, Check.KEY_NOT_GRANTED, f"{grant.key} is not in the store"), key=grant.key)
        verdict = size_decision(client.id, rule.name, found["size"], found["size"],
                                min_bytes=grant.min_bytes, max_bytes=grant.max_bytes)
        if verdict.allowed and found["content_type"] != grant.content_type:
            verdict = common.deny(client.id, rule.name, Check.CONTENT_TYPE_NOT_ALLOWED,
                                  f"the stored type {found['content_type']} is not the granted "
                                  f"{grant.content_type}", expected=grant.content_type,
                                  actual=found["content_type"])
        if not verdict.allowed:
            call.broker.store.delete(grant.bucket, grant.key)
            verdict = with_outcome(verdict, "the object was deleted")
            return self._refuse(call, event, verdict, key=grant.key, size=found["size"])
        call.broker.emit(common.allowed_record(
            call, event=event, rule=rule, key=grant.key, size=found["size"],
            content_type=found["content_type"], size_range=[grant.min_bytes, grant.max_bytes]))
        return HttpResponse.json(200, {"success": True, "key": grant.key, "bucket": grant.bucket,
                                       "size": found["size"]})


def _profile(rule: Rule) -> dict[str, Any]:
    return {"name": rule.name, "bucket": rule.bucket, "minBytes": rule.min_bytes, "maxBytes": rule.max_bytes,
            "contentTypes": list(rule.content_types), "extensions": list(rule.extensions),
            "multipart": rule.multipart}


def _iso(unix: int) -> str:
    return iso_z(from_unix(unix))
