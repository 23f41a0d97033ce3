"""core/rulesdiff.py: every kind of rules change is named, with the right kind and direction."""
from __future__ import annotations

import json
from typing import Any

import pytest

from broker.config import load_rules
from broker.core import rulesdiff
from broker.core.rules import api_key_hash
from broker.models import RuleSet

KEY_A = api_key_hash("test-key-a")
KEY_B = api_key_hash("test-key-b")
KEY_C = api_key_hash("test-key-c")

BASE = f"""\
version: 1
bucket: uploads-bucket
max_expires_in: 3600
session_max_ttl: 3600
cors:
  allowed_origins: [https://app.example.com]
clients:
  web:
    api_key_sha256: [{KEY_A}]
    quota: {{uploads_per_hour: 100, bytes_per_day: 1 GB}}
    server_only: true
    callback: {{url: https://hooks.example.com/verdicts, secret_env: WEB_HOOK_SECRET}}
    default_profile: avatars
    rules:
      - name: avatars
        key: "uploads/{{client}}/{{profile}}/{{uuid}}{{ext}}"
        min_bytes: 1 kB
        max_bytes: 5 MiB
        expires_in: 300
        content_types: [image/png, image/jpeg]
        extensions: [.png, .jpg]
        cache_control: "public, max-age=60"
        client_metadata: [title]
      - name: docs
        key: "docs/{{client}}/{{uuid}}{{ext}}"
        max_bytes: 10 MB
        content_types: ["application/*"]
  mobile:
    principals: [group:mobile-users]
    rules:
      - name: photos
        max_bytes: 15 MiB
        content_types: [image/jpeg]
"""


def rules(text: str = BASE) -> RuleSet:
    return load_rules(text, source="test.yaml")


def edited(old: str, new: str, count: int = 1) -> RuleSet:
    assert BASE.count(old) == count, f"{old!r} is not in the base rules {count} time(s)"
    return rules(BASE.replace(old, new))


def only(changes: list[rulesdiff.Change]) -> rulesdiff.Change:
    assert len(changes) == 1, [c.text for c in changes]
    return changes[0]


def test_no_change_is_nothing() -> None:
    changes = rulesdiff.diff(rules(), rules())
    assert changes == []
    assert rulesdiff.summary(changes) == {"added": 0, "removed": 0, "widened": 0, "narrowed": 0,
                                          "changed": 0, "widens": False}


# (old text, new text) -> (kind, client, rule, field, widens)
SINGLE = [
    pytest.param("max_bytes: 5 MiB", "max_bytes: 10 MiB", ("widened", "web", "avatars", "max_bytes", True),
                 id="max_bytes_up"),
    pytest.param("max_bytes: 5 MiB", "max_bytes: 1 MiB", ("narrowed", "web", "avatars", "max_bytes", False),
                 id="max_bytes_down"),
    pytest.param("min_bytes: 1 kB", "min_bytes: 1", ("widened", "web", "avatars", "min_bytes", True),
                 id="min_bytes_down"),
    pytest.param("expires_in: 300", "expires_in: 900", ("widened", "web", "avatars", "expires_in", True),
                 id="expiry_longer"),
    pytest.param("content_types: [image/jpeg]", "content_types: [image/jpeg, image/png]",
                 ("widened", "mobile", "photos", "content_types", True), id="type_added_to_other_client"),
    pytest.param("[image/png, image/jpeg]", "[image/png, image/jpeg, image/gif]",
                 ("widened", "web", "avatars", "content_types", True), id="type_added"),
    pytest.param('["application/*"]', "[application/pdf]",
                 ("narrowed", "web", "docs", "content_types", False), id="wildcard_to_one"),
    pytest.param("extensions: [.png, .jpg]", "extensions: [.png, .jpg, .jpeg]",
                 ("widened", "web", "avatars", "extensions", True), id="extension_added"),
    pytest.param("        extensions: [.png, .jpg]\n", "",
                 ("widened", "web", "avatars", "extensions", True), id="extensions_any"),
    pytest.param("client_metadata: [title]", "client_metadata: [title, author]",
                 ("widened", "web", "avatars", "client_metadata", True), id="metadata_name_added"),
    pytest.param('cache_control: "public, max-age=60"', 'cache_control: "no-store"',
                 ("changed", "web", "avatars", "cache_control", False), id="form_field_neutral"),
    pytest.param('key: "uploads/{client}/{profile}/{uuid}{ext}"', 'key: "uploads/{client}/{profile}/{filename}/{uuid}"',
                 ("changed", "web", "avatars", "key", True), id="key_template_same_prefix"),
    pytest.param("        max_bytes: 10 MB\n", "        max_bytes: 10 MB\n        multipart: true\n",
                 ("widened", "web", "docs", "multipart", True), id="multipart_on"),
    pytest.param("        max_bytes: 10 MB\n", "        max_bytes: 10 MB\n        acl: public-read\n",
                 ("widened", "web", "docs", "acl", True), id="acl_public"),
    pytest.param("uploads_per_hour: 100", "uploads_per_hour: 50",
                 ("narrowed", "web", None, "quota.uploads_per_hour", False), id="quota_down"),
    pytest.param("bytes_per_day: 1 GB", "bytes_per_day: 2 GB",
                 ("widened", "web", None, "quota.bytes_per_day", True), id="quota_bytes_up"),
    pytest.param("server_only: true", "server_only: false",
                 ("widened", "web", None, "server_only", True), id="browsers_allowed"),
    pytest.param("https://hooks.example.com/verdicts", "https://other.example.net/verdicts",
                 ("changed", "web", None, "callback.url", True), id="callback_moves"),
    pytest.param("principals: [group:mobile-users]", "principals: [group:mobile-users, group:beta]",
                 ("added", "mobile", None, "principals", True), id="principal_added"),
    pytest.param("default_profile: avatars", "default_profile: docs",
                 ("changed", "web", None, "default_profile", False), id="default_profile"),
    pytest.param("allowed_origins: [https://app.example.com]",
                 "allowed_origins: [https://app.example.com, https://beta.example.com]",
                 ("added", None, None, "cors.allowed_origins", True), id="origin_added"),
    pytest.param("session_max_ttl: 3600", "session_max_ttl: 7200",
                 ("widened", None, None, "session_max_ttl", True), id="sessions_longer"),
    pytest.param("max_expires_in: 3600", "max_expires_in: 1800",
                 ("narrowed", None, None, "max_expires_in", False), id="max_expiry_down"),
]


