"""Two DynamoDB ledgers for the tests: on moto (in process), and on dynalite (a real DynamoDB API server).

``moto_ledger()`` and ``dynalite_ledger(server)`` each yield a :class:`DynamoLedger` on a fresh
table made by ``create_table``; ``dynalite`` is the session's dynalite server (its endpoint URL),
started on a free loopback port and stopped when the last test using it is done.

dynalite comes from the npm registry and runs on Node: ``make dynalite`` (which ``make test``
runs) installs it into ``.venv/dynalite``. Without it (or without ``node``) the dynalite tests
are skipped, with the command to run, except in CI (``CI`` set), where that fails them.
"""
from __future__ import annotations

import contextlib
import functools
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest

from broker.ledger.dynamodb import DynamoLedger
from broker.s3.client import dynamodb_clients

ROOT = Path(__file__).resolve().parents[2]
#: Where ``make dynalite`` installs it (``$(VENV)/dynalite``); DYNALITE_CLI overrides.
INSTALLED = ("dynalite", "node_modules", "dynalite", "cli.js")
#: Tables are active at once (dynalite keeps a new table CREATING for 500 ms by default).
SERVER_OPTIONS = ("--createTableMs", "0", "--deleteTableMs", "0", "--updateTableMs", "0")


def dynalite_cli() -> Path | None:
    """dynalite's ``cli.js``: $DYNALITE_CLI, else in this venv, else in the repo's .venv."""
    if os.environ.get("DYNALITE_CLI"):
        return Path(os.environ["DYNALITE_CLI"])
    for base in (Path(sys.prefix), ROOT / ".venv"):
        if base.joinpath(*INSTALLED).is_file():
            return base.joinpath(*INSTALLED)
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@contextlib.contextmanager
def running_dynalite(node: str, cli: Path, *, timeout: float = 15) -> Iterator[str]:
    """A dynalite server (in memory) on a free loopback port; yields its endpoint URL."""
    for _ in range(3):  # the free port may be taken before dynalite binds it
        port = free_port()
        proc = subprocess.Popen([node, str(cli), "--host", "127.0.0.1", "--port", str(port), *SERVER_OPTIONS],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + timeout
        while proc.poll() is None and not _listening(port) and time.monotonic() < deadline:
            time.sleep(0.05)
        if proc.poll() is None and _listening(port):
            break
        proc.kill()
        output = proc.communicate()[0]
    else:
        raise RuntimeError(f"dynalite ({cli}) did not start: {output[-2000:]}")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


_SERVER: dict[str, Any] = {"users": 0, "url": None, "stack": None}
_LOCK = threading.Lock()


@pytest.fixture(scope="session")
def dynalite() -> Iterator[str]:
    """The endpoint URL of the session's dynalite server (one per test process, however imported)."""
    cli, node = dynalite_cli(), shutil.which("node")
    if cli is None or node is None:
        missing = "node (apt-get install nodejs npm)" if node is None else "dynalite"
        message = f"{missing} is not installed: run `make dynalite` (make test does)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    with _LOCK:
        if _SERVER["users"] == 0:
            stack = contextlib.ExitStack()
            _SERVER["url"] = stack.enter_context(running_dynalite(node, cli))
            _SERVER["stack"] = stack
        _SERVER["users"] += 1
    try:
        yield str(_SERVER["url"])
    finally:
        with _LOCK:
            _SERVER["users"] -= 1
            if _SERVER["users"] == 0:
                _SERVER["stack"].close()
                _SERVER.update(url=None, stack=None)


def table_name() -> str:
    return f"ledger-{uuid.uuid4().hex[:12]}"


@functools.lru_cache(maxsize=None)
def clients(region: str | None, endpoint_url: str | None) -> tuple[Any, Any]:
    """The ledger's two clients (as DynamoLedger makes them), made once per process and shared by
    the tests' ledgers: a fresh botocore session costs 0.2 s a test. moto is imported first, so
    its hook is in the session and catches every call made inside ``mock_aws``."""
    import moto  # noqa: F401

    return dynamodb_clients(region=region, endpoint_url=endpoint_url)


def _ledger(region: str | None, endpoint_url: str | None) -> DynamoLedger:
    client, once = clients(region, endpoint_url)
    return DynamoLedger(table_name(), client=client, once_client=once)


@contextlib.contextmanager
def moto_ledger() -> Iterator[DynamoLedger]:
    """A DynamoLedger on a fresh table in moto's mock DynamoDB (us-east-1)."""
    from moto import mock_aws

    with mock_aws():
        ledger = _ledger("us-east-1", None)
        ledger.create_table()
        yield ledger


@contextlib.contextmanager
def dynalite_ledger(server: str) -> Iterator[DynamoLedger]:
    """A DynamoLedger on a fresh table of the dynalite server at ``server``; the table is dropped after."""
    ledger = _ledger(None, server)
    ledger.create_table()
    try:
        yield ledger
    finally:
        with contextlib.suppress(Exception):
            ledger._client.delete_table(TableName=ledger.table)
