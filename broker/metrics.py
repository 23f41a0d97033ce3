"""Allowed/denied counts as CloudWatch metrics, through Embedded Metric Format log lines.

On Lambda, CloudWatch Logs turns a stdout line carrying an ``_aws`` block into metrics, so
counting costs one log line and no API call. :func:`emf_record` is the pure definition;
:class:`EmfLines` renders it per decision (the same JSON, from a cached template) and the
audit log writes that line to stdout together with the decision's audit line, in one write.
Counting never fails the request it counts.
"""
from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any, Mapping

NAMESPACE = "UploadBroker"
DIMENSIONS = ("client", "profile", "decision")
# Per client and profile, plus one roll-up per decision for account-wide alarms.
DIMENSION_SETS = (list(DIMENSIONS), ["decision"])
_NONE = "-"  # EMF needs every dimension to have a string value
COUNTED = ("allowed", "denied")
MAX_TEMPLATES = 4096  # distinct (client, profile, decision) triples kept rendered


def emf_record(rec: Mapping[str, Any], *, namespace: str = NAMESPACE) -> dict[str, Any]:
    """The EMF record counting one audit record, keyed by client, profile and decision."""
    out: dict[str, Any] = {
        "_aws": {
            "Timestamp": _millis(rec.get("time")),
            "CloudWatchMetrics": [{
                "Namespace": namespace,
                "Dimensions": [list(d) for d in DIMENSION_SETS],
                "Metrics": [{"Name": "Count", "Unit": "Count"}],
            }],
        },
    }
    out.update(_dimensions(rec))
    out["Count"] = 1
    return out


def _dimensions(rec: Mapping[str, Any]) -> dict[str, str]:
    out = {}
    for name in DIMENSIONS:
        value = rec.get(name)
        out[name] = str(value)[:250] if value not in (None, "") else _NONE
    return out


def _millis(when: Any) -> int:
    try:
        return int(datetime.fromisoformat(str(when).replace("Z", "+00:00")).timestamp() * 1000)
    except ValueError:
        return 0


class EmfLines:
    """``lines(rec)``: the EMF line (with newline) counting an allowed/denied record, else ''.

    Exactly ``json.dumps(emf_record(rec), separators=(",", ":"))``, but only the timestamp is
    worked out per decision: the rest is rendered once per (client, profile, decision).
    """

    def __init__(self, *, namespace: str = NAMESPACE) -> None:
        self._namespace = namespace
        self._templates: dict[tuple[Any, Any, Any], tuple[str, str]] = {}
        self._second: tuple[str, int] = ("", 0)  # the last audit time's seconds, as epoch ms

    def __call__(self, rec: Mapping[str, Any]) -> str:
        try:
            if rec.get("decision") not in COUNTED:
                return ""
            head, tail = self._template(rec)
            return f"{head}{self._fast_millis(rec.get('time'))}{tail}\n"
        except (TypeError, ValueError):  # a lost data point, never a failed request
            return ""

    def _template(self, rec: Mapping[str, Any]) -> tuple[str, str]:
        triple = (rec.get("client"), rec.get("profile"), rec.get("decision"))
        found = self._templates.get(triple)
        if found is None:
            record = emf_record(rec, namespace=self._namespace)
            record["_aws"]["Timestamp"] = -1  # no real timestamp: marks where the real one goes
            head, _, tail = json.dumps(record, separators=(",", ":")).partition('"Timestamp":-1')
            found = (head + '"Timestamp":', tail)
            if len(self._templates) < MAX_TEMPLATES:
                self._templates[triple] = found
        return found

    def _fast_millis(self, when: Any) -> int:
        """``_millis`` for the broker's own ``2026-11-28T14:49:31.123Z``, a second's parse cached."""
        if isinstance(when, str) and len(when) == 24 and when[19] == "." and when[23] == "Z" \
                and when[20:23].isdigit():
            second, epoch = self._second
            if when[:19] != second:
                try:
                    parsed = datetime.strptime(when[:19], "%Y-%m-%dT%H:%M:%S")
                except ValueError:
                    return _millis(when)
                epoch = int(parsed.replace(tzinfo=timezone.utc).timestamp()) * 1000
                self._second = (when[:19], epoch)
            return epoch + int(when[20:23])
        return _millis(when)
