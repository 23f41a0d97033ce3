"""Rules reload: a changed file is picked up; a broken one keeps the last good rules."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from broker.errors import RulesUnavailable
from broker.config.sources import FileSource, RulesProvider

ROOT = Path(__file__).resolve().parents[2]
GOOD = (ROOT / "tests/rules/valid/minimal.yaml").read_text()


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def provider_for(path: Path, clock: Clock, logs: list[Any]) -> RulesProvider:
    return RulesProvider(FileSource(str(path)), reload_seconds=5, clock=clock,
                         log=lambda event, **f: logs.append((event, f)))


def touch_with(path: Path, text: str, bump: int) -> None:
    path.write_text(text)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + bump * 1_000_000_000))


def test_reload_on_change_and_keep_last_good(tmp_path: Path) -> None:
    path, clock, logs = tmp_path / "rules.yaml", Clock(), []
    path.write_text(GOOD)
    provider = provider_for(path, clock, logs)
    first = provider.current()
    assert first.clients["acme"].rules["a"].max_bytes == 10

    touch_with(path, GOOD.replace("max_bytes: 10", "max_bytes: 20"), 1)
    assert provider.current() is first  # not re-checked before reload_seconds
    clock.t = 6
    second = provider.current()
    assert second.clients["acme"].rules["a"].max_bytes == 20

    touch_with(path, "version: 1\nclients: {", 2)
    clock.t = 12
    assert provider.current() is second  # broken edit: last good rules stay in force
    assert logs[-1][0] == "rules_reload_failed" and "not valid YAML" in logs[-1][1]["error"]
    assert provider.last_error is not None

    path.unlink()
    clock.t = 18
    assert provider.current() is second  # even when the file disappears


def test_never_good_fails_closed(tmp_path: Path) -> None:
    path, clock, logs = tmp_path / "rules.yaml", Clock(), []
    path.write_text("version: 2\n")
    provider = provider_for(path, clock, logs)
    with pytest.raises(RulesUnavailable):
        provider.current()
    touch_with(path, GOOD, 1)
    clock.t = 6
    assert provider.current().clients  # recovers once the file is fixed


def test_missing_file_fails_closed(tmp_path: Path) -> None:
    provider = provider_for(tmp_path / "nope.yaml", Clock(), [])
    with pytest.raises(RulesUnavailable):
        provider.current()