@pytest.mark.parametrize(("old", "new", "expected"), SINGLE)
def test_one_edit_is_one_change_of_the_right_kind(old: str, new: str, expected: tuple[Any, ...]) -> None:
    change = only(rulesdiff.diff(rules(), edited(old, new)))
    assert (change.kind, change.client, change.rule, change.field, change.widens) == expected
    reverse = only(rulesdiff.diff(edited(old, new), rules()))  # and back again: the opposite direction
    opposite = {"widened": "narrowed", "narrowed": "widened", "added": "removed", "removed": "added",
                "changed": "changed"}
    assert reverse.kind == opposite[change.kind]
    assert reverse.widens == (change.widens if change.kind == "changed" else not change.widens)


def test_a_key_template_with_a_new_prefix_names_both() -> None:
    changes = rulesdiff.diff(rules(), edited('key: "uploads/{client}/{profile}/{uuid}{ext}"',
                                             'key: "elsewhere/{client}/{uuid}{ext}"'))
    assert [(c.field, c.kind, c.widens) for c in changes] == [("key", "changed", True), ("prefix", "changed", True)]
    assert changes[1].old == "uploads/web/avatars/" and changes[1].new == "elsewhere/web/"


def test_a_type_already_covered_by_a_wildcard_widens_nothing() -> None:
    assert rulesdiff.diff(rules(), edited('["application/*"]', '["application/*", application/pdf]')) == []


def test_a_quota_dropped_widens_both_its_limits() -> None:
    changes = rulesdiff.diff(rules(), edited("    quota: {uploads_per_hour: 100, bytes_per_day: 1 GB}\n", ""))
    assert {(c.field, c.kind, c.new) for c in changes} == {("quota.uploads_per_hour", "widened", None),
                                                           ("quota.bytes_per_day", "widened", None)}
    assert all("unlimited" in c.text for c in changes)


def test_rules_and_clients_added_and_removed() -> None:
    doc_rule = '      - name: docs\n        key: "docs/{client}/{uuid}{ext}"\n        max_bytes: 10 MB\n' \
               '        content_types: ["application/*"]\n'
    changes = rulesdiff.diff(rules(), edited(doc_rule, ""))
    removed = only(changes)
    assert (removed.kind, removed.field, removed.client, removed.rule, removed.widens) == \
        ("removed", "rule", "web", "docs", False)
    assert removed.old["prefix"] == "docs/web/" and removed.new is None

    mobile = BASE[BASE.index("  mobile:"):]
    gone = only(rulesdiff.diff(rules(), rules(BASE.replace(mobile, ""))))
    assert (gone.kind, gone.field, gone.client, gone.widens) == ("removed", "client", "mobile", False)
    assert gone.items == ("group:mobile-users",)
    back = only(rulesdiff.diff(rules(BASE.replace(mobile, "")), rules()))
    assert (back.kind, back.client, back.widens) == ("added", "mobile", True)
    assert back.new == {"rules": ["photos"], "api_keys": [], "principals": ["group:mobile-users"]}


