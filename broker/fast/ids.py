"""Random ids for keys and requests: a uuid4 as 32 hex digits.

Slow twin: ``uuid.uuid4().hex``. The same 16 bytes of ``os.urandom`` with the same version
and variant bits, at a third of the cost (~2.5 µs saved per request);
``tests/fast/test_ids.py`` proves them equal for the same random bytes.
"""
from __future__ import annotations

import os


def new_random_id() -> str:
    """A random UUID version 4 as 32 hex digits (122 random bits): the ``{uuid}`` in every key."""
    raw = bytearray(os.urandom(16))
    raw[6] = raw[6] & 0x0F | 0x40  # version 4
    raw[8] = raw[8] & 0x3F | 0x80  # RFC 4122 variant
    return raw.hex()
