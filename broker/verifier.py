"""The verifier: every object created under a rule's prefix is judged, then marked or quarantined.

Each object is read three times, never whole: HEAD (headers, metadata, checksum), a ranged GET
of its first :data:`~broker.sniff.SNIFF_BYTES` and its tags. :func:`broker.core.verify.verify`
judges it. Then, after the audit line (``"event": "verification"``) is written:

- **verified**: the object is tagged ``broker-verdict=verified``. A tag, because downstream code
  and IAM can both use it: a bucket policy can refuse ``s3:GetObject`` unless
  ``s3:ExistingObjectTag/broker-verdict`` is ``verified``, so nothing unverified is ever served.
- **rejected**: per rule (``on_reject``), moved to the quarantine prefix (copied as an
  attachment with ``broker-verdict=rejected`` and the failed check in its tags, then deleted
  from its key; a lifecycle rule expires it) or deleted. Never left at its granted key.

Events arrive at least once and in any order: an object already carrying a verdict tag, or
gone, or under the quarantine prefix is skipped (no second line); within a process, two events
for one object at once are judged once. A store that fails mid-way raises
:class:`~broker.errors.StoreUnavailable` with nothing marked: the event is retried, and the
object is never marked verified without its checks.
"""
from __future__ import annotations

import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable, Iterator

from broker.audit import AuditLog, verification_record
from broker.config.sources import RulesProvider
from broker.core import callbacks
from broker.core.keys import rule_prefix
from broker.core.verify import Verdict, against_grant, verify
from broker.ledger import REUSED, Ledger, Settlement, grant_id_for
from broker.logs import log_event
from broker.s3.store import S3Store
from broker.sniff import SNIFF_BYTES, Sniffer
from broker.timefmt import iso_z

VERDICT_TAG = "broker-verdict"
#: The ETag of the object the verdict is about. Tagging cannot be made conditional, so an object
#: replaced between its read and its tag (a form posted again) carries a verdict that is not its
#: own: its ETag differs, and it is judged anew when its own event comes.
ETAG_TAG = "broker-etag"
CHECK_TAG = "broker-check"
EXPECTED_TAG = "broker-expected"
ACTUAL_TAG = "broker-actual"
_TAG_UNSAFE = re.compile(r"[^A-Za-z0-9 +\-=._:/@]")
_RECENT = 4096  # (bucket, key, etag) judged lately, kept to drop duplicate events without a read


@dataclass(frozen=True)
class Outcome:
    """What happened to one object: ``verified``, ``rejected``, or ``skipped`` (and why)."""

    status: str
    bucket: str
    key: str
    verdict: Verdict | None = None
    action: str | None = None
    quarantine_key: str | None = None
    note: str = ""


