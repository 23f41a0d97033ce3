"""Grant -> presigned POST form, signed by botocore's own SigV4 implementation.

:class:`Signer` signs with one long-lived botocore client. Forms for an ordinary bucket go
through the fast path (:mod:`broker.s3.fastpost`: the endpoint and signer chosen once per
bucket, the policy's expiration from the decision's ``now``); whenever a ``before-sign`` hook
acts for the bucket they go through ``S3PostPresigner``; and if botocore's internals ever
change shape, the signer falls back to the public ``generate_presigned_post`` for good and
logs it once. In every case the form's expiry is read back from the signed policy.
"""
from __future__ import annotations

import base64
import json
import threading
from datetime import datetime, timedelta
from typing import Any, Callable

from broker.errors import ServiceUnavailable
from broker.logs import log_event
from broker.models import Grant, SignedPost
from broker.s3 import fastpost
from broker.timefmt import parse_iso_z

#: Never sign a policy that outlives the signing credentials by less than this margin.
CREDENTIAL_MARGIN = timedelta(seconds=30)


class Signer:
    """Signs grants into presigned POST forms with one long-lived botocore client."""

    def __init__(self, s3_client: Any, *,
                 credentials_expiry: Callable[[], datetime | None] | None = None) -> None:
        self._client = s3_client
        self._expiry = credentials_expiry or (lambda: None)
        self._lock = threading.Lock()
        self._requests: dict[str, fastpost.Prepared] = {}  # per bucket
        self._presigner: Any = None
        self._fast = True

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
        policy_out: dict[str, Any] = {}
        post = self.presigned_post(grant.bucket, grant.key, grant.fields, grant.conditions(),  # copied there
                                   self.expires_in(grant, now), now=now, policy_out=policy_out)
        policy = policy_out.get("policy") or decode_policy(post["fields"]["policy"])
        expires_at = policy_out.get("expires_at") or parse_iso_z(policy["expiration"])
        return SignedPost(post["url"], post["fields"], expires_at, tuple(policy["conditions"]))

    def presigned_post(self, bucket: str, key: str, fields: dict[str, Any], conditions: list[Any],
                       expires_in: int, *, now: datetime,
                       policy_out: dict[str, Any] | None = None) -> dict[str, Any]:
        """``client.generate_presigned_post(...)``, with the endpoint resolved once per bucket.

        ``policy_out["policy"]`` receives the policy document as signed, when botocore leaves
        it where it did when this was written (saves decoding it again from the form), and
        ``policy_out["expires_at"]`` its expiration as a datetime when it was made here.
        """
        prepared = self._prepared(bucket) if self._fast else None
        if prepared is None:
            return self._client.generate_presigned_post(
                Bucket=bucket, Key=key, Fields=fields, Conditions=conditions, ExpiresIn=expires_in)
        form_fields, form_conditions = fastpost.form_inputs(bucket, key, fields, conditions)
        if prepared.auth is None:
            request = fastpost.copy_request(prepared.request)
            post = self._presigner.generate_presigned_post(
                request_dict=request, fields=form_fields, conditions=form_conditions,
                expires_in=expires_in)
            policy = request["context"].get("s3-presign-post-policy")
            if policy_out is not None and isinstance(policy, dict):
                policy_out["policy"] = policy
            return post
        try:
            return fastpost.sign_post(self._client._request_signer, prepared.auth, prepared.request,
                                      form_fields, form_conditions, expires_in, now=now,
                                      policy_out=policy_out)
        except AttributeError as exc:
            if not isinstance(getattr(exc, "obj", None), fastpost.Form):
                raise  # not about the carrier (e.g. no credentials): as generate_presigned_post would
            self._fast = False  # add_auth wants more of the request than it used to
            log_event("signing_fast_path_unavailable", error=f"AttributeError: {exc}")
            if policy_out is not None:
                policy_out.clear()
            return self._client.generate_presigned_post(
                Bucket=bucket, Key=key, Fields=fields, Conditions=conditions, ExpiresIn=expires_in)

    def _prepared(self, bucket: str) -> fastpost.Prepared | None:
        prepared = self._requests.get(bucket)
        if prepared is not None:
            return prepared
        with self._lock:
            if bucket not in self._requests:
                try:
                    prepared, presigner = fastpost.prepare(self._client, bucket)
                except (AttributeError, TypeError, KeyError, ImportError) as exc:
                    # botocore's internals moved: sign through the public call from now on
                    self._fast = False
                    log_event("signing_fast_path_unavailable", error=f"{type(exc).__name__}: {exc}")
                    return None
                self._presigner = presigner
                self._requests[bucket] = prepared
            return self._requests[bucket]


def decode_policy(policy_b64: str) -> dict[str, Any]:
    """The JSON policy document inside a presigned POST's ``policy`` field."""
    return json.loads(base64.b64decode(policy_b64))
