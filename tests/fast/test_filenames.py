"""``broker.fast.filenames.screen_ascii`` judges every ASCII name as ``keys.screen_unicode`` does."""
from __future__ import annotations

import itertools

from hypothesis import given, strategies as st

from broker.core.keys import screen_unicode
from broker.fast.filenames import screen_ascii
from tests.fast.twins import assert_twins_agree


def test_every_short_ascii_name_is_screened_alike() -> None:
    """Exhaustive over names of up to two characters: every ASCII character, alone and in pairs."""
    chars = [chr(c) for c in range(128)]
    names = ["", *chars, *("".join(p) for p in itertools.product(chars, repeat=2))]
    assert assert_twins_agree(screen_ascii, screen_unicode, names) == 1 + 128 + 128 * 128


@given(st.lists(st.text(alphabet=st.characters(max_codepoint=127), max_size=60), max_size=20))
def test_ascii_screening_equals_the_unicode_screening(names: list[str]) -> None:
    assert_twins_agree(screen_ascii, screen_unicode, names or ["a.png"])
