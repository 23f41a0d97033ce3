"""Bucket notifications to an HTTP endpoint on Ceph RGW: an SNS-style topic with a ``push-endpoint``.

RGW serves a subset of the SNS API on its S3 port (``rgw_enable_apis`` must include
``notifications``); a topic names where events go, and a bucket's notification configuration
(the S3 API) names the topic, the event types and a key prefix. Each event is an S3 event
record (``{"Records": [...]}``) POSTed as JSON to the push endpoint.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from broker.s3.client import local_client


def subscribe_http(endpoint_url: str, access_key: str, secret_key: str, *, bucket: str, topic: str,
                   push_endpoint: str, prefixes: Sequence[str], region: str = "us-east-1",
                   persistent: bool = False) -> str:
    """Create (or update) ``topic`` pushing to ``push_endpoint`` and send ``bucket``'s object-created
    events under each of ``prefixes`` to it; returns the topic's ARN.

    Not ``persistent`` (the default): RGW posts each event while it handles the upload, before it
    answers the client. RGW 16.2 keeps a topic's first push endpoint when the topic is created again
    under the same name: give a new endpoint a new topic name."""
    import boto3
    from botocore.config import Config

    config = Config(signature_version="s3v4", s3={"addressing_style": "path"}, retries={"max_attempts": 3})
    sns = boto3.client("sns", endpoint_url=endpoint_url, aws_access_key_id=access_key,
                       aws_secret_access_key=secret_key, region_name=region, config=config)
    attributes = {"push-endpoint": push_endpoint, "persistent": "true" if persistent else "false"}
    arn = str(sns.create_topic(Name=topic, Attributes=attributes)["TopicArn"])
    s3 = local_client(endpoint_url, access_key, secret_key, region=region, retries={"max_attempts": 3})
    configurations: list[dict[str, Any]] = [
        {"Id": f"{topic}-{n}", "TopicArn": arn, "Events": ["s3:ObjectCreated:*"],
         "Filter": {"Key": {"FilterRules": [{"Name": "prefix", "Value": prefix}]}}}
        for n, prefix in enumerate(prefixes, 1)
    ]
    s3.put_bucket_notification_configuration(
        Bucket=bucket, NotificationConfiguration={"TopicConfigurations": configurations})
    return arn


__all__ = ["subscribe_http"]
