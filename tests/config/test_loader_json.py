"""Rules written as JSON: the same checks and results as YAML, JSON's own syntax errors."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from broker.cli import main
from broker.config import load_rules, load_rules_file
from broker.errors import RulesError
from broker.models import RuleSet
from broker.config.sources import FileSource, S3Source, StaticSource
from broker.s3.store import Fetched

ROOT = Path(__file__).resolve().parent.parent.parent
RULES = ROOT / "tests" / "rules"
VALID = [ROOT / "rules.yaml", *sorted((RULES / "valid").glob("*.yaml"))]
INVALID = [p for p in sorted((RULES / "invalid").glob("*.yaml")) if p.stem != "not_yaml"]


def as_json(path: Path) -> str:
    return json.dumps(yaml.safe_load(path.read_text()), indent=2)


def same_rules(one: RuleSet, two: RuleSet) -> bool:
    return dataclasses.replace(one, source="") == dataclasses.replace(two, source="")


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.stem)
def test_valid_json_rules_load_as_the_yaml_ones(path: Path, tmp_path: Path) -> None:
    json_path = tmp_path / f"{path.stem}.json"
    json_path.write_text(as_json(path))
    from_yaml, from_json = load_rules_file(path), load_rules_file(json_path)
    assert same_rules(from_yaml, from_json)
    assert from_json.digest == from_yaml.digest and from_json.source == str(json_path)


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.stem)
def test_invalid_json_rules_report_what_the_yaml_ones_report(path: Path) -> None:
    with pytest.raises(RulesError) as from_yaml:
        load_rules(path.read_text(), source="rules.yaml")
    text = as_json(path)
    with pytest.raises(RulesError) as from_json:
        load_rules(text, source="rules.json")
    unplaced = [dataclasses.replace(p, line=None, column=None) for p in from_json.value.problems]
    assert sorted(unplaced, key=str) == sorted((dataclasses.replace(p, line=None, column=None)
                                                for p in from_yaml.value.problems), key=str)
    for problem in from_json.value.problems:  # each placed on its key (or item) in the JSON text
        assert problem.line is not None and problem.column is not None, problem
        at = text.splitlines()[problem.line - 1][problem.column - 1:]
        last = problem.path.rsplit(".", 1)[-1]
        inherited = f'"{last}"' not in text  # a default: placed on the rule
        assert at.startswith(f'"{last.split("[")[0]}"') or (last.endswith("]") and at[:1] in '"{[0123456789-tfn') \
            or (inherited and at.startswith("{")), (str(problem), at)


@pytest.mark.parametrize("text, line, column", [
    pytest.param('{\n  "version": 1,\n  "bucket": "b",\n}\n', 4, 1, id="trailing_comma"),
    pytest.param("{\n  'version': 1\n}", 2, 3, id="single_quotes"),
    pytest.param('{"version": 1, // one\n"bucket": "b"}', 1, 16, id="comment"),
    pytest.param("{version: 1, bucket: b}", 1, 2, id="yaml_flow_style"),
    pytest.param('{"version": 1', 1, 14, id="unclosed"),
    pytest.param('{"version": 1}\n{"version": 1}', 2, 1, id="two_documents"),
    pytest.param("", 1, 1, id="empty"),
])
def test_json_syntax_error_names_file_line_and_column(text: str, line: int, column: int) -> None:
    with pytest.raises(RulesError) as caught:
        load_rules(text, source="conf/rules.json")
    [problem] = caught.value.problems
    assert problem.path == "$"
    assert (problem.line, problem.column) == (line, column)
    assert problem.message.startswith("not valid JSON: ")
    assert f"line {line}, column {column}: not valid JSON: " in str(caught.value)
    assert "strict JSON" in problem.message and "name it .yaml" in problem.message  # how to fix it
    assert str(caught.value).startswith("conf/rules.json: 1 problem")


@pytest.mark.parametrize("text, message", [
    pytest.param("[1, 2]", "the rules file must be a JSON object with version, bucket and clients",
                 id="not_an_object"),
    pytest.param(b"\xff\xfe\x00", "not valid JSON: the text cannot be decoded", id="not_text"),
    pytest.param("[" * 100_000 + "]" * 100_000, "nest more than 32 levels", id="nested_100000_deep"),
    pytest.param('{"a": ' + "1" * 5000 + "}", "not valid JSON: ", id="integer_of_5000_digits"),
])
def test_hostile_json_is_refused(text: str | bytes, message: str) -> None:
    with pytest.raises(RulesError) as caught:
        load_rules(text, source="rules.json")
    assert message in str(caught.value)


@pytest.mark.parametrize("text", [
    pytest.param("\ufeff" + as_json(RULES / "valid" / "minimal.yaml"), id="bom_text"),
    pytest.param(b"\xef\xbb\xbf" + as_json(RULES / "valid" / "minimal.yaml").encode(), id="bom_bytes"),
    pytest.param(as_json(RULES / "valid" / "minimal.yaml").encode("utf-16"), id="utf16"),
])
def test_json_encodings(text: str | bytes) -> None:
    assert same_rules(load_rules(text, source="r.json"), load_rules_file(RULES / "valid" / "minimal.yaml"))


def test_a_yaml_file_is_yaml_whatever_its_first_character() -> None:
    """A .yaml file that starts with '{' means what it means with a comment line on top."""
    doc = yaml.safe_load((RULES / "valid" / "minimal.yaml").read_text())
    text = json.dumps(doc).replace('"max_bytes": 10', '"max_bytes": 5e6')
    assert '"max_bytes": 5e6' in text

    def outcome(source_text: str) -> Any:
        try:
            return load_rules(source_text, source="rules.yaml")
        except RulesError as exc:
            return exc.problems

    plain, commented = outcome(text), outcome("# the rules\n" + text)
    assert isinstance(plain, list)  # YAML 1.1 reads 5e6 as text, not a size: refused either way
    assert [dataclasses.replace(p, line=p.line + 1) for p in plain] == commented  # one line further down
    assert any(p.path.endswith(".max_bytes") for p in plain)


def test_json_text_in_a_yaml_file_is_read_either_way() -> None:
    minimal = load_rules_file(RULES / "valid" / "minimal.yaml")
    assert same_rules(load_rules(as_json(RULES / "valid" / "minimal.yaml"), source="rules.yaml"), minimal)
    flow = yaml.safe_dump(yaml.safe_load((RULES / "valid" / "minimal.yaml").read_text()),
                          default_flow_style=True, sort_keys=False)
    assert flow.startswith("{")
    with pytest.raises(ValueError):
        json.loads(flow)  # YAML's flow style is not JSON, and stays YAML
    assert same_rules(load_rules(flow, source="rules.yaml"), minimal)
    with pytest.raises(RulesError, match="line 1, column 15: not valid YAML: "):  # a YAML file: YAML's errors
        load_rules('{"version": 1,, }', source="rules.yaml")


def test_check_command_accepts_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good, bad = tmp_path / "rules.json", tmp_path / "broken.json"
    good.write_text(as_json(ROOT / "rules.yaml"))
    bad.write_text(as_json(ROOT / "rules.yaml")[:-3])
    assert main(["check", str(good)]) == 0
    assert "OK (3 clients, 6 rules" in capsys.readouterr().out
    assert main(["check", str(bad)]) == 1
    assert "not valid JSON: " in capsys.readouterr().err


class _Objects:
    """A fake store, just enough for S3Source: one object, no conditional requests."""

    def __init__(self, body: bytes) -> None:
        self.body = body

    def get_object(self, bucket: str, key: str, *, max_bytes: int, if_none_match: str | None = None) -> Fetched:
        return Fetched(self.body, '"1"', len(self.body))


def test_every_source_reads_json(tmp_path: Path) -> None:
    text = as_json(RULES / "valid" / "minimal.yaml")
    expected = load_rules_file(RULES / "valid" / "minimal.yaml")
    (tmp_path / "rules.json").write_text(text)
    fetched = [
        FileSource(str(tmp_path / "rules.json")).fetch(None)[0],
        S3Source("s3://bucket/conf/rules.json", _Objects(text.encode())).fetch(None)[0],
        StaticSource(text).fetch(None)[0],
    ]
    assert all(rules is not None and same_rules(rules, expected) for rules in fetched)
    with pytest.raises(RulesError, match="line 1, column 2: not valid JSON: "):
        S3Source("s3://bucket/rules.json", _Objects(b"{nope}")).fetch(None)
