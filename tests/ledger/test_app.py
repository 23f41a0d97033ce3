"""The broker with a grant ledger, in process, on every engine: record before the form, quotas, status.

The ledger is each engine of tests/ledger/conftest.py; S3 calls go to moto (API calls only: what a real store
enforces is tried in tests/e2e/test_ledger_e2e.py on SeaweedFS).
"""
from __future__ import annotations

import io
import json
from datetime import timedelta
from typing import Any

import pytest
import yaml

from broker.config import schemas
from broker.ledger import Ledger, EXPIRED, ISSUED, VERIFIED, LedgerUnavailable, grant_id_for
from broker.ledger.sqlite import SqliteLedger
from broker.s3.post import decode_policy
from broker.web import HttpRequest
from tests.conftest import ACME_KEY, NOW, ROOT, WEB_KEY, audit_lines, post_json

AVATAR = {"filename": "me.png", "content_type": "image/png", "size": 1200, "profile": "avatars"}


def rules_with(**client: Any) -> str:
    doc = yaml.safe_load((ROOT / "rules.yaml").read_text())
    doc["clients"]["web-app"].update(client)
    return yaml.safe_dump(doc)


def get(broker: Any, path: str, *, api_key: str | None = WEB_KEY, principals: tuple[str, ...] = ()) -> tuple[int, dict[str, Any], dict[str, str]]:
    headers = {"x-api-key": api_key} if api_key else {}
    resp = broker.handle(HttpRequest("GET", path, headers, {}, b"", "203.0.113.9", "req-2", principals=principals))
    return resp.status, json.loads(resp.body) if resp.body else {}, resp.headers


def test_every_grant_is_recorded_before_its_form_and_names_its_id(make_broker: Any, ledger: Ledger,
                                                                   audit_stream: io.StringIO) -> None:
    broker = make_broker(ledger=ledger)
    status, body, _ = post_json(broker, "/uploads", AVATAR)
    assert status == 200, body
    schemas.validator("upload-response").validate(body)
    assert body["grant_id"] == grant_id_for(body["bucket"], body["key"])
    record = ledger.get(body["grant_id"])
    assert record is not None and record.status == ISSUED
    assert (record.client, record.profile, record.key, record.declared_size, record.reserved_bytes) == \
        ("web-app", "avatars", body["key"], 1200, 1200)
    assert record.expires_at - record.issued_at == 300 and record.request_id == "req-1"
    # the declared size is what is reserved, and what the store will take: exactly 1200 bytes
    assert ["content-length-range", 1200, 1200] in decode_policy(body["fields"]["policy"])["conditions"]
    assert body["min_bytes"] == body["max_bytes"] == 1200
    (line,) = audit_lines(audit_stream)
    assert line["grant_id"] == body["grant_id"]


def test_without_a_declared_size_the_rules_max_is_reserved(make_broker: Any, ledger: Ledger) -> None:
    broker = make_broker(ledger=ledger)
    body = post_json(broker, "/uploads", {k: v for k, v in AVATAR.items() if k != "size"})[1]
    record = ledger.get(body["grant_id"])
    assert record is not None and record.reserved_bytes == 5 * 1024**2 and record.declared_size is None


def test_without_a_ledger_nothing_changes_but_the_id(make_broker: Any) -> None:
    broker = make_broker()
    status, body, _ = post_json(broker, "/uploads", AVATAR)
    assert status == 200 and body["max_bytes"] == 5 * 1024**2 and len(body["grant_id"]) == 32
    status, body, _ = get(broker, f"/uploads/{body['grant_id']}")
    assert status == 404 and "BROKER_LEDGER" in body["message"]


def test_over_quota_is_429_with_retry_after_the_limit_and_the_usage(make_broker: Any, ledger: Ledger,
                                                                     audit_stream: io.StringIO) -> None:
    broker = make_broker(rules_with(quota={"uploads_per_hour": 2}), ledger=ledger)
    assert [post_json(broker, "/uploads", AVATAR)[0] for _ in range(2)] == [200, 200]
    status, body, headers = post_json(broker, "/uploads", AVATAR)
    assert status == 429, body
    schemas.validator("error").validate(body)
    assert body["check"] == "quota_exceeded" and body["quota"] == "uploads_per_hour"
    assert (body["limit"], body["usage"]) == (2, 2)
    assert headers["Retry-After"] == str(body["retry_after"]) == str(3600 - (NOW.minute * 60 + NOW.second))
    assert "2 files an hour" in body["message"]
    line = audit_lines(audit_stream)[-1]
    assert (line["decision"], line["check"], line["status"], line["retry_after"]) == \
        ("denied", "quota_exceeded", 429, body["retry_after"])
    schemas.validator("audit").validate(line)
    assert len(list(ledger.grants())) == 2  # the refused one left nothing behind
    assert list(ledger.denials()) == [("web-app", "avatars", f"d{int(NOW.timestamp()) // 86400}", 1)]


