"""The signer's fast path (``broker.s3.fastpost``) gives exactly the fields of its slow twin, boto3's
``generate_presigned_post``.

The slow twin reads botocore's clock; it is frozen at the ``now`` the fast path is given, so
both sign the same instant and every field, the policy and the signature must match byte
for byte, in the same order. Without the freeze, the fast path's expiration still follows
``now`` alone (one clock: the decision's).
"""
from __future__ import annotations

import hashlib
import hmac
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from broker.config import Settings
from broker.models import Grant
from broker.s3.client import make_s3_client
from broker.s3.post import Signer, decode_policy
from tests.fast.twins import assert_twins_agree

FROZEN = datetime(2026, 11, 28, 14, 49, 31)  # botocore's clock is naive UTC
FIELDS = {"Content-Type": "image/png", "acl": "private", "Cache-Control": "public, max-age=86400",
          "x-amz-meta-title": "r%C3%A9sum%C3%A9", "x-amz-server-side-encryption": "AES256",
          "success_action_status": "201"}


@pytest.fixture
def frozen(monkeypatch: pytest.MonkeyPatch) -> datetime:
    import botocore.auth
    import botocore.signers

    def now(remove_tzinfo: bool = True) -> datetime:
        return FROZEN if remove_tzinfo else FROZEN.replace(tzinfo=timezone.utc)

    monkeypatch.setattr(botocore.signers, "get_current_datetime", now)
    monkeypatch.setattr(botocore.auth, "get_current_datetime", now)
    return FROZEN


