"""``broker diff OLD NEW``: what a rules change grants and revokes, exit 1 when it widens anything."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from broker.cli import DIFF_FORMAT, main
from broker.core.rules import api_key_hash

ROOT = Path(__file__).parent.parent
RULES = (ROOT / "rules.yaml").read_text()
WEB_HASH = api_key_hash("demo-web-app-key")
SCHEMA = Draft202012Validator(json.loads((ROOT / "schemas" / "rules-diff.schema.json").read_text()))


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def edit(old: str, new: str, text: str = RULES) -> str:
    assert text.count(old) == 1, old
    return text.replace(old, new)


def diff_json(tmp_path: Path, new_text: str, capsys: pytest.CaptureFixture[str],
              old_text: str = RULES) -> tuple[int, dict[str, Any]]:
    code = main(["diff", write(tmp_path, "old.yaml", old_text), write(tmp_path, "new.yaml", new_text), "--json"])
    doc = json.loads(capsys.readouterr().out)
    errors = [e.message for e in SCHEMA.iter_errors(doc)]
    assert not errors, errors
    return code, doc


def test_unchanged_is_exit_0(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    old = write(tmp_path, "a.yaml", RULES)
    assert main(["diff", old, write(tmp_path, "b.yaml", RULES + "\n# a comment\n")]) == 0
    out = capsys.readouterr().out
    assert "0 changes" in out and "IAM, signer role: no change" in out and "nothing is widened" in out


def test_widened_max_bytes_is_exit_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    new = write(tmp_path, "new.yaml", edit("max_bytes: 5 MiB", "max_bytes: 50 MiB"))
    assert main(["diff", write(tmp_path, "old.yaml", RULES), new]) == 1
    out = capsys.readouterr().out
    assert "  > web-app/avatars: max_bytes 5 MiB -> 50 MiB" in out
    assert "WIDENS" in out


def test_narrowed_only_is_exit_0(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    new = edit("max_bytes: 5 MiB", "max_bytes: 1 MiB")
    new = edit("    - http://127.0.0.1:8000\n", "", new)
    new = edit("        multipart: true\n", "", new)
    code, doc = diff_json(tmp_path, new, capsys)
    assert code == 0 and doc["widens"] is False
    assert doc["summary"] == {"added": 0, "removed": 1, "widened": 0, "narrowed": 2, "changed": 0}
    # multipart off takes the multipart actions away from the signer's role
    removed = doc["iam"]["signer"]["removed"]
    assert removed and removed[0]["actions"] == ["s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"]
    assert doc["iam"]["signer"]["added"] == []


def test_pasted_duplicate_client_shows_the_keys_it_removed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # A client block pasted over web-app (the copy of partner-acme's with the id changed): the real
    # web-app key stops working, partner-acme's key now also opens web-app.
    acme_hash = api_key_hash("demo-partner-acme-key")
    start, end = RULES.index("  web-app:\n"), RULES.index("  # The mobile apps")
    pasted = ("  web-app:\n    api_key_sha256:\n      - " + acme_hash + "\n    rules:\n"
              "      - name: invoices\n        max_bytes: 10 MB\n        content_types: [application/pdf]\n\n")
    new = RULES[:start] + pasted + RULES[end:]
    new = edit("      - " + acme_hash + "   # demo-partner-acme-key\n", "      - " + "ab" * 32 + "\n", new)
    code, doc = diff_json(tmp_path, new, capsys)
    assert code == 1
    keys = {(c["client"], c["kind"]): c["items"] for c in doc["changes"] if c["field"] == "api_key_sha256"}
    assert keys[("web-app", "removed")] == [WEB_HASH[:8]]
    assert keys[("web-app", "added")] == [acme_hash[:8]]
    rules_gone = {c["rule"] for c in doc["changes"] if c["client"] == "web-app" and c["kind"] == "removed"
                  and c["field"] == "rule"}
    assert rules_gone == {"avatars", "documents", "videos"}
    text = json.dumps(doc)
    assert WEB_HASH not in text and acme_hash not in text  # fingerprints only
    main(["diff", str(tmp_path / "old.yaml"), str(tmp_path / "new.yaml")])
    human = capsys.readouterr().out
    assert f"  - web-app: api_key_sha256 - {WEB_HASH[:8]}" in human and WEB_HASH not in human


def test_json_document_shape_is_stable(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    new = edit("max_bytes: 5 MiB", "max_bytes: 50 MiB")
    new = edit('key: "partners/{client}/{profile}/{year}/{uuid}{ext}"',
               'key: "statements/{client}/{year}/{uuid}{ext}"', new)
    code, doc = diff_json(tmp_path, new, capsys)
    assert code == 1
    assert list(doc) == ["format", "old", "new", "widens", "summary", "changes", "iam"]
    assert doc["format"] == DIFF_FORMAT == "broker-rules-diff/1"
    assert set(doc["old"]) == {"source", "digest"} and doc["old"]["digest"] != doc["new"]["digest"]
    assert list(doc["summary"]) == ["added", "removed", "widened", "narrowed", "changed"]
    for change in doc["changes"]:
        assert list(change) == ["kind", "widens", "client", "rule", "field", "old", "new", "items", "text"]
    moved = next(c for c in doc["changes"] if c["field"] == "key")
    assert (moved["kind"], moved["widens"], moved["rule"]) == ("changed", True, "statements")
    added = doc["iam"]["signer"]["added"]
    assert {"actions": ["s3:PutObject"], "resource": "arn:aws:s3:::broker-uploads/statements/partner-acme/*",
            "condition": None} in added
    assert any(g["resource"].endswith("/statements/partner-acme/*") for g in doc["iam"]["verifier"]["added"])
    assert {"actions": ["s3:PutObject"], "resource": "arn:aws:s3:::broker-uploads/partners/partner-acme/statements/*",
            "condition": None} not in added


def test_the_schema_refuses_a_drifted_document(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, doc = diff_json(tmp_path, edit("max_bytes: 5 MiB", "max_bytes: 50 MiB"), capsys)
    assert not SCHEMA.is_valid({**doc, "extra": 1})
    assert not SCHEMA.is_valid({**doc, "changes": [{**doc["changes"][0], "kind": "grown"}]})
    assert not SCHEMA.is_valid({**doc, "format": "broker-rules-diff/2"})


def test_an_iam_only_widening_is_exit_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    new = edit("        storage_class: INTELLIGENT_TIERING\n        encryption: AES256\n",
               "        storage_class: INTELLIGENT_TIERING\n        encryption: {kms_key_id: alias/uploads}\n")
    code, doc = diff_json(tmp_path, new, capsys)
    assert code == 1
    assert any("kms:GenerateDataKey" in g["actions"] for g in doc["iam"]["signer"]["added"])
    assert any("kms:Decrypt" in g["actions"] for g in doc["iam"]["verifier"]["added"])
    assert any(g["resource"] == "arn:aws:kms:us-east-1:ACCOUNT:key/*" for g in doc["iam"]["signer"]["added"])


@pytest.mark.parametrize("broken", [
    pytest.param("version: 1\nbucket: x\n", id="invalid_rules"),
    pytest.param("version: [\n", id="not_yaml"),
])
def test_a_bad_file_is_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str], broken: str) -> None:
    good = write(tmp_path, "good.yaml", RULES)
    bad = write(tmp_path, "bad.yaml", broken)
    assert main(["diff", good, bad]) == 2
    err = capsys.readouterr().err
    assert "broker diff:" in err and "bad.yaml" in err
    assert main(["diff", bad, good, "--json"]) == 2
    assert capsys.readouterr().out == ""
    assert main(["diff", good, str(tmp_path / "missing.yaml")]) == 2
    assert "cannot read the rules file" in capsys.readouterr().err


def test_the_command_line_entry_point(tmp_path: Path) -> None:
    new = write(tmp_path, "new.yaml", edit("max_bytes: 5 MiB", "max_bytes: 1 MiB"))
    proc = subprocess.run([sys.executable, "-m", "broker", "diff", str(ROOT / "rules.yaml"), new],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "< web-app/avatars: max_bytes 5 MiB -> 1 MiB" in proc.stdout
    helped = subprocess.run([sys.executable, "-m", "broker", "diff", "--help"], capture_output=True, text=True,
                            timeout=60)
    assert "exit status: 0 nothing widens" in helped.stdout and "fingerprint" in helped.stdout


def test_the_rules_in_force_can_be_read_from_s3(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                s3_client: Any) -> None:
    # moto stands in for S3 (a unit test of the one GetObject the command sends)
    s3_client.create_bucket(Bucket="ops-config")
    s3_client.put_object(Bucket="ops-config", Key="broker/rules.yaml", Body=RULES.encode())
    new = write(tmp_path, "new.yaml", edit("max_bytes: 5 MiB", "max_bytes: 1 MiB"))
    assert main(["diff", "s3://ops-config/broker/rules.yaml", new]) == 0
    assert "< web-app/avatars: max_bytes 5 MiB -> 1 MiB" in capsys.readouterr().out
    assert main(["diff", "s3://ops-config/broker/missing.yaml", new]) == 2
    assert "s3://ops-config/broker/missing.yaml" in capsys.readouterr().err
    assert main(["diff", "s3://ops-config/", new]) == 2
    assert "is not an S3 object URL" in capsys.readouterr().err
