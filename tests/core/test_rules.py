"""The rules engine, table-driven: each row is one request and the decision it must get."""
from __future__ import annotations

from typing import Any

import pytest

from broker.core import rules
from broker.errors import InvalidRequest, Unauthenticated
from broker.config import load_rules
from broker.core.rules import api_key_hash
from broker.core.sizes import human_size
from broker.models import Check, Credentials, UploadRequest
from tests.conftest import NOW

RID = "0123456789abcdef0123456789abcdef"


def decide(ruleset: Any, client: str, **req: Any) -> Any:
    request = UploadRequest(**{"filename": "a.png", "content_type": "image/png", **req})
    return rules.evaluate(ruleset, ruleset.clients[client], request, now=NOW, random_id=RID)


@pytest.mark.parametrize("client, req, check, expected, actual", [
    pytest.param("web-app", {"size": 5 * 1024**2 + 1}, Check.TOO_LARGE, 5 * 1024**2, 5 * 1024**2 + 1, id="too_large"),
    pytest.param("web-app", {"size": 0}, Check.TOO_SMALL, 1, 0, id="too_small"),
    pytest.param("web-app", {"content_type": "application/pdf", "filename": "a.pdf"},
                 Check.CONTENT_TYPE_NOT_ALLOWED, ["image/png", "image/jpeg", "image/gif", "image/webp"],
                 "application/pdf", id="content_type_not_allowed"),
    pytest.param("web-app", {"filename": "a.exe"}, Check.EXTENSION_NOT_ALLOWED,
                 [".png", ".jpg", ".jpeg", ".gif", ".webp"], ".exe", id="extension_not_allowed"),
    pytest.param("web-app", {"filename": "noext"}, Check.EXTENSION_NOT_ALLOWED,
                 [".png", ".jpg", ".jpeg", ".gif", ".webp"], None, id="no_extension"),
    pytest.param("web-app", {"filename": "a.jpg"}, Check.EXTENSION_MISMATCH, ".jpg", "image/png",
                 id="extension_mismatch"),
    pytest.param("web-app", {"profile": "nope"}, Check.UNKNOWN_PROFILE, ["avatars", "documents", "videos"],
                 "nope", id="unknown_profile"),
    pytest.param("web-app", {"metadata": {"title": "x"}}, Check.METADATA_NOT_ALLOWED, [], ["title"],
                 id="metadata_not_allowed"),
    pytest.param("web-app", {"profile": "documents", "filename": "a.pdf", "content_type": "application/pdf",
                             "metadata": {"title": "x" * 2100}}, Check.METADATA_TOO_LARGE, 2048, 2118,
                 id="metadata_too_large"),
    pytest.param("partner-acme", {"profile": "avatars"}, Check.UNKNOWN_PROFILE, ["invoices", "statements"],
                 "avatars", id="another_clients_profile"),
    pytest.param("web-app", {"profile": "videos", "filename": "v.mp4", "content_type": "video/mp4", "size": 999},
                 Check.TOO_SMALL, 1000, 999, id="under_min_bytes"),
])
def test_denials_name_rule_check_expected_and_actual(ruleset: Any, client: str, req: dict[str, Any],
                                                     check: Check, expected: Any, actual: Any) -> None:
    decision = decide(ruleset, client, **req)
    assert not decision.allowed
    assert decision.check is check
    assert (decision.expected, decision.actual) == (expected, actual)
    assert decision.reason
    assert decision.grant is None


def test_too_large_reads_like_a_sentence(ruleset: Any) -> None:
    decision = decide(ruleset, "web-app", size=12_000_000)
    assert decision.reason == "too large: 12 MB, the limit for avatars is 5 MiB"
    assert decision.status == 413


def test_profile_required_when_no_default() -> None:
    ruleset = load_rules("""
version: 1
bucket: b-uploads
defaults: {max_bytes: 10, content_types: ["*/*"]}
clients:
  c:
    api_key_sha256: ["0000000000000000000000000000000000000000000000000000000000000001"]
    rules: [{name: a, key: "a/{client}/{uuid}"}, {name: b, key: "b/{client}/{uuid}"}]
""")
    decision = decide(ruleset, "c")
    assert decision.check is Check.PROFILE_REQUIRED and decision.expected == ["a", "b"]