def credentials(monkeypatch: pytest.MonkeyPatch, token: str | None) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDFASTPATHTEST")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "fast-path-secret-never-logged")
    for name in ("AWS_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    if token is None:
        monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    else:
        monkeypatch.setenv("AWS_SESSION_TOKEN", token)


def boto3_client(settings: Settings, region: str) -> Any:
    """The reference: what a plain boto3 Lambda would create for the same settings."""
    import boto3
    from botocore.config import Config

    return boto3.session.Session().client(
        "s3", region_name=settings.region or region, endpoint_url=settings.s3_endpoint_url,
        config=Config(signature_version="s3v4", s3={"addressing_style": settings.s3_addressing_style}))


def grant(bucket: str, key: str = "uploads/web-app/avatars/2026-11-28/0123456789abcdef0123456789abcdef.png",
          expires_in: int = 300) -> Grant:
    return Grant(client="web-app", profile="avatars", bucket=bucket, key=key, content_type="image/png",
                 min_bytes=1, max_bytes=5 * 1024**2, expires_in=expires_in, fields=dict(FIELDS))


CASES = [
    pytest.param(None, "us-east-1", "auto", "broker-uploads", None, id="aws_us_east_1_auto"),
    pytest.param(None, "us-east-1", "auto", "broker.uploads.example", None, id="aws_dotted_bucket"),
    pytest.param(None, "eu-west-1", "virtual", "broker-uploads", None, id="aws_eu_west_1_virtual"),
    pytest.param(None, "eu-central-1", "path", "broker-uploads", None, id="aws_path_style"),
    pytest.param(None, "ap-southeast-2", "auto", "broker-uploads", "FQoGZXIvYXdzEJr//token==",
                 id="aws_session_token"),
    pytest.param("http://127.0.0.1:8333", "us-east-1", "path", "broker-uploads", None,
                 id="endpoint_path_style"),
    pytest.param("http://127.0.0.1:8333", "us-west-2", "virtual", "broker.uploads", "IQoJb3JpZ2luX2Vj",
                 id="endpoint_virtual_style_token"),
    pytest.param("https://s3.example.internal", "eu-west-1", "auto", "broker-uploads", None,
                 id="https_endpoint_auto"),
]


@pytest.mark.parametrize(("endpoint", "region", "style", "bucket", "token"), CASES)
def test_signed_fields_equal_boto3(monkeypatch: pytest.MonkeyPatch, frozen: datetime, endpoint: str | None,
                                   region: str, style: str, bucket: str, token: str | None) -> None:
    credentials(monkeypatch, token)
    settings = Settings(region=region, s3_endpoint_url=endpoint, s3_addressing_style=style)
    signer = Signer(make_s3_client(settings, region))
    g = grant(bucket)

    signed = signer.sign(g, now=frozen.replace(tzinfo=timezone.utc))
    reference = boto3_client(settings, region)
    expected = reference.generate_presigned_post(
        Bucket=bucket, Key=g.key, Fields=dict(g.fields), Conditions=g.conditions(), ExpiresIn=g.expires_in)
    assert_twins_agree(  # the fast path and its slow twin, field by field and in order
        lambda case: list(signer.presigned_post(*case, now=frozen.replace(tzinfo=timezone.utc))["fields"].items()),
        lambda case: list(reference.generate_presigned_post(Bucket=case[0], Key=case[1], Fields=case[2],
                                                            Conditions=case[3], ExpiresIn=case[4])["fields"].items()),
        [(bucket, g.key, dict(g.fields), g.conditions(), g.expires_in),
         (bucket, g.key.replace(".png", ".jpg"), {"acl": "private"}, [{"acl": "private"}], 1),
         (bucket, "uploads/${filename}", {}, [], 3600)])

    assert signed.url == expected["url"]
    assert list(signed.fields.items()) == list(expected["fields"].items())
    assert ("x-amz-security-token" in signed.fields) == (token is not None)
    policy = decode_policy(expected["fields"]["policy"])
    assert list(signed.conditions) == policy["conditions"]
    assert signed.expires_at == datetime(2026, 11, 28, 14, 54, 31, tzinfo=timezone.utc)
    assert list(signer._requests) == [bucket], "the fast path was not taken"
    assert signer._requests[bucket].auth is not None, "an ordinary bucket is signed by add_auth directly"


def test_many_buckets_and_calls_share_nothing_mutable(monkeypatch: pytest.MonkeyPatch) -> None:
    """The prepared request per bucket is copied per form: later forms are not polluted."""
    import botocore.auth
    import botocore.signers

    credentials(monkeypatch, "token-one")
    settings = Settings(region="eu-west-1", s3_endpoint_url="http://127.0.0.1:8333", s3_addressing_style="path")
    signer = Signer(make_s3_client(settings, "eu-west-1"))
    reference = boto3_client(settings, "eu-west-1")
    for second, bucket in enumerate(["bucket-a", "bucket-b", "bucket-a", "bucket-c", "bucket-b"]):
        moment = FROZEN.replace(second=second)
        monkeypatch.setattr(botocore.signers, "get_current_datetime", lambda remove_tzinfo=True: moment)
        monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda remove_tzinfo=True: moment)
        g = grant(bucket, key=f"uploads/{bucket}/{second:032x}.png", expires_in=60 + second)
        post = signer.presigned_post(g.bucket, g.key, dict(g.fields), g.conditions(), g.expires_in,
                                     now=moment.replace(tzinfo=timezone.utc))
        expected = reference.generate_presigned_post(Bucket=g.bucket, Key=g.key, Fields=dict(g.fields),
                                                     Conditions=g.conditions(), ExpiresIn=g.expires_in)
        assert post == expected, bucket
    assert sorted(signer._requests) == ["bucket-a", "bucket-b", "bucket-c"]


def test_filename_keys_become_starts_with_like_boto3(monkeypatch: pytest.MonkeyPatch, frozen: datetime) -> None:
    credentials(monkeypatch, None)
    settings = Settings(region="us-east-1")
    key = "uploads/abc/${filename}"
    signer = Signer(make_s3_client(settings, "us-east-1"))
    post = signer.presigned_post("broker-uploads", key, {"acl": "private"}, [{"acl": "private"}], 120,
                                 now=frozen.replace(tzinfo=timezone.utc))
    expected = boto3_client(settings, "us-east-1").generate_presigned_post(
        Bucket="broker-uploads", Key=key, Fields={"acl": "private"}, Conditions=[{"acl": "private"}],
        ExpiresIn=120)
    assert post == expected
    assert ["starts-with", "$key", "uploads/abc/"] in decode_policy(post["fields"]["policy"])["conditions"]


