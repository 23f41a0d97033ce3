"""A compiled yes/no check for the JSON Schema subset the broker's own schemas use.

Slow twin: ``jsonschema.Draft202012Validator(schema).is_valid``.

jsonschema is the authority: it explains *why* a document is invalid, and those are the
messages the broker shows. But most documents are valid, and proving that needs none of
it: importing jsonschema costs about 0.1 s of every cold start, checking one upload
request about 60 µs, and a 1,000-client rules file more than a second.

``compile_schema(schema)`` returns ``accepts(instance) -> bool`` that answers exactly what
``Draft202012Validator(schema).is_valid(instance)`` answers (jsonschema 4.x semantics: the
same type checks, ``re.search`` patterns, bool-is-not-an-integer equality, ``format`` as an
annotation only). It returns None for a schema that uses any keyword it does not know,
and ``accepts`` raises :class:`Undecided` on input it cannot judge exactly. Callers
(``broker.config.schemas``) use jsonschema whenever the answer is not a plain True, so a gap here
costs speed, never correctness. ``tests/fast/test_schema.py`` checks the two agree.
"""
from __future__ import annotations

import itertools
import numbers
import re
from collections.abc import Mapping, Sequence
from typing import Any, Callable

Check = Callable[[Any], bool]

#: Keywords that never affect validity (``format`` is not asserted without a format checker).
ANNOTATIONS = frozenset({
    "$schema", "$comment", "$defs", "title", "description", "default", "examples", "deprecated",
    "readOnly", "writeOnly", "format", "contentMediaType", "contentEncoding", "contentSchema",
})


class Undecided(Exception):
    """The compiled check cannot answer exactly for this instance: ask jsonschema."""


class Unsupported(Exception):
    """The schema uses something the compiler does not implement."""


def compile_schema(schema: Any) -> Check | None:
    """An exact ``is_valid`` for ``schema``, or None if the schema is outside the subset."""
    try:
        return _Compiler(schema).node(schema, root=True)
    except Unsupported:
        return None


# ----------------------------------------------------------------- jsonschema's semantics


def _is_integer(x: Any) -> bool:
    if isinstance(x, bool):
        return False
    return isinstance(x, int) or (isinstance(x, float) and x.is_integer())


def _is_number(x: Any) -> bool:
    return not isinstance(x, bool) and isinstance(x, numbers.Number)


TYPES: dict[str, Check] = {
    "array": lambda x: isinstance(x, list),
    "boolean": lambda x: isinstance(x, bool),
    "integer": _is_integer,
    "null": lambda x: x is None,
    "number": _is_number,
    "object": lambda x: isinstance(x, dict),
    "string": lambda x: isinstance(x, str),
}


def _unbool(element: Any, true: object = object(), false: object = object()) -> Any:
    if element is True:
        return true
    if element is False:
        return false
    return element


def equal(one: Any, two: Any) -> bool:
    """JSON equality as jsonschema defines it: ``True`` is not ``1``, ``1.0`` is ``1``."""
    if one is two:
        return True
    if isinstance(one, str) or isinstance(two, str):
        return bool(one == two)
    if isinstance(one, Sequence) and isinstance(two, Sequence):
        return len(one) == len(two) and all(equal(i, j) for i, j in zip(one, two))
    if isinstance(one, Mapping) and isinstance(two, Mapping):
        return len(one) == len(two) and all(k in two and equal(v, two[k]) for k, v in one.items())
    return bool(_unbool(one) == _unbool(two))


_ONLY_STR = {str}


def unique(container: list[Any]) -> bool:
    """Whether all elements differ under :func:`equal` (jsonschema's ``uniq``)."""
    if not container or set(map(type, container)) == _ONLY_STR:  # the common case: equal() is ==
        return len(set(container)) == len(container)
    try:
        ordered = sorted(_unbool(i) for i in container)
        for i, j in zip(ordered, itertools.islice(ordered, 1, None)):
            if equal(i, j):
                return False
    except (NotImplementedError, TypeError):
        seen: list[Any] = []
        for e in container:
            e = _unbool(e)
            if any(equal(i, e) for i in seen):
                return False
            seen.append(e)
    return True


# ----------------------------------------------------------------- the compiler


