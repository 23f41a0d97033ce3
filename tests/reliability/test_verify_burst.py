"""The verifier burst of ``make soak``, at a size ``make test`` can afford: nothing lost, nothing judged twice."""
from __future__ import annotations

from typing import Any

from reliability.verify_burst import main


def test_a_small_burst_with_duplicates_is_judged_exactly_once(capsys: Any) -> None:
    assert main(["--objects", "150", "--duplicates", "0.3", "--clients", "6"]) == 0
    out = capsys.readouterr().out
    assert "OK: 0 lost, each object judged exactly once" in out
    assert '"verification_lines": 150' in out and '"duplicates": 45' in out
