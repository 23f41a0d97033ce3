"""Multipart uploads: the rule's size limit at completion, and how many parts a rule can need. Pure.

A presigned part URL cannot bound the part's size, so the size rule is enforced when the
upload is completed: the broker lists the parts the store holds and refuses to complete (and
aborts the upload, so nothing stays stored) if their sum is outside the rule's range. Part
numbers are bounded up front: every part but the last is at least 5 MiB, so a rule of
``max_bytes`` never needs more than ``ceil(max_bytes / 5 MiB)`` parts.
"""
from __future__ import annotations

import math
from dataclasses import replace

from broker.models import Check, Decision
from broker.core.sizes import human_size

MIN_PART_BYTES = 5 * 1024 * 1024
MAX_PARTS = 10000


def max_parts(max_bytes: int) -> int:
    """The most parts an upload within ``max_bytes`` can need (every part but the last >= 5 MiB)."""
    return max(1, min(MAX_PARTS, math.ceil(max_bytes / MIN_PART_BYTES)))


def size_decision(client: str, profile: str, uploaded: int, completing: int, *,
                  min_bytes: int, max_bytes: int) -> Decision:
    """Allowed if everything uploaded fits the rule's maximum and what completes meets its minimum."""
    if uploaded > max_bytes:
        return Decision(False, client, profile, check=Check.TOO_LARGE,
                        reason=f"too large: {human_size(uploaded)} uploaded, the limit for {profile} is "
                               f"{human_size(max_bytes)}",
                        expected=max_bytes, actual=uploaded)
    if completing < min_bytes:
        return Decision(False, client, profile, check=Check.TOO_SMALL,
                        reason=f"too small: {human_size(completing)}, {profile} needs at least "
                               f"{human_size(min_bytes)}",
                        expected=min_bytes, actual=completing)
    return Decision(True, client, profile)


def with_outcome(decision: Decision, outcome: str) -> Decision:
    """The denial with what the broker did about it appended to its reason."""
    return replace(decision, reason=f"{decision.reason}; {outcome}")
