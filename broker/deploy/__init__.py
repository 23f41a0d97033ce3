"""Deployment helpers generated from the rules (IAM policy, bucket CORS, the SAM template).

``iam``, ``cors`` and ``template`` are pure: rules in, JSON or text out. The ``broker
iam-policy`` and ``broker cors`` commands registered here are their only I/O.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
from typing import Any

IAM_EPILOG = """\
what the signer's policy grants (nothing else):
  s3:PutObject                  on every rule's key prefix, in exactly the buckets named
  s3:PutObjectAcl               only where a rule's acl is not private
  s3:AbortMultipartUpload,
  s3:ListMultipartUploadParts   only where a rule has multipart: true
  kms:GenerateDataKey           only for rules with encryption: {kms_key_id: ...}
                                (+ kms:Decrypt when such a rule is multipart)
  s3:GetObject                  on the rules object, with --rules-location s3://...

with --verifier, the verifier function's policy instead (a role of its own):
  s3:GetObject, s3:GetObjectTagging
                                on every rule's key prefix (HEAD, one ranged GET, the tags)
  s3:PutObjectTagging,
  s3:DeleteObject               on every rule's key prefix (tag verified; remove a rejected
                                object from its key)
  s3:PutObject,
  s3:PutObjectTagging           on each rule bucket's quarantine_prefix only (the copy of a
                                rejected object); it can write nowhere else
  kms:Decrypt                   only for rules with encryption: {kms_key_id: ...}
  s3:GetObject                  on the rules object, with --rules-location s3://...

examples:
  broker iam-policy rules.yaml > signer-policy.json
  broker iam-policy rules.yaml --verifier > verifier-policy.json
  broker iam-policy rules.yaml --rules-location s3://ops-config/broker/rules.yaml
  broker iam-policy rules.yaml --update-template template.yaml    # both policies, and more

Re-run it (and redeploy) after adding a bucket, a client or a key prefix, an ACL other
than private, a KMS key or multipart to the rules: the role can write nothing else.
"""

CORS_EPILOG = """\
examples:
  broker cors rules.yaml > cors.json
  aws s3api put-bucket-cors --bucket broker-uploads --cors-configuration file://cors.json
  broker cors rules.yaml --all          # every bucket the rules write to

