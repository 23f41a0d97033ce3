"""JSON text for responses and audit lines: orjson's speed, the standard library's output.

Slow twin: ``json.dumps`` with the same options (``tests/fast/test_jsontext.py``).

Encoding the grant response and the audit line with ``json`` costs about a tenth of a whole
request; orjson writes the same text about ten times faster. It is used only where its text
means the same as ``json``'s: anything orjson refuses (integers beyond 64 bits, non-string
keys, lone surrogates, deep nesting) and, for audit lines, anything that is not pure ASCII
goes to the ``json`` encoders below, exactly as before. Floats are the one difference in
spelling (``1e16`` for ``1e+16``; ``null`` for ``NaN``, which ``json`` would write as
invalid JSON); the broker's own records carry none.
"""
from __future__ import annotations

import json
from typing import Any

import orjson

# Types orjson would write its own way (RFC 3339 datetimes, dataclasses as objects) go to
# ``default=str``, as they do with json's encoders.
_OPTIONS = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS

# Built once: json.dumps with options builds a new encoder on every call.
_COMPACT = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, default=str)
# ASCII only: a client's U+2028 or U+0085 left raw would end the line for readers that split
# on them (str.splitlines, JavaScript, some log viewers), letting a request forge what looks
# like another audit line.
_ASCII = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True, default=str)


def compact_bytes(value: Any) -> bytes:
    """``json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)`` as UTF-8."""
    try:
        return orjson.dumps(value, default=str, option=_OPTIONS)
    except TypeError:  # orjson.JSONEncodeError: let json decide (and word any error)
        return _COMPACT.encode(value).encode()


def ascii_line(value: Any) -> str:
    """``json.dumps(value, separators=(",", ":"), ensure_ascii=True, default=str)``: one line."""
    try:
        raw = orjson.dumps(value, default=str, option=_OPTIONS)
    except TypeError:
        return _ASCII.encode(value)
    if raw.isascii() and b"\x7f" not in raw:
        return raw.decode("ascii")
    return _ASCII.encode(value)  # \u-escapes for DEL and everything beyond ASCII, as json writes them
