"""Uppy's AwsS3 plugin through the Companion protocol, served by the broker with the rules enforced.

Routes (all need the client's credentials, e.g. ``x-api-key``; errors are ``{"message"}``):

- ``GET /s3/params?filename=&type=&metadata[...]=`` -> ``{method: "POST", url, fields}``: a
  presigned POST from the same decision as ``POST /uploads``. Uppy sends no size, so the
  policy's ``content-length-range`` enforces it; a page may send ``metadata[size]`` to be
  refused early with a reason. ``metadata[profile]`` picks the rule.
- ``POST /s3/multipart`` ``{filename, type, metadata}`` -> ``{key, uploadId, bucket}``: the
  broker decides, needs the rule's ``multipart: true``, and starts the upload itself with
  every object field of the grant (type, ACL, encryption, metadata...).
- ``GET /s3/multipart/{uploadId}/{partNumber}?key=`` -> ``{url, expires}`` and
  ``GET /s3/multipart/{uploadId}/batch?key=&partNumbers=1,2`` -> ``{presignedUrls}``.
- ``GET /s3/multipart/{uploadId}?key=`` -> ``[{PartNumber, Size, ETag}]``.
- ``POST /s3/multipart/{uploadId}/complete?key=`` ``{parts}`` -> ``{location, key, bucket}``:
  refused, and the upload aborted, if the stored parts add up to more than the rule allows.
- ``DELETE /s3/multipart/{uploadId}?key=`` -> ``{}``.

A key is bound to its grant twice over: it must have exactly the shape one of the caller's
multipart rules produces (so never another client's prefix), and the store itself binds the
upload id to the key the broker created it for.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from broker.errors import InvalidRequest
from broker.core.grants import grant_id_for, key_is_users, rules_for_key
from broker.models import Check, Client, Decision, Rule, RuleSet, UploadRequest
from broker.core.multipart import MAX_PARTS, max_parts, size_decision, with_outcome
from broker.core.sizes import human_size
from broker.timefmt import iso_z
from broker.web import HttpResponse
from broker.protocols import common
from broker.protocols.native import denial_body, denial_headers, parse_upload_request

if TYPE_CHECKING:
    from broker.app import Broker, Call

PROTOCOL = "companion"
#: Uppy's own meta fields: they describe the file, they are not object metadata.
UPPY_META = frozenset({"name", "type", "relativePath", "relativepath"})
_PART = re.compile(r"^[1-9][0-9]{0,4}$")
_UPLOAD_ID = re.compile(r"^(?!\.{1,2}$)[A-Za-z0-9._~+=-]{1,1024}$")  # never "." or "..": path segments


def handlers(broker: "Broker") -> dict[tuple[str, str], Any]:
    """The handler of each Companion route (the routes: ``broker.protocols.ROUTES``)."""
    endpoints = Companion()
    return {
        ("GET", "/s3/params"): endpoints.params,
        ("POST", "/s3/multipart"): endpoints.create,
        ("GET", "/s3/multipart/{uploadId}/batch"): endpoints.sign_batch,
        ("GET", "/s3/multipart/{uploadId}/{partNumber}"): endpoints.sign_part,
        ("GET", "/s3/multipart/{uploadId}"): endpoints.list,
        ("POST", "/s3/multipart/{uploadId}/complete"): endpoints.complete,
        ("DELETE", "/s3/multipart/{uploadId}"): endpoints.abort,
    }


def upload_request(filename: Any, content_type: Any, metadata: Any, *, where: str) -> UploadRequest:
    """An UploadRequest from Uppy's filename, type and metadata (validated like ``POST /uploads``)."""
    if not isinstance(metadata, dict):
        raise InvalidRequest(f"{where}metadata must be an object", path="$.metadata")
    meta = {str(k): v for k, v in metadata.items() if k not in UPPY_META}
    body: dict[str, Any] = {"filename": filename, "content_type": content_type}
    profile = meta.pop("profile", None)
    if profile not in (None, ""):
        body["profile"] = profile
    size = meta.pop("size", None)
    if size not in (None, ""):
        if isinstance(size, int) and not isinstance(size, bool):
            body["size"] = size
        elif isinstance(size, str) and size.isascii() and size.isdigit() and len(size) <= 16:
            body["size"] = int(size)
        else:
            raise InvalidRequest(f"{where}metadata[size] must be a whole number of bytes", path="$.metadata.size")
    if meta:
        body["metadata"] = {k: v if isinstance(v, str) else str(v) for k, v in meta.items()}
    if filename is None or content_type is None:
        raise InvalidRequest(f"{where}filename and type are required", path="$.filename")
    return parse_upload_request(body)


