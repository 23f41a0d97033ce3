"""Fixtures for end-to-end tests against a real S3-compatible store (SeaweedFS ``weed mini``)."""
from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from broker.devstore import Store, StoreConfig, pick_free_ports

_bucket_numbers = itertools.count(1)


@pytest.fixture(scope="session")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    """A SeaweedFS store running for the whole session on free ports, in a fresh directory."""
    data_dir = tmp_path_factory.mktemp("store")
    s3_port, base_port = pick_free_ports()
    running = Store(StoreConfig.generate(data_dir, s3_port=s3_port, base_port=base_port))
    running.start(timeout=30)
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture()
def make_bucket(store: Store) -> Callable[..., str]:
    """A factory: make_bucket(cors_rules=None, prefix="t") creates a new, uniquely named bucket."""

    def make(cors_rules: list[dict[str, Any]] | None = None, prefix: str = "t") -> str:
        name = f"{prefix}-{os.getpid()}-{next(_bucket_numbers)}"
        return store.ensure_bucket(name, cors_rules)

    return make
