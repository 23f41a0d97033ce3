"""broker.core.reconcile: every kind of finding, and each check shown able to find something.

Grants and counters come from a real SQLite ledger (reserve, settle, release), so the quota
check is held to what the engine really counts, not to a copy of its arithmetic.
"""
from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator

import pytest

from broker.core import reconcile as rc
from broker.core.reconcile import ListedObject, reconcile
from broker.ledger import (
    EXPIRED, REJECTED, VERIFIED, Counter, GrantRecord, Ledger, Limit, day_of, grant_id_for, hour_of, window_end,
)
from broker.ledger.sqlite import SqliteLedger
from broker.timefmt import from_unix

DAY = 86400
T0 = 1_795_000_000 - 1_795_000_000 % DAY + 10 * 3600  # 10:00 UTC
NOW = T0 + 3600
SINCE = T0 - 600
BUCKET = "uploads"
PREFIX = "up/acme/"
AREAS = [(BUCKET, PREFIX)]
Q = "quarantine/"
LIMITS = [Limit("client:acme", 100, 10**9)]


def grant(n: int, *, issued: int = T0, ttl: int = 300, reserved: int = 500, key: str | None = None) -> GrantRecord:
    key = key or f"{PREFIX}{n:032x}.png"
    return GrantRecord(grant_id=grant_id_for(BUCKET, key), client="acme", profile="avatars", bucket=BUCKET, key=key,
                       content_type="image/png", min_bytes=10, max_bytes=1000, reserved_bytes=reserved,
                       issued_at=issued, expires_at=issued + ttl)


def obj(g: GrantRecord | str, size: int = 100, etag: str = "e1", at: int | None = T0 + 10) -> ListedObject:
    key = g if isinstance(g, str) else g.key
    return ListedObject(BUCKET, key, size, etag, from_unix(at) if at is not None else None)


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    db = SqliteLedger(tmp_path / "ledger.db")
    yield db
    db.close()


def run(ledger: Ledger, objects: list[ListedObject], *, counters: list[Any] | None = None,
        **options: Any) -> rc.Reconciliation:
    since = options.pop("since", SINCE)
    return reconcile(list(ledger.grants(since=since - since % DAY)), objects,
                     list(ledger.counters(since=since)) if counters is None else counters,
                     areas=options.pop("areas", AREAS), quarantine_prefix=Q, since=since,
                     now=options.pop("now", NOW), **options)


def kinds(result: rc.Reconciliation) -> list[tuple[str, str | None]]:
    return [(f.kind, f.key) for f in result.findings]


def settled(ledger: Ledger, g: GrantRecord, *, size: int = 100, etag: str = "e1", verdict: str = VERIFIED,
            now: int = T0 + 20) -> GrantRecord:
    ledger.reserve(g, LIMITS, now=g.issued_at)
    ledger.settle(g.bucket, g.key, etag=etag, size=size, verdict=verdict, now=now)
    out = ledger.get(g.grant_id)
    assert out is not None
    return out


# --------------------------------------------------------------------------- nothing to find


def test_a_clean_state_has_no_findings(ledger: Ledger) -> None:
    a = settled(ledger, grant(1))
    ledger.reserve(grant(2, issued=NOW - 60), LIMITS, now=NOW - 60)  # open: its form can still be posted
    early = grant(3, issued=SINCE - 120, ttl=60)  # expired unused, but before the period
    ledger.reserve(early, LIMITS, now=early.issued_at)
    result = run(ledger, [obj(a)])
    assert result.findings == ()
    assert result.summary() == {**dict.fromkeys(rc.KINDS, 0), "findings": 0, "grants": 2, "objects": 1,
                                "counters": 3, "unlisted_grants": 0, "busy_counters": 0}
    assert kinds(run(ledger, [obj(a)], since=SINCE - 600)) == [("unused_grant", early.key)]


# --------------------------------------------------------------------------- each kind


def test_an_empty_listing_yields_the_unused_and_the_missing_not_nothing(ledger: Ledger) -> None:
    verified = settled(ledger, grant(1))
    rejected = settled(ledger, grant(2), verdict=REJECTED)  # quarantined: gone from its key, as it should be
    ledger.reserve(grant(4, issued=NOW - 10), LIMITS, now=NOW - 10)  # still open
    ledger.reserve(grant(3), LIMITS, now=T0)  # expired, not released yet (a reservation releases what expired)
    result = run(ledger, [])
    assert kinds(result) == [("unused_grant", grant(3).key), ("differs", verified.key)]
    unused, missing = result.findings
    assert unused.grant_id == grant(3).grant_id and "--release-expired" in unused.explanation
    assert missing.details["cause"] == "missing" and "no longer at its key" in missing.explanation
    assert rejected.key not in [f.key for f in result.findings]


