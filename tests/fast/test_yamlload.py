"""The rules loader's YAML reader means exactly what PyYAML's safe C loader means.

``broker.yamlload.Loader`` builds plain subtrees itself and leaves everything else to PyYAML, so
each document below is read by both and must give the same values (types included), the
same shared objects (anchors and aliases, cycles), or the same exception and message.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker.fast.yamlload import Loader
from tests.fast.twins import assert_twins_agree

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def shape(value: Any, ids: dict[int, int] | None = None) -> Any:
    """Value, type and sharing of a loaded document, comparable with ``==`` (NaN included)."""
    ids = {} if ids is None else ids
    if isinstance(value, (dict, list)):
        if id(value) in ids:
            return ("same as", ids[id(value)])
        ids[id(value)] = len(ids)
        if isinstance(value, dict):
            return ("dict", [(shape(k, ids), shape(v, ids)) for k, v in value.items()])
        return ("list", [shape(v, ids) for v in value])
    return (type(value).__name__, repr(value))


def outcome(text: str | bytes, loader: Any) -> Any:
    try:
        return shape(yaml.load(text, Loader=loader))
    except Exception as exc:  # noqa: BLE001 - the exception is the outcome to compare
        return ("raised", type(exc).__name__, str(exc))


def assert_same(text: str | bytes) -> None:
    assert_twins_agree(lambda t: outcome(t, Loader), lambda t: outcome(t, REFERENCE), [text])


DOCUMENTS = {
    "scalars": "s: text\ni: 12\nneg: -3\nf: 1.5\nb: yes\nn: ~\nd: 2001-12-14\nt: 2001-12-14t21:59:43.10-05:00",
    "yaml11_numbers": "a: 0x1f\nb: 0o17\nc: 017\nd: 0b101\ne: 1_000\nf: 1:30\ng: .inf\nh: -.Inf\ni: .nan\nj: 1e3",
    "booleans": "a: on\nb: Off\nc: NO\nd: True\ne: y\nf: 'yes'",
    "nulls_and_empty": "a:\nb: null\nc: ''\nd: []\ne: {}\n'': empty key",
    "non_string_keys": "1: a\ntrue: b\n~: c\n2001-01-01: d\n1.5: e\n[1, 2]: f",
    "duplicate_keys": "a: 1\nb: 2\na: 3",
    "explicit_tags": "a: !!str 12\nb: !!int '7'\nc: !!float '2'\nd: !!bool 'true'\ne: !!null ''\n"
                     "f: !!binary aGVsbG8=\ng: !!set {x, y}\nh: !!omap [{a: 1}, {b: 2}]\ni: !!pairs [{a: 1}]",
    "tagged_collections": "a: !!seq [1, 2]\nb: !!map {x: 1}\nc: !!str [1]",
    "anchor_alias_list": "a: &x [1, 2]\nb: *x\nc: {k: *x}",
    "anchor_before_use_deep": "a: {x: &n [1]}\nb: *n\nc: [*n, *n]",
    "alias_of_scalar": "a: &s hello\nb: *s\nc: &i 5\nd: *i",
    "recursive_list": "&a [1, *a]",
    "recursive_mapping": "&m {self: *m, n: 1}",
    "merge_key": "base: &b {x: 1, y: 2}\nderived:\n  <<: *b\n  y: 3",
    "merge_list": "a: &a {x: 1}\nb: &b {x: 2, z: 3}\nc:\n  <<: [*a, *b]\n  w: 4",
    "merge_nested": "a: &a {x: 1}\nb: &b {<<: *a, y: 2}\nc: {<<: *b, z: 3}",
    "value_key": "a: {=: 1, b: 2}",
    "merge_of_scalar": "a: &s x\nb: {<<: *s}",
    "merge_of_list_of_scalars": "a: {<<: [1, 2]}",
    "unhashable_key": "? [a, b]\n: 1",
    "unhashable_key_mapping": "? {a: 1}\n: 1",
    "bad_int": "a: !!int abc",
    "bad_implicit_hex": "a: 0x_",
    "bad_bool": "a: !!bool maybe",
    "bad_binary": "a: !!binary '@@@'",
    "bad_timestamp": "a: !!timestamp nope",
    "unknown_tag": "a: !!python/object:os.system x",
    "local_tag": "a: !thing x",
    "two_errors_first_wins": "a: {b: [!!int x]}\nc: !!bool nope",
    "error_after_alias": "a: &x [1]\nb: [*x, !!int y]",
    "deep_nesting": "a: " + "[" * 200 + "]" * 200,
    "deep_mappings": "".join(f"{'  ' * i}k{i}:\n" for i in range(100)) + "  " * 100 + "v",
    "multi_document": "a: 1\n---\nb: 2",
    "empty": "",
    "only_comment": "# nothing",
    "bom": "\ufeffa: 1",
    "utf16": "a: é".encode("utf-16"),
    "syntax_error": "a: [1, 2\nb: 3",
    "tab_indent": "a:\n\tb: 1",
}


@pytest.mark.parametrize("text", DOCUMENTS.values(), ids=DOCUMENTS.keys())
def test_documents_read_as_pyyaml_reads_them(text: str | bytes) -> None:
    assert_same(text)


@pytest.mark.parametrize("path", [ROOT / "rules.yaml", *sorted((ROOT / "tests" / "rules").rglob("*.yaml"))],
                         ids=lambda p: p.stem)
def test_rules_files_read_as_pyyaml_reads_them(path: Path) -> None:
    assert_same(path.read_bytes())


def test_aliases_share_one_object_as_in_pyyaml() -> None:
    doc = yaml.load("a: &x [1]\nb: *x\nc: {d: *x}", Loader=Loader)
    assert doc["a"] is doc["b"] is doc["c"]["d"]
    cycle = yaml.load("&a [1, *a]", Loader=Loader)
    assert cycle[1] is cycle


TOKENS = st.sampled_from([
    "a: ", "b: ", "- ", "? ", ": ", "\n", "  ", "{", "}", "[", "]", ", ", "&x ", "*x", "&y ", "*y",
    "<<: ", "=: ", "!!str ", "!!int ", "!!bool ", "!!float ", "!!binary ", "!!set ", "!!omap ", "!!seq ",
    "!!map ", "!!timestamp ", "!local ", "1", "0x1f", "0x_", "1_0", "1:30", "yes", "off", "~", "null", ".nan",
    "2001-12-14", "1.5", "text", "'q'", '"d"', "#c", "---\n", "\t",
])
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8),
                    st.dates(), st.sampled_from(["yes", "0x1f", "1:30", "~", "<<", "=", "2001-12-14"]))
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(SCALARS, inner, max_size=4), max_leaves=12)
FUZZ = settings(max_examples=300, deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


@given(tokens=st.lists(TOKENS, max_size=30))
@FUZZ
def test_token_soup_reads_as_pyyaml_reads_it(tokens: list[str]) -> None:
    assert_same("".join(tokens))


@given(value=VALUES, shared=st.booleans(), flow=st.booleans())
@FUZZ
def test_dumped_values_read_as_pyyaml_reads_them(value: Any, shared: bool, flow: bool) -> None:
    doc = {"one": value, "two": value if shared else [value]}  # shared: anchors and aliases
    assert_same(yaml.safe_dump(doc, default_flow_style=flow, allow_unicode=True))
