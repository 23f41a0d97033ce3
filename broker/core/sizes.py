"""Sizes in bytes: read from rules (``'5 MB'``, ``'5 MiB'``) and written for people. Pure."""
from __future__ import annotations

import re

_UNITS = {"B": 1, "kB": 1000, "KB": 1000, "MB": 1000**2, "GB": 1000**3, "TB": 1000**4,
          "KiB": 1024, "kiB": 1024, "MiB": 1024**2, "GiB": 1024**3, "TiB": 1024**4}
_SIZE = re.compile(r"^([0-9]+(?:\.[0-9]+)?)\s*([kKMGT]i?B|B)$")


def parse_size(value: int | float | str) -> int:
    """Bytes from an int or a string such as ``'5 MB'`` (decimal) or ``'5 MiB'`` (binary)."""
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():  # 5e6 or 1000.0: JSON Schema's integers too
        return int(value)
    match = _SIZE.match(value.strip())
    if not match:
        raise ValueError(f"{value!r} is not a size such as 1048576, '5 MB' or '5 MiB'")
    number, unit = match.groups()
    return int(float(number) * _UNITS[unit])


def human_size(n: int) -> str:
    """``5242880`` -> ``'5 MiB'``; ``12000000`` -> ``'12 MB'``: whichever unit is exact or shorter."""
    for unit, size in (("GiB", 1024**3), ("GB", 1000**3), ("MiB", 1024**2), ("MB", 1000**2),
                       ("KiB", 1024), ("kB", 1000)):
        if n >= size and n % size == 0:
            return f"{n // size} {unit}"
    for unit, size in (("GB", 1000**3), ("MB", 1000**2), ("kB", 1000)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} bytes"