def test_a_released_grant_is_unused_without_the_release_hint(ledger: Ledger) -> None:
    ledger.reserve(grant(1), LIMITS, now=T0)
    assert ledger.release_expired(now=NOW) == 1
    (finding,) = run(ledger, []).findings
    assert finding.kind == "unused_grant" and finding.details["status"] == EXPIRED
    assert "--release-expired" not in finding.explanation


def test_objects_without_a_grant(ledger: Ledger) -> None:
    a = settled(ledger, grant(1))
    listing = [obj(a), obj(f"{PREFIX}by-hand.png", at=T0 + 5), obj(f"{PREFIX}no-date.png", at=None),
               obj(f"{PREFIX}old.png", at=SINCE - 1), obj(f"{Q}{PREFIX}x.png", at=T0)]
    result = run(ledger, listing)
    assert kinds(result) == [("no_grant", f"{PREFIX}by-hand.png"), ("no_grant", f"{PREFIX}no-date.png")]
    assert result.findings[0].grant_id is None
    assert "IAM credentials" in result.findings[0].explanation and "before the ledger" in result.findings[0].explanation
    assert result.objects == 4  # the quarantined one is not counted


@pytest.mark.parametrize("size, etag, verdict, cause", [
    pytest.param(5000, "e1", VERIFIED, "size", id="too_large"),
    pytest.param(1, "e1", VERIFIED, "size", id="too_small"),
    pytest.param(100, "e2", VERIFIED, "etag", id="changed_after_verified"),
    pytest.param(5000, "e2", VERIFIED, "size,etag", id="both"),
    pytest.param(100, "e1", REJECTED, "not_quarantined", id="rejected_still_there"),
])
def test_an_object_unlike_its_grant_differs(ledger: Ledger, size: int, etag: str, verdict: str, cause: str) -> None:
    g = settled(ledger, grant(1), verdict=verdict)
    (finding,) = run(ledger, [obj(g, size=size, etag=etag)]).findings
    assert (finding.kind, finding.grant_id, finding.key, finding.details["cause"]) == \
        ("differs", g.grant_id, g.key, cause)


def test_the_reused_object_is_the_one_expected_at_the_key(ledger: Ledger) -> None:
    g = settled(ledger, grant(1))
    ledger.settle(g.bucket, g.key, etag="e2", size=300, verdict=VERIFIED, now=T0 + 30)
    result = run(ledger, [obj(g, size=300, etag="e2")])
    assert kinds(result) == [("reused", g.key)]  # no "differs": e2 is the reused ETag the ledger knows
    (finding,) = result.findings
    assert finding.details["reused"] == 1 and finding.details["reused_bytes"] == 300
    assert "versioning" in finding.explanation and "restore the first verified version" in finding.explanation


def test_an_object_left_unjudged_is_unsettled_after_the_grace(ledger: Ledger) -> None:
    old, fresh, undated = grant(1), grant(2), grant(3, issued=T0 + 100)
    for g in (old, fresh, undated):
        ledger.reserve(g, LIMITS, now=g.issued_at)
    listing = [obj(old, at=T0 + 10), obj(fresh, at=NOW - 60), obj(undated, at=None)]
    result = run(ledger, listing)
    assert kinds(result) == [("unsettled", old.key), ("unsettled", undated.key)]
    assert "broker verify" in result.findings[0].explanation
    assert kinds(run(ledger, listing, unsettled_after=3600)) == []  # within a longer grace: still being judged


def test_a_grant_released_before_its_object_was_judged_is_unsettled(ledger: Ledger) -> None:
    ledger.reserve(grant(1), LIMITS, now=T0)
    ledger.release_expired(now=T0 + 400)
    assert kinds(run(ledger, [obj(grant(1))])) == [("unsettled", grant(1).key)]


# --------------------------------------------------------------------------- quotas


def test_counters_as_the_ledger_keeps_them_match(ledger: Ledger) -> None:
    ledger.reserve(grant(6, issued=NOW - 30), LIMITS, now=NOW - 30)  # open: its reservation counts
    settled(ledger, grant(1), size=70)
    g2 = settled(ledger, grant(2), size=80)
    ledger.settle(g2.bucket, g2.key, etag="e9", size=50, verdict=VERIFIED, now=T0 + 40)  # reuse counts its bytes
    ledger.reserve(grant(3), LIMITS, now=T0)  # expires unused and is released
    ledger.reserve(grant(4, issued=T0 + 5), LIMITS, now=T0 + 5)  # expires unused and is not
    ledger.release_expired(now=T0 + 302, limit=1)
    late = grant(5, issued=T0 + 6)  # released, then its object came and was judged anyway
    ledger.reserve(late, LIMITS, now=late.issued_at)
    ledger.release_expired(now=T0 + 400, limit=1)
    ledger.settle(late.bucket, late.key, etag="e5", size=60, verdict=REJECTED, now=T0 + 500)
    listing = [obj(grant(1), size=70), obj(g2, size=50, etag="e9")]
    assert kinds(run(ledger, listing)) == [("unused_grant", grant(3).key), ("unused_grant", grant(4).key),
                                           ("reused", g2.key)]
    assert {g.status for g in ledger.grants()} == {"issued", "verified", "expired", "rejected"}