class Verifier:
    """Judges objects against the rules in force and acts on the verdict."""

    def __init__(self, rules: RulesProvider, store: S3Store, audit_log: AuditLog, *,
                 clock: Callable[[], datetime], sniffer: Sniffer | None = None,
                 ledger: Ledger | None = None, notifier: Any = None) -> None:
        self.rules = rules
        self.notifier = notifier  # broker.callbacks.Notifier: verdicts POSTed to clients with a callback
        self.ledger = ledger  # with one, every judged object settles its grant (and a second is caught)
        self.store = store
        self.audit_log = audit_log
        self.clock = clock
        self.sniffer = sniffer or Sniffer()
        self._emit = audit_log.emit
        self._locks: dict[tuple[str, str], threading.Lock] = {}
        self._locks_guard = threading.Lock()
        self._recent: OrderedDict[tuple[str, str, str], str] = OrderedDict()
        self._prefixes: tuple[Any, list[tuple[str, str]]] | None = None  # (the rules they are of, prefixes)

    def verify_object(self, bucket: str, key: str, *, etag: str | None = None, source: str = "event",
                      act: bool = True, request_id: str | None = None) -> Outcome:
        """Judge one object now and (with ``act``) mark or quarantine it; raises StoreUnavailable."""
        ruleset = self.rules.current()
        if key.startswith(ruleset.quarantine_prefix):
            return Outcome("skipped", bucket, key, note="in the quarantine prefix")
        if not any(b == bucket and key.startswith(p) for b, p in self.prefixes()):
            # Not under any rule's prefix: not an upload, so not the verifier's to judge (or move).
            return Outcome("skipped", bucket, key, note="under no rule's prefix")
        if etag and (bucket, key, etag.strip('"')) in self._recent:
            return Outcome("skipped", bucket, key, note="already judged (duplicate event)")
        with self._lock_for(bucket, key):
            obj = self.store.inspect(bucket, key, head_bytes=SNIFF_BYTES)
            if obj is None:
                log_event("verification_skipped", bucket=bucket, key=key[:1024], source=source,
                          note="the object is gone")
                return Outcome("skipped", bucket, key, note="the object is gone")
            if act and has_verdict(obj.tags, obj.etag):
                self._remember(obj.bucket, obj.key, obj.etag)
                return Outcome("skipped", bucket, key, note=f"already {obj.tags[VERDICT_TAG]} (duplicate event)")
            verdict = verify(ruleset, obj, self.sniffer.sniff(obj.head))
            if not act:
                return Outcome("verified" if verdict.verified else "rejected", bucket, key, verdict, "none")
            verdict, settled = self._settle(verdict)
            outcome = self._act(verdict, ruleset.quarantine_prefix, source, request_id, settled)
        try:  # after the lock: a slow receiver (inline, on Lambda) never holds up this object's next event
            self._call_back(ruleset, outcome)
        except Exception as exc:  # noqa: BLE001 - a callback never undoes a verdict
            log_event("callback_failed", key=key[:1024], error=f"{type(exc).__name__}: {exc}"[:500])
        return outcome

    def _call_back(self, ruleset: Any, outcome: Outcome) -> None:
        """POST the verdict to the client's callback, if it has one (after the object was marked or moved)."""
        verdict = outcome.verdict
        rule = verdict.rule if verdict is not None else None
        client = ruleset.clients.get(rule.client) if rule is not None else None
        if verdict is None or rule is None or client is None or not client.callback_url or self.notifier is None:
            return
        obj = verdict.obj
        body = callbacks.payload(
            grant_id=grant_id_for(obj.bucket, obj.key), client=client.id, profile=rule.name, bucket=obj.bucket,
            key=obj.key, size=obj.size, etag=obj.etag, content_type=obj.content_type or "",
            status="verified" if verdict.verified else "rejected",
            checks=[(f.check.value, f.reason) for f in verdict.failures], verified_at=iso_z(self.clock()))
        self.notifier.notify(client.callback_url, client.callback_secret_env or "", body)

    def _settle(self, verdict: Verdict) -> tuple[Verdict, Settlement | None]:
        """With a ledger: the verdict with what the grant adds, and the grant settled by it.

        Settled before the object is tagged or moved: if the store then fails, the event comes
        again and settling it again changes nothing (``replayed``). LedgerUnavailable propagates:
        the event is retried, nothing is marked.
        """
        ledger = self.ledger
        if ledger is None:
            return verdict, None
        obj = verdict.obj
        etag = obj.etag.strip('"')
        grant = ledger.get(grant_id_for(obj.bucket, obj.key))
        if grant is not None:
            first = grant.etag if grant.etag not in (None, etag) and grant.reused_etag != etag else None
            verdict = against_grant(verdict, first_etag=first, size_range=(grant.min_bytes, grant.max_bytes))
        settled = ledger.settle(obj.bucket, obj.key, etag=etag, size=obj.size,
                                verdict="verified" if verdict.verified else "rejected",
                                checks=[f.check.value for f in verdict.failures],
                                now=int(self.clock().timestamp()))
        if settled.outcome == REUSED and settled.grant is not None and grant is not None and grant.etag is None:
            verdict = against_grant(verdict, first_etag=settled.grant.etag)  # another object got there first
        return verdict, settled

    def _act(self, verdict: Verdict, quarantine_prefix: str, source: str, request_id: str | None,
             settled: Settlement | None = None) -> Outcome:
        obj = verdict.obj
        now = self.clock()
        ledger = None if settled is None else {"ledger": settled.outcome,
                                               "grant_id": settled.grant.grant_id if settled.grant else None}
        if verdict.verified:
            self._emit(verification_record(now=now, verdict=verdict, action="tagged", source=source,
                                           request_id=request_id, **(ledger or {})))
            self.store.tag(obj.bucket, obj.key, {**obj.tags, VERDICT_TAG: "verified", ETAG_TAG: etag_tag(obj.etag)})
            self._remember(obj.bucket, obj.key, obj.etag)
            return Outcome("verified", obj.bucket, obj.key, verdict, "tagged")
        if verdict.rule is not None and verdict.rule.on_reject == "delete":
            self._emit(verification_record(now=now, verdict=verdict, action="deleted", source=source,
                                           request_id=request_id, **(ledger or {})))
            self.store.delete(obj.bucket, obj.key)
            self._remember(obj.bucket, obj.key, obj.etag)
            return Outcome("rejected", obj.bucket, obj.key, verdict, "deleted")
        to_key = quarantine_prefix + obj.key
        self._emit(verification_record(now=now, verdict=verdict, action="quarantined", source=source,
                                       quarantine_key=to_key, request_id=request_id, **(ledger or {})))
        failure = verdict.failures[0]
        tags = {VERDICT_TAG: "rejected", CHECK_TAG: failure.check.value,
                EXPECTED_TAG: tag_value(failure.expected), ACTUAL_TAG: tag_value(failure.actual)}
        moved = self.store.move(obj, to_key, tags=tags)
        self._remember(obj.bucket, obj.key, obj.etag)
        if not moved:  # replaced or deleted meanwhile: the new object has an event of its own
            log_event("verification_not_moved", bucket=obj.bucket, key=obj.key[:1024],
                      note="the object changed before it could be quarantined")
        return Outcome("rejected", obj.bucket, obj.key, verdict, "quarantined", to_key)

    def sweep(self, bucket: str, prefix: str, *, act: bool = True, source: str = "sweep") -> Iterator[Outcome]:
        """Judge every object under ``prefix`` that has no verdict yet (missed events, older buckets)."""
        quarantine = self.rules.current().quarantine_prefix
        for key, _size in self.store.keys(bucket, prefix):
            if key.startswith(quarantine):
                continue
            yield self.verify_object(bucket, key, source=source, act=act)

    def prefixes(self) -> list[tuple[str, str]]:
        """(bucket, fixed key prefix) of every rule in force, without prefixes inside others."""
        ruleset = self.rules.current()
        cached = self._prefixes
        if cached is not None and cached[0] is ruleset:
            return cached[1]
        found = sorted({(r.bucket, rule_prefix(r)) for c in ruleset.clients.values() for r in c.rules.values()})
        out: list[tuple[str, str]] = []
        for bucket, prefix in found:
            if not any(b == bucket and prefix.startswith(p) for b, p in out):
                out.append((bucket, prefix))
        self._prefixes = (ruleset, out)
        return out

    def _lock_for(self, bucket: str, key: str) -> threading.Lock:
        with self._locks_guard:
            lock = self._locks.get((bucket, key))
            if lock is None:
                if len(self._locks) > _RECENT:
                    self._locks = {k: v for k, v in self._locks.items() if v.locked()}
                lock = self._locks[(bucket, key)] = threading.Lock()
            return lock

    def _remember(self, bucket: str, key: str, etag: str) -> None:
        with self._locks_guard:
            self._recent[(bucket, key, etag.strip('"'))] = key
            while len(self._recent) > _RECENT:
                self._recent.popitem(last=False)


def etag_tag(etag: str) -> str:
    """An ETag as the value of :data:`ETAG_TAG`."""
    return tag_value(etag.strip('"'))


def has_verdict(tags: Any, etag: str) -> bool:
    """Whether ``tags`` hold a verdict about the object with ``etag`` (not about one it replaced)."""
    return bool(tags.get(VERDICT_TAG)) and tags.get(ETAG_TAG) == etag_tag(etag)


def tag_value(value: Any) -> str:
    """``value`` as an S3 tag value: the characters tags allow, at most 256."""
    if value is None:
        return "-"
    text = value if isinstance(value, str) else ",".join(map(str, value)) if isinstance(value, (list, tuple)) \
        else str(value)
    return _TAG_UNSAFE.sub("_", text)[:256] or "-"
