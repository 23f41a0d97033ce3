"""The generated policy under moto's IAM enforcement: allowed keys succeed, all else is denied.

moto checks IAM only once ``INITIAL_NO_AUTH_ACTION_COUNT`` actions have run unchecked; its
``enable_iam_authentication()`` sets that to zero for the block, after the set-up is done.
"""
from __future__ import annotations

import json
import struct
import zlib
from typing import Any, Callable, Iterator

import boto3
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws
from moto.core.authorization import enable_iam_authentication

from broker.deploy.iam import policy_document

OTHER = "someone-elses-bucket"
BUCKET = "broker-uploads"
Call = Callable[[Any], Any]


def put(key: str, bucket: str = BUCKET, **extra: Any) -> Call:
    return lambda s3: s3.put_object(Bucket=bucket, Key=key, Body=b"x", **extra)


def multipart(key: str) -> Call:
    def run(s3: Any) -> None:
        upload = s3.create_multipart_upload(Bucket=BUCKET, Key=key)["UploadId"]
        s3.list_parts(Bucket=BUCKET, Key=key, UploadId=upload)
        s3.abort_multipart_upload(Bucket=BUCKET, Key=key, UploadId=upload)
    return run


ALLOWED = [
    pytest.param(put("uploads/web-app/avatars/2026-11-28/0a1b.png"), id="web-app-avatars"),
    pytest.param(put("uploads/web-app/documents/2026-11-28/0a1b/cv.pdf"), id="web-app-documents"),
    pytest.param(put("uploads/mobile/photos/2026/11/0a1b.jpg"), id="mobile-photos"),
    pytest.param(put("partners/partner-acme/invoices/2026-11-28/0a1b.pdf"), id="acme-invoices"),
    pytest.param(put("partners/partner-acme/statements/2026/0a1b.pdf"), id="acme-statements"),
    pytest.param(multipart("uploads/web-app/videos/2026-11-28/0a1b.mp4"), id="videos-multipart"),
]
DENIED = [
    pytest.param(put("uploads/other-client/avatars/x.png"), id="other-client-prefix"),
    pytest.param(put("uploads/web-app/x.png"), id="above-the-profile-prefix"),
    pytest.param(put("uploads/web-app/secrets/x.png"), id="unknown-profile-prefix"),
    pytest.param(put("partners/partner-acme/x.pdf"), id="partner-root"),
    pytest.param(put("x.png"), id="bucket-root"),
    pytest.param(put("uploads/web-app/avatars/x.png", bucket=OTHER), id="other-bucket"),
    pytest.param(lambda s3: s3.get_object(Bucket=BUCKET, Key="uploads/web-app/avatars/seed.png"),
                 id="get-object"),
    pytest.param(lambda s3: s3.delete_object(Bucket=BUCKET, Key="uploads/web-app/avatars/seed.png"),
                 id="delete-object"),
    pytest.param(lambda s3: s3.put_object_acl(Bucket=BUCKET, Key="uploads/web-app/avatars/seed.png",
                                              ACL="public-read"), id="put-object-acl"),
    pytest.param(lambda s3: s3.list_objects_v2(Bucket=BUCKET), id="list-bucket"),
    pytest.param(lambda s3: s3.get_bucket_cors(Bucket=BUCKET), id="read-bucket-config"),
    pytest.param(multipart("uploads/web-app/avatars/x.png"), id="multipart-where-rule-forbids"),
]


@pytest.fixture(scope="module")
def as_signer(ruleset: Any) -> Iterator[Callable[[Call], None]]:
    """Run a call with the credentials of an IAM user holding only the generated policy."""
    with mock_aws():
        admin = boto3.client("s3", region_name="us-east-1")
        for bucket in (BUCKET, OTHER):
            admin.create_bucket(Bucket=bucket)
        admin.put_object(Bucket=BUCKET, Key="uploads/web-app/avatars/seed.png", Body=b"x")
        iam = boto3.client("iam", region_name="us-east-1")
        iam.create_user(UserName="signer")
        iam.put_user_policy(UserName="signer", PolicyName="upload-signer",
                            PolicyDocument=json.dumps(policy_document(ruleset)))
        key = iam.create_access_key(UserName="signer")["AccessKey"]
        s3 = boto3.client("s3", region_name="us-east-1", aws_access_key_id=key["AccessKeyId"],
                          aws_secret_access_key=key["SecretAccessKey"])

        def run(call: Call) -> None:
            with enable_iam_authentication():
                call(s3)

        yield run


