"""The verifier with a grant ledger: each object settles its grant once; a second object is caught.

The store is the in-memory one of tests/test_verifier.py; the ledger each engine in turn. A form
posted twice on a real store: tests/e2e/test_ledger_e2e.py.
"""
from __future__ import annotations

import io
from typing import Any

import pytest

from broker.audit import AuditLog
from broker.config.sources import RulesProvider, StaticSource
from broker.ledger import Ledger, REJECTED, VERIFIED, GrantRecord, Limit, LedgerUnavailable, grant_id_for
from broker.ledger.sqlite import SqliteLedger
from broker.verifier import VERDICT_TAG, Verifier
from tests.conftest import NOW
from tests.test_sniff import png
from tests.test_verifier import KEY, Objects, audit, bucket, lines  # noqa: F401 - audit, bucket: fixtures

T = int(NOW.timestamp())


@pytest.fixture
def verifier(rules_text: str, bucket: Objects, audit: io.StringIO, ledger: Ledger) -> Verifier:
    provider = RulesProvider(StaticSource(rules_text), reload_seconds=3600)
    provider.refresh()
    return Verifier(provider, bucket, AuditLog(stream=audit), clock=lambda: NOW, ledger=ledger)  # type: ignore[arg-type]


def granted(ledger: Ledger, *, size: int | None = None, key: str = KEY) -> GrantRecord:
    low, high = (size, size) if size is not None else (1, 5 * 1024**2)
    record = GrantRecord(grant_id=grant_id_for("broker-uploads", key), client="web-app", profile="avatars",
                         bucket="broker-uploads", key=key, content_type="image/png", min_bytes=low, max_bytes=high,
                         reserved_bytes=high, issued_at=T, expires_at=T + 300, declared_size=size)
    return ledger.reserve(record, [Limit("client:web-app")], now=T)


def test_a_verified_object_settles_its_grant_to_the_stored_size(verifier: Verifier, bucket: Objects,
                                                                 ledger: Ledger, audit: io.StringIO) -> None:
    grant = granted(ledger)
    bucket.put(KEY, png())
    assert verifier.verify_object("broker-uploads", KEY).status == "verified"
    got = ledger.get(grant.grant_id)
    assert got is not None and (got.status, got.size) == (VERIFIED, len(png()))
    (rec,) = lines(audit)
    assert (rec["ledger"], rec["grant_id"]) == ("settled", grant.grant_id)


def test_a_rejected_object_settles_with_its_failed_checks(verifier: Verifier, bucket: Objects,
                                                          ledger: Ledger) -> None:
    grant = granted(ledger)
    bucket.put(KEY, b"<html><script>x</script></html>")
    assert verifier.verify_object("broker-uploads", KEY).action == "quarantined"
    got = ledger.get(grant.grant_id)
    assert got is not None and got.status == REJECTED and got.checks == ("active_content",)


def test_a_second_object_at_a_used_key_is_rejected_as_grant_reused(verifier: Verifier, bucket: Objects,
                                                                   ledger: Ledger, audit: io.StringIO) -> None:
    grant = granted(ledger)
    bucket.put(KEY, png())
    verifier.verify_object("broker-uploads", KEY)
    bucket.put(KEY, png() + b"\0" * 10)  # the same form, posted again: another ETag
    outcome = verifier.verify_object("broker-uploads", KEY)
    assert (outcome.status, outcome.action) == ("rejected", "quarantined")
    assert outcome.verdict is not None and [f.check.value for f in outcome.verdict.failures] == ["grant_reused"]
    held = bucket.objects[("broker-uploads", f"quarantine/{KEY}")]
    assert held.tags["broker-check"] == "grant_reused"
    got = ledger.get(grant.grant_id)
    assert got is not None and (got.status, got.reused, got.size) == (VERIFIED, 1, len(png()))
    assert lines(audit)[-1]["ledger"] == "reused" and lines(audit)[-1]["check"] == "grant_reused"


def test_an_event_replayed_settles_once_and_judges_once(verifier: Verifier, bucket: Objects,
                                                        ledger: Ledger, audit: io.StringIO) -> None:
    grant = granted(ledger)
    bucket.put(KEY, png())
    bucket.fail.add("tag")  # the store fails after the ledger was settled: the event comes again
    with pytest.raises(Exception):
        verifier.verify_object("broker-uploads", KEY)
    bucket.fail.clear()
    assert verifier.verify_object("broker-uploads", KEY).status == "verified"
    assert verifier.verify_object("broker-uploads", KEY).status == "skipped"
    got = ledger.get(grant.grant_id)
    assert got is not None and got.reused == 0 and got.status == VERIFIED
    assert [r["ledger"] for r in lines(audit)] == ["settled", "replayed"]
    assert [c.value for c in ledger.counters() if c.window.startswith("d")] == [len(png())]


def test_a_size_the_grant_did_not_allow_is_rejected(verifier: Verifier, bucket: Objects, ledger: Ledger) -> None:
    granted(ledger, size=100)  # an exact declared size (a multipart upload is not held to it by the store)
    bucket.put(KEY, png())
    outcome = verifier.verify_object("broker-uploads", KEY)
    assert outcome.verdict is not None and [f.check.value for f in outcome.verdict.failures] == ["size_not_granted"]


def test_an_object_no_grant_allowed_is_said_so(verifier: Verifier, bucket: Objects, audit: io.StringIO) -> None:
    bucket.put(KEY, png())
    assert verifier.verify_object("broker-uploads", KEY).status == "verified"  # the rules allow it; reconcile tells
    assert lines(audit)[-1]["ledger"] == "no_grant"


def test_a_ledger_that_fails_marks_nothing(rules_text: str, bucket: Objects, audit: io.StringIO) -> None:
    class Down(SqliteLedger):
        def get(self, grant_id: str) -> Any:
            raise LedgerUnavailable("the ledger could not be read: database is locked")

    provider = RulesProvider(StaticSource(rules_text), reload_seconds=3600)
    provider.refresh()
    verifier = Verifier(provider, bucket, AuditLog(stream=audit), clock=lambda: NOW,  # type: ignore[arg-type]
                        ledger=Down(":memory:"))
    bucket.put(KEY, png())
    with pytest.raises(LedgerUnavailable):
        verifier.verify_object("broker-uploads", KEY)
    assert VERDICT_TAG not in bucket.objects[("broker-uploads", KEY)].tags and audit.getvalue() == ""
