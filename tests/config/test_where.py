"""broker.config.where: the place of each path, in JSON and YAML text, checked against the text itself."""
from __future__ import annotations

import json
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker.config.where import JsonTree, YamlTree, duplicate_keys, locate, walk

KEYS = st.text(alphabet="abc.[]\"\\é\n0", min_size=0, max_size=5)
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False),
                    st.text(max_size=5))
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=4),
                      max_leaves=20)
FUZZ = settings(max_examples=200, deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow])


def _paths(value: Any, path: str = "$") -> list[tuple[str, Any, Any]]:
    """(path, parent, key or index) for every value below the root."""
    out = []
    if isinstance(value, dict):
        for key, child in value.items():
            out.append((f"{path}.{key}", value, key))
            out.extend(_paths(child, f"{path}.{key}"))
    elif isinstance(value, list):
        for i, child in enumerate(value):
            out.append((f"{path}[{i}]", value, i))
            out.extend(_paths(child, f"{path}[{i}]"))
    return out


def _text_at(text: str, where: tuple[int, int]) -> str:
    line, column = where
    return "\n".join(text.split("\n")[line - 1:])[column - 1:]


@given(value=VALUES, indent=st.sampled_from([None, 0, 2]), compact=st.booleans())
@FUZZ
def test_json_paths_are_placed_on_their_key_or_item(value: Any, indent: int | None, compact: bool) -> None:
    text = json.dumps({"root": value}, indent=indent, separators=(",", ":") if compact else None, ensure_ascii=False)
    tree = JsonTree(text)
    for path, parent, key in _paths({"root": value}):
        if isinstance(parent, dict) and any(k != key and f".{k}".startswith(f".{key}") for k in parent):
            continue  # a path naming a key that is a prefix of a sibling's ("a" and "a.b") is ambiguous
        if "." in str(key) or "[" in str(key):
            continue
        here = _text_at(text, locate(tree, path))  # type: ignore[arg-type]
        expected = json.dumps(key, ensure_ascii=False) if isinstance(parent, dict) else \
            json.dumps(parent[key], indent=indent, separators=(",", ":") if compact else None, ensure_ascii=False)
        assert here.startswith(expected.split("\n")[0]), (path, here[:40], expected[:40])


def test_json_positions_count_as_json_loads_counts() -> None:
    text = '{\n  "a": [1,\n        {"b": "é"}],\n\t"c": null}'
    tree = JsonTree(text)
    assert locate(tree, "$.a") == (2, 3)
    assert locate(tree, "$.a[1].b") == (3, 10)
    assert locate(tree, "$.c") == (4, 2)
    assert locate(tree, "$.a[7]") == (2, 3) and locate(tree, "$.a[7]", exact=True) is None


def test_json_bytes_with_a_bom_and_utf16() -> None:
    for raw in (b'\xef\xbb\xbf{"a": {"b": 1}}', '{"a": {"b": 1}}'.encode("utf-16")):
        assert locate(JsonTree(raw), "$.a.b") == (1, 8)


def test_json_duplicates_every_level() -> None:
    text = '{"a": 1, "x": [{"k": 1, "k": 2}], "a": 3}'
    assert duplicate_keys(JsonTree(text)) == [("$.x[0]", "k", (1, 17), (1, 25)), ("$", "a", (1, 2), (1, 35))]


def test_deep_json_is_composed_without_recursion() -> None:
    text = "[" * 5000 + "]" * 5000
    assert locate(JsonTree(text), "$" + "[0]" * 4999) == (1, 5000)


def test_yaml_ids_with_dots_and_aliases() -> None:
    text = "clients:\n  a.b:\n    rules: &r [x, y]\n  a:\n    rules: *r\n"
    tree = YamlTree(yaml.compose(text))
    assert locate(tree, "$.clients.a.b.rules[1]") == (3, 19)
    assert locate(tree, "$.clients.a.rules") == (5, 5)
    assert sum(1 for _ in walk(tree)) == 7  # root, clients, a.b, the aliased list once, x, y, a


def test_yaml_cycles_are_walked_once() -> None:
    tree = YamlTree(yaml.compose("&a [1, *a]"))
    assert [path for path, _ in walk(tree)] == ["$", "$[0]"]
    assert locate(tree, "$[1][1][1][0]") == (1, 5)
