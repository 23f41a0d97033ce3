"""``broker.fast.ids.new_random_id`` is ``uuid.uuid4().hex`` for the same random bytes."""
from __future__ import annotations

import os
import re
import uuid

import pytest

from broker.fast import ids
from tests.fast.twins import assert_twins_agree


def _from(fn: object, raw: bytes, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setattr(os, "urandom", lambda n: raw[:n])
    try:
        return fn()  # type: ignore[operator]
    finally:
        monkeypatch.undo()


def test_same_bytes_same_id(monkeypatch: pytest.MonkeyPatch) -> None:
    cases = [bytes([b] * 16) for b in (0, 0x0F, 0x3F, 0x80, 0xFF)] + [os.urandom(16) for _ in range(500)]
    assert_twins_agree(lambda raw: _from(ids.new_random_id, raw, monkeypatch),
                       lambda raw: _from(lambda: uuid.uuid4().hex, raw, monkeypatch), cases)


def test_ids_are_version_4_and_distinct() -> None:
    made = {ids.new_random_id() for _ in range(2000)}
    assert len(made) == 2000
    assert all(re.fullmatch(r"[0-9a-f]{12}4[0-9a-f]{3}[89ab][0-9a-f]{15}", i) for i in made)
