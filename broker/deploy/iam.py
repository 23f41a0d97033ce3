"""The signer's least-privilege IAM policy, derived from the rules. Pure.

A presigned POST is checked by S3 against the permissions of whoever signed it, so the
broker's role needs exactly what the forms it signs can do, and nothing else:

=============================  ===================================================
action                          granted on / when
=============================  ===================================================
``s3:PutObject``                every rule's key prefix (``bucket/prefix*``)
``s3:PutObjectAcl``             prefixes of rules with an ``acl`` other than ``private``
``s3:PutObjectTagging``         prefixes of rules that set tags (no rule can yet)
``s3:AbortMultipartUpload``,    prefixes of rules with ``multipart: true``
``s3:ListMultipartUploadParts``
``kms:GenerateDataKey``         KMS keys of rules with ``encryption: {kms_key_id}``
``kms:Decrypt``                 those keys, only for multipart rules (S3 needs it to
                                assemble the parts)
``s3:GetObject``                the one rules object, when rules live in S3
``s3:GetObject``,               every rule's prefix, only with ``verify_uploads``: the
``s3:DeleteObject``             Fine Uploader upload-success check reads the stored
                                object and deletes one that breaks its rule
``s3:GetObject``,               every rule's prefix and the quarantine, only with
``s3:GetObjectTagging``         ``verdicts``: ``GET /uploads/verdict`` reads the verdict
=============================  ===================================================

A prefix is everything in the key template before the first per-request placeholder;
a prefix already covered by a shorter one in the same bucket is dropped.

The verifier (a second function, triggered by the bucket's ``s3:ObjectCreated:*`` events) has
a role of its own, :func:`verifier_policy_document`; neither role holds the other's rights:

=============================  ===================================================
action                          granted on / when
=============================  ===================================================
``s3:GetObject``,               every rule's prefix: HEAD and one ranged GET of the
``s3:GetObjectTagging``         object, and its tags (already judged?)
``s3:PutObjectTagging``,        every rule's prefix: tag ``broker-verdict=verified``;
``s3:DeleteObject``             remove a rejected object from its granted key
``s3:PutObject``,               each rule bucket's quarantine prefix only: the
``s3:PutObjectTagging``         rejected object's copy (CopyObject) and its tags
``kms:Decrypt``                 KMS keys of rules with ``encryption: {kms_key_id}``,
                                only via S3 (reading the first bytes decrypts)
``s3:GetObject``                the one rules object, when rules live in S3
=============================  ===================================================
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from broker.core import keys
from broker.models import Rule, RuleSet

POLICY_VERSION = "2012-10-17"
# Rule fields that make S3 ask for more than s3:PutObject.
_TAGGING_FIELDS = ("tagging", "tags")
_KEY_ID = re.compile(r"^([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|mrk-[0-9a-f]{32})$")


class PolicyError(ValueError):
    """The rules name something the policy cannot express without more information."""


@dataclass(frozen=True)
class Target:
    """Where ARNs point: the partition, and the account for KMS keys given by id or alias."""

    partition: str = "aws"
    account_id: str | None = None


def escape_arn(text: str) -> str:
    """Escape IAM wildcard characters so a literal ``*``/``?`` in a prefix stays literal."""
    return text.replace("$", "${$}").replace("*", "${*}").replace("?", "${?}")


def merge_prefixes(prefixes: Iterable[str]) -> list[str]:
    """Sorted prefixes without those already covered by a shorter one (``a/`` covers ``a/b/``)."""
    kept: list[str] = []
    for prefix in sorted(set(prefixes)):
        if not kept or not prefix.startswith(kept[-1]):
            kept.append(prefix)
    return kept


def object_arns(pairs: Iterable[tuple[str, str]], target: Target) -> list[str]:
    """``arn:...:s3:::bucket/prefix*`` for each (bucket, prefix), merged per bucket."""
    by_bucket: dict[str, list[str]] = {}
    for bucket, prefix in pairs:
        by_bucket.setdefault(bucket, []).append(prefix)
    return [f"arn:{target.partition}:s3:::{bucket}/{escape_arn(prefix)}*"
            for bucket in sorted(by_bucket) for prefix in merge_prefixes(by_bucket[bucket])]


def _rules(ruleset: RuleSet) -> list[Rule]:
    return [rule for client in ruleset.clients.values() for rule in client.rules.values()]


def _where(rule: Rule) -> tuple[str, str]:
    return rule.bucket, keys.rule_prefix(rule)


def _uses_tagging(rule: Rule) -> bool:
    return any(getattr(rule, name, None) for name in _TAGGING_FIELDS)


def kms_key_arn(rule: Rule, target: Target) -> tuple[str, str | None]:
    """The key ARN a rule's ``kms_key_id`` names, and its alias when it was given as one."""
    assert rule.encryption is not None and rule.encryption.kms_key_id is not None
    key_id = rule.encryption.kms_key_id
    if key_id.startswith("arn:"):
        parts = key_id.split(":", 5)
        if len(parts) == 6 and parts[5].startswith("alias/"):
            return ":".join(parts[:5] + ["key/*"]), parts[5]
        return key_id, None
    if target.account_id is None:
        raise PolicyError(
            f"rule '{rule.name}' of client '{rule.client}' names KMS key {key_id!r} without its "
            "account; write the key ARN in rules.yaml, or pass --account-id (the key's region is "
            f"the rules' region, {rule.region})")
    prefix = f"arn:{target.partition}:kms:{rule.region}:{target.account_id}"
    if key_id.startswith("alias/"):
        return f"{prefix}:key/*", key_id
    if not _KEY_ID.match(key_id):
        raise PolicyError(f"rule '{rule.name}' of client '{rule.client}': kms_key_id {key_id!r} is "
                          "neither a key ARN, a key id nor alias/NAME")
    return f"{prefix}:key/{key_id}", None


