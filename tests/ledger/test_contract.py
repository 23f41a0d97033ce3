"""The ledger's contract, run on every engine (SQLite, DynamoDB on moto, DynamoDB on dynalite).

Each guarantee of :class:`broker.ledger.Ledger` is tried here as an attacker or a crash would:
quotas under 16 threads, replays, reuse, expiry, all-or-nothing across scopes.
"""
from __future__ import annotations

import threading
from dataclasses import replace

import pytest

from broker.ledger import (
    EXPIRED, ISSUED, NO_GRANT, REJECTED, REPLAYED, REUSED, SETTLED, VERIFIED, GrantRecord, Ledger, Limit,
    QuotaExceeded, day_of, grant_id_for, hour_of,
)

T0 = 1_795_000_000 - 1_795_000_000 % 86400 + 3600 * 10  # 10:00 UTC on some day
MIB = 1024 * 1024


def grant(n: int = 0, *, client: str = "acme", reserved: int = MIB, issued: int = T0, ttl: int = 300,
          user: str | None = None, bucket: str = "uploads") -> GrantRecord:
    key = f"uploads/{client}/{n:032x}.png"
    return GrantRecord(
        grant_id=grant_id_for(bucket, key), client=client, profile="avatar", bucket=bucket, key=key,
        content_type="image/png", min_bytes=1, max_bytes=5 * MIB, reserved_bytes=reserved, issued_at=issued,
        expires_at=issued + ttl, declared_size=reserved, user=user, request_id=f"req-{n}")


def counters(ledger: Ledger) -> dict[tuple[str, str], int]:
    return {(c.scope, c.window): c.value for c in ledger.counters()}


def test_a_reserved_grant_is_recorded_with_its_scopes(ledger: Ledger) -> None:
    g = grant(1, user="alice")
    stored = ledger.reserve(g, [Limit("client:acme", 10, 10 * MIB), Limit("user:acme:alice", 5, None)], now=T0)
    assert stored.scopes == ("client:acme", "user:acme:alice")
    got = ledger.get(g.grant_id)
    assert got == replace(g, scopes=stored.scopes) and got.status == ISSUED
    assert ledger.get("0" * 32) is None
    assert counters(ledger) == {("client:acme", hour_of(T0)): 1, ("client:acme", day_of(T0)): MIB,
                                ("user:acme:alice", hour_of(T0)): 1, ("user:acme:alice", day_of(T0)): MIB}


def test_uploads_per_hour_is_never_exceeded_and_says_when_to_retry(ledger: Ledger) -> None:
    limit = Limit("client:acme", uploads_per_hour=3)
    for n in range(3):
        ledger.reserve(grant(n, issued=T0 + n), [limit], now=T0 + n)
    with pytest.raises(QuotaExceeded) as caught:
        ledger.reserve(grant(9, issued=T0 + 60), [limit], now=T0 + 60)
    exc = caught.value
    assert (exc.scope, exc.quota, exc.limit, exc.usage) == ("client:acme", "uploads_per_hour", 3, 3)
    assert exc.retry_after == 3600 - 60  # the hour started at T0
    assert ledger.get(grant(9).grant_id) is None  # nothing recorded
    ledger.reserve(grant(10, issued=T0 + 3600), [limit], now=T0 + 3600)  # the next hour


def test_bytes_per_day_counts_reservations_and_refuses_the_one_that_would_not_fit(ledger: Ledger) -> None:
    limit = Limit("client:acme", bytes_per_day=3 * MIB)
    ledger.reserve(grant(1, reserved=2 * MIB), [limit], now=T0)
    with pytest.raises(QuotaExceeded) as caught:
        ledger.reserve(grant(2, reserved=2 * MIB), [limit], now=T0)
    assert (caught.value.quota, caught.value.usage, caught.value.limit) == ("bytes_per_day", 2 * MIB, 3 * MIB)
    assert caught.value.retry_after == 14 * 3600
    ledger.reserve(grant(3, reserved=MIB), [limit], now=T0)  # exactly to the limit is allowed


