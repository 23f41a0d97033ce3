"""The signer's IAM policy derived from the rules: tables, merging, parliament lint."""
from __future__ import annotations

import json
from typing import Any

import pytest
from parliament import analyze_policy_string

from broker.deploy.iam import (PolicyError, Target, escape_arn, merge_prefixes, policy_document,
                               verifier_policy_document)
from tests.deploy.helpers import make_rules

KEY_ARN = "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"


def statements(policy: dict[str, Any]) -> dict[str, tuple[list[str], list[str]]]:
    out = {}
    for stmt in policy["Statement"]:
        res = stmt["Resource"]
        out[stmt["Sid"]] = (stmt["Action"], res if isinstance(res, list) else [res])
    return out


def findings(policy: dict[str, Any]) -> list[tuple[str, Any]]:
    return [(f.issue, f.detail) for f in analyze_policy_string(json.dumps(policy)).findings]


@pytest.mark.parametrize("prefixes, merged", [
    pytest.param(["a/b/", "a/"], ["a/"], id="shorter-covers-longer"),
    pytest.param(["a/x/", "a/y/"], ["a/x/", "a/y/"], id="siblings-stay"),
    pytest.param(["u/acme/", "u/acme-corp/"], ["u/acme-corp/", "u/acme/"], id="slash-keeps-clients-apart"),
    pytest.param(["a/", "a/", ""], [""], id="empty-prefix-covers-all"),
    pytest.param([], [], id="none"),
])
def test_merge_prefixes(prefixes: list[str], merged: list[str]) -> None:
    assert merge_prefixes(prefixes) == merged


@pytest.mark.parametrize("text, escaped", [
    pytest.param("uploads/", "uploads/", id="plain"),
    pytest.param("a*b/", "a${*}b/", id="star-stays-literal"),
])
def test_escape_arn(text: str, escaped: str) -> None:
    assert escape_arn(text) == escaped


def test_bundled_rules_policy(ruleset: Any) -> None:
    policy = policy_document(ruleset)
    assert policy["Version"] == "2012-10-17"
    assert statements(policy) == {
        "PutObjectsUnderRulePrefixes": (["s3:PutObject"], [
            "arn:aws:s3:::broker-uploads/partners/partner-acme/invoices/*",
            "arn:aws:s3:::broker-uploads/partners/partner-acme/statements/*",
            "arn:aws:s3:::broker-uploads/uploads/mobile/photos/*",
            "arn:aws:s3:::broker-uploads/uploads/web-app/avatars/*",
            "arn:aws:s3:::broker-uploads/uploads/web-app/documents/*",
            "arn:aws:s3:::broker-uploads/uploads/web-app/videos/*",
        ]),
        "ManageMultipartUploads": (["s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"],
                                   ["arn:aws:s3:::broker-uploads/uploads/web-app/videos/*"]),
    }


