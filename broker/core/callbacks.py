"""Signed completion callbacks, the pure half: the signature, the delivery id, the payload, the URL check.

After the verifier judges an object, the broker POSTs the verdict to the client's backend
(``broker.callbacks`` does the I/O). The body is signed Stripe-style, so a receiver can check
both who sent it and when::

    Broker-Signature: t=1764341371,v1=5f2b...e9      (HMAC-SHA256(secret, b"1764341371." + body))
    Broker-Delivery-Id: 3f1c...a0                     (the same for every retry of one verdict)
    Broker-Event: upload.verified                     (or upload.rejected)

Several ``v1=`` values may stand in one header (one per secret while a secret is rotated);
:func:`verify` accepts the body if any of them matches. Nothing here reads a clock: the
timestamp to sign and the ``now`` to check against come in as arguments.
"""
from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

SIGNATURE_HEADER = "Broker-Signature"
DELIVERY_HEADER = "Broker-Delivery-Id"
EVENT_HEADER = "Broker-Event"
#: The event of each verifier status.
EVENTS = {"verified": "upload.verified", "rejected": "upload.rejected"}
#: How far (seconds) a signature's timestamp may be from the receiver's clock, either way.
DEFAULT_TOLERANCE = 300
MAX_URL_LENGTH = 2048
#: Hosts a callback may reach over plain http:// (local development only).
LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
_SCHEME = "v1"
_TIMESTAMP = re.compile(r"[0-9]{1,15}")
_HEX_SIGNATURE = re.compile(r"[0-9a-f]{64}")
_UNSAFE_IN_URL = re.compile(r"[\x00-\x20\x7f]")  # controls and spaces: no HTTP client sends them as given


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    """The ``Broker-Signature`` value: ``t=<timestamp>,v1=<hex HMAC-SHA256(secret, b"<timestamp>." + body)>``."""
    if not secret:
        raise ValueError("a callback secret must not be empty: an empty key signs nothing anyone could not forge")
    return f"t={int(timestamp)},{_SCHEME}={_mac(secret, int(timestamp), body)}"


def verify(secret: bytes, header: str, body: bytes, *, now: int, tolerance: int = DEFAULT_TOLERANCE) -> bool:
    """Whether ``header`` signs ``body`` with ``secret`` at a time within ``tolerance`` seconds of ``now``.

    For receivers (and tests). Any one of several ``v1=`` values may match (secret rotation);
    the comparison is constant-time. A receiver, in a Flask view (6 lines)::

        body = request.get_data()                              # the raw bytes, never re-encoded JSON
        header = request.headers.get("Broker-Signature", "")
        if not verify(SECRET, header, body, now=int(time.time())):
            abort(400)                                         # forged, altered, or older than 5 minutes
        if first_time(request.headers["Broker-Delivery-Id"]):  # retries repeat the id: act once
            on_upload(json.loads(body))                        # upload.verified or upload.rejected
    """
    if not secret or not isinstance(header, str):
        return False
    timestamps: list[str] = []
    candidates: list[bytes] = []
    for part in header.split(","):
        name, sep, value = part.strip().partition("=")
        if not sep:
            continue
        if name == "t":
            timestamps.append(value)
        elif name == _SCHEME and _HEX_SIGNATURE.fullmatch(value):
            candidates.append(value.encode("ascii"))
    if len(timestamps) != 1 or not _TIMESTAMP.fullmatch(timestamps[0]) or not candidates:
        return False
    timestamp = int(timestamps[0])
    if abs(now - timestamp) > tolerance:  # too old (a replay) or too far ahead (a clock to fix)
        return False
    expected = _mac(secret, timestamp, body).encode("ascii")
    matched = False
    for candidate in candidates:  # no early exit: every candidate costs the same
        matched |= hmac.compare_digest(expected, candidate)
    return matched


def _mac(secret: bytes, timestamp: int, body: bytes) -> str:
    return hmac.new(secret, b"%d." % timestamp + body, hashlib.sha256).hexdigest()


def delivery_id(grant_id: str, etag: str) -> str:
    """32 hex digits of SHA-256 over the grant and the object's ETag: one id per object version's verdict.

    Retries and repeated events for the same object carry the same id, so a receiver drops
    duplicates by it; a form posted again (a new ETag) is a new delivery.
    """
    material = f"broker-callback\x00{grant_id}\x00{_bare_etag(etag)}"
    return hashlib.sha256(material.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def _bare_etag(etag: str) -> str:
    return etag.strip().strip('"')


def payload(*, grant_id: str, client: str, profile: str, bucket: str, key: str, size: int, etag: str,
            content_type: str | None, status: str, checks: Iterable[tuple[str, str]] = (),
            verified_at: str) -> dict[str, Any]:
    """The callback body (a JSON-able dict) for one verdict; ``status`` is ``verified`` or ``rejected``.

    ``checks`` are the failed checks as ``(check, reason)`` pairs (none when verified);
    ``verified_at`` is the verdict's time as ``iso_z`` writes it. The ETag is sent bare (no quotes).
    """
    event = EVENTS.get(status)
    if event is None:
        raise ValueError(f"callback status must be one of {', '.join(sorted(EVENTS))}: got {status!r}")
    return {
        "event": event,
        "delivery_id": delivery_id(grant_id, etag),
        "grant_id": grant_id,
        "client": client,
        "profile": profile,
        "bucket": bucket,
        "key": key,
        "size": size,
        "etag": _bare_etag(etag),
        "content_type": content_type,
        "status": status,
        "checks": [{"check": check, "reason": reason} for check, reason in checks],
        "verified_at": verified_at,
    }


def url_problem(url: str) -> str | None:
    """None if ``url`` may receive callbacks, else what is wrong with it and how to fix it.

    https:// only (http:// for localhost, 127.0.0.1 and [::1], for local development), a host,
    no ``user:pass@`` (the secret signs; a password in a URL leaks into logs), no ``#fragment``
    (never sent), at most :data:`MAX_URL_LENGTH` characters. Messages never repeat the URL,
    whose query may hold a token.
    """
    if not isinstance(url, str) or not url:
        return "callback url must be a non-empty string"
    if len(url) > MAX_URL_LENGTH:
        return f"callback url is {len(url)} characters long; the limit is {MAX_URL_LENGTH}"
    if _UNSAFE_IN_URL.search(url):
        return "callback url must not contain spaces or control characters (percent-encode them)"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        return f"callback url cannot be parsed: {exc}"
    scheme, host = parts.scheme.lower(), parts.hostname or ""
    if scheme not in ("https", "http"):
        return f"callback url must start with https:// (got {scheme + '://' if scheme else 'no scheme'})"
    if "@" in parts.netloc:
        return "callback url must not carry a user or password (user:pass@); the signature proves the sender"
    if not host:
        return "callback url has no host: write it as https://host/path"
    if port == 0:
        return "callback url has port 0: leave the port out or give a real one"
    if scheme == "http" and host not in LOCAL_HOSTS:
        return (f"callback url must use https:// (http:// only for {', '.join(sorted(LOCAL_HOSTS))}, "
                f"in local development): got http://{host}")
    if parts.fragment or "#" in url:
        return "callback url must not have a #fragment: it is never sent to the server"
    return None
