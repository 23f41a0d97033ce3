"""The reading behind ``broker usage`` and ``broker reconcile``: ledger, audit files, bucket listings.

The counting and comparing are pure (:mod:`broker.core.usage`, :mod:`broker.core.reconcile`);
this module fetches what they compare, with the ledger, the store and the time handed in.

Reconcile reads the ledger while the broker may be issuing and settling: a counter that changes
while its grants are read (read before and after them) is left out of the comparison rather
than reported as a mismatch, and so is the window of a grant issued during the listing.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import IO, Callable, Iterable, Iterator, Sequence

from broker.core import usage
from broker.core.reconcile import ListedObject, Reconciliation, reconcile
from broker.core.windows import day_of, hour_of
from broker.ledger import Ledger, grant_id_for
from broker.s3.store import S3Store

#: How often the listing reports its progress (objects).
PROGRESS_EVERY = 1000


@dataclass(frozen=True)
class Malformed:
    """Lines of one audit file that are not audit records: how many, and the first of them."""

    path: str
    count: int
    first_line: int
    reason: str


@dataclass(frozen=True)
class AuditRead:
    """The audit events of some files, and the lines skipped as malformed (per file)."""

    events: list[usage.AuditEvent] = field(default_factory=list)
    malformed: list[Malformed] = field(default_factory=list)


def usage_from_ledger(ledger: Ledger, *, by: Sequence[str], since: int, until: int, now: int,
                      client: str | None = None) -> list[usage.UsageRow]:
    """Usage rows from the ledger's grants issued in ``[since, until)`` and its denial counts."""
    return usage.from_grants(ledger.grants(since=since, until=until), ledger.denials(since=since),
                             by=by, since=since, until=until, now=now, client=client)


def read_audit(paths: Sequence[str], *, stdin: IO[str]) -> AuditRead:
    """Every audit event in ``paths`` ('-' is ``stdin``); raises OSError for a file that cannot be read."""
    out = AuditRead()
    for path in paths:
        if path == "-":
            _read_lines("<stdin>", stdin, out)
            continue
        with open(path, encoding="utf-8", errors="replace") as lines:
            _read_lines(path, lines, out)
    return out


def _read_lines(name: str, lines: Iterable[str], out: AuditRead) -> None:
    bad, first, reason = 0, 0, ""
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            event = usage.audit_event(json.loads(line))
        except ValueError as exc:  # json.JSONDecodeError included
            bad += 1
            if bad == 1:
                first, reason = number, str(exc).splitlines()[0][:120]
            continue
        if event is not None:
            out.events.append(event)
    if bad:
        out.malformed.append(Malformed(name, bad, first, reason))


def release_expired(ledger: Ledger, *, now: int, batch: int = 1000) -> int:
    """Release every expired, unused grant (in batches); how many."""
    total = 0
    while True:
        released = ledger.release_expired(now=now, limit=batch)
        total += released
        if released < batch:
            return total


def reconcile_store(ledger: Ledger, store: S3Store, areas: Sequence[tuple[str, str]], *, quarantine_prefix: str,
                    since: int, now: int, unsettled_after: int,
                    progress: Callable[[int], None] | None = None) -> Reconciliation:
    """Compare the ledger with a listing of ``areas`` (the rules' (bucket, prefix) pairs).

    Raises LedgerUnavailable or StoreUnavailable (both BrokerErrors) when either cannot be read.
    """
    day_start = since - since % 86400  # a day counter holds its whole day's grants
    before = {(c.scope, c.window): c.value for c in ledger.counters(since=since)}
    grants = list(ledger.grants(since=day_start))
    counters = list(ledger.counters(since=since))
    after = {(c.scope, c.window): c.value for c in counters}
    busy = {w for w in before.keys() | after.keys() if before.get(w) != after.get(w)}
    granted = {(g.bucket, g.key) for g in grants}
    kept: list[ListedObject] = []
    late = []  # grants found for listed objects: issued earlier than the period, or during the listing
    listed = 0
    for obj in _listing(store, areas, quarantine_prefix, progress):
        listed += 1
        if (obj.bucket, obj.key) in granted:
            kept.append(obj)
            continue
        if obj.last_modified is not None and obj.last_modified.timestamp() < since:
            continue  # older than the period and none of its grants: nothing to say about it
        grant = ledger.get(grant_id_for(obj.bucket, obj.key))
        if grant is not None:
            late.append(grant)
            if grant.issued_at >= day_start:  # issued after the counters were read: not in them
                busy.update((scope, w) for scope in grant.scopes
                            for w in (hour_of(grant.issued_at), day_of(grant.issued_at)))
        kept.append(obj)
    result = reconcile([*grants, *late], kept, counters, areas=areas,
                       quarantine_prefix=quarantine_prefix, since=since, now=now,
                       unsettled_after=unsettled_after, busy=busy)
    return replace(result, objects=listed)


def _listing(store: S3Store, areas: Sequence[tuple[str, str]], quarantine_prefix: str,
             progress: Callable[[int], None] | None) -> Iterator[ListedObject]:
    seen = 0
    for bucket, prefix in areas:
        for key, size, etag, modified in store.objects(bucket, prefix):
            seen += 1
            if progress is not None and seen % PROGRESS_EVERY == 0:
                progress(seen)
            if not key.startswith(quarantine_prefix):
                yield ListedObject(bucket, key, size, etag, modified)
    if progress is not None:
        progress(seen)
