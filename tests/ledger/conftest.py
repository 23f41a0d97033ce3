"""The ``ledger`` fixture: every engine, so one contract runs on each.

``sqlite`` is a file in tmp_path; ``moto`` is DynamoDB mocked in-process (API calls only);
``dynalite`` is a real DynamoDB-API server the tests start (marked ``store``: a real part).
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from broker.ledger import Ledger
from broker.ledger.sqlite import SqliteLedger
from tests.ledger.dynamo_fixtures import dynalite  # noqa: F401 - the session's DynamoDB-API server

ENGINES = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("moto", id="moto"),
    pytest.param("dynalite", id="dynalite", marks=pytest.mark.store),
]


def open_engine(engine: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Ledger]:
    """A fresh, empty ledger of ``engine``."""
    if engine == "sqlite":
        ledger = SqliteLedger(tmp_path / "ledger.db")
        yield ledger
        ledger.close()
        return
    from tests.ledger import dynamo_fixtures

    if engine == "moto":
        with dynamo_fixtures.moto_ledger() as ledger:
            yield ledger
        return
    server = request.getfixturevalue("dynalite")
    with dynamo_fixtures.dynalite_ledger(server) as ledger:
        yield ledger


@pytest.fixture(params=ENGINES)
def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Ledger]:
    yield from open_engine(request.param, tmp_path, request)


@pytest.fixture(params=[p for p in ENGINES if p.id != "moto"])
def real_ledger(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Ledger]:
    """Engines whose concurrency is real (moto serialises every call)."""
    yield from open_engine(request.param, tmp_path, request)
