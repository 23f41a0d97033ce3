"""broker.jsontext writes exactly what the standard library's encoders write."""
from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.fast.jsontext import ascii_line, compact_bytes
from broker.models import Check
from tests.fast.twins import assert_twins_agree


def std_compact(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str).encode()


def std_ascii(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=True, default=str)


@dataclass(frozen=True)
class Point:
    x: int


CASES = [
    pytest.param({"url": "https://b.s3.amazonaws.com/", "fields": {"key": "uploads/a/b.png", "policy": "eyJ=" * 300},
                  "max_bytes": 5 * 1024**2, "profile": None, "ok": True}, id="grant-shaped"),
    pytest.param({"conditions": [{"bucket": "b"}, ["content-length-range", 1, 5 * 1024**4]]}, id="conditions"),
    pytest.param({"name": "r\u00e9sum\u00e9 \U0001F600", "sep": "\u2028\u2029\u0085", "ctl": "\x00\x1f\"\\/"},
                 id="non-ascii-and-controls"),
    pytest.param({"del": "a\x7fb"}, id="delete-character"),
    pytest.param({"big": 2**64, "small": -(2**63) - 1}, id="beyond-64-bits"),
    pytest.param({1: "int key", None: "none key"}, id="non-string-keys"),
    pytest.param({"lone": "\ud800"}, id="lone-surrogate"),
    pytest.param({"when": datetime(2026, 11, 28, 14, 49, 31, tzinfo=timezone.utc), "point": Point(1)},
                 id="default-str"),
    pytest.param({"check": Check.TOO_LARGE, "tuple": (1, "a")}, id="str-enum-and-tuple"),
    pytest.param(json.loads("[" * 40 + "]" * 40), id="nested"),
]


@pytest.mark.parametrize("value", CASES)
def test_same_text_as_json(value: Any) -> None:
    assert_twins_agree(ascii_line, std_ascii, [value])
    if "lone" in str(value):  # json writes it, UTF-8 cannot carry it: the same error as before
        with pytest.raises(UnicodeEncodeError):
            compact_bytes(value)
    else:
        assert compact_bytes(value) == std_compact(value)


def test_very_deep_values_fall_back_to_json() -> None:
    value: Any = []
    for _ in range(400):  # orjson stops at 254 levels
        value = [value]
    assert compact_bytes(value) == std_compact(value)
    assert ascii_line(value) == std_ascii(value)


JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=1000, deadline=None)
@given(JSONISH)
def test_same_text_for_any_float_free_value(value: Any) -> None:
    assert_twins_agree(ascii_line, std_ascii, [value])
    try:
        expected = std_compact(value)
    except UnicodeEncodeError:
        return  # surrogates in the text: covered above
    assert compact_bytes(value) == expected
