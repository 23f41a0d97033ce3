"""The generated policy under moto's IAM enforcement: allowed keys succeed, all else is denied.

moto checks IAM only once ``INITIAL_NO_AUTH_ACTION_COUNT`` actions have run unchecked; its
``enable_iam_authentication()`` sets that to zero for the block, after the set-up is done.
"""
from __future__ import annotations

import json
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
