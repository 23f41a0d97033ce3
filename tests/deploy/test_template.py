"""template.yaml: cfn-lint, in step with rules.yaml, SAM -> CloudFormation, deployed into moto.

moto's CloudFormation has no SAM transform, so the test translates ``template.yaml`` with
aws-sam-translator (the library ``sam deploy`` and CloudFormation itself use) and deploys the
result. moto models the bucket (name, encryption), the ledger table (keys, billing), the roles
and policies, the log groups, both functions, the signer's published version and the invoke
permissions; it skips the HTTP API resources, the alarms and the metric filter, ignores the
bucket's CORS, ownership controls, public access block, lifecycle and notifications and the
table's TTL and point-in-time recovery, and has no Lambda alias, CodeDeploy, dashboard or
Firehose at all. So those are asserted on the translated template instead (the alias, the
CodeDeploy resources and the dashboard are left out of what moto deploys, calls to the alias
going to the function), and its resources are checked for a circular dependency.
"""
from __future__ import annotations

import ast
import io
import json
import os
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path
from typing import Any, Iterator

import boto3
from botocore.exceptions import ClientError
import pytest
from moto import mock_aws

from broker.deploy.cors import cors_rule
from broker.deploy.iam import (LEDGER_ACTIONS, ledger_policy_document, merge_prefixes, policy_document,
                               verifier_policy_document)
from broker.deploy.template import TemplateError, notification_prefixes, set_code_uri, update_template
from broker.core.keys import rule_prefix
from tests.conftest import ROOT
from tests.graphs import cycles

TEMPLATE = ROOT / "template.yaml"
CODE_URI = "s3://deploy-artifacts/lambda.zip"
RULES_LOCATION = "s3://ops-config/broker/rules.yaml"
CFN_LINT = str(Path(sys.executable).parent / "cfn-lint")  # the dev extra's console script


def translate(text: str) -> dict[str, Any]:
    """SAM -> plain CloudFormation, as the AWS::Serverless transform does."""
    from samtranslator.translator.transform import transform
    from samtranslator.yaml_helper import yaml_parse

    class NoManagedPolicies:  # the template names no managed policies
        def load(self, *args: Any, **kwargs: Any) -> dict[str, str]:
            return {}

    old = os.environ.get("AWS_DEFAULT_REGION")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    try:
        return transform(yaml_parse(set_code_uri(text, CODE_URI)), {}, NoManagedPolicies())
    finally:
        if old is None:
            os.environ.pop("AWS_DEFAULT_REGION", None)


@pytest.fixture(scope="module")
def cfn() -> dict[str, Any]:
    return translate(TEMPLATE.read_text())