def denial(decision: Decision) -> HttpResponse:
    """A denial as Companion errors look: ``message`` says why."""
    return HttpResponse.json(decision.status, denial_body(decision), denial_headers(decision))


def _deny(call: "Call", event: str, decision: Decision, **extra: Any) -> HttpResponse:
    """Audit a denial, then render it."""
    call.broker.emit(common.record(call, event=event, decision=decision, **extra))
    return denial(decision)


@dataclass(frozen=True)
class Granted:
    """A multipart upload of the calling client, bound to the one rule whose template made its key."""

    ruleset: RuleSet
    client: Client
    rule: Rule
    key: str
    upload_id: str


class Companion:
    """The Companion S3 endpoints; every S3 call goes through the broker's store."""

    # ------------------------------------------------------------------ single POST

    def params(self, call: "Call") -> HttpResponse:
        """A presigned POST for one file (Uppy's non-multipart path)."""
        ruleset = call.ruleset()
        client = call.client(ruleset)
        query = call.request.query
        metadata = {k[len("metadata["):-1]: v[0] for k, v in query.items()
                    if k.startswith("metadata[") and k.endswith("]") and v}
        request = upload_request(call.request.query_one("filename"), call.request.query_one("type"),
                                 metadata, where="query: ")
        decision, signed = call.broker.issue(call, client, ruleset, request)
        if not decision.allowed or signed is None:
            return denial(decision)
        url = signed.url if signed.url.endswith("/") else signed.url + "/"
        return HttpResponse.json(200, {"method": "POST", "url": url, "fields": dict(signed.fields),
                                       "expires": iso_z(signed.expires_at),
                                       "grant_id": grant_id_for(decision.grant.bucket, decision.grant.key)})

    # ------------------------------------------------------------------ multipart

    def create(self, call: "Call") -> HttpResponse:
        """Decide a multipart upload and start it with the grant's object fields."""
        ruleset = call.ruleset()
        client = call.client(ruleset)
        body = call.request.json(call.broker.max_body_bytes)
        if not isinstance(body, dict):
            raise InvalidRequest("the body must be {filename, type, metadata}", path="$")
        request = upload_request(body.get("filename"), body.get("type"), body.get("metadata") or {}, where="")
        decision = common.decide(call, client, ruleset, request)
        if decision.allowed and decision.grant is not None and not client.rules[decision.grant.profile].multipart:
            rule = client.rules[decision.grant.profile]
            decision = common.deny(client.id, rule.name, Check.MULTIPART_NOT_ALLOWED,
                                   f"{rule.name} does not allow multipart uploads: files go in one request, "
                                   f"up to {human_size(rule.max_bytes)}", expected=False, actual=True)
        decision = call.broker.record(call, client, decision, request)
        if not decision.allowed or decision.grant is None:
            return _deny(call, "multipart_create", decision, request=request)
        grant = decision.grant
        store = call.broker.store
        upload_id = store.create_multipart(grant)
        rec = common.record(call, event="multipart_create", decision=decision, request=request,
                            upload_id=upload_id)
        common.emit_or_undo(call, rec, lambda: store.abort_multipart(grant.bucket, grant.key, upload_id))
        return HttpResponse.json(200, {"key": grant.key, "uploadId": upload_id, "bucket": grant.bucket,
                                       "grant_id": grant_id_for(grant.bucket, grant.key)})

    def _bound(self, call: "Call", event: str) -> Granted | HttpResponse:
        """The rule that granted ``?key=``, for a multipart upload of this client, or the (audited) denial."""
        ruleset = call.ruleset()
        client = call.client(ruleset)
        key = call.request.query_one("key")
        upload_id = call.request.path_params.get("uploadId", "")
        if not key:
            raise InvalidRequest("the query needs the object key: ?key=", path="$.query.key")
        if not _UPLOAD_ID.match(upload_id):
            raise InvalidRequest("the upload id is malformed", path="$.path.uploadId")
        matches = rules_for_key(client, key)
        problem = None
        if not matches:
            problem = common.deny(client.id, None, Check.KEY_NOT_GRANTED,
                                  f"{key[:200]} is not a key the broker grants to {client.id}")
        elif len(matches) > 1:
            problem = common.deny(client.id, None, Check.KEY_NOT_GRANTED,
                                  f"{key[:200]} could come from several rules ({', '.join(r.name for r in matches)}); "
                                  "give each rule's key template its own prefix")
        elif not matches[0].multipart:
            problem = common.deny(client.id, matches[0].name, Check.MULTIPART_NOT_ALLOWED,
                                  f"{matches[0].name} does not allow multipart uploads")
        elif call.session is not None and matches[0].name not in call.session.profiles:
            problem = common.deny(client.id, matches[0].name, Check.SESSION_PROFILE_NOT_ALLOWED,
                                  f"{key[:200]} is a {matches[0].name} upload, and this session may upload only "
                                  f"{', '.join(call.session.profiles)}")
        elif not key_is_users(matches[0], key, call.user()):
            problem = common.deny(client.id, matches[0].name, Check.KEY_NOT_GRANTED,
                                  f"{key[:200]} is another user's upload ({matches[0].name} keeps each user's "
                                  "files apart)") if call.user() else \
                common.deny(client.id, matches[0].name, Check.USER_REQUIRED,
                            f"{key[:200]} belongs to one user of {matches[0].name}, and this call names none")
        if problem is not None:
            return _deny(call, event, problem, key=key[:1024], upload_id=upload_id)
        return Granted(ruleset, client, matches[0], key, upload_id)

    def _part_url(self, call: "Call", upload: Granted, number: str) -> tuple[str, int] | Decision:
        rule = upload.rule
        if not _PART.match(number) or int(number) > MAX_PARTS:
            raise InvalidRequest(f"part number {number[:20]} is not 1..{MAX_PARTS}", path="$.path.partNumber")
        limit = max_parts(rule.max_bytes)
        if int(number) > limit:
            return common.deny(rule.client, rule.name, Check.TOO_LARGE,
                               f"part {number} is beyond the {limit} parts of 5 MiB that {rule.name}'s limit of "
                               f"{human_size(rule.max_bytes)} can need", expected=rule.max_bytes, actual=None)
        seconds = common.lifetime(call, upload.ruleset, rule, upload.key)
        url = call.broker.store.part_url(rule.bucket, upload.key, upload.upload_id, int(number), seconds)
        return url, seconds

    def sign_part(self, call: "Call") -> HttpResponse:
        """A presigned URL for one part of a granted upload."""
        up = self._bound(call, "multipart_sign_part")
        if isinstance(up, HttpResponse):
            return up
        number = call.request.path_params.get("partNumber", "")
        signed = self._part_url(call, up, number)
        if isinstance(signed, Decision):
            return _deny(call, "multipart_sign_part", signed, key=up.key, upload_id=up.upload_id)
        url, seconds = signed
        call.broker.emit(common.allowed_record(call, event="multipart_sign_part", rule=up.rule, key=up.key,
                                               upload_id=up.upload_id, part_number=int(number),
                                               expires_at=common.expiry(call, seconds)))
        return HttpResponse.json(200, {"url": url, "expires": seconds})

    def sign_batch(self, call: "Call") -> HttpResponse:
        """Presigned URLs for several parts (``?partNumbers=1,2,3``)."""
        up = self._bound(call, "multipart_sign_part")
        if isinstance(up, HttpResponse):
            return up
        numbers = [n.strip() for n in (call.request.query_one("partNumbers") or "").split(",") if n.strip()]
        if not numbers or len(numbers) > 1000:
            raise InvalidRequest("partNumbers must list 1 to 1000 part numbers", path="$.query.partNumbers")
        numbers = list(dict.fromkeys(numbers))  # each part signed once: "1,1,1,..." is one signature, not 1,000
        urls: dict[str, str] = {}
        seconds = 0
        for number in numbers:
            signed = self._part_url(call, up, number)
            if isinstance(signed, Decision):
                return _deny(call, "multipart_sign_part", signed, key=up.key, upload_id=up.upload_id)
            urls[number], seconds = signed
        call.broker.emit(common.allowed_record(call, event="multipart_sign_part", rule=up.rule, key=up.key,
                                               upload_id=up.upload_id, part_number=int(numbers[0]),
                                               actual=[int(n) for n in numbers],
                                               expires_at=common.expiry(call, seconds)))
        return HttpResponse.json(200, {"presignedUrls": urls})

    def list(self, call: "Call") -> HttpResponse:
        """The parts the store holds for a granted upload."""
        up = self._bound(call, "multipart_list")
        if isinstance(up, HttpResponse):
            return up
        parts = call.broker.store.list_parts(up.rule.bucket, up.key, up.upload_id)
        call.broker.emit(common.allowed_record(call, event="multipart_list", rule=up.rule, key=up.key,
                                               upload_id=up.upload_id, size=sum(p.size for p in parts)))
        return HttpResponse.json(200, [{"PartNumber": p.number, "Size": p.size, "ETag": p.etag} for p in parts])

    def complete(self, call: "Call") -> HttpResponse:
        """Complete a granted upload if its parts fit the rule; otherwise abort it."""
        up = self._bound(call, "multipart_complete")
        if isinstance(up, HttpResponse):
            return up
        client, rule, key, upload_id = up.client, up.rule, up.key, up.upload_id
        wanted = _parts_body(call.request.json(call.broker.max_body_bytes))
        store = call.broker.store
        stored = {p.number: p for p in store.list_parts(rule.bucket, key, upload_id)}
        for number, etag in wanted:
            part = stored.get(number)
            if part is None or part.etag.strip('"') != etag.strip('"'):
                raise InvalidRequest(f"part {number} is not stored with that ETag; list the parts and retry",
                                     path="$.parts")
        uploaded = sum(p.size for p in stored.values())
        completing = sum(stored[n].size for n, _ in wanted)
        verdict = size_decision(client.id, rule.name, uploaded, completing,
                                min_bytes=rule.min_bytes, max_bytes=rule.max_bytes)
        if not verdict.allowed:
            store.abort_multipart(rule.bucket, key, upload_id)
            verdict = with_outcome(verdict, "the upload was aborted and nothing is stored")
            return _deny(call, "multipart_complete", verdict, key=key, upload_id=upload_id, size=uploaded)
        store.complete_multipart(rule.bucket, key, upload_id,
                                 [{"PartNumber": n, "ETag": stored[n].etag} for n, _ in wanted])
        rec = common.allowed_record(call, event="multipart_complete", rule=rule, key=key, upload_id=upload_id,
                                    size=completing, size_range=[rule.min_bytes, rule.max_bytes])
        # An object nobody audited must not stay: if the record cannot be written, delete it (503).
        common.emit_or_undo(call, rec, lambda: store.delete(rule.bucket, key))
        return HttpResponse.json(200, {"location": store.sigv4.object_url(rule.bucket, key),
                                       "key": key, "bucket": rule.bucket})

    def abort(self, call: "Call") -> HttpResponse:
        """Abort a granted upload; its parts are deleted."""
        up = self._bound(call, "multipart_abort")
        if isinstance(up, HttpResponse):
            return up
        store = call.broker.store
        store.list_parts(up.rule.bucket, up.key, up.upload_id)  # an upload that is not there: 404, not "allowed"
        store.abort_multipart(up.rule.bucket, up.key, up.upload_id)
        call.broker.emit(common.allowed_record(call, event="multipart_abort", rule=up.rule, key=up.key,
                                               upload_id=up.upload_id))
        return HttpResponse.json(200, {})


