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


def dynamodb_client(region: str | None = None, endpoint_url: str | None = None, *,
                    max_attempts: int = 3, connect_timeout: float = 1, read_timeout: float = 3) -> Any:
    """A botocore DynamoDB client for the grant ledger (:mod:`broker.ledger.dynamodb`).

    Standard retries and short timeouts, so an unreachable table fails a request in seconds
    instead of hanging it (a ledger call takes milliseconds). With ``endpoint_url`` (a local
    server) and no region configured anywhere, the region is ``us-east-1``.
    """
    import botocore.session

    return _dynamodb_client(botocore.session.Session(), region, endpoint_url, max_attempts=max_attempts,
                            connect_timeout=connect_timeout, read_timeout=read_timeout)


def dynamodb_clients(region: str | None = None, endpoint_url: str | None = None) -> tuple[Any, Any]:
    """Two DynamoDB clients for the ledger: one that retries, and its twin that never resends.

    botocore resends a request whose answer was lost (a read timeout, a 500); for an ``ADD``
    that may count twice. Counted twice up is an over-count (safe); counted twice down would be
    an under-count, so the ledger sends its decrements through the twin. Both come from one
    botocore session: the second costs about 15 ms, not the first's 150.
    """
    import botocore.session

    session = botocore.session.Session()
    return (_dynamodb_client(session, region, endpoint_url, max_attempts=3),
            _dynamodb_client(session, region, endpoint_url, max_attempts=1))


def _dynamodb_client(session: Any, region: str | None, endpoint_url: str | None, *, max_attempts: int,
                     connect_timeout: float = 1, read_timeout: float = 3) -> Any:
    from botocore.config import Config

    if region is None and endpoint_url is not None and session.get_config_variable("region") is None:
        region = "us-east-1"
    config = Config(retries={"total_max_attempts": max_attempts, "mode": "standard"},  # the first send included
                    connect_timeout=connect_timeout, read_timeout=read_timeout, max_pool_connections=32)
    return session.create_client("dynamodb", region_name=region, endpoint_url=endpoint_url, config=config)


def sdk_errors() -> tuple[type[Exception], type[Exception]]:
    """botocore's two error roots, for callers outside this package that may not import botocore:
    ``(ClientError, BotoCoreError)``: the service answered with an error; no usable answer came."""
    from botocore.exceptions import BotoCoreError, ClientError

    return ClientError, BotoCoreError


def error_code(exc: BaseException) -> str:
    """The service's error code of a botocore ``ClientError`` (``''`` for anything else)."""
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


def error_message(exc: BaseException) -> str:
    """The service's own message of a ``ClientError``, else the exception's text (never a secret)."""
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Message", "") or exc)


#: Error codes with which a service refused a request before doing anything (send it again).
_THROTTLED = frozenset({"ProvisionedThroughputExceededException", "ThrottlingException", "Throttling",
                        "RequestLimitExceeded", "TooManyRequestsException"})


def never_applied(exc: BaseException) -> bool:
    """Did the request certainly do nothing (throttled, or no connection was made)? Then it may
    be sent again even when it is not idempotent; after a lost answer it may not."""
    from botocore.exceptions import ConnectTimeoutError, EndpointConnectionError

    if isinstance(exc, (EndpointConnectionError, ConnectTimeoutError)):
        return True
    return error_code(exc) in _THROTTLED
