"""The botocore clients the broker talks to S3 with, made once per process and passed in."""
from __future__ import annotations

from datetime import datetime
from typing import Any, Callable

from broker.config.settings import Settings


def make_s3_client(settings: Settings, region: str) -> Any:
    """A botocore S3 client that signs with SigV4 (boto3 defaults to V2 for POST in us-east-1).

    botocore, not boto3: the request path needs no boto3 resources or s3transfer, and
    importing them costs about a tenth of a second at every cold start. The client is the
    same class boto3 would return, minus boto3's file-transfer helpers.
    """
    import botocore.session
    from botocore.config import Config

    config = Config(
        signature_version="s3v4",
        s3={"addressing_style": settings.s3_addressing_style},
        retries={"max_attempts": 3, "mode": "standard"},
        connect_timeout=2,
        read_timeout=5,
    )
    return botocore.session.Session().create_client(
        "s3", region_name=settings.region or region, endpoint_url=settings.s3_endpoint_url,
        config=config,
    )


def local_client(endpoint_url: str, access_key: str, secret_key: str, *, region: str = "us-east-1",
                 **config: Any) -> Any:
    """A boto3 S3 client for a local store: SigV4, path-style addressing; ``config`` goes to botocore's Config."""
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3", endpoint_url=endpoint_url, aws_access_key_id=access_key, aws_secret_access_key=secret_key,
        region_name=region, config=Config(signature_version="s3v4", s3={"addressing_style": "path"}, **config),
    )


def credentials_expiry(s3_client: Any) -> Callable[[], datetime | None]:
    """A function returning when the client's credentials expire (None: long-lived or unknown)."""

    def expiry() -> datetime | None:
        creds = getattr(getattr(s3_client, "_request_signer", None), "_credentials", None)
        value = getattr(creds, "_expiry_time", None)  # set on refreshable (temporary) credentials
        return value if isinstance(value, datetime) else None

    return expiry


def preload() -> None:
    """Import botocore's session now (``lambda_handler`` calls this first: see the note there)."""
    import botocore.session  # noqa: F401
