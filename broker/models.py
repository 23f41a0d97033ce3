"""Plain, immutable values that flow between the broker's layers.

Nothing here does I/O: the rules engine consumes and produces only these.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from functools import cached_property
from typing import Any, Mapping


def grant_id_for(bucket: str, key: str) -> str:
    """A grant's id: 32 hex digits of SHA-256 over ``bucket/key``. Keys are server-random and never
    granted twice, so the verifier (and the ledger) find an object's grant from the object alone."""
    return hashlib.sha256(f"{bucket}/{key}".encode("utf-8", "surrogatepass")).hexdigest()[:32]


class Check(str, Enum):
    """The check that denied a request; the value is the wire name."""

    UNKNOWN_PROFILE = "unknown_profile"
    PROFILE_REQUIRED = "profile_required"
    CONTENT_TYPE_NOT_ALLOWED = "content_type_not_allowed"
    EXTENSION_NOT_ALLOWED = "extension_not_allowed"
    EXTENSION_MISMATCH = "extension_mismatch"
    TOO_LARGE = "too_large"
    TOO_SMALL = "too_small"
    METADATA_NOT_ALLOWED = "metadata_not_allowed"
    METADATA_TOO_LARGE = "metadata_too_large"
    MULTIPART_NOT_ALLOWED = "multipart_not_allowed"
    KEY_NOT_GRANTED = "key_not_granted"
    CONDITION_NOT_ALLOWED = "condition_not_allowed"
    QUOTA_EXCEEDED = "quota_exceeded"
    USER_REQUIRED = "user_required"  # the rule's key template has {user}, and no end user is known
    SESSION_PROFILE_NOT_ALLOWED = "session_profile_not_allowed"
    SESSION_NOT_ALLOWED = "session_not_allowed"  # a session token may not mint sessions
    SERVER_ONLY_KEY = "server_only_key"  # a server-only API key sent from a browser (an Origin header)


@dataclass(frozen=True)
class Encryption:
    """Server-side encryption a rule requires: SSE-S3 (``AES256``) or SSE-KMS (``aws:kms``)."""

    mode: str
    kms_key_id: str | None = None


@dataclass(frozen=True)
class Rule:
    """One named upload profile of one client, as validated from ``rules.yaml``."""

    name: str
    client: str
    key_template: str
    bucket: str
    region: str
    min_bytes: int
    max_bytes: int
    content_types: tuple[str, ...]
    expires_in: int
    extensions: tuple[str, ...] = ()
    acl: str | None = None  # a canned ACL for the form; None: no acl field (buckets with ACLs disabled)
    cache_control: str | None = None
    content_disposition: str | None = None
    encryption: Encryption | None = None
    storage_class: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    client_metadata: tuple[str, ...] = ()
    success_action_status: str | None = None
    multipart: bool = False
    on_reject: str = "quarantine"  # what the verifier does with an object that breaks the rule: or "delete"
    path: str = "$"


@dataclass(frozen=True)
class Quota:
    """How much one client (or one of its end users) may upload: grants per UTC hour, bytes per UTC day."""

    uploads_per_hour: int | None = None
    bytes_per_day: int | None = None


@dataclass(frozen=True)
class Client:
    """A caller the broker recognises, and the upload rules it may use."""

    id: str
    rules: Mapping[str, Rule]
    api_key_sha256: tuple[str, ...] = ()
    principals: tuple[str, ...] = ()
    default_profile: str | None = None
    path: str = "$"
    quota: Quota | None = None  # the client's own quota (needs a ledger)
    quota_per_user: Quota | None = None  # each end user's, when the user is known
    callback_url: str | None = None  # where verdicts are POSTed, signed with the secret in callback_secret_env
    callback_secret_env: str | None = None
    server_only: bool = False  # its API keys are refused from browsers (requests with an Origin header)


@dataclass(frozen=True)
class RuleSet:
    """Everything loaded from one rules file, with O(1) lookups by credential."""

    version: int
    bucket: str
    region: str
    max_expires_in: int
    cors_origins: tuple[str, ...]
    clients: Mapping[str, Client]
    by_api_key: Mapping[str, str]
    by_principal: Mapping[str, str]
    source: str = "<memory>"
    digest: str = ""
    quarantine_prefix: str = "quarantine/"  # where the verifier moves rejected objects, in their bucket
    session_max_ttl: int = 3600  # the longest session POST /sessions issues, in seconds

    def buckets(self) -> set[str]:
        """Every bucket any rule can write to."""
        return {r.bucket for c in self.clients.values() for r in c.rules.values()}