CASES = [
    pytest.param(
        {"c1": [{"name": "p", "key": "in/{client}/{uuid}"}]},
        {"PutObjectsUnderRulePrefixes": (["s3:PutObject"], ["arn:aws:s3:::up-bucket/in/c1/*"])},
        id="put-only"),
    pytest.param(
        {"c1": [{"name": "p", "key": "in/{client}/{uuid}"},
                {"name": "q", "key": "in/{client}/q/{uuid}"}]},
        {"PutObjectsUnderRulePrefixes": (["s3:PutObject"], ["arn:aws:s3:::up-bucket/in/c1/*"])},
        id="covered-prefix-dropped"),
    pytest.param(
        {"c1": [{"name": "p", "key": "in/{client}/{uuid}"},
                {"name": "q", "key": "in/{client}/{uuid}", "bucket": "other-bucket"}]},
        {"PutObjectsUnderRulePrefixes": (["s3:PutObject"], ["arn:aws:s3:::other-bucket/in/c1/*",
                                                            "arn:aws:s3:::up-bucket/in/c1/*"])},
        id="same-prefix-other-bucket-kept"),
    pytest.param(
        {"c1": [{"name": "p", "key": "in/{client}/{profile}/{uuid}", "acl": "private"},
                {"name": "pub", "key": "in/{client}/{profile}/{uuid}", "acl": "bucket-owner-full-control"}]},
        {"PutObjectsUnderRulePrefixes": (["s3:PutObject"], ["arn:aws:s3:::up-bucket/in/c1/p/*",
                                                            "arn:aws:s3:::up-bucket/in/c1/pub/*"]),
         "SetNonPrivateAcls": (["s3:PutObjectAcl"], ["arn:aws:s3:::up-bucket/in/c1/pub/*"])},
        id="acl-only-where-not-private"),
    pytest.param(
        {"c1": [{"name": "v", "key": "in/{client}/{profile}/{uuid}", "multipart": True,
                 "max_bytes": "6 GB"},
                {"name": "p", "key": "in/{client}/{profile}/{uuid}"}]},
        {"PutObjectsUnderRulePrefixes": (["s3:PutObject"], ["arn:aws:s3:::up-bucket/in/c1/p/*",
                                                            "arn:aws:s3:::up-bucket/in/c1/v/*"]),
         "ManageMultipartUploads": (["s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"],
                                    ["arn:aws:s3:::up-bucket/in/c1/v/*"])},
        id="multipart-only-where-allowed"),
    pytest.param(
        {"c1": [{"name": "k", "key": "in/{client}/{uuid}", "encryption": {"kms_key_id": KEY_ARN}}]},
        {"PutObjectsUnderRulePrefixes": (["s3:PutObject"], ["arn:aws:s3:::up-bucket/in/c1/*"]),
         "EncryptUploadsWithKms": (["kms:GenerateDataKey"], [KEY_ARN])},
        id="kms-key-arn"),
    pytest.param(
        {"c1": [{"name": "k", "key": "in/{client}/{uuid}", "multipart": True,
                 "encryption": {"kms_key_id": KEY_ARN}}]},
        {"PutObjectsUnderRulePrefixes": (["s3:PutObject"], ["arn:aws:s3:::up-bucket/in/c1/*"]),
         "ManageMultipartUploads": (["s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"],
                                    ["arn:aws:s3:::up-bucket/in/c1/*"]),
         "EncryptUploadsWithKms": (["kms:Decrypt", "kms:GenerateDataKey"], [KEY_ARN])},
        id="kms-multipart-needs-decrypt"),
    pytest.param(
        {"c1": [{"name": "k", "key": "in/{client}/{uuid}", "encryption": "AES256"}]},
        {"PutObjectsUnderRulePrefixes": (["s3:PutObject"], ["arn:aws:s3:::up-bucket/in/c1/*"])},
        id="sse-s3-needs-no-kms"),
    pytest.param(
        {"c1": [{"name": "p", "key": "{uuid}{ext}"}]},
        {"PutObjectsUnderRulePrefixes": (["s3:PutObject"], ["arn:aws:s3:::up-bucket/*"])},
        id="no-prefix-means-whole-bucket"),
]


@pytest.mark.parametrize("clients, expected", CASES)
def test_policy_table(clients: dict[str, Any], expected: dict[str, Any]) -> None:
    policy = policy_document(make_rules(clients))
    assert statements(policy) == expected
    assert findings(policy) == []


def test_kms_statement_is_limited_to_s3_in_the_rules_region() -> None:
    policy = policy_document(make_rules({"c1": [{"name": "k", "key": "in/{client}/{uuid}",
                                                 "encryption": {"kms_key_id": KEY_ARN}}]}))
    kms = next(s for s in policy["Statement"] if s["Sid"] == "EncryptUploadsWithKms")
    assert kms["Condition"] == {"StringEquals": {"kms:ViaService": "s3.eu-west-1.amazonaws.com"}}


@pytest.mark.parametrize("key_id, account, resource, alias", [
    pytest.param("1234abcd-12ab-34cd-56ef-1234567890ab", "111122223333", KEY_ARN, None, id="key-id"),
    pytest.param("alias/uploads", "111122223333", "arn:aws:kms:eu-west-1:111122223333:key/*",
                 "alias/uploads", id="alias"),
    pytest.param("arn:aws:kms:eu-west-1:111122223333:alias/uploads", None,
                 "arn:aws:kms:eu-west-1:111122223333:key/*", "alias/uploads", id="alias-arn"),
])
def test_kms_key_forms(key_id: str, account: str | None, resource: str, alias: str | None) -> None:
    rules = make_rules({"c1": [{"name": "k", "key": "in/{client}/{uuid}",
                                "encryption": {"kms_key_id": key_id}}]})
    kms = policy_document(rules, target=Target(account_id=account))["Statement"][-1]
    assert kms["Resource"] == resource
    assert kms["Condition"].get("ForAnyValue:StringEquals") == (
        {"kms:ResourceAliases": alias} if alias else None)


