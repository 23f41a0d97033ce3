"""``broker reconcile``: the grant ledger against a listing of the bucket. Pure.

:func:`reconcile` takes the ledger's grants and counters and the objects listed under the rules'
prefixes, and returns every disagreement as a :class:`Finding`:

- ``unused_grant``: a grant that expired with no object at its key (the form was never posted).
- ``no_grant``: an object no grant allowed: written with IAM credentials, or before the ledger.
- ``differs``: an object unlike its grant: a size outside the grant's range, an ETag the
  verifier never saw (changed after it looked), a rejected object still at its key, or a
  verified object that is gone.
- ``reused``: a form posted more than once (each later object replaced the first).
- ``unsettled``: an object whose grant the verifier has not settled long after it landed.
- ``quota_mismatch``: a quota counter that is not what its grants add up to.

Nothing here lists, reads or looks at a clock: ``now`` and ``since`` come in as seconds since
the epoch; :mod:`broker.reports` does the reading.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Collection, Iterable, Protocol, Sequence

from broker.core.sizes import human_size
from broker.core.usage import EXPIRED, ISSUED, REJECTED, VERIFIED, GrantLike, day_label
from broker.core.windows import day_of as day_window, hour_of as hour_window, window_end
from broker.timefmt import from_unix, iso_z

UNUSED_GRANT, NO_GRANT, DIFFERS, REUSED, UNSETTLED, QUOTA_MISMATCH = (
    "unused_grant", "no_grant", "differs", "reused", "unsettled", "quota_mismatch")
#: Every kind of finding, in the order they are reported.
KINDS = (UNUSED_GRANT, NO_GRANT, DIFFERS, REUSED, UNSETTLED, QUOTA_MISMATCH)
#: Minutes after its upload an object may wait for its verdict before it is ``unsettled``.
UNSETTLED_MINUTES = 15


class ReconcileGrant(GrantLike, Protocol):
    """What reconcile reads of a grant, beyond usage's (:class:`broker.ledger.GrantRecord`)."""

    @property
    def grant_id(self) -> str: ...
    @property
    def min_bytes(self) -> int: ...
    @property
    def max_bytes(self) -> int: ...
    @property
    def reserved_bytes(self) -> int: ...
    @property
    def scopes(self) -> tuple[str, ...]: ...
    @property
    def etag(self) -> str | None: ...
    @property
    def reused_etag(self) -> str | None: ...
    @property
    def settled_at(self) -> int | None: ...


class CounterLike(Protocol):
    """One quota counter (:class:`broker.ledger.Counter`)."""

    @property
    def scope(self) -> str: ...
    @property
    def window(self) -> str: ...
    @property
    def value(self) -> int: ...


@dataclass(frozen=True)
class ListedObject:
    """One object as a bucket listing shows it (ETag unquoted; ``last_modified`` None if not told)."""

    bucket: str
    key: str
    size: int
    etag: str
    last_modified: datetime | None = None


@dataclass(frozen=True)
class Finding:
    """One disagreement: its kind, the grant and key it is about, and one line saying what it means."""

    kind: str
    explanation: str
    grant_id: str | None = None
    bucket: str | None = None
    key: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """The finding as ``--json`` writes it."""
        return {"kind": self.kind, "grant_id": self.grant_id, "bucket": self.bucket, "key": self.key,
                "explanation": self.explanation, **self.details}


@dataclass(frozen=True)
class Reconciliation:
    """Every finding, in :data:`KINDS` order, and what was compared."""

    findings: tuple[Finding, ...]
    grants: int  # grants issued in the period
    objects: int  # objects listed (outside the quarantine prefix)
    counters: int  # counters compared
    unlisted: int  # grants of the period whose keys lie under no listed prefix (not compared)
    busy: int = 0  # counters left out: they changed while they were read

    def summary(self) -> dict[str, int]:
        """How many findings of each kind, and what was compared."""
        counts = dict.fromkeys(KINDS, 0)
        for finding in self.findings:
            counts[finding.kind] += 1
        return {**counts, "findings": len(self.findings), "grants": self.grants, "objects": self.objects,
                "counters": self.counters, "unlisted_grants": self.unlisted, "busy_counters": self.busy}


