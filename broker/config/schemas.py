"""The JSON Schemas under ``schemas/``, each compiled into a validator once per process."""
from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

SCHEMA_DIR = Path(__file__).resolve().parent.parent.parent / "schemas"


@functools.lru_cache(maxsize=None)
def load(name: str) -> dict[str, Any]:
    """The parsed schema ``schemas/<name>.schema.json``."""
    path = SCHEMA_DIR / f"{name}.schema.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(
            f"JSON Schema {path} is missing: the broker needs the 'schemas/' folder next to "
            "the 'broker/' package (keep them together when packaging)"
        ) from None


@functools.lru_cache(maxsize=None)
def validator(name: str) -> Any:
    """A checked Draft 2020-12 validator for ``name``; built once, reused per request."""
    return FastFirstValidator(load(name))


class FastFirstValidator:
    """jsonschema's validator, asked only when a compiled exact check does not say "valid".

    Valid documents (nearly all of them) are proven valid by ``broker.fastschema`` without
    importing jsonschema; anything else, and every other method, goes to jsonschema's
    ``Draft202012Validator``, checked against its metaschema and built on first need.
    """

    def __init__(self, schema: dict[str, Any]) -> None:
        from broker.fast.schema import compile_schema

        self.schema = schema
        self._accepts = compile_schema(schema)
        self._full: Any = None

    @property
    def full(self) -> Any:
        """The checked jsonschema ``Draft202012Validator``."""
        if self._full is None:
            from jsonschema import Draft202012Validator  # imported lazily: it is slow to import

            Draft202012Validator.check_schema(self.schema)
            self._full = Draft202012Validator(self.schema)
        return self._full

    def accepts(self, instance: Any) -> bool:
        """True only if the compiled check proves ``instance`` valid (False: ask jsonschema)."""
        if self._accepts is None:
            return False
        try:
            return self._accepts(instance) is True
        except Exception:  # noqa: BLE001 - Undecided, or input the check cannot handle
            return False

    def iter_errors(self, instance: Any) -> Any:
        """Every error, as jsonschema reports them (none, quickly, for a valid instance)."""
        if self.accepts(instance):
            return iter(())
        return self.full.iter_errors(instance)

    def is_valid(self, instance: Any) -> bool:
        """Whether ``instance`` is valid."""
        return self.accepts(instance) or self.full.is_valid(instance)

    def __getattr__(self, name: str) -> Any:  # validate(), descend(), ... as jsonschema has them
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.full, name)


# What each pattern of the rules schema asks for, in words: a problem shows these, never the
# regular expression (tests/config check that every pattern in schemas/rules.schema.json has words).
PATTERN_WORDS: dict[str, str] = {
    "^[a-z]{2}(-[a-z]+)+-[0-9]+$": "an AWS region name such as 'us-east-1' or 'eu-west-3'",
    "^(\\*|https?://[^/\\s]+)$": ("an origin: http:// or https://, a host and an optional :port, nothing after "
                                  "(no path, not even a trailing '/'), such as 'https://app.example.com'; or '*'"),
    "^[A-Za-z0-9!_.*'()=-][A-Za-z0-9!_.*'()/=-]*/$": ("a key prefix ending in '/', such as 'quarantine/': letters, "
                                                       "digits and ! _ . * ' ( ) = - between the slashes"),
    "^[a-z0-9][a-z0-9_-]{0,63}$": ("an id: 1 to 64 lowercase letters, digits, '_' or '-', starting with a letter "
                                   "or digit, such as 'web-app'"),
    "^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$": ("an S3 bucket name: 3 to 63 lowercase letters, digits, '.' or '-', "
                                           "starting and ending with a letter or digit"),
    "^[0-9]+(\\.[0-9]+)?\\s*([kKmMgGtT][iI]?[bB]|[bB])$": ("a size: a number and a unit B, kB, MB, GB, TB (powers "
                                                            "of 1000) or KiB, MiB, GiB, TiB (powers of 1024), any "
                                                            "case, such as '5 MB' or '5 MiB'; or a whole number "
                                                            "of bytes"),
    "^[0-9a-f]{64}$": ("a SHA-256 hash of an API key: 64 lowercase hexadecimal digits (`broker hash-key` prints "
                       "one; never the key itself)"),
    "^(sub|group|principal):[^\\s]{1,256}$": ("an identity 'sub:<JWT sub>', 'group:<Cognito group>' or "
                                              "'principal:<Lambda authorizer principalId>', without spaces"),
    "^[A-Z_][A-Z0-9_]{0,127}$": ("the name of an environment variable: capital letters, digits and '_', not "
                                 "starting with a digit, such as 'WEB_APP_CALLBACK_SECRET'"),
    "^([a-zA-Z0-9][a-zA-Z0-9!#$&^_.+-]*|\\*)/([a-zA-Z0-9][a-zA-Z0-9!#$&^_.+-]*|\\*)$": (
        "a media type 'type/subtype' such as 'image/png', 'image/*' or '*/*' (no parameters such as "
        "'; charset=utf-8', no spaces)"),
    "^\\.[a-z0-9]{1,10}$": "a file extension: a dot and 1 to 10 lowercase letters or digits, such as '.png'",
    "^[\\x20-\\x7e]+$": "printable ASCII text (no line breaks, tabs or non-ASCII characters), not empty",
    "^[\\x20-\\x7e]*$": "printable ASCII text (no line breaks, tabs or non-ASCII characters)",
    "^[a-z0-9][a-z0-9-]{0,63}$": ("a metadata name: 1 to 64 lowercase letters, digits or '-', starting with a "
                                  "letter or digit, such as 'title'"),
}


def pattern_words(pattern: str) -> str:
    """What ``pattern`` asks for, in words (the pattern itself only if no words were written for it)."""
    return PATTERN_WORDS.get(pattern, f"of the form {pattern}")


def property_names(fragment: Any, root: dict[str, Any]) -> set[str]:
    """Every property name ``fragment`` of schema ``root`` knows, through ``allOf`` and local ``$ref``s."""
    names: set[str] = set()
    stack, seen = [fragment], set()
    while stack:
        part = stack.pop()
        if not isinstance(part, dict) or id(part) in seen:
            continue
        seen.add(id(part))
        names.update(part.get("properties", {}))
        stack.extend(part.get("allOf", []))
        ref = part.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/"):
            target: Any = root
            for step in ref[2:].split("/"):
                target = target.get(step, {}) if isinstance(target, dict) else {}
            stack.append(target)
    return names


def json_path(parts: Any) -> str:
    """Render a jsonschema ``absolute_path`` deque as ``$.a.b[0]``."""
    out = "$"
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out
