"""One timestamp formatter, ``iso_z``, writes exactly what strftime writes; ``parse_iso_z`` reads it back."""
from __future__ import annotations

from datetime import datetime, timezone

import pytest
from hypothesis import given, strategies as st

from broker.timefmt import from_unix, iso_z, parse_iso_z
from tests.fast.twins import assert_twins_agree

MOMENTS = [datetime(1, 1, 1), datetime(5, 6, 7, 8, 9, 10, 999), datetime(999, 12, 31, 23, 59, 59, 999999),
           datetime(1000, 1, 1), datetime(2026, 11, 28, 14, 54, 31, 123456), datetime(9999, 12, 31, 23, 59, 59),
           datetime(2026, 11, 28, 14, 54, 31, tzinfo=timezone.utc)]


def test_seconds_as_strftime_writes_them_years_below_1000_included() -> None:
    assert_twins_agree(iso_z, lambda m: m.strftime("%Y-%m-%dT%H:%M:%SZ"), MOMENTS)


def test_milliseconds_as_strftime_writes_them() -> None:
    assert_twins_agree(lambda m: iso_z(m, millis=True),
                       lambda m: m.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z", MOMENTS)


@given(st.lists(st.datetimes(), min_size=1, max_size=50))
def test_any_moment(moments: list[datetime]) -> None:
    assert_twins_agree(iso_z, lambda m: m.strftime("%Y-%m-%dT%H:%M:%SZ"), moments)
    assert_twins_agree(lambda m: iso_z(m, millis=True),
                       lambda m: m.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z", moments)


@pytest.mark.parametrize(("text", "expected"), [
    pytest.param("2026-11-28T14:54:31Z", datetime(2026, 11, 28, 14, 54, 31, tzinfo=timezone.utc), id="botocore"),
    pytest.param("2026-12-31T23:59:59Z", datetime(2026, 12, 31, 23, 59, 59, tzinfo=timezone.utc), id="year_end"),
])
def test_parse_iso_z(text: str, expected: datetime) -> None:
    assert parse_iso_z(text) == expected


@pytest.mark.parametrize("text", [
    pytest.param("2026-13-28T14:54:31Z", id="month_13"),
    pytest.param("2026-+1-28T14:54:31Z", id="signed_digit"),
    pytest.param("2026-11-28 14:54:31Z", id="space"),
])
def test_parse_iso_z_refuses_what_strptime_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        parse_iso_z(text)


@given(st.lists(st.datetimes(min_value=datetime(1000, 1, 1)), min_size=1, max_size=50))
def test_parse_reads_back_what_iso_z_writes(moments: list[datetime]) -> None:
    assert_twins_agree(lambda m: parse_iso_z(iso_z(m)),
                       lambda m: datetime.strptime(m.strftime("%Y-%m-%dT%H:%M:%SZ"), "%Y-%m-%dT%H:%M:%SZ")
                       .replace(tzinfo=timezone.utc), moments)


def test_from_unix() -> None:
    assert iso_z(from_unix(1795940745)) == "2026-11-29T08:25:45Z"
