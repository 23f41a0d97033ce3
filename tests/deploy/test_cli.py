"""`broker iam-policy` and `broker cors`: output, exit codes, help, template update."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from broker.cli import main
from tests.conftest import ROOT


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_iam_policy_prints_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "iam-policy", str(ROOT / "rules.yaml"),
                       "--rules-location", "s3://ops-config/rules.yaml")
    policy = json.loads(out)
    assert code == 0
    assert [s["Sid"] for s in policy["Statement"]] == [
        "PutObjectsUnderRulePrefixes", "ManageMultipartUploads", "ReadRulesObject"]


def test_iam_policy_verifier_prints_the_verifier_policy(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "iam-policy", str(ROOT / "rules.yaml"), "--verifier",
                       "--rules-location", "s3://ops-config/rules.yaml")
    policy = json.loads(out)
    assert code == 0
    assert [s["Sid"] for s in policy["Statement"]] == [
        "JudgeUploads", "MarkOrRemoveUploads", "WriteQuarantine", "ReadRulesObject"]
    assert policy["Statement"][2]["Resource"] == "arn:aws:s3:::broker-uploads/quarantine/*"


def test_cors_prints_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "cors", str(ROOT / "rules.yaml"))
    assert code == 0 and json.loads(out)["CORSRules"][0]["ExposeHeaders"] == ["ETag", "Location"]
    code, out, _ = run(capsys, "cors", str(ROOT / "rules.yaml"), "--all")
    assert code == 0 and list(json.loads(out)) == ["broker-uploads"]


@pytest.mark.parametrize("argv, message", [
    pytest.param(["iam-policy", "tests/rules/invalid/bad_size.yaml"], "problem", id="iam-invalid-rules"),
    pytest.param(["cors", "tests/rules/invalid/bad_size.yaml"], "problem", id="cors-invalid-rules"),
    pytest.param(["cors", "rules.yaml", "--bucket", "nope-bucket"], "no rule writes", id="cors-unknown-bucket"),
    pytest.param(["iam-policy", "rules.yaml", "--rules-location", "s3://only-bucket"], "s3://bucket/path",
                 id="bad-rules-location"),
    pytest.param(["iam-policy", "rules.yaml", "--verifier", "--verify-uploads"], "mean nothing with --verifier",
                 id="verifier-with-verify-uploads"),
    pytest.param(["iam-policy", "rules.yaml", "--verifier", "--verdicts"], "mean nothing with --verifier",
                 id="verifier-with-verdicts"),
])
def test_errors_exit_2_with_a_message(capsys: pytest.CaptureFixture[str], monkeypatch: Any,
                                      argv: list[str], message: str) -> None:
    monkeypatch.chdir(ROOT)
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == "" and message in err


@pytest.mark.parametrize("command, words", [
    pytest.param("iam-policy", ["least-privilege", "s3:PutObjectAcl", "--rules-location", "--update-template",
                                "--verifier", "quarantine_prefix only", "s3:GetObjectTagging",
                                "verify_handler"], id="iam-policy"),
    pytest.param("cors", ["ETag", "put-bucket-cors", "--all"], id="cors"),
])
def test_help_explains(capsys: pytest.CaptureFixture[str], command: str, words: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    out = capsys.readouterr().out
    assert exc.value.code == 0
    for word in words:
        assert word in out


def test_update_template_rewrites_only_generated_blocks(capsys: pytest.CaptureFixture[str],
                                                        tmp_path: Path) -> None:
    template = tmp_path / "template.yaml"
    shutil.copy(ROOT / "template.yaml", template)
    rules = tmp_path / "rules.yaml"
    rules.write_text((ROOT / "rules.yaml").read_text().replace(
        "bucket: broker-uploads ", "bucket: acme-prod-uploads "))
    code, _, err = run(capsys, "iam-policy", str(rules), "--update-template", str(template))
    assert code == 0 and "updated" in err
    text = template.read_text()
    assert "broker-uploads" not in text and "Default: acme-prod-uploads" in text
    assert "arn:${AWS::Partition}:s3:::acme-prod-uploads/uploads/web-app/avatars/*" in text
    assert "arn:${AWS::Partition}:s3:::acme-prod-uploads/quarantine/*" in text  # the verifier's policy too
    code, _, err = run(capsys, "iam-policy", str(rules), "--update-template", str(template))
    assert code == 0 and "already up to date" in err
