"""``assert_twins_agree``: a fast path and its slow twin give the same answer for every case.

Every module under ``broker/fast/`` (and the signer's ``broker/s3/fastpost.py``) is tested with
it: the twins are called on the same inputs and must return equal values, or raise the same
kind of exception. A failure lists every case that differed, with both answers.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any


def _outcome(fn: Callable[..., Any], case: Any, unpack: bool) -> tuple[str, Any]:
    try:
        return "value", fn(*case) if unpack else fn(case)
    except Exception as exc:  # noqa: BLE001 - the twins must fail alike, too
        return "raises", type(exc)


def assert_twins_agree(fast: Callable[..., Any], slow: Callable[..., Any], cases: Iterable[Any], *,
                       unpack: bool = False, same: Callable[[Any, Any], bool] | None = None,
                       exceptions: Callable[[type, type], bool] | None = None) -> int:
    """Assert ``fast(case) == slow(case)`` (``fast(*case)`` with ``unpack``) for every case; returns the count.

    ``same`` compares two values (default ``==``); ``exceptions`` two exception types
    (default: the fast one is the slow one or a subclass of it).
    """
    same = same or (lambda a, b: a == b)
    exceptions = exceptions or (lambda fast_type, slow_type: issubclass(fast_type, slow_type))
    differ = []
    count = 0
    for case in cases:
        count += 1
        (fast_kind, fast_out), (slow_kind, slow_out) = _outcome(fast, case, unpack), _outcome(slow, case, unpack)
        if fast_kind != slow_kind:
            agree = False
        elif fast_kind == "raises":
            agree = exceptions(fast_out, slow_out)
        else:
            agree = same(fast_out, slow_out)
        if not agree:
            differ.append(f"  {case!r:.200}: fast {fast_kind} {fast_out!r:.200}, slow {slow_kind} {slow_out!r:.200}")
    assert count, "no cases: a differential test that compares nothing proves nothing"
    assert not differ, f"{len(differ)} of {count} cases differ:\n" + "\n".join(differ[:20])
    return count
