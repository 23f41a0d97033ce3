"""S3 event notifications -> the objects the verifier must judge (the second Lambda function).

S3 invokes ``lambda_handler.verify_handler`` asynchronously with ``{"Records": [...]}``; each
record names one object, its key URL-encoded as in a form (``+`` for a space, ``%2B`` for a
``+``). :func:`parse` is pure: it keeps ``ObjectCreated:*`` records outside the quarantine
prefix, drops everything else quietly, and reports each malformed record instead of failing
the batch. :func:`handle` is the edge: it judges each object, logs what it skipped, and lets
:class:`~broker.errors.ServiceUnavailable` (a store or rules outage) out, so Lambda retries the
event; the verifier skips objects it already judged, so a retried batch costs one HEAD each.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_plus

from broker.logs import log_event

#: S3 keys are at most 1,024 bytes of UTF-8.
MAX_KEY_BYTES = 1024
_CREATED = "ObjectCreated:"
#: ``eventSource`` of Ceph RGW's records (AWS: ``aws:s3``).
CEPH_SOURCE = "ceph:s3"


@dataclass(frozen=True)
class CreatedObject:
    """One object an event says was created: its bucket, decoded key and ETag (if given)."""

    bucket: str
    key: str
    etag: str | None = None


@dataclass(frozen=True)
class Malformed:
    """A record that names no object the verifier could read, and why (``index`` in Records)."""

    index: int
    reason: str


@dataclass(frozen=True)
class ParsedEvent:
    """What one S3 event holds: objects to judge, records ignored on purpose, malformed records."""

    objects: tuple[CreatedObject, ...] = ()
    ignored: int = 0
    malformed: tuple[Malformed, ...] = ()

    @property
    def records(self) -> int:
        """How many records the event held (a test event counts as one, ignored)."""
        return len(self.objects) + self.ignored + len(self.malformed)


def decode_key(raw: str) -> str:
    """An event's object key as stored: ``+`` is a space, ``%XX`` a byte of UTF-8; raises ValueError."""
    key = unquote_plus(raw, encoding="utf-8", errors="strict")  # UnicodeDecodeError is a ValueError
    if not key:
        raise ValueError("the object key is empty")
    if len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        raise ValueError(f"the object key is longer than {MAX_KEY_BYTES} bytes")
    return key


def _raw_key(key: str) -> str:
    """A key sent as stored (Ceph RGW); raises ValueError as decode_key does."""
    if not key:
        raise ValueError("the object key is empty")
    if len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        raise ValueError(f"the object key is longer than {MAX_KEY_BYTES} bytes")
    return key


def _record(record: Any) -> CreatedObject | str | None:
    """The created object of one record, None to ignore it, or why it is malformed."""
    if not isinstance(record, dict):
        return "the record is not an object"
    name = record.get("eventName")
    if not isinstance(name, str):
        return "the record has no eventName"
    if not name.startswith(_CREATED):
        return None
    s3 = record.get("s3")
    bucket = s3.get("bucket") if isinstance(s3, dict) else None
    obj = s3.get("object") if isinstance(s3, dict) else None
    if not isinstance(bucket, dict) or not isinstance(obj, dict):
        return "the record has no s3.bucket or s3.object"
    bucket_name = bucket.get("name")
    raw_key = obj.get("key")
    if not isinstance(bucket_name, str) or not bucket_name:
        return "s3.bucket.name is not a bucket name"
    if not isinstance(raw_key, str):
        return "s3.object.key is not a string"
    try:
        # Ceph RGW's records carry the key as stored, not URL-encoded as AWS's do.
        key = decode_key(raw_key) if record.get("eventSource") != CEPH_SOURCE else _raw_key(raw_key)
    except ValueError as exc:
        return f"s3.object.key: {exc}"
    etag = obj.get("eTag")
    return CreatedObject(bucket_name, key, etag if isinstance(etag, str) and etag else None)


def parse(event: Any, *, quarantine_prefix: str) -> ParsedEvent:
    """The objects an S3 event created, outside ``quarantine_prefix``. Pure; never raises."""
    if isinstance(event, dict) and event.get("Event") == "s3:TestEvent":
        return ParsedEvent(ignored=1)  # S3 sends one when a notification is configured
    records = event.get("Records") if isinstance(event, dict) else None
    if not isinstance(records, list):
        return ParsedEvent(malformed=(Malformed(-1, "the event has no Records list"),))
    objects: list[CreatedObject] = []
    malformed: list[Malformed] = []
    ignored = 0
    for index, record in enumerate(records):
        found = _record(record)
        if isinstance(found, str):
            malformed.append(Malformed(index, found))
        elif found is None or found.key.startswith(quarantine_prefix):
            ignored += 1  # another event type, or the verifier's own quarantine copy
        else:
            objects.append(found)
    return ParsedEvent(tuple(objects), ignored, tuple(malformed))


def handle(broker: Any, event: Any, context: Any = None) -> dict[str, Any]:
    """Judge every object an S3 event created; a summary of counts. Raises ServiceUnavailable."""
    request_id = str(getattr(context, "aws_request_id", "") or "") or None
    verifier = broker.verifier
    quarantine = broker.rules.current().quarantine_prefix  # no rules yet: RulesUnavailable, retried
    parsed = parse(event, quarantine_prefix=quarantine)
    for bad in parsed.malformed:
        log_event("s3_event_malformed", request_id=request_id, record=bad.index, error=bad.reason)
    summary = {"records": parsed.records, "verified": 0, "rejected": 0, "skipped": 0, "ignored": parsed.ignored,
               "malformed": len(parsed.malformed)}
    for obj in parsed.objects:
        outcome = verifier.verify_object(obj.bucket, obj.key, etag=obj.etag, source="s3-event",
                                         request_id=request_id)
        summary[outcome.status] = summary.get(outcome.status, 0) + 1
    return summary