class _Compiler:
    def __init__(self, root: Any) -> None:
        self.root = root
        self.nodes: dict[int, Check] = {}
        self.keep: list[Any] = []  # schemas whose id() keys the cache stay alive
        self.building: set[int] = set()

    def node(self, schema: Any, *, root: bool = False) -> Check:
        if schema is True:
            return _always
        if schema is False:
            return _never
        if not isinstance(schema, dict):
            raise Unsupported(f"schema {schema!r} is neither an object nor a boolean")
        key = id(schema)
        if key in self.nodes:
            return self.nodes[key]
        slot: list[Check] = []
        self.nodes[key] = lambda x: slot[0](x)  # a $ref cycle reaches this before it is built
        self.keep.append(schema)
        self.building.add(key)
        check = self._build(schema, root)
        self.building.discard(key)
        slot.append(check)
        self.nodes[key] = check
        return check

    def ref(self, ref: Any) -> Any:
        if not isinstance(ref, str) or not (ref == "#" or ref.startswith("#/")):
            raise Unsupported(f"$ref {ref!r}: only references inside the same document")
        target = self.root
        for token in ref[2:].split("/") if ref != "#" else ():
            token = token.replace("~1", "/").replace("~0", "~")
            if "%" in token:
                raise Unsupported(f"$ref {ref!r}: percent-encoded pointer")
            if isinstance(target, dict) and token in target:
                target = target[token]
            elif isinstance(target, list) and token.isdigit() and int(token) < len(target):
                target = target[int(token)]
            else:
                raise Unsupported(f"$ref {ref!r} does not resolve")
        return target

    def _build(self, s: dict[str, Any], root: bool) -> Check:
        fused = _fused(self, s)
        if fused is not None:
            return fused
        checks: list[Check] = []
        for keyword in s:
            if keyword in ANNOTATIONS or (keyword == "$id" and root):
                continue
            build = _KEYWORDS.get(keyword)
            if build is None:
                raise Unsupported(f"keyword {keyword!r}")
            check = build(self, s[keyword], s)
            if check is not None:
                checks.append(check)
        if "unevaluatedProperties" in s:
            checks.append(_unevaluated(self, s))
        if not checks:
            return _always
        if len(checks) == 1:
            return checks[0]

        def check_all(x: Any) -> bool:
            for c in checks:
                if not c(x):
                    return False
            return True
        return check_all

    # What jsonschema's find_evaluated_property_keys_by_schema collects, for the keywords here.
    def evaluated_keys(self, schema: Any, instance: dict[Any, Any]) -> set[Any]:
        if not isinstance(schema, dict):
            return set()
        keys: set[Any] = set()
        if "$ref" in schema:
            keys |= self.evaluated_keys(self.ref(schema["$ref"]), instance)
        properties = schema.get("properties")
        if isinstance(properties, dict):
            keys |= properties.keys() & instance.keys()
        for keyword in ("additionalProperties", "unevaluatedProperties"):
            if keyword in schema:
                sub = self.node(schema[keyword])
                keys |= {k for k, v in instance.items() if sub(v)}
        for keyword in ("allOf", "oneOf", "anyOf"):
            for sub in schema.get(keyword, []):
                if self.node(sub)(instance):
                    keys |= self.evaluated_keys(sub, instance)
        return keys


def _always(x: Any) -> bool:
    return True


def _never(x: Any) -> bool:
    return False


def _number(value: Any, keyword: str) -> Any:
    if not _is_number(value):
        raise Unsupported(f"{keyword} {value!r} is not a number")
    return value


