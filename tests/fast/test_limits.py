"""``broker.fast.limits.within_limits`` says yes exactly when ``loader._oversized`` finds nothing."""
from __future__ import annotations

from typing import Any

from hypothesis import given, settings, strategies as st

from broker.config import loader
from broker.fast.limits import within_limits
from tests.fast.twins import assert_twins_agree


def _fast(doc: Any, depth: int = loader.MAX_RULES_DEPTH, values: int = loader.MAX_RULES_VALUES) -> bool:
    return within_limits(doc, max_depth=depth, max_values=values)


def _nested(depth: int) -> Any:
    doc: Any = "leaf"
    for i in range(depth):
        doc = [doc] if i % 2 else {"k": doc}
    return doc


def _shared(fan: int, levels: int) -> Any:
    """Aliases of aliases, as a YAML bomb expands: every level refers to the previous one ``fan`` times."""
    doc: Any = ["x"] * fan
    for _ in range(levels):
        doc = [doc] * fan
    return doc


def test_edges_of_both_limits() -> None:
    cases = [None, 1, "text", [], {}, *(_nested(d) for d in (1, 31, 32, 33, 34, 100)),
             _shared(10, 5), _shared(10, 6), _shared(10, 7), _shared(2, 20), [0] * 2_000_000, [0] * 1_999_999]
    assert_twins_agree(_fast, lambda doc: loader._oversized(doc) is None, cases)


json_docs = st.recursive(st.none() | st.integers() | st.text(max_size=3),
                         lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=3), inner, max_size=4),
                         max_leaves=40)


@settings(max_examples=300)
@given(json_docs, st.integers(min_value=1, max_value=6), st.integers(min_value=1, max_value=40))
def test_random_documents_under_small_limits(doc: Any, depth: int, values: int) -> None:
    """The slow walk with the same small limits (it reads the module's constants, so they are swapped)."""
    def slow(case: Any) -> bool:
        old = loader.MAX_RULES_DEPTH, loader.MAX_RULES_VALUES
        loader.MAX_RULES_DEPTH, loader.MAX_RULES_VALUES = depth, values
        try:
            return loader._oversized(case) is None
        finally:
            loader.MAX_RULES_DEPTH, loader.MAX_RULES_VALUES = old

    assert_twins_agree(lambda case: _fast(case, depth, values), slow, [doc])
