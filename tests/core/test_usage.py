"""broker.core.usage: the counting behind ``broker usage``, from ledger records and from audit lines."""
from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timezone

import pytest

from broker.core import usage
from broker.ledger import EXPIRED, ISSUED, REJECTED, VERIFIED, GrantRecord, day_of, grant_id_for
from broker.timefmt import from_unix, iso_z

DAY = 86400
T0 = 1_795_000_000 - 1_795_000_000 % DAY + 10 * 3600  # 10:00 UTC
NOW = T0 + 2 * DAY
D0, D1 = usage.day_label(T0), usage.day_label(T0 + DAY)


def grant(n: int, *, client: str = "acme", profile: str = "avatars", issued: int = T0, ttl: int = 300,
          status: str = ISSUED, size: int | None = None, reused: int = 0, reused_bytes: int = 0) -> GrantRecord:
    key = f"uploads/{client}/{n:032x}.png"
    return GrantRecord(grant_id=grant_id_for("b", key), client=client, profile=profile, bucket="b", key=key,
                       content_type="image/png", min_bytes=1, max_bytes=1000, reserved_bytes=1000,
                       issued_at=issued, expires_at=issued + ttl, status=status, size=size,
                       etag=f"e{n}" if size is not None else None, reused=reused, reused_bytes=reused_bytes)


def counts(row: usage.UsageRow) -> dict[str, int]:
    return {k: v for k, v in row.as_dict().items() if k in usage.COUNTS and v}


# --------------------------------------------------------------------------- options


@pytest.mark.parametrize("text, expected", [
    pytest.param("7d", datetime(2026, 11, 21, 12, tzinfo=timezone.utc), id="days"),
    pytest.param("24h", datetime(2026, 11, 27, 12, tzinfo=timezone.utc), id="hours"),
    pytest.param("30m", datetime(2026, 11, 28, 11, 30, tzinfo=timezone.utc), id="minutes"),
    pytest.param("2w", datetime(2026, 11, 14, 12, tzinfo=timezone.utc), id="weeks"),
    pytest.param("2026-11-01", datetime(2026, 11, 1, tzinfo=timezone.utc), id="date_is_utc_midnight"),
    pytest.param("2026-11-01T08:30:00Z", datetime(2026, 11, 1, 8, 30, tzinfo=timezone.utc), id="iso_z"),
    pytest.param("2026-11-01T10:30:00+02:00", datetime(2026, 11, 1, 8, 30, tzinfo=timezone.utc), id="offset"),
])
def test_parse_moment(text: str, expected: datetime) -> None:
    assert usage.parse_moment(text, now=datetime(2026, 11, 28, 12, tzinfo=timezone.utc)) == expected


@pytest.mark.parametrize("text", ["", "7 days", "yesterday", "2026-13-01", "-1d"])
def test_parse_moment_says_what_it_takes(text: str) -> None:
    with pytest.raises(ValueError, match="write 7d, 24h, 30m, 2026-11-01"):
        usage.parse_moment(text, now=datetime(2026, 11, 28, tzinfo=timezone.utc))


def test_parse_by() -> None:
    assert usage.parse_by("client,day") == ("client", "day")
    assert usage.parse_by("day, profile,day") == ("day", "profile")
    with pytest.raises(ValueError, match="'user' is not one of client, profile, day"):
        usage.parse_by("client,user")


def test_day_label_agrees_with_the_ledgers_day_window() -> None:
    for ts in (0, T0, T0 + DAY - 1, NOW):
        assert usage.day_label(ts) == from_unix(int(day_of(ts)[1:]) * DAY).date().isoformat()
        assert usage.day_label(ts) == from_unix(ts).date().isoformat()


# --------------------------------------------------------------------------- from the ledger


