"""Keep the generated parts of ``template.yaml`` in step with the rules. Pure.

``template.yaml`` is written by hand except for a few blocks between marker comments::

    # BEGIN GENERATED signer-policy
    ...
    # END GENERATED signer-policy

:func:`update_template` replaces each block with what the rules produce (the signer's and
the verifier's IAM policies, the bucket's and the API's CORS origins, the bucket's
notifications to the verifier, the quarantine's lifecycle rule, the bucket name), keeping
everything else, comments included. A test checks that the committed template is what
``rules.yaml`` produces.

The rules' ``cors.allowed_origins`` are the one source of the origins: they are written into
the bucket's CORS rule and the HTTP API's CORS configuration (API Gateway answers CORS itself
and replaces the function's CORS headers), and no stack parameter can override them.
"""
from __future__ import annotations

import json
import re
from typing import Any, Callable

from broker.core.keys import rule_prefix
from broker.models import RuleSet
from broker.deploy.cors import cors_rule
from broker.deploy.iam import Target, merge_prefixes, policy_document, verifier_policy_document

#: ARNs in the template use the stack's partition and account, resolved by CloudFormation.
STACK_TARGET = Target(partition="${AWS::Partition}", account_id="${AWS::AccountId}")
_BEGIN = re.compile(r"^(?P<indent>[ ]*)# BEGIN GENERATED (?P<name>[a-z-]+)\b.*$")


class TemplateError(ValueError):
    """The template lacks a marker, or the rules cannot fill a block."""