@pytest.mark.parametrize("client, req, key, fields", [
    pytest.param("web-app", {"size": 100}, f"uploads/web-app/avatars/2026-11-28/{RID}.png",
                 {"Content-Type": "image/png", "Cache-Control": "public, max-age=86400",
                  "Content-Disposition": 'inline; filename="a.png"', "success_action_status": "201"},
                 id="avatar"),
    pytest.param("web-app", {"profile": "documents", "filename": "Ré sumé.PDF", "content_type": "Application/PDF",
                             "metadata": {"title": "CV"}},
                 f"uploads/web-app/documents/2026-11-28/{RID}/Re-sume.PDF",
                 {"Content-Type": "application/pdf",
                  "Content-Disposition": "attachment; filename=\"Re-sume.PDF\"; "
                                         "filename*=UTF-8''R%C3%A9%20sum%C3%A9.PDF",
                  "x-amz-meta-title": "CV", "x-amz-meta-source": "web-app", "success_action_status": "201"},
                 id="document_with_metadata_and_disposition"),
    pytest.param("mobile", {"filename": "IMG_1.HEIC", "content_type": "image/heic"},
                 f"uploads/mobile/photos/2026/11/{RID}.heic",
                 {"Content-Type": "image/heic", "x-amz-server-side-encryption": "AES256",
                  "x-amz-storage-class": "INTELLIGENT_TIERING"}, id="photo_sse_storage_class"),
    pytest.param("partner-acme", {"filename": "inv.csv", "content_type": "text/csv; charset=UTF-8"},
                 f"partners/partner-acme/invoices/2026-11-28/{RID}.csv",
                 {"Content-Type": "text/csv; charset=utf-8",
                  "x-amz-server-side-encryption": "AES256"}, id="default_profile_charset"),
])
def test_grants(ruleset: Any, client: str, req: dict[str, Any], key: str, fields: dict[str, str]) -> None:
    decision = decide(ruleset, client, **req)
    assert decision.allowed, decision
    assert decision.grant.key == key
    assert dict(decision.grant.fields) == fields
    conditions = decision.grant.conditions()
    assert ["content-length-range", decision.grant.min_bytes, decision.grant.max_bytes] in conditions
    for name, value in fields.items():
        assert {name: value} in conditions  # every field is bound by a condition


def test_grant_without_size_still_bounds_size(ruleset: Any) -> None:
    grant = decide(ruleset, "web-app").grant
    assert ["content-length-range", 1, 5 * 1024**2] in grant.conditions()


def test_hostile_filename_is_an_invalid_request(ruleset: Any) -> None:
    with pytest.raises(InvalidRequest):
        decide(ruleset, "web-app", filename="../../x.png")


def test_identify(ruleset: Any) -> None:
    assert rules.identify(ruleset, Credentials(api_key_hash("demo-web-app-key"))).id == "web-app"
    assert rules.identify(ruleset, Credentials(principals=("sub:x", "group:mobile-users"))).id == "mobile"
    with pytest.raises(Unauthenticated, match="not recognised"):
        rules.identify(ruleset, Credentials(api_key_hash("guess")))
    with pytest.raises(Unauthenticated, match="not mapped"):
        rules.identify(ruleset, Credentials(principals=("sub:stranger",)))
    with pytest.raises(Unauthenticated, match="x-api-key"):
        rules.identify(ruleset, Credentials())


def test_an_api_key_wins_over_principals(ruleset: Any) -> None:
    """A wrong API key is refused even if an authorizer identity would match."""
    with pytest.raises(Unauthenticated):
        rules.identify(ruleset, Credentials(api_key_hash("guess"), ("group:mobile-users",)))


@pytest.mark.parametrize("n, text", [(5 * 1024**2, "5 MiB"), (12_000_000, "12 MB"), (1500, "1.5 kB"),
                                     (999, "999 bytes"), (1, "1 byte"), (0, "0 bytes"),
                                     (2 * 1024**3, "2 GiB")])
def test_human_size(n: int, text: str) -> None:
    assert human_size(n) == text


SHA = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"  # sha256("test")


@pytest.mark.parametrize("declared", [SHA, SHA.upper(), "n4bQgYhMfWWaL+qgxVrQFaO/TxsrC4Is0V1sFbDwCgg="])
def test_a_declared_sha256_is_bound_in_the_form_as_base64(ruleset: Any, declared: str) -> None:
    decision = rules.evaluate(ruleset, ruleset.clients["web-app"],
                              UploadRequest("me.png", "image/png", 4, "avatars", sha256=declared),
                              now=NOW, random_id="a" * 32)
    assert decision.grant is not None
    assert decision.grant.fields["x-amz-checksum-sha256"] == "n4bQgYhMfWWaL+qgxVrQFaO/TxsrC4Is0V1sFbDwCgg="
    assert {"x-amz-checksum-sha256": "n4bQgYhMfWWaL+qgxVrQFaO/TxsrC4Is0V1sFbDwCgg="} in decision.grant.conditions()
    assert decision.grant.fields["x-amz-meta-declared-sha256"] == decision.grant.fields["x-amz-checksum-sha256"]


def test_a_sha256_that_is_not_32_bytes_is_a_400(ruleset: Any) -> None:
    with pytest.raises(InvalidRequest, match="sha256 must be the file's SHA-256"):
        rules.evaluate(ruleset, ruleset.clients["web-app"],
                       UploadRequest("me.png", "image/png", 4, "avatars", sha256="abc="),
                       now=NOW, random_id="a" * 32)
