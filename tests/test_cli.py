"""The broker command as an operator runs it (a real subprocess for the entry point)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from broker.cli import main

ROOT = Path(__file__).parent.parent


def test_check_ok(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", str(ROOT / "rules.yaml"), "-v"]) == 0
    out = capsys.readouterr().out
    assert "OK (3 clients, 6 rules" in out and "web-app/avatars" in out


def test_check_lists_every_problem(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "r.yaml"
    bad.write_text((ROOT / "rules.yaml").read_text().replace("max_bytes: 5 MiB", "max_bytes: 0")
                   .replace('"uploads/{client}/{profile}/{date}/{uuid}{ext}"', '"uploads/{client}/{date}"'))
    assert main(["check", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "problem(s)" in err
    assert "rule 'avatars': max_bytes (0) must be >= min_bytes (1) (at $.clients.web-app.rules[0].max_bytes)" in err
    assert "must contain '{uuid}'" in err


@pytest.mark.parametrize("args, code, expect", [
    pytest.param(["--client", "web-app", "--filename", "a.png", "--content-type", "image/png", "--size", "10"],
                 0, {"decision": "allowed", "rule": "avatars"}, id="allowed"),
    pytest.param(["--client", "web-app", "--filename", "a.png", "--content-type", "image/png",
                  "--size", "99999999"], 1, {"decision": "denied", "check": "too_large"}, id="too_large"),
    pytest.param(["--client", "partner-acme", "--profile", "invoices", "--filename", "a.pdf", "--content-type",
                  "application/pdf", "--metadata", "invoice-id=42"], 0, {"decision": "allowed"}, id="metadata"),
    pytest.param(["--client", "web-app", "--filename", "../a.png", "--content-type", "image/png"], 1,
                 {"decision": "error", "path": "$.filename"}, id="hostile_filename"),
])
def test_explain(args: list[str], code: int, expect: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["explain", "--json", *args]) == code
    out = json.loads(capsys.readouterr().out)
    for name, value in expect.items():
        assert out[name] == value
    if out["decision"] == "allowed":
        assert ["content-length-range", out["conditions"][-1][1], out["conditions"][-1][2]] in out["conditions"]


def test_explain_unknown_client(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["explain", "--client", "zz", "--filename", "a", "--content-type", "a/b"]) == 2
    assert "clients: mobile, partner-acme, web-app" in capsys.readouterr().err


def test_hash_key(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["hash-key", "--key", "demo-web-app-key"]) == 0
    assert "80829424f20cc9a729a532deea745a5d35dd104cf080e31182e4f3dc8437af4a" in capsys.readouterr().out
    assert main(["hash-key"]) == 0
    out = capsys.readouterr().out
    assert "api key" in out and "api_key_sha256" in out


def test_python_dash_m_and_help() -> None:
    result = subprocess.run([sys.executable, "-m", "broker", "--help"], capture_output=True, text=True,
                            cwd=ROOT, timeout=60)
    assert result.returncode == 0
    for word in ("check", "explain", "serve", "hash-key", "examples:", "BROKER_RULES"):
        assert word in result.stdout


def test_serve_refuses_broken_rules(tmp_path: Path) -> None:
    bad = tmp_path / "r.yaml"
    bad.write_text("version: 1\n")
    result = subprocess.run([sys.executable, "-m", "broker", "serve", "--rules", str(bad), "--port", "0"],
                            capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 2
    assert "the rules do not load" in result.stderr and "Traceback" not in result.stderr
