"""broker.policy: a Fine Uploader policy is signed only if every condition is one the grant allows."""
from __future__ import annotations

import copy
from datetime import timedelta
from typing import Any, Callable

import pytest

from broker.protocols.fineuploader.policy import SigningLimits, check_policy, encode_uri_component
from tests.conftest import NOW
from tests.protocols import fu

KEY = "uploads/web-app/avatars/2026-11-28/0123456789abcdef0123456789abcdef.png"
OTHER_CLIENT_KEY = "partners/partner-acme/invoices/2026-11-28/0123456789abcdef0123456789abcdef.pdf"
FIELDS = {"Content-Type": "image/png", "acl": "private", "Cache-Control": "public, max-age=86400",
          "Content-Disposition": 'inline; filename="me.png"', "x-amz-meta-source": "web-app",
          "success_action_status": "201"}
PARAMS = {"Cache-Control": FIELDS["Cache-Control"], "Content-Disposition": FIELDS["Content-Disposition"],
          "source": "web-app"}


def limits(**changes: Any) -> SigningLimits:
    base = dict(bucket="broker-uploads", key=KEY, filename="mé.png", fields=FIELDS, min_bytes=1,
                max_bytes=5 * 1024 * 1024, region="us-east-1", access_key_id="AKIDBROKER",
                session_token=None, now=NOW, not_after=NOW + timedelta(seconds=300))
    base.update(changes)
    return SigningLimits(**base)


def policy(**changes: Any) -> dict[str, Any]:
    args = dict(key=KEY, bucket="broker-uploads", content_type="image/png", access_key="AKIDBROKER",
                now=NOW, filename="mé.png", params=PARAMS, size_range=(0, 10 * 1024 * 1024))
    args.update(changes)
    return fu.policy_document(**args)


def test_fine_uploaders_own_policy_is_signed_tightened() -> None:
    signed, problems = check_policy(policy(), limits())

    assert problems == []
    assert signed is not None
    assert signed["conditions"][-1] == ["content-length-range", 1, 5 * 1024 * 1024]
    assert signed["expiration"] == "2026-11-28T14:54:31.000Z"  # the grant's, not the browser's 5 min
    assert signed["conditions"][:-1] == policy()["conditions"][:-1]  # every form field still covered


def test_missing_range_is_added_and_expiration_never_extended() -> None:
    doc = policy(size_range=None)
    doc["expiration"] = "2026-11-28T14:50:00.000Z"

    signed, problems = check_policy(doc, limits())

    assert problems == [] and signed is not None
    assert signed["conditions"][-1] == ["content-length-range", 1, 5 * 1024 * 1024]
    assert signed["expiration"] == "2026-11-28T14:50:00.000Z"


def test_a_narrower_range_from_the_page_is_kept() -> None:
    signed, _ = check_policy(policy(size_range=(100, 2000)), limits())

    assert signed is not None and signed["conditions"][-1] == ["content-length-range", 100, 2000]


def test_reordered_conditions_are_still_checked_and_signed() -> None:
    doc = policy()
    doc["conditions"].reverse()

    signed, problems = check_policy(doc, limits())

    assert problems == [] and signed is not None


def _add(cond: Any) -> Callable[[dict[str, Any]], None]:
    return lambda doc: doc["conditions"].append(cond)


def _remove(name: str) -> Callable[[dict[str, Any]], None]:
    def change(doc: dict[str, Any]) -> None:
        doc["conditions"] = [c for c in doc["conditions"] if not (isinstance(c, dict) and name in c)]
    return change


