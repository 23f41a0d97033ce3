"""The rules engine: who is calling, and may they upload this file? Pure: no I/O, no clock.

``identify`` maps credentials to a client in O(1). ``evaluate`` runs the checks of one rule
in a fixed order through a table and returns a :class:`Decision`; a denial names the rule,
the check, and the expected and actual values. Deny by default: anything not explicitly
allowed by the chosen rule is refused.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
from datetime import datetime
from typing import Callable, Mapping

from broker.core import keys
from broker.core.sizes import human_size
from broker.errors import InvalidRequest, Unauthenticated
from broker.core.mediatypes import extension_agrees, parse_content_type, type_matches
from broker.models import Check, Client, Credentials, Decision, Grant, Rule, RuleSet, Session, UploadRequest

MAX_METADATA_BYTES = 2048  # S3's limit for all user metadata of one object
#: The metadata name a declared SHA-256 is kept under (base64), beside the store's own checksum.
DECLARED_SHA256 = "declared-sha256"


def api_key_hash(api_key: str) -> str:
    """The SHA-256 hex digest stored in ``rules.yaml`` for an API key (the key itself never is)."""
    return hashlib.sha256(api_key.encode("utf-8")).hexdigest()


def identify(ruleset: RuleSet, credentials: Credentials) -> Client:
    """The client these credentials belong to; raises ``Unauthenticated`` if none."""
    if credentials.api_key_sha256 is not None:
        cid = ruleset.by_api_key.get(credentials.api_key_sha256)
        if cid is None:
            raise Unauthenticated("the API key is not recognised")
        return ruleset.clients[cid]
    for principal in credentials.principals:
        cid = ruleset.by_principal.get(principal)
        if cid is not None:
            return ruleset.clients[cid]
    if credentials.principals:
        raise Unauthenticated("the authorizer's identity is not mapped to any client in the rules")
    raise Unauthenticated("send an API key in the x-api-key header (or call through an authorizer)")


def select_rule(client: Client, profile: str | None) -> Rule | Decision:
    """The rule a request asks for, or a denial naming the client's profiles."""
    if profile is None:
        profile = client.default_profile
        if profile is None and len(client.rules) == 1:
            profile = next(iter(client.rules))
        if profile is None:
            return Decision(False, client.id, None, check=Check.PROFILE_REQUIRED,
                            reason=f"client '{client.id}' has several profiles; say which in 'profile'",
                            expected=sorted(client.rules), actual=None)
    rule = client.rules.get(profile)
    if rule is None:
        return Decision(False, client.id, profile, check=Check.UNKNOWN_PROFILE,
                        reason=f"client '{client.id}' has no profile '{profile}'",
                        expected=sorted(client.rules), actual=profile)
    return rule


# Each check returns None (passed) or (check, reason, expected, actual). They run in order.
_Failure = tuple[Check, str, object, object]
_CheckFn = Callable[[Rule, UploadRequest, str, str], "_Failure | None"]


def _content_type(rule: Rule, req: UploadRequest, essence: str, ext: str) -> _Failure | None:
    if type_matches(essence, rule.content_types):
        return None
    return (Check.CONTENT_TYPE_NOT_ALLOWED,
            f"content type {essence} is not allowed for {rule.name}",
            list(rule.content_types), essence)


def _extension(rule: Rule, req: UploadRequest, essence: str, ext: str) -> _Failure | None:
    if not rule.extensions:
        return None
    if ext not in rule.extensions:
        return (Check.EXTENSION_NOT_ALLOWED,
                f"files named *{ext or ' (no extension)'} are not allowed for {rule.name}",
                list(rule.extensions), ext or None)
    if not extension_agrees(ext, essence):
        return (Check.EXTENSION_MISMATCH,
                f"a {ext} file cannot be {essence}", ext, essence)
    return None


def _size(rule: Rule, req: UploadRequest, essence: str, ext: str) -> _Failure | None:
    if req.size is None:
        return None  # the signed content-length-range still bounds the upload
    if req.size > rule.max_bytes:
        return (Check.TOO_LARGE,
                f"too large: {human_size(req.size)}, the limit for {rule.name} is "
                f"{human_size(rule.max_bytes)}", rule.max_bytes, req.size)
    if req.size < rule.min_bytes:
        return (Check.TOO_SMALL,
                f"too small: {human_size(req.size)}, {rule.name} needs at least "
                f"{human_size(rule.min_bytes)}", rule.min_bytes, req.size)
    return None


def _metadata(rule: Rule, req: UploadRequest, essence: str, ext: str) -> _Failure | None:
    unknown = sorted(set(req.metadata) - set(rule.client_metadata))
    if unknown:
        return (Check.METADATA_NOT_ALLOWED,
                f"metadata {', '.join(unknown)} may not be set for {rule.name}",
                list(rule.client_metadata), unknown)
    total = sum(len(k) + len(v) for k, v in {**rule.metadata, **req.metadata}.items())
    if total > MAX_METADATA_BYTES:
        return (Check.METADATA_TOO_LARGE,
                f"metadata totals {total} bytes; S3 allows {MAX_METADATA_BYTES}",
                MAX_METADATA_BYTES, total)
    return None


CHECKS: tuple[_CheckFn, ...] = (_content_type, _extension, _size, _metadata)