def test_bytes_per_day_counts_declared_sizes(make_broker: Any, ledger: Ledger) -> None:
    broker = make_broker(rules_with(quota={"bytes_per_day": "3000 B"}), ledger=ledger)
    assert post_json(broker, "/uploads", {**AVATAR, "size": 2000})[0] == 200
    status, body, _ = post_json(broker, "/uploads", {**AVATAR, "size": 1001})
    assert status == 429 and body["quota"] == "bytes_per_day" and (body["limit"], body["usage"]) == (3000, 2000)
    assert post_json(broker, "/uploads", {**AVATAR, "size": 1000})[0] == 200


def test_each_user_has_a_quota_of_their_own(make_broker: Any, ledger: Ledger) -> None:
    doc = yaml.safe_load(rules_with(quota_per_user={"uploads_per_hour": 1}, principals=["group:members"]))
    broker = make_broker(yaml.safe_dump(doc), ledger=ledger)

    def ask(user: str) -> int:
        resp = broker.handle(HttpRequest("POST", "/uploads", {"content-type": "application/json"}, {},
                                         json.dumps(AVATAR).encode(), "203.0.113.9", "r",
                                         principals=(f"sub:{user}", "group:members")))
        return resp.status

    assert [ask("alice"), ask("alice"), ask("bob")] == [200, 429, 200]
    assert {g.user for g in ledger.grants()} == {"alice", "bob"}


def test_a_ledger_that_cannot_be_written_means_no_form(make_broker: Any, audit_stream: io.StringIO) -> None:
    class Broken(SqliteLedger):
        def reserve(self, *args: Any, **kwargs: Any) -> Any:
            raise LedgerUnavailable("the ledger /var/ledger.db could not be written: disk I/O error")

    broker = make_broker(ledger=Broken(":memory:"))
    status, body, _ = post_json(broker, "/uploads", AVATAR)
    assert status == 503 and body["error"] == "ledger_unavailable" and "fields" not in body
    (line,) = audit_lines(audit_stream)
    assert (line["decision"], line["error"], line["status"]) == ("error", "ledger_unavailable", 503)


def test_status_follows_a_grant_from_issued_to_verified(make_broker: Any, ledger: Ledger, s3_client: Any) -> None:
    broker = make_broker(ledger=ledger)
    body = post_json(broker, "/uploads", AVATAR)[1]
    gid = body["grant_id"]
    status, got, _ = get(broker, f"/uploads/{gid}")
    assert status == 200 and got["status"] == "issued" and got["key"] == body["key"] and got["declared_size"] == 1200
    s3_client.put_object(Bucket="broker-uploads", Key=body["key"], Body=b"x" * 1200, ContentType="image/png")
    assert get(broker, f"/uploads/{gid}")[1]["status"] == "uploaded"
    ledger.settle("broker-uploads", body["key"], etag="e", size=1200, verdict=VERIFIED, now=int(NOW.timestamp()))
    got = get(broker, f"/uploads/{gid}")[1]
    assert (got["status"], got["size"], got["settled_at"]) == ("verified", 1200, "2026-11-28T14:49:31Z")