def test_a_pasted_client_that_replaced_the_real_one_shows_the_keys_it_removed() -> None:
    # The real client had two keys; the block pasted over it (last one wins) has another key,
    # other limits and no quota. The diff names the keys that stopped working.
    old = rules(BASE.replace(f"api_key_sha256: [{KEY_A}]", f"api_key_sha256: [{KEY_A}, {KEY_B}]"))
    new = rules(BASE.replace(f"api_key_sha256: [{KEY_A}]", f"api_key_sha256: [{KEY_C}]")
                .replace("    quota: {uploads_per_hour: 100, bytes_per_day: 1 GB}\n", ""))
    changes = rulesdiff.diff(old, new)
    keys = {c.kind: c for c in changes if c.field == "api_key_sha256"}
    assert keys["removed"].items == (KEY_A[:8], KEY_B[:8])
    assert keys["added"].items == (KEY_C[:8],)
    assert rulesdiff.summary(changes)["widens"] is True
    for digest in (KEY_A, KEY_B, KEY_C):  # a fingerprint only, never the whole hash
        assert digest not in json.dumps([c.as_dict() for c in changes])


def test_fingerprint_is_a_short_prefix() -> None:
    assert rulesdiff.key_fingerprint(KEY_A) == KEY_A[:8]
    assert len(rulesdiff.key_fingerprint(KEY_A)) == rulesdiff.FINGERPRINT_DIGITS == 8


def test_summary_counts_each_kind() -> None:
    new = rules(BASE.replace("max_bytes: 5 MiB", "max_bytes: 1 MiB").replace("expires_in: 300", "expires_in: 60")
                .replace("[group:mobile-users]", "[group:mobile-users, sub:abc]"))
    assert rulesdiff.summary(rulesdiff.diff(rules(), new)) == {
        "added": 1, "removed": 0, "widened": 0, "narrowed": 2, "changed": 0, "widens": True}
    narrowed_only = rules(BASE.replace("max_bytes: 5 MiB", "max_bytes: 1 MiB"))
    assert rulesdiff.summary(rulesdiff.diff(rules(), narrowed_only))["widens"] is False


POLICY_OLD = {"Version": "2012-10-17", "Statement": [
    {"Sid": "Put", "Effect": "Allow", "Action": ["s3:PutObject"], "Resource": "arn:aws:s3:::b/a/*"},
    {"Sid": "Kms", "Effect": "Allow", "Action": ["kms:GenerateDataKey"], "Resource": "arn:aws:kms:k",
     "Condition": {"StringEquals": {"kms:ViaService": "s3.us-east-1.amazonaws.com"}}}]}


def test_policy_delta_lists_permissions_added_and_removed() -> None:
    assert rulesdiff.policy_delta(POLICY_OLD, POLICY_OLD) == rulesdiff.PolicyDelta()
    new = {"Statement": [
        {"Sid": "Put", "Effect": "Allow", "Action": ["s3:PutObject"],
         "Resource": ["arn:aws:s3:::b/a/*", "arn:aws:s3:::b/c/*"]},
        {"Sid": "Multipart", "Effect": "Allow", "Action": ["s3:ListMultipartUploadParts", "s3:AbortMultipartUpload"],
         "Resource": "arn:aws:s3:::b/c/*"}]}
    delta = rulesdiff.policy_delta(POLICY_OLD, new)
    assert delta.widens
    assert delta.added == ({"actions": ["s3:AbortMultipartUpload", "s3:ListMultipartUploadParts", "s3:PutObject"],
                            "resource": "arn:aws:s3:::b/c/*", "condition": None},)
    assert delta.removed == ({"actions": ["kms:GenerateDataKey"], "resource": "arn:aws:kms:k",
                              "condition": {"StringEquals": {"kms:ViaService": "s3.us-east-1.amazonaws.com"}}},)
    assert not rulesdiff.policy_delta(new, {"Statement": []}).widens


def test_a_policy_that_only_shrinks_does_not_widen_the_report() -> None:
    delta = rulesdiff.policy_delta(POLICY_OLD, {"Statement": [POLICY_OLD["Statement"][0]]})
    assert rulesdiff.Report((), {"signer": delta}).widens is False
    grown = rulesdiff.policy_delta({"Statement": [POLICY_OLD["Statement"][0]]}, POLICY_OLD)
    assert rulesdiff.Report((), {"signer": delta, "verifier": grown}).widens is True


@pytest.mark.parametrize(("old", "new", "kind"), [
    pytest.param(None, "public-read", "widened", id="none_to_public"),
    pytest.param("private", "authenticated-read", "widened", id="private_to_any_account"),
    pytest.param("public-read", "authenticated-read", "narrowed", id="public_to_any_account"),
    pytest.param("public-read", None, "narrowed", id="public_to_none"),
    pytest.param("private", None, "changed", id="private_to_no_field"),
    pytest.param("bucket-owner-full-control", "private", "changed", id="owner_only_both"),
])
def test_acls_are_ordered_by_who_can_read(old: str | None, new: str | None, kind: str) -> None:
    def with_acl(acl: str | None) -> RuleSet:
        line = "" if acl is None else f"        acl: {acl}\n"
        return edited("        max_bytes: 10 MB\n", f"        max_bytes: 10 MB\n{line}")

    change = only(rulesdiff.diff(with_acl(old), with_acl(new)))
    assert (change.field, change.kind, change.widens) == ("acl", kind, kind == "widened")