def _session_failure(rule: Rule, req: UploadRequest, session: Session | None) -> _Failure | None:
    """What a session forbids that the rule alone would allow: another profile, a larger file."""
    if session is None:
        return None
    if rule.name not in session.profiles:
        return (Check.SESSION_PROFILE_NOT_ALLOWED,
                f"session {session.id} may upload only to {', '.join(session.profiles)}, not {rule.name}",
                list(session.profiles), rule.name)
    limit = session.max_bytes
    if limit is not None and (limit < rule.min_bytes or (req.size is not None and req.size > limit)):
        return (Check.TOO_LARGE,
                f"too large: {human_size(req.size or rule.min_bytes)}, session {session.id} allows "
                f"{human_size(limit)} a file", limit, req.size)
    return None


def evaluate(
    ruleset: RuleSet,
    client: Client,
    request: UploadRequest,
    *,
    now: datetime,
    random_id: str,
    user: str | None = None,
    session: Session | None = None,
) -> Decision:
    """Decide one upload request; ``random_id`` (32 hex digits) becomes the key's ``{uuid}``.

    ``user``: the end user, when known (a session's, or the authorizer's ``sub``), for ``{user}``
    in keys. ``session``: the session the call presented; its profiles and ``max_bytes`` narrow
    what the rule allows. Raises ``InvalidRequest`` for a malformed filename or content type
    (400); every other outcome, allowed or denied, is a ``Decision``.
    """
    filename = keys.check_filename(request.filename)
    essence, canonical = parse_content_type(request.content_type)
    selected = select_rule(client, request.profile)
    if isinstance(selected, Decision):
        return selected
    rule = selected
    ext = keys.extension(filename)
    failure = _session_failure(rule, request, session)
    if failure is None:
        for check in CHECKS:
            failure = check(rule, request, essence, ext)
            if failure is not None:
                break
    if failure is None and not user and "{user}" in rule.key_template:
        failure = (Check.USER_REQUIRED, f"{rule.name} keeps each end user's files apart ({{user}} in its key); "
                   "call with a session for the user, or through an authorizer that names one", "user", None)
    if failure is not None:
        kind, reason, expected, actual = failure
        return Decision(False, client.id, rule.name, check=kind, reason=reason,
                        expected=expected, actual=actual)
    key = keys.render_key(rule.key_template, client=client.id, profile=rule.name,
                          random_id=random_id, now=now, filename=filename, user=user)
    max_bytes = rule.max_bytes if session is None or session.max_bytes is None else \
        min(rule.max_bytes, session.max_bytes)  # the signed content-length-range holds the upload to it
    grant = Grant(
        client=client.id, profile=rule.name, bucket=rule.bucket, key=key,
        content_type=canonical, min_bytes=rule.min_bytes, max_bytes=max_bytes,
        expires_in=min(rule.expires_in, ruleset.max_expires_in),
        fields=object_fields(rule, canonical, filename, request.metadata, checksum_base64(request.sha256)),
    )
    return Decision(True, client.id, rule.name, grant=grant)


def checksum_base64(sha256: str | None) -> str | None:
    """A declared SHA-256 as S3 wants it in ``x-amz-checksum-sha256`` (base64 of the 32 bytes); None stays None.

    The schema has checked its form (64 hex digits, or 44 base64 characters); anything that is
    not 32 bytes is a 400.
    """
    if sha256 is None:
        return None
    try:
        raw = bytes.fromhex(sha256) if len(sha256) == 64 else base64.b64decode(sha256, validate=True)
    except (ValueError, binascii.Error):
        raw = b""
    if len(raw) != 32:
        raise InvalidRequest("sha256 must be the file's SHA-256: 64 hex digits, or its 32 bytes in base64",
                             path="$.sha256")
    return base64.b64encode(raw).decode()


def object_fields(rule: Rule, content_type: str, filename: str,
                  metadata: Mapping[str, str], checksum: str | None = None) -> dict[str, str]:
    """The form fields (besides key/policy/signature) that S3 applies to the object."""
    fields = {"Content-Type": content_type}
    if rule.acl is not None:  # no acl field by default: buckets with ACLs disabled refuse most
        fields["acl"] = rule.acl
    if rule.cache_control:
        fields["Cache-Control"] = rule.cache_control
    if rule.content_disposition:
        fields["Content-Disposition"] = keys.content_disposition(rule.content_disposition, filename)
    if rule.encryption is not None:
        fields["x-amz-server-side-encryption"] = rule.encryption.mode
        if rule.encryption.kms_key_id:
            fields["x-amz-server-side-encryption-aws-kms-key-id"] = rule.encryption.kms_key_id
    if rule.storage_class:
        fields["x-amz-storage-class"] = rule.storage_class
    for name, value in {**metadata, **rule.metadata}.items():
        fields[f"x-amz-meta-{name}"] = value
    if rule.success_action_status:
        fields["success_action_status"] = rule.success_action_status
    if checksum is not None:  # a store that checks it refuses any other bytes (S3: BadDigest)
        fields["x-amz-checksum-sha256"] = checksum
        fields[f"x-amz-meta-{DECLARED_SHA256}"] = checksum  # kept with the object, for the verifier to compare
    return fields
