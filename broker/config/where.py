"""Where a JSON path stands in the rules text: the line and column each problem names.

Asked only when a rules file has problems, so a file that loads never pays for it. YAML:
the node tree PyYAML composed, which carries each node's marks (the loader keeps it).
JSON: the text scanned once more, positions kept (``json.loads`` keeps none). Both answer
through :class:`Tree`, so a path is found, and a key written twice is named, alike.
"""
from __future__ import annotations

import bisect
import json
import re
from collections import deque
from json.decoder import scanstring
from typing import Any, Iterator

Position = tuple[int, int]
"""1-based line and column."""


class Tree:
    """A composed document: mappings (key text, key position, value), sequences and scalars."""

    root: Any

    def start(self, node: Any) -> Position:
        """Where ``node`` begins."""
        raise NotImplementedError

    def entries(self, node: Any) -> list[tuple[str | None, Position, Any]] | None:
        """A mapping's ``(key text, key position, value node)`` in written order; None if not a mapping."""
        raise NotImplementedError

    def items(self, node: Any) -> list[Any] | None:
        """A sequence's item nodes; None if not a sequence."""
        raise NotImplementedError


class YamlTree(Tree):
    """The nodes PyYAML composed (merge keys already flattened into their mappings)."""

    def __init__(self, root: Any) -> None:
        self.root = root

    def start(self, node: Any) -> Position:
        mark = node.start_mark
        return mark.line + 1, mark.column + 1

    def entries(self, node: Any) -> list[tuple[str | None, Position, Any]] | None:
        if node.id != "mapping":
            return None
        return [(key.value if key.id == "scalar" else None, self.start(key), value) for key, value in node.value]

    def items(self, node: Any) -> list[Any] | None:
        return node.value if node.id == "sequence" else None


class _Node:
    __slots__ = ("kind", "offset", "children")

    def __init__(self, kind: str, offset: int) -> None:
        self.kind = kind
        self.offset = offset
        self.children: list[Any] = []


_SPACE = re.compile(r"[ \t\n\r]*")
_LITERAL = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?|true|false|null|NaN|-?Infinity")


class JsonTree(Tree):
    """JSON text composed with the offset of every value and key (text json.loads accepted)."""

    def __init__(self, text: str | bytes) -> None:
        if isinstance(text, bytes):
            text = text.decode(json.detect_encoding(text), "surrogatepass")
        self.text = text[1:] if text.startswith("\ufeff") else text
        self._lines = [m.end() for m in re.finditer("\n", self.text)]
        self.root = self._compose()

    def start(self, node: Any) -> Position:
        return self.position(node.offset)

    def position(self, offset: int) -> Position:
        """Line and column of a character offset, counted as json.loads counts them."""
        line = bisect.bisect_right(self._lines, offset)
        return line + 1, offset - (self._lines[line - 1] if line else 0) + 1

    def entries(self, node: Any) -> list[tuple[str | None, Position, Any]] | None:
        if node.kind != "map":
            return None
        return [(key, self.position(offset), value) for key, offset, value in node.children]

    def items(self, node: Any) -> list[Any] | None:
        return node.children if node.kind == "seq" else None

    def _compose(self) -> _Node:
        """One pass, no recursion (the nesting is as deep as json.loads allowed)."""
        s = self.text
        pos = _SPACE.match(s, 0).end()  # type: ignore[union-attr]
        stack: list[_Node] = []
        root: _Node | None = None
        key: tuple[str, int] | None = None
        while True:
            char = s[pos]
            if char in "{[":
                node = _Node("map" if char == "{" else "seq", pos)
                pos = _SPACE.match(s, pos + 1).end()  # type: ignore[union-attr]
                closed = s[pos] == ("}" if char == "{" else "]")
                if closed:
                    pos += 1
            else:
                node = _Node("scalar", pos)
                literal = None if char == '"' else _LITERAL.match(s, pos)
                pos = scanstring(s, pos + 1)[1] if literal is None else literal.end()
                closed = True
            if not stack:
                root = node
            elif stack[-1].kind == "map":
                assert key is not None
                stack[-1].children.append((key[0], key[1], node))
            else:
                stack[-1].children.append(node)
            if not closed:
                stack.append(node)
            else:  # after a value: close what ends here, then find the next value
                while True:
                    pos = _SPACE.match(s, pos).end()  # type: ignore[union-attr]
                    if not stack:
                        assert root is not None
                        return root
                    if s[pos] == ",":
                        pos = _SPACE.match(s, pos + 1).end()  # type: ignore[union-attr]
                        break
                    stack.pop()  # '}' or ']'
                    pos += 1
            if stack[-1].kind == "map":  # a key, then ':'
                name, end = scanstring(s, pos + 1)
                key = (name, pos)
                pos = _SPACE.match(s, end).end()  # type: ignore[union-attr]
                pos = _SPACE.match(s, pos + 1).end()  # type: ignore[union-attr]


def locate(tree: Tree, path: str, *, exact: bool = False) -> Position | None:
    """Where ``path`` (``$.clients.web-app.rules[0].max_bytes``) stands: at its key in a mapping,
    at its item in a sequence. A path not in the text (a default) answers its nearest ancestor's
    place, or None with ``exact``."""
    node = tree.root
    where = tree.start(node)
    rest = path[1:] if path.startswith("$") else path
    while rest:
        if rest[0] == "[":
            match = re.match(r"\[([0-9]+)\]", rest)
            items = tree.items(node)
            if match is None or items is None or int(match.group(1)) >= len(items):
                break
            node = items[int(match.group(1))]
            where = tree.start(node)
            rest = rest[match.end():]
            continue
        entries = tree.entries(node)
        if rest[0] != "." or entries is None:
            break
        best = None
        for key, key_at, value in entries:  # the longest key that fits (an id may hold '.'); the last of equals
            if key is not None and rest.startswith(key, 1) and rest[1 + len(key):2 + len(key)] in ("", ".", "[") \
                    and (best is None or len(key) >= len(best[0])):
                best = (key, key_at, value)
        if best is None:
            break
        key, where, node = best
        rest = rest[1 + len(key):]
    return None if exact and rest else where


def walk(tree: Tree) -> Iterator[tuple[str, Any]]:
    """Every node once, with the shortest path to it (breadth first; aliases and cycles visited once)."""
    seen = {id(tree.root)}
    queue: deque[tuple[str, Any]] = deque([("$", tree.root)])
    while queue:
        path, node = queue.popleft()
        yield path, node
        entries = tree.entries(node)
        children = [(f"{path}.{key}", value) for key, _, value in entries] if entries is not None else \
            [(f"{path}[{i}]", item) for i, item in enumerate(tree.items(node) or ())]
        for child_path, child in children:
            if id(child) not in seen:
                seen.add(id(child))
                queue.append((child_path, child))


def path_of(tree: Tree, target: Any) -> str | None:
    """The shortest path to node ``target``, or None if it is not in the tree."""
    return next((path for path, node in walk(tree) if node is target), None)


def duplicate_keys(tree: Tree) -> list[tuple[str, str, Position, Position]]:
    """``(mapping path, key, first position, repeated position)`` for each key written again (JSON: keys are text)."""
    found = []
    for path, node in walk(tree):
        seen: dict[str | None, Position] = {}
        for key, key_at, _ in tree.entries(node) or ():
            if key in seen:
                found.append((path, key or "", seen[key], key_at))
            else:
                seen[key] = key_at
    return sorted(found, key=lambda d: d[3])
