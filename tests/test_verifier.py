"""The verifier's actions, against a fake store whose every answer (and failure) the test chooses.

At-least-once, out-of-order events, an object gone before its event, a store outage mid-way,
sixteen threads on one object: each object is judged once, marked only after its checks, and
has exactly one audit line. The same on a real store: tests/e2e/test_verification.py.
"""
from __future__ import annotations

import io
import json
import threading
from dataclasses import replace
from typing import Any, Iterator

import pytest

from broker.audit import AuditLog
from broker.config import schemas
from broker.config.sources import RulesProvider, StaticSource
from broker.errors import StoreUnavailable
from broker.models import StoredObject
from broker.verifier import VERDICT_TAG, Verifier, tag_value
from tests.conftest import NOW
from tests.test_sniff import png

UUID = "0123456789abcdef0123456789abcdef"
KEY = f"uploads/web-app/avatars/2026-11-28/{UUID}.png"
HEADERS = {"Cache-Control": "public, max-age=86400", "Content-Disposition": 'inline; filename="me.png"'}


class Objects:
    """A bucket in memory with the S3Store methods the verifier calls; ``fail`` makes calls raise."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], StoredObject] = {}
        self.fail: set[str] = set()
        self.calls: list[str] = []
        self.lock = threading.Lock()

    def put(self, key: str, body: bytes, *, content_type: str = "image/png", **kw: Any) -> None:
        self.objects[("broker-uploads", key)] = StoredObject(
            "broker-uploads", key, len(body), f'"{len(self.objects)}-{len(body)}"', content_type,
            headers=kw.pop("headers", HEADERS), head=body[:4096], **kw)

    def _op(self, name: str) -> None:
        with self.lock:
            self.calls.append(name)
        if name in self.fail:
            raise StoreUnavailable(f"the store refused to {name}: SlowDown", code="SlowDown")

    def inspect(self, bucket: str, key: str, *, head_bytes: int) -> StoredObject | None:
        self._op("inspect")
        obj = self.objects.get((bucket, key))
        return None if obj is None else replace(obj, head=obj.head[:head_bytes])

    def tag(self, bucket: str, key: str, tags: dict[str, str]) -> None:
        self._op("tag")
        self.objects[(bucket, key)] = replace(self.objects[(bucket, key)], tags=dict(tags))

    def move(self, moving: StoredObject, to_key: str, *, tags: dict[str, str]) -> bool:
        self._op("move")
        bucket, key = moving.bucket, moving.key
        obj = self.objects.get((bucket, key))
        if obj is None or obj.etag != moving.etag:
            return False
        self.objects[(bucket, to_key)] = replace(obj, key=to_key, tags=dict(tags))
        del self.objects[(bucket, key)]
        return True

    def delete(self, bucket: str, key: str) -> None:
        self._op("delete")
        self.objects.pop((bucket, key), None)

    def keys(self, bucket: str, prefix: str) -> Iterator[tuple[str, int]]:
        self._op("keys")
        for (b, k), obj in sorted(self.objects.items()):
            if b == bucket and k.startswith(prefix):
                yield k, obj.size


@pytest.fixture
def bucket() -> Objects:
    return Objects()


@pytest.fixture
def audit() -> io.StringIO:
    return io.StringIO()


@pytest.fixture
def verifier(rules_text: str, bucket: Objects, audit: io.StringIO) -> Verifier:
    provider = RulesProvider(StaticSource(rules_text), reload_seconds=3600)
    provider.refresh()
    return Verifier(provider, bucket, AuditLog(stream=audit), clock=lambda: NOW)  # type: ignore[arg-type]


def lines(audit: io.StringIO) -> list[dict[str, Any]]:
    out = [json.loads(line) for line in audit.getvalue().splitlines()]
    for rec in out:
        schemas.validator("audit").validate(rec)
    return out


def test_a_real_png_is_tagged_verified_after_its_audit_line(verifier: Verifier, bucket: Objects,
                                                             audit: io.StringIO) -> None:
    bucket.put(KEY, png())
    outcome = verifier.verify_object("broker-uploads", KEY, source="test")
    assert (outcome.status, outcome.action) == ("verified", "tagged")
    etag = bucket.objects[("broker-uploads", KEY)].etag.strip('"')
    assert bucket.objects[("broker-uploads", KEY)].tags == {VERDICT_TAG: "verified", "broker-etag": etag}
    (rec,) = lines(audit)
    assert rec["event"] == "verification" and rec["verdict"] == "verified" and rec["action"] == "tagged"
    assert (rec["client"], rec["profile"], rec["sniffed"], rec["size"]) == ("web-app", "avatars", "image/png",
                                                                            len(png()))
    assert "checks" not in rec


def test_html_posing_as_png_is_quarantined_with_the_failed_check(verifier: Verifier, bucket: Objects,
                                                                  audit: io.StringIO) -> None:
    bucket.put(KEY, b"<html><script>alert(document.cookie)</script></html>")
    outcome = verifier.verify_object("broker-uploads", KEY)
    assert (outcome.status, outcome.action) == ("rejected", "quarantined")
    assert ("broker-uploads", KEY) not in bucket.objects  # never left at its granted key
    held = bucket.objects[("broker-uploads", f"quarantine/{KEY}")]
    assert held.tags == {VERDICT_TAG: "rejected", "broker-check": "active_content",
                         "broker-expected": "image/png", "broker-actual": "text/html"}
    (rec,) = lines(audit)
    assert rec["verdict"] == "rejected" and rec["check"] == "active_content"
    assert rec["quarantine_key"] == f"quarantine/{KEY}" and rec["reason"].startswith("the bytes are HTML, not image/png")
    assert rec["checks"][0] == {"check": "active_content", "reason": rec["reason"], "expected": "image/png",
                                "actual": "text/html"}


def test_a_rule_that_says_delete_deletes(rules_text: str, bucket: Objects, audit: io.StringIO) -> None:
    provider = RulesProvider(StaticSource(rules_text.replace("        success_action_status: 201\n      - name: documents",
                                                             "        success_action_status: 201\n        on_reject: delete\n"
                                                             "      - name: documents", 1)), reload_seconds=3600)
    provider.refresh()
    verifier = Verifier(provider, bucket, AuditLog(stream=audit), clock=lambda: NOW)  # type: ignore[arg-type]
    bucket.put(KEY, b"%PDF-1.7\n")
    assert verifier.verify_object("broker-uploads", KEY).action == "deleted"
    assert bucket.objects == {}
    assert lines(audit)[0]["action"] == "deleted"


def test_the_same_event_twice_is_judged_once(verifier: Verifier, bucket: Objects, audit: io.StringIO) -> None:
    bucket.put(KEY, png())
    etag = bucket.objects[("broker-uploads", KEY)].etag
    first = verifier.verify_object("broker-uploads", KEY, etag=etag)
    again = verifier.verify_object("broker-uploads", KEY, etag=etag)  # dropped without a read
    fresh = Verifier(verifier.rules, bucket, verifier.audit_log, clock=lambda: NOW)  # type: ignore[arg-type]
    other = fresh.verify_object("broker-uploads", KEY)  # another process: the tag says it is done
    assert [first.status, again.status, other.status] == ["verified", "skipped", "skipped"]
    assert len(lines(audit)) == 1 and bucket.calls.count("tag") == 1


def test_an_event_for_an_object_already_gone_is_harmless(verifier: Verifier, audit: io.StringIO) -> None:
    outcome = verifier.verify_object("broker-uploads", KEY)
    assert (outcome.status, outcome.note) == ("skipped", "the object is gone")
    assert lines(audit) == []


def test_a_rejected_objects_late_duplicate_finds_it_gone(verifier: Verifier, bucket: Objects,
                                                          audit: io.StringIO) -> None:
    bucket.put(KEY, b"<svg onload=alert(1)>")
    verifier.verify_object("broker-uploads", KEY)
    later = Verifier(verifier.rules, bucket, verifier.audit_log, clock=lambda: NOW)  # type: ignore[arg-type]
    assert later.verify_object("broker-uploads", KEY).status == "skipped"
    assert later.verify_object("broker-uploads", f"quarantine/{KEY}").note == "in the quarantine prefix"
    assert len(lines(audit)) == 1


def test_an_object_replaced_between_its_read_and_its_tag_is_judged_again(verifier: Verifier, bucket: Objects,
                                                                         audit: io.StringIO) -> None:
    """Tagging cannot be conditional: a form posted again (HTML, this time) lands between the read and
    the tag, and carries the first object's verdict; its own event sees that the verdict is not its own."""
    bucket.put(KEY, png())
    real_tag = bucket.tag

    def replaced_then_tagged(b: str, k: str, tags: dict[str, str]) -> None:
        bucket.put(KEY, b"<html><script>alert(1)</script></html>")  # same key, new ETag
        real_tag(b, k, tags)

    bucket.tag = replaced_then_tagged  # type: ignore[method-assign]
    assert verifier.verify_object("broker-uploads", KEY).status == "verified"  # judged the PNG
    bucket.tag = real_tag  # type: ignore[method-assign]
    again = verifier.verify_object("broker-uploads", KEY)  # the HTML's own event
    assert (again.status, again.action) == ("rejected", "quarantined")
    assert [r["verdict"] for r in lines(audit)] == ["verified", "rejected"]


