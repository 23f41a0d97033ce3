"""Rules problems an operator can act on: duplicates refused, every problem at its line, plain words.

A key written twice in one mapping is refused in YAML and JSON alike, naming both places;
each problem names its line and column as well as its JSON path; a broken rule does not
also produce the follow-on problems that only restate it; unknown fields get "did you mean";
no message shows a regular expression.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings

from broker.config import load_rules, load_rules_file
from broker.config.schemas import PATTERN_WORDS, load
from broker.config.sources import FileSource, RulesProvider
from broker.errors import Problem, RulesError
from tests.reliability.test_fuzz_rules import mutated_rules

ROOT = Path(__file__).resolve().parents[2]
KEY1, KEY2 = "1" * 64, "2" * 64


def problems(text: str | bytes, source: str = "rules.yaml") -> list[Problem]:
    with pytest.raises(RulesError) as caught:
        load_rules(text, source=source)
    return caught.value.problems


def at(text: str, problem: Problem) -> str:
    """The text from the problem's line and column on."""
    assert problem.line is not None and problem.column is not None, problem
    return text.splitlines()[problem.line - 1][problem.column - 1:]


# ----------------------------------------------------------------------------- duplicate keys

CLIENT_PASTED_TWICE = f"""\
version: 1
bucket: b-uploads
clients:
  web-app:
    api_key_sha256: ["{KEY1}"]
    rules:
      - {{name: avatars, max_bytes: 5 MiB, content_types: [image/png]}}
  other:
    api_key_sha256: ["{KEY2}"]
    rules: [{{name: a, max_bytes: 1, content_types: [image/png]}}]
  web-app:
    api_key_sha256: ["{"3" * 64}"]
    rules:
      - {{name: avatars, max_bytes: 1 GiB, content_types: ["*/*"]}}
"""


def test_a_client_pasted_twice_is_refused_naming_both_lines() -> None:
    [problem] = problems(CLIENT_PASTED_TWICE)
    assert problem.path == "$.clients.web-app"
    assert (problem.line, problem.column) == (11, 3)
    assert "'web-app' is written twice in this mapping (first at line 4, column 3)" in problem.message
    assert "two clients are named 'web-app'" in problem.message
    assert str(problem).startswith("line 11, column 3: ")


def test_a_client_pasted_twice_in_json_is_refused_naming_both_lines() -> None:
    text = ('{"version": 1, "bucket": "b-uploads", "clients": {\n'
            f'  "web-app": {{"api_key_sha256": ["{KEY1}"], "rules": [{{"name": "a", "max_bytes": 1}}]}},\n'
            f'  "web-app": {{"api_key_sha256": ["{KEY2}"], "rules": [{{"name": "a", "max_bytes": 2}}]}}\n'
            "}}\n")
    [problem] = problems(text, "rules.json")
    assert problem.path == "$.clients.web-app"
    assert (problem.line, problem.column) == (3, 3)
    assert "(first at line 2, column 3)" in problem.message and "two clients are named 'web-app'" in problem.message


@pytest.mark.parametrize("fmt", ["yaml", "json"])
def test_a_field_written_twice_in_a_rule_is_refused(fmt: str) -> None:
    if fmt == "yaml":
        text = (f"version: 1\nbucket: b-uploads\nclients:\n  acme:\n    api_key_sha256: ['{KEY1}']\n    rules:\n"
                "      - name: a\n        max_bytes: 5 MB\n        content_types: [image/png]\n"
                "        max_bytes: 5 GB\n")
        first, again = (8, 9), (10, 9)
    else:
        text = (f'{{"version": 1, "bucket": "b-uploads", "clients": {{"acme": {{"api_key_sha256": ["{KEY1}"],\n'
                ' "rules": [{"name": "a", "max_bytes": "5 MB",\n            "max_bytes": "5 GB"}]}}}\n')
        first, again = (2, 26), (3, 13)
    [problem] = problems(text, f"rules.{fmt}")
    assert problem.path == "$.clients.acme.rules[0].max_bytes"
    assert (problem.line, problem.column) == again
    assert f"(first at line {first[0]}, column {first[1]})" in problem.message
    assert at(text, problem).lstrip('"').startswith("max_bytes")


def test_every_duplicate_is_reported_in_text_order_and_nothing_else() -> None:
    text = CLIENT_PASTED_TWICE.replace("{name: avatars, max_bytes: 5 MiB",
                                       "{name: avatars, acl: private, acl: public-read, max_bytes: 5 MiB")
    found = problems(text)
    assert [(p.path, p.line) for p in found] == [("$.clients.web-app.rules[0].acl", 7), ("$.clients.web-app", 11)]


