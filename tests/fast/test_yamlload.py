"""The rules loader's YAML reader means exactly what PyYAML's safe C loader means, duplicates refused.

``broker.fast.yamlload.Loader`` builds plain subtrees itself and leaves everything else to its
slow twin ``UniqueKeyLoader`` (PyYAML's safe C loader that refuses a key written twice), so each
document below is read by both and must give the same values (types included), the same shared
objects (anchors and aliases, cycles), or the same exception and message. The twin itself is
held to PyYAML: the same outcome for every document, except a duplicate key refused.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker.fast.yamlload import DuplicateKeyError, Loader, UniqueKeyLoader
from tests.fast.twins import assert_twins_agree

ROOT = Path(__file__).resolve().parents[2]
PYYAML = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
REFERENCE = UniqueKeyLoader


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
    # ... and the twin is PyYAML, but for a key written twice (PyYAML then keeps the last value)
    strict, pyyaml = outcome(text, REFERENCE), outcome(text, PYYAML)
    assert strict == pyyaml or (strict[:2] == ("raised", "DuplicateKeyError") and pyyaml[0] != "raised"), \
        f"{text!r}: UniqueKeyLoader {strict}, PyYAML {pyyaml}"


DOCUMENTS = {
    "scalars": "s: text\ni: 12\nneg: -3\nf: 1.5\nb: yes\nn: ~\nd: 2001-12-14\nt: 2001-12-14t21:59:43.10-05:00",
    "yaml11_numbers": "a: 0x1f\nb: 0o17\nc: 017\nd: 0b101\ne: 1_000\nf: 1:30\ng: .inf\nh: -.Inf\ni: .nan\nj: 1e3",
    "booleans": "a: on\nb: Off\nc: NO\nd: True\ne: y\nf: 'yes'",
    "nulls_and_empty": "a:\nb: null\nc: ''\nd: []\ne: {}\n'': empty key",
    "non_string_keys": "1: a\ntrue: b\n~: c\n2001-01-01: d\n1.5: e\n[1, 2]: f",
    "duplicate_keys": "a: 1\nb: 2\na: 3",
    "duplicate_nested": "c:\n  web:\n    k: [1]\n    r: 2\n  web:\n    k: [3]",
    "duplicate_three_times": "a: 1\na: 2\nb: 0\na: 3",
    "duplicate_flow": "{a: 1, b: {x: 1, x: 2}, a: 2}",
    "duplicate_equal_numbers": "1: a\n0x1: b\n1.0: c",
    "duplicate_bool_and_int": "true: a\n1: b",
    "duplicate_nan": ".nan: 1\n.NaN: 2",
    "duplicate_quoted": "a: 1\n'a': 2\n\"a\": 3",
    "duplicate_in_sequence_items": "- {a: 1, a: 2}\n- {b: 1}\n- {b: 1, b: 2}",
    "duplicate_in_anchor": "x: &x {k: 1, k: 2}\ny: *x",
    "duplicate_then_bad_int": "a: 1\na: 2\nb: !!int nope",
    "duplicate_set": "a: !!set {x, x}",
    "duplicate_in_tagged_map": "a: !!map {x: 1, x: 2}",
    "duplicate_after_merge": "b: &b {x: 1}\nc:\n  <<: *b\n  y: 1\n  y: 2",
    "merge_override_is_not_duplicate": "b: &b {x: 1}\nc:\n  <<: *b\n  x: 2",
    "two_merge_keys": "a: &a {x: 1}\nb: &b {y: 2}\nc:\n  <<: *a\n  <<: *b",
    "merge_of_merged_anchor": "a: &a {x: 1}\nb: &b {<<: *a, x: 3}\nc: {<<: *b, z: 3}",
    "duplicate_in_deep_nesting": "a: " + "[" * 80 + "{k: 1, k: 2}" + "]" * 80,
    "duplicate_value_keys": "a: {=: 1, '=': 2}",
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


@pytest.mark.parametrize("text, key, first, again", [
    pytest.param("a: 1\nb: 2\na: 3", "a", (1, 1), (3, 1), id="top_level"),
    pytest.param("c:\n  web:\n    k: 1\n  web:\n    k: 2", "web", (2, 3), (4, 3), id="nested"),
    pytest.param("r:\n  - {max_bytes: 1, max_bytes: 2}", "max_bytes", (2, 6), (2, 20), id="flow_in_sequence"),
])
def test_duplicate_key_names_both_places(text: str, key: str, first: tuple[int, int], again: tuple[int, int]) -> None:
    for loader in (Loader, UniqueKeyLoader):
        with pytest.raises(DuplicateKeyError) as caught:
            yaml.load(text, Loader=loader)
        [dup] = caught.value.duplicates
        assert dup.key == key
        assert (dup.first.line + 1, dup.first.column + 1) == first
        assert (dup.again.line + 1, dup.again.column + 1) == again
        assert f"found duplicate key {key!r}, first written at line {first[0]}, column {first[1]}" in str(caught.value)


def test_every_duplicate_is_listed_in_text_order() -> None:
    text = "z: {k: 1, k: 2}\na: 1\na: 2\nm:\n  - {q: 1, q: 2}"
    for loader in (Loader, UniqueKeyLoader):
        with pytest.raises(DuplicateKeyError) as caught:
            yaml.load(text, Loader=loader)
        assert [(d.key, d.again.line + 1) for d in caught.value.duplicates] == [("k", 1), ("a", 3), ("q", 5)]


def test_a_merge_key_and_an_override_are_not_duplicates() -> None:
    assert yaml.load("b: &b {x: 1}\nc: {<<: *b, x: 2}", Loader=Loader) == {"b": {"x": 1}, "c": {"x": 2}}


# Mappings with keys drawn from a few spellings of a few values: many are written twice
# ('a' and "'a'", 1 and 0x1 and 1.0 and true), some beside merge keys (<<) and value keys (=).
DUP_KEYS = st.sampled_from(["a", "'a'", "b", "1", "0x1", "1.0", "true", "~", "=", "<<"])
DUP_SCALARS = st.sampled_from(["1", "x", "'y'", "[]", "{}", "~", "yes", "2001-12-14", "!!int 3", "!!str z"])
DUP_NODES = st.recursive(DUP_SCALARS, lambda inner: (
    st.lists(inner, max_size=3).map(lambda items: "[" + ", ".join(items) + "]")
    | st.lists(st.tuples(DUP_KEYS, inner), max_size=4).map(
        lambda pairs: "{" + ", ".join(f"{key}: {value}" for key, value in pairs) + "}")), max_leaves=10)


@given(text=DUP_NODES, anchored=st.booleans())
@FUZZ
def test_mappings_with_keys_written_twice_read_alike(text: str, anchored: bool) -> None:
    assert_same(f"x: &n {text}\ny: *n\nz: {{<<: *n}}" if anchored and text.startswith("{") else text)


def test_the_duplicate_fuzz_finds_duplicates() -> None:
    found = {"refused": 0, "read": 0}

    @given(text=DUP_NODES)
    @FUZZ
    def count(text: str) -> None:
        found["refused" if outcome(text, REFERENCE)[:2] == ("raised", "DuplicateKeyError") else "read"] += 1

    count()
    assert found["refused"] >= 30 and found["read"] >= 30, found
