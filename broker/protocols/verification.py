"""What the verifier hears and says over HTTP.

- ``POST /events/seaweedfs``: SeaweedFS's ``[notification.webhook]`` posts each filer event here
  (``Authorization: Bearer $BROKER_EVENTS_TOKEN``); every object created under a bucket is
  verified at once (:mod:`broker.verifier`). Without a token configured the route does not exist.
- ``POST /events/s3``: S3 event notification records (``{"Records": [...]}``) as a store posts them to
  an HTTP endpoint (Ceph RGW's topic ``push-endpoint``, which cannot add a header: the token comes
  as ``?token=``, or as ``Authorization: Bearer``); each object created is verified at once.
- ``GET /uploads/verdict?key=``: the verdict on one of the caller's own keys: ``verified``,
  ``pending`` (not judged yet), ``rejected`` (with the failed check, as its quarantined copy's
  tags keep it) or ``missing``. Works without a ledger, from the store's tags alone.
- ``GET /uploads/{grant_id}``: with a ledger, the status of one of the caller's own grants:
  ``issued`` (no file yet), ``uploaded`` (the file is there, not judged yet), ``verified``,
  ``rejected`` (with the failed checks) or ``expired`` (never used). The upload page polls it.
"""
from __future__ import annotations

import hmac
import json
import re
from typing import TYPE_CHECKING, Any

from broker.core.grants import rules_for_key
from broker.core.verify import describe
from broker.ledger import EXPIRED, ISSUED
from broker.timefmt import from_unix, iso_z
from broker.errors import InvalidRequest, NotFound, PayloadTooLarge, Unauthenticated
from broker.protocols import BODY_LIMITS
from broker.verifier import ACTUAL_TAG, CHECK_TAG, EXPECTED_TAG, VERDICT_TAG, has_verdict
from broker.web import HttpResponse

if TYPE_CHECKING:
    from broker.app import Broker, Call

PROTOCOL = "verification"
#: A filer event for an object of many chunks is far larger than an upload request.
MAX_EVENT_BYTES = BODY_LIMITS["/events/seaweedfs"]
_IGNORED_DIRS = ("/.uploads/", "/.system/")


def handlers(broker: "Broker") -> dict[tuple[str, str], Any]:
    """The handler of each route (the routes: ``broker.protocols.ROUTES``)."""
    return {("POST", "/events/seaweedfs"): seaweedfs_event, ("POST", "/events/s3"): s3_event,
            ("GET", "/uploads/verdict"): verdict,
            ("GET", "/uploads/{grant_id}"): grant_status}


def object_of_event(event: Any) -> tuple[str, str] | None:
    """(bucket, key) of a SeaweedFS filer event that created (or replaced) an object, else None. Pure."""
    if not isinstance(event, dict) or event.get("event_type") not in ("create", "update"):
        return None
    message = event.get("message")
    entry = message.get("new_entry") if isinstance(message, dict) else None
    path = event.get("key")
    if not isinstance(entry, dict) or entry.get("is_directory") or not isinstance(path, str):
        return None
    if event["event_type"] == "update":
        old = message.get("old_entry")
        if not isinstance(old, dict) or _content(old) == _content(entry):
            return None  # tags or metadata changed (the verifier's own tagging among them), not the bytes
    if not path.startswith("/buckets/") or any(d in path for d in _IGNORED_DIRS):
        return None
    bucket, _, key = path[len("/buckets/"):].partition("/")
    if not bucket or not key or key.endswith("/"):
        return None
    return bucket, key


def _content(entry: Any) -> Any:
    """What identifies an entry's bytes: its ETag, MD5 and chunks (an object posted again over
    itself arrives as an ``update`` whose bytes differ; a tagging ``update`` keeps them)."""
    if not isinstance(entry, dict):
        return None
    extended = entry.get("extended") if isinstance(entry.get("extended"), dict) else {}
    attributes = entry.get("attributes") if isinstance(entry.get("attributes"), dict) else {}
    chunks = entry.get("chunks") if isinstance(entry.get("chunks"), list) else []
    return (extended.get("Seaweed-X-Amz-ETag"), attributes.get("md5"), attributes.get("file_size"),
            tuple(c.get("file_id") for c in chunks if isinstance(c, dict)))


