"""The JSON Schemas under ``schemas/``, each compiled into a validator once per process."""
from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schemas"


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
    from jsonschema import Draft202012Validator  # imported lazily: it is slow to import

    schema = load(name)
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def json_path(parts: Any) -> str:
    """Render a jsonschema ``absolute_path`` deque as ``$.a.b[0]``."""
    out = "$"
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out
