"""`make package`: the Lambda zip, unpacked into a clean virtualenv, answers the sample events.

The zip is built for this machine's Python (Lambda's is 3.12; the build is the same but for
the wheel tags) and run by a fresh venv's interpreter that sees nothing but the zip's
contents, with fake credentials (signing needs no network) and AWS_LAMBDA_FUNCTION_NAME set.
"""
from __future__ import annotations

import io
import json
import os
import platform
import subprocess
import sys
import venv
import zipfile
from pathlib import Path
from typing import Any

import pytest

from broker.deploy.package import REQUIREMENTS, PackageError, build, requirement_lines, write_zip
from tests.conftest import ROOT

EVENTS = sorted((ROOT / "tests" / "events").glob("*.json"))
PY = f"{sys.version_info.major}.{sys.version_info.minor}"
WHEEL_PLATFORM = {"x86_64": "manylinux2014_x86_64", "aarch64": "manylinux2014_aarch64"}[platform.machine()]

DRIVER = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
import lambda_handler, broker, yaml, jsonschema, rpds, boto3, botocore
modules = {m.__name__: m.__file__ for m in (broker, yaml, jsonschema, rpds, boto3, botocore)}
class Context:
    aws_request_id = "req-from-lambda"
out = {"modules": modules, "results": {}}
for name in sys.argv[2:]:
    with open(name) as fh:
        event = json.load(fh)
    print("---", name, flush=True)
    out["results"][name] = lambda_handler.handler(event, Context())
