"""Screening an ASCII filename (nearly all of them) at a tenth of the cost of the Unicode path.

Slow twin: ``broker.core.keys.screen_unicode``. For an ASCII name, NFC and NFKC change
nothing, the only control characters are the non-printable ones, and the only slashes are
``/`` and ``\\``; ``tests/fast/test_filenames.py`` proves the two agree on every ASCII name.
"""
from __future__ import annotations


def screen_ascii(name: str) -> tuple[str, str | None, bool]:
    """(the name, its first control character or None, whether it has a slash)."""
    bad = None if name.isprintable() else next(c for c in name if not c.isprintable())
    return name, bad, "/" in name or "\\" in name
