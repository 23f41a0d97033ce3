"""The Lambda as deployed: ``BROKER_LEDGER=dynamodb://table`` against a real DynamoDB-API server.

``lambda_handler`` is imported with the environment template.yaml gives the function (here, the
table lives in dynalite): an API Gateway event gets a form whose grant is in the table, a quota
holds, and ``verify_handler`` settles the grant when the S3 event for its object arrives (the
object itself in moto's S3: only the API calls matter here).
"""
from __future__ import annotations

import importlib
import json
import sys
from typing import Any, Iterator

import pytest
import yaml

from broker.ledger import VERIFIED
from broker.ledger.dynamodb import DynamoLedger
from tests.conftest import ROOT
from tests.ledger.dynamo_fixtures import table_name
from tests.test_sniff import png

pytestmark = pytest.mark.store  # a real server (dynalite)


@pytest.fixture
def handler(dynalite: str, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, DynamoLedger]]:
    from moto import mock_aws

    table = table_name()
    DynamoLedger(table, endpoint_url=dynalite, region="us-east-1").create_table()
    doc = yaml.safe_load((ROOT / "rules.yaml").read_text())
    doc["clients"]["web-app"]["quota"] = {"uploads_per_hour": 2}
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump(doc))
    monkeypatch.setenv("BROKER_RULES", str(rules))
    monkeypatch.setenv("BROKER_LEDGER", f"dynamodb://{table}")
    monkeypatch.setenv("AWS_ENDPOINT_URL_DYNAMODB", dynalite)
    with mock_aws():  # S3 only: moto leaves the DynamoDB endpoint set above alone
        sys.modules.pop("lambda_handler", None)
        module = importlib.import_module("lambda_handler")
        module.BROKER.store._client.create_bucket(Bucket="broker-uploads")  # noqa: SLF001
        yield module, DynamoLedger(table, endpoint_url=dynalite, region="us-east-1")
    sys.modules.pop("lambda_handler", None)


def api_event(body: dict[str, Any]) -> dict[str, Any]:
    event = json.loads((ROOT / "tests" / "events" / "apigw-v2-http.json").read_text())
    event["body"] = json.dumps(body)
    event["isBase64Encoded"] = False
    event["headers"]["x-api-key"] = "demo-web-app-key"
    return event


def test_a_lambda_grant_is_in_the_table_and_its_quota_holds(handler: tuple[Any, DynamoLedger]) -> None:
    module, ledger = handler
    assert module.BROKER is not None and type(module.BROKER.ledger).__name__ == "DynamoLedger"
    data = png()
    answers = [module.handler(api_event({"filename": "me.png", "content_type": "image/png", "size": len(data)}))
               for _ in range(3)]
    assert [a["statusCode"] for a in answers] == [200, 200, 429]
    assert "Retry-After" in answers[2]["headers"] or "retry-after" in {k.lower() for k in answers[2]["headers"]}
    first = json.loads(answers[0]["body"])
    record = ledger.get(first["grant_id"])
    assert record is not None and record.key == first["key"] and record.declared_size == len(data)

    s3 = module.BROKER.store._client  # noqa: SLF001
    s3.put_object(Bucket="broker-uploads", Key=first["key"], Body=data, ContentType="image/png",
                  CacheControl="public, max-age=86400", ContentDisposition='inline; filename="me.png"')
    s3_event = {"Records": [{"eventSource": "aws:s3", "eventName": "ObjectCreated:Post", "awsRegion": "us-east-1",
                             "s3": {"bucket": {"name": "broker-uploads"}, "object": {"key": first["key"]}}}]}
    module.verify_handler(s3_event)
    module.verify_handler(s3_event)  # delivered twice: settled once
    settled = ledger.get(first["grant_id"])
    assert settled is not None and (settled.status, settled.size, settled.reused) == (VERIFIED, len(data), 0)