def resources_of(cfn: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    return {name: r for name, r in cfn["Resources"].items() if r["Type"] == kind}


def test_template_passes_cfn_lint_which_catches_a_broken_copy(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text(TEMPLATE.read_text().replace("MemorySize: 512", "MemorySize: 512\n      Memory: 1"))
    proc = subprocess.run([CFN_LINT, "--format", "parseable", str(TEMPLATE), str(broken)],
                          capture_output=True, text=True, timeout=240)
    findings = proc.stdout.splitlines()
    assert findings, "cfn-lint found nothing, not even in the broken copy"
    assert all(line.startswith(str(broken)) for line in findings), proc.stdout + proc.stderr
    assert any("Memory" in line for line in findings)


def test_committed_template_is_what_rules_yaml_generates(ruleset: Any) -> None:
    text = TEMPLATE.read_text()
    assert update_template(text, ruleset) == text, (
        "template.yaml is out of step with rules.yaml: run "
        "`broker iam-policy rules.yaml --update-template template.yaml`")


@pytest.mark.parametrize("edit, message", [
    pytest.param(lambda t: t.replace("# END GENERATED signer-policy", "# (end)"), "no matching", id="no-end"),
    pytest.param(lambda t: t.replace("BEGIN GENERATED bucket-cors", "BEGIN GENERATED bucket-cars"),
                 "unknown generated block 'bucket-cars'", id="unknown-block"),
    pytest.param(lambda t: t.replace("# BEGIN GENERATED api-origins", "#"), "api-origins",
                 id="missing-block"),
])
def test_update_template_errors(ruleset: Any, edit: Any, message: str) -> None:
    with pytest.raises(TemplateError, match=message):
        update_template(edit(TEMPLATE.read_text()), ruleset)


@pytest.mark.parametrize("acl, bucket, refused", [
    pytest.param(None, None, False, id="no-acl"),
    pytest.param("bucket-owner-full-control", None, False, id="owner-full-control"),
    pytest.param("private", None, True, id="private"),
    pytest.param("public-read", None, True, id="public-read"),
    pytest.param("public-read", "own-acl-bucket", False, id="another-bucket"),
])
def test_acls_the_stacks_bucket_refuses_are_refused(acl: str | None, bucket: str | None, refused: bool) -> None:
    from broker.deploy.template import acl_refusals
    from tests.deploy.helpers import make_rules

    rule: dict[str, Any] = {"name": "p", "key": "in/{client}/{profile}/{uuid}"}
    if acl is not None:
        rule["acl"] = acl
    if bucket is not None:
        rule["bucket"] = bucket
    rules = make_rules({"c1": [rule, {"name": "q", "key": "in/{client}/{profile}/{uuid}"}]})
    found = acl_refusals(rules)
    assert bool(found) is refused
    if refused:
        assert found == [f"$.clients.c1.rules[0].acl: '{acl}' on bucket 'up-bucket', whose ACLs are disabled "
                         "(BucketOwnerEnforced): S3 would refuse every upload; remove acl from the rule "
                         "(and from defaults), or use bucket-owner-full-control"]
        with pytest.raises(TemplateError, match="the rules set ACLs the stack's bucket refuses"):
            update_template(TEMPLATE.read_text(), rules)
    else:
        update_template(TEMPLATE.read_text(), rules)


def test_forms_carry_no_acl_unless_the_rule_names_one(ruleset: Any) -> None:
    from dataclasses import replace

    from broker.core.rules import object_fields

    rules = [r for c in ruleset.clients.values() for r in c.rules.values()]
    assert rules and all(r.acl is None for r in rules)  # the sample deploys onto the stack's bucket
    assert "acl" not in object_fields(rules[0], "image/png", "a.png", {})
    named = replace(rules[0], acl="bucket-owner-full-control")
    assert object_fields(named, "image/png", "a.png", {})["acl"] == "bucket-owner-full-control"


def test_set_code_uri_requires_exactly_one() -> None:
    with pytest.raises(TemplateError, match="found 0"):
        set_code_uri("Resources: {}\n", "x.zip")


# ----------------------------------------------------------------- the translated template


def test_bucket_is_private_encrypted_and_cleans_up_multipart(cfn: dict[str, Any], ruleset: Any) -> None:
    props = cfn["Resources"]["UploadBucket"]["Properties"]
    assert props["OwnershipControls"] == {"Rules": [{"ObjectOwnership": "BucketOwnerEnforced"}]}  # ACLs off
    assert props["PublicAccessBlockConfiguration"] == dict.fromkeys(
        ["BlockPublicAcls", "BlockPublicPolicy", "IgnorePublicAcls", "RestrictPublicBuckets"], True)
    enc = props["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]
    assert enc["ServerSideEncryptionByDefault"] == {"SSEAlgorithm": "AES256"}
    lifecycle, quarantine = props["LifecycleConfiguration"]["Rules"]
    assert lifecycle["Status"] == "Enabled"
    assert lifecycle["AbortIncompleteMultipartUpload"] == {"DaysAfterInitiation": 1}
    assert quarantine == {"Id": "expire-quarantine", "Status": "Enabled", "Prefix": ruleset.quarantine_prefix,
                          "ExpirationInDays": {"Ref": "QuarantineRetentionDays"}}
    assert cfn["Parameters"]["QuarantineRetentionDays"]["Default"] == 30
    (cors,) = props["CorsConfiguration"]["CorsRules"]
    expected = cors_rule(ruleset, ruleset.bucket)
    assert cors["AllowedOrigins"] == list(ruleset.cors_origins)
    assert cors["AllowedMethods"] == expected["AllowedMethods"]
    assert cors["AllowedHeaders"] == expected["AllowedHeaders"]
    assert cors["ExposedHeaders"] == ["ETag", "Location"]
    params = cfn["Parameters"]
    assert params["UploadBucketName"]["Default"] == ruleset.bucket


def test_the_rules_are_the_one_source_of_cors_origins(cfn: dict[str, Any], ruleset: Any) -> None:
    from tests.deploy.helpers import make_rules

    res = cfn["Resources"]
    assert res["HttpApi"]["Properties"]["CorsConfiguration"]["AllowOrigins"] == list(ruleset.cors_origins)
    assert "AllowedOrigins" not in cfn["Parameters"]  # nothing at deploy time can make them differ
    origins = ("https://app.example.com", "https://admin.example.com")
    other = translate(update_template(TEMPLATE.read_text(), make_rules({"c1": [{"name": "p"}]}, origins=origins)))
    assert other["Resources"]["HttpApi"]["Properties"]["CorsConfiguration"]["AllowOrigins"] == list(origins)
    (bucket_rule,) = other["Resources"]["UploadBucket"]["Properties"]["CorsConfiguration"]["CorsRules"]
    assert bucket_rule["AllowedOrigins"] == list(origins)


def test_no_long_lived_keys_anywhere(cfn: dict[str, Any]) -> None:
    assert not resources_of(cfn, "AWS::IAM::AccessKey") and not resources_of(cfn, "AWS::IAM::User")
    common = {"BROKER_RULES", "BROKER_RULES_RELOAD_SECONDS", "BROKER_LEDGER"}
    tokens = {"BROKER_GRANT_SECRET", "BROKER_SESSION_SECRET"}
    signer = cfn["Resources"]["SignerFunction"]["Properties"]["Environment"]["Variables"]
    verifier = cfn["Resources"]["VerifierFunction"]["Properties"]["Environment"]["Variables"]
    assert set(signer) == common | tokens and set(verifier) == common  # the verifier issues no token
    text = json.dumps(cfn)
    assert "AWS_SECRET_ACCESS_KEY" not in text and "AWS_ACCESS_KEY_ID" not in text


def test_token_secrets_are_shared_by_every_instance_and_never_in_the_template(cfn: dict[str, Any]) -> None:
    from broker.config import Settings

    res = cfn["Resources"]
    env = res["SignerFunction"]["Properties"]["Environment"]["Variables"]
    for name, secret in (("BROKER_GRANT_SECRET", "GrantTokenSecret"), ("BROKER_SESSION_SECRET", "SessionTokenSecret")):
        assert env[name] == {"Fn::Sub": f"{{{{resolve:secretsmanager:${{{secret}}}:SecretString}}}}"}
        generated = res[secret]["Properties"]["GenerateSecretString"]
        assert generated["PasswordLength"] >= 32 and generated["ExcludePunctuation"] is True
    # what Secrets Manager generates is a secret the broker accepts (at least 32 bytes)
    settings = Settings.from_env({"BROKER_GRANT_SECRET": "a" * 64, "BROKER_SESSION_SECRET": "b" * 64})
    assert settings.grant_secret and settings.session_secret


def test_function_settings(cfn: dict[str, Any]) -> None:
    props = cfn["Resources"]["SignerFunction"]["Properties"]
    assert props["Handler"] == "lambda_handler.handler"
    assert props["Runtime"].startswith("python3.")
    assert 256 <= props["MemorySize"] <= 1024 and 3 <= props["Timeout"] <= 29
    assert props["Role"] == {"Fn::GetAtt": ["SignerRole", "Arn"]}
    assert props["Code"] == {"S3Bucket": "deploy-artifacts", "S3Key": "lambda.zip"}
    assert props["LoggingConfig"]["LogGroup"] == {"Ref": "SignerLogGroup"}
    log_group = cfn["Resources"]["SignerLogGroup"]["Properties"]
    assert log_group["RetentionInDays"] == {"Ref": "LogRetentionDays"}


def test_http_api_with_cors_live_stage_and_optional_jwt(cfn: dict[str, Any]) -> None:
    res = cfn["Resources"]
    api = res["HttpApi"]["Properties"]
    assert api["ProtocolType"] == "HTTP"
    assert "x-api-key" in api["CorsConfiguration"]["AllowHeaders"]
    assert res["LiveStage"]["Properties"]["StageName"] == "live"
    assert res["LiveStage"]["Properties"]["AutoDeploy"] is True
    assert res["JwtAuthorizer"]["Condition"] == "UseJwt"
    assert res["JwtAuthorizer"]["Properties"]["AuthorizerType"] == "JWT"
    for name in ("DefaultRoute", "UploadsRoute"):
        route = res[name]["Properties"]
        assert route["AuthorizationType"] == {
            "Fn::If": ["UseJwt", "JWT", {"Fn::If": ["UseLambdaAuthorizer", "CUSTOM", "NONE"]}]}
        assert route["AuthorizerId"] == {"Fn::If": ["UseJwt", {"Ref": "JwtAuthorizer"}, {
            "Fn::If": ["UseLambdaAuthorizer", {"Ref": "LambdaAuthorizer"}, {"Ref": "AWS::NoValue"}]}]}
    assert res["PreflightRoute"]["Properties"]["AuthorizationType"] == "NONE"
    assert res["SignerIntegration"]["Properties"]["PayloadFormatVersion"] == "2.0"


def test_optional_lambda_authorizer(cfn: dict[str, Any]) -> None:
    res = cfn["Resources"]
    auth = res["LambdaAuthorizer"]
    assert auth["Condition"] == "UseLambdaAuthorizer"
    assert cfn["Conditions"]["UseLambdaAuthorizer"] == {"Fn::Not": [{"Fn::Equals": [{"Ref": "LambdaAuthorizerArn"}, ""]}]}
    props = auth["Properties"]
    assert (props["AuthorizerType"], props["AuthorizerPayloadFormatVersion"], props["EnableSimpleResponses"]) == (
        "REQUEST", "2.0", True)
    assert "${LambdaAuthorizerArn}/invocations" in props["AuthorizerUri"]["Fn::Sub"]
    permission = res["LambdaAuthorizerInvokePermission"]
    assert permission["Condition"] == "UseLambdaAuthorizer"
    assert permission["Properties"]["FunctionName"] == {"Ref": "LambdaAuthorizerArn"}
    assert permission["Properties"]["SourceArn"]["Fn::Sub"].endswith("${HttpApi}/authorizers/${LambdaAuthorizer}")
    # the broker reads a Lambda authorizer's principal from context.principalId (simple responses)
    from broker.adapters.apigw import _principals
    assert _principals({"lambda": {"principalId": "partner-gateway"}}) == ("principal:partner-gateway",)
    # JWT and Lambda authorizer together are refused before anything is created
    (rule,) = [r for r in cfn["Rules"].values() if "RuleCondition" in r]
    assert rule["RuleCondition"] == {"Fn::Not": [{"Fn::Equals": [{"Ref": "JwtIssuer"}, ""]}]}
    assert rule["Assertions"][0]["Assert"] == {"Fn::Equals": [{"Ref": "LambdaAuthorizerArn"}, ""]}


def test_throttling_per_stage_and_for_the_signing_route(cfn: dict[str, Any]) -> None:
    stage = cfn["Resources"]["LiveStage"]
    props = stage["Properties"]
    assert props["DefaultRouteSettings"] == {"ThrottlingRateLimit": {"Ref": "ThrottlingRateLimit"},
                                             "ThrottlingBurstLimit": {"Ref": "ThrottlingBurstLimit"}}
    assert props["RouteSettings"] == {"POST /uploads": {
        "ThrottlingRateLimit": {"Ref": "UploadsThrottlingRateLimit"},
        "ThrottlingBurstLimit": {"Ref": "UploadsThrottlingBurstLimit"}}}
    assert cfn["Resources"]["UploadsRoute"]["Properties"]["RouteKey"] == "POST /uploads"
    assert "UploadsRoute" in stage["DependsOn"]  # a route setting may only name an existing route


def test_json_access_log_of_every_request(cfn: dict[str, Any]) -> None:
    res = cfn["Resources"]
    settings = res["LiveStage"]["Properties"]["AccessLogSettings"]
    assert settings["DestinationArn"] == {"Fn::GetAtt": ["ApiAccessLogGroup", "Arn"]}
    line = json.loads(settings["Format"])  # one JSON object a line
    assert line["requestId"] == "$context.requestId" and line["status"] == "$context.status"
    for field in ("errorType", "authorizerError", "integrationError", "routeKey", "ip"):
        assert line[field].startswith("$context."), field  # 429s and authorizer refusals leave a trace
    assert not any("header" in value.lower() for value in line.values())  # never a key or a token
    # nor the path: a browser's /s/<token>/... path holds its session token
    assert not any("$context.path" in value for value in line.values()), line
    assert res["ApiAccessLogGroup"]["Properties"]["RetentionInDays"] == {"Ref": "LogRetentionDays"}


ALARMS = {  # logical id: (namespace, metric, dimensions)
    "SignerErrorsAlarm": ("AWS/Lambda", "Errors", {"FunctionName": {"Ref": "SignerFunction"}}),
    "SignerThrottlesAlarm": ("AWS/Lambda", "Throttles", {"FunctionName": {"Ref": "SignerFunction"}}),
    "VerifierErrorsAlarm": ("AWS/Lambda", "Errors", {"FunctionName": {"Ref": "VerifierFunction"}}),
    "Api5xxAlarm": ("AWS/ApiGateway", "5xx", {"ApiId": {"Ref": "HttpApi"}, "Stage": "live"}),
    "BrokerServerErrorsAlarm": ("UploadBroker", "Errors", {"status_class": "5xx"}),
    "RulesReloadFailedAlarm": ("UploadBroker", "RulesReloadFailed", {"service": "broker"}),
    "StartupFailedAlarm": ("UploadBroker", "StartupFailed", {"service": "broker"}),
    "VerifierRejectionsAlarm": ("UploadBroker", "VerifierRejections", {}),
}


def test_alarms_watch_the_metrics_and_notify_the_optional_topic(cfn: dict[str, Any]) -> None:
    from broker.metrics import NAMESPACE

    alarms = resources_of(cfn, "AWS::CloudWatch::Alarm")
    assert set(alarms) == set(ALARMS)
    for name, (namespace, metric, dimensions) in ALARMS.items():
        props = alarms[name]["Properties"]
        assert (props["Namespace"], props["MetricName"]) == (namespace, metric), name
        assert {d["Name"]: d["Value"] for d in props.get("Dimensions", [])} == dimensions, name
        assert props["Statistic"] == "Sum" and props["TreatMissingData"] == "notBreaching"
        assert props["ComparisonOperator"] == "GreaterThanOrEqualToThreshold"
        actions = {"Fn::If": ["NotifyAlarms", [{"Ref": "AlarmTopicArn"}], {"Ref": "AWS::NoValue"}]}
        assert props["AlarmActions"] == props["OKActions"] == actions, name
    from broker.metrics import ERROR_DIMENSION_SETS, RULES_RELOAD_FAILED, SERVICE, STARTUP_FAILED

    # the broker's EMF lines land where the alarms look: namespace, names and dimension sets
    assert NAMESPACE == "UploadBroker"
    assert (RULES_RELOAD_FAILED, STARTUP_FAILED, SERVICE) == ("RulesReloadFailed", "StartupFailed", {"service": "broker"})
    assert ["status_class"] in ERROR_DIMENSION_SETS
    assert cfn["Conditions"]["NotifyAlarms"] == {"Fn::Not": [{"Fn::Equals": [{"Ref": "AlarmTopicArn"}, ""]}]}
    assert cfn["Parameters"]["AlarmTopicArn"]["Default"] == ""
    assert alarms["VerifierRejectionsAlarm"]["Properties"]["Threshold"] == {"Ref": "VerifierRejectionThreshold"}
    metric_filter = cfn["Resources"]["VerifierRejectionsMetricFilter"]["Properties"]
    assert metric_filter["LogGroupName"] == {"Ref": "VerifierLogGroup"}
    assert metric_filter["FilterPattern"] == '{ $.event = "verification" && $.verdict = "rejected" }'
    (transform,) = metric_filter["MetricTransformations"]
    assert (transform["MetricNamespace"], transform["MetricName"]) == ("UploadBroker", "VerifierRejections")


def test_the_filter_patterns_match_the_lines_the_broker_writes() -> None:
    """The metric and export filters name fields the audit schema has, with the values it allows."""
    schema = json.loads((ROOT / "schemas" / "audit.schema.json").read_text())
    text = json.dumps(schema)
    for field in ("request_id", "decision", "event", "verdict"):
        assert f'"{field}"' in text, field
    assert '"rejected"' in text and '"verification"' in text


def test_the_export_filter_passes_audit_lines_and_no_metric_line(make_broker: Any, audit_stream: Any) -> None:
    """``{ $.request_id = "*" && $.decision = "*" }`` on what the signer really writes to stdout."""
    from broker.metrics import EmfLines
    from tests.conftest import post_json

    broker = make_broker()
    broker.metrics = EmfLines()  # as on Lambda
    post_json(broker, "/uploads", {"filename": "me.png", "content_type": "image/png", "size": 1000})
    post_json(broker, "/uploads", {"filename": "me.exe", "content_type": "application/x-msdownload"})
    post_json(broker, "/uploads", {"filename": 7})  # a 400: an error answer, with its own metric line
    lines = [json.loads(line) for line in audit_stream.getvalue().splitlines()]
    passed = [rec for rec in lines if "request_id" in rec and "decision" in rec]
    metrics = [rec for rec in lines if "_aws" in rec]
    assert {rec["decision"] for rec in passed} == {"allowed", "denied", "error"}
    assert len(metrics) == 3 and len(passed) + len(metrics) == len(lines)
    assert not any(rec in passed for rec in metrics)


def test_dashboard_shows_the_alarms_and_the_metrics(cfn: dict[str, Any]) -> None:
    body, names = cfn["Resources"]["Dashboard"]["Properties"]["DashboardBody"]["Fn::Sub"]
    arns = [item["Fn::Sub"] for item in names["Alarms"]["Fn::Join"][1]]
    assert sorted(arns) == sorted(f'"${{{name}.Arn}}"' for name in ALARMS)
    stand_in = {"Alarms": ", ".join(f'"arn:{n}"' for n in ALARMS)}
    parsed = json.loads(body.replace("${Alarms}", stand_in["Alarms"]))  # the rest is Sub variables in strings
    titles = [w["properties"]["title"] for w in parsed["widgets"]]
    assert titles[0] == "Alarms" and len(titles) == 7
    metrics = {m[1] for w in parsed["widgets"] if w["type"] == "metric" for m in w["properties"]["metrics"]
               if m[0] != "."}
    assert {"Count", "Errors", "RulesReloadFailed", "StartupFailed", "VerifierRejections", "Latency"} <= metrics


def test_canary_deployments_through_an_alias_rolled_back_by_the_alarms(cfn: dict[str, Any]) -> None:
    res = cfn["Resources"]
    (alias_name,) = resources_of(cfn, "AWS::Lambda::Alias")
    alias = res[alias_name]
    assert alias["Properties"]["Name"] == "live"
    assert alias["UpdatePolicy"]["CodeDeployLambdaAliasUpdate"]["DeploymentGroupName"] == {
        "Ref": "SignerFunctionDeploymentGroup"}
    group = res["SignerFunctionDeploymentGroup"]["Properties"]
    assert group["AutoRollbackConfiguration"]["Enabled"] is True
    assert "DEPLOYMENT_STOP_ON_ALARM" in group["AutoRollbackConfiguration"]["Events"]
    assert [a["Name"] for a in group["AlarmConfiguration"]["Alarms"]] == [
        {"Ref": "SignerErrorsAlarm"}, {"Ref": "StartupFailedAlarm"}, {"Ref": "BrokerServerErrorsAlarm"},
        {"Ref": "Api5xxAlarm"}]
    assert cfn["Parameters"]["DeploymentStrategy"]["Default"] == "Canary10Percent5Minutes"
    assert group["DeploymentConfigName"]["Fn::Sub"][1] == {"ConfigName": "Canary10Percent5Minutes"}
    # API Gateway calls the alias, never $LATEST, and may call it
    assert res["SignerIntegration"]["Properties"]["IntegrationUri"] == {"Ref": alias_name}
    assert res["ApiInvokePermission"]["Properties"]["FunctionName"] == {"Ref": alias_name}
    assert cfn["Outputs"]["SignerAliasArn"]["Value"] == {"Ref": alias_name}


def test_optional_tracing(cfn: dict[str, Any]) -> None:
    res = cfn["Resources"]
    for function in ("SignerFunction", "VerifierFunction"):
        assert res[function]["Properties"]["TracingConfig"] == {"Mode": {"Fn::If": ["UseTracing", "Active", "PassThrough"]}}
    policy = res["TracingPolicy"]
    assert policy["Condition"] == "UseTracing"
    assert policy["Properties"]["Roles"] == [{"Ref": "SignerRole"}, {"Ref": "VerifierRole"}]
    assert policy["Properties"]["PolicyDocument"]["Statement"][0]["Action"] == [
        "xray:PutTraceSegments", "xray:PutTelemetryRecords"]
    assert cfn["Parameters"]["Tracing"]["Default"] == "false"


def test_optional_audit_export(cfn: dict[str, Any]) -> None:
    res = cfn["Resources"]
    export = {name for name, r in res.items() if r.get("Condition") == "ExportAudit"}
    assert export == {"AuditFirehoseRole", "AuditDeliveryStream", "AuditSubscriptionRole",
                      "SignerAuditExport", "VerifierAuditExport"}
    assert cfn["Parameters"]["AuditArchiveBucketName"]["Default"] == ""
    signer = res["SignerAuditExport"]["Properties"]
    assert signer["LogGroupName"] == {"Ref": "SignerLogGroup"}
    assert signer["FilterPattern"] == '{ $.request_id = "*" && $.decision = "*" }'  # audit lines, not EMF or ops
    assert res["VerifierAuditExport"]["Properties"]["LogGroupName"] == {"Ref": "VerifierLogGroup"}
    stream = res["AuditDeliveryStream"]["Properties"]["ExtendedS3DestinationConfiguration"]
    assert stream["Prefix"].startswith("audit/") and stream["CompressionFormat"] == "UNCOMPRESSED"
    role = res["AuditFirehoseRole"]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"][0]
    assert role["Resource"][1] == {"Fn::Sub": "arn:${AWS::Partition}:s3:::${AuditArchiveBucketName}/audit*"}
    put = res["AuditSubscriptionRole"]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"][0]
    assert put["Action"] == ["firehose:PutRecord", "firehose:PutRecordBatch"]


def test_verifier_function_settings(cfn: dict[str, Any]) -> None:
    res = cfn["Resources"]
    props = res["VerifierFunction"]["Properties"]
    signer = res["SignerFunction"]["Properties"]
    assert props["Handler"] == "lambda_handler.verify_handler"
    assert (props["Code"], props["Runtime"]) == (signer["Code"], signer["Runtime"])  # the same zip
    assert 128 <= props["MemorySize"] <= 512 and 10 <= props["Timeout"] <= 120
    assert props["Role"] == {"Fn::GetAtt": ["VerifierRole", "Arn"]} != signer["Role"]
    tokens = ("BROKER_GRANT_SECRET", "BROKER_SESSION_SECRET")
    assert props["Environment"]["Variables"] == {k: v for k, v in signer["Environment"]["Variables"].items()
                                                 if k not in tokens}
    assert props["LoggingConfig"]["LogGroup"] == {"Ref": "VerifierLogGroup"}
    assert props["ReservedConcurrentExecutions"] == {
        "Fn::If": ["ReserveVerifierConcurrency", {"Ref": "VerifierReservedConcurrency"}, {"Ref": "AWS::NoValue"}]}
    assert res["VerifierFunction"]["DependsOn"] == ["VerifierPolicy", "VerifierLedgerPolicy"]
    policy = res["VerifierPolicy"]["Properties"]
    assert policy["Roles"] == [{"Ref": "VerifierRole"}]
    assert res["RulesReadPolicy"]["Properties"]["Roles"] == [{"Ref": "SignerRole"}, {"Ref": "VerifierRole"}]


def test_every_new_object_under_a_rule_prefix_invokes_the_verifier(cfn: dict[str, Any], ruleset: Any) -> None:
    configs = cfn["Resources"]["UploadBucket"]["Properties"]["NotificationConfiguration"]["LambdaConfigurations"]
    prefixes = [c["Filter"]["S3Key"]["Rules"][0]["Value"] for c in configs]
    assert prefixes == merge_prefixes(rule_prefix(r) for c in ruleset.clients.values() for r in c.rules.values())
    assert all(c["Event"] == "s3:ObjectCreated:*" for c in configs)
    assert all(c["Function"] == {"Fn::GetAtt": ["VerifierFunction", "Arn"]} for c in configs)
    # S3 refuses overlapping filters for one event type; and the verifier's own quarantine copies stay silent
    assert not any(a != b and b.startswith(a) for a in prefixes for b in prefixes)
    assert not any(ruleset.quarantine_prefix.startswith(p) for p in prefixes)


def test_s3_may_invoke_the_verifier_for_this_bucket_only(cfn: dict[str, Any]) -> None:
    res = cfn["Resources"]
    permission = res["VerifierInvokePermission"]["Properties"]
    assert permission["Principal"] == "s3.amazonaws.com"
    assert permission["FunctionName"] == {"Fn::GetAtt": ["VerifierFunction", "Arn"]}
    assert permission["SourceArn"] == {"Fn::Sub": "arn:${AWS::Partition}:s3:::${UploadBucketName}"}
    assert permission["SourceAccount"] == {"Ref": "AWS::AccountId"}
    assert res["UploadBucket"]["DependsOn"] == ["VerifierInvokePermission"]  # S3 checks it when set


def references(value: Any) -> set[str]:
    """Logical ids a resource's value refers to (Ref, GetAtt, names inside Sub)."""
    import re

    found: set[str] = set()
    if isinstance(value, dict):
        for key, inner in value.items():
            if key == "Ref" and isinstance(inner, str):
                found.add(inner)
            elif key == "Fn::GetAtt":
                found.add(inner[0] if isinstance(inner, list) else inner.split(".")[0])
            elif key == "Fn::Sub":
                text = inner if isinstance(inner, str) else inner[0]
                found.update(m.split(".")[0] for m in re.findall(r"\$\{([^!][^}]*)\}", text))
                if isinstance(inner, list):
                    found |= references(inner[1])
            else:
                found |= references(inner)
    elif isinstance(value, list):
        for inner in value:
            found |= references(inner)
    return found


def dependency_cycles(cfn: dict[str, Any]) -> list[list[str]]:
    """Cycles among the resources (CloudFormation refuses a template with one: "Circular dependency")."""
    resources = cfn["Resources"]
    edges = {name: {d for d in references(r.get("Properties", {})) | set(r.get("DependsOn", []))
                    if d in resources} for name, r in resources.items()}
    return cycles(edges)


def test_no_circular_dependency_between_bucket_notification_and_permission(cfn: dict[str, Any]) -> None:
    assert dependency_cycles(cfn) == []
    # the checker catches the classic mistake: a permission naming the bucket resource itself
    broken = json.loads(json.dumps(cfn))
    broken["Resources"]["VerifierInvokePermission"]["Properties"]["SourceArn"] = {
        "Fn::GetAtt": ["UploadBucket", "Arn"]}
    assert ["UploadBucket", "VerifierInvokePermission", "UploadBucket"] in dependency_cycles(broken)


def test_serving_only_verified_objects_is_one_parameter(cfn: dict[str, Any]) -> None:
    statements = cfn["Resources"]["UploadBucketPolicy"]["Properties"]["PolicyDocument"]["Statement"]
    condition, deny, otherwise = statements[-1]["Fn::If"]
    assert condition == "ServeOnlyVerified" and otherwise == {"Ref": "AWS::NoValue"}
    assert cfn["Conditions"]["ServeOnlyVerified"] == {"Fn::Equals": [{"Ref": "ServeOnlyVerified"}, "true"]}
    assert cfn["Parameters"]["ServeOnlyVerified"]["Default"] == "false"
    assert deny["Effect"] == "Deny" and deny["Principal"] == "*"
    assert deny["Action"] == ["s3:GetObject", "s3:GetObjectVersion"]
    assert deny["Condition"] == {
        "StringNotEquals": {"s3:ExistingObjectTag/broker-verdict": "verified"},
        "ArnNotEquals": {"aws:PrincipalArn": {"Fn::GetAtt": ["VerifierRole", "Arn"]}}}  # it reads to judge


def test_the_grant_ledger_table_and_who_may_use_it(cfn: dict[str, Any]) -> None:
    from broker.ledger.dynamodb import ATTRIBUTE_DEFINITIONS, KEY_SCHEMA, TTL_ATTRIBUTE

    res = cfn["Resources"]
    table = res["LedgerTable"]
    assert (table["DeletionPolicy"], table["UpdateReplacePolicy"]) == ("Retain", "Retain")
    props = table["Properties"]
    assert props["BillingMode"] == "PAY_PER_REQUEST"
    assert props["KeySchema"] == list(KEY_SCHEMA)  # the engine's own key schema
    assert props["AttributeDefinitions"] == list(ATTRIBUTE_DEFINITIONS)
    assert props["TimeToLiveSpecification"] == {"AttributeName": TTL_ATTRIBUTE, "Enabled": True}
    assert props["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}
    assert set(props) == {"BillingMode", "KeySchema", "AttributeDefinitions", "TimeToLiveSpecification",
                          "PointInTimeRecoverySpecification"}  # no index: the engine queries none
    for role in ("Signer", "Verifier"):
        env = res[f"{role}Function"]["Properties"]["Environment"]["Variables"]
        assert env["BROKER_LEDGER"] == {"Fn::Sub": "dynamodb://${LedgerTable}"}
        policy = res[f"{role}LedgerPolicy"]["Properties"]
        assert policy["Roles"] == [{"Ref": f"{role}Role"}]
        assert policy["PolicyDocument"] == ledger_policy_document(role.lower(), {"Fn::GetAtt": ["LedgerTable", "Arn"]})
        assert f"{role}LedgerPolicy" in res[f"{role}Function"]["DependsOn"]  # no call before its permission
    assert "dynamodb:Scan" not in {a for actions in LEDGER_ACTIONS.values() for a in actions}
    assert cfn["Outputs"]["LedgerTableName"]["Value"] == {"Ref": "LedgerTable"}


def test_notification_prefixes_only_for_the_template_bucket() -> None:
    from tests.deploy.helpers import make_rules

    rules = make_rules({"c1": [{"name": "p", "key": "in/{client}/{profile}/{uuid}"},
                               {"name": "q", "key": "in/{client}/{profile}/{uuid}", "bucket": "other-bucket"},
                               {"name": "r", "key": "in/{client}/{uuid}"}]})
    assert notification_prefixes(rules) == ["in/c1/"]
    whole = make_rules({"c1": [{"name": "p", "key": "{uuid}{ext}"}]})
    text = update_template(TEMPLATE.read_text(), whole)
    configs = translate(text)["Resources"]["UploadBucket"]["Properties"]["NotificationConfiguration"]
    assert configs["LambdaConfigurations"] == [
        {"Event": "s3:ObjectCreated:*", "Function": {"Fn::GetAtt": ["VerifierFunction", "Arn"]}}]


# ----------------------------------------------------------------- deployed into moto


#: Resource types moto's CloudFormation cannot create (asserted on the translated template above).
NOT_IN_MOTO = ("AWS::Lambda::Alias", "AWS::CodeDeploy::Application", "AWS::CodeDeploy::DeploymentGroup",
               "AWS::CloudWatch::Dashboard")


def for_moto(cfn: dict[str, Any]) -> dict[str, Any]:
    """The translated template without what moto lacks; what called the signer's alias calls the function."""
    out = json.loads(json.dumps(cfn))
    res = out["Resources"]
    gone = [name for name, r in res.items() if r["Type"] in NOT_IN_MOTO]
    aliases = [name for name in gone if res[name]["Type"] == "AWS::Lambda::Alias"]
    assert aliases == ["SignerFunctionAliaslive"], gone
    for name in gone:
        del res[name]
    out["Outputs"] = {k: v for k, v in out["Outputs"].items() if not references(v) & set(gone)}
    text = json.dumps(out).replace(json.dumps({"Ref": aliases[0]}), json.dumps({"Ref": "SignerFunction"}))
    left = json.loads(text)
    assert not references(left) & set(gone)
    return left


def test_moto_copy_drops_only_what_moto_lacks(cfn: dict[str, Any]) -> None:
    copy = for_moto(cfn)
    assert set(cfn["Resources"]) - set(copy["Resources"]) == {
        "SignerFunctionAliaslive", "ServerlessDeploymentApplication", "SignerFunctionDeploymentGroup", "Dashboard"}
    assert copy["Resources"]["ApiInvokePermission"]["Properties"]["FunctionName"] == {"Ref": "SignerFunction"}
    assert set(cfn["Outputs"]) - set(copy["Outputs"]) == {"SignerAliasArn", "DashboardUrl"}


@pytest.fixture(scope="module")
def stack(cfn: dict[str, Any]) -> Iterator[dict[str, Any]]:
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="deploy-artifacts")
        code = io.BytesIO()
        with zipfile.ZipFile(code, "w") as zf:
            zf.writestr("lambda_handler.py", "def handler(event, context):\n    return {}\n\n\n"
                                             "verify_handler = handler\n")
        s3.put_object(Bucket="deploy-artifacts", Key="lambda.zip", Body=code.getvalue())
        cf = boto3.client("cloudformation", region_name="us-east-1")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # moto warns about the API Gateway v2 resources it skips
            cf.create_stack(StackName="broker", TemplateBody=json.dumps(for_moto(cfn)),
                            Capabilities=["CAPABILITY_IAM"],
                            Parameters=[{"ParameterKey": "RulesLocation", "ParameterValue": RULES_LOCATION}])
        summaries = cf.list_stack_resources(StackName="broker")["StackResourceSummaries"]
        yield {r["LogicalResourceId"]: r for r in summaries}


def test_stack_creates_bucket_role_policy_and_function(stack: dict[str, Any], ruleset: Any) -> None:
    assert cf_status() == "CREATE_COMPLETE"
    s3 = boto3.client("s3", region_name="us-east-1")
    iam = boto3.client("iam", region_name="us-east-1")
    lam = boto3.client("lambda", region_name="us-east-1")
    assert stack["UploadBucket"]["PhysicalResourceId"] == "broker-uploads"
    rule = s3.get_bucket_encryption(Bucket="broker-uploads")["ServerSideEncryptionConfiguration"]["Rules"][0]
    assert rule["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"

    role_name = stack["SignerRole"]["PhysicalResourceId"]
    trust = iam.get_role(RoleName=role_name)["Role"]["AssumeRolePolicyDocument"]
    assert trust["Statement"][0]["Principal"] == {"Service": "lambda.amazonaws.com"}
    assert sorted(iam.list_role_policies(RoleName=role_name)["PolicyNames"]) == [
        "read-rules-object", "upload-signer", "use-grant-ledger", "write-own-logs"]
    signer = iam.get_role_policy(RoleName=role_name, PolicyName="upload-signer")["PolicyDocument"]
    signer = json.loads(signer) if isinstance(signer, str) else signer
    assert signer == policy_document(ruleset)  # the partition resolved to "aws"
    read = iam.get_role_policy(RoleName=role_name, PolicyName="read-rules-object")["PolicyDocument"]
    read = json.loads(read) if isinstance(read, str) else read
    assert read["Statement"] == [{"Sid": "ReadRulesObject", "Effect": "Allow", "Action": "s3:GetObject",
                                  "Resource": "arn:aws:s3:::ops-config/broker/rules.yaml"}]
    assert not iam.list_attached_role_policies(RoleName=role_name)["AttachedPolicies"]

    fn = lam.get_function(FunctionName="broker-signer")["Configuration"]
    assert fn["Handler"] == "lambda_handler.handler" and fn["Runtime"] == "python3.12"
    versions = lam.list_versions_by_function(FunctionName="broker-signer")["Versions"]
    assert [v["Version"] for v in versions] == ["$LATEST", "1"]  # AutoPublishAlias published one
    assert stack["ApiAccessLogGroup"]["PhysicalResourceId"] == "/aws/apigateway/broker-access"
    assert fn["Role"].endswith(f":role/{role_name}")
    assert fn["Environment"]["Variables"]["BROKER_RULES"] == RULES_LOCATION
    assert stack["SignerLogGroup"]["PhysicalResourceId"] == "/aws/lambda/broker-signer"


def test_stack_creates_the_verifier_with_its_own_role(stack: dict[str, Any], ruleset: Any) -> None:
    iam = boto3.client("iam", region_name="us-east-1")
    lam = boto3.client("lambda", region_name="us-east-1")
    role_name = stack["VerifierRole"]["PhysicalResourceId"]
    assert role_name != stack["SignerRole"]["PhysicalResourceId"]
    assert sorted(iam.list_role_policies(RoleName=role_name)["PolicyNames"]) == [
        "read-rules-object", "upload-verifier", "use-grant-ledger", "write-own-logs"]
    verifier = iam.get_role_policy(RoleName=role_name, PolicyName="upload-verifier")["PolicyDocument"]
    verifier = json.loads(verifier) if isinstance(verifier, str) else verifier
    assert verifier == verifier_policy_document(ruleset)
    assert not iam.list_attached_role_policies(RoleName=role_name)["AttachedPolicies"]

    fn = lam.get_function(FunctionName="broker-verifier")["Configuration"]
    assert fn["Handler"] == "lambda_handler.verify_handler"
    assert fn["Role"].endswith(f":role/{role_name}")
    assert fn["Environment"]["Variables"]["BROKER_RULES"] == RULES_LOCATION
    assert stack["VerifierLogGroup"]["PhysicalResourceId"] == "/aws/lambda/broker-verifier"
    assert "VerifierInvokePermission" in stack


def test_stack_creates_the_ledger_table_each_role_may_use(stack: dict[str, Any]) -> None:
    from broker.ledger.dynamodb import KEY_SCHEMA

    ddb = boto3.client("dynamodb", region_name="us-east-1")
    iam = boto3.client("iam", region_name="us-east-1")
    lam = boto3.client("lambda", region_name="us-east-1")
    name = stack["LedgerTable"]["PhysicalResourceId"]
    table = ddb.describe_table(TableName=name)["Table"]
    assert table["KeySchema"] == list(KEY_SCHEMA)
    assert table["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"
    # moto's CloudFormation leaves TTL and point-in-time recovery off: asserted on the template above
    for role, function in (("signer", "broker-signer"), ("verifier", "broker-verifier")):
        env = lam.get_function(FunctionName=function)["Configuration"]["Environment"]["Variables"]
        assert env["BROKER_LEDGER"] == f"dynamodb://{name}"
        role_name = stack[f"{role.title()}Role"]["PhysicalResourceId"]
        doc = iam.get_role_policy(RoleName=role_name, PolicyName="use-grant-ledger")["PolicyDocument"]
        doc = json.loads(doc) if isinstance(doc, str) else doc
        assert doc == ledger_policy_document(role, table["TableArn"])


def cf_status() -> str:
    cf = boto3.client("cloudformation", region_name="us-east-1")
    return cf.describe_stacks(StackName="broker")["Stacks"][0]["StackStatus"]


def test_bundled_rules_need_no_rules_read_policy(cfn: dict[str, Any]) -> None:
    assert cfn["Resources"]["RulesReadPolicy"]["Condition"] == "RulesInS3"
    env = cfn["Resources"]["SignerFunction"]["Properties"]["Environment"]["Variables"]
    assert env["BROKER_RULES"] == {"Fn::If": ["RulesInS3", {"Ref": "RulesLocation"}, "/var/task/rules.yaml"]}


@pytest.mark.parametrize("key, allowed", [
    pytest.param("uploads/web-app/avatars/2026-11-28/0a1b.png", True, id="rule-prefix"),
    pytest.param("uploads/someone/avatars/0a1b.png", False, id="other-prefix"),
])
def test_stack_role_can_write_only_rule_prefixes(stack: dict[str, Any], key: str, allowed: bool) -> None:
    from moto.core.authorization import enable_iam_authentication

    iam = boto3.client("iam", region_name="us-east-1")
    role_name = stack["SignerRole"]["PhysicalResourceId"]
    # moto keeps a role's inline `Policies` from CloudFormation as a Python dict (returned as
    # its repr) that its own IAM checker cannot read; store that one (write-own-logs) again as
    # JSON. The signer policy, an AWS::IAM::Policy, is checked exactly as deployed.
    logs = iam.get_role_policy(RoleName=role_name, PolicyName="write-own-logs")["PolicyDocument"]
    if isinstance(logs, str):
        logs = ast.literal_eval(logs)
    iam.put_role_policy(RoleName=role_name, PolicyName="write-own-logs", PolicyDocument=json.dumps(logs))
    sts = boto3.client("sts", region_name="us-east-1")
    role_arn = f"arn:aws:iam::123456789012:role/{stack['SignerRole']['PhysicalResourceId']}"
    creds = sts.assume_role(RoleArn=role_arn, RoleSessionName="lambda")["Credentials"]
    s3 = boto3.client("s3", region_name="us-east-1", aws_access_key_id=creds["AccessKeyId"],
                      aws_secret_access_key=creds["SecretAccessKey"],
                      aws_session_token=creds["SessionToken"])
    with enable_iam_authentication():
        if allowed:
            s3.put_object(Bucket="broker-uploads", Key=key, Body=b"x")
        else:
            with pytest.raises(ClientError, match="AccessDenied"):
                s3.put_object(Bucket="broker-uploads", Key=key, Body=b"x")
