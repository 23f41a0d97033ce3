"""The YAML reader for rules files: PyYAML's safe loader, same meaning, a good deal faster.

Slow twin: :class:`UniqueKeyLoader`, ``yaml.CSafeLoader`` that refuses a key written twice
in one mapping (``tests/fast/test_yamlload.py``).

Imported only when a rules file is YAML (JSON rules never need PyYAML).
"""
from __future__ import annotations

from typing import Any, NamedTuple

import yaml

_CLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the C loader is about 8x faster
_STR, _SEQ, _MAP = "tag:yaml.org,2002:str", "tag:yaml.org,2002:seq", "tag:yaml.org,2002:map"
_MERGE = "tag:yaml.org,2002:merge"
# The constructors PyYAML's safe loader uses for plain values, as it defines them.
_PLAIN = {f"tag:yaml.org,2002:{name}": getattr(yaml.constructor.SafeConstructor, f"construct_yaml_{name}")
          for name in ("str", "null", "bool", "int", "float", "timestamp", "seq", "map")}
# Deeper than this (or round a cycle), PyYAML's constructor carries on: it does not recurse.
_EAGER_DEPTH = 64


class Duplicate(NamedTuple):
    """A key written again in one mapping: the key, where it was first and again, and the mapping."""

    key: Any
    first: Any  # yaml Mark (0-based line and column)
    again: Any
    mapping: Any  # the MappingNode


class DuplicateKeyError(yaml.constructor.ConstructorError):
    """Keys written twice in one mapping: PyYAML would keep the last silently. ``duplicates`` lists each."""

    def __init__(self, duplicates: list[Duplicate]) -> None:
        first = duplicates[0]
        more = f" (and {len(duplicates) - 1} more duplicate key(s))" if len(duplicates) > 1 else ""
        super().__init__("while constructing a mapping", first.mapping.start_mark,
                         f"found duplicate key {first.key!r}, first written at line {first.first.line + 1}, "
                         f"column {first.first.column + 1}{more}", first.again)
        self.duplicates = duplicates


class UniqueKeyLoader(_CLoader):  # type: ignore[misc,valid-type]
    """PyYAML's safe loader, except that a key written twice in one mapping is an error.

    PyYAML keeps the last value silently; a rules file must not (a client pasted twice
    would replace the first). Every mapping is checked as PyYAML builds it, and after the
    whole document is built, :class:`DuplicateKeyError` lists every duplicate in the order
    they stand in the text (any other error PyYAML raises first wins, as before). Merge keys
    (``<<``) are not duplicates: only keys written in the mapping itself count. ``root`` is the
    composed node tree (with its line marks), kept for callers that must point into the text.
    """

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self.root: Any = None
        self._duplicates: list[Duplicate] = []
        self._written: dict[Any, list[Any]] = {}  # merge mappings: their pairs before flattening

    def get_single_data(self) -> Any:
        node = self.get_single_node()
        self.root = node
        data = None if node is None else self.construct_document(node)
        if self._duplicates:
            raise DuplicateKeyError(sorted(self._duplicates, key=lambda d: (d.again.line, d.again.column)))
        return data

    def flatten_mapping(self, node: Any) -> None:
        if node not in self._written:
            self._written[node] = list(node.value)  # flattening rewrites node.value in place
        super().flatten_mapping(node)

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        mapping = super().construct_mapping(node, deep=deep)
        pairs = self._written.get(node, node.value)
        if len(pairs) > 1:
            seen: dict[Any, Any] = {}
            for key_node, _ in pairs:
                if key_node.tag == _MERGE:
                    continue
                key = self.construct_object(key_node, deep=deep)
                if key in seen:  # as the mapping (a dict) sees it: 1 and 0x1 are one key
                    self._duplicates.append(Duplicate(key, seen[key], key_node.start_mark, node))
                else:
                    seen[key] = key_node.start_mark
        return mapping


class _Slow(Exception):
    """This node needs PyYAML's own constructor (anchors, merge keys, tags, errors)."""


class Loader(UniqueKeyLoader):
    """PyYAML's safe loader (duplicate keys refused: :class:`UniqueKeyLoader`), less Python per value.

    The C parser composes the nodes; PyYAML then constructs every value in Python, each
    collection through a generator it resumes later: half of the load. Here a subtree of
    plain values (strings, numbers, booleans, nulls, dates, lists, mappings; an alias of
    one already built) is built directly, depth first, each distinct scalar converted once.
    Anything else (a cycle, a merge key, an explicit collection tag, a value whose
    constructor raises, a mapping with a key written twice) is left to PyYAML's constructor,
    in PyYAML's order: the subtrees built ahead are the ones that cannot fail, so every value,
    every shared object and every error (duplicate keys too) is :class:`UniqueKeyLoader`'s
    (``tests/fast/test_yamlload.py`` compares the two).
    """

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._scalars: dict[tuple[str, str], Any] = {}
        plain = {tag for tag, function in _PLAIN.items() if self.yaml_constructors.get(tag) is function}
        self._plain_scalars = plain - {_SEQ, _MAP}
        self._plain = plain
        self._str = _STR in plain

    def construct_object(self, node: Any, deep: bool = False) -> Any:
        if node.__class__ is yaml.ScalarNode and node.tag == _STR and self._str:
            return node.value  # what construct_yaml_str returns
        if node in self.constructed_objects or node in self.recursive_objects:
            return super().construct_object(node, deep)
        try:
            return self._eager(node, 0)
        except _Slow:
            return super().construct_object(node, deep)

    def _eager(self, node: Any, depth: int) -> Any:
        if node.__class__ is yaml.ScalarNode:
            return node.value if node.tag == _STR and self._str else self._scalar(node)
        built = self.constructed_objects.get(node)
        if built is not None:  # an alias of a node built already: PyYAML returns that object too
            return built
        if depth > _EAGER_DEPTH or node.tag not in self._plain or node in self.recursive_objects:
            raise _Slow  # deep, or a cycle (PyYAML builds one through its generators), or a tag
        depth += 1
        plain_str = self._str
        data: Any
        if node.__class__ is yaml.SequenceNode and node.tag == _SEQ:
            data = []
            for child in node.value:
                if child.__class__ is yaml.ScalarNode and child.tag == _STR and plain_str:
                    data.append(child.value)
                else:
                    data.append(self._eager(child, depth))
        elif node.__class__ is yaml.MappingNode and node.tag == _MAP:
            data = {}
            for key_node, child in node.value:
                if key_node.__class__ is not yaml.ScalarNode:
                    raise _Slow  # a collection as a key: unhashable, PyYAML says so
                key = key_node.value if key_node.tag == _STR and plain_str else self._scalar(key_node)
                if child.__class__ is yaml.ScalarNode and child.tag == _STR and plain_str:
                    data[key] = child.value
                else:
                    data[key] = self._eager(child, depth)
            if len(data) != len(node.value):
                raise _Slow  # a key written twice: UniqueKeyLoader.construct_mapping records it
        else:
            raise _Slow
        self.constructed_objects[node] = data
        return data

    def _scalar(self, node: Any) -> Any:
        tag = node.tag
        if tag not in self._plain_scalars:
            raise _Slow  # merge (<<) and value (=) keys, binary, explicit tags, ...
        key = (tag, node.value)
        try:
            return self._scalars[key]
        except KeyError:
            pass
        try:
            value = self.yaml_constructors[tag](self, node)
        except Exception:  # noqa: BLE001 - PyYAML raises it again, at its own time
            raise _Slow from None
        self._scalars[key] = value
        return value