def test_alias_condition_is_the_only_parliament_gap() -> None:
    # parliament 1.6's action database does not list kms:ResourceAliases, which AWS KMS
    # documents for GenerateDataKey/Decrypt; every other check stays clean.
    rules = make_rules({"c1": [{"name": "k", "key": "in/{client}/{uuid}",
                                "encryption": {"kms_key_id": "alias/uploads"}}]})
    found = findings(policy_document(rules, target=Target(account_id="111122223333")))
    assert found and {issue for issue, _ in found} == {"UNKNOWN_CONDITION_FOR_ACTION"}
    assert all("kms:ResourceAliases" in detail for _, detail in found)


def test_kms_key_id_without_account_says_how_to_fix() -> None:
    rules = make_rules({"c1": [{"name": "k", "key": "in/{client}/{uuid}",
                                "encryption": {"kms_key_id": "1234abcd-12ab-34cd-56ef-1234567890ab"}}]})
    with pytest.raises(PolicyError, match=r"rule 'k' of client 'c1'.*--account-id"):
        policy_document(rules)


def test_rules_location_adds_get_object_on_that_object_only(ruleset: Any) -> None:
    policy = policy_document(ruleset, rules_location="s3://ops-config/broker/rules.yaml")
    assert statements(policy)["ReadRulesObject"] == (
        ["s3:GetObject"], ["arn:aws:s3:::ops-config/broker/rules.yaml"])
    assert findings(policy) == []


def test_bundled_policy_passes_parliament(ruleset: Any) -> None:
    assert findings(policy_document(ruleset)) == []


