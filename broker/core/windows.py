"""Quota windows: fixed UTC hours and days, named ``h<hours since the epoch>`` and ``d<days ...>``. Pure.

The ledger counts grants per hour window and bytes per day window; ``broker reconcile`` and
``broker usage`` read the same names.
"""
from __future__ import annotations


def hour_of(ts: int) -> str:
    """The hour window holding ``ts`` (seconds since the epoch)."""
    return f"h{ts // 3600}"


def day_of(ts: int) -> str:
    """The day window holding ``ts``."""
    return f"d{ts // 86400}"


def window_start(window: str) -> int:
    """The first second of ``window``."""
    return int(window[1:]) * (3600 if window[0] == "h" else 86400)


def window_end(window: str) -> int:
    """The first second after ``window``."""
    return (int(window[1:]) + 1) * (3600 if window[0] == "h" else 86400)
