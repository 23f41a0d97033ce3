"""``broker check --production``: demo keys, unsafe origins and identities the stack cannot produce."""
from __future__ import annotations

from pathlib import Path

import pytest

from broker.cli import AUTH_CHOICES, main
from broker.config import load_rules
from broker.config import production
from broker.core.rules import api_key_hash

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = (ROOT / "rules.yaml").read_text()
KEY = api_key_hash("a-real-production-key-nobody-has-read")

CLEAN = f"""\
version: 1
bucket: prod-uploads
cors:
  allowed_origins: [https://app.example.com]
clients:
  web:
    api_key_sha256: [{KEY}]
    rules:
      - name: avatars
        max_bytes: 5 MiB
        content_types: [image/png]
  mobile:
    principals: [group:mobile-users, sub:0f1e2d3c]
    rules:
      - name: photos
        max_bytes: 5 MiB
        content_types: [image/jpeg]
  partner:
    principals: [principal:partner-gateway]
    rules:
      - name: invoices
        max_bytes: 5 MiB
        content_types: [application/pdf]
"""


def refused(text: str, auth: str = "api-key") -> list[production.Refusal]:
    return production.placed(production.refusals(load_rules(text, source="r.yaml"), auth=auth), text)


def without(text: str, *clients: str) -> str:
    """``text`` without the named clients' blocks (each runs to the next client or the end)."""
    for cid in clients:
        start = text.index(f"  {cid}:\n")
        nxt = [text.index(f"  {other}:\n") for other in ("web", "mobile", "partner")
               if f"  {other}:\n" in text and text.index(f"  {other}:\n") > start]
        text = text[:start] + (text[min(nxt):] if nxt else "")
    return text


@pytest.mark.parametrize(("auth", "keep"), [
    pytest.param("api-key", "web", id="api_key"),
    pytest.param("jwt", "mobile", id="jwt"),
    pytest.param("lambda", "partner", id="lambda"),
])
def test_rules_one_stack_can_serve_pass(auth: str, keep: str) -> None:
    text = without(CLEAN, *[c for c in ("web", "mobile", "partner") if c != keep])
    assert refused(text, auth) == []


def test_the_demo_keys_are_refused_with_their_line() -> None:
    text = CLEAN.replace(f"[{KEY}]", f"[{KEY}, {api_key_hash('demo-web-app-key')}]")
    found = refused(without(text, "mobile", "partner"))
    assert len(found) == 1
    r = found[0]
    assert (r.path, r.client, r.line) == ("$.clients.web.api_key_sha256[1]", "web", 7)
    assert "demo key 'demo-web-app-key'" in r.message and "broker hash-key" in r.fix
    assert api_key_hash("demo-web-app-key") not in r.words("r.yaml")  # a fingerprint only
    assert set(production.DEMO_KEY_HASHES.values()) == {"demo-web-app-key", "demo-partner-acme-key"}


@pytest.mark.parametrize(("origin", "words"), [
    pytest.param("http://app.example.com", "not HTTPS", id="http"),
    pytest.param("http://localhost:8000", "not HTTPS", id="http_localhost_too"),
    pytest.param("'*'", "any web page", id="star"),
])
def test_unsafe_origins_are_refused(origin: str, words: str) -> None:
    text = without(CLEAN, "mobile", "partner").replace("[https://app.example.com]",
                                                       f"[https://app.example.com, {origin}]")
    (r,) = refused(text)
    assert (r.path, r.line, r.client) == ("$.cors.allowed_origins[1]", 4, None)
    assert words in r.message and r.fix


@pytest.mark.parametrize(("auth", "paths"), [
    pytest.param("api-key", ["$.clients.mobile.principals[0]", "$.clients.mobile.principals[1]",
                             "$.clients.partner.principals[0]"], id="api_key_has_no_principals"),
    pytest.param("jwt", ["$.clients.web.api_key_sha256", "$.clients.partner.principals[0]"],
                 id="jwt_has_no_api_keys_or_lambda_principals"),
    pytest.param("lambda", ["$.clients.web.api_key_sha256", "$.clients.mobile.principals[0]",
                            "$.clients.mobile.principals[1]"], id="lambda_has_no_api_keys_or_jwt_claims"),
])
def test_identities_the_auth_mode_cannot_produce(auth: str, paths: list[str]) -> None:
    found = refused(CLEAN, auth)
    assert [r.path for r in found] == paths
    lines = CLEAN.splitlines()
    for r in found:
        assert r.line is not None and r.client and f"--auth {auth}" in r.message
        name = r.path.rsplit(".", 1)[-1].split("[")[0]
        assert name in lines[r.line - 1]  # the line really is where that field stands
        assert "--auth" in r.fix


