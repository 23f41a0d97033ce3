"""The store suite: the same tests on SeaweedFS and on Ceph RGW.

A test module joins it by importing these fixtures (they override tests.stack's SeaweedFS-only
``store``, ``live`` and ``verifying`` in that module)::

    from tests.store_suite import live, store, verifying  # noqa: F401 - the store suite: both stores

Every test there that uses one of them (or ``make_bucket``) then runs once per store in
:data:`tests.stack.STORES` (``test_x[seaweedfs]``, ``test_x[rgw]``), each store started once per
session; ``store.kind`` says which, for the places where the stores legitimately differ.
"""
from __future__ import annotations

from typing import Any

import pytest


@pytest.fixture(scope="module")
def store(store_kind: str, request: pytest.FixtureRequest) -> Any:
    """The session's store of this test's kind (broker.dev.store.Store or broker.dev.rgw.Rgw: the same methods)."""
    return request.getfixturevalue(f"{store_kind}_store")


@pytest.fixture(scope="module")
def live(store_kind: str, request: pytest.FixtureRequest) -> Any:
    """The broker's HTTP server against the store of this test's kind."""
    return request.getfixturevalue(f"{store_kind}_live")


@pytest.fixture(scope="module")
def verifying(store_kind: str, request: pytest.FixtureRequest) -> Any:
    """A stack of this test's store kind whose store sends each new object's event to the broker's verifier."""
    return request.getfixturevalue(f"{store_kind}_verifying")
