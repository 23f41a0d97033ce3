"""What a caller may upload, per profile, in a shape an uploader can take as it is. Pure.

``GET /limits`` (:mod:`broker.protocols.limits`) publishes this so a page can refuse a file
before asking for a form: each profile the caller may use (a session narrows the client's
profiles and its largest file) with the raw values of its rule and ``restrictions`` in
the shape Uppy's ``restrictions`` option takes directly::

    {"maxFileSize": 5242880, "minFileSize": 1, "allowedFileTypes": ["image/png", ".png"]}

Uppy lets a file through when its type *or* its extension is listed, while the broker wants
both; the broker still decides every file, so a file Uppy lets through can be denied (with
the broker's reason). Nothing here is a secret: it is what a denial would say anyway.
"""
from __future__ import annotations

from typing import Any

from broker.core.sizes import human_size
from broker.models import Client, Rule, RuleSet, Session


def uppy_restrictions(rule: Rule, max_bytes: int, max_files: int | None = None) -> dict[str, Any]:
    """Uppy's ``restrictions`` for one rule: sizes, and the types and extensions it may carry.

    ``allowedFileTypes`` lists the rule's content types (``image/*`` works in Uppy as it does
    in the rules) and its extensions; ``*/*`` is left out (Uppy would need nothing), and a
    rule that takes any type with no extension list gives ``null`` (no restriction).
    """
    types = [] if "*/*" in rule.content_types else list(rule.content_types)
    allowed = types + list(rule.extensions)
    out: dict[str, Any] = {"maxFileSize": max_bytes, "minFileSize": rule.min_bytes,
                           "allowedFileTypes": allowed or None}
    if max_files is not None:
        out["maxNumberOfFiles"] = max_files
    return out


def profile_limits(rule: Rule, ruleset: RuleSet, session: Session | None = None) -> dict[str, Any]:
    """One profile's limits: raw values, readable sizes, and Uppy's ``restrictions``."""
    max_bytes = rule.max_bytes
    if session is not None and session.max_bytes is not None:
        max_bytes = min(max_bytes, session.max_bytes)
    max_files = session.max_files if session is not None else None
    return {
        "profile": rule.name,
        "max_bytes": max_bytes,
        "min_bytes": rule.min_bytes,
        "max_size": human_size(max_bytes),
        "min_size": human_size(rule.min_bytes),
        "content_types": list(rule.content_types),
        "extensions": list(rule.extensions),
        "multipart": rule.multipart,
        "needs_user": "{user}" in rule.key_template,
        "form_expires_in": min(rule.expires_in, ruleset.max_expires_in),  # seconds a signed form is valid
        "restrictions": uppy_restrictions(rule, max_bytes, max_files),
    }


def caller_limits(ruleset: RuleSet, client: Client, session: Session | None = None, *,
                  user: str | None = None, session_expires_at: str | None = None) -> dict[str, Any]:
    """Every profile the caller may use, in the client's order (a session: only its profiles).

    ``default_profile`` is the one a request naming none gets (None when it must name one);
    ``session_expires_at`` (ISO 8601) is when the session's token stops working.
    """
    names = [name for name in client.rules if session is None or name in session.profiles]
    default = client.default_profile
    if default is None and len(client.rules) == 1:
        default = next(iter(client.rules))
    return {
        "client": client.id,
        "user": user,
        "session_expires_at": session_expires_at,
        "default_profile": default if default in names else None,
        "profiles": {name: profile_limits(client.rules[name], ruleset, session) for name in names},
    }