def test_key_rotation_pasted_as_a_second_list_is_refused() -> None:
    good = CLIENT_PASTED_TWICE.split(f'  web-app:\n    api_key_sha256: ["{"3" * 64}"]')[0]  # one web-app
    first = f'    api_key_sha256: ["{KEY1}"]\n'
    text = good.replace(first, first + f'    api_key_sha256: ["{"4" * 64}"]\n', 1)
    [problem] = problems(text)
    assert problem.path == "$.clients.web-app.api_key_sha256" and (problem.line, problem.column) == (6, 5)
    assert "broker hash-key --client" in problem.message


@pytest.mark.parametrize("text", [
    pytest.param("version: 1\nbucket: b-uploads\nbucket: c-uploads\nclients: {}\n", id="top_level"),
    pytest.param("version: 1\nbucket: b-uploads\nclients:\n  a:\n    rules: [{name: x, 'name': y}]\n", id="quoted"),
    pytest.param("version: 1\nd: &d {max_bytes: 1}\nx:\n  <<: *d\n  k: 1\n  k: 2\n", id="beside_a_merge"),
])
def test_duplicates_anywhere_are_refused(text: str) -> None:
    found = problems(text)
    assert found and all("is written twice in this mapping" in p.message and p.line for p in found)


def test_a_merge_key_override_is_not_a_duplicate() -> None:
    text = (f"version: 1\nbucket: b-uploads\nclients:\n  acme:\n    api_key_sha256: ['{KEY1}']\n    rules:\n"
            "      - &base {name: a, max_bytes: 10, content_types: [image/png]}\n"
            "      - {<<: *base, name: b, key: 'other/{client}/{uuid}'}\n")
    assert set(load_rules(text).clients["acme"].rules) == {"a", "b"}


def test_a_hot_reload_of_a_pasted_client_keeps_the_rules_in_force(tmp_path: Path) -> None:
    import os

    path, logs, now = tmp_path / "rules.yaml", [], [0.0]
    good = CLIENT_PASTED_TWICE.split("  web-app:\n    api_key_sha256: [\"3")[0]
    path.write_text(good)
    provider = RulesProvider(FileSource(str(path)), reload_seconds=5, clock=lambda: now[0],
                             log=lambda event, **fields: logs.append((event, fields)))
    first = provider.current()
    assert first.by_api_key[KEY1] == "web-app"
    path.write_text(CLIENT_PASTED_TWICE)
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    now[0] = 10.0
    assert provider.current() is first  # the pasted block replaced nothing
    assert any("written twice" in str(fields) for _, fields in logs), logs


# ----------------------------------------------------------------------------- lines and columns

def test_semantic_problems_name_line_and_column() -> None:
    text = f"""\
version: 1
bucket: b-uploads
max_expires_in: 600
defaults:
  key: "uploads/{{client}}{{uuid}}"
clients:
  acme:
    api_key_sha256: ["{KEY1}"]
    rules:
      - name: a
        content_types: [image/png]
        max_bytes: 10
        min_bytes: 100
        expires_in: 900
      - {{name: b, max_bytes: 10, content_types: [image/png], extensions: [.png, .pdf]}}
  acme-corp:
    api_key_sha256: ["{KEY2}"]
    rules: [{{name: a, max_bytes: 1, content_types: [image/png]}}]
"""
    found = problems(text)
    places = {p.path: (p.line, p.column) for p in found}
    assert places["$.clients.acme.rules[0].max_bytes"] == (12, 9)
    assert places["$.clients.acme.rules[0].expires_in"] == (14, 9)
    assert places["$.clients.acme.rules[1].extensions[1]"] == (15, 81)
    assert places["$.clients.acme.rules[0].key"] == (5, 3)  # inherited: placed where defaults says it
    assert [p.line for p in found] == sorted(p.line for p in found)  # in the order they stand in the file
    for problem in found:
        assert f"line {problem.line}, column {problem.column}: " in str(problem)


def test_json_semantic_problems_name_line_and_column() -> None:
    doc = yaml.safe_load((ROOT / "tests" / "rules" / "invalid" / "min_above_max.yaml").read_text())
    text = json.dumps(doc, indent=2)
    [problem] = problems(text, "rules.json")
    assert problem.path == "$.clients.acme.rules[0].max_bytes"
    assert at(text, problem).startswith('"max_bytes": 10')