def day_bytes(grant: ReconcileGrant) -> int:
    """What a grant adds to its day's bytes counter: its object's size once settled, its
    reservation while issued, nothing once expired unused; plus every reused object's size."""
    if grant.status in (VERIFIED, REJECTED) and grant.size is not None:
        held = grant.size
    elif grant.status == ISSUED:
        held = grant.reserved_bytes
    else:
        held = 0
    return held + grant.reused_bytes


def reconcile(grants: Iterable[ReconcileGrant], objects: Iterable[ListedObject], counters: Iterable[CounterLike],
              *, areas: Sequence[tuple[str, str]], quarantine_prefix: str, since: int, now: int,
              unsettled_after: int = UNSETTLED_MINUTES * 60,
              busy: Collection[tuple[str, str]] = ()) -> Reconciliation:
    """Every disagreement between the ledger and the listing of ``areas`` ((bucket, prefix) pairs).

    ``grants``: every grant issued since the start of ``since``'s UTC day (a day counter holds
    the whole day), and the grant of any listed object that was issued earlier. ``objects``: the
    listing of ``areas``. ``counters``: every counter of a window that ends after ``since``.
    Grants issued before ``since`` are only matched to objects and counted, never reported.
    ``busy``: (scope, window) counters that changed while they were read, not compared.
    """
    by_key: dict[tuple[str, str], ReconcileGrant] = {}
    for g in grants:
        by_key[(g.bucket, g.key)] = g
    found: dict[str, list[Finding]] = {kind: [] for kind in KINDS}
    present: set[tuple[str, str]] = set()
    listed = 0
    for obj in objects:
        if obj.key.startswith(quarantine_prefix):
            continue
        listed += 1
        grant = by_key.get((obj.bucket, obj.key))
        if grant is None:
            if obj.last_modified is None or obj.last_modified.timestamp() >= since:
                found[NO_GRANT].append(_no_grant(obj))
            continue
        present.add((obj.bucket, obj.key))
        differs = _object_differs(grant, obj)
        if differs is not None:
            found[DIFFERS].append(differs)
        unsettled = _unsettled(grant, obj, now, unsettled_after)
        if unsettled is not None:
            found[UNSETTLED].append(unsettled)
    in_period, unlisted = 0, 0
    for (bucket, key), grant in sorted(by_key.items(), key=lambda item: (item[1].issued_at, item[0])):
        if grant.issued_at < since:
            continue
        in_period += 1
        if grant.reused > 0:
            found[REUSED].append(_reused(grant))
        if (bucket, key) in present:
            continue
        if not any(b == bucket and key.startswith(p) for b, p in areas):
            unlisted += 1  # not listed: whether its object is there cannot be told
            continue
        if grant.status in (ISSUED, EXPIRED) and grant.etag is None and grant.expires_at <= now:
            found[UNUSED_GRANT].append(_unused(grant))
        elif grant.status == VERIFIED:
            found[DIFFERS].append(_finding(DIFFERS, grant, f"verified {_when(grant.settled_at or grant.issued_at)} "
                                           "but no longer at its key: deleted or moved since (not by the "
                                           "verifier, which moves only rejected objects)", cause="missing"))
    mismatches, compared = _quota(by_key.values(), counters, since, busy)
    found[QUOTA_MISMATCH].extend(mismatches)
    return Reconciliation(tuple(f for kind in KINDS for f in found[kind]), in_period, listed, compared, unlisted,
                          len(set(busy)))


# --------------------------------------------------------------------------- one check each


def _no_grant(obj: ListedObject) -> Finding:
    when = f" (stored {iso_z(obj.last_modified)})" if obj.last_modified is not None else ""
    return Finding(NO_GRANT, f"an object of {human_size(obj.size)}{when} that no grant in the ledger allowed: written "
                             "with IAM credentials rather than through a form, or before the ledger existed "
                             "(BROKER_LEDGER set after it was uploaded)",
                   None, obj.bucket, obj.key, {"size": obj.size, "etag": obj.etag})


