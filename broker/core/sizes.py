"""Sizes in bytes: read from rules (``'5 MB'``, ``'5 MiB'``) and written for people. Pure."""
from __future__ import annotations

import re

# Units in any case ('5 mb' is 5 MB): nobody writing a rules file means millibits.
_UNITS = {"b": 1, "kb": 1000, "mb": 1000**2, "gb": 1000**3, "tb": 1000**4,
          "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4}
_SIZE = re.compile(r"^([0-9]+(?:\.[0-9]+)?)\s*([kmgt]i?b|b)$", re.IGNORECASE)
SIZE_WORDS = ("a size such as 1048576 (bytes), '5 MB' or '5 MiB' (units B, kB, MB, GB, TB in powers of 1000, "
              "KiB, MiB, GiB, TiB in powers of 1024; any case)")


def parse_size(value: int | float | str) -> int:
    """Bytes from an int or a string such as ``'5 MB'`` (decimal) or ``'5 MiB'`` (binary), units in any case.

    A fraction is exact (``'4.35 MB'`` is 4350000, not 4349999) and rounded down to a whole byte.
    """
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():  # 5e6 or 1000.0: JSON Schema's integers too
        return int(value)
    match = _SIZE.match(value.strip()) if isinstance(value, str) else None
    if not match:
        raise ValueError(f"{value!r} is not {SIZE_WORDS}")
    number, unit = match.groups()
    whole, _, fraction = number.partition(".")
    return int(whole + fraction) * _UNITS[unit.lower()] // 10 ** len(fraction)


def human_size(n: int) -> str:
    """``5242880`` -> ``'5 MiB'``; ``12000000`` -> ``'12 MB'``: whichever unit is exact or shorter."""
    for unit, size in (("GiB", 1024**3), ("GB", 1000**3), ("MiB", 1024**2), ("MB", 1000**2),
                       ("KiB", 1024), ("kB", 1000)):
        if n >= size and n % size == 0:
            return f"{n // size} {unit}"
    for unit, size in (("GB", 1000**3), ("MB", 1000**2), ("kB", 1000)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return "1 byte" if n == 1 else f"{n} bytes"
