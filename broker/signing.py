"""Grant -> presigned POST form, signed by boto3/botocore's own SigV4 implementation.

This is the only module on the request path that talks to boto3/botocore. The client is
created once per process (``make_s3_client``) and passed in, so tests can hand in a
moto-backed or stubbed client.

Speed: a client's ``generate_presigned_post`` re-resolves the bucket's endpoint (endpoint
rules, parameter events, request serialisation) and re-chooses the signer (events, hooks)
on every call, about three times the cost of the signing itself. :class:`Signer` does all
of that once per bucket, exactly as ``generate_presigned_post`` and ``RequestSigner.sign``
do it, and then has botocore's own ``S3SigV4PostAuth.add_auth`` sign each form (through
``S3PostPresigner`` whenever a ``before-sign`` hook acts for the bucket). The fields are
identical to ``generate_presigned_post``'s for the same inputs and time
(``tests/test_signing_fast_path.py``). If botocore's internals ever change shape, the
signer falls back to the public ``generate_presigned_post`` for good and logs it once.
"""
from __future__ import annotations

import base64
import json
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

from .config import Settings
from .errors import ServiceUnavailable
from .models import Grant, SignedPost, iso_seconds

#: Never sign a policy that outlives the signing credentials by less than this margin.
CREDENTIAL_MARGIN = timedelta(seconds=30)
# Fields the audit log must never see the value of.
SECRET_CONDITION_FIELDS = frozenset({"x-amz-security-token", "x-amz-credential"})
_FILENAME = "${filename}"
_ISO_SECONDS = "%Y-%m-%dT%H:%M:%SZ"  # botocore.auth.ISO8601, which models.iso_seconds writes


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


def credentials_expiry(s3_client: Any) -> Callable[[], datetime | None]:
    """A function returning when the client's credentials expire (None: long-lived or unknown)."""

    def expiry() -> datetime | None:
        creds = getattr(s3_client._request_signer, "_credentials", None)
        value = getattr(creds, "_expiry_time", None)  # set on refreshable (temporary) credentials
        return value if isinstance(value, datetime) else None

    return expiry


@dataclass(frozen=True)
class _Prepared:
    """What one bucket's forms share: the request and, if it is plain SigV4, how to sign it."""

    request: dict[str, Any]  # the request dict generate_presigned_post builds for the bucket
    # (signing_name, region_name, signature_version) when S3SigV4PostAuth can sign directly
    auth: tuple[str, str, str] | None


class Signer:
    """Signs grants into presigned POST forms with one long-lived boto3/botocore client."""

    def __init__(self, s3_client: Any, *,
                 credentials_expiry: Callable[[], datetime | None] | None = None) -> None:
        self._client = s3_client
        self._expiry = credentials_expiry or (lambda: None)
        self._lock = threading.Lock()
        self._requests: dict[str, _Prepared] = {}  # per bucket
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
                                   self.expires_in(grant, now), policy_out=policy_out)
        policy = policy_out.get("policy") or decode_policy(post["fields"]["policy"])
        expires_at = policy_out.get("expires_at") or parse_expiration(policy["expiration"])
        return SignedPost(post["url"], post["fields"], expires_at, tuple(policy["conditions"]))

    def presigned_post(self, bucket: str, key: str, fields: dict[str, Any], conditions: list[Any],
                       expires_in: int, *, policy_out: dict[str, Any] | None = None) -> dict[str, Any]:
        """Exactly ``client.generate_presigned_post(...)``, with the endpoint resolved once per bucket.

        ``policy_out["policy"]`` receives the policy document as signed, when botocore leaves
        it where it did when this was written (saves decoding it again from the form), and
        ``policy_out["expires_at"]`` its expiration as a datetime when it was made here.
        """
        prepared = self._prepared(bucket) if self._fast else None
        if prepared is None:
            return self._client.generate_presigned_post(
                Bucket=bucket, Key=key, Fields=fields, Conditions=conditions, ExpiresIn=expires_in)
        # What generate_presigned_post adds before handing over to S3PostPresigner:
        form_fields = {**fields, "key": key}
        form_conditions = [*conditions, {"bucket": bucket}]
        if key.endswith(_FILENAME):
            form_conditions.append(["starts-with", "$key", key[: -len(_FILENAME)]])
        else:
            form_conditions.append({"key": key})
        if prepared.auth is None:
            request = _copy_request(prepared.request)
            post = self._presigner.generate_presigned_post(
                request_dict=request, fields=form_fields, conditions=form_conditions,
                expires_in=expires_in)
            policy = request["context"].get("s3-presign-post-policy")
            if policy_out is not None and isinstance(policy, dict):
                policy_out["policy"] = policy
            return post
        try:
            return _sign_post(self._client._request_signer, prepared.auth, prepared.request,
                              form_fields, form_conditions, expires_in, policy_out)
        except AttributeError as exc:
            if not isinstance(getattr(exc, "obj", None), _Form):
                raise  # not about the carrier (e.g. no credentials): as generate_presigned_post would
            self._fast = False  # add_auth wants more of the request than it used to
            from .sources import log_event

            log_event("signing_fast_path_unavailable", error=f"AttributeError: {exc}")
            if policy_out is not None:
                policy_out.clear()
            return self._client.generate_presigned_post(
                Bucket=bucket, Key=key, Fields=fields, Conditions=conditions, ExpiresIn=expires_in)

    def _prepared(self, bucket: str) -> _Prepared | None:
        prepared = self._requests.get(bucket)
        if prepared is not None:
            return prepared
        with self._lock:
            if bucket not in self._requests:
                try:
                    request = _prepare_post_request(self._client, bucket)
                    presigner = _post_presigner(self._client)
                    auth = _direct_auth(self._client, request)
                except (AttributeError, TypeError, KeyError, ImportError) as exc:
                    # botocore's internals moved: sign through the public call from now on
                    self._fast = False
                    from .sources import log_event

                    log_event("signing_fast_path_unavailable", error=f"{type(exc).__name__}: {exc}")
                    return None
                self._presigner = presigner
                self._requests[bucket] = _Prepared(request, auth)
            return self._requests[bucket]


