"""Counts as CloudWatch metrics, through Embedded Metric Format log lines.

On Lambda, CloudWatch Logs turns a stdout line carrying an ``_aws`` block into metrics, so
counting costs one log line and no API call. What is counted (namespace ``UploadBroker``,
unit Count, one data point per line; ``docs/DEPLOY.md`` has the alarms on them):

- ``Count`` by (client, profile, decision) and by (decision): each allowed or denied decision;
- ``Errors`` by (status_class) and by (status_class, error): each error answer, ``4xx`` or
  ``5xx`` (a 503 that fails closed, a 500), with the body's error code;
- ``RulesReloadFailed`` by (service): each failed attempt to reload the rules (every poll
  while the source stays broken, so an alarm stays raised as long as it is);
- ``StartupFailed`` by (service): the function could not start (it answers 503 to all).

:func:`emf_record` is the pure definition of the first two; :class:`EmfLines` renders it per
audit record (the same JSON, from a cached template) and the audit log writes that line to
stdout together with the audit line, in one write. :func:`count_line` renders the others.
Counting never fails the request it counts.
"""
from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from typing import Any, Mapping

NAMESPACE = "UploadBroker"
DIMENSIONS = ("client", "profile", "decision")
# Per client and profile, plus one roll-up per decision for account-wide alarms.
DIMENSION_SETS = (list(DIMENSIONS), ["decision"])
ERROR_DIMENSIONS = ("status_class", "error")
# Every error answer by class (alarm on 5xx), and by class and error code (which one).
ERROR_DIMENSION_SETS = (["status_class"], list(ERROR_DIMENSIONS))
SERVICE = {"service": "broker"}  # the one dimension of the process-level counts
RULES_RELOAD_FAILED = "RulesReloadFailed"
STARTUP_FAILED = "StartupFailed"
_NONE = "-"  # EMF needs every dimension to have a string value
COUNTED = ("allowed", "denied", "error")
MAX_TEMPLATES = 4096  # distinct (client, profile, decision) triples kept rendered


def emf_record(rec: Mapping[str, Any], *, namespace: str = NAMESPACE) -> dict[str, Any]:
    """The EMF record counting one audit record.

    An allowed or denied decision is a ``Count`` keyed by client, profile and decision; an
    error (``decision: error``) is an ``Errors`` count keyed by status class and error code.
    """
    error = rec.get("decision") == "error"
    out: dict[str, Any] = {
        "_aws": {
            "Timestamp": _millis(rec.get("time")),
            "CloudWatchMetrics": [{
                "Namespace": namespace,
                "Dimensions": [list(d) for d in (ERROR_DIMENSION_SETS if error else DIMENSION_SETS)],
                "Metrics": [{"Name": "Errors" if error else "Count", "Unit": "Count"}],
            }],
        },
    }
    if error:
        out.update(_error_dimensions(rec))
        out["Errors"] = 1
    else:
        out.update(_dimensions(rec))
        out["Count"] = 1
    return out


def _dimensions(rec: Mapping[str, Any]) -> dict[str, str]:
    out = {}
    for name in DIMENSIONS:
        value = rec.get(name)
        out[name] = str(value)[:250] if value not in (None, "") else _NONE
    return out


def _error_dimensions(rec: Mapping[str, Any]) -> dict[str, str]:
    status = rec.get("status")
    code = rec.get("error")
    return {"status_class": "5xx" if not isinstance(status, int) or status >= 500 else "4xx",
            "error": str(code)[:250] if code not in (None, "") else _NONE}


def _millis(when: Any) -> int:
    try:
        return int(datetime.fromisoformat(str(when).replace("Z", "+00:00")).timestamp() * 1000)
    except ValueError:
        return 0


def count_line(metric: str, *, dimensions: Mapping[str, str] = SERVICE, millis: int | None = None,
               namespace: str = NAMESPACE) -> str:
    """One EMF line (with newline) counting one ``metric`` by ``dimensions`` (one dimension set)."""
    record: dict[str, Any] = {
        "_aws": {
            "Timestamp": int(time.time() * 1000) if millis is None else millis,
            "CloudWatchMetrics": [{"Namespace": namespace, "Dimensions": [list(dimensions)],
                                   "Metrics": [{"Name": metric, "Unit": "Count"}]}],
        },
        **dimensions,
        metric: 1,
    }
    return json.dumps(record, separators=(",", ":")) + "\n"


def error_line(status: int, error: str, *, namespace: str = NAMESPACE) -> str:
    """One EMF line (with newline) counting an error answer sent without an audit record."""
    record = emf_record({"decision": "error", "status": status, "error": error}, namespace=namespace)
    record["_aws"]["Timestamp"] = int(time.time() * 1000)
    return json.dumps(record, separators=(",", ":")) + "\n"


def install(broker: Any, *, namespace: str = NAMESPACE) -> None:
    """Count a broker's decisions and errors, and its rules provider's failed reloads, as EMF lines.

    The lines go to the audit log's stream (stdout on Lambda), never to its file.
    """
    broker.metrics = EmfLines(namespace=namespace)
    audit_log = broker.audit_log

    def reload_failed(_exc: BaseException) -> None:
        audit_log.write_stream(count_line(RULES_RELOAD_FAILED, namespace=namespace))

    broker.rules.on_reload_failed = reload_failed


class EmfLines:
    """``lines(rec)``: the EMF line (with newline) counting an allowed, denied or error record, else ''.

    Exactly ``json.dumps(emf_record(rec), separators=(",", ":"))``, but only the timestamp is
    worked out per decision: the rest is rendered once per (client, profile, decision), or
    per (status, error) for an error.
    """

    def __init__(self, *, namespace: str = NAMESPACE) -> None:
        self._namespace = namespace
        self._templates: dict[tuple[Any, Any, Any], tuple[str, str]] = {}
        self._second: tuple[str, int] = ("", 0)  # the last audit time's seconds, as epoch ms

    def __call__(self, rec: Mapping[str, Any]) -> str:
        try:
            decision = rec.get("decision")
            if decision not in COUNTED:
                return ""
            head, tail = self._template(rec, decision)
            return f"{head}{self._fast_millis(rec.get('time'))}{tail}\n"
        except (TypeError, ValueError):  # a lost data point, never a failed request
            return ""

    def _template(self, rec: Mapping[str, Any], decision: Any) -> tuple[str, str]:
        triple = (rec.get("client"), rec.get("profile"), decision) if decision != "error" else \
            (rec.get("status"), rec.get("error"), decision)
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
