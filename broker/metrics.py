"""Allowed/denied counts as CloudWatch metrics, through Embedded Metric Format log lines.

On Lambda, CloudWatch Logs turns a stdout line carrying an ``_aws`` block into metrics, so
counting costs one log line and no API call. :func:`emf_record` is pure; :class:`EmfWriter`
writes one line per decision and never fails the request it counts.
"""
from __future__ import annotations

import json
import sys
from datetime import datetime
from typing import IO, Any, Mapping

NAMESPACE = "UploadBroker"
DIMENSIONS = ("client", "profile", "decision")
# Per client and profile, plus one roll-up per decision for account-wide alarms.
DIMENSION_SETS = (list(DIMENSIONS), ["decision"])
_NONE = "-"  # EMF needs every dimension to have a string value


def emf_record(rec: Mapping[str, Any], *, namespace: str = NAMESPACE) -> dict[str, Any]:
    """The EMF record counting one audit record, keyed by client, profile and decision."""
    when = rec.get("time")
    try:
        millis = int(datetime.fromisoformat(str(when).replace("Z", "+00:00")).timestamp() * 1000)
    except ValueError:
        millis = 0
    out: dict[str, Any] = {
        "_aws": {
            "Timestamp": millis,
            "CloudWatchMetrics": [{
                "Namespace": namespace,
                "Dimensions": [list(d) for d in DIMENSION_SETS],
                "Metrics": [{"Name": "Count", "Unit": "Count"}],
            }],
        },
    }
    for name in DIMENSIONS:
        value = rec.get(name)
        out[name] = str(value)[:250] if value not in (None, "") else _NONE
    out["Count"] = 1
    return out


class EmfWriter:
    """Writes one EMF line per audit record to a stream (stdout on Lambda)."""

    def __init__(self, stream: IO[str] | None = None, *, namespace: str = NAMESPACE) -> None:
        self._stream = stream if stream is not None else sys.stdout
        self._namespace = namespace

    def __call__(self, rec: Mapping[str, Any]) -> None:
        """Count ``rec``; a failed write loses a data point, never the request."""
        try:
            line = json.dumps(emf_record(rec, namespace=self._namespace), separators=(",", ":"))
            self._stream.write(line + "\n")
            self._stream.flush()
        except (OSError, ValueError, TypeError):
            pass
