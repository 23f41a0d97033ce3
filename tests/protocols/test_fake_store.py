"""Protocol logic against a fake store: no moto, no SeaweedFS, every store answer chosen by the test.

``FakeStore`` has the methods of :class:`broker.s3.store.S3Store` that the Companion
endpoints call, over an in-memory table; a test can make any call fail as the real store's
errors are mapped (``StoreUnavailable``), which no real store does on demand.
"""
from __future__ import annotations

import io
from typing import Any

from broker.audit import AuditLog
from broker.config.sources import RulesProvider, StaticSource
from broker.errors import StoreUnavailable
from broker.models import Grant, Part
from broker.service import assemble
from tests.conftest import NOW, Ids, audit_lines
from tests.protocols.conftest import call

MiB = 1024 * 1024
VIDEO = {"filename": "clip.mp4", "type": "video/mp4", "metadata": {"profile": "videos"}}


class FakeStore:
    """Multipart uploads in memory; ``fail`` names operations that raise as a store outage would."""

    def __init__(self) -> None:
        self.uploads: dict[str, dict[str, Any]] = {}
        self.objects: dict[str, int] = {}
        self.fail: set[str] = set()
        self.log: list[str] = []

    def _op(self, name: str) -> None:
        self.log.append(name)
        if name in self.fail:
            raise StoreUnavailable(f"the store refused to {name}: ServiceUnavailable", code="ServiceUnavailable")

    def expires_in(self, grant: Grant, now: Any) -> int:
        return grant.expires_in

    def create_multipart(self, grant: Grant) -> str:
        self._op("create")
        upload_id = f"upload-{len(self.uploads) + 1}"
        self.uploads[upload_id] = {"key": grant.key, "parts": {}, "fields": dict(grant.fields)}
        return upload_id

    def part_url(self, bucket: str, key: str, upload_id: str, part_number: int, expires_in: int) -> str:
        return f"https://fake/{bucket}/{key}?partNumber={part_number}&uploadId={upload_id}"

    def list_parts(self, bucket: str, key: str, upload_id: str) -> list[Part]:
        self._op("list")
        return [Part(n, size, f'"etag-{n}"') for n, size in sorted(self.uploads[upload_id]["parts"].items())]

    def complete_multipart(self, bucket: str, key: str, upload_id: str, parts: list[Any]) -> str:
        self._op("complete")
        upload = self.uploads.pop(upload_id)
        self.objects[key] = sum(upload["parts"][p["PartNumber"]] for p in parts)
        return '"done"'

    def abort_multipart(self, bucket: str, key: str, upload_id: str) -> None:
        self._op("abort")
        self.uploads.pop(upload_id, None)

    def delete(self, bucket: str, key: str) -> None:
        self._op("delete")
        self.objects.pop(key, None)

    @property
    def sigv4(self) -> Any:
        return self

    def object_url(self, bucket: str, key: str) -> str:
        return f"https://fake/{bucket}/{key}"


def broker_on(store: FakeStore, rules_text: str) -> tuple[Any, io.StringIO]:
    provider = RulesProvider(StaticSource(rules_text), reload_seconds=3600)
    provider.refresh()
    audit = io.StringIO()
    return assemble(provider, store, AuditLog(stream=audit), clock=lambda: NOW, new_id=Ids()), audit  # type: ignore[arg-type]


def test_parts_over_the_rule_are_aborted_at_completion_and_nothing_is_stored(rules_text: str) -> None:
    store = FakeStore()
    broker, audit = broker_on(store, rules_text)
    started = call(broker, "POST", "/s3/multipart", VIDEO)
    assert started.status == 200, started
    upload_id, key = started.body["uploadId"], started.body["key"]
    assert store.uploads[upload_id]["fields"]["Content-Type"] == "video/mp4"
    limit = broker.rules.current().clients["web-app"].rules["videos"].max_bytes
    store.uploads[upload_id]["parts"] = {1: limit, 2: 1}  # one byte over the rule, after the broker signed
    done = call(broker, "POST", f"/s3/multipart/{upload_id}/complete", {"parts": [
        {"PartNumber": 1, "ETag": '"etag-1"'}, {"PartNumber": 2, "ETag": '"etag-2"'}]}, query={"key": key})
    assert done.status == 413 and done.body["check"] == "too_large", done
    assert "aborted" in done.body["message"] and store.uploads == {} and store.objects == {}
    assert audit_lines(audit)[-1]["decision"] == "denied"


def test_a_store_outage_mid_upload_is_a_503_and_audited(rules_text: str) -> None:
    store = FakeStore()
    broker, audit = broker_on(store, rules_text)
    started = call(broker, "POST", "/s3/multipart", VIDEO).body
    store.fail.add("list")
    listed = call(broker, "GET", f"/s3/multipart/{started['uploadId']}", query={"key": started["key"]})
    assert listed.status == 503 and listed.body["error"] == "service_unavailable", listed
    assert "ServiceUnavailable" in listed.body["message"]
    rec = audit_lines(audit)[-1]
    assert (rec["decision"], rec["status"], rec["event"]) == ("error", 503, "companion_error")


def test_an_audit_failure_after_completing_deletes_the_object(rules_text: str, tmp_path: Any) -> None:
    store = FakeStore()
    broker, _ = broker_on(store, rules_text)
    started = call(broker, "POST", "/s3/multipart", VIDEO).body
    store.uploads[started["uploadId"]]["parts"] = {1: 6 * MiB}
    broken = AuditLog(stream=None, path=str(tmp_path / "audit.jsonl"))
    broken.close()
    broken._path = str(tmp_path)  # a folder: the next write cannot reopen it
    broker.audit_log = broken
    done = call(broker, "POST", f"/s3/multipart/{started['uploadId']}/complete",
                {"parts": [{"PartNumber": 1, "ETag": '"etag-1"'}]}, query={"key": started["key"]})
    assert done.status == 503 and done.body["error"] == "audit_unavailable", done
    assert store.log[-2:] == ["complete", "delete"] and store.objects == {}
