"""The verifier's pure judgement, as a table: one stored object in, a verdict naming each failed check out."""
from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from broker.core.verify import Sniff, VerifyCheck, agrees, describe, verify
from broker.models import StoredObject

UUID = "0123456789abcdef0123456789abcdef"
AVATAR_KEY = f"uploads/web-app/avatars/2026-11-28/{UUID}.png"
DOC_KEY = f"uploads/web-app/documents/2026-11-28/{UUID}/report.pdf"
PHOTO_KEY = f"uploads/mobile/photos/2026/11/{UUID}.png"
AVATAR = StoredObject(bucket="broker-uploads", key=AVATAR_KEY, size=1200, etag='"e"', content_type="image/png",
                      headers={"Cache-Control": "public, max-age=86400",
                               "Content-Disposition": 'inline; filename="me.png"'})
DOC = StoredObject(bucket="broker-uploads", key=DOC_KEY, size=5000, etag='"d"', content_type="application/pdf",
                   metadata={"source": "web-app", "title": "Q3"},
                   headers={"Content-Disposition": 'attachment; filename="report.pdf"'})
PNG = Sniff("image/png")
HTML = Sniff("text/html", True, "<html")


def failed(ruleset: Any, obj: StoredObject, sniff: Sniff) -> list[str]:
    return [f.check.value for f in verify(ruleset, obj, sniff).failures]


@pytest.mark.parametrize("obj, sniff, checks", [
    pytest.param(AVATAR, PNG, [], id="a_real_png_avatar"),
    pytest.param(DOC, Sniff("application/pdf"), [], id="a_pdf_document"),
    pytest.param(replace(DOC, content_type="text/csv"), Sniff("text/plain"), [], id="csv_sniffed_as_plain_text"),
    pytest.param(replace(DOC, content_type="application/vnd.openxmlformats-officedocument.wordprocessingml.document"),
                 Sniff("application/zip"), [], id="docx_sniffed_as_zip"),
    pytest.param(replace(AVATAR, size=6 * 1024 * 1024), PNG, ["too_large"], id="too_large"),
    pytest.param(replace(AVATAR, size=0), Sniff("application/x-empty"), ["too_small"], id="empty"),
    pytest.param(replace(AVATAR, content_type="text/html"), HTML, ["content_type_not_allowed", "active_content"],
                 id="stored_as_html"),
    pytest.param(replace(AVATAR, content_type="IMAGE/PNG"), PNG, ["content_type_not_allowed"],
                 id="type_not_canonical"),
    pytest.param(AVATAR, HTML, ["active_content"], id="html_posing_as_png"),
    pytest.param(AVATAR, Sniff("image/png", False, "<script"), ["active_content"], id="png_carrying_a_script"),
    pytest.param(AVATAR, Sniff("application/pdf"), ["content_mismatch"], id="pdf_posing_as_png"),
    pytest.param(AVATAR, Sniff("application/octet-stream"), ["content_mismatch"], id="unknown_bytes_as_png"),
    pytest.param(replace(AVATAR, key=PHOTO_KEY, content_type="image/svg+xml", headers={}),
                 Sniff("image/svg+xml", True, "<svg"), ["active_content"], id="svg_through_image_wildcard"),
    pytest.param(replace(AVATAR, headers={"Cache-Control": "public, max-age=86400",
                                          "Content-Disposition": 'attachment; filename="me.png"'}),
                 PNG, ["header_not_allowed"], id="disposition_changed"),
    pytest.param(replace(AVATAR, headers={}), PNG, ["header_not_allowed", "header_not_allowed"],
                 id="headers_the_rule_sets_missing"),
    pytest.param(replace(AVATAR, headers={**AVATAR.headers, "Content-Encoding": "gzip"}), PNG,
                 ["header_not_allowed"], id="content_encoding"),
    pytest.param(replace(AVATAR, headers={**AVATAR.headers, "x-amz-website-redirect-location": "/evil"}), PNG,
                 ["header_not_allowed"], id="website_redirect"),
    pytest.param(replace(AVATAR, metadata={"evil": "1"}), PNG, ["metadata_not_allowed"], id="metadata_not_allowed"),
    pytest.param(replace(AVATAR, metadata={"qqfilename": "me.png"}), PNG, [], id="fine_uploaders_filename"),
    pytest.param(replace(DOC, metadata={"title": "Q3"}), Sniff("application/pdf"), ["metadata_not_allowed"],
                 id="fixed_metadata_missing"),
    pytest.param(replace(AVATAR, metadata={"declared-sha256": "n4bQ="}, checksum_sha256="n4bQ="), PNG, [],
                 id="store_checksum_is_the_declared_one"),
    pytest.param(replace(AVATAR, metadata={"declared-sha256": "n4bQ="}), PNG, [], id="store_keeps_no_checksum"),
    pytest.param(replace(AVATAR, metadata={"declared-sha256": "n4bQ="}, checksum_sha256="AAAA="), PNG,
                 ["checksum_mismatch"], id="store_checksum_differs"),
    pytest.param(replace(AVATAR, key=f"uploads/web-app/avatars/{UUID}.png"), PNG, ["key_not_granted"],
                 id="key_no_template_makes"),
    pytest.param(replace(AVATAR, bucket="other-bucket"), PNG, ["key_not_granted"], id="another_bucket"),
])
def test_verdicts(ruleset: Any, obj: StoredObject, sniff: Sniff, checks: list[str]) -> None:
    assert failed(ruleset, obj, sniff) == checks