def test_the_sample_rules_are_refused_in_every_mode() -> None:
    for auth in production.AUTH_MODES:
        found = refused(SAMPLE, auth)
        assert {"$.clients.web-app.api_key_sha256[0]", "$.clients.partner-acme.api_key_sha256[0]",
                "$.cors.allowed_origins[0]", "$.cors.allowed_origins[1]"} <= {r.path for r in found}


def test_unknown_auth_mode() -> None:
    with pytest.raises(ValueError, match="api-key, jwt, lambda"):
        production.refusals(load_rules(CLEAN), auth="cognito")
    assert sorted(AUTH_CHOICES) == sorted(production.AUTH_MODES)


@pytest.mark.parametrize(("parameters", "mode"), [
    pytest.param({}, "api-key", id="defaults"),
    pytest.param({"JwtIssuer": "https://cognito-idp.us-east-1.amazonaws.com/pool"}, "jwt", id="jwt"),
    pytest.param({"LambdaAuthorizerArn": "arn:aws:lambda:us-east-1:123456789012:function:auth"}, "lambda",
                 id="lambda"),
])
def test_auth_mode_from_stack_parameters(parameters: dict[str, str], mode: str) -> None:
    assert production.auth_mode_for(parameters) == mode


def test_lines_of_reads_json_too() -> None:
    text = '{\n  "version": 1,\n  "bucket": "b",\n  "cors": {"allowed_origins": ["*"]}\n}\n'
    index = production.lines_of(text, ["$.cors.allowed_origins[0]", "$.bucket"])
    assert index["$.cors.allowed_origins[0]"] == 4 and index["$.bucket"] == 3
    assert production.lines_of("version: [", ["$.version"]) == {}


def test_check_production_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "--production", str(ROOT / "rules.yaml")]) == 1
    err = capsys.readouterr().err
    assert "production refusal(s) with --auth api-key" in err
    line = next(n for n, text in enumerate(SAMPLE.splitlines(), 1) if "80829424f2" in text)
    assert f"{ROOT / 'rules.yaml'}:{line}: client 'web-app': API key 80829424 is the demo key" in err
    assert "fix: make a key with `broker hash-key --client web-app`" in err
    assert "principal 'group:mobile-users'" in err and "--auth jwt" in err
    clean = tmp_path / "prod.yaml"
    clean.write_text(without(CLEAN, "web", "partner"))
    assert main(["check", "--production", "--auth", "jwt", str(clean)]) == 0
    assert "fit for production with --auth jwt" in capsys.readouterr().out
    assert main(["check", "--production", str(clean)]) == 1  # the default, api-key, has no principals
    assert main(["check", str(clean)]) == 0  # without --production: only the rules' own checks


def test_parameter_overrides_parse_as_sam_takes_them() -> None:
    assert production.parse_parameter_overrides(
        "JwtIssuer=https://cognito-idp.eu-west-1.amazonaws.com/p1 'JwtAudience=a,b' LambdaAuthorizerArn=") == {
        "JwtIssuer": "https://cognito-idp.eu-west-1.amazonaws.com/p1", "JwtAudience": "a,b", "LambdaAuthorizerArn": ""}
    with pytest.raises(ValueError, match="'JwtIssuer' is not Name=value"):
        production.parse_parameter_overrides("JwtIssuer")


def test_check_production_reads_the_mode_from_the_stack_parameters(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    mobile_only = tmp_path / "mobile.yaml"
    mobile_only.write_text(without(CLEAN, "web", "partner"))
    jwt = "JwtIssuer=https://cognito-idp.eu-west-1.amazonaws.com/p1 JwtAudience=abc"
    assert main(["check", "--production", "--parameter-overrides", jwt, str(mobile_only)]) == 0
    assert "--auth jwt" in capsys.readouterr().out
    assert main(["check", "--production", "--parameter-overrides", "JwtAudience=abc", str(mobile_only)]) == 1
    assert "--auth api-key" in capsys.readouterr().err
    assert main(["check", "--production", "--auth", "lambda", "--parameter-overrides", jwt, str(mobile_only)]) == 2
    assert "contradicts --parameter-overrides" in capsys.readouterr().err
    assert main(["check", "--production", "--parameter-overrides", "JwtIssuer", str(mobile_only)]) == 2
    assert "is not Name=value" in capsys.readouterr().err