def _set(name: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(doc: dict[str, Any]) -> None:
        for cond in doc["conditions"]:
            if isinstance(cond, dict) and name in cond:
                cond[name] = value
    return change


def _replace(name: str, new: Any) -> Callable[[dict[str, Any]], None]:
    def change(doc: dict[str, Any]) -> None:
        doc["conditions"] = [new if isinstance(c, dict) and name in c else c for c in doc["conditions"]]
    return change


def _range(*bounds: Any) -> Callable[[dict[str, Any]], None]:
    def change(doc: dict[str, Any]) -> None:
        kept = [c for c in doc["conditions"] if not isinstance(c, list)]
        doc["conditions"] = kept + [["content-length-range", *bounds]]
    return change


def _top(name: str, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda doc: doc.__setitem__(name, value)


HOSTILE = [
    # conditions added
    pytest.param(_add({"x-amz-meta-evil": "1"}), "metadata x-amz-meta-evil was not granted", id="added_metadata"),
    pytest.param(_add({"Content-Encoding": "gzip"}), "Content-Encoding is not part of any rule",
                 id="added_content_encoding"),
    pytest.param(_add({"success_action_redirect": "https://evil.example/"}), "redirects are not signed",
                 id="added_redirect"),
    pytest.param(_add({"x-amz-website-redirect-location": "/x"}), "is not a field the broker signs",
                 id="added_unknown_amz"),
    pytest.param(_add({"x-amz-storage-class": "GLACIER"}), "x-amz-storage-class is not set by the rule",
                 id="added_storage_class"),
    pytest.param(_add({"x-amz-security-token": "stolen"}), "x-amz-security-token is not allowed",
                 id="added_session_token"),
    pytest.param(_add({"x-amz-signature": "00"}), "cannot constrain its own signature", id="added_signature"),
    pytest.param(_add({}), "exactly one field", id="added_empty_object"),
    pytest.param(_add({"acl": "private", "key": KEY}), "exactly one field", id="added_two_fields_in_one"),
    pytest.param(_add("acl"), "must be an object or an array", id="added_string"),
    # conditions removed
    pytest.param(_remove("key"), "key is required by the grant but missing", id="removed_key"),
    pytest.param(_remove("bucket"), "bucket is required", id="removed_bucket"),
    pytest.param(_remove("Content-Type"), "content-type is required", id="removed_content_type"),
    pytest.param(_remove("Cache-Control"), "cache-control is required", id="removed_cache_control"),
    pytest.param(_remove("Content-Disposition"), "content-disposition is required", id="removed_disposition"),
    pytest.param(_remove("x-amz-meta-source"), "x-amz-meta-source is required", id="removed_rule_metadata"),
    pytest.param(_remove("acl"), "acl is required", id="removed_acl"),
    pytest.param(_remove("x-amz-credential"), "x-amz-credential is required", id="removed_credential"),
    # duplicated
    pytest.param(_add({"key": KEY}), "key appears twice", id="duplicate_key_same_value"),
    pytest.param(_add({"content-type": "text/html"}), "content-type appears twice", id="duplicate_type_other_case"),
    pytest.param(_add(["content-length-range", "0", "10"]), "content-length-range appears twice", id="duplicate_range"),
    # other values
    pytest.param(_set("bucket", "other-bucket"), "bucket must be the granted bucket", id="another_bucket"),
    pytest.param(_set("key", OTHER_CLIENT_KEY), "key must be the granted key", id="another_clients_prefix"),
    pytest.param(_set("key", KEY + ".html"), "key must be the granted key", id="key_suffix"),
    pytest.param(_set("Content-Type", "text/html"), "content-type must be the granted image/png", id="another_type"),
    pytest.param(_set("acl", "public-read"), "acl must be the granted private", id="public_acl"),
    pytest.param(_set("Content-Disposition", "attachment"), "content-disposition must be the granted",
                 id="another_disposition"),
    pytest.param(_set("x-amz-meta-source", "evil"), "x-amz-meta-source must be web-app", id="another_metadata"),
    pytest.param(_set("x-amz-meta-qqfilename", "other.png"), "qqfilename must be the granted file name",
                 id="another_filename"),
    pytest.param(_set("success_action_status", "303"), "success_action_status must be one of 200, 201",
                 id="odd_status"),
    pytest.param(_set("x-amz-algorithm", "AWS4-HMAC-SHA1"), "x-amz-algorithm must be", id="another_algorithm"),
    pytest.param(_set("acl", 0), "must be a string", id="number_value"),
    pytest.param(_set("key", None), "must be a string", id="null_value"),
    # starts-with and eq
    pytest.param(_replace("key", ["starts-with", "$key", "uploads/web-app/"]), "starts-with conditions are not signed",
                 id="starts_with_key"),
    pytest.param(_replace("key", ["eq", "$key", KEY]), "eq conditions are not signed", id="eq_key"),
    pytest.param(_add(["starts-with", "$Content-Type", ""]), "starts-with conditions are not signed",
                 id="starts_with_any_type"),
    # credential scope and dates
    pytest.param(_set("x-amz-credential", "AKIDOTHER/20261128/us-east-1/s3/aws4_request"), "another access key",
                 id="another_access_key"),
    pytest.param(_set("x-amz-credential", "AKIDBROKER/20261128/eu-west-1/s3/aws4_request"), "names region eu-west-1",
                 id="another_region"),
    pytest.param(_set("x-amz-credential", "AKIDBROKER/20261128/us-east-1/sts/aws4_request"), "must be <access key>",
                 id="another_service"),
    pytest.param(_set("x-amz-credential", "AKIDBROKER/20261127/us-east-1/s3/aws4_request"),
                 "is not the date of x-amz-date",
                 id="credential_date_mismatch"),
    pytest.param(_set("x-amz-date", "20261128T180000Z"), "more than 15 minutes", id="date_skewed"),
    pytest.param(_set("x-amz-date", "2026-11-28T14:49:31Z"), "must look like", id="date_malformed"),
    pytest.param(_top("expiration", "2026-11-28T14:00:00.000Z"), "already expired", id="expired"),
    pytest.param(_top("expiration", "tomorrow"), "expiration must be an ISO 8601", id="expiration_malformed"),
    pytest.param(_top("expiration", 1795877671), "expiration must be an ISO 8601", id="expiration_number"),
    pytest.param(_top("extra", True), "unknown top-level field", id="extra_top_level"),
    pytest.param(_top("conditions", {}), "conditions must be a non-empty array", id="conditions_object"),
    pytest.param(_top("conditions", []), "conditions must be a non-empty array", id="conditions_empty"),
    pytest.param(_top("conditions", [{"acl": "private"}] * 65), "more than 64", id="too_many"),
    # content-length-range
    pytest.param(_range("0", "1e9"), "two whole numbers", id="range_exponent"),
    pytest.param(_range(-1, 100), "two whole numbers", id="range_negative"),
    pytest.param(_range(True, 100), "two whole numbers", id="range_bool"),
    pytest.param(_range(1.5, 100), "two whole numbers", id="range_float"),
    pytest.param(_range("0"), "two whole numbers", id="range_one_bound"),
    pytest.param(_range("10", "1"), "above its maximum", id="range_inverted"),
    pytest.param(_range("6000000", "9000000"), "does not overlap", id="range_above_rule"),
]


@pytest.mark.parametrize("tamper, message", HOSTILE)
def test_hostile_policy_is_refused_with_the_reason(tamper: Callable[[dict[str, Any]], None], message: str) -> None:
    doc = copy.deepcopy(policy())
    tamper(doc)

    signed, problems = check_policy(doc, limits())

    assert signed is None
    assert any(message in str(p) for p in problems), problems
    assert all(p.path.startswith("$") for p in problems)


@pytest.mark.parametrize("doc", [None, [], "policy", 42, {"expiration": "2026-11-28T14:54:31Z"}])
def test_not_a_policy_is_refused(doc: Any) -> None:
    signed, problems = check_policy(doc, limits())

    assert signed is None and problems


@pytest.mark.parametrize("value, ok", [
    pytest.param("200", True, id="fine_uploaders_200"),
    pytest.param("201", True, id="the_rules_201"),
    pytest.param("204", False, id="default_204_when_the_rule_says_201"),
])
def test_success_status_is_fine_uploaders_or_the_rules(value: str, ok: bool) -> None:
    doc = policy()
    _set("success_action_status", value)(doc)

    signed, _ = check_policy(doc, limits())

    assert (signed is not None) is ok


def test_temporary_credentials_need_the_token_fine_uploader_cannot_send() -> None:
    signed, problems = check_policy(policy(), limits(session_token="TOKEN"))

    assert signed is None
    assert any("long-lived credentials" in str(p) for p in problems)


def test_the_brokers_own_session_token_is_accepted() -> None:
    doc = policy()
    doc["conditions"].insert(3, {"x-amz-security-token": "TOKEN"})

    signed, problems = check_policy(doc, limits(session_token="TOKEN"))

    assert problems == [] and signed is not None


def test_every_problem_is_listed() -> None:
    doc = policy()
    _set("bucket", "x")(doc)
    _set("acl", "public-read")(doc)
    _add({"x-amz-meta-evil": "1"})(doc)

    _, problems = check_policy(doc, limits())

    assert len(problems) == 3


def test_metadata_values_are_compared_as_fine_uploader_encodes_them() -> None:
    assert encode_uri_component("r\u00e9sum\u00e9 (1).png") == "r%C3%A9sum%C3%A9%20(1).png"
    doc = policy(filename="r\u00e9sum\u00e9 (1).png")

    signed, problems = check_policy(doc, limits(filename="r\u00e9sum\u00e9 (1).png"))

    assert problems == [] and signed is not None


def test_condition_names_are_compared_as_ascii_only() -> None:
    """str.lower() folds the Kelvin sign (U+212A) into 'k': '\u212aey' must not pass as 'key'."""
    doc = policy()
    doc["conditions"] = [{"\u212aey" if "key" in c else k: v for k, v in c.items()} if isinstance(c, dict) else c
                         for c in doc["conditions"]]
    signed, problems = check_policy(doc, limits())
    assert signed is None
    assert any("condition names are ASCII" in str(p) for p in problems), problems
