"""Rules loading: every file under tests/rules/ is a case; invalid ones say what they expect."""
from __future__ import annotations

from pathlib import Path

import pytest

from broker.config import Settings, load_rules, load_rules_file
from broker.core.sizes import parse_size
from broker.errors import ConfigError, RulesError

RULES = Path(__file__).resolve().parents[1] / "rules"
ROOT = Path(__file__).resolve().parents[2]
MINIMAL = """\
version: 1
bucket: b-uploads
clients:
  acme:
    api_key_sha256: ["0000000000000000000000000000000000000000000000000000000000000001"]
    rules:
      - {name: a, max_bytes: 10, content_types: [image/png]}
"""


def _expectation(path: Path) -> tuple[str, tuple[int, int], str]:
    first = path.read_text().splitlines()[0]
    assert first.startswith("# expect: "), f"{path} must start with '# expect: <path> @ <line>:<column> | <message>'"
    where, message = first[len("# expect: "):].split(" | ", 1)
    where, position = where.split(" @ ")
    line, column = position.split(":")
    return where.strip(), (int(line), int(column)), message.strip()


@pytest.mark.parametrize("path", sorted((RULES / "invalid").glob("*.yaml")), ids=lambda p: p.stem)
def test_invalid_rules_name_path_line_and_problem(path: Path) -> None:
    where, (line, column), message = _expectation(path)
    with pytest.raises(RulesError) as exc:
        load_rules_file(path)
    matching = [p for p in exc.value.problems if p.path == where and message in str(p)]
    assert matching, f"expected a problem at {where} containing {message!r}; got:\n{exc.value}"
    assert (matching[0].line, matching[0].column) == (line, column), str(matching[0])
    assert f"line {line}, column {column}: " in exc.value.message


@pytest.mark.parametrize("path", [ROOT / "rules.yaml", *sorted((RULES / "valid").glob("*.yaml"))],
                         ids=lambda p: p.stem)
def test_valid_rules_load(path: Path) -> None:
    ruleset = load_rules_file(path)
    assert ruleset.clients


def test_every_problem_is_reported_at_once() -> None:
    text = """
version: 1
bucket: b-uploads
clients:
  acme:
    api_key_sha256: ["0000000000000000000000000000000000000000000000000000000000000001"]
    rules:
      - {name: a, min_bytes: 9, max_bytes: 1, content_types: [image/png], key: "x/{uuid}/{bad}"}
      - {name: b, max_bytes: 1, content_types: [image/png], extensions: [.xyz]}
      - {name: c, max_bytes: 1, content_types: [image/png], acl: world-writable}
"""
    with pytest.raises(RulesError) as exc:
        load_rules(text)
    text_out = str(exc.value)
    assert "max_bytes (1) must be >= min_bytes (9)" in text_out
    assert "unknown placeholder '{bad}'" in text_out
    assert "'.xyz'" in text_out
    assert "$.clients.acme.rules[2].acl" in text_out
    assert "rule 'b'" in text_out


def test_rules_error_message_is_readable() -> None:
    with pytest.raises(RulesError) as exc:
        load_rules_file(RULES / "invalid" / "min_above_max.yaml")
    assert "1 problem in the rules" in exc.value.message
    assert "line 8, column 41: rule 'avatars': max_bytes (10) must be >= min_bytes (100) " \
           "(at $.clients.acme.rules[0].max_bytes)" in exc.value.message


def test_missing_file_is_a_rules_error() -> None:
    with pytest.raises(RulesError, match="cannot read the rules file"):
        load_rules_file(RULES / "does-not-exist.yaml")


def test_top_level_not_a_mapping() -> None:
    with pytest.raises(RulesError, match="must be a YAML mapping"):
        load_rules("- just\n- a list\n")


@pytest.mark.parametrize("value, expected", [
    (10, 10), ("5 MB", 5_000_000), ("5MiB", 5 * 1024**2), ("1.5 kB", 1500), ("2 GiB", 2 * 1024**3),
    ("5 mb", 5_000_000), ("5 Mb", 5_000_000), ("5 KB", 5000), ("5 kb", 5000), ("5 mib", 5 * 1024**2),
    ("5 MIB", 5 * 1024**2), ("3 gb", 3 * 1000**3), ("1 tib", 1024**4), ("7 b", 7), ("7 B", 7),
    ("4.35 MB", 4_350_000), ("1.1 kB", 1100), ("0.5 KiB", 512),  # exact: no float rounding down to 4349999
])
def test_parse_size(value: object, expected: int) -> None:
    assert parse_size(value) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize("value", ["5 megs", "5 Mbit", "MB", "5 M", "-5 MB", "5 MiBs", "1e3 kB"])