def test_a_failure_names_what_it_expected_and_found(ruleset: Any) -> None:
    verdict = verify(ruleset, AVATAR, HTML)
    (failure,) = verdict.failures
    assert failure.check is VerifyCheck.ACTIVE_CONTENT
    assert (failure.expected, failure.actual) == ("image/png", "text/html")
    assert verdict.reason.startswith("the bytes are HTML, not image/png")
    assert verdict.rule is not None and (verdict.rule.client, verdict.rule.name) == ("web-app", "avatars")
    assert not verdict.verified and verify(ruleset, AVATAR, PNG).verified


def test_an_active_type_listed_by_name_is_what_it_says(ruleset: Any) -> None:
    from broker.config import load_rules

    text = """
version: 1
bucket: icons-bucket
clients:
  c:
    api_key_sha256: ["0000000000000000000000000000000000000000000000000000000000000001"]
    rules: [{name: icons, max_bytes: 1000, content_types: [image/svg+xml]}]
"""
    rules = load_rules(text)
    key = f"uploads/c/icons/2026-11-28/{UUID}.svg"
    svg = StoredObject(bucket="icons-bucket", key=key, size=100, etag='"s"', content_type="image/svg+xml")
    assert verify(rules, svg, Sniff("image/svg+xml", True, "<svg")).verified
    assert failed(rules, svg, HTML) == ["active_content"]


@pytest.mark.parametrize("declared, sniffed, ok", [
    ("image/jpeg", "image/jpeg", True), ("image/jpeg", "image/pjpeg", True), ("image/png", "image/jpeg", False),
    ("text/plain", "text/csv", True), ("text/markdown", "text/plain", True), ("text/plain", "application/pdf", False),
    ("application/octet-stream", "application/zip", True), ("video/mp4", "video/x-m4v", True),
    ("application/vnd.oasis.opendocument.text", "application/zip", True), ("application/pdf", "application/zip", False),
])
def test_which_sniffed_types_stand_for_a_declared_one(declared: str, sniffed: str, ok: bool) -> None:
    assert agrees(declared, sniffed) is ok


def test_a_quarantined_objects_tags_read_back_as_words() -> None:
    assert describe("active_content", "image/png", "text/html") == "the bytes are HTML, not image/png"
    assert describe("too_large", "5242880", "6291456") == "too large: 6291456 bytes stored, the limit is 5242880"
    assert describe("something_new", None, None) == "something_new"
