"""Bucket CORS from the rules: origins, methods and headers per what the clients send."""
from __future__ import annotations

from typing import Any

import boto3
import pytest
from moto import mock_aws

from broker.deploy.cors import CorsError, all_cors_configurations, cors_configuration
from tests.deploy.helpers import make_rules

MULTIPART_BASE = ["authorization", "content-type", "x-amz-acl", "x-amz-content-sha256",
                  "x-amz-date", "x-amz-meta-*", "x-amz-security-token"]


@pytest.mark.parametrize("rules, methods, headers", [
    pytest.param([{"name": "p"}], ["POST"], None, id="forms-only-need-no-headers"),
    pytest.param([{"name": "p"}, {"name": "v", "key": "u/{client}/{profile}/{uuid}", "multipart": True}],
                 ["DELETE", "POST", "PUT"], MULTIPART_BASE, id="multipart-adds-put-delete-and-signed-headers"),
    pytest.param([{"name": "v", "multipart": True, "storage_class": "STANDARD_IA",
                   "encryption": {"kms_key_id": "alias/up"}}],
                 ["DELETE", "POST", "PUT"],
                 sorted(MULTIPART_BASE + ["x-amz-server-side-encryption",
                                          "x-amz-server-side-encryption-aws-kms-key-id",
                                          "x-amz-storage-class"]),
                 id="multipart-with-encryption-and-storage-class"),
    pytest.param([{"name": "v", "multipart": True, "cache_control": "no-cache",
                   "content_disposition": "attachment"}], ["DELETE", "POST", "PUT"],
                 sorted(MULTIPART_BASE + ["cache-control", "content-disposition"]),
                 id="multipart-with-object-headers"),
    pytest.param([{"name": "p", "encryption": "AES256"}], ["POST"], None, id="post-fields-are-not-headers"),
])
def test_cors_rule_table(rules: list[dict[str, Any]], methods: list[str], headers: Any) -> None:
    origins = ("https://app.example.com", "https://admin.example.com")
    config = cors_configuration(make_rules({"c1": rules}, origins=origins))
    (rule,) = config["CORSRules"]
    assert rule["AllowedOrigins"] == list(origins)
    assert rule["AllowedMethods"] == methods
    assert rule.get("AllowedHeaders") == headers
    assert rule["ExposeHeaders"] == ["ETag", "Location"]
    assert "*" not in rule["AllowedOrigins"] and rule.get("AllowedHeaders") != ["*"]


def test_bundled_rules(ruleset: Any) -> None:
    (rule,) = cors_configuration(ruleset)["CORSRules"]
    assert rule["AllowedOrigins"] == ["http://localhost:8000", "http://127.0.0.1:8000"]
    assert rule["AllowedMethods"] == ["DELETE", "POST", "PUT"]  # web-app/videos is multipart


def test_one_configuration_per_bucket() -> None:
    rules = make_rules({"c1": [{"name": "p"}, {"name": "v", "key": "v/{client}/{uuid}",
                                               "bucket": "video-bucket", "multipart": True}]})
    configs = all_cors_configurations(rules)
    assert sorted(configs) == ["up-bucket", "video-bucket"]
    assert configs["up-bucket"]["CORSRules"][0]["AllowedMethods"] == ["POST"]
    assert configs["video-bucket"]["CORSRules"][0]["AllowedMethods"] == ["DELETE", "POST", "PUT"]


@pytest.mark.parametrize("origins, bucket, message", [
    pytest.param((), None, "no cors.allowed_origins", id="no-origins"),
    pytest.param(("https://a.example",), "nope-bucket", "no rule writes to bucket 'nope-bucket'",
                 id="unknown-bucket"),
])
def test_cors_errors_say_what_to_do(origins: tuple[str, ...], bucket: str | None, message: str) -> None:
    with pytest.raises(CorsError, match=message):
        cors_configuration(make_rules({"c1": [{"name": "p"}]}, origins=origins), bucket)


def test_s3_accepts_the_configuration(ruleset: Any) -> None:
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="broker-uploads")
        config = cors_configuration(ruleset)
        s3.put_bucket_cors(Bucket="broker-uploads", CORSConfiguration=config)
        stored = s3.get_bucket_cors(Bucket="broker-uploads")["CORSRules"]
    assert stored == config["CORSRules"]
