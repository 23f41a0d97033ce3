"""``broker usage``: grants, uploads, bytes and denials per client, profile and day. Pure.

Two sources, one shape (:class:`UsageRow`):

- the grant ledger (:func:`from_grants`): every grant with its status, settled size and reuse;
  denials as the ledger counts them (per client, profile and UTC day);
- audit lines (:func:`audit_event` per line, then :func:`from_audit`), when the broker keeps no
  ledger: an allowed decision is a grant, a denied one a denial, a ``verification`` line an
  upload with its verdict and size.

Either way an upload is counted in its grant's row (the day it was granted), and a grant is
``expired`` once its form can no longer be posted without an object, ``unused`` while it still
can. Times are whole seconds since the epoch (UTC), passed in: nothing here reads a clock.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Iterable, Protocol, Sequence

from broker.core.windows import window_start

#: What rows can be grouped by, in the order the columns are shown when all are asked for.
DIMENSIONS = ("client", "profile", "day")
DEFAULT_BY = ("client", "day")
#: The counts of a row, in column order.
COUNTS = ("grants", "uploads", "verified", "rejected", "expired", "unused", "bytes", "denials", "reused")
#: Grant statuses as the ledger writes them (broker.ledger.ISSUED, ...).
ISSUED, VERIFIED, REJECTED, EXPIRED = "issued", "verified", "rejected", "expired"

_RELATIVE = re.compile(r"^\s*([0-9]+)\s*([smhdw])\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DATE = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")


class GrantLike(Protocol):
    """What usage and reconcile read of a grant (:class:`broker.ledger.GrantRecord` has it all)."""

    @property
    def client(self) -> str: ...
    @property
    def profile(self) -> str: ...
    @property
    def bucket(self) -> str: ...
    @property
    def key(self) -> str: ...
    @property
    def issued_at(self) -> int: ...
    @property
    def expires_at(self) -> int: ...
    @property
    def status(self) -> str: ...
    @property
    def size(self) -> int | None: ...
    @property
    def reused(self) -> int: ...
    @property
    def reused_bytes(self) -> int: ...


@dataclass(frozen=True)
class UsageRow:
    """One group's counts; ``group`` is ((dimension, value), ...) in the order asked for."""

    group: tuple[tuple[str, str], ...] = ()
    grants: int = 0
    uploads: int = 0
    verified: int = 0
    rejected: int = 0
    expired: int = 0
    unused: int = 0
    bytes: int = 0
    denials: int = 0
    reused: int = 0

    def as_dict(self) -> dict[str, Any]:
        """The row as ``--json`` writes it: its dimensions, then its counts."""
        return {**dict(self.group), **{name: getattr(self, name) for name in COUNTS}}


@dataclass(frozen=True)
class AuditEvent:
    """One audit line that counts: a ``grant`` (allowed), a ``denial`` or a ``verification``."""

    kind: str
    at: int
    client: str
    profile: str
    bucket: str = ""
    key: str = ""
    expires_at: int | None = None
    verdict: str | None = None
    size: int = 0
    etag: str | None = None


def parse_moment(text: str, *, now: datetime, option: str = "--since") -> datetime:
    """``7d``, ``24h``, ``30m``, ``2w`` (before ``now``), ``2026-11-01`` (midnight UTC) or an ISO time.

    Raises ValueError saying what is accepted.
    """
    match = _RELATIVE.match(text)
    if match:
        return now - timedelta(seconds=int(match.group(1)) * _UNIT_SECONDS[match.group(2)])
    value = text.strip()
    try:
        if _DATE.match(value):
            return datetime.fromisoformat(value).replace(tzinfo=timezone.utc)
        moment = datetime.fromisoformat(value[:-1] + "+00:00" if value.endswith(("Z", "z")) else value)
    except ValueError:
        raise ValueError(f"{option} {text!r} is not a time: write 7d, 24h, 30m, 2026-11-01 "
                         "or 2026-11-01T12:00:00Z") from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=timezone.utc)


def parse_by(text: str) -> tuple[str, ...]:
    """``client,day`` -> ('client', 'day'); ValueError names the unknown dimension and the choices."""
    out: list[str] = []
    for name in (part.strip() for part in text.split(",")):
        if name not in DIMENSIONS:
            raise ValueError(f"--by {text!r}: {name!r} is not one of {', '.join(DIMENSIONS)} "
                             "(comma-separated, e.g. --by client,profile,day)")
        if name not in out:
            out.append(name)
    return tuple(out)


