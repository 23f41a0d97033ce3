"""The rules_loaded log line says what a reload changed, counted as ``broker diff`` counts it."""
from __future__ import annotations

from typing import Any

import pytest

from broker.config import load_rules
from broker.config.sources import RulesProvider, StaticSource, change_summary
from broker.core import rulesdiff


class Swappable:
    """A source whose text the test replaces; each fetch after a swap returns new rules."""

    name = "swappable.yaml"

    def __init__(self, text: str) -> None:
        self.text, self.version = text, 0

    def fetch(self, token: Any) -> tuple[Any, Any]:
        if token == self.version:
            return None, token
        return load_rules(self.text, source=self.name), self.version


def test_a_reload_logs_the_change_summary(rules_text: str) -> None:
    logs: list[tuple[str, dict[str, Any]]] = []
    source = Swappable(rules_text)
    provider = RulesProvider(source, reload_seconds=0, log=lambda event, **f: logs.append((event, f)))
    provider.refresh()
    assert logs[-1][0] == "rules_loaded" and logs[-1][1]["changes"] is None  # the first load compares nothing

    source.text = rules_text.replace("max_bytes: 5 MiB", "max_bytes: 50 MiB").replace(
        "    - http://127.0.0.1:8000\n", "")
    source.version += 1
    provider.refresh()
    event, fields = logs[-1]
    assert event == "rules_loaded"
    assert fields["changes"] == {"added": 0, "removed": 1, "widened": 1, "narrowed": 0, "changed": 0,
                                 "widens": True}
    assert fields["replaced"] != fields["digest"]

    provider.refresh()  # unchanged: nothing is compared or logged again
    assert len(logs) == 2


def test_the_summary_is_not_computed_on_the_request_path(rules_text: str, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = rulesdiff.diff
    monkeypatch.setattr(rulesdiff, "diff", lambda a, b: calls.append(1) or real(a, b))
    provider = RulesProvider(StaticSource(rules_text), reload_seconds=0, log=lambda *a, **k: None)
    for _ in range(50):
        provider.current()
    assert calls == []


def test_a_failed_comparison_never_stops_a_reload(rules_text: str, monkeypatch: pytest.MonkeyPatch) -> None:
    old = load_rules(rules_text, source="a.yaml")
    new = load_rules(rules_text.replace("max_bytes: 5 MiB", "max_bytes: 1 MiB"), source="b.yaml")
    assert change_summary(old, new) == {**dict.fromkeys(rulesdiff.KINDS, 0), "narrowed": 1, "widens": False}

    def broken(a: Any, b: Any) -> Any:
        raise KeyError("boom")

    monkeypatch.setattr(rulesdiff, "diff", broken)
    assert change_summary(old, new) == {"error": "could not compare the rules: KeyError: 'boom'"}