@pytest.mark.parametrize("call", ALLOWED)
def test_allowed_keys_succeed(as_signer: Callable[[Call], None], call: Call) -> None:
    as_signer(call)


@pytest.mark.parametrize("call", DENIED)
def test_everything_else_is_denied(as_signer: Callable[[Call], None], call: Call) -> None:
    with pytest.raises(ClientError) as exc:
        as_signer(call)
    assert exc.value.response["Error"]["Code"] == "AccessDenied"


# ----------------------------------------------------------------- the verifier's role



def png() -> bytes:
    """A real 1x1 PNG: the verifier sniffs it as image/png."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00\x00\x00\x00")) + chunk(b"IEND", b""))


PNG = png()
GOOD = "uploads/web-app/avatars/2026-11-28/" + "a" * 32 + ".png"
BAD = "uploads/web-app/avatars/2026-11-28/" + "b" * 32 + ".png"
SEED = "uploads/web-app/avatars/seed.png"

VERIFIER_ALLOWED = [
    pytest.param(lambda s3: s3.head_object(Bucket=BUCKET, Key=SEED), id="head"),
    pytest.param(lambda s3: s3.get_object(Bucket=BUCKET, Key=SEED, Range="bytes=0-9"), id="ranged-get"),
    pytest.param(lambda s3: s3.get_object_tagging(Bucket=BUCKET, Key=SEED), id="read-tags"),
    pytest.param(lambda s3: s3.put_object_tagging(Bucket=BUCKET, Key=SEED, Tagging={"TagSet": [
        {"Key": "broker-verdict", "Value": "verified"}]}), id="tag"),
    pytest.param(lambda s3: s3.copy_object(Bucket=BUCKET, Key="quarantine/" + SEED,
                                           CopySource={"Bucket": BUCKET, "Key": SEED},
                                           TaggingDirective="REPLACE", Tagging="broker-verdict=rejected"),
                 id="copy-to-quarantine"),
    pytest.param(lambda s3: s3.delete_object(Bucket=BUCKET, Key="partners/partner-acme/invoices/x.pdf"),
                 id="delete-under-rule-prefix"),
]
VERIFIER_DENIED = [
    pytest.param(put(SEED), id="write-the-granted-key"),
    pytest.param(put("uploads/web-app/avatars/new.png"), id="write-under-a-rule-prefix"),
    pytest.param(put("x.png"), id="write-the-bucket-root"),
    pytest.param(put("quarantine-not/x.png"), id="write-beside-the-quarantine"),
    pytest.param(put("quarantine/x.png", bucket=OTHER), id="write-another-buckets-quarantine"),
    pytest.param(lambda s3: s3.copy_object(Bucket=BUCKET, Key="uploads/web-app/documents/x.png",
                                           CopySource={"Bucket": BUCKET, "Key": SEED}),
                 id="copy-outside-the-quarantine"),
    pytest.param(lambda s3: s3.get_object(Bucket=OTHER, Key=SEED), id="read-another-bucket"),
    pytest.param(lambda s3: s3.get_object(Bucket=BUCKET, Key="other/secret.txt"), id="read-outside-rule-prefixes"),
    pytest.param(lambda s3: s3.delete_object(Bucket=BUCKET, Key="other/secret.txt"),
                 id="delete-outside-rule-prefixes"),
    pytest.param(lambda s3: s3.put_object_acl(Bucket=BUCKET, Key=SEED, ACL="public-read"), id="acl"),
    pytest.param(lambda s3: s3.list_objects_v2(Bucket=BUCKET), id="list-bucket"),
    pytest.param(multipart("quarantine/x.bin"), id="multipart"),
]


@pytest.fixture(scope="module")
def verifier_env(ruleset: Any) -> Iterator[tuple[Any, Callable[[Call], None]]]:
    """An S3 client of an IAM user holding only the verifier's policy, and a runner under IAM checks."""
    from broker.deploy.iam import verifier_policy_document

    with mock_aws():
        admin = boto3.client("s3", region_name="us-east-1")
        for bucket in (BUCKET, OTHER):
            admin.create_bucket(Bucket=bucket)
        for bucket, key in ((BUCKET, SEED), (OTHER, SEED), (BUCKET, "other/secret.txt"),
                            (BUCKET, "partners/partner-acme/invoices/x.pdf")):
            admin.put_object(Bucket=bucket, Key=key, Body=PNG, ContentType="image/png")
        iam = boto3.client("iam", region_name="us-east-1")
        iam.create_user(UserName="verifier")
        iam.put_user_policy(UserName="verifier", PolicyName="upload-verifier",
                            PolicyDocument=json.dumps(verifier_policy_document(ruleset)))
        key = iam.create_access_key(UserName="verifier")["AccessKey"]
        s3 = boto3.client("s3", region_name="us-east-1", aws_access_key_id=key["AccessKeyId"],
                          aws_secret_access_key=key["SecretAccessKey"])

        def run(call: Call) -> None:
            with enable_iam_authentication():
                call(s3)

        yield admin, s3, run