Origins come from cors.allowed_origins in the rules; methods and headers from what the
supported clients send (POST forms; PUT/DELETE and signed headers for multipart rules).
"""


def _load(path: str | None) -> Any:
    from broker.config import DEFAULT_RULES, load_rules_file

    return load_rules_file(path or os.environ.get("BROKER_RULES") or DEFAULT_RULES)


def _rules_problem(exc: Any) -> int:
    print(getattr(exc, "message", str(exc)), file=sys.stderr)
    return 2


def cmd_iam_policy(args: argparse.Namespace) -> int:
    """Print the signer's least-privilege IAM policy (or update the template's generated blocks)."""
    from broker.errors import ConfigError
    from broker.deploy.iam import PolicyError, Target, policy_document, verifier_policy_document

    if args.verifier and (args.verify_uploads or args.verdicts):
        print("broker iam-policy: --verify-uploads and --verdicts widen the signer's policy; they mean "
              "nothing with --verifier (whose policy already reads and deletes at the rule prefixes)",
              file=sys.stderr)
        return 2
    try:
        ruleset = _load(args.rules)
        if args.update_template:
            return _update_template(args.update_template, ruleset)
        target = Target(args.partition, args.account_id)
        if args.verifier:
            policy = verifier_policy_document(ruleset, rules_location=args.rules_location, target=target)
        else:
            policy = policy_document(ruleset, rules_location=args.rules_location, target=target,
                                     verify_uploads=args.verify_uploads, verdicts=args.verdicts)
    except (ConfigError, PolicyError) as exc:
        return _rules_problem(exc)
    print(json.dumps(policy, indent=2))
    return 0


def _update_template(path: str, ruleset: Any) -> int:
    from broker.deploy.template import TemplateError, update_template

    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
        new = update_template(text, ruleset)
    except (OSError, TemplateError) as exc:
        print(f"{path}: {exc}", file=sys.stderr)
        return 2
    if new != text:
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(new)
    print(f"{path}: generated blocks {'updated' if new != text else 'already up to date'} "
          f"from {ruleset.source}", file=sys.stderr)
    return 0


def cmd_cors(args: argparse.Namespace) -> int:
    """Print the bucket CORS configuration the rules need, as JSON for the S3 API."""
    from broker.errors import ConfigError
    from broker.deploy.cors import CorsError, all_cors_configurations, cors_configuration

    try:
        ruleset = _load(args.rules)
        doc = all_cors_configurations(ruleset) if args.all else cors_configuration(ruleset, args.bucket)
    except (ConfigError, CorsError) as exc:
        return _rules_problem(exc)
    print(json.dumps(doc, indent=2))
    return 0


def register_cli(sub: Any) -> None:
    """Add the deployment sub-commands to the ``broker`` command."""
    raw = argparse.RawDescriptionHelpFormatter
    p = sub.add_parser(
        "iam-policy", help="print the signer's (or the verifier's) least-privilege IAM policy (JSON)",
        formatter_class=raw, epilog=IAM_EPILOG,
        description=textwrap.fill(
            "Derive the least-privilege IAM policy the broker's signing role needs from the "
            "rules: exactly the actions its forms can perform, on exactly the key prefixes the "
            "key templates produce. With --verifier, the policy of the verifier function's role "
            "instead: read, tag and delete at those prefixes, write only to the quarantine prefix.", 88))
    p.add_argument("rules", nargs="?", help="rules file (default: $BROKER_RULES or the bundled rules.yaml)")
    p.add_argument("--rules-location", metavar="s3://BUCKET/KEY",
                   help="also allow reading the rules from this S3 object (BROKER_RULES in Lambda)")
    p.add_argument("--account-id", help="AWS account of KMS keys named by id or alias in the rules")
    p.add_argument("--verifier", action="store_true",
                   help="print the verifier function's policy (lambda_handler.verify_handler, "
                        "triggered by the bucket's ObjectCreated events) instead of the signer's")
    p.add_argument("--verdicts", action="store_true",
                   help="also allow s3:GetObject and s3:GetObjectTagging under the rule prefixes and the "
                        "quarantine, for GET /uploads/verdict (clients asking what the verifier found)")
    p.add_argument("--verify-uploads", action="store_true",
                   help="also allow s3:GetObject and s3:DeleteObject under the rule prefixes, for "
                        "Fine Uploader's upload-success check (a broker with long-lived keys only: "
                        "Fine Uploader signing is refused on temporary credentials)")
    p.add_argument("--partition", default="aws", help="ARN partition (default: aws; aws-cn, aws-us-gov)")
    p.add_argument("--update-template", metavar="TEMPLATE",
                   help="instead of printing, rewrite the generated blocks of this SAM template "
                        "(both policies, bucket CORS, notifications to the verifier, the "
                        "quarantine lifecycle rule, parameter defaults) from the rules")
    p.set_defaults(func=cmd_iam_policy)

    p = sub.add_parser(
        "cors", help="print the upload bucket's CORS configuration (JSON for put-bucket-cors)",
        formatter_class=raw, epilog=CORS_EPILOG,
        description=textwrap.fill(
            "Derive the bucket CORS configuration from the rules: their allowed origins, "
            "exposing ETag and Location, allowing only the methods and headers the supported "
            "upload clients send.", 88))
    p.add_argument("rules", nargs="?", help="rules file (default: $BROKER_RULES or the bundled rules.yaml)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--bucket", help="the bucket (default: the rules' default bucket)")
    group.add_argument("--all", action="store_true", help="print {bucket: configuration} for every bucket")
    p.set_defaults(func=cmd_cors)