def _event_body(call: "Call", sent: str) -> Any:
    """The event's JSON, once ``sent`` (what the caller gave as the token) is this broker's events token."""
    token = call.broker.events_token
    if not token:
        raise NotFound(f"no such endpoint: {call.request.path}")
    if not hmac.compare_digest(sent.encode(), token.encode()):
        raise Unauthenticated("the event's token is not this broker's BROKER_EVENTS_TOKEN")
    if len(call.request.body) > MAX_EVENT_BYTES:
        raise PayloadTooLarge(f"the event is {len(call.request.body)} bytes; the limit is {MAX_EVENT_BYTES}")
    try:
        return json.loads(call.request.body or b"null")
    except ValueError:
        raise InvalidRequest("the event is not JSON", path="$") from None


def _bearer(call: "Call") -> str:
    sent = call.request.header("authorization") or ""
    return sent[len("Bearer "):] if sent.startswith("Bearer ") else ""


def seaweedfs_event(call: "Call") -> HttpResponse:
    """Verify the object a SeaweedFS filer event created (other events: 200, nothing done)."""
    event = _event_body(call, _bearer(call))
    found = object_of_event(event)
    if found is None:
        return HttpResponse.json(200, {"status": "ignored"})
    bucket, key = found
    outcome = call.broker.verifier.verify_object(bucket, key, source="seaweedfs-webhook",
                                                  request_id=call.context.request_id)
    return HttpResponse.json(200, {"status": outcome.status, "key": key, "action": outcome.action,
                                   "note": outcome.note or None})


def s3_event(call: "Call") -> HttpResponse:
    """Verify each object an S3 event notification created (other records: ignored, 200)."""
    from broker.adapters.s3events import parse

    event = _event_body(call, call.request.query_one("token") or _bearer(call))
    parsed = parse(event, quarantine_prefix=call.ruleset().quarantine_prefix)
    if parsed.malformed and not parsed.objects:
        bad = parsed.malformed[0]
        where = "$.Records" if bad.index < 0 else f"$.Records[{bad.index}]"
        raise InvalidRequest(f"the event names no object: {bad.reason}", path=where)
    judged = []
    for obj in parsed.objects:
        outcome = call.broker.verifier.verify_object(obj.bucket, obj.key, etag=obj.etag, source="s3-notification",
                                                      request_id=call.context.request_id)
        judged.append({"status": outcome.status, "key": obj.key, "action": outcome.action,
                       "note": outcome.note or None})
    if len(judged) == 1:
        return HttpResponse.json(200, judged[0])
    return HttpResponse.json(200, {"status": "judged" if judged else "ignored", "objects": judged,
                                   "ignored": parsed.ignored, "malformed": len(parsed.malformed)})


def verdict(call: "Call") -> HttpResponse:
    """The verdict on one of the caller's keys."""
    ruleset = call.ruleset()
    client = call.client(ruleset)
    key = call.request.query_one("key")
    if not key:
        raise InvalidRequest("the query needs the object key: ?key=", path="$.query.key")
    rules = rules_for_key(client, key)
    if len(rules) != 1:
        raise NotFound(f"{key[:200]} is not a key the broker grants to {client.id}")
    rule = rules[0]
    store = call.broker.store
    obj = store.inspect(rule.bucket, key, head_bytes=0)
    if obj is not None:
        status = obj.tags[VERDICT_TAG] if has_verdict(obj.tags, obj.etag) else "pending"
        return HttpResponse.json(200, {"key": key, "status": status,
                                       "message": {"verified": "verified", "pending": "not verified yet"}
                                       .get(status, status)})
    held = quarantined(call, rule.bucket, key)
    if held is None:
        return HttpResponse.json(200, {"key": key, "status": "missing",
                                       "message": "no such object (not uploaded yet, or deleted)"})
    check, expected, actual = held
    return HttpResponse.json(200, {"key": key, "status": "rejected", "check": check, "expected": expected,
                                   "actual": actual, "message": f"rejected: {describe(check, expected, actual)}"})


