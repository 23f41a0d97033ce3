"""``GET /limits``: each profile the caller may use, with its limits, for a page to check files early.

Authenticated like every route (a session token as ``Authorization: Bearer`` or ``/s/<token>/``,
or an API key / authorizer); a session sees only its own profiles and its ``max_bytes``. Each
profile carries ``restrictions`` in the shape Uppy's ``restrictions`` option takes as it is
(see :mod:`broker.core.limits`). Read-only and not audited: it says what a denial would say.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from broker.core.limits import caller_limits
from broker.timefmt import from_unix, iso_z
from broker.web import HttpResponse

if TYPE_CHECKING:
    from broker.app import Broker, Call

PROTOCOL = "limits"


def handlers(broker: "Broker") -> dict[tuple[str, str], Any]:
    """The route this module serves (loaded on first use, see :mod:`broker.protocols`)."""
    return {("GET", "/limits"): limits}


def limits(call: "Call") -> HttpResponse:
    """The calling client's (or session's) profiles and their limits."""
    ruleset = call.ruleset()
    client = call.client(ruleset)
    session = call.session
    expires = iso_z(from_unix(session.expires_at)) if session is not None else None
    body = caller_limits(ruleset, client, session, user=call.user(), session_expires_at=expires)
    return HttpResponse.json(200, body, {"Cache-Control": "private, no-store"})
