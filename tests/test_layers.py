"""The house's two rules that matter most, and the floors every import must respect.

1. Only ``broker.s3`` imports boto3 or botocore (``lambda_handler.py`` included).
2. ``broker.core`` is pure: no I/O module, no clock, no randomness; it imports only values,
   errors, the speed twins and itself.
3. Imports point one way (each module only to its floor or below) and never form a cycle.

Every import counts: at module level, inside functions, under ``TYPE_CHECKING``. Each checker
is also run on a module written to break it, so none can pass by checking nothing.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.graphs import cycles as find_cycles

ROOT = Path(__file__).resolve().parent.parent
STORE_PACKAGE = "broker.s3"
AWS_SDK = ("boto3", "botocore")
#: What the pure core may import: values, errors, speed twins, formatting, itself, and these.
CORE_ALLOWED_STDLIB = {"__future__", "base64", "binascii", "dataclasses", "datetime", "enum", "functools",
                       "hashlib", "hmac", "json", "math", "re", "string", "typing", "unicodedata", "urllib.parse",
                       "collections", "collections.abc"}
CORE_ALLOWED_BROKER = ("broker.errors", "broker.models", "broker.fast", "broker.timefmt", "broker.core")
#: Calls the pure core must not make: the clock and randomness come in as arguments.
CORE_FORBIDDEN_CALLS = {"now", "utcnow", "today", "time", "monotonic", "urandom", "uuid4", "token_hex", "random"}

#: Floors, lowest first: a module may import its own floor and the ones below, never above.
FLOORS: list[tuple[str, ...]] = [
    ("broker", "broker.errors", "broker.models", "broker.fast", "broker.timefmt", "broker.logs"),
    ("broker.core",),
    ("broker.config",),
    ("broker.s3", "broker.ledger", "broker.audit", "broker.callbacks", "broker.metrics", "broker.web", "broker.sniff"),
    ("broker.app", "broker.verifier", "broker.probe", "broker.reports"),
    ("broker.protocols", "broker.adapters"),
    ("broker.service", "broker.cli", "broker.__main__", "broker.dev", "broker.deploy", "lambda_handler"),
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(source: str, module: str, is_package: bool = False) -> set[str]:
    """Every module ``source`` imports, absolute, wherever the import statement stands."""
    package = module if is_package else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # `from pkg import module`
    return found


def floor_of(module: str) -> int:
    best, floor = -1, -1
    for level, prefixes in enumerate(FLOORS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, floor = len(prefix), level
    return floor


def sources() -> dict[str, tuple[str, bool]]:
    out = {module_name(p): (p.read_text(), p.name == "__init__.py") for p in (ROOT / "broker").rglob("*.py")}
    out["lambda_handler"] = ((ROOT / "lambda_handler.py").read_text(), False)
    return out


def graph(modules: dict[str, tuple[str, bool]]) -> dict[str, set[str]]:
    known = set(modules)
    return {name: {i for i in imports_of(src, name, pkg) if i in known and i != name}
            for name, (src, pkg) in modules.items()}


# --------------------------------------------------------------------------- the checkers


def sdk_violations(modules: dict[str, tuple[str, bool]]) -> list[str]:
    """Modules outside broker.s3 that import boto3 or botocore."""
    bad = []
    for name, (src, pkg) in modules.items():
        if name == STORE_PACKAGE or name.startswith(STORE_PACKAGE + "."):
            continue
        sdk = sorted(i for i in imports_of(src, name, pkg) if i.split(".")[0] in AWS_SDK)
        if sdk:
            bad.append(f"{name} imports {', '.join(sdk)}: only {STORE_PACKAGE} may (use broker.s3.store.S3Store)")
    return bad


def core_violations(modules: dict[str, tuple[str, bool]]) -> list[str]:
    """Imports and calls that would give the pure core I/O, a clock or randomness."""
    bad = []
    for name, (src, pkg) in modules.items():
        if not (name == "broker.core" or name.startswith("broker.core.")):
            continue
        for imported in sorted(imports_of(src, name, pkg)):
            if imported.startswith("broker"):
                if not any(imported == p or imported.startswith(p + ".") for p in CORE_ALLOWED_BROKER):
                    bad.append(f"{name} imports {imported}, outside the core's floor")
            elif imported not in CORE_ALLOWED_STDLIB and imported.rpartition(".")[0] not in CORE_ALLOWED_STDLIB:
                bad.append(f"{name} imports {imported}, which the pure core may not use")
        for node in ast.walk(ast.parse(src)):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                    and node.func.attr in CORE_FORBIDDEN_CALLS:
                bad.append(f"{name} line {node.lineno} calls .{node.func.attr}(): pass time and randomness in")
    return bad


def floor_violations(modules: dict[str, tuple[str, bool]]) -> list[str]:
    """Imports that point up a floor."""
    bad = []
    for name, targets in graph(modules).items():
        mine = floor_of(name)
        assert mine >= 0, f"{name} is on no floor: add it to FLOORS in {__file__}"
        for target in sorted(targets):
            if floor_of(target) > mine:
                bad.append(f"{name} (floor {mine}) imports {target} (floor {floor_of(target)})")
    return bad


def cycles(modules: dict[str, tuple[str, bool]]) -> list[list[str]]:
    """Import cycles (each as the path that closes it), found by depth-first search."""
    return find_cycles(graph(modules))


# --------------------------------------------------------------------------- the house as it is


def test_only_the_store_package_imports_boto3_or_botocore() -> None:
    assert sdk_violations(sources()) == []


def test_the_core_is_pure() -> None:
    assert core_violations(sources()) == []


def test_imports_point_down_the_floors() -> None:
    assert floor_violations(sources()) == []


def test_no_import_cycle() -> None:
    assert cycles(sources()) == []


def test_every_module_is_on_a_floor() -> None:
    assert [m for m in sources() if floor_of(m) < 0] == []


# --------------------------------------------------------------------------- each checker can fail


@pytest.mark.parametrize("module, source", [
    pytest.param("broker.protocols.companion", "from botocore.exceptions import ClientError\n", id="from_import"),
    pytest.param("broker.app", "def f():\n    import boto3\n", id="inside_a_function"),
    pytest.param("lambda_handler", "import botocore.session\n", id="lambda_handler"),
    pytest.param("broker.dev.store", "if TYPE_CHECKING:\n    import botocore\n", id="type_checking"),
])
def test_a_botocore_import_outside_the_store_package_is_caught(module: str, source: str) -> None:
    assert sdk_violations({**sources(), module: (source, False)})
    assert not sdk_violations({**sources(), "broker.s3.extra": (source, False)})


@pytest.mark.parametrize("source", [
    pytest.param("import os\n", id="os"),
    pytest.param("from broker.s3.store import S3Store\n", id="the_store"),
    pytest.param("from ..config import loader\n", id="relative_up"),
    pytest.param("from datetime import datetime\nx = datetime.now()\n", id="the_clock"),
    pytest.param("import secrets\n", id="randomness"),
])
def test_io_in_the_core_is_caught(source: str) -> None:
    assert core_violations({**sources(), "broker.core.extra": (source, False)})


def test_an_upward_import_and_a_cycle_are_caught() -> None:
    upward = {**sources(), "broker.core.extra": ("from broker.app import Broker\n", False)}
    assert floor_violations(upward)
    loop = {"broker.a": ("import broker.b\n", False), "broker.b": ("from broker import a\n", False)}
    assert cycles(loop) == [["broker.a", "broker.b", "broker.a"]]
