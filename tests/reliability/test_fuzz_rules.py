"""Hypothesis on rules loading: any YAML yields a RuleSet or a RulesError, never anything else.

Three generators: arbitrary text, YAML documents made by mutating the example ``rules.yaml``
(replacing, deleting or retyping any part), and YAML-looking token soup (anchors, aliases,
tags, flow collections, documents). Whenever a document loads, the RuleSet must keep the
invariants the broker relies on at request time.
"""
from __future__ import annotations

import copy
import time
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from broker.core import keys
from broker.config import load_rules
from broker.config.checks import MULTIPART_LIMIT, SINGLE_POST_LIMIT
from broker.errors import RulesError
from tests.conftest import ROOT
from tests.reliability.conftest import fuzz_settings

BASE = yaml.safe_load((ROOT / "rules.yaml").read_text())
RULES_EXAMPLES = 150

SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-10, 10**13), st.floats(allow_nan=False), st.text(max_size=20),
    st.sampled_from(["5 MiB", "1 kB", "0", "-1 MB", "6 GB", "{uuid}", "uploads/{client}/{uuid}{ext}",
                     "uploads/{uuid}/../x", "${filename}", "{uuid", "{nope}{uuid}", "image/*", "*/*",
                     "AES256", ".png", ".exe", "http://localhost:8000", "*", "group:x", "a" * 300]),
)
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.text(max_size=10), inner, max_size=3), max_leaves=6)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for k, v in node.items():
            out.extend(_paths(v, prefix + (k,)))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out.extend(_paths(v, prefix + (i,)))
    return out


BASE_PATHS = _paths(BASE)


@st.composite
def mutated_rules(draw: Any) -> str:
    """The example rules with one to four parts replaced, deleted or given a new sibling."""
    doc = copy.deepcopy(BASE)
    for _ in range(draw(st.integers(1, 4))):
        path = draw(st.sampled_from(BASE_PATHS))
        parent: Any = doc
        try:
            for part in path[:-1]:
                parent = parent[part]
            action = draw(st.integers(0, 3))
            if action == 0 and isinstance(parent, (dict, list)):
                del parent[path[-1]]
            elif action == 1 and isinstance(parent, dict):
                parent[draw(st.text(min_size=1, max_size=12))] = draw(VALUES)
            else:
                parent[path[-1]] = draw(VALUES)
        except (KeyError, IndexError, TypeError):
            continue
    return yaml.safe_dump(doc, allow_unicode=True)


TOKENS = st.sampled_from([
    "version: 1\n", "bucket: b-1\n", "clients:\n", "  c:\n", "    rules:\n", "      - name: r\n",
    "        max_bytes: 5 MiB\n", "        content_types: [image/png]\n", "    api_key_sha256: [", "a" * 64,
    "]\n", "&a ", "*a", "<<: *a\n", "!!python/object:os.system ", "!!binary ", "!!set ", "? ", ": ",
    "- ", "{", "}", "[", "]", ",", "\n", "  ", "---\n", "...\n", "%YAML 1.1\n", "'", '"', "#", "\t", "\x00",
    "\ufeff", "1e999", "0x1f", "~", "null", "yes", "on", "2001-12-14", "{{uuid}}",
])


def assert_loads_or_refuses(text: str | bytes) -> bool:
    """load_rules gives a RuleSet that keeps the request-time invariants, or a RulesError."""
    try:
        ruleset = load_rules(text, source="fuzz.yaml")
    except RulesError as exc:
        assert exc.problems and all(p.path.startswith("$") and p.message for p in exc.problems)
        return False
    prefixes = []
    for client in ruleset.clients.values():
        assert client.api_key_sha256 or client.principals
        for rule in client.rules.values():
            assert "{uuid}" in rule.key_template and keys.template_problems(rule.key_template) == []
            assert 0 <= rule.min_bytes <= rule.max_bytes
            assert rule.max_bytes <= (MULTIPART_LIMIT if rule.multipart else SINGLE_POST_LIMIT)
            assert 1 <= rule.expires_in <= ruleset.max_expires_in
            assert rule.content_types and all(t == t.lower() for t in rule.content_types)
            prefixes.append((rule.bucket, keys.rule_prefix(rule), client.id))
    for bucket, prefix, cid in prefixes:  # no client can write among another client's keys
        for other_bucket, other_prefix, other_cid in prefixes:
            if bucket == other_bucket and cid != other_cid:
                assert not other_prefix.startswith(prefix), (prefix, other_prefix)
    return True


@given(text=st.one_of(st.text(max_size=300), st.binary(max_size=300)))
@fuzz_settings(RULES_EXAMPLES)
def test_any_text(text: str | bytes, watch: Any) -> None:
    watch.count("fuzz: generated rules documents")
    assert_loads_or_refuses(text)


@given(text=mutated_rules())
@fuzz_settings(2 * RULES_EXAMPLES)
def test_mutated_example_rules(text: str, watch: Any) -> None:
    watch.count("fuzz: generated rules documents")
    if assert_loads_or_refuses(text):
        watch.count("fuzz: generated rules documents that loaded (invariants checked)")


@given(tokens=st.lists(TOKENS, max_size=40))
@fuzz_settings(RULES_EXAMPLES)
def test_yaml_token_soup(tokens: list[str], watch: Any) -> None:
    watch.count("fuzz: generated rules documents")
    assert_loads_or_refuses("".join(tokens))


def _alias_bomb(levels: int) -> str:
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, levels)]
    text = yaml.safe_dump(BASE)
    return "\n".join(lines) + "\n" + text.replace("content_types:\n      - image/png",
                                                  f"content_types:\n      - *a{levels - 1}", 1)


@pytest.mark.parametrize("text, message", [
    pytest.param(_alias_bomb(9), "expand to more than", id="alias_bomb_1e9_values_was_a_hang"),
    pytest.param(yaml.safe_dump(BASE).replace("description: ACME Corp invoice feed.",
                                              "description: " + "[" * 990 + "]" * 990),
                 "nest more than", id="nested_990_deep_was_a_recursion_error"),
    pytest.param("[" * 5000 + "]" * 5000, "", id="nested_5000_deep"),
    pytest.param("!!python/object/apply:os.system ['true']", "", id="python_tag"),
    pytest.param(b"\xff\xfe\x00", "", id="not_text"),
])
def test_hostile_rules_documents_are_refused_quickly(text: str | bytes, message: str) -> None:
    started = time.monotonic()
    with pytest.raises(RulesError) as caught:
        load_rules(text, source="hostile.yaml")
    assert time.monotonic() - started < 5
    assert message in str(caught.value)
