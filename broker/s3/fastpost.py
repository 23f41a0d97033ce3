"""The presigned POST signer's fast path: ``generate_presigned_post`` with per-bucket work done once.

Slow twin: botocore's ``client.generate_presigned_post`` (``botocore.signers``). A client's
``generate_presigned_post`` re-resolves the bucket's endpoint (endpoint rules, parameter
events, request serialisation) and re-chooses the signer (events, hooks) on every call,
about three times the cost of the signing itself. Here that is done once per bucket
(:func:`prepare`), exactly as ``generate_presigned_post`` and ``RequestSigner.sign`` do it,
and then botocore's own ``S3SigV4PostAuth.add_auth`` signs each form (:func:`sign_post`).
Two differences. The clock: the policy's expiration is the decision's ``now`` plus the
lifetime, not botocore's clock. And SigV4's signing key, four HMACs of the secret, the day,
the region and the service, is derived once per day and credentials (:func:`signing_key`),
not once per form: botocore's ``SigV4Auth.signature`` with the derivation cached.
``tests/s3/test_fastpost.py`` proves the fields equal the slow twin's for the same inputs and
time. It lives in ``broker.s3``, not ``broker.fast``, because only ``broker.s3`` may import
botocore.
"""
from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any

from broker.timefmt import iso_z

_ISO_SECONDS = "%Y-%m-%dT%H:%M:%SZ"  # botocore.auth.ISO8601, which timefmt.iso_z writes
FILENAME = "${filename}"


@dataclass(frozen=True)
class Prepared:
    """What one bucket's forms share: the request and, if it is plain SigV4, how to sign it."""

    request: dict[str, Any]  # the request dict generate_presigned_post builds for the bucket
    # (signing_name, region_name, signature_version) when S3SigV4PostAuth can sign directly
    auth: tuple[str, str, str] | None


def prepare(client: Any, bucket: str) -> tuple[Prepared, Any]:
    """The bucket's prepared request and an ``S3PostPresigner`` (raises if botocore's internals moved)."""
    request = _prepare_post_request(client, bucket)
    return Prepared(request, _direct_auth(client, request)), _post_presigner(client)


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
    probe = copy_request(request)
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


class Form:
    """All of a request ``S3SigV4PostAuth.add_auth`` uses: its context (and, for us, its url).

    An ``AWSRequest`` costs more to build than the fields it signs are worth; if a botocore
    release reads more than this, the signer falls back to ``generate_presigned_post``.
    """

    __slots__ = ("url", "context")

    def __init__(self, url: str, context: dict[str, Any]) -> None:
        self.url = url
        self.context = context


_ISO8601: str | None = None  # botocore.auth.ISO8601, read once (an import in a function costs ~1 µs)
_PLAIN: Any = None  # botocore.auth.S3SigV4PostAuth
_KEYED: Any = None  # the same, with its signing key from signing_key()


@lru_cache(maxsize=16)
def signing_key(secret_key: str, day: str, region: str, service: str) -> bytes:
    """SigV4's signing key, derived exactly as botocore's ``SigV4Auth.signature`` derives it
    (HMAC-SHA256 of ``day``, ``region``, ``service`` and ``aws4_request`` in turn, from
    ``"AWS4" + secret``). The same for every form signed that UTC day with those credentials, so
    derived once: four HMACs fewer per form (~13 µs). New credentials are a new cache entry."""
    key = hmac.digest(f"AWS4{secret_key}".encode("utf-8"), day.encode("utf-8"), "sha256")
    for part in (region, service, "aws4_request"):
        key = hmac.digest(key, part.encode("utf-8"), "sha256")
    return key


def _auth_classes() -> tuple[Any, Any]:
    global _PLAIN, _KEYED
    if _KEYED is None:
        import botocore.auth

        class KeyedPostAuth(botocore.auth.S3SigV4PostAuth):  # type: ignore[misc]
            """``S3SigV4PostAuth`` whose ``signature`` takes the derived key from :func:`signing_key`."""

            def signature(self, string_to_sign: str, request: Any) -> str:
                key = signing_key(self.credentials.secret_key, request.context["timestamp"][0:8],
                                  self._region_name, self._service_name)
                return hmac.new(key, string_to_sign.encode("utf-8"), hashlib.sha256).hexdigest()

        _PLAIN, _KEYED = botocore.auth.S3SigV4PostAuth, KeyedPostAuth
    return _PLAIN, _KEYED


def form_inputs(bucket: str, key: str, fields: dict[str, Any], conditions: list[Any]
                ) -> tuple[dict[str, Any], list[Any]]:
    """What ``generate_presigned_post`` adds before handing over to ``S3PostPresigner``."""
    form_fields = {**fields, "key": key}
    form_conditions = [*conditions, {"bucket": bucket}]
    if key.endswith(FILENAME):
        form_conditions.append(["starts-with", "$key", key[: -len(FILENAME)]])
    else:
        form_conditions.append({"key": key})
    return form_fields, form_conditions


def sign_post(request_signer: Any, auth_args: tuple[str, str, str], request_dict: dict[str, Any],
              fields: dict[str, Any], conditions: list[Any], expires_in: int, *, now: datetime,
              policy_out: dict[str, Any] | None = None) -> dict[str, Any]:
    """``S3PostPresigner.generate_presigned_post`` with the once-per-bucket choices made already.

    The policy is assembled as S3PostPresigner assembles it, its expiration ``now`` plus
    ``expires_in``; the credentials come from ``RequestSigner.get_auth_instance`` (refreshed as
    botocore refreshes them), and botocore's ``S3SigV4PostAuth.add_auth`` does all the signing.
    """
    global _ISO8601
    if _ISO8601 is None:
        import botocore.auth

        _ISO8601 = botocore.auth.ISO8601
    expire_date = now + timedelta(seconds=expires_in)
    expiration = iso_z(expire_date) if _ISO8601 == _ISO_SECONDS else expire_date.strftime(_ISO8601)
    policy = {"expiration": expiration, "conditions": conditions}
    signing_name, region_name, version = auth_args
    auth = request_signer.get_auth_instance(signing_name=signing_name, region_name=region_name,
                                            signature_version=version)
    plain, keyed = _auth_classes()
    if type(auth) is plain:  # the same signer, its key derivation cached; any other class signs as it is
        auth.__class__ = keyed
    context = {**request_dict["context"], "s3-presign-post-fields": fields,
               "s3-presign-post-policy": policy}
    request = Form(request_dict["url"], context)
    auth.add_auth(request)  # an AttributeError here: see broker.s3.post.Signer.presigned_post
    if policy_out is not None:
        policy_out["policy"] = context["s3-presign-post-policy"]
        policy_out["expires_at"] = expire_date.replace(microsecond=0)
    return {"url": request.url, "fields": fields}


def copy_request(request: dict[str, Any]) -> dict[str, Any]:
    """A copy of a prepared request: signing writes into its context, so each form gets its own.

    Two levels are enough: signing and the ``before-sign`` hooks set keys of the context and
    of the dicts directly inside it (``signing``); the rest is only read.
    """
    context = {k: dict(v) if isinstance(v, dict) else v for k, v in request["context"].items()}
    return {**request, "headers": dict(request["headers"]), "context": context}
