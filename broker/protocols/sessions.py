"""``POST /sessions``: an app backend mints a short-lived session token for one end user's browser.

The backend authenticates as its client (API key or authorizer, as for ``POST /uploads``)
and asks for a session: which of its profiles, for which user, how long, how many files and
how large each may be. The browser then presents the token (``Authorization: Bearer`` or
``/s/<token>/`` in front of any route, see :mod:`broker.core.sessions`) and never holds the
API key. Every session issued or refused is audited (event ``session``), by its id, never
its token.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from broker import audit
from broker.config import schemas
from broker.core import sessions
from broker.core.sizes import parse_size
from broker.errors import InvalidRequest
from broker.models import Check, Decision, Session
from broker.protocols.native import _refuse, denial_body
from broker.timefmt import from_unix, iso_z
from broker.web import HttpResponse

if TYPE_CHECKING:
    from broker.app import Broker, Call

PROTOCOL = "sessions"
DEFAULT_TTL = 900  # seconds, when a request names no ttl


def handlers(broker: "Broker") -> dict[tuple[str, str], Any]:
    """The route this module serves (loaded on first use, see :mod:`broker.protocols`)."""
    return {("POST", "/sessions"): create_session}


def parse_session_request(body: Any) -> dict[str, Any]:
    """Validate a ``POST /sessions`` body against its schema; 400 names every bad field."""
    validator = schemas.validator("session-request")
    if not validator.accepts(body):
        _refuse(validator, body)
    return body


def create_session(call: "Call") -> HttpResponse:
    """Issue a session token for the calling client, or refuse (audited either way)."""
    ruleset = call.ruleset()
    client = call.client(ruleset)
    body = parse_session_request(call.request.json(call.broker.max_body_bytes) if call.request.body else {})
    user = body.get("user")
    if call.session is not None:
        return _deny(call, Decision(False, client.id, None, check=Check.SESSION_NOT_ALLOWED,
                                    reason="a session token cannot create sessions: the app backend calls "
                                           "POST /sessions with its API key", expected="api key", actual="session"),
                     user)
    if body.get("max_files") is not None and call.broker.ledger is None:
        raise InvalidRequest("max_files needs the grant ledger to count a session's files: set BROKER_LEDGER "
                             "(sqlite:///var/ledger.db on one machine, dynamodb://table on Lambda), or leave "
                             "max_files out", path="$.max_files")
    profiles = tuple(body.get("profiles") or sorted(client.rules))
    unknown = [p for p in profiles if p not in client.rules]
    if unknown:
        return _deny(call, Decision(False, client.id, unknown[0], check=Check.UNKNOWN_PROFILE,
                                    reason=f"client '{client.id}' has no profile '{unknown[0]}'",
                                    expected=sorted(client.rules), actual=unknown), user)
    max_bytes = body.get("max_bytes")
    if max_bytes is not None:
        max_bytes = parse_size(max_bytes)
        if max_bytes < 1:
            raise InvalidRequest("max_bytes must be at least 1 byte", path="$.max_bytes")
    ttl = min(int(body.get("ttl", DEFAULT_TTL)), ruleset.session_max_ttl)
    session = Session(id=call.broker.new_id(), client=client.id, user=user, profiles=profiles,
                      expires_at=int(call.now.timestamp()) + ttl, max_files=body.get("max_files"),
                      max_bytes=max_bytes)
    secret = call.broker.session_secrets[0]
    token = sessions.make_token(session, secret)
    call.broker.emit(audit.session_record(now=call.now, context=call.context, client=client.id, session=session))
    return HttpResponse.json(200, {
        "token": token,
        "expires_at": iso_z(from_unix(session.expires_at)),
        "client": client.id,
        "user": session.user,
        "profiles": list(session.profiles),
        "max_files": session.max_files,
        "max_bytes": session.max_bytes,
        "path_prefix": f"/s/{token}",
    })


def _deny(call: "Call", decision: Decision, user: str | None) -> HttpResponse:
    call.broker.emit(audit.session_record(now=call.now, context=call.context, client=decision.client,
                                          decision=decision, user=user))
    return HttpResponse.json(decision.status, denial_body(decision))
