"""The helper itself: it must fail when twins differ, or every differential test could pass vacuously."""
from __future__ import annotations

import pytest

from tests.fast.twins import assert_twins_agree


def test_equal_twins_pass_and_count_the_cases() -> None:
    assert assert_twins_agree(abs, lambda x: x if x >= 0 else -x, [-2, 0, 3]) == 3


@pytest.mark.parametrize("fast, slow, cases", [
    pytest.param(lambda x: x + 1, lambda x: x, [1], id="values_differ"),
    pytest.param(int, lambda x: 0, ["x"], id="fast_raises_only"),
    pytest.param(lambda x: 0, int, ["x"], id="slow_raises_only"),
    pytest.param(lambda x: {}[x], lambda x: [][x], [0], id="different_exceptions"),
    pytest.param(abs, abs, [], id="no_cases"),
])
def test_differing_twins_fail(fast: object, slow: object, cases: list[object]) -> None:
    with pytest.raises(AssertionError):
        assert_twins_agree(fast, slow, cases)  # type: ignore[arg-type]