def _statement(sid: str, actions: list[str], resources: list[str],
               condition: Mapping[str, Any] | None = None) -> dict[str, Any]:
    stmt: dict[str, Any] = {"Sid": sid, "Effect": "Allow", "Action": sorted(actions),
                            "Resource": resources if len(resources) > 1 else resources[0]}
    if condition:
        stmt["Condition"] = dict(condition)
    return stmt


def _kms_statements(rules: list[Rule], target: Target, *, reader: bool = False) -> list[dict[str, Any]]:
    """GenerateDataKey (and Decrypt for multipart) on each key, only via S3 in its region.

    A ``reader`` (the verifier) needs only ``kms:Decrypt``: it reads, and copies into a
    quarantine prefix the bucket's default encryption covers.
    """
    grouped: dict[tuple[str, str | None, str, bool], None] = {}
    for rule in rules:
        if rule.encryption is None or rule.encryption.kms_key_id is None:
            continue
        arn, alias = kms_key_arn(rule, target)
        grouped[(arn, alias, rule.region, rule.multipart)] = None
    statements = []
    by_shape: dict[tuple[tuple[str, ...], str | None, str], list[str]] = {}
    for arn, alias, region, multipart in grouped:
        actions = ("kms:Decrypt",) if reader else \
            ("kms:Decrypt", "kms:GenerateDataKey") if multipart else ("kms:GenerateDataKey",)
        by_shape.setdefault((actions, alias, region), []).append(arn)
    for n, ((actions, alias, region), arns) in enumerate(sorted(by_shape.items(), key=str)):
        condition: dict[str, Any] = {"StringEquals": {"kms:ViaService": f"s3.{region}.amazonaws.com"}}
        if alias:
            condition["ForAnyValue:StringEquals"] = {"kms:ResourceAliases": alias}
        sid = "DecryptUploadsWithKms" if reader else "EncryptUploadsWithKms"
        statements.append(_statement(f"{sid}{n + 1}" if len(by_shape) > 1 else sid, list(actions),
                                     sorted(set(arns)), condition))
    return statements


def policy_document(ruleset: RuleSet, *, rules_location: str | None = None,
                    target: Target = Target(), verify_uploads: bool = False,
                    verdicts: bool = False) -> dict[str, Any]:
    """The IAM policy document the broker's signing role needs for ``ruleset``.

    ``verdicts``: also read objects and their tags at the rule prefixes and in the quarantine,
    for ``GET /uploads/verdict`` (a client asking what the verifier found).
    """
    rules = _rules(ruleset)
    needs: list[tuple[str, list[str], list[Rule]]] = [
        ("VerifyAndRemoveRefusedUploads", ["s3:DeleteObject", "s3:GetObject"],
         rules if verify_uploads else []),
        ("PutObjectsUnderRulePrefixes", ["s3:PutObject"], rules),
        ("SetNonPrivateAcls", ["s3:PutObjectAcl"], [r for r in rules if r.acl not in (None, "private")]),
        ("TagUploads", ["s3:PutObjectTagging"], [r for r in rules if _uses_tagging(r)]),
        ("ManageMultipartUploads", ["s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"],
         [r for r in rules if r.multipart]),
    ]
    statements = [_statement(sid, actions, object_arns(map(_where, chosen), target))
                  for sid, actions, chosen in needs if chosen]
    if verdicts and rules:
        statements.append(_statement("ReadVerdicts", ["s3:GetObject", "s3:GetObjectTagging"],
                                     sorted({*object_arns(map(_where, rules), target),
                                             *quarantine_arns(ruleset, target)})))
    statements.extend(_kms_statements(rules, target))
    statements.extend(_rules_object_statements(rules_location, target))
    return {"Version": POLICY_VERSION, "Statement": statements}


