"""The YAML reader for rules files: PyYAML's safe loader, same meaning, a good deal faster.

Slow twin: ``yaml.CSafeLoader`` (``tests/fast/test_yamlload.py``).

Imported only when a rules file is YAML (JSON rules never need PyYAML).
"""
from __future__ import annotations

from typing import Any

import yaml

_CLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the C loader is about 8x faster
_STR, _SEQ, _MAP = "tag:yaml.org,2002:str", "tag:yaml.org,2002:seq", "tag:yaml.org,2002:map"
# The constructors PyYAML's safe loader uses for plain values, as it defines them.
_PLAIN = {f"tag:yaml.org,2002:{name}": getattr(yaml.constructor.SafeConstructor, f"construct_yaml_{name}")
          for name in ("str", "null", "bool", "int", "float", "timestamp", "seq", "map")}
# Deeper than this (or round a cycle), PyYAML's constructor carries on: it does not recurse.
_EAGER_DEPTH = 64


class _Slow(Exception):
    """This node needs PyYAML's own constructor (anchors, merge keys, tags, errors)."""


class Loader(_CLoader):  # type: ignore[misc,valid-type]
    """PyYAML's safe loader, same meaning, less Python per value.

    The C parser composes the nodes; PyYAML then constructs every value in Python, each
    collection through a generator it resumes later: half of the load. Here a subtree of
    plain values (strings, numbers, booleans, nulls, dates, lists, mappings; an alias of
    one already built) is built directly, depth first, each distinct scalar converted once.
    Anything else (a cycle, a merge key, an explicit collection tag, a value whose
    constructor raises) is left to PyYAML's constructor, in PyYAML's order: the subtrees
    built ahead are the ones that cannot fail, so every value, every shared object and
    every error is PyYAML's (``tests/fast/test_yamlload.py`` compares the two).
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
