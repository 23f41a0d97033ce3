"""The audit log: one JSON line per decision, built by a pure function, written at the edge.

Records hold identifiers only, never a signature, session token, API key or raw event
(the shape is ``schemas/audit.schema.json``). If the audit file cannot be written the broker
refuses to issue (fail closed): :meth:`AuditLog.emit` raises ``AuditUnavailable``.
"""
from __future__ import annotations

import os
import sys
import threading
from datetime import datetime
from typing import IO, TYPE_CHECKING, Any

from broker.core.rulesdiff import FINGERPRINT_DIGITS
from broker.errors import AuditUnavailable, BrokerError
from broker.fast.jsontext import ascii_line
from broker.models import Decision, RequestContext, Session, SignedPost, UploadRequest
from broker.timefmt import from_unix, iso_z

if TYPE_CHECKING:  # the verifier's values; a broker that only signs never loads them
    from broker.core.verify import Verdict

# Fields the audit log must never see the value of.
SECRET_CONDITION_FIELDS = frozenset({"x-amz-security-token", "x-amz-credential"})
#: Hex characters of an API key's stored SHA-256 that name it in audit lines (``key_fingerprint``):
#: the same as ``broker diff`` shows (find the key in rules.yaml by them); never the key.
KEY_FINGERPRINT_CHARS = FINGERPRINT_DIGITS
#: At most this much of a request's Origin header is kept.
MAX_ORIGIN = 256


def public_conditions(conditions: tuple[Any, ...] | list[Any]) -> list[Any]:
    """Policy conditions safe to log: without the credential scope or session token."""
    out = []
    for cond in conditions:
        if isinstance(cond, dict):
            for name in cond:
                if name.lower() in SECRET_CONDITION_FIELDS:
                    break
            else:
                out.append(cond)
        else:
            out.append(cond)
    return out


def record(
    *,
    now: datetime,
    context: RequestContext,
    decision: Decision | None = None,
    request: UploadRequest | None = None,
    signed: SignedPost | None = None,
    error: BrokerError | None = None,
    client: str | None = None,
    event: str = "upload",
) -> dict[str, Any]:
    """The audit record (a plain dict) for one decision or error, without a member that is None. Pure.

    Built member by member, skipping what is None (every warm request writes one: measured a
    fifth cheaper than a dict of every field filtered afterwards); ``tests/test_audit.py``
    holds it equal to that plain definition, member for member and in order.
    """
    rec: dict[str, Any] = {"time": iso_z(now, millis=True), "event": event, "request_id": context.request_id,
                           "protocol": context.protocol, "transport": context.transport}
    if context.source_ip is not None:
        rec["source_ip"] = context.source_ip
    if context.user_agent:
        rec["user_agent"] = context.user_agent[:256]
    if decision is not None:
        if decision.client is not None:
            rec["client"] = decision.client
        if decision.profile is not None:
            rec["profile"] = decision.profile
    elif client is not None:
        rec["client"] = client
    if context.session is not None:
        rec["session"] = context.session  # the session's id: never its token
    if context.user is not None:
        rec["user"] = context.user
    if request is not None:
        rec["content_type"] = request.content_type[:256]
        if request.size is not None:
            rec["size"] = request.size
    if decision is not None and decision.allowed and decision.grant is not None:
        grant = decision.grant
        rec["decision"] = "allowed"
        rec["status"] = 200
        rec["bucket"] = grant.bucket
        rec["key"] = grant.key
        rec["grant_id"] = grant.grant_id
        rec["content_type"] = grant.content_type
        rec["size_range"] = [grant.min_bytes, grant.max_bytes]
        if signed is not None:
            rec["expires_at"] = iso_z(signed.expires_at, millis=True)
            rec["conditions"] = public_conditions(signed.conditions)
    elif decision is not None:
        _put(rec, decision="denied", status=decision.status, check=decision.check.value
             if decision.check else None, reason=decision.reason,
             expected=decision.expected, actual=decision.actual, retry_after=decision.retry_after)
    elif error is not None:
        _put(rec, decision="error", status=error.status, error=error.code,
             reason=error.message[:500], path=error.details.get("path"), check=error.details.get("check"))
    if context.fields:  # origin, lambda_request_id, principal, user, key_fingerprint, rules: never None
        rec.update(context.fields)
    return rec