@pytest.mark.parametrize("failing", ["inspect", "tag", "move"])
def test_a_store_outage_marks_nothing_verified_and_is_retried(verifier: Verifier, bucket: Objects,
                                                               audit: io.StringIO, failing: str) -> None:
    bucket.put(KEY, png() if failing != "move" else b"<html>")
    bucket.fail.add(failing)
    with pytest.raises(StoreUnavailable):
        verifier.verify_object("broker-uploads", KEY)
    assert bucket.objects[("broker-uploads", KEY)].tags == {}  # never marked without its checks and its tag
    bucket.fail.clear()
    retried = verifier.verify_object("broker-uploads", KEY)
    assert retried.status in ("verified", "rejected") and retried.action in ("tagged", "quarantined")


def test_sixteen_threads_on_one_object_judge_it_once(verifier: Verifier, bucket: Objects,
                                                      audit: io.StringIO) -> None:
    bucket.put(KEY, png())
    etag = bucket.objects[("broker-uploads", KEY)].etag
    outcomes: list[str] = []
    start = threading.Barrier(16)

    def deliver() -> None:
        start.wait()
        outcomes.append(verifier.verify_object("broker-uploads", KEY, etag=etag).status)

    threads = [threading.Thread(target=deliver) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["skipped"] * 15 + ["verified"]
    assert len(lines(audit)) == 1


def test_a_sweep_judges_only_what_has_no_verdict(verifier: Verifier, bucket: Objects, audit: io.StringIO) -> None:
    keys = [KEY.replace(UUID, f"{n:032x}") for n in range(5)]
    for n, key in enumerate(keys):
        bucket.put(key, png() if n % 2 == 0 else b"<html>")
    verifier.verify_object("broker-uploads", keys[0])
    swept = list(verifier.sweep("broker-uploads", "uploads/web-app/"))
    assert [o.status for o in swept] == ["skipped", "rejected", "verified", "rejected", "verified"]
    assert len(lines(audit)) == 5
    assert list(verifier.sweep("broker-uploads", "uploads/web-app/"))[0].status == "skipped"
    assert ("broker-uploads", "uploads/web-app/avatars/") in verifier.prefixes()


@pytest.mark.parametrize("value, text", [
    (None, "-"), ("image/png", "image/png"), (["a", "b"], "a_b"), ("<script>&\"x\"", "_script___x_"),
    ("é" * 300, "_" * 256),
])
def test_tag_values_keep_to_what_s3_allows(value: Any, text: str) -> None:
    assert tag_value(value) == text


@pytest.mark.parametrize("bucket_name, key", [
    ("another-bucket", KEY), ("broker-uploads", "backups/2026/db.tar"), ("broker-uploads", "uploads/other/x.png"),
])
def test_objects_under_no_rules_prefix_are_not_the_verifiers(verifier: Verifier, bucket: Objects, audit: io.StringIO,
                                                              bucket_name: str, key: str) -> None:
    bucket.objects[(bucket_name, key)] = StoredObject(bucket_name, key, 6, '"x"', "text/html", head=b"<html>")
    outcome = verifier.verify_object(bucket_name, key)
    assert (outcome.status, outcome.note) == ("skipped", "under no rule's prefix")
    assert (bucket_name, key) in bucket.objects and lines(audit) == [] and bucket.calls == []


def test_a_stray_object_under_a_rules_prefix_is_quarantined(verifier: Verifier, bucket: Objects) -> None:
    """Written by someone with the store's credentials, not through a grant: no template made its key."""
    stray = "uploads/web-app/avatars/not-a-granted-name.png"
    bucket.put(stray, png())
    outcome = verifier.verify_object("broker-uploads", stray)
    assert outcome.status == "rejected" and outcome.verdict is not None
    assert outcome.verdict.failures[0].check.value == "key_not_granted"