def test_every_status_is_counted_in_its_column() -> None:
    grants = [
        grant(1, status=VERIFIED, size=100),
        grant(2, status=REJECTED, size=2000),
        grant(3, status=EXPIRED),                              # expired and released
        grant(4, status=ISSUED),                               # expired, not yet released
        grant(5, status=ISSUED, issued=NOW - 60),              # still open: unused
        grant(6, status=VERIFIED, size=10, reused=2, reused_bytes=30),
        grant(7, status=VERIFIED, size=5, issued=T0 - DAY),    # before the period: not counted
    ]
    rows = usage.from_grants(grants, [], by=("client",), since=T0, until=NOW + 1, now=NOW)
    assert [r.group for r in rows] == [(("client", "acme"),)]
    assert counts(rows[0]) == {"grants": 6, "uploads": 3, "verified": 2, "rejected": 1, "expired": 2,
                               "unused": 1, "bytes": 100 + 2000 + 10 + 30, "reused": 2}


def test_rows_are_grouped_as_asked_and_filtered_by_client() -> None:
    grants = [grant(1, status=VERIFIED, size=1), grant(2, profile="docs", issued=T0 + DAY, status=VERIFIED, size=2),
              grant(3, client="zeta", status=VERIFIED, size=4)]
    denials = [("acme", "avatars", day_of(T0), 3), ("zeta", "", day_of(T0 + DAY), 1)]
    by_day = usage.from_grants(grants, denials, by=("day",), since=T0, until=NOW, now=NOW)
    assert [(r.group, r.grants, r.bytes, r.denials) for r in by_day] == [
        ((("day", D0),), 2, 5, 3), ((("day", D1),), 1, 2, 1)]
    both = usage.from_grants(grants, denials, by=("client", "profile", "day"), since=T0, until=NOW, now=NOW)
    assert [tuple(value for _, value in r.group) for r in both] == [
        ("acme", "avatars", D0), ("acme", "docs", D1), ("zeta", "", D1), ("zeta", "avatars", D0)]
    assert [name for name, _ in both[0].group] == ["client", "profile", "day"]
    only = usage.from_grants(grants, denials, by=("client",), since=T0, until=NOW, now=NOW, client="zeta")
    assert [(r.group, r.grants, r.denials) for r in only] == [((("client", "zeta"),), 1, 1)]


def test_a_denial_day_counts_when_it_overlaps_the_period() -> None:
    denials = [("acme", "avatars", day_of(T0 - DAY), 5), ("acme", "avatars", day_of(T0), 2),
               ("acme", "avatars", day_of(T0 + DAY), 7)]
    rows = usage.from_grants([], denials, by=("client",), since=T0, until=T0 + 3600, now=NOW)
    assert [r.denials for r in rows] == [2]  # 10:00-11:00 on day 0 only


def test_nothing_in_the_period_is_no_rows_and_totals_of_zero() -> None:
    assert usage.from_grants([grant(1)], [], since=NOW, until=NOW + 1, now=NOW) == []
    assert usage.totals([]) == usage.UsageRow()


def test_totals_add_every_row() -> None:
    rows = usage.from_grants([grant(1, status=VERIFIED, size=3), grant(2, client="z", status=VERIFIED, size=4)],
                             [], since=T0, until=NOW, now=NOW)
    assert counts(usage.totals(rows)) == {"grants": 2, "uploads": 2, "verified": 2, "bytes": 7}
    assert usage.totals(rows).as_dict() == {name: getattr(usage.totals(rows), name) for name in usage.COUNTS}


# --------------------------------------------------------------------------- from audit lines


def allowed(key: str, at: int, *, client: str = "acme", profile: str = "avatars", ttl: int = 300) -> dict:
    return {"time": iso_z(from_unix(at), millis=True), "event": "upload", "decision": "allowed", "client": client,
            "profile": profile, "bucket": "b", "key": key, "expires_at": iso_z(from_unix(at + ttl), millis=True)}


def verification(key: str, at: int, *, verdict: str = VERIFIED, size: int = 10, etag: str = "e1",
                 client: str = "acme") -> dict:
    return {"time": iso_z(from_unix(at), millis=True), "event": "verification", "verdict": verdict,
            "client": client, "profile": "avatars", "bucket": "b", "key": key, "etag": etag, "size": size}


def denied(at: int, client: str = "acme") -> dict:
    return {"time": iso_z(from_unix(at), millis=True), "event": "upload", "decision": "denied", "client": client,
            "profile": "avatars", "check": "too_large"}


