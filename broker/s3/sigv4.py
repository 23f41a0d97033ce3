"""Sign checked Fine Uploader requests with the store client's own credentials, via botocore.

Nothing here decides anything: :mod:`broker.protocols.fineuploader.policy` and
:mod:`broker.protocols.fineuploader.canonical` have checked the request first. The crypto is botocore's: :class:`botocore.auth.S3SigV4Auth` derives the
signing key and signs (``signature``), and for REST calls it also builds the canonical
request and string to sign from an :class:`~botocore.awsrequest.AWSRequest` the broker
assembles from the checked parts, so the URL is the store's real one (path-style for
SeaweedFS and other local stores, virtual-hosted for AWS) whatever the browser computed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from broker.errors import ServiceUnavailable


@dataclass(frozen=True)
class SignerFacts:
    """What a signature will name: the access key id and session token (if any)."""

    access_key_id: str
    session_token: str | None


class StoreSigner:
    """Signs with the credentials of the broker's S3 client (refreshed by botocore as needed)."""

    def __init__(self, s3_client: Any) -> None:
        self._client = s3_client

    def _credentials(self) -> Any:
        creds = getattr(getattr(self._client, "_request_signer", None), "_credentials", None)
        if creds is None:
            raise ServiceUnavailable("the broker has no S3 credentials to sign with")
        return creds.get_frozen_credentials()

    def facts(self) -> SignerFacts:
        """The access key id and session token signatures will be made with."""
        creds = self._credentials()
        return SignerFacts(creds.access_key, creds.token or None)

    def object_url(self, bucket: str, key: str) -> str:
        """The object's URL as the client builds it (addressing style and endpoint included)."""
        url = self._client.generate_presigned_url("head_object", Params={"Bucket": bucket, "Key": key},
                                                  ExpiresIn=60)
        parts = urlsplit(url)
        return f"{parts.scheme}://{parts.netloc}{parts.path}"

    def bucket_url(self, bucket: str) -> str:
        """The bucket's URL ending in ``/`` (where browsers post forms)."""
        url = self.object_url(bucket, "k")
        return url[: -len("k")]

    def host(self, bucket: str) -> str:
        """The Host header value of requests to ``bucket``."""
        return urlsplit(self.bucket_url(bucket)).netloc

    def sign_policy(self, policy_b64: str, *, amz_date: str, region: str) -> str:
        """The hex SigV4 signature of a base64 POST policy for the date in ``amz_date``."""
        from botocore.auth import S3SigV4Auth
        from botocore.awsrequest import AWSRequest

        request = AWSRequest(method="POST", url="https://s3.amazonaws.com/")
        request.context["timestamp"] = amz_date
        return S3SigV4Auth(self._credentials(), "s3", region).signature(policy_b64, request)

    def sign_rest(self, *, method: str, key: str, query: str, headers: tuple[tuple[str, str], ...],
                  amz_date: str, bucket: str, region: str) -> tuple[str, str]:
        """Rebuild a checked request against the store's real URL; (signature, signed headers)."""
        from botocore.auth import S3SigV4Auth
        from botocore.awsrequest import AWSRequest

        url = f"{self.object_url(bucket, key)}?{query}"
        request = AWSRequest(method=method, url=url, headers={name: value for name, value in headers})
        request.context["timestamp"] = amz_date
        auth = S3SigV4Auth(self._credentials(), "s3", region)
        canonical = auth.canonical_request(request)
        signed_headers = auth.signed_headers(auth.headers_to_sign(request))
        return auth.signature(auth.string_to_sign(request, canonical), request), signed_headers