def day_label(ts: int) -> str:
    """The UTC date holding ``ts``: ``2026-11-28``."""
    return (datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(days=ts // 86400)).date().isoformat()


class _Tally:
    """Counts per group, added to while one report is built (never shared)."""

    def __init__(self, by: Sequence[str]) -> None:
        self.by = tuple(by)
        self.counts: dict[tuple[str, ...], dict[str, int]] = {}

    def add(self, client: str, profile: str, at: int, **amounts: int) -> None:
        values = {"client": client, "profile": profile, "day": day_label(at)}
        counts = self.counts.setdefault(tuple(values[d] for d in self.by), dict.fromkeys(COUNTS, 0))
        for name, amount in amounts.items():
            counts[name] += amount

    def rows(self) -> list[UsageRow]:
        return [UsageRow(tuple(zip(self.by, group)), **counts) for group, counts in sorted(self.counts.items())]


def from_grants(grants: Iterable[GrantLike], denials: Iterable[tuple[str, str, str, int]], *,
                by: Sequence[str] = DEFAULT_BY, since: int, until: int, now: int,
                client: str | None = None) -> list[UsageRow]:
    """Usage from the ledger: its grants issued in ``[since, until)`` and its daily denial counts.

    ``denials`` as :meth:`broker.ledger.Ledger.denials` yields them, (client, profile, ``d<day>``,
    count): a day is counted when it overlaps the period.
    """
    tally = _Tally(by)
    for g in grants:
        if not since <= g.issued_at < until or (client is not None and g.client != client):
            continue
        settled = g.status in (VERIFIED, REJECTED) and g.size is not None
        open_ = g.status == ISSUED and g.expires_at > now
        tally.add(g.client, g.profile, g.issued_at, grants=1, uploads=int(settled),
                  verified=int(settled and g.status == VERIFIED), rejected=int(settled and g.status == REJECTED),
                  # an issued grant past its expiry is expired, whether or not the ledger has released it yet
                  expired=int(g.status == EXPIRED or (g.status == ISSUED and not open_)), unused=int(open_),
                  bytes=(g.size if settled and g.size else 0) + g.reused_bytes, reused=g.reused)
    for who, profile, window, count in denials:
        start = window_start(window)
        if start < until and start + 86400 > since and (client is None or who == client):
            tally.add(who, profile, start, denials=count)
    return tally.rows()


def audit_event(rec: Any) -> AuditEvent | None:
    """The audit line ``rec`` (parsed JSON) as an event that counts, or None for one that does not
    (errors, metrics lines, other events); ValueError says why a line is malformed."""
    if not isinstance(rec, dict):
        raise ValueError(f"a JSON {type(rec).__name__}, not an object")
    if "_aws" in rec and "event" not in rec:
        return None  # a CloudWatch metrics line (EMF) beside the audit lines on standard output
    at = _seconds(rec.get("time"))
    event, decision = rec.get("event"), rec.get("decision")
    if event == "verification":
        verdict, size, key = rec.get("verdict"), rec.get("size"), rec.get("key")
        if verdict not in (VERIFIED, REJECTED) or not isinstance(size, int) or not isinstance(key, str):
            raise ValueError("a verification line without verdict, size or key")
        return AuditEvent("verification", at, _text(rec.get("client")), _text(rec.get("profile")),
                          _text(rec.get("bucket")), key, verdict=verdict, size=size, etag=rec.get("etag"))
    if decision == "allowed":
        if not isinstance(rec.get("client"), str) or not isinstance(rec.get("key"), str):
            raise ValueError("an allowed decision without client or key")
        expires = rec.get("expires_at")
        return AuditEvent("grant", at, rec["client"], _text(rec.get("profile")), _text(rec.get("bucket")),
                          rec["key"], expires_at=_seconds(expires) if expires is not None else None)
    if decision == "denied":
        return AuditEvent("denial", at, _text(rec.get("client")), _text(rec.get("profile")))
    if "event" not in rec:
        raise ValueError("not an audit record (no event)")
    return None


def from_audit(events: Iterable[AuditEvent], *, by: Sequence[str] = DEFAULT_BY, since: int, until: int,
               now: int, client: str | None = None) -> list[UsageRow]:
    """Usage from audit events, counted as :func:`from_grants` counts the ledger's records.

    Each granted key's first object settles it (verified or rejected); another object with a
    different ETag is reuse. An object whose allowed line is not among the events is counted on
    its own (its rule's client and profile, the day it was judged).
    """
    grants: dict[tuple[str, str], AuditEvent] = {}
    objects: dict[tuple[str, str], list[AuditEvent]] = {}
    tally = _Tally(by)
    for ev in events:
        if ev.kind == "grant":
            grants[(ev.bucket, ev.key)] = ev
        elif ev.kind == "verification":
            objects.setdefault((ev.bucket, ev.key), []).append(ev)
        elif since <= ev.at < until and (client is None or ev.client == client):
            tally.add(ev.client, ev.profile, ev.at, denials=1)
    for where, grant in grants.items():
        if not since <= grant.at < until or (client is not None and grant.client != client):
            continue
        seen = objects.pop(where, [])
        if seen:
            tally.add(grant.client, grant.profile, grant.at, grants=1, **_settled(seen))
        else:
            open_ = grant.expires_at is not None and grant.expires_at > now
            tally.add(grant.client, grant.profile, grant.at, grants=1, unused=int(open_),
                      expired=int(grant.expires_at is not None and not open_))
    for where, seen in objects.items():
        if where in grants:
            continue  # its grant is outside the period, so is it
        first = min(seen, key=lambda ev: ev.at)
        if since <= first.at < until and (client is None or first.client == client):
            tally.add(first.client, first.profile, first.at, **_settled(seen))
    return tally.rows()


def totals(rows: Iterable[UsageRow]) -> UsageRow:
    """Every row added up (its group empty)."""
    sums = dict.fromkeys(COUNTS, 0)
    for row in rows:
        for name in COUNTS:
            sums[name] += getattr(row, name)
    return UsageRow((), **sums)


def _settled(seen: list[AuditEvent]) -> dict[str, int]:
    """The counts of one key's verification lines: the first object settles, later different ones are reuse."""
    ordered = sorted(seen, key=lambda ev: ev.at)
    distinct: dict[Any, AuditEvent] = {}
    for n, ev in enumerate(ordered):
        distinct.setdefault(ev.etag if ev.etag else n, ev)
    first = ordered[0]
    return {"uploads": 1, "verified": int(first.verdict == VERIFIED), "rejected": int(first.verdict == REJECTED),
            "bytes": sum(ev.size for ev in distinct.values()), "reused": len(distinct) - 1}


def _seconds(value: Any) -> int:
    if not isinstance(value, str):
        raise ValueError("no time")
    try:
        moment = datetime.fromisoformat(value[:-1] + "+00:00" if value.endswith("Z") else value)
    except ValueError:
        raise ValueError(f"time {value[:40]!r} is not ISO 8601") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return int(moment.timestamp())


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""

