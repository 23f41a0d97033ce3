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


def json_path(parts: Any) -> str:
    """Render a jsonschema ``absolute_path`` deque as ``$.a.b[0]``."""
    out = "$"
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out