@pytest.mark.parametrize("call", VERIFIER_ALLOWED)
def test_verifier_may_judge_tag_quarantine_and_remove(verifier_env: Any, call: Call) -> None:
    verifier_env[2](call)


@pytest.mark.parametrize("call", VERIFIER_DENIED)
def test_verifier_cannot_write_outside_the_quarantine_or_read_elsewhere(verifier_env: Any, call: Call) -> None:
    with pytest.raises(ClientError) as exc:
        verifier_env[2](call)
    assert exc.value.response["Error"]["Code"] == "AccessDenied"


def test_the_real_verifier_works_with_only_its_policy(verifier_env: Any, rules_text: str) -> None:
    """broker.verifier through S3Store with the verifier's credentials: tags one object, quarantines another."""
    import io

    from broker.audit import AuditLog
    from broker.config.sources import RulesProvider, StaticSource
    from broker.s3.store import S3Store
    from broker.verifier import Verifier
    from tests.conftest import NOW

    admin, s3, _ = verifier_env
    admin.put_object(Bucket=BUCKET, Key=GOOD, Body=PNG, ContentType="image/png",  # as the avatars rule signs
                     CacheControl="public, max-age=86400", ContentDisposition="inline")
    admin.put_object(Bucket=BUCKET, Key=BAD, Body=b"<html><script>alert(1)</script>", ContentType="image/png")
    rules = RulesProvider(StaticSource(rules_text), reload_seconds=3600)
    rules.refresh()
    verifier = Verifier(rules, S3Store(s3), AuditLog(stream=io.StringIO()), clock=lambda: NOW)
    with enable_iam_authentication():
        good = verifier.verify_object(BUCKET, GOOD, source="s3-event")
        bad = verifier.verify_object(BUCKET, BAD, source="s3-event")
    assert (good.status, good.action) == ("verified", "tagged"), good.verdict
    assert (bad.status, bad.action, bad.quarantine_key) == ("rejected", "quarantined", "quarantine/" + BAD), bad
    tags = admin.get_object_tagging(Bucket=BUCKET, Key=GOOD)["TagSet"]
    assert {"Key": "broker-verdict", "Value": "verified"} in tags
    moved = admin.get_object_tagging(Bucket=BUCKET, Key="quarantine/" + BAD)["TagSet"]
    assert {"Key": "broker-verdict", "Value": "rejected"} in moved
    with pytest.raises(ClientError):
        admin.head_object(Bucket=BUCKET, Key=BAD)