def _count(value: Any, keyword: str) -> int:
    if not (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
        raise Unsupported(f"{keyword} {value!r} is not a count")
    return value


def _type(c: _Compiler, value: Any, s: dict[str, Any]) -> Check:
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or any(n not in TYPES for n in names):
        raise Unsupported(f"type {value!r}")
    tests = [TYPES[n] for n in names]
    if len(tests) == 1:
        return tests[0]
    return lambda x: any(t(x) for t in tests)


def _const(c: _Compiler, value: Any, s: dict[str, Any]) -> Check:
    return lambda x: equal(x, value)


def _enum(c: _Compiler, value: Any, s: dict[str, Any]) -> Check:
    if not isinstance(value, list):
        raise Unsupported("enum must be an array")
    # A str equals only a str, an int only a number that is not a bool: a set answers those.
    strings = frozenset(v for v in value if type(v) is str)
    numbers = frozenset(v for v in value if type(v) in (int, float))

    def check(x: Any) -> bool:
        if type(x) is str:
            return x in strings
        if type(x) is int:
            return x in numbers
        return any(equal(each, x) for each in value)
    return check


def _compare(op: Callable[[Any, Any], bool]) -> Callable[[_Compiler, Any, dict[str, Any]], Check]:
    def build(c: _Compiler, value: Any, s: dict[str, Any]) -> Check:
        limit = _number(value, "bound")

        def check(x: Any) -> bool:
            if not _is_number(x):
                return True
            try:
                return not op(x, limit)
            except TypeError:  # e.g. a complex number: leave it to jsonschema
                raise Undecided from None
        return check
    return build


def _length(is_type: Check, measure_fails: Callable[[int, int], bool], keyword: str
            ) -> Callable[[_Compiler, Any, dict[str, Any]], Check]:
    def build(c: _Compiler, value: Any, s: dict[str, Any]) -> Check:
        limit = _count(value, keyword)
        return lambda x: not (is_type(x) and measure_fails(len(x), limit))
    return build


def _pattern(c: _Compiler, value: Any, s: dict[str, Any]) -> Check:
    if not isinstance(value, str):
        raise Unsupported("pattern must be a string")
    try:
        search = re.compile(value).search
    except re.error:
        raise Unsupported(f"pattern {value!r} does not compile") from None
    return lambda x: not isinstance(x, str) or search(x) is not None


def _required(c: _Compiler, value: Any, s: dict[str, Any]) -> Check:
    if not isinstance(value, list):
        raise Unsupported("required must be an array")
    names = list(value)
    return lambda x: not isinstance(x, dict) or all(n in x for n in names)


def _properties(c: _Compiler, value: Any, s: dict[str, Any]) -> Check:
    if not isinstance(value, dict):
        raise Unsupported("properties must be an object")
    subs = [(name, c.node(sub)) for name, sub in value.items()]
    table = dict(subs)
    many = len(table)

    def check(x: Any) -> bool:
        if isinstance(x, dict):
            if len(x) < many:  # look up the instance's few keys rather than every property
                get = table.get
                for k, v in x.items():
                    sub = get(k)
                    if sub is not None and not sub(v):
                        return False
            else:
                for name, sub in subs:
                    if name in x and not sub(x[name]):
                        return False
        return True
    return check


def _additional(c: _Compiler, value: Any, s: dict[str, Any]) -> Check:
    if "patternProperties" in s:
        raise Unsupported("patternProperties")
    known = s.get("properties", {})
    if value is False:
        names = frozenset(known)
        return lambda x: not isinstance(x, dict) or names.issuperset(x)
    sub = c.node(value)

    def check(x: Any) -> bool:
        if isinstance(x, dict):
            for k, v in x.items():
                if k not in known and not sub(v):
                    return False
        return True
    return check


def _property_names(c: _Compiler, value: Any, s: dict[str, Any]) -> Check:
    sub = c.node(value)

    def check(x: Any) -> bool:
        if isinstance(x, dict):
            for k in x:
                if not sub(k):
                    return False
        return True
    return check


def _items(c: _Compiler, value: Any, s: dict[str, Any]) -> Check:
    if "prefixItems" in s:
        raise Unsupported("prefixItems")
    sub = c.node(value)

    def check(x: Any) -> bool:
        if isinstance(x, list):
            for v in x:
                if not sub(v):
                    return False
        return True
    return check


def _unique_items(c: _Compiler, value: Any, s: dict[str, Any]) -> Check | None:
    if not value:
        return None
    return lambda x: not isinstance(x, list) or unique(x)


def _all_of(c: _Compiler, value: Any, s: dict[str, Any]) -> Check:
    subs = [c.node(sub) for sub in _list(value, "allOf")]
    if len(subs) == 1:
        return subs[0]
    return lambda x: all(sub(x) for sub in subs)


def _any_of(c: _Compiler, value: Any, s: dict[str, Any]) -> Check:
    subs = [c.node(sub) for sub in _list(value, "anyOf")]
    return lambda x: any(sub(x) for sub in subs)


def _one_of(c: _Compiler, value: Any, s: dict[str, Any]) -> Check:
    subs = [c.node(sub) for sub in _list(value, "oneOf")]

    def check(x: Any) -> bool:
        matched = False
        for sub in subs:
            if sub(x):
                if matched:
                    return False
                matched = True
        return matched
    return check


def _list(value: Any, keyword: str) -> list[Any]:
    if not isinstance(value, list) or not value:
        raise Unsupported(f"{keyword} must be a non-empty array")
    return value


def _ref(c: _Compiler, value: Any, s: dict[str, Any]) -> Check:
    target = c.ref(value)
    node = c.node(target)
    if id(target) in c.building:
        return lambda x: node(x)  # a cycle: the placeholder, filled in once the target is built
    return node


def _unevaluated_marker(c: _Compiler, value: Any, s: dict[str, Any]) -> None:
    return None  # built after the others by _unevaluated, which needs the whole schema


def _static_keys(c: _Compiler, schema: Any, seen: frozenset[int] = frozenset()) -> set[Any] | None:
    """The property names ``schema`` evaluates, if that does not depend on the instance.

    True when only ``properties`` contribute, directly or through ``$ref`` and ``allOf``:
    those subschemas must all be valid for the whole schema to be, so when it is, every
    property they name was evaluated. None when a contribution depends on the instance.
    """
    if not isinstance(schema, dict):
        return set()
    if id(schema) in seen or any(k in schema for k in (
            "additionalProperties", "unevaluatedProperties", "oneOf", "anyOf")):
        return None
    keys = set(schema.get("properties", {}))
    parts = list(schema.get("allOf", []))
    if "$ref" in schema:
        parts.append(c.ref(schema["$ref"]))
    for part in parts:
        more = _static_keys(c, part, seen | {id(schema)})
        if more is None:
            return None
        keys |= more
    return keys


def _unevaluated(c: _Compiler, s: dict[str, Any]) -> Check:
    value = s["unevaluatedProperties"]
    sub = c.node(value)
    static = _static_keys(c, {k: v for k, v in s.items() if k != "unevaluatedProperties"})
    if static is not None:
        if value is False:
            names = frozenset(static)
            return lambda x: not isinstance(x, dict) or names.issuperset(x)

        def check_static(x: Any) -> bool:
            if isinstance(x, dict):
                for k, v in x.items():
                    if k not in static and not sub(v):
                        return False
            return True
        return check_static

    def check(x: Any) -> bool:
        if not isinstance(x, dict):
            return True
        evaluated = c.evaluated_keys(s, x)
        return all(sub(v) for k, v in x.items() if k not in evaluated)
    return check


# The commonest shapes in the broker's schemas, each as one function instead of a chain:
# a string with a pattern and/or length limits, an array of typed items.
_STRING_KEYWORDS = frozenset({"type", "pattern", "minLength", "maxLength"})
_ARRAY_KEYWORDS = frozenset({"type", "items", "minItems", "maxItems", "uniqueItems"})


def _fused(c: _Compiler, s: dict[str, Any]) -> Check | None:
    """One check for a whole string or array schema, or None for the general way."""
    kind = s.get("type")
    keywords = s.keys() - ANNOTATIONS
    if kind == "string" and keywords <= _STRING_KEYWORDS:
        return _fused_string(s)
    if kind == "array" and keywords <= _ARRAY_KEYWORDS:
        return _fused_array(c, s)
    return None


def _fused_string(s: dict[str, Any]) -> Check:
    lo = _count(s.get("minLength", 0), "minLength")
    hi = _count(s["maxLength"], "maxLength") if "maxLength" in s else None
    search = None
    if "pattern" in s:
        if not isinstance(s["pattern"], str):
            raise Unsupported("pattern must be a string")
        try:
            search = re.compile(s["pattern"]).search
        except re.error:
            raise Unsupported(f"pattern {s['pattern']!r} does not compile") from None
    if search is not None and not lo and hi is None:
        return lambda x: isinstance(x, str) and search(x) is not None

    def check(x: Any) -> bool:
        if not isinstance(x, str):
            return False
        n = len(x)
        if n < lo or (hi is not None and n > hi):
            return False
        return search is None or search(x) is not None
    return check


def _fused_array(c: _Compiler, s: dict[str, Any]) -> Check:
    lo = _count(s.get("minItems", 0), "minItems")
    hi = _count(s["maxItems"], "maxItems") if "maxItems" in s else None
    sub = c.node(s["items"]) if "items" in s else None
    distinct = bool(s.get("uniqueItems"))

    def check(x: Any) -> bool:
        if not isinstance(x, list):
            return False
        n = len(x)
        if n < lo or (hi is not None and n > hi):
            return False
        if sub is not None:
            for v in x:
                if not sub(v):
                    return False
        return not distinct or unique(x)
    return check


_KEYWORDS: dict[str, Callable[[_Compiler, Any, dict[str, Any]], Check | None]] = {
    "type": _type,
    "const": _const,
    "enum": _enum,
    "minimum": _compare(lambda x, limit: x < limit),
    "maximum": _compare(lambda x, limit: x > limit),
    "exclusiveMinimum": _compare(lambda x, limit: x <= limit),
    "exclusiveMaximum": _compare(lambda x, limit: x >= limit),
    "minLength": _length(TYPES["string"], lambda n, limit: n < limit, "minLength"),
    "maxLength": _length(TYPES["string"], lambda n, limit: n > limit, "maxLength"),
    "minItems": _length(TYPES["array"], lambda n, limit: n < limit, "minItems"),
    "maxItems": _length(TYPES["array"], lambda n, limit: n > limit, "maxItems"),
    "minProperties": _length(TYPES["object"], lambda n, limit: n < limit, "minProperties"),
    "maxProperties": _length(TYPES["object"], lambda n, limit: n > limit, "maxProperties"),
    "pattern": _pattern,
    "required": _required,
    "properties": _properties,
    "additionalProperties": _additional,
    "propertyNames": _property_names,
    "items": _items,
    "uniqueItems": _unique_items,
    "allOf": _all_of,
    "anyOf": _any_of,
    "oneOf": _one_of,
    "$ref": _ref,
    "unevaluatedProperties": _unevaluated_marker,
}
