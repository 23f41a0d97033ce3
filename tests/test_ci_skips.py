"""On CI a skipped test fails the run (tests/ci_skips.py); elsewhere a skip stays a skip."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

PROBE = "import pytest\n\ndef test_ok():\n    pass\n\ndef test_skips():\n    pytest.skip('no store here')\n\n" \
        "@pytest.mark.xfail(strict=True)\ndef test_expected():\n    assert False\n"


def _run(tmp_path: Path, ci: str | None) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_probe.py").write_text(PROBE)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci is not None:
        env["CI"] = ci
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "tests.ci_skips",
                           "--rootdir", str(tmp_path), str(tmp_path / "test_probe.py")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


def test_a_skip_fails_the_run_on_ci(tmp_path: Path) -> None:
    done = _run(tmp_path, "true")
    assert done.returncode == pytest.ExitCode.TESTS_FAILED, done.stdout
    assert "1 test(s) skipped" in done.stdout and "test_probe.py::test_skips" in done.stdout


def test_elsewhere_a_skip_is_a_skip(tmp_path: Path) -> None:
    done = _run(tmp_path, None)
    assert done.returncode == 0, done.stdout
    assert "1 skipped" in done.stdout and "1 xfailed" in done.stdout