def _rules_object_statements(rules_location: str | None, target: Target) -> list[dict[str, Any]]:
    if not rules_location:
        return []
    from broker.config.sources import parse_s3_url

    bucket, key = parse_s3_url(rules_location)
    return [_statement("ReadRulesObject", ["s3:GetObject"],
                       [f"arn:{target.partition}:s3:::{bucket}/{escape_arn(key)}"])]


def quarantine_arns(ruleset: RuleSet, target: Target) -> list[str]:
    """``arn:...:s3:::bucket/<quarantine_prefix>*`` for every bucket a rule writes to."""
    return object_arns(((rule.bucket, ruleset.quarantine_prefix) for rule in _rules(ruleset)), target)


def verifier_policy_document(ruleset: RuleSet, *, rules_location: str | None = None,
                             target: Target = Target()) -> dict[str, Any]:
    """The IAM policy document the verifier's role needs for ``ruleset`` (see the module's table).

    Nothing lets it write outside the quarantine prefix: at a rule's prefix it may only tag or
    delete what is there. CopyObject needs ``s3:GetObject`` on the source (granted at the rule
    prefixes) and ``s3:PutObject`` (+ ``s3:PutObjectTagging`` for the copy's tags) on the
    destination, the quarantine prefix. There is no ``s3:ListBucket``: without it S3 answers
    403, not 404, for an object that is gone, so a late duplicate event for an object already
    quarantined is retried and then dropped (see docs/DEPLOY.md).
    """
    rules = _rules(ruleset)
    where = object_arns(map(_where, rules), target)
    statements = [
        _statement("JudgeUploads", ["s3:GetObject", "s3:GetObjectTagging"], where),
        _statement("MarkOrRemoveUploads", ["s3:DeleteObject", "s3:PutObjectTagging"], where),
        _statement("WriteQuarantine", ["s3:PutObject", "s3:PutObjectTagging"], quarantine_arns(ruleset, target)),
    ] if rules else []
    statements.extend(_kms_statements(rules, target, reader=True))
    statements.extend(_rules_object_statements(rules_location, target))
    return {"Version": POLICY_VERSION, "Statement": statements}


#: The DynamoDB actions each function uses on the grant ledger's table (``LedgerTable``, read
#: and written by :mod:`broker.ledger.dynamodb`), and no others. The signer reserves grants
#: (Query: a scope's expired grants; UpdateItem: counters and releases; GetItem: the usage a
#: refusal reports, ``GET /uploads/{grant_id}``; BatchWriteItem: finders; PutItem: the grant) and
#: counts denials (UpdateItem). The verifier reads and settles grants (GetItem, UpdateItem,
#: BatchWriteItem). The reports and ``broker reconcile --release-expired`` (Scan, Query) run
#: with an operator's credentials, never a function's.
LEDGER_ACTIONS: dict[str, tuple[str, ...]] = {
    "signer": ("dynamodb:BatchWriteItem", "dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:Query",
               "dynamodb:UpdateItem"),
    "verifier": ("dynamodb:BatchWriteItem", "dynamodb:GetItem", "dynamodb:UpdateItem"),
}


def ledger_policy_document(role: str, table_arn: Any) -> dict[str, Any]:
    """The policy letting ``role`` (``signer`` or ``verifier``) use the ledger table ``table_arn``
    (an ARN, or a CloudFormation ``Fn::GetAtt``), with exactly :data:`LEDGER_ACTIONS`."""
    if role not in LEDGER_ACTIONS:
        raise PolicyError(f"no ledger policy for role {role!r} (roles: {', '.join(LEDGER_ACTIONS)})")
    return {"Version": POLICY_VERSION,
            "Statement": [_statement("UseGrantLedger", list(LEDGER_ACTIONS[role]), [table_arn])]}