def test_parse_size_refuses_what_is_not_a_size(value: str) -> None:
    with pytest.raises(ValueError, match="is not a size such as 1048576 .* any case"):
        parse_size(value)


@pytest.mark.parametrize("size", ["5 mb", "5 Mb", "5 MB", "5 mib", "2 GB", "2 gib", "10 kb", "10 KiB", "1 b"])
def test_sizes_in_any_case_load_in_rules_and_sessions(size: str) -> None:
    from broker.config.schemas import validator

    ruleset = load_rules(MINIMAL.replace("max_bytes: 10", f"max_bytes: {size}"))
    assert ruleset.clients["acme"].rules["a"].max_bytes == parse_size(size)
    assert validator("session-request").is_valid({"max_bytes": size})


def test_principal_and_key_lookups(ruleset: object) -> None:
    from broker.core.rules import api_key_hash

    assert ruleset.by_api_key[api_key_hash("demo-web-app-key")] == "web-app"  # type: ignore[attr-defined]
    assert ruleset.by_principal["group:mobile-users"] == "mobile"  # type: ignore[attr-defined]


def test_settings_from_env() -> None:
    s = Settings.from_env({"AWS_ENDPOINT_URL_S3": "http://127.0.0.1:8333", "BROKER_PORT": "9000",
                           "BROKER_RULES": "s3://b/rules.yaml"})
    assert s.s3_endpoint_url == "http://127.0.0.1:8333"
    assert s.s3_addressing_style == "path"
    assert s.port == 9000
    assert s.rules_reload_seconds == 60.0
    assert Settings.from_env({}).s3_addressing_style == "auto"


@pytest.mark.parametrize("env, message", [
    ({"BROKER_PORT": "eighty"}, "BROKER_PORT='eighty' is not a valid int"),
    ({"BROKER_RULES_RELOAD_SECONDS": "-1"}, "must not be negative"),
    ({"BROKER_S3_ADDRESSING_STYLE": "dns"}, "is not one of: auto, path, virtual"),
])
def test_bad_settings(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings.from_env(env)


def test_a_large_realistic_rules_document_is_not_taken_for_an_alias_bomb() -> None:
    from broker.config.loader import _oversized

    clients = {f"client-{i}": {"api_key_sha256": ["0" * 64], "rules": [
        {"name": "a", "max_bytes": 10, "content_types": ["image/png", "image/jpeg"], "metadata": {"x": "y"}}] * 3}
        for i in range(10_000)}
    assert _oversized({"version": 1, "bucket": "b", "clients": clients}) is None


def test_integral_floats_in_integer_fields_load_as_integers() -> None:
    # JSON Schema counts 1000.0 as an integer; S3 wants success_action_status "201", not "201.0"
    ruleset = load_rules("""
version: 1
bucket: b-uploads
max_expires_in: 3600.0
clients:
  acme:
    api_key_sha256: ["0000000000000000000000000000000000000000000000000000000000000001"]
    rules:
      - {name: a, min_bytes: 1.0e+3, max_bytes: 5000.0, expires_in: 300.0, success_action_status: 201.0,
         content_types: [image/png]}
""")
    rule = ruleset.clients["acme"].rules["a"]
    assert (rule.min_bytes, rule.max_bytes, rule.expires_in, rule.success_action_status) == (1000, 5000, 300, "201")
    assert ruleset.max_expires_in == 3600 and type(ruleset.max_expires_in) is int


@pytest.mark.parametrize("text", ["a: 0x_", "a: !!int abc", "a: !!bool maybe", "a: !!timestamp nope"])
def test_values_pyyaml_cannot_convert_are_rules_errors(text: str) -> None:
    with pytest.raises(RulesError, match="not valid YAML: a tagged or number-like value cannot be converted"):
        load_rules(text)