def test_parliament_would_flag_a_broad_policy() -> None:
    # proves the lint above can fail: the original hand-made policy style
    broad = {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": ["s3:PutObject", "s3:PutObjectAcl"], "Resource": "*"}]}
    assert findings(broad)


@pytest.mark.parametrize("partition", ["aws", "aws-cn", "aws-us-gov"])
def test_partition(ruleset: Any, partition: str) -> None:
    policy = policy_document(ruleset, target=Target(partition=partition))
    arns = policy["Statement"][0]["Resource"]
    assert all(arn.startswith(f"arn:{partition}:s3:::broker-uploads/") for arn in arns)


def test_verify_uploads_adds_read_and_delete_on_rule_prefixes_only(ruleset: Any) -> None:
    plain = statements(policy_document(ruleset))
    verified = statements(policy_document(ruleset, verify_uploads=True))
    assert "VerifyAndRemoveRefusedUploads" not in plain
    actions, resources = verified["VerifyAndRemoveRefusedUploads"]
    assert actions == ["s3:DeleteObject", "s3:GetObject"]
    assert resources == plain["PutObjectsUnderRulePrefixes"][1]
    assert findings(policy_document(ruleset, verify_uploads=True)) == []


# ----------------------------------------------------------------- the verifier's policy


def test_bundled_rules_verifier_policy(ruleset: Any) -> None:
    prefixes = statements(policy_document(ruleset))["PutObjectsUnderRulePrefixes"][1]
    assert statements(verifier_policy_document(ruleset)) == {
        "JudgeUploads": (["s3:GetObject", "s3:GetObjectTagging"], prefixes),
        "MarkOrRemoveUploads": (["s3:DeleteObject", "s3:PutObjectTagging"], prefixes),
        "WriteQuarantine": (["s3:PutObject", "s3:PutObjectTagging"], ["arn:aws:s3:::broker-uploads/quarantine/*"]),
    }
    assert findings(verifier_policy_document(ruleset)) == []


@pytest.mark.parametrize("clients, quarantine, expected", [
    pytest.param({"c1": [{"name": "p", "key": "in/{client}/{uuid}"},
                         {"name": "q", "key": "in/{client}/{uuid}", "bucket": "other-bucket"}]}, None,
                 ["arn:aws:s3:::other-bucket/quarantine/*", "arn:aws:s3:::up-bucket/quarantine/*"],
                 id="each-rule-bucket-has-its-quarantine"),
    pytest.param({"c1": [{"name": "p", "key": "in/{client}/{uuid}"}]}, "held/back/",
                 ["arn:aws:s3:::up-bucket/held/back/*"], id="the-rules-quarantine-prefix"),
])
def test_verifier_writes_only_under_the_quarantine_prefix(clients: dict[str, Any], quarantine: str | None,
                                                           expected: list[str]) -> None:
    policy = verifier_policy_document(make_rules(clients, quarantine_prefix=quarantine))
    writes = [s for s in policy["Statement"] if "s3:PutObject" in s["Action"]]
    assert [s["Sid"] for s in writes] == ["WriteQuarantine"]
    assert statements(policy)["WriteQuarantine"][1] == expected
    assert findings(policy) == []


def test_verifier_decrypts_kms_uploads_and_never_encrypts() -> None:
    rules = make_rules({"c1": [{"name": "k", "key": "in/{client}/{uuid}", "multipart": True,
                                "encryption": {"kms_key_id": KEY_ARN}}]})
    policy = verifier_policy_document(rules)
    kms = next(s for s in policy["Statement"] if s["Sid"] == "DecryptUploadsWithKms")
    assert kms["Action"] == ["kms:Decrypt"] and kms["Resource"] == KEY_ARN
    assert kms["Condition"] == {"StringEquals": {"kms:ViaService": "s3.eu-west-1.amazonaws.com"}}
    assert findings(policy) == []


def test_verifier_reads_the_rules_object_when_rules_live_in_s3(ruleset: Any) -> None:
    policy = verifier_policy_document(ruleset, rules_location="s3://ops-config/broker/rules.yaml")
    assert statements(policy)["ReadRulesObject"] == (["s3:GetObject"], ["arn:aws:s3:::ops-config/broker/rules.yaml"])


def test_signer_and_verifier_share_no_write(ruleset: Any) -> None:
    signer = {a for s in policy_document(ruleset)["Statement"] for a in s["Action"]}
    verifier = {a for s in verifier_policy_document(ruleset)["Statement"] for a in s["Action"]}
    assert "s3:GetObject" not in signer and "s3:DeleteObject" not in signer
    assert verifier.isdisjoint({"s3:PutObjectAcl", "s3:AbortMultipartUpload", "s3:ListBucket", "kms:GenerateDataKey"})


def test_verdicts_add_reads_of_the_rule_prefixes_and_the_quarantine_only(ruleset: Any) -> None:
    plain, wider = policy_document(ruleset), policy_document(ruleset, verdicts=True)
    assert "ReadVerdicts" not in statements(plain)
    actions, resources = statements(wider)["ReadVerdicts"]
    assert actions == ["s3:GetObject", "s3:GetObjectTagging"]
    assert "arn:aws:s3:::broker-uploads/quarantine/*" in resources
    assert all(r.startswith("arn:aws:s3:::broker-uploads/") and r.endswith("/*") for r in resources)
    assert "arn:aws:s3:::broker-uploads/*" not in resources
    assert findings(wider) == []


def test_ledger_policies_pass_parliament_and_name_only_the_table() -> None:
    from broker.deploy.iam import LEDGER_ACTIONS, ledger_policy_document

    table = "arn:aws:dynamodb:eu-west-1:111122223333:table/broker-LedgerTable-1A2B3C"
    for role, actions in LEDGER_ACTIONS.items():
        policy = ledger_policy_document(role, table)
        assert findings(policy) == []
        assert statements(policy) == {"UseGrantLedger": (sorted(actions), [table])}
    # the verifier settles: it never records a grant nor lists a scope's
    assert set(LEDGER_ACTIONS["verifier"]) < set(LEDGER_ACTIONS["signer"])
    with pytest.raises(PolicyError, match="roles: signer, verifier"):
        ledger_policy_document("admin", table)