def test_a_rejected_grant_says_why_only_once_its_object_is_in_quarantine(make_broker: Any, ledger: Ledger,
                                                                         s3_client: Any) -> None:
    """The verifier settles a grant before it moves the object: asked in between, the status is
    "uploaded" (poll again), not a rejection without its reason."""
    from broker.ledger import REJECTED

    broker = make_broker(ledger=ledger)
    body = post_json(broker, "/uploads", AVATAR)[1]
    put = s3_client.put_object(Bucket="broker-uploads", Key=body["key"], Body=b"<html>" + b"x" * 1194,
                               ContentType="image/png")
    ledger.settle("broker-uploads", body["key"], etag=put["ETag"], size=1200, verdict=REJECTED,
                  checks=["active_content"], now=int(NOW.timestamp()))
    got = get(broker, f"/uploads/{body['grant_id']}")[1]
    assert (got["status"], got["checks"]) == ("uploaded", ["active_content"]), got
    s3_client.put_object(Bucket="broker-uploads", Key="quarantine/" + body["key"], Body=b"<html>",
                         Tagging="broker-verdict=rejected&broker-check=active_content&broker-expected=image%2Fpng"
                                 "&broker-actual=text%2Fhtml")
    s3_client.delete_object(Bucket="broker-uploads", Key=body["key"])
    got = get(broker, f"/uploads/{body['grant_id']}")[1]
    assert (got["status"], got["message"]) == ("rejected", "rejected: the bytes are HTML, not image/png"), got
    s3_client.delete_object(Bucket="broker-uploads", Key="quarantine/" + body["key"])  # deleted, not moved
    got = get(broker, f"/uploads/{body['grant_id']}")[1]
    assert (got["status"], got["message"]) == ("rejected", "rejected: failed active_content"), got


def test_status_of_an_unused_grant_after_its_expiry_is_expired(make_broker: Any, ledger: Ledger) -> None:
    clock = [NOW]
    broker = make_broker(ledger=ledger, clock=lambda: clock[0])
    gid = post_json(broker, "/uploads", AVATAR)[1]["grant_id"]
    clock[0] = NOW + timedelta(seconds=301)
    assert get(broker, f"/uploads/{gid}")[1]["status"] == "expired"
    ledger.release_expired(now=int(clock[0].timestamp()))
    assert ledger.get(gid).status == EXPIRED  # type: ignore[union-attr]
    assert get(broker, f"/uploads/{gid}")[1]["status"] == "expired"


@pytest.mark.parametrize("path, key, status, error", [
    pytest.param("/uploads/" + "0" * 32, WEB_KEY, 404, "not_found", id="unknown"),
    pytest.param("/uploads/ABC", WEB_KEY, 400, "invalid_request", id="malformed"),
    pytest.param("/uploads/" + "0" * 31 + "g", WEB_KEY, 400, "invalid_request", id="not_hex"),
    pytest.param("/uploads/" + "0" * 32, None, 401, "unauthenticated", id="no_key"),
])
def test_status_refuses_what_it_should(make_broker: Any, ledger: Ledger, path: str, key: str | None,
                                       status: int, error: str) -> None:
    got = get(make_broker(ledger=ledger), path, api_key=key)
    assert (got[0], got[1]["error"]) == (status, error)


def test_another_clients_grant_is_not_found(make_broker: Any, ledger: Ledger) -> None:
    broker = make_broker(ledger=ledger)
    gid = post_json(broker, "/uploads", AVATAR)[1]["grant_id"]
    status, body, _ = get(broker, f"/uploads/{gid}", api_key=ACME_KEY)
    assert status == 404 and body["error"] == "not_found"


def test_denials_of_every_protocol_are_counted(make_broker: Any, ledger: Ledger) -> None:
    broker = make_broker(ledger=ledger)
    post_json(broker, "/uploads", {**AVATAR, "content_type": "image/svg+xml", "filename": "x.svg"})
    post_json(broker, "/fineuploader/key", {**AVATAR, "content_type": "image/svg+xml", "filename": "x.svg"})
    assert sum(n for *_, n in ledger.denials()) == 2


def test_companion_and_fine_uploader_grants_are_recorded_too(make_broker: Any, ledger: Ledger) -> None:
    broker = make_broker(ledger=ledger)
    status, fu, _ = post_json(broker, "/fineuploader/key", AVATAR)
    assert status == 200 and ledger.get(fu["grantId"]).protocol == "fineuploader"  # type: ignore[union-attr]
    resp = broker.handle(HttpRequest("GET", "/s3/params", {"x-api-key": WEB_KEY},
                                     {"filename": ["me.png"], "type": ["image/png"]}, b"", "203.0.113.9", "r"))
    params = json.loads(resp.body)
    assert resp.status == 200 and ledger.get(params["grant_id"]).protocol == "companion"  # type: ignore[union-attr]
    status, mp, _ = post_json(broker, "/s3/multipart", {"filename": "clip.mp4", "type": "video/mp4",
                                                       "metadata": {"profile": "videos"}})
    assert status == 200, mp
    assert ledger.get(mp["grant_id"]).key == mp["key"]  # type: ignore[union-attr]
