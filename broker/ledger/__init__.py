"""The grant ledger: every grant recorded before its form is returned, settled when its object lands.

One small interface, :class:`Ledger`, with two engines:

- :mod:`broker.ledger.sqlite` (the embedded default): one file, WAL mode, safe under the several
  worker processes of ``broker serve``; grants recorded in a journal per process and folded in
  batches, quota counters raised only by conditional writes in ``BEGIN IMMEDIATE`` transactions.
- :mod:`broker.ledger.dynamodb`: one table shared by many Lambda instances; every invariant a
  conditional write, never a read-modify-write.

``BROKER_LEDGER`` picks one (:func:`broker.ledger.engines.open_ledger`): ``sqlite:///var/ledger.db``,
``dynamodb://table-name``, or ``off`` (the broker signs and forgets, as it always could).

What the ledger holds, the same in both engines:

- **grants**: one :class:`GrantRecord` per grant, keyed by :func:`grant_id_for` of its bucket and
  key (a key is server-random and never granted twice), so the verifier finds an object's grant
  from the object alone. Status ``issued`` until the verifier settles it ``verified`` or
  ``rejected``, or it expires unused (``expired``).
- **counters**: per quota scope (``client:<id>`` and ``user:<client>:<user>``) and window: grants
  issued in the UTC hour (``h<hours since epoch>``, never released: a grant is a permission) and
  bytes in the UTC day (``d<days since epoch>``): the declared size (else the rule's max)
  reserved at issue, settled to the stored size, released when a grant expires unused. A
  reservation that would take a counter over its limit is refused: :class:`QuotaExceeded`.
- **denials**: a count per client, profile and UTC day, for ``broker usage``.

Times are whole seconds since the epoch (UTC); windows are fixed UTC hours and days.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Iterator, Sequence

from broker.core.grants import grant_id_for as grant_id_for  # re-exported: how a grant's id is made
from broker.core.windows import day_of as day_of, hour_of as hour_of  # re-exported: the quota windows
from broker.core.windows import window_end as window_end, window_start as window_start
from broker.errors import ServiceUnavailable

ISSUED, VERIFIED, REJECTED, EXPIRED = "issued", "verified", "rejected", "expired"
#: Outcomes of :meth:`Ledger.settle`.
SETTLED, REPLAYED, REUSED, NO_GRANT = "settled", "replayed", "reused", "no_grant"


class LedgerUnavailable(ServiceUnavailable):
    """The ledger cannot be read or written: no grant is issued without its record (fail closed)."""

    code = "ledger_unavailable"


@dataclass(frozen=True)
class Limit:
    """One quota scope and its limits (None: no limit of that kind)."""

    scope: str  # "client:<id>" or "user:<client>:<user>"
    uploads_per_hour: int | None = None
    bytes_per_day: int | None = None


class QuotaExceeded(Exception):
    """A reservation would take ``scope`` over ``limit``: which, its limit, the usage, when to retry."""

    def __init__(self, scope: str, quota: str, limit: int, usage: int, retry_after: int) -> None:
        super().__init__(f"{scope}: {quota} {usage} of {limit}")
        self.scope = scope
        self.quota = quota  # "uploads_per_hour" | "bytes_per_day"
        self.limit = limit
        self.usage = usage  # already counted in the window, before this grant
        self.retry_after = retry_after  # seconds until the window ends


@dataclass(frozen=True)
class GrantRecord:
    """One grant as the ledger keeps it."""

    grant_id: str
    client: str
    profile: str
    bucket: str
    key: str
    content_type: str
    min_bytes: int
    max_bytes: int
    reserved_bytes: int  # counted against bytes_per_day until settled or expired
    issued_at: int
    expires_at: int
    declared_size: int | None = None
    user: str | None = None  # the end user, when one is known (authorizer ``sub``, session user)
    protocol: str = "native"
    request_id: str | None = None
    scopes: tuple[str, ...] = ()  # the quota scopes it was counted in
    status: str = ISSUED
    size: int | None = None  # bytes stored, once settled
    etag: str | None = None  # the settled object's ETag (unquoted)
    checks: tuple[str, ...] = ()  # failed checks, when rejected
    settled_at: int | None = None
    reused: int = 0  # further, different objects seen at the granted key
    reused_etag: str | None = None  # the last of them
    reused_bytes: int = 0  # their sizes, counted in the day's bytes like the first object's


@dataclass(frozen=True)
class Settlement:
    """What settling an object did: ``settled`` (first time), ``replayed`` (that same object
    again: nothing changed), ``reused`` (a different object at an already settled key) or
    ``no_grant`` (no grant has this key)."""

    outcome: str
    grant: GrantRecord | None


@dataclass(frozen=True)
class Counter:
    """One counter: a scope's grants in an hour (``h…``) or bytes in a day (``d…``)."""

    scope: str
    window: str
    value: int


class Ledger(abc.ABC):
    """Where grants are recorded, reserved against quotas, settled and reported."""

    #: Where it is, for logs and --help (never a secret).
    location: str = ""

    @abc.abstractmethod
    def reserve(self, grant: GrantRecord, limits: Sequence[Limit], *, now: int) -> GrantRecord:
        """Record ``grant`` and count it in every limit's scope, all or nothing.

        Releases the scopes' expired, unused grants first. Raises :class:`QuotaExceeded` (nothing
        recorded) or :class:`LedgerUnavailable`. Returns the record as stored (with its scopes).
        """

    @abc.abstractmethod
    def settle(self, bucket: str, key: str, *, etag: str, size: int, verdict: str,
               checks: Sequence[str] = (), now: int) -> Settlement:
        """Settle the grant of ``bucket/key`` with the object the verifier judged (``verdict``:
        verified or rejected); its reservation becomes ``size``. Idempotent for one ETag."""

    @abc.abstractmethod
    def get(self, grant_id: str) -> GrantRecord | None:
        """One grant, or None."""

    @abc.abstractmethod
    def grants(self, *, since: int = 0, until: int | None = None) -> Iterator[GrantRecord]:
        """Grants issued in ``[since, until)``, oldest first."""

    @abc.abstractmethod
    def counters(self, *, since: int = 0) -> Iterator[Counter]:
        """Every counter of a window that ends after ``since``."""

    @abc.abstractmethod
    def release_expired(self, *, now: int, limit: int = 1000) -> int:
        """Mark up to ``limit`` expired, unused grants ``expired`` and release their bytes; how many."""

    @abc.abstractmethod
    def count_denial(self, client: str, profile: str | None, *, now: int) -> None:
        """Count one denial (best effort: a denial is audited whether or not it is counted)."""

    @abc.abstractmethod
    def denials(self, *, since: int = 0) -> Iterator[tuple[str, str, str, int]]:
        """(client, profile or '', day window, count) for every day ending after ``since``."""

    def close(self) -> None:
        """Release connections (optional)."""