def _post_presigner(client: Any) -> Any:
    from botocore.signers import S3PostPresigner

    return S3PostPresigner(client._request_signer)


def _prepare_post_request(client: Any, bucket: str) -> dict[str, Any]:
    """The request dict ``generate_presigned_post`` builds for ``bucket`` (botocore.signers)."""
    from botocore.signers import _should_use_global_endpoint
    from botocore.utils import ArnParser

    context = {
        "is_presign_request": True,
        "use_global_endpoint": _should_use_global_endpoint(client),
    }
    # CreateBucket: the operation whose URL serialises to what a presigned POST needs.
    operation_model = client.meta.service_model.operation_model("CreateBucket")
    params = client._emit_api_params(
        api_params={"Bucket": bucket}, operation_model=operation_model, context=context)
    bucket_is_arn = ArnParser.is_arn(params.get("Bucket", ""))
    endpoint_url, additional_headers, _properties = client._resolve_endpoint_ruleset(
        operation_model, params, context, ignore_signing_region=not bucket_is_arn)
    return client._convert_to_request_dict(
        api_params=params, operation_model=operation_model, endpoint_url=endpoint_url,
        context=context, headers=additional_headers, set_user_agent_header=False)


def _direct_auth(client: Any, request: dict[str, Any]) -> tuple[str, str, str] | None:
    """How ``RequestSigner.sign`` would sign this bucket's forms, if nothing but SigV4 is involved.

    ``S3PostPresigner`` hands each form to ``RequestSigner.sign``, which picks the signature
    version (a ``choose-signer`` event), lets ``before-sign`` hooks adjust the request, then
    has ``S3SigV4PostAuth.add_auth`` sign it. The choice and the hooks depend only on the
    bucket's request, so they are run here once; if the signer is plain ``s3v4-presign-post``
    and the hooks leave the request untouched (what they do for any ordinary bucket), forms
    are signed by ``add_auth`` directly. Otherwise (S3 Express, ARNs, a custom hook): None,
    and every form goes through ``S3PostPresigner``.
    """
    from botocore.awsrequest import create_request_object
    from botocore.utils import ArnParser

    signer = client._request_signer
    probe = _copy_request(request)
    context = probe["context"]
    signing = context.get("signing", {})
    if ArnParser.is_arn(context.get("input_params", {}).get("Bucket", "")) or \
            {"request_credentials", "identity_cache", "region"} & set(signing):
        return None
    version = signer._choose_signer("PutObject", "presign-post", context)
    signing_name = signing.get("signing_name") or signer.signing_name
    if version != "s3v4-presign-post" or signing_name != "s3":
        return None
    aws_request = create_request_object(probe)
    before = (aws_request.url, aws_request.auth_path, dict(aws_request.headers), repr(aws_request.context))
    client.meta.events.emit(
        f"before-sign.{client.meta.service_model.service_id.hyphenize()}.PutObject",
        request=aws_request, signing_name=signing_name, region_name=signer.region_name,
        signature_version=version, request_signer=signer, operation_name="PutObject")
    after = (aws_request.url, aws_request.auth_path, dict(aws_request.headers), repr(aws_request.context))
    return (signing_name, signer.region_name, version) if before == after else None


