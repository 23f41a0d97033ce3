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


DEMO_HASH = "80829424f20cc9a729a532deea745a5d35dd104cf080e31182e4f3dc8437af4a"  # sha256("demo-web-app-key")


def test_hash_key(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["hash-key", "--key", "demo-web-app-key"]) == 0
    assert f"      - {DEMO_HASH}  # added " in capsys.readouterr().out
    assert main(["hash-key"]) == 0
    out, err = capsys.readouterr()
    assert "api key (give it to the client" in err and "bk_" in err and "bk_" not in out  # the key: never pasted
    assert "api_key_sha256 list" in out and "\n      - " in out


def _paste_under_web_app_keys(item: str) -> str:
    """rules.yaml with ``item`` pasted as the hash-key comment says: under web-app's keys already there."""
    text = (ROOT / "rules.yaml").read_text()
    line = next(x for x in text.splitlines(keepends=True) if DEMO_HASH in x)
    return text.replace(line, line + item, 1)


def test_hash_key_prints_a_list_item_that_pasted_keeps_the_old_keys(capsys: pytest.CaptureFixture[str]) -> None:
    from broker.config import load_rules
    from broker.core.rules import api_key_hash

    assert main(["hash-key"]) == 0
    out, err = capsys.readouterr()
    key = err.split(": ")[-1].strip()
    [item] = [x for x in out.splitlines(keepends=True) if not x.startswith("#")]
    assert out.startswith("# ") and "under the keys already there" in out
    client = load_rules(_paste_under_web_app_keys(item)).clients["web-app"]
    assert client.api_key_sha256 == (DEMO_HASH, api_key_hash(key))  # old key kept, new one added


def test_the_old_way_of_pasting_is_now_refused() -> None:
    from broker.config import load_rules
    from broker.errors import RulesError

    pasted = _paste_under_web_app_keys('    api_key_sha256: ["' + "0" * 64 + '"]\n')
    with pytest.raises(RulesError) as caught:
        load_rules(pasted)
    [problem] = caught.value.problems
    assert problem.path == "$.clients.web-app.api_key_sha256" and "written twice" in problem.message
    assert "broker hash-key --client" in problem.message


def _block_lines(out: str) -> tuple[str, str]:
    """The rules block hash-key --client printed, and the line it says to replace."""
    lines = out.splitlines(keepends=True)
    return "".join(x for x in lines if not x.startswith("#")), out.split("(line ")[1].split(")")[0]


def test_hash_key_for_a_client_prints_its_whole_list_with_the_new_key(capsys: pytest.CaptureFixture[str]) -> None:
    from broker.config import load_rules
    from broker.core.rules import api_key_hash

    assert main(["hash-key", "--client", "web-app", "--rules", str(ROOT / "rules.yaml")]) == 0
    out, err = capsys.readouterr()
    key = err.split(": ")[-1].strip()
    block, line = _block_lines(out)
    assert "its 1 key kept, the new one last" in out
    text = (ROOT / "rules.yaml").read_text().splitlines(keepends=True)
    start = int(line) - 1
    assert text[start].strip() == "api_key_sha256:" and DEMO_HASH in text[start + 1]
    replaced = "".join(text[:start] + [block] + text[start + 2:])  # the old list: the key and one item
    client = load_rules(replaced).clients["web-app"]
    assert client.api_key_sha256 == (DEMO_HASH, api_key_hash(key))


def test_hash_key_for_a_client_without_keys_and_in_json_rules(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    import yaml

    assert main(["hash-key", "--key", "k1", "--client", "mobile", "--rules", str(ROOT / "rules.yaml")]) == 0
    out = capsys.readouterr().out
    assert "add this to client 'mobile'" in out and "    api_key_sha256:\n      - " in out
    rules_json = tmp_path / "rules.json"
    rules_json.write_text(json.dumps(yaml.safe_load((ROOT / "rules.yaml").read_text()), indent=2))
    assert main(["hash-key", "--key", "k1", "--client", "web-app", "--rules", str(rules_json), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["api_key"] is None and doc["client"] == "web-app"
    assert doc["api_key_sha256_list"] == [DEMO_HASH, doc["api_key_sha256"]]
    assert main(["hash-key", "--key", "k1", "--client", "web-app", "--rules", str(rules_json)]) == 0
    assert f'"api_key_sha256": ["{DEMO_HASH}", "{doc["api_key_sha256"]}"]' in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    pytest.param(["--client", "nope"], "unknown client 'nope'", id="unknown_client"),
    pytest.param(["--key", "demo-partner-acme-key", "--client", "web-app"], "already belongs to client 'partner-acme'",
                 id="key_of_another_client"),
    pytest.param(["--key", "", ], "no key to hash: --key was empty", id="empty_key"),
])
def test_hash_key_refuses(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["hash-key", *argv, "--rules", str(ROOT / "rules.yaml")]) == 2
    out, err = capsys.readouterr()
    assert message in err and out == ""


@pytest.mark.parametrize("stdin", ["", "\n", "   \n"])
def test_hash_key_refuses_empty_stdin(stdin: str) -> None:
    result = subprocess.run([sys.executable, "-m", "broker", "hash-key", "--stdin"], input=stdin,
                            capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 2
    assert "no key to hash: standard input was empty" in result.stderr
    assert result.stdout == "" and "bk_" not in result.stderr  # no key made up instead


def test_hash_key_reads_stdin() -> None:
    result = subprocess.run([sys.executable, "-m", "broker", "hash-key", "--stdin"], input="demo-web-app-key\n",
                            capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 0 and f"- {DEMO_HASH}" in result.stdout and result.stderr == ""


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