@settings(max_examples=150, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(text=mutated_rules())
def test_every_problem_of_a_parsed_file_has_a_line_inside_it(text: str) -> None:
    try:
        load_rules(text)
    except RulesError as exc:
        lines = text.splitlines()
        for problem in exc.problems:
            if problem.line is None:  # only problems of the whole document, found before any path
                assert problem.path == "$", problem
                continue
            assert 1 <= problem.line <= max(1, len(lines)) and problem.column and problem.column >= 1, problem


# ----------------------------------------------------------------------------- no follow-on problems

def test_a_typo_in_a_rule_gives_one_problem_not_a_misleading_second() -> None:
    text = (ROOT / "rules.yaml").read_text().replace("        max_bytes: 5 MiB\n", "        max_byte: 5 MiB\n", 1)
    [problem] = problems(text)
    assert problem.path == "$.clients.web-app.rules[0].max_byte"
    assert problem.message == "unknown field 'max_byte'; did you mean 'max_bytes'?"
    assert at(text, problem).startswith("max_byte: 5 MiB")


def test_an_unknown_field_is_named_even_beside_an_invalid_one() -> None:
    text = (f"version: 1\nbucket: b-uploads\nclients:\n  acme:\n    api_key_sha256: ['{KEY1}']\n"
            "    rules: [{name: a, max_byte: 10, acl: privat, content_types: [image/png]}]\n")
    found = {p.path: p.message for p in problems(text)}
    assert found == {
        "$.clients.acme.rules[0].max_byte": "unknown field 'max_byte'; did you mean 'max_bytes'?",
        "$.clients.acme.rules[0].acl": "'privat' is not one of 'private', 'public-read', 'authenticated-read', "
                                       "'bucket-owner-read', 'bucket-owner-full-control'; did you mean 'private'?",
    }


# ----------------------------------------------------------------------------- did you mean, plain words

@pytest.mark.parametrize("edit, path, hint", [
    (("clients:", "client:"), "$.client", "did you mean 'clients'?"),
    (("    api_key_sha256:\n      - 8", "    api_keys_sha256:\n      - 8"), "$.clients.web-app.api_keys_sha256",
     "did you mean 'api_key_sha256'?"),
    (("        content_types: [image/png, image/jpeg", "        content_type: [image/png, image/jpeg"),
     "$.clients.web-app.rules[0].content_type", "did you mean 'content_types'?"),
    (("  expires_in: 300", "  Expires_In: 300"), "$.defaults.Expires_In", "did you mean 'expires_in'?"),
    (("    default_profile: avatars", "    default_profile: avatar"), "$.clients.web-app.default_profile",
     "did you mean 'avatars'?"),
    (("        content_disposition: inline", "        content_disposition: inlined"),
     "$.clients.web-app.rules[0].content_disposition", "did you mean 'inline'?"),
    (("        max_bytes: 5 MiB\n", "        sizelimit: 5 MiB\n"), "$.clients.web-app.rules[0].sizelimit",
     "the fields here are: acl, bucket, cache_control"),
])
def test_did_you_mean(edit: tuple[str, str], path: str, hint: str) -> None:
    original = (ROOT / "rules.yaml").read_text()
    assert edit[0] in original
    found = problems(original.replace(*edit, 1))
    assert any(p.path == path and hint in p.message for p in found), [str(p) for p in found]


def _patterns(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [v for k, v in node.items() if k == "pattern"] + [p for v in node.values() for p in _patterns(v)]
    if isinstance(node, list):
        return [p for v in node for p in _patterns(v)]
    return []


def test_every_pattern_of_the_rules_schema_has_words() -> None:
    patterns = _patterns(load("rules"))
    assert len(patterns) >= 10
    assert [p for p in patterns if p not in PATTERN_WORDS] == []


REGEX = re.compile(r"\^|\$\W|\\[sdwx.]|\{\d+,\d+\}|\[[a-z0-9]-")


@pytest.mark.parametrize("edit", [
    ("region: us-east-1", "region: US East"),
    ("bucket: broker-uploads", "bucket: Broker_Uploads"),
    ("    - http://localhost:8000", "    - http://localhost:8000/"),
    ("      - 80829424f20cc9a729a532deea745a5d35dd104cf080e31182e4f3dc8437af4a", "      - 80829424F20CC9"),
    ("extensions: [.png, .jpg,", "extensions: [png, .jpg,"),
    ("content_types: [image/png,", "content_types: [image/png; charset=x,"),
    ("cache_control: \"public, max-age=86400\"", "cache_control: \"caf\u00e9\""),
    ("metadata: {source: web-app}", "metadata: {Source: web-app}"),
    ("client_metadata: [title]", "client_metadata: [Title]"),
    ("  web-app:\n", "  Web.App:\n"),
    ("max_bytes: 5 MiB", "max_bytes: 5 megabytes"),
])
def test_messages_are_plain_words_not_regular_expressions(edit: tuple[str, str]) -> None:
    original = (ROOT / "rules.yaml").read_text()
    assert edit[0] in original
    found = problems(original.replace(*edit, 1))
    assert found
    for problem in found:
        assert not REGEX.search(problem.message), str(problem)
        assert problem.line is not None


def test_the_regex_detector_would_see_a_regex() -> None:
    assert all(REGEX.search(f"x {p} y") for p in _patterns(load("rules")))


def test_rules_files_in_the_repository_still_load() -> None:
    assert load_rules_file(ROOT / "rules.yaml").clients