def test_a_before_sign_hook_that_acts_keeps_the_presigner_path(monkeypatch: pytest.MonkeyPatch,
                                                               frozen: datetime) -> None:
    """A hook that changes the request (as S3 Express or ARN handling would) is honoured."""
    credentials(monkeypatch, "token")
    settings = Settings(region="eu-west-1")
    calls: list[str] = []

    def hook(request: Any, **kwargs: Any) -> None:
        calls.append(request.url)
        request.headers["x-amz-bench-hook"] = "1"

    client = make_s3_client(settings, "eu-west-1")
    client.meta.events.register("before-sign.s3.PutObject", hook)
    reference = boto3_client(settings, "eu-west-1")
    reference.meta.events.register("before-sign.s3.PutObject", hook)
    signer = Signer(client)
    g = grant("broker-uploads")
    post = signer.presigned_post(g.bucket, g.key, dict(g.fields), g.conditions(), g.expires_in,
                                 now=frozen.replace(tzinfo=timezone.utc))
    expected = reference.generate_presigned_post(Bucket=g.bucket, Key=g.key, Fields=dict(g.fields),
                                                 Conditions=g.conditions(), ExpiresIn=g.expires_in)
    assert post == expected
    assert signer._requests["broker-uploads"].auth is None
    assert len(calls) == 3  # the probe, our form, the reference form: it ran for every form


class PublicOnly:
    """A client exposing only the public call (a stub, or a botocore whose internals moved)."""

    def __init__(self, client: Any) -> None:
        self.calls = 0
        self._inner = client

    def generate_presigned_post(self, **kwargs: Any) -> Any:
        self.calls += 1
        return self._inner.generate_presigned_post(**kwargs)


