"""Operational log lines (not the audit log): one JSON object per line on stderr."""
from __future__ import annotations

import json
import sys
from typing import Any


def log_event(event: str, **fields: Any) -> None:
    """An operational (non-audit) JSON log line on stderr; ``level`` is error when ``error`` is given."""
    line = {"level": "error" if "error" in fields else "info", "event": event, **fields}
    try:
        sys.stderr.write(json.dumps(line, default=str) + "\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
