"""Grant -> presigned POST form, signed by boto3/botocore's own SigV4 implementation.

This is the only module on the request path that imports boto3. The client is created
once per process (``make_s3_client``) and passed in, so tests can hand in a moto-backed
or stubbed client.
"""
from __future__ import annotations

import base64
import json
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

from .config import Settings
from .errors import ServiceUnavailable
from .models import Grant, SignedPost

#: Never sign a policy that outlives the signing credentials by less than this margin.
CREDENTIAL_MARGIN = timedelta(seconds=30)
# Fields the audit log must never see the value of.
SECRET_CONDITION_FIELDS = frozenset({"x-amz-security-token", "x-amz-credential"})


def make_s3_client(settings: Settings, region: str) -> Any:
    """A boto3 S3 client that signs with SigV4 (boto3 defaults to V2 for POST in us-east-1)."""
    import boto3
    from botocore.config import Config

    config = Config(
        signature_version="s3v4",
        s3={"addressing_style": settings.s3_addressing_style},
        retries={"max_attempts": 3, "mode": "standard"},
        connect_timeout=2,
        read_timeout=5,
    )
    return boto3.session.Session().client(
        "s3", region_name=settings.region or region, endpoint_url=settings.s3_endpoint_url,
        config=config,
    )


def credentials_expiry(s3_client: Any) -> Callable[[], datetime | None]:
    """A function returning when the client's credentials expire (None: long-lived or unknown)."""

    def expiry() -> datetime | None:
        creds = getattr(s3_client._request_signer, "_credentials", None)
        value = getattr(creds, "_expiry_time", None)  # set on refreshable (temporary) credentials
        return value if isinstance(value, datetime) else None

    return expiry


class Signer:
    """Signs grants into presigned POST forms with one long-lived boto3 client."""

    def __init__(self, s3_client: Any, *,
                 credentials_expiry: Callable[[], datetime | None] | None = None) -> None:
        self._client = s3_client
        self._expiry = credentials_expiry or (lambda: None)

    def expires_in(self, grant: Grant, now: datetime) -> int:
        """The grant's lifetime, cut short so it never outlives the signing credentials."""
        seconds = grant.expires_in
        expiry = self._expiry()
        if expiry is not None:
            left = int((expiry - CREDENTIAL_MARGIN - now).total_seconds())
            if left < 1:
                raise ServiceUnavailable(
                    "the broker's signing credentials are about to expire; retry in a moment")
            seconds = min(seconds, left)
        return seconds

    def sign(self, grant: Grant, *, now: datetime) -> SignedPost:
        """Presign a POST whose policy binds the exact key, bucket, size range and every field."""
        post = self._client.generate_presigned_post(
            Bucket=grant.bucket,
            Key=grant.key,
            Fields=dict(grant.fields),
            Conditions=grant.conditions(),
            ExpiresIn=self.expires_in(grant, now),
        )
        policy = decode_policy(post["fields"]["policy"])
        expires_at = datetime.strptime(policy["expiration"], "%Y-%m-%dT%H:%M:%SZ").replace(
            tzinfo=timezone.utc)
        return SignedPost(post["url"], post["fields"], expires_at, tuple(policy["conditions"]))


def decode_policy(policy_b64: str) -> dict[str, Any]:
    """The JSON policy document inside a presigned POST's ``policy`` field."""
    return json.loads(base64.b64decode(policy_b64))


def public_conditions(conditions: tuple[Any, ...] | list[Any]) -> list[Any]:
    """Policy conditions safe to log: without the credential scope or session token."""
    out = []
    for cond in conditions:
        if isinstance(cond, dict) and SECRET_CONDITION_FIELDS.intersection(k.lower() for k in cond):
            continue
        out.append(cond)
    return out
