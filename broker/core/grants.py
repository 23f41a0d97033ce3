"""What the broker granted, made checkable later without server state. Pure.

Two things protocols with several round trips need (Fine Uploader's signature endpoint,
Companion's multipart endpoints):

- **Grant tokens.** When the broker decides a Fine Uploader file it returns the key it chose
  plus a token: the decision's inputs (client, profile, bucket, key, filename, type, size,
  metadata) and an expiry, MACed with HMAC-SHA256 under the broker's grant secret. Every later
  signing request for that file carries the token, so the broker can check that the key in a
  policy or canonical request is one it issued to this client, for this file, and not yet
  expired: no registry, so any Lambda instance sharing the secret can verify it.
- **Key patterns.** Every key a rule can produce matches a regular expression built from its
  template (``{uuid}`` is exactly 32 hex digits, ``{client}``/``{profile}`` are literal), so
  ``rules_for_key`` tells which of a client's rules could have issued a key, or that none did.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
from dataclasses import dataclass, field, replace
from datetime import datetime
from functools import lru_cache
from typing import Any, Mapping

from broker.core.keys import PLACEHOLDERS, parse_template, user_slug
from broker.timefmt import from_unix, iso_z
from broker.models import Client, Rule
from broker.models import grant_id_for as grant_id_for  # re-exported: how a grant's id is made

#: The HTTP header a page sends the token back in.
TOKEN_HEADER = "x-upload-grant"
#: Longest token accepted (a 1024-character filename and key still fit).
MAX_TOKEN_CHARS = 8192
_B64URL = re.compile(r"[A-Za-z0-9_-]*")
MIN_SECRET_BYTES = 32
_DOMAIN = b"upload-broker/grant/v1\n"  # MACs for other purposes can never be confused with these


class TokenError(ValueError):
    """A grant token is malformed, forged, or expired; the message says which."""


@dataclass(frozen=True)
class GrantToken:
    """The facts of one decision, as carried in a token."""

    client: str
    profile: str
    bucket: str
    key: str
    filename: str
    content_type: str
    size: int | None
    expires_at: int  # Unix seconds
    metadata: Mapping[str, str] = field(default_factory=dict)

    def _payload(self) -> dict[str, Any]:
        return {"v": 1, "c": self.client, "p": self.profile, "b": self.bucket, "k": self.key,
                "n": self.filename, "t": self.content_type, "s": self.size,
                "m": dict(self.metadata), "x": self.expires_at}


def check_secret(secret: bytes) -> bytes:
    """The secret, if it is long enough to MAC grants with; raises ``ValueError`` otherwise."""
    if len(secret) < MIN_SECRET_BYTES:
        raise ValueError(f"the grant secret must be at least {MIN_SECRET_BYTES} bytes; "
                         f"it is {len(secret)} (make one with: python -c "
                         "\"import secrets; print(secrets.token_urlsafe(48))\")")
    return secret


def b64url(data: bytes) -> str:
    """Unpadded base64url: how grant and session tokens write bytes."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def from_b64url(text: str) -> bytes:
    """Decode unpadded base64url, accepting only the one spelling :func:`b64url` writes (so one token
    has one text); ValueError otherwise."""
    if not _B64URL.fullmatch(text):
        raise ValueError("not base64url")
    data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if b64url(data) != text:
        raise ValueError("not canonical base64url")
    return data


def _mac(secret: bytes, body: str) -> bytes:
    return hmac.new(secret, _DOMAIN + body.encode("ascii"), hashlib.sha256).digest()


def issue_token(grant: GrantToken, secret: bytes) -> str:
    """``<payload>.<mac>``, both base64url: readable by anyone, forgeable by no one without the secret."""
    body = b64url(json.dumps(grant._payload(), separators=(",", ":"), sort_keys=True,
                           ensure_ascii=False).encode("utf-8"))
    return f"{body}.{b64url(_mac(check_secret(secret), body))}"


def verify_token(token: str | None, secret: bytes, *, now: datetime) -> GrantToken:
    """The grant a token carries; raises ``TokenError`` if it is missing, forged or expired."""
    if not token:
        raise TokenError(f"send the grant token from the key response in the {TOKEN_HEADER} header")
    if len(token) > MAX_TOKEN_CHARS or token.count(".") != 1:
        raise TokenError("the grant token is malformed")
    body, mac = token.split(".")
    try:
        given = from_b64url(mac)
    except (binascii.Error, ValueError):
        raise TokenError("the grant token is malformed") from None
    if not body.isascii() or not hmac.compare_digest(given, _mac(secret, body)):
        raise TokenError("the grant token was not issued by this broker (or was altered)")
    try:
        data = json.loads(from_b64url(body))
        grant = GrantToken(
            client=json_str(data["c"]), profile=json_str(data["p"]), bucket=json_str(data["b"]),
            key=json_str(data["k"]), filename=json_str(data["n"]), content_type=json_str(data["t"]),
            size=None if data["s"] is None else json_int(data["s"]), expires_at=json_int(data["x"]),
            metadata={json_str(k): json_str(v) for k, v in dict(data["m"]).items()},
        )
    except (KeyError, TypeError, ValueError, binascii.Error):
        raise TokenError("the grant token is malformed") from None
    if data.get("v") != 1:
        raise TokenError("the grant token has an unknown version")
    if now.timestamp() >= grant.expires_at:
        expired = iso_z(from_unix(grant.expires_at))
        raise TokenError(f"the grant for {grant.key} expired at {expired}; ask for a new key")
    return grant


def json_str(value: Any) -> str:
    """``value`` from a decoded token, if it is a string; TypeError otherwise."""
    if not isinstance(value, str):
        raise TypeError("not a string")
    return value


def json_int(value: Any) -> int:
    """``value`` from a decoded token, if it is an integer (not a bool); TypeError otherwise."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError("not an integer")
    return value


# --------------------------------------------------------------------------- key patterns


@lru_cache(maxsize=1024)
def _key_regex(template: str, client: str, profile: str) -> re.Pattern[str]:
    parts = []
    for literal, name in parse_template(template):
        parts.append(re.escape(literal))
        if name is None:
            continue
        if name == "client":
            parts.append(re.escape(client))
        elif name == "profile":
            parts.append(re.escape(profile))
        else:
            parts.append(PLACEHOLDERS[name].pattern or "")
    return re.compile("".join(parts))


def key_matches(rule: Rule, key: str) -> bool:
    """Whether ``key`` has exactly the shape ``rule``'s template produces for its client."""
    if ".." in key or "//" in key or len(key.encode("utf-8")) > 1024:
        return False
    return _key_regex(rule.key_template, rule.client, rule.name).fullmatch(key) is not None


def key_is_users(rule: Rule, key: str, user: str | None) -> bool:
    """Whether ``key`` has the shape ``rule``'s template produces for ``user`` (a template without
    ``{user}``: for anyone; with it: only for that user, never when no user is known)."""
    if "{user}" not in rule.key_template:
        return key_matches(rule, key)
    if not user:
        return False
    return key_matches(replace(rule, key_template=rule.key_template.replace("{user}", user_slug(user))), key)


def rules_for_key(client: Client, key: str) -> tuple[Rule, ...]:
    """The client's rules whose template could have produced ``key`` (normally one, or none)."""
    return tuple(rule for rule in client.rules.values() if key_matches(rule, key))