def test_a_refusal_in_one_scope_counts_nothing_in_the_others(ledger: Ledger) -> None:
    limits = [Limit("client:acme", 100, 100 * MIB), Limit("user:acme:bob", 1, None)]
    ledger.reserve(grant(1, user="bob"), limits, now=T0)
    before = counters(ledger)
    with pytest.raises(QuotaExceeded) as caught:
        ledger.reserve(grant(2, user="bob"), limits, now=T0)
    assert caught.value.scope == "user:acme:bob"
    assert counters(ledger) == before


def test_settling_turns_the_reservation_into_the_stored_size(ledger: Ledger) -> None:
    g = ledger.reserve(grant(1, reserved=5 * MIB), [Limit("client:acme", None, 6 * MIB)], now=T0)
    done = ledger.settle(g.bucket, g.key, etag='"abc"', size=MIB, verdict=VERIFIED, now=T0 + 5)
    assert done.outcome == SETTLED and done.grant is not None
    assert (done.grant.status, done.grant.size, done.grant.etag, done.grant.settled_at) == (VERIFIED, MIB, "abc", T0 + 5)
    assert counters(ledger)[("client:acme", day_of(T0))] == MIB
    ledger.reserve(grant(2, reserved=5 * MIB), [Limit("client:acme", None, 6 * MIB)], now=T0 + 6)  # room again


def test_an_event_replayed_twice_is_settled_once(ledger: Ledger) -> None:
    g = ledger.reserve(grant(1), [Limit("client:acme")], now=T0)
    first = ledger.settle(g.bucket, g.key, etag="e1", size=100, verdict=REJECTED, checks=["too_small"], now=T0)
    assert first.outcome == SETTLED and first.grant is not None and first.grant.checks == ("too_small",)
    again = ledger.settle(g.bucket, g.key, etag='"e1"', size=100, verdict=REJECTED, checks=["too_small"], now=T0)
    assert again.outcome == REPLAYED and again.grant == first.grant
    assert counters(ledger)[("client:acme", day_of(T0))] == 100


def test_a_second_object_at_a_granted_key_is_reuse_counted_once(ledger: Ledger) -> None:
    g = ledger.reserve(grant(1), [Limit("client:acme")], now=T0)
    ledger.settle(g.bucket, g.key, etag="e1", size=100, verdict=VERIFIED, now=T0)
    reused = ledger.settle(g.bucket, g.key, etag="e2", size=300, verdict=VERIFIED, now=T0 + 1)
    assert reused.outcome == REUSED and reused.grant is not None
    assert (reused.grant.reused, reused.grant.reused_etag, reused.grant.etag, reused.grant.reused_bytes) == \
        (1, "e2", "e1", 300)
    assert ledger.settle(g.bucket, g.key, etag="e2", size=300, verdict=VERIFIED, now=T0 + 2).outcome == REPLAYED
    assert counters(ledger)[("client:acme", day_of(T0))] == 400


def test_an_object_no_grant_allowed_is_said_so(ledger: Ledger) -> None:
    assert ledger.settle("uploads", "uploads/acme/by-hand.png", etag="x", size=1, verdict=VERIFIED,
                         now=T0).outcome == NO_GRANT


def test_an_expired_unused_grant_gives_its_bytes_back(ledger: Ledger) -> None:
    limit = Limit("client:acme", None, 2 * MIB)
    ledger.reserve(grant(1, reserved=2 * MIB, ttl=60), [limit], now=T0)
    with pytest.raises(QuotaExceeded):
        ledger.reserve(grant(2, reserved=MIB), [limit], now=T0 + 59)
    ledger.reserve(grant(3, reserved=MIB), [limit], now=T0 + 61)  # the expired one was released first
    assert ledger.get(grant(1).grant_id).status == EXPIRED  # type: ignore[union-attr]
    assert counters(ledger)[("client:acme", day_of(T0))] == MIB