print("RESULT " + json.dumps(out), flush=True)
"""


@pytest.fixture(scope="module")
def packaged(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("package")
    # The sample rules (demo keys, http:// origins) answer the sample events: packaged with allow_demo.
    built = build(rules=ROOT / "rules.yaml", out=out, python_version=PY, platform=WHEEL_PLATFORM, allow_demo=True)
    task = out / "task"
    with zipfile.ZipFile(built.zip_path) as zf:
        zf.extractall(task)
        names = zf.namelist()
    env_dir = out / "venv"
    venv.EnvBuilder(with_pip=False, system_site_packages=False).create(env_dir)
    env = {"PATH": "/usr/bin:/bin", "AWS_ACCESS_KEY_ID": "AKIDPACKAGETEST", "LANG": "C.UTF-8",
           "AWS_SECRET_ACCESS_KEY": "package-test-secret", "AWS_REGION": "us-east-1",
           "AWS_LAMBDA_FUNCTION_NAME": "broker-signer", "BROKER_RULES": str(task / "rules.yaml")}
    proc = subprocess.run([str(env_dir / "bin" / "python"), "-I", "-c", DRIVER, str(task),
                           *map(str, EVENTS)], cwd=task, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result_line = next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))
    return {"built": built, "task": task, "names": names, "stdout": proc.stdout,
            "stderr": proc.stderr, **json.loads(result_line[len("RESULT "):])}


def test_zip_contents(packaged: dict[str, Any]) -> None:
    names = set(packaged["names"])
    for required in ("lambda_handler.py", "rules.yaml", "broker/__init__.py", "broker/app.py",
                     "schemas/rules.schema.json", "schemas/audit.schema.json", "yaml/__init__.py",
                     "jsonschema/__init__.py", "boto3/__init__.py"):
        assert required in names, required
    assert any(n.startswith("broker/__pycache__/app.cpython-") and n.endswith(".pyc") for n in names)
    assert not any("/tests/" in n or n.startswith("tests/") for n in names)
    assert "broker/dev/run.py" not in names and "broker/dev/store.py" not in names
    assert not any(n.startswith("broker/dev/") for n in names), "make run's store and runner ship to Lambda"
    assert "broker/s3/store.py" in names and "broker/core/rules.py" in names
    assert packaged["built"].template_path.read_text().count("CodeUri: lambda.zip") == 1


def test_runs_only_from_the_zip(packaged: dict[str, Any]) -> None:
    task = str(packaged["task"])
    assert all(path.startswith(task) for path in packaged["modules"].values()), packaged["modules"]


@pytest.fixture(scope="module")
def checkout_status() -> Any:
    """The status the dev checkout answers for an event (the package must agree)."""
    from broker.adapters import apigw
    from broker.service import build as build_broker
    from broker.config import Settings

    broker = build_broker(Settings.from_env({"BROKER_RULES": str(ROOT / "rules.yaml")}),
                          audit_stream=io.StringIO())

    def status(event_path: Path) -> int:
        response = apigw.handle(broker, json.loads(event_path.read_text()), None)
        return int(response.get("statusCode", response.get("status", 200)))

    return status


@pytest.mark.parametrize("event", EVENTS, ids=[e.stem for e in EVENTS])
def test_every_sample_event_answers_as_in_the_checkout(packaged: dict[str, Any], checkout_status: Any,
                                                       event: Path) -> None:
    response = packaged["results"][str(event)]
    status = int(response.get("statusCode", response.get("status", 200)))
    assert status < 500
    assert status == checkout_status(event)


@pytest.mark.parametrize("event", ["apigw-v2-http", "apigw-v1-proxy", "function-url"])
def test_allowed_upload_has_signed_fields(packaged: dict[str, Any], event: str) -> None:
    response = packaged["results"][str(ROOT / "tests" / "events" / f"{event}.json")]
    assert response["statusCode"] == 200
    body = json.loads(response["body"])
    assert {"url", "fields", "key", "bucket", "expires_at", "max_bytes", "profile"} <= set(body)
    fields = body["fields"]
    assert fields["key"] == body["key"] and fields["x-amz-algorithm"] == "AWS4-HMAC-SHA256"
    assert fields["x-amz-credential"].startswith("AKIDPACKAGETEST/")
    assert "policy" in fields and "x-amz-signature" in fields


def test_audit_and_emf_lines_on_stdout(packaged: dict[str, Any]) -> None:
    lines = [json.loads(line) for line in packaged["stdout"].splitlines() if line.startswith("{")]
    audit = [r for r in lines if "request_id" in r]
    emf = [r for r in lines if "_aws" in r]
    decisions = [r for r in audit if r.get("decision") in ("allowed", "denied")]
    errors = [r for r in audit if r.get("decision") == "error"]
    counts = [r for r in emf if "Count" in r]  # one per decision; error answers are counted as Errors
    assert decisions and len(counts) == len(decisions)
    assert {r["decision"] for r in counts} == {r["decision"] for r in decisions}
    assert len([r for r in emf if "Errors" in r]) == len(errors)
    assert "package-test-secret" not in packaged["stdout"] + packaged["stderr"]


def test_requirements_are_all_pinned() -> None:
    with_boto3 = requirement_lines(REQUIREMENTS, with_boto3=True)
    without = requirement_lines(REQUIREMENTS, with_boto3=False)
    assert all("==" in line for line in with_boto3)
    assert {"pyyaml", "jsonschema", "referencing", "rpds-py", "attrs"} <= {l.split("==")[0] for l in without}
    assert not any(line.startswith(("boto3", "botocore")) for line in without)
    assert {"boto3", "botocore", "s3transfer"} <= {l.split("==")[0] for l in with_boto3}


def test_invalid_rules_are_not_packaged(tmp_path: Path) -> None:
    with pytest.raises(PackageError, match="refusing to package"):
        build(rules=ROOT / "tests" / "rules" / "invalid" / "bad_size.yaml", out=tmp_path)


def test_demo_rules_are_not_packaged_by_default(tmp_path: Path) -> None:
    with pytest.raises(PackageError, match="not fit for production") as info:
        build(rules=ROOT / "rules.yaml", out=tmp_path)
    message = str(info.value)
    line = next(n for n, text in enumerate((ROOT / "rules.yaml").read_text().splitlines(), 1) if "80829424f2" in text)
    assert f"rules.yaml:{line}: client 'web-app': API key 80829424 is the demo key 'demo-web-app-key'" in message
    assert "http://localhost:8000" in message and "--allow-demo" in message and "ALLOW_DEMO=1" in message
    assert not any(tmp_path.iterdir()), "refused before anything was staged or built"


def test_allow_demo_packages_them_with_every_refusal_as_a_warning(packaged: dict[str, Any]) -> None:
    warnings = packaged["built"].warnings
    assert any("demo key 'demo-web-app-key'" in w for w in warnings)
    assert any("http://127.0.0.1:8000" in w for w in warnings)


def test_package_command_refuses_demo_rules(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from broker.deploy.package import main

    assert main(["--rules", str(ROOT / "rules.yaml"), "--out", str(tmp_path / "build")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("make package: refusing to package rules that are not fit for production (--auth api-key)")
    assert not (tmp_path / "build").exists()
    assert main(["--rules", str(ROOT / "rules.yaml"), "--out", str(tmp_path / "build"), "--auth", "jwt"]) == 2
    assert "client 'web-app' has API keys, but with --auth jwt" in capsys.readouterr().err


@pytest.mark.parametrize(("variables", "flags"), [
    pytest.param([], "--auth api-key", id="default_refuses_demo"),
    pytest.param(["STACK_AUTH=jwt", "ALLOW_DEMO=1"], "--auth jwt --allow-demo", id="opt_out"),
])
def test_make_package_runs_the_production_check(variables: list[str], flags: str) -> None:
    proc = subprocess.run(["make", "-n", "-s", "package", *variables], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    command = " ".join(proc.stdout.replace("\\\n", " ").split())
    assert "-m broker.deploy.package" in command
    assert command.endswith(flags), command


def test_zip_is_reproducible(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "pkg").mkdir(parents=True)
    (src / "pkg" / "b.py").write_text("B = 1\n")
    (src / "a.txt").write_text("a\n")
    write_zip(src, tmp_path / "one.zip")
    os.utime(src / "a.txt", (0, 0))
    write_zip(src, tmp_path / "two.zip")
    assert (tmp_path / "one.zip").read_bytes() == (tmp_path / "two.zip").read_bytes()
    with zipfile.ZipFile(tmp_path / "one.zip") as zf:
        assert zf.namelist() == ["a.txt", "pkg/b.py"]