def quarantined(call: "Call", bucket: str, key: str) -> tuple[str, str | None, str | None] | None:
    """(check, expected, actual) as the quarantined copy of ``key`` keeps them in its tags, or None."""
    moved = call.broker.store.inspect(bucket, call.ruleset().quarantine_prefix + key, head_bytes=0)
    if moved is None or moved.tags.get(VERDICT_TAG) != "rejected":
        return None
    return moved.tags.get(CHECK_TAG, ""), moved.tags.get(EXPECTED_TAG), moved.tags.get(ACTUAL_TAG)


def _being_moved(call: "Call", grant: Any) -> bool:
    """Whether a rejected grant's object is still at its key, unmarked: the verifier settles the grant
    before it moves the object to quarantine, so a status asked in between would lack its reason."""
    still = call.broker.store.inspect(grant.bucket, grant.key, head_bytes=0)
    return still is not None and still.etag.strip('"') == grant.etag and VERDICT_TAG not in still.tags


_GRANT_ID = re.compile(r"^[0-9a-f]{32}$")
_STATUS_WORDS = {
    "issued": "granted; no file has arrived yet",
    "uploaded": "the file arrived; the verifier has not judged it yet",
    "verified": "verified",
    "rejected": "rejected",
    "expired": "the grant expired unused",
}


def grant_status(call: "Call") -> HttpResponse:
    """The status of one of the caller's grants (``GET /uploads/{grant_id}``; needs a ledger)."""
    ruleset = call.ruleset()
    client = call.client(ruleset)
    grant_id = call.request.path_params.get("grant_id", "")
    if not _GRANT_ID.match(grant_id):
        raise InvalidRequest("a grant id is 32 lower-case hex digits, as POST /uploads returned it",
                             path="$.path.grant_id")
    ledger = call.broker.ledger
    if ledger is None:
        raise NotFound("this broker keeps no grant ledger (BROKER_LEDGER=off), so grants have no status; "
                       "ask GET /uploads/verdict?key= instead")
    grant = ledger.get(grant_id)
    user = call.user()
    # A session sees its own user's grants only; another caller of the client, any grant of a user
    # it names (or of none). Another client's grant, or another user's, is not there either.
    if grant is None or grant.client != client.id or (grant.user != user if call.session is not None else
                                                      grant.user is not None and user is not None
                                                      and grant.user != user):
        raise NotFound(f"no grant {grant_id} of {client.id}")
    now = int(call.now.timestamp())
    status = grant.status
    if status in (ISSUED, EXPIRED):  # not settled: has the file arrived, unjudged so far?
        arrived = call.broker.store.inspect(grant.bucket, grant.key, head_bytes=0) is not None
        status = "uploaded" if arrived else EXPIRED if grant.expires_at <= now else ISSUED
    body: dict[str, Any] = {
        "grant_id": grant.grant_id, "status": status, "message": _STATUS_WORDS[status],
        "key": grant.key, "bucket": grant.bucket, "profile": grant.profile, "content_type": grant.content_type,
        "issued_at": iso_z(from_unix(grant.issued_at)), "expires_at": iso_z(from_unix(grant.expires_at)),
        "size": grant.size, "declared_size": grant.declared_size,
        "checks": list(grant.checks), "reused": grant.reused or None,
    }
    if grant.settled_at is not None and grant.status not in (ISSUED, EXPIRED):
        body["settled_at"] = iso_z(from_unix(grant.settled_at))
    if status == "rejected":  # in words, as the quarantined copy's tags keep it (else the checks' names)
        # The original first: the verifier copies the object (with its tags) and only then deletes it,
        # so once it is gone from its key the quarantined copy says why. (Asked the other way round,
        # the whole move can fall between the two reads: no copy yet, then no original.)
        if _being_moved(call, grant):  # settled, not in quarantine yet: say why once it is
            body["status"], body["message"] = "uploaded", "the file arrived; the verifier is moving it to quarantine"
        else:
            held = quarantined(call, grant.bucket, grant.key)
            body["message"] = f"rejected: {describe(*held)}" if held is not None and held[0] else \
                f"rejected: failed {', '.join(grant.checks) or 'verification'}"
    return HttpResponse.json(200, {k: v for k, v in body.items() if v is not None})