def test_falls_back_to_the_public_call(monkeypatch: pytest.MonkeyPatch, frozen: datetime,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    credentials(monkeypatch, None)
    settings = Settings(region="us-east-1")
    client = PublicOnly(boto3_client(settings, "us-east-1"))
    signer = Signer(client)
    g = grant("broker-uploads")
    first = signer.sign(g, now=frozen.replace(tzinfo=timezone.utc))
    second = signer.sign(g, now=frozen.replace(tzinfo=timezone.utc))
    assert client.calls == 2 and first == second
    assert capsys.readouterr().err.count("signing_fast_path_unavailable") == 1


def test_an_add_auth_that_reads_more_of_the_request_falls_back(monkeypatch: pytest.MonkeyPatch, frozen: datetime,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    """Forms are signed on a carrier holding only the context; should botocore's add_auth come
    to read more (here: the headers), the signer gives the public call's exact form instead."""
    import botocore.auth

    credentials(monkeypatch, "token")
    settings = Settings(region="eu-west-1")
    real_add_auth = botocore.auth.S3SigV4PostAuth.add_auth

    def add_auth(self: Any, request: Any) -> None:
        real_add_auth(self, request)  # mutates the form first, as a partial failure would
        request.headers.get("host")

    monkeypatch.setattr(botocore.auth.S3SigV4PostAuth, "add_auth", add_auth)
    signer = Signer(make_s3_client(settings, "eu-west-1"))
    g = grant("broker-uploads")
    fields, conditions = dict(g.fields), g.conditions()
    signed = signer.sign(g, now=frozen.replace(tzinfo=timezone.utc))
    again = signer.sign(g, now=frozen.replace(tzinfo=timezone.utc))
    expected = boto3_client(settings, "eu-west-1").generate_presigned_post(
        Bucket=g.bucket, Key=g.key, Fields=fields, Conditions=conditions, ExpiresIn=g.expires_in)
    assert list(signed.fields.items()) == list(expected["fields"].items()) == list(again.fields.items())
    assert list(signed.conditions) == decode_policy(expected["fields"]["policy"])["conditions"]
    assert (dict(g.fields), g.conditions()) == (fields, conditions)  # the grant itself untouched
    assert capsys.readouterr().err.count("signing_fast_path_unavailable") == 1


def test_other_attribute_errors_are_not_mistaken_for_a_botocore_change(monkeypatch: pytest.MonkeyPatch,
                                                                        frozen: datetime) -> None:
    """Only an AttributeError about the carrier switches to the public call; others propagate."""
    import botocore.auth

    credentials(monkeypatch, None)

    def add_auth(self: Any, request: Any) -> None:
        None.access_key  # type: ignore[attr-defined]  # what missing credentials look like

    monkeypatch.setattr(botocore.auth.S3SigV4PostAuth, "add_auth", add_auth)
    signer = Signer(make_s3_client(Settings(region="eu-west-1"), "eu-west-1"))
    with pytest.raises(AttributeError):
        signer.sign(grant("broker-uploads"), now=frozen.replace(tzinfo=timezone.utc))
    assert signer._fast, "the fast path stays on"


def test_the_policy_expires_at_the_decisions_now_plus_its_lifetime(monkeypatch: pytest.MonkeyPatch) -> None:
    """One clock: the expiration is the ``now`` the decision used, whatever botocore's clock says."""
    credentials(monkeypatch, None)
    signer = Signer(make_s3_client(Settings(region="us-east-1"), "us-east-1"))
    now = datetime(2031, 5, 6, 7, 8, 9, 654321, tzinfo=timezone.utc)  # years from botocore's clock
    signed = signer.sign(grant("broker-uploads", expires_in=300), now=now)
    policy = decode_policy(signed.fields["policy"])
    assert policy["expiration"] == "2031-05-06T07:13:09Z"
    assert signed.expires_at == (now + timedelta(seconds=300)).replace(microsecond=0)
    assert signer._requests["broker-uploads"].auth is not None, "the fast path was taken"


def test_concurrent_forms_never_mix(monkeypatch: pytest.MonkeyPatch) -> None:
    """Threads (waitress) sign at once: each form's policy binds its own key, never another's."""
    import sys
    import threading

    credentials(monkeypatch, None)
    signer = Signer(make_s3_client(Settings(region="us-east-1"), "us-east-1"))
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible to expose shared state
    wrong: list[str] = []

    def work(n: int) -> None:
        for i in range(150):
            key = f"uploads/{n}/{i:032x}.png"
            try:
                post = signer.presigned_post("broker-uploads", key, {"acl": "private"}, [{"acl": "private"}], 60,
                                             now=datetime.now(timezone.utc))
                conditions = decode_policy(post["fields"]["policy"])["conditions"]
            except Exception as exc:  # noqa: BLE001 - a thread's failure must fail the test
                wrong.append(f"{key}: {type(exc).__name__}: {exc}")
                continue
            if post["fields"]["key"] != key or {"key": key} not in conditions:
                wrong.append(key)

    try:
        threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(previous)
    assert wrong == []


@pytest.mark.parametrize(("secret", "day", "region"), [
    ("fast-path-secret-never-logged", "20261128", "us-east-1"),
    ("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "20130524", "eu-west-1"),
    ("sécret+/=", "20261231", "ap-southeast-2"),
])
def test_the_cached_signing_key_is_botocores(secret: str, day: str, region: str) -> None:
    from botocore.auth import S3SigV4PostAuth
    from botocore.credentials import Credentials

    from broker.s3.fastpost import signing_key

    class Request:
        context = {"timestamp": f"{day}T120000Z"}

    auth = S3SigV4PostAuth(Credentials("AKID", secret).get_frozen_credentials(), "s3", region)
    policy = "eyJleHBpcmF0aW9uIjogIjIwMjYtMTEtMjhUMTQ6NTQ6MzFaIn0="
    assert hmac.new(signing_key(secret, day, region, "s3"), policy.encode(), hashlib.sha256).hexdigest() == \
        auth.signature(policy, Request())


def test_new_credentials_on_the_same_day_sign_with_their_own_key(monkeypatch: pytest.MonkeyPatch,
                                                                 frozen: datetime) -> None:
    g = grant("broker-uploads")
    signatures = []
    for secret in ("first-secret-of-the-day", "rotated-secret-same-day"):
        credentials(monkeypatch, None)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
        settings = Settings(region="us-east-1")
        signed = Signer(make_s3_client(settings, "us-east-1")).sign(g, now=frozen.replace(tzinfo=timezone.utc))
        expected = boto3_client(settings, "us-east-1").generate_presigned_post(
            Bucket=g.bucket, Key=g.key, Fields=dict(g.fields), Conditions=g.conditions(), ExpiresIn=g.expires_in)
        assert signed.fields["x-amz-signature"] == expected["fields"]["x-amz-signature"]
        signatures.append(signed.fields["x-amz-signature"])
    assert signatures[0] != signatures[1]