@pytest.mark.parametrize("rec", [
    pytest.param({"time": "2026-11-28T14:54:31.123Z", "event": "upload", "decision": "error", "status": 400},
                 id="error_line"),
    pytest.param({"_aws": {"Timestamp": 1}, "allowed": 1}, id="metrics_line"),
    pytest.param({"time": "2026-11-28T14:54:31Z", "event": "callback"}, id="other_event"),
])
def test_lines_that_do_not_count_are_not_malformed(rec: dict) -> None:
    assert usage.audit_event(rec) is None


@pytest.mark.parametrize("rec, reason", [
    pytest.param([1, 2], "a JSON list", id="not_an_object"),
    pytest.param({"event": "upload", "decision": "allowed", "client": "a", "key": "k"}, "no time", id="no_time"),
    pytest.param({"time": "yesterday", "event": "upload", "decision": "denied"}, "not ISO 8601", id="bad_time"),
    pytest.param({"time": "2026-11-28T14:54:31Z", "event": "verification", "verdict": "verified", "key": "k"},
                 "without verdict, size or key", id="verification_without_size"),
    pytest.param({"time": "2026-11-28T14:54:31Z", "decision": "allowed", "client": "a"}, "without client or key",
                 id="allowed_without_key"),
    pytest.param({"time": "2026-11-28T14:54:31Z", "hello": 1}, "not an audit record", id="no_event"),
])
def test_malformed_lines_say_why(rec: object, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        usage.audit_event(rec)


def test_audit_lines_count_as_the_ledger_counts_the_same_history() -> None:
    """The same history told twice, by the ledger and by the audit log, makes the same rows."""
    k = [f"uploads/acme/{n:032x}.png" for n in range(8)]
    lines = [
        allowed(k[1], T0), verification(k[1], T0 + 5, size=100),
        allowed(k[2], T0), verification(k[2], T0 + 5, verdict=REJECTED, size=2000),
        allowed(k[3], T0),                                                   # expired unused
        allowed(k[5], NOW - 60),                                             # still open
        allowed(k[6], T0 + DAY), verification(k[6], T0 + DAY + 5, size=10, etag="a"),
        verification(k[6], T0 + DAY + 9, size=10, etag="a"),                 # the same object again: no reuse
        verification(k[6], T0 + DAY + 60, size=30, etag="b"),                # the form posted again
        allowed(k[7], T0 - DAY), verification(k[7], T0 + 1, size=5),         # its grant is before the period
        denied(T0 + 7), denied(T0 + 8), allowed("uploads/zeta/x.png", T0, client="zeta"),
    ]
    events = [e for e in map(usage.audit_event, lines) if e is not None]
    from_audit = usage.from_audit(events, by=("client", "day"), since=T0, until=NOW + 1, now=NOW)
    grants = [grant(1, status=VERIFIED, size=100), grant(2, status=REJECTED, size=2000), grant(3, status=EXPIRED),
              grant(5, issued=NOW - 60), grant(6, issued=T0 + DAY, status=VERIFIED, size=10, reused=1, reused_bytes=30),
              grant(7, issued=T0 - DAY, status=VERIFIED, size=5), replace(grant(0, client="zeta"), status=EXPIRED)]
    from_ledger = usage.from_grants(grants, [("acme", "avatars", day_of(T0), 2)], by=("client", "day"),
                                    since=T0, until=NOW + 1, now=NOW)
    assert from_audit == from_ledger
    assert counts(usage.totals(from_audit)) == {"grants": 6, "uploads": 3, "verified": 2, "rejected": 1,
                                                "expired": 2, "unused": 1, "bytes": 2140, "denials": 2, "reused": 1}


def test_an_object_whose_grant_is_not_in_the_files_counts_on_its_own() -> None:
    events = [usage.audit_event(verification("uploads/acme/lost.png", T0, size=7))]
    rows = usage.from_audit(events, by=("client",), since=T0, until=NOW, now=NOW)  # type: ignore[arg-type]
    assert [counts(r) for r in rows] == [{"uploads": 1, "verified": 1, "bytes": 7}]
    assert usage.from_audit(events, since=T0 + 1, until=NOW, now=NOW) == []  # type: ignore[arg-type]

