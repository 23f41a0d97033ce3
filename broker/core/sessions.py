"""Session tokens: an app backend's short-lived permission for one end user's browser. Pure.

``POST /sessions`` (:mod:`broker.protocols.sessions`) mints one; the browser presents it as
``Authorization: Bearer <token>`` or in the path (``/s/<token>/...``). A token is::

    v1.<base64url payload>.<base64url HMAC-SHA256>

over a compact JSON payload ``{c: client, u: user, p: profiles, e: expires (Unix s),
n: max_files, b: max_bytes, i: session id}``. No server state: any instance holding the
secret verifies it. Rotation: tokens are signed with the current secret only; verification
also tries the previous one (``BROKER_SESSION_SECRET_PREVIOUS``). Only the canonical
base64url spelling is accepted (no padding, no other alphabet), so one session has one token.
Time and the random id are passed in.
"""
from __future__ import annotations

import binascii
import hashlib
import hmac
import json
import re
from typing import Any, Sequence

from broker.core.grants import b64url, check_secret, from_b64url, json_int, json_str
from broker.models import Session
from broker.timefmt import from_unix, iso_z

PREFIX = "v1."
#: Longest token accepted (64 profile names of 64 characters and a 128-character user still fit).
MAX_TOKEN_CHARS = 8192
MAX_PROFILES = 64
MAX_TTL = 86400
#: The end user a session may name: what the broker can put in a key and an audit line unchanged.
USER_PATTERN = re.compile(r"[A-Za-z0-9._@-]{1,128}")
_ID = re.compile(r"[0-9a-f]{32}")
_DOMAIN = b"upload-broker/session/v1\n"  # never confused with a grant token's MAC


class SessionError(ValueError):
    """A session token is malformed, forged, or expired; the message says which (never the token)."""


def _mac(secret: bytes, signed: str) -> bytes:
    return hmac.new(secret, _DOMAIN + signed.encode("ascii"), hashlib.sha256).digest()


def payload(session: Session) -> dict[str, Any]:
    """The compact JSON payload a token carries."""
    return {"c": session.client, "u": session.user, "p": list(session.profiles), "e": session.expires_at,
            "n": session.max_files, "b": session.max_bytes, "i": session.id}


def make_token(session: Session, secret: bytes) -> str:
    """``v1.<payload>.<mac>``: readable by anyone, forgeable by no one without the secret."""
    problem = session_problem(session)
    if problem is not None:
        raise ValueError(problem)
    body = b64url(json.dumps(payload(session), separators=(",", ":"), sort_keys=True).encode("ascii"))
    signed = PREFIX + body
    return f"{signed}.{b64url(_mac(check_secret(secret), signed))}"


def looks_like_token(text: str) -> bool:
    """Whether a bearer credential is meant as a session token (an authorizer's JWT is not)."""
    return text.startswith(PREFIX)


def verify_token(token: str, secrets: Sequence[bytes], *, now: int) -> Session:
    """The session a token carries, if one of ``secrets`` MACed it and it has not expired.

    ``secrets``: the current secret first, then any previous one (rotation). ``now``: Unix
    seconds. Raises ``SessionError`` (the caller answers 401).
    """
    if not token.startswith(PREFIX) or len(token) > MAX_TOKEN_CHARS or token.count(".") != 2:
        raise SessionError("the session token is malformed")
    signed, _, mac = token.rpartition(".")
    try:
        given = from_b64url(mac)
        raw = from_b64url(signed[len(PREFIX):])
    except (binascii.Error, ValueError):
        raise SessionError("the session token is malformed") from None
    if not any(hmac.compare_digest(given, _mac(secret, signed)) for secret in secrets):
        raise SessionError("the session token was not issued by this broker (or was altered)")
    try:
        session = _session(json.loads(raw))
    except (KeyError, TypeError, ValueError):
        raise SessionError("the session token is malformed") from None
    problem = session_problem(session)
    if problem is not None:
        raise SessionError(f"the session token is malformed: {problem}")
    if now >= session.expires_at:
        raise SessionError(f"the session token expired at {iso_z(from_unix(session.expires_at))}; "
                           "ask the app for a new session")
    return session


def _session(data: Any) -> Session:
    if not isinstance(data, dict) or set(data) != {"c", "u", "p", "e", "n", "b", "i"}:
        raise ValueError("unexpected fields")
    profiles = data["p"]
    if not isinstance(profiles, list):
        raise TypeError("profiles")
    return Session(id=json_str(data["i"]), client=json_str(data["c"]), expires_at=json_int(data["e"]),
                   user=None if data["u"] is None else json_str(data["u"]),
                   profiles=tuple(json_str(p) for p in profiles),
                   max_files=None if data["n"] is None else json_int(data["n"]),
                   max_bytes=None if data["b"] is None else json_int(data["b"]))


def session_problem(session: Session) -> str | None:
    """What makes a session unfit for a token (None: fit). Bounds every field a token can carry."""
    if not _ID.fullmatch(session.id):
        return "the session id must be 32 lower-case hex digits"
    if not 1 <= len(session.client) <= 128:
        return "the client id must be 1-128 characters"
    if session.user is not None and not USER_PATTERN.fullmatch(session.user):
        return "user must be 1-128 characters of A-Z a-z 0-9 . _ @ -"
    if not 1 <= len(session.profiles) <= MAX_PROFILES or any(not 1 <= len(p) <= 128 for p in session.profiles):
        return f"a session names 1-{MAX_PROFILES} profiles, each 1-128 characters"
    for name, value in (("max_files", session.max_files), ("max_bytes", session.max_bytes)):
        if value is not None and value < 1:
            return f"{name} must be at least 1"
    if session.expires_at < 0:
        return "expires_at must not be negative"
    return None