def _object_differs(grant: ReconcileGrant, obj: ListedObject) -> Finding | None:
    causes: list[str] = []
    words: list[str] = []
    if not grant.min_bytes <= obj.size <= grant.max_bytes:
        causes.append("size")
        words.append(f"{_size(obj.size)} is outside its grant's {grant.min_bytes}-{grant.max_bytes} bytes")
    if grant.etag is not None and obj.etag not in (grant.etag, grant.reused_etag):
        causes.append("etag")
        words.append(f"its ETag {obj.etag} is not the {grant.status} one ({grant.etag}): it changed after "
                     "the verifier looked")
    elif grant.status == REJECTED and obj.etag == grant.etag:
        causes.append("not_quarantined")
        words.append("the verifier rejected it, yet it is still at its key (not quarantined or deleted)")
    if not causes:
        return None
    return _finding(DIFFERS, grant, "; ".join(words), cause=",".join(causes), size=obj.size, etag=obj.etag,
                    min_bytes=grant.min_bytes, max_bytes=grant.max_bytes, settled_etag=grant.etag)


def _unsettled(grant: ReconcileGrant, obj: ListedObject, now: int, after: int) -> Finding | None:
    if grant.status not in (ISSUED, EXPIRED) or grant.etag is not None:
        return None
    # Without a listing time, the latest the form could have been posted.
    landed = int(obj.last_modified.timestamp()) if obj.last_modified is not None else grant.expires_at
    if now - landed < after:
        return None  # the verifier may be judging it right now
    return _finding(UNSETTLED, grant, f"uploaded {_when(landed)}, its grant still {grant.status} and unsettled "
                    f"{(now - landed) // 60} min later: the verifier has not judged it (its event lost?); "
                    f"run: broker verify s3://{obj.bucket}/{obj.key}  (or broker verify --all)",
                    size=obj.size, etag=obj.etag, uploaded=iso_z(from_unix(landed)))


def _unused(grant: ReconcileGrant) -> Finding:
    note = "" if grant.status == EXPIRED else \
        "; still counted as issued: --release-expired gives its reserved bytes back"
    return _finding(UNUSED_GRANT, grant, f"granted {_when(grant.issued_at)}, expired {_when(grant.expires_at)} "
                    f"with nothing at its key: the form was never posted (or the upload failed){note}",
                    reserved_bytes=grant.reserved_bytes)


def _reused(grant: ReconcileGrant) -> Finding:
    return _finding(REUSED, grant, f"the form was posted {grant.reused} more time(s) after its first object "
                    f"(ETag {grant.etag}), {human_size(grant.reused_bytes)} more; each replaced the one "
                    "before. With bucket versioning on, restore the first verified version "
                    f"(aws s3api list-object-versions --bucket {grant.bucket} --prefix <key>; see docs)",
                    reused=grant.reused, reused_bytes=grant.reused_bytes, settled_etag=grant.etag,
                    reused_etag=grant.reused_etag)


def _quota(grants: Iterable[ReconcileGrant], counters: Iterable[CounterLike], since: int,
           busy: Collection[tuple[str, str]]) -> tuple[list[Finding], int]:
    expected: dict[tuple[str, str], int] = {}
    for g in grants:
        for scope in g.scopes:
            hour, day = (scope, hour_window(g.issued_at)), (scope, day_window(g.issued_at))
            expected[hour] = expected.get(hour, 0) + 1
            expected[day] = expected.get(day, 0) + day_bytes(g)
    counted = {(c.scope, c.window): c.value for c in counters if window_end(c.window) > since}
    windows = sorted(w for w in set(counted) | {w for w in expected if window_end(w[1]) > since} if w not in busy)
    out = []
    for scope, window in windows:
        have, want = counted.get((scope, window), 0), expected.get((scope, window), 0)
        if have == want:
            continue
        what = "grants issued in hour" if window[0] == "h" else "bytes of day"
        start = int(window[1:]) * (3600 if window[0] == "h" else 86400)
        label = iso_z(from_unix(start)) if window[0] == "h" else day_label(start)
        out.append(Finding(QUOTA_MISMATCH, f"{scope}: the counter of {what} {label} ({window}) holds {have}, "
                                           f"its grants add up to {want}",
                           details={"scope": scope, "window": window, "counted": have, "expected": want}))
    return out, len(windows)


def _finding(kind: str, grant: ReconcileGrant, explanation: str, **details: Any) -> Finding:
    return Finding(kind, explanation, grant.grant_id, grant.bucket, grant.key,
                   {"client": grant.client, "profile": grant.profile, "status": grant.status, **details})


def _size(n: int) -> str:
    human = human_size(n)
    return human if human.endswith(" bytes") else f"{human} ({n} bytes)"


def _when(ts: int) -> str:
    return iso_z(from_unix(ts))