def test_release_expired_is_idempotent_and_leaves_live_grants(ledger: Ledger) -> None:
    ledger.reserve(grant(1, ttl=10), [Limit("client:acme")], now=T0)
    ledger.reserve(grant(2, ttl=1000), [Limit("client:acme")], now=T0)
    assert ledger.release_expired(now=T0 + 11) == 1
    assert ledger.release_expired(now=T0 + 11) == 0
    assert [g.status for g in ledger.grants()] == [EXPIRED, ISSUED]
    assert counters(ledger)[("client:acme", day_of(T0))] == MIB


def test_an_upload_that_lands_after_its_grant_expired_is_still_settled(ledger: Ledger) -> None:
    g = ledger.reserve(grant(1, ttl=10), [Limit("client:acme")], now=T0)
    ledger.release_expired(now=T0 + 11)
    done = ledger.settle(g.bucket, g.key, etag="late", size=700, verdict=VERIFIED, now=T0 + 12)
    assert done.outcome == SETTLED and done.grant is not None and done.grant.status == VERIFIED
    assert counters(ledger)[("client:acme", day_of(T0))] == 700  # released, then the real size


def test_grants_are_listed_oldest_first_within_a_range(ledger: Ledger) -> None:
    for n in range(7):
        ledger.reserve(grant(n, issued=T0 + n * 100), [Limit("client:acme")], now=T0 + n * 100)
    assert [g.issued_at for g in ledger.grants(since=T0 + 200, until=T0 + 500)] == [T0 + 200, T0 + 300, T0 + 400]
    assert len(list(ledger.grants())) == 7


def test_denials_are_counted_per_client_profile_and_day(ledger: Ledger) -> None:
    ledger.count_denial("acme", "avatar", now=T0)
    ledger.count_denial("acme", "avatar", now=T0 + 1)
    ledger.count_denial("acme", None, now=T0)
    ledger.count_denial("acme", "avatar", now=T0 + 86400)
    assert sorted(ledger.denials()) == [("acme", "", day_of(T0), 1), ("acme", "avatar", day_of(T0), 2),
                                        ("acme", "avatar", day_of(T0 + 86400), 1)]
    assert sorted(ledger.denials(since=T0 + 86400)) == [("acme", "avatar", day_of(T0 + 86400), 1)]


def test_a_key_is_never_recorded_twice(ledger: Ledger) -> None:
    ledger.reserve(grant(1), [Limit("client:acme")], now=T0)
    with pytest.raises(Exception) as caught:  # LedgerUnavailable: the caller issues nothing
        ledger.reserve(grant(1), [Limit("client:acme")], now=T0)
    assert getattr(caught.value, "status", None) == 503
    assert counters(ledger)[("client:acme", hour_of(T0))] == 1


def test_sixteen_threads_hammering_one_quota_never_exceed_it(real_ledger: Ledger) -> None:
    limits = [Limit("client:acme", uploads_per_hour=40, bytes_per_day=30 * MIB)]
    granted: list[int] = []
    refused: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(16)

    def hammer(worker: int) -> None:
        start.wait()
        for i in range(6):
            n = worker * 100 + i
            try:
                real_ledger.reserve(grant(n), limits, now=T0)
            except QuotaExceeded as exc:
                with lock:
                    refused.append(exc.quota)
            else:
                with lock:
                    granted.append(n)

    threads = [threading.Thread(target=hammer, args=(w,)) for w in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(granted) == 30 and len(refused) == 16 * 6 - 30  # bytes bound first: 30 x 1 MiB
    stored = list(real_ledger.grants())
    assert sorted(g.grant_id for g in stored) == sorted(grant(n).grant_id for n in granted)
    assert counters(real_ledger) == {("client:acme", hour_of(T0)): 30, ("client:acme", day_of(T0)): 30 * MIB}