def _put(rec: dict[str, Any], **fields: Any) -> None:
    for name, value in fields.items():
        if value is not None:
            rec[name] = value


def session_record(*, now: datetime, context: RequestContext, client: str, session: Session | None = None,
                   decision: Decision | None = None, user: str | None = None) -> dict[str, Any]:
    """The audit record of one ``POST /sessions``: the session issued (never its token), or the denial. Pure."""
    rec = record(now=now, context=context, decision=decision, client=client, event="session")
    if session is not None:
        rec.update(decision="allowed", status=200, session=session.id, user=session.user,
                   profiles=list(session.profiles), expires_at=iso_z(from_unix(session.expires_at), millis=True),
                   max_files=session.max_files, max_bytes=session.max_bytes)
    elif user is not None:
        rec["user"] = user
    return {k: v for k, v in rec.items() if v is not None}


def verification_record(*, now: datetime, verdict: Verdict, action: str, source: str,
                        quarantine_key: str | None = None, request_id: str | None = None,
                        ledger: str | None = None, grant_id: str | None = None) -> dict[str, Any]:
    """The audit record (a plain dict) of one verification: what was checked, what failed, what was done. Pure."""
    obj, rule = verdict.obj, verdict.rule
    rec: dict[str, Any] = {
        "time": iso_z(now, millis=True),
        "event": "verification",
        "request_id": request_id,
        "verdict": "verified" if verdict.verified else "rejected",
        "source": source,
        "client": rule.client if rule else None,
        "profile": rule.name if rule else None,
        "bucket": obj.bucket,
        "key": obj.key[:1024],
        "etag": obj.etag[:80] or None,
        "size": obj.size,
        "content_type": (obj.content_type or "")[:256] or None,
        "sniffed": verdict.sniffed,
        "action": action,
        "quarantine_key": quarantine_key,
        "ledger": ledger,  # with a ledger: settled | replayed | reused | no_grant
        "grant_id": grant_id,
    }
    if verdict.failures:
        rec["check"] = verdict.failures[0].check.value
        rec["reason"] = verdict.failures[0].reason[:500]
        rec["checks"] = [{"check": f.check.value, "reason": f.reason[:500], "expected": f.expected,
                          "actual": f.actual} for f in verdict.failures[:10]]
    return {k: v for k, v in rec.items() if v is not None}


class AuditLog:
    """Writes audit records as JSON lines to a stream (stdout) and optionally a file."""

    def __init__(self, *, stream: IO[str] | None = sys.stdout, path: str | None = None) -> None:
        self._stream = stream
        self._path = path
        self._lock = threading.Lock()
        self._fd: int | None = None
        if path:
            self._open()

    def _open(self) -> None:
        try:
            self._fd = os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)  # type: ignore[arg-type]
        except OSError as exc:
            raise AuditUnavailable(f"cannot open the audit log {self._path}: {exc.strerror}") from None

    def emit(self, rec: dict[str, Any], *, also: str = "") -> None:
        """Write one record as one line; raises ``AuditUnavailable`` if the file write fails.

        ``also``: whole lines (metrics) written to the stream right after the record, in the
        same write; never to the audit file.
        """
        line = ascii_line(rec) + "\n"  # ASCII: no U+2028 in a line can fake the next one
        with self._lock:
            if self._path:
                self._write_file(line.encode("utf-8"))
            if self._stream is not None:
                try:
                    self._stream.write(line + also if also else line)
                    self._stream.flush()
                except (OSError, ValueError):
                    pass  # the file (or, on Lambda, CloudWatch) is the record of truth

    def write_stream(self, lines: str) -> None:
        """Write whole lines (metrics) to the stream only: never to the audit file, never raising."""
        if self._stream is None or not lines:
            return
        with self._lock:
            try:
                self._stream.write(lines)
                self._stream.flush()
            except (OSError, ValueError):
                pass

    def _write_file(self, data: bytes) -> None:
        try:
            if self._fd is None:
                self._open()
            # One write() on an O_APPEND descriptor: lines from threads never interleave.
            written = os.write(self._fd, data)  # type: ignore[arg-type]
            if written != len(data):
                raise OSError(0, "short write")
        except OSError as exc:
            self.close()
            raise AuditUnavailable(
                f"cannot write the audit log {self._path}: {exc.strerror or exc}") from None

    def close(self) -> None:
        """Close the audit file (it is reopened on the next write)."""
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass
            self._fd = None