def test_a_counter_off_by_one_is_a_mismatch(ledger: Ledger) -> None:
    g = settled(ledger, grant(1), size=70)
    counters = [replace(c, value=c.value + 1) if c.window[0] == "h" else c for c in ledger.counters(since=SINCE)]
    (finding,) = run(ledger, [obj(g, size=70)], counters=counters).findings
    assert finding.kind == "quota_mismatch" and finding.grant_id is None
    assert {k: finding.details[k] for k in ("scope", "window", "counted", "expected")} == \
        {"scope": "client:acme", "window": hour_of(T0), "counted": 2, "expected": 1}


def test_no_counters_at_all_is_a_mismatch_for_every_window_not_a_pass(ledger: Ledger) -> None:
    g = settled(ledger, grant(1), size=70)
    result = run(ledger, [obj(g, size=70)], counters=[])
    assert sorted((f.details["window"], f.details["counted"], f.details["expected"]) for f in result.findings) == \
        [(day_of(T0), 0, 70), (hour_of(T0), 0, 1)]


def test_a_counter_without_grants_is_a_mismatch(ledger: Ledger) -> None:
    stray = [Counter("client:ghost", day_of(T0), 123)]
    (finding,) = run(ledger, [], counters=stray).findings
    assert (finding.details["scope"], finding.details["counted"], finding.details["expected"]) == \
        ("client:ghost", 123, 0)


def test_a_counter_that_moved_while_read_is_not_compared(ledger: Ledger) -> None:
    g = settled(ledger, grant(1), size=70)
    counters = [replace(c, value=c.value + 1) for c in ledger.counters(since=SINCE)]
    result = run(ledger, [obj(g, size=70)], counters=counters, busy={("client:acme", hour_of(T0))})
    assert [f.details["window"] for f in result.findings] == [day_of(T0)]
    assert result.busy == 1


def test_windows_that_ended_before_the_period_are_not_compared(ledger: Ledger) -> None:
    g = settled(ledger, grant(1, issued=T0 - DAY), size=70)  # yesterday: its counters ended before SINCE
    result = run(ledger, [obj(g, size=70, at=T0 - DAY + 10)], counters=[])
    assert result.findings == () and result.counters == 0


# --------------------------------------------------------------------------- what is not compared


def test_a_grant_under_no_listed_prefix_is_not_called_unused(ledger: Ledger) -> None:
    ledger.reserve(grant(1, key="elsewhere/acme/x.png"), LIMITS, now=T0)
    result = run(ledger, [])
    assert result.findings == () and result.unlisted == 1


def test_grants_before_the_period_are_matched_but_not_reported(ledger: Ledger) -> None:
    early = settled(ledger, grant(1, issued=SINCE - 300))  # the same day, before --since
    ledger.reserve(grant(2, issued=SINCE - 300), LIMITS, now=SINCE - 300)  # expired unused, before the period
    result = run(ledger, [obj(early, at=SINCE + 1)])
    assert result.findings == () and result.grants == 0


def test_quota_windows_are_fixed_utc_hours_and_days() -> None:
    from broker.core.windows import window_start

    for ts in (0, T0, T0 + 3599, T0 + DAY):
        for window, span in ((hour_of(ts), 3600), (day_of(ts), 86400)):
            assert window_start(window) <= ts < window_end(window) == window_start(window) + span
            assert window_start(window) % span == 0
    assert (hour_of(7199), hour_of(7200), day_of(86399), day_of(86400)) == ("h1", "h2", "d0", "d1")


def test_a_finding_as_json_names_its_kind_grant_and_key(ledger: Ledger) -> None:
    ledger.reserve(grant(1), LIMITS, now=T0)
    (finding,) = run(ledger, []).findings
    out = finding.as_dict()
    assert {k: out[k] for k in ("kind", "grant_id", "bucket", "key", "client", "profile")} == \
        {"kind": "unused_grant", "grant_id": grant(1).grant_id, "bucket": BUCKET, "key": grant(1).key,
         "client": "acme", "profile": "avatars"}
    assert isinstance(out["explanation"], str) and "\n" not in out["explanation"]


def test_listing_times_are_aware_datetimes() -> None:
    assert isinstance(obj(grant(1)).last_modified, datetime)
