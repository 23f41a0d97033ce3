"""How big a parsed rules document is, answered without wording why.

Slow twin: ``broker.config.loader._oversized``, which walks every value and says which limit
is hit first. :func:`within_limits` counts the values the same way (every item, aliases as
often as they are reached) but stacks only the containers, a few times faster; when it says
False, the slow twin walks again to word the problem. ``tests/fast/test_limits.py`` proves
the two agree.
"""
from __future__ import annotations

from typing import Any


def within_limits(doc: Any, *, max_depth: int, max_values: int) -> bool:
    """True when ``doc`` nests at most ``max_depth`` levels and holds at most ``max_values`` values."""
    if not isinstance(doc, (dict, list)):
        return True
    count = 1
    stack: list[tuple[Any, int]] = [(doc, 1)]
    pop, push = stack.pop, stack.append
    while stack:
        item, depth = pop()
        if depth > max_depth:
            return False
        values = item.values() if isinstance(item, dict) else item
        count += len(values)
        if count > max_values:
            return False
        for value in values:
            if isinstance(value, (dict, list)):
                push((value, depth + 1))
    return True
