"""Operational log lines (not the audit log): one JSON object per line on stderr.

Each line starts with ``time`` (ISO 8601 UTC, milliseconds, as the audit log writes it),
``level`` and ``event``.
"""
from __future__ import annotations

import json
import sys
from datetime import datetime, timezone
from typing import Any

from broker.timefmt import iso_z


def log_event(event: str, **fields: Any) -> None:
    """An operational (non-audit) JSON log line on stderr; ``level`` is error when ``error`` is given."""
    line = {"time": iso_z(datetime.now(timezone.utc), millis=True),
            "level": "error" if "error" in fields else "info", "event": event, **fields}
    try:
        sys.stderr.write(json.dumps(line, default=str) + "\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