def _sub(value: Any) -> Any:
    """Wrap strings that use ``${AWS::...}`` in ``Fn::Sub`` (IAM's own ``${*}`` escaped as ``${!*}``)."""
    if isinstance(value, dict):
        return {k: _sub(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_sub(v) for v in value]
    if isinstance(value, str) and "${AWS::" in value:
        for ch in "*?$":
            value = value.replace("${" + ch + "}", "${!" + ch + "}")
        return {"Fn::Sub": value}
    return value


def _json_block(key: str, value: Any) -> list[str]:
    text = json.dumps(value, indent=2)
    return [f"{key}:"] + ["  " + line for line in text.splitlines()]


def signer_policy_block(ruleset: RuleSet) -> list[str]:
    """``PolicyDocument:`` with the generated policy, ARNs resolved per stack."""
    return _json_block("PolicyDocument", _sub(policy_document(ruleset, target=STACK_TARGET)))


def verifier_policy_block(ruleset: RuleSet) -> list[str]:
    """``PolicyDocument:`` for the verifier's role (rules object: ``RulesReadPolicy``, conditional)."""
    return _json_block("PolicyDocument", _sub(verifier_policy_document(ruleset, target=STACK_TARGET)))


def notification_prefixes(ruleset: RuleSet) -> list[str]:
    """The key prefixes of the upload bucket whose new objects the verifier must judge."""
    return merge_prefixes(rule_prefix(rule) for client in ruleset.clients.values()
                          for rule in client.rules.values() if rule.bucket == ruleset.bucket)


def bucket_notifications_block(ruleset: RuleSet) -> list[str]:
    """``LambdaConfigurations:``: every ``s3:ObjectCreated:*`` under a rule prefix invokes the verifier.

    One configuration per prefix (S3 refuses overlapping ones; merged prefixes never overlap),
    so the verifier hears nothing it may not read, and not its own copies into quarantine.
    """
    configs = []
    for prefix in notification_prefixes(ruleset):
        config: dict[str, Any] = {"Event": "s3:ObjectCreated:*",
                                  "Function": {"Fn::GetAtt": ["VerifierFunction", "Arn"]}}
        if prefix:
            config["Filter"] = {"S3Key": {"Rules": [{"Name": "prefix", "Value": prefix}]}}
        configs.append(config)
    # one configuration a line: a prefix per line reads (and diffs) better than nested JSON
    return ["LambdaConfigurations:"] + [f"  - {json.dumps(config)}" for config in configs] \
        if configs else ["LambdaConfigurations: []"]


def quarantine_lifecycle_block(ruleset: RuleSet) -> list[str]:
    """The lifecycle rule expiring the quarantine prefix after ``QuarantineRetentionDays``."""
    return ["- Id: expire-quarantine",
            "  Status: Enabled",
            f"  Prefix: {json.dumps(ruleset.quarantine_prefix)}",
            "  ExpirationInDays: !Ref QuarantineRetentionDays"]


def bucket_cors_block(ruleset: RuleSet) -> list[str]:
    """``CorsRules:`` for the upload bucket, the rules' origins included."""
    rule = cors_rule(ruleset, ruleset.bucket)
    # CloudFormation spells two keys differently from the S3 API.
    cfn_names = {"ExposeHeaders": "ExposedHeaders", "MaxAgeSeconds": "MaxAge", "ID": "Id"}
    return _json_block("CorsRules", [{cfn_names.get(k, k): v for k, v in rule.items()}])


def bucket_default_block(ruleset: RuleSet) -> list[str]:
    """The ``UploadBucketName`` parameter's default: the rules' default bucket."""
    return [f"Default: {ruleset.bucket}"]


def bucket_assertion_block(ruleset: RuleSet) -> list[str]:
    """A CloudFormation rule refusing a bucket name other than the one the rules sign for."""
    return [f"- Assert: !Equals [!Ref UploadBucketName, {ruleset.bucket}]",
            f"  AssertDescription: UploadBucketName must be {ruleset.bucket}, the bucket rules.yaml "
            "signs for; change bucket in rules.yaml and run make package to use another"]


def api_origins_block(ruleset: RuleSet) -> list[str]:
    """``AllowOrigins:`` of the HTTP API's CORS configuration: the rules' origins."""
    cors_rule(ruleset, ruleset.bucket)  # the same refusal as the bucket's when the rules list none
    return [f"AllowOrigins: {json.dumps(list(ruleset.cors_origins))}"]


BLOCKS: dict[str, Callable[[RuleSet], list[str]]] = {
    "signer-policy": signer_policy_block,
    "verifier-policy": verifier_policy_block,
    "bucket-notifications": bucket_notifications_block,
    "quarantine-lifecycle": quarantine_lifecycle_block,
    "bucket-cors": bucket_cors_block,
    "bucket-default": bucket_default_block,
    "bucket-assertion": bucket_assertion_block,
    "api-origins": api_origins_block,
}


#: The only canned ACL a bucket with ACLs disabled (the stack's, ``BucketOwnerEnforced``) accepts.
ACL_ON_OWNER_ENFORCED = "bucket-owner-full-control"


def acl_refusals(ruleset: RuleSet) -> list[str]:
    """Why S3 would refuse the uploads of rules for the stack's bucket, whose ACLs are disabled.

    Such a bucket answers ``400 AccessControlListNotSupported`` to any ACL but
    ``bucket-owner-full-control``; a rule without ``acl`` signs none.
    """
    return [f"{rule.path}.acl: '{rule.acl}' on bucket '{rule.bucket}', whose ACLs are disabled "
            f"(BucketOwnerEnforced): S3 would refuse every upload; remove acl from the rule "
            f"(and from defaults), or use {ACL_ON_OWNER_ENFORCED}"
            for client in ruleset.clients.values() for rule in client.rules.values()
            if rule.bucket == ruleset.bucket and rule.acl not in (None, ACL_ON_OWNER_ENFORCED)]


def update_template(text: str, ruleset: RuleSet) -> str:
    """``text`` with every generated block re-rendered from ``ruleset``; raises ``TemplateError``."""
    refusals = acl_refusals(ruleset)
    if refusals:
        raise TemplateError("the rules set ACLs the stack's bucket refuses:\n  " + "\n  ".join(refusals))
    lines = text.splitlines()
    out: list[str] = []
    seen: set[str] = set()
    i = 0
    while i < len(lines):
        line = lines[i]
        out.append(line)
        i += 1
        match = _BEGIN.match(line)
        if not match:
            continue
        name, indent = match["name"], match["indent"]
        if name not in BLOCKS:
            raise TemplateError(f"unknown generated block '{name}' (known: {', '.join(BLOCKS)})")
        end = f"{indent}# END GENERATED {name}"
        try:
            stop = next(j for j in range(i, len(lines)) if lines[j].rstrip() == end)
        except StopIteration:
            raise TemplateError(f"'# BEGIN GENERATED {name}' has no matching '{end.strip()}' "
                                "at the same indentation") from None
        out.extend(indent + content for content in BLOCKS[name](ruleset))
        out.append(lines[stop])
        seen.add(name)
        i = stop + 1
    missing = set(BLOCKS) - seen
    if missing:
        raise TemplateError(f"the template has no generated block(s): {', '.join(sorted(missing))}")
    return "\n".join(out) + "\n"


def set_code_uri(text: str, code_uri: str) -> str:
    """The template with the function's ``CodeUri`` pointing at ``code_uri``."""
    new, n = re.subn(r"(?m)^(\s+CodeUri:\s*).*$", lambda m: m.group(1) + code_uri, text)
    if n != 1:
        raise TemplateError(f"expected exactly one CodeUri in the template, found {n}")
    return new
