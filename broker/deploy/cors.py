"""The upload bucket's CORS configuration, derived from the rules. Pure.

What the supported clients send straight to the bucket (measured from their bundles):

- every single-request upload (the broker's page, Uppy AwsS3, Fine Uploader simple uploads)
  is a ``POST`` of ``multipart/form-data`` with no custom header: no preflight header needs
  allowing, only the origin and the method;
- Uppy's multipart parts are ``PUT`` to presigned URLs (the browser adds ``Content-Type``);
- Fine Uploader's chunked uploads sign their own REST calls: ``POST`` (initiate, complete),
  ``PUT`` (parts) and ``DELETE`` (abort) with ``Authorization``, ``x-amz-date``,
  ``x-amz-content-sha256``, the session token, ``x-amz-acl``, ``x-amz-meta-*`` and the
  encryption and storage-class headers its rule sets.

Every rule exposes ``ETag`` and ``Location``: without ``ETag`` Uppy never reports completion
and Fine Uploader's chunked uploads fail.
"""
from __future__ import annotations

from typing import Any

from broker.models import Rule, RuleSet

EXPOSE_HEADERS = ("ETag", "Location")
MAX_AGE_SECONDS = 3000
#: Headers a browser sends to the bucket itself during a multipart (chunked) upload.
MULTIPART_HEADERS = ("authorization", "content-type", "x-amz-acl", "x-amz-content-sha256",
                     "x-amz-date", "x-amz-meta-*", "x-amz-security-token")


class CorsError(ValueError):
    """The rules cannot produce a usable CORS configuration."""


def _multipart_headers(rule: Rule) -> set[str]:
    headers = set(MULTIPART_HEADERS)
    if rule.encryption is not None:
        headers.add("x-amz-server-side-encryption")
        if rule.encryption.kms_key_id:
            headers.add("x-amz-server-side-encryption-aws-kms-key-id")
    if rule.storage_class:
        headers.add("x-amz-storage-class")
    if rule.cache_control:  # Fine Uploader sends these object headers on its initiate request
        headers.add("cache-control")
    if rule.content_disposition:
        headers.add("content-disposition")
    return headers


def cors_rule(ruleset: RuleSet, bucket: str) -> dict[str, Any]:
    """The one CORS rule for ``bucket``: the rules' origins, the methods and headers its rules need."""
    if not ruleset.cors_origins:
        raise CorsError("rules.yaml lists no cors.allowed_origins, so no browser page could upload; "
                        "add the origin of each page that uploads (e.g. https://app.example.com)")
    rules = [r for c in ruleset.clients.values() for r in c.rules.values() if r.bucket == bucket]
    if not rules:
        raise CorsError(f"no rule writes to bucket '{bucket}'; buckets in the rules: "
                        f"{', '.join(sorted(ruleset.buckets()))}")
    methods = {"POST"}
    headers: set[str] = set()
    for rule in rules:
        if rule.multipart:
            methods |= {"PUT", "DELETE"}
            headers |= _multipart_headers(rule)
    out: dict[str, Any] = {
        "ID": "upload-broker",
        "AllowedOrigins": list(ruleset.cors_origins),
        "AllowedMethods": sorted(methods),
    }
    if headers:
        out["AllowedHeaders"] = sorted(headers)
    out["ExposeHeaders"] = list(EXPOSE_HEADERS)
    out["MaxAgeSeconds"] = MAX_AGE_SECONDS
    return out


def cors_configuration(ruleset: RuleSet, bucket: str | None = None) -> dict[str, Any]:
    """``{"CORSRules": [...]}`` for ``put-bucket-cors`` (default: the rules' default bucket)."""
    return {"CORSRules": [cors_rule(ruleset, bucket or ruleset.bucket)]}


def all_cors_configurations(ruleset: RuleSet) -> dict[str, dict[str, Any]]:
    """The CORS configuration of every bucket the rules write to, by bucket name."""
    return {bucket: cors_configuration(ruleset, bucket) for bucket in sorted(ruleset.buckets())}
