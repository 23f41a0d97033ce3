"""Timestamps as the broker writes and reads them: ISO 8601 in UTC with a ``Z``.

One formatter, :func:`iso_z`, for every timestamp the broker writes (audit lines, grant
responses, policy expirations, Fine Uploader answers). It writes exactly what
``strftime("%Y-%m-%dT%H:%M:%SZ")`` (or ``%S.mmmZ`` with ``millis``) writes, years below 1000
included, at a third of the cost (``tests/test_timefmt.py`` compares them).
"""
from __future__ import annotations

from datetime import datetime, timezone

_SECONDS = "%Y-%m-%dT%H:%M:%SZ"


def iso_z(moment: datetime, *, millis: bool = False) -> str:
    """``2026-11-28T14:54:31Z``, or ``2026-11-28T14:54:31.123Z`` with ``millis`` (the fields as given)."""
    if moment.year < 1000:  # strftime does not pad such years; keep its output
        if millis:
            return moment.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        return moment.strftime(_SECONDS)
    if millis:  # %-formatting: half the cost of an f-string
        return "%d-%02d-%02dT%02d:%02d:%02d.%03dZ" % (
            moment.year, moment.month, moment.day, moment.hour, moment.minute, moment.second,
            moment.microsecond // 1000)
    return "%d-%02d-%02dT%02d:%02d:%02dZ" % (
        moment.year, moment.month, moment.day, moment.hour, moment.minute, moment.second)


def from_unix(seconds: int | float) -> datetime:
    """A Unix time as an aware UTC datetime."""
    return datetime.fromtimestamp(seconds, timezone.utc)


def parse_iso_z(value: str) -> datetime:
    """``2026-11-28T14:54:31Z`` as an aware UTC datetime; raises ``ValueError`` naming the problem."""
    parts = (value[0:4], value[5:7], value[8:10], value[11:13], value[14:16], value[17:19])
    digits = "".join(parts)
    if len(value) == 20 and value[4::3] == "--T::Z" and digits.isascii() and digits.isdigit():
        try:  # the fixed layout the broker and botocore write, without strptime's cost
            return datetime(*map(int, parts), tzinfo=timezone.utc)  # type: ignore[misc]
        except ValueError:  # e.g. month 13: let strptime word the error
            pass
    return datetime.strptime(value, _SECONDS).replace(tzinfo=timezone.utc)