def _parts_body(body: Any) -> list[tuple[int, str]]:
    """``{"parts": [{PartNumber, ETag}]}`` checked: numbers 1..10000, ascending, each once."""
    parts = body.get("parts") if isinstance(body, dict) else None
    if not isinstance(parts, list) or not parts or len(parts) > MAX_PARTS:
        raise InvalidRequest("the body must be {\"parts\": [{\"PartNumber\": 1, \"ETag\": \"...\"}, ...]}",
                             path="$.parts")
    out: list[tuple[int, str]] = []
    for i, part in enumerate(parts):
        number = part.get("PartNumber") if isinstance(part, dict) else None
        etag = part.get("ETag") if isinstance(part, dict) else None
        if isinstance(number, bool) or not isinstance(number, int) or not 1 <= number <= MAX_PARTS:
            raise InvalidRequest(f"PartNumber must be a whole number 1..{MAX_PARTS}", path=f"$.parts[{i}].PartNumber")
        if not isinstance(etag, str) or not 1 <= len(etag) <= 128:
            raise InvalidRequest("ETag must be the part's ETag", path=f"$.parts[{i}].ETag")
        if out and number <= out[-1][0]:
            raise InvalidRequest("parts must be in ascending order, each once", path=f"$.parts[{i}].PartNumber")
        out.append((number, etag))
    return out