@dataclass(frozen=True)
class Session:
    """A short-lived upload session an app backend minted for one end user (carried in a signed token)."""

    id: str  # 32 hex digits, server-random: what audit lines name (never the token)
    client: str
    expires_at: int  # Unix seconds
    user: str | None = None
    profiles: tuple[str, ...] = ()
    max_files: int | None = None  # counted by the ledger (scope session:<id>)
    max_bytes: int | None = None  # the largest file the session may upload


@dataclass(frozen=True)
class Credentials:
    """What the edge found about the caller; the raw API key never leaves the edge."""

    api_key_sha256: str | None = None
    principals: tuple[str, ...] = ()


@dataclass(frozen=True)
class UploadRequest:
    """A client's request for permission to upload one file."""

    filename: str
    content_type: str
    size: int | None = None
    profile: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    sha256: str | None = None  # the file's declared SHA-256 (hex or base64), bound in the form


@dataclass(frozen=True)
class RequestContext:
    """Facts about the HTTP request kept for the audit log (identifiers only)."""

    request_id: str
    source_ip: str | None = None
    user_agent: str | None = None
    protocol: str = "native"
    transport: str = "http"
    session: str | None = None  # the session id, when the call presented a session token
    user: str | None = None  # that session's end user
    # More audit fields, filled in as the call learns them (broker.audit.record adds them as
    # they are): origin, lambda_request_id, then rules (Call.ruleset), principal, user, key_fingerprint.
    # One dict per call, written only by the call's own thread, so no new context per step.
    fields: dict[str, str] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class Grant:
    """What the rules allow for one upload: exactly one key, one type, one size range."""

    client: str
    profile: str
    bucket: str
    key: str
    content_type: str
    min_bytes: int
    max_bytes: int
    expires_in: int
    fields: Mapping[str, str]

    @cached_property
    def grant_id(self) -> str:
        """:func:`grant_id_for` its bucket and key (computed once: the ledger, the audit line and
        the response all name it)."""
        return grant_id_for(self.bucket, self.key)

    def conditions(self) -> list[Any]:
        """Policy conditions for every field besides ``bucket``/``key`` (boto3 adds those)."""
        conds: list[Any] = [{name: value} for name, value in self.fields.items()]
        conds.append(["content-length-range", self.min_bytes, self.max_bytes])
        return conds


@dataclass(frozen=True)
class Decision:
    """The outcome of evaluating one request: a grant, or the rule and check that denied it."""

    allowed: bool
    client: str
    profile: str | None = None
    grant: Grant | None = None
    check: Check | None = None
    reason: str | None = None
    expected: Any = None
    actual: Any = None
    retry_after: int | None = None  # seconds, for a quota denial (the Retry-After header)

    @property
    def status(self) -> int:
        """The HTTP status this decision maps to."""
        if self.allowed:
            return 200
        if self.check is Check.QUOTA_EXCEEDED:
            return 429
        return 413 if self.check is Check.TOO_LARGE else 403


@dataclass(frozen=True)
class Part:
    """One uploaded part of a multipart upload, as the store lists it."""

    number: int
    size: int
    etag: str


@dataclass(frozen=True)
class StoredObject:
    """What the store says about one object: what the verifier judges (never the whole body)."""

    bucket: str
    key: str
    size: int
    etag: str
    content_type: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)  # x-amz-meta-*, names lower-case, no prefix
    headers: Mapping[str, str] = field(default_factory=dict)  # Cache-Control, Content-Disposition, ... as stored
    checksum_sha256: str | None = None  # base64, when the store keeps one
    tags: Mapping[str, str] = field(default_factory=dict)
    head: bytes = b""  # the first bytes (a ranged read), for sniffing


@dataclass(frozen=True)
class SignedPost:
    """Presigned POST form: where to post, the form fields, and when it expires."""

    url: str
    fields: Mapping[str, str]
    expires_at: datetime
    conditions: tuple[Any, ...] = ()