class _Botocore:
    """The botocore parts ``_sign_post`` uses, imported once (imports in a function cost ~1 µs each).

    Modules, not functions, are kept: tests freeze botocore's clock by patching the modules.
    """

    def __init__(self) -> None:
        import botocore.auth
        import botocore.signers

        self.signers = botocore.signers
        self.iso8601 = botocore.auth.ISO8601


class _Form:
    """All of a request ``S3SigV4PostAuth.add_auth`` uses: its context (and, for us, its url).

    An ``AWSRequest`` costs more to build than the fields it signs are worth; if a botocore
    release reads more than this, the signer falls back to ``generate_presigned_post``.
    """

    __slots__ = ("url", "context")

    def __init__(self, url: str, context: dict[str, Any]) -> None:
        self.url = url
        self.context = context


_BOTOCORE: _Botocore | None = None


def _sign_post(request_signer: Any, auth_args: tuple[str, str, str], request_dict: dict[str, Any],
               fields: dict[str, Any], conditions: list[Any], expires_in: int,
               policy_out: dict[str, Any] | None = None) -> dict[str, Any]:
    """``S3PostPresigner.generate_presigned_post`` with the once-per-bucket choices made already.

    The policy is assembled as S3PostPresigner assembles it, from botocore's clock; the
    credentials come from ``RequestSigner.get_auth_instance`` (refreshed as botocore
    refreshes them), and botocore's ``S3SigV4PostAuth.add_auth`` does all the signing.
    """
    global _BOTOCORE
    bc = _BOTOCORE or _Botocore()
    _BOTOCORE = bc
    expire_date = bc.signers.get_current_datetime() + timedelta(seconds=expires_in)
    iso8601 = bc.iso8601
    expiration = iso_seconds(expire_date) if iso8601 == _ISO_SECONDS else expire_date.strftime(iso8601)
    policy = {"expiration": expiration, "conditions": conditions}
    signing_name, region_name, version = auth_args
    auth = request_signer.get_auth_instance(signing_name=signing_name, region_name=region_name,
                                            signature_version=version)
    context = {**request_dict["context"], "s3-presign-post-fields": fields,
               "s3-presign-post-policy": policy}
    request = _Form(request_dict["url"], context)
    auth.add_auth(request)  # an AttributeError here: see Signer.presigned_post
    if policy_out is not None:
        policy_out["policy"] = context["s3-presign-post-policy"]
        policy_out["expires_at"] = expire_date.replace(microsecond=0, tzinfo=timezone.utc)
    return {"url": request.url, "fields": fields}


def _copy_request(request: dict[str, Any]) -> dict[str, Any]:
    """A copy of a prepared request: signing writes into its context, so each form gets its own.

    Two levels are enough: signing and the ``before-sign`` hooks set keys of the context and
    of the dicts directly inside it (``signing``); the rest is only read.
    """
    context = {k: dict(v) if isinstance(v, dict) else v for k, v in request["context"].items()}
    return {**request, "headers": dict(request["headers"]), "context": context}


def parse_expiration(value: str) -> datetime:
    """A policy's ``expiration`` (``2026-11-28T14:54:31Z``) as an aware UTC datetime."""
    parts = (value[0:4], value[5:7], value[8:10], value[11:13], value[14:16], value[17:19])
    digits = "".join(parts)
    if len(value) == 20 and value[4::3] == "--T::Z" and digits.isascii() and digits.isdigit():
        try:  # the fixed layout botocore writes, without strptime's cost
            return datetime(*map(int, parts), tzinfo=timezone.utc)  # type: ignore[misc]
        except ValueError:  # e.g. month 13: let strptime word the error
            pass
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)


def decode_policy(policy_b64: str) -> dict[str, Any]:
    """The JSON policy document inside a presigned POST's ``policy`` field."""
    return json.loads(base64.b64decode(policy_b64))


def public_conditions(conditions: tuple[Any, ...] | list[Any]) -> list[Any]:
    """Policy conditions safe to log: without the credential scope or session token."""
    out = []
    for cond in conditions:
        if isinstance(cond, dict):
            for name in cond:
                if name.lower() in SECRET_CONDITION_FIELDS:
                    break
            else:
                out.append(cond)
        else:
            out.append(cond)
    return out
