"""Is a stored object what the rules allowed? Pure: the object's facts and its sniffed type come in.

:func:`verify` finds the one rule whose template made the key, then runs every check of
:data:`CHECKS` on the object and returns a :class:`Verdict`: verified, or rejected with each
failed check named, with what it expected and what it found (like a denial). Nothing here
reads the store or acts; ``broker.verifier`` does, at the edge.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Callable, Iterator

from broker.core.grants import key_matches
from broker.core.mediatypes import parse_content_type, type_matches
from broker.core.rules import DECLARED_SHA256
from broker.core.sizes import human_size
from broker.errors import InvalidRequest
from broker.models import Rule, RuleSet, StoredObject

#: Types a sniffer may report for bytes declared as another type, when both are the same kind of file.
SAME_KIND: dict[str, frozenset[str]] = {
    "image/jpeg": frozenset({"image/pjpeg"}),
    "image/pjpeg": frozenset({"image/jpeg"}),
    "image/heic": frozenset({"image/heif"}),
    "image/heif": frozenset({"image/heic"}),
    "image/x-icon": frozenset({"image/vnd.microsoft.icon"}),
    "image/vnd.microsoft.icon": frozenset({"image/x-icon"}),
    "text/csv": frozenset({"text/plain", "application/csv"}),
    "application/vnd.ms-excel": frozenset({"text/csv", "text/plain", "application/x-ole-storage",
                                           "application/cdfv2"}),
    "application/msword": frozenset({"application/x-ole-storage", "application/cdfv2"}),
    "application/vnd.ms-powerpoint": frozenset({"application/x-ole-storage", "application/cdfv2"}),
    "application/zip": frozenset({"application/x-zip-compressed"}),
    "application/x-zip-compressed": frozenset({"application/zip"}),
    "application/gzip": frozenset({"application/x-gzip"}),
    "application/x-gzip": frozenset({"application/gzip"}),
    "audio/wav": frozenset({"audio/x-wav", "audio/wave"}),
    "audio/x-wav": frozenset({"audio/wav", "audio/wave"}),
    "audio/flac": frozenset({"audio/x-flac"}),
    "audio/mp4": frozenset({"video/mp4", "audio/x-m4a"}),
    "audio/x-m4a": frozenset({"video/mp4", "audio/mp4"}),
    "video/mp4": frozenset({"video/x-m4v", "audio/mp4"}),
    "video/x-m4v": frozenset({"video/mp4"}),
    "video/webm": frozenset({"audio/webm"}),
    "audio/webm": frozenset({"video/webm"}),
    "audio/ogg": frozenset({"application/ogg", "video/ogg"}),
    "video/ogg": frozenset({"application/ogg", "audio/ogg"}),
}
# OOXML and OpenDocument files are zip archives; a sniffer may say only that.
_ZIPPED = ("application/vnd.openxmlformats-officedocument.", "application/vnd.oasis.opendocument.")
#: Stored headers no rule ever sets: any of them means something the broker did not sign.
FOREIGN_HEADERS = ("Content-Encoding", "Content-Language", "Expires", "x-amz-website-redirect-location")
#: Metadata the broker or a protocol adds itself: Fine Uploader's filename (pinned by its checked
#: policy) and a declared SHA-256 (signed in the form like every field).
PROTOCOL_METADATA = frozenset({"qqfilename", DECLARED_SHA256})


class VerifyCheck(str, Enum):
    """A check of a stored object; the value is the wire name in audit lines and tags."""

    KEY_NOT_GRANTED = "key_not_granted"
    TOO_LARGE = "too_large"
    TOO_SMALL = "too_small"
    CONTENT_TYPE_NOT_ALLOWED = "content_type_not_allowed"
    CONTENT_MISMATCH = "content_mismatch"
    ACTIVE_CONTENT = "active_content"
    HEADER_NOT_ALLOWED = "header_not_allowed"
    METADATA_NOT_ALLOWED = "metadata_not_allowed"
    CHECKSUM_MISMATCH = "checksum_mismatch"
    GRANT_REUSED = "grant_reused"
    SIZE_NOT_GRANTED = "size_not_granted"


@dataclass(frozen=True)
class Failure:
    """One failed check: which, why in words, what it expected and what it found."""

    check: VerifyCheck
    reason: str
    expected: object = None
    actual: object = None


@dataclass(frozen=True)
class Sniff:
    """What the bytes are: the sniffed type, and the active markup seen in them (None: none)."""

    mime: str
    active: bool = False
    markup: str | None = None


@dataclass(frozen=True)
class Verdict:
    """The outcome for one object: verified, or rejected with every failed check."""

    obj: StoredObject
    rule: Rule | None
    failures: tuple[Failure, ...]
    sniffed: str | None = None

    @property
    def verified(self) -> bool:
        """True when every check passed."""
        return not self.failures

    @property
    def reason(self) -> str:
        """The first failure in words ('' when verified)."""
        return self.failures[0].reason if self.failures else ""


def rule_for(ruleset: RuleSet, bucket: str, key: str) -> tuple[Rule, ...]:
    """Every rule (of any client) whose template could have made ``key`` in ``bucket``."""
    return tuple(rule for client in ruleset.clients.values() for rule in client.rules.values()
                 if rule.bucket == bucket and key_matches(rule, key))


def verify(ruleset: RuleSet, obj: StoredObject, sniff: Sniff) -> Verdict:
    """Judge one stored object against the rule that granted its key (deny by default)."""
    rules = rule_for(ruleset, obj.bucket, obj.key)
    if len(rules) != 1:
        names = [f"{r.client}/{r.name}" for r in rules]
        why = (f"{obj.key[:200]} is not a key any rule grants" if not rules else
               f"{obj.key[:200]} could come from several rules ({', '.join(names)})")
        return Verdict(obj, None, (Failure(VerifyCheck.KEY_NOT_GRANTED, why, "one rule's key", names or None),),
                       sniff.mime)
    rule = rules[0]
    failures = tuple(f for check in CHECKS for f in check(rule, obj, sniff))
    return Verdict(obj, rule, failures, sniff.mime)


# --------------------------------------------------------------------------- the checks


def check_size(rule: Rule, obj: StoredObject, sniff: Sniff) -> Iterator[Failure]:
    """The stored size (for multipart: the completed size) is within the rule's range."""
    if obj.size > rule.max_bytes:
        yield Failure(VerifyCheck.TOO_LARGE, f"too large: {human_size(obj.size)} stored, the limit for {rule.name} "
                                             f"is {human_size(rule.max_bytes)}", rule.max_bytes, obj.size)
    elif obj.size < rule.min_bytes:
        yield Failure(VerifyCheck.TOO_SMALL, f"too small: {human_size(obj.size)} stored, {rule.name} needs at least "
                                             f"{human_size(rule.min_bytes)}", rule.min_bytes, obj.size)


def check_content_type(rule: Rule, obj: StoredObject, sniff: Sniff) -> Iterator[Failure]:
    """The stored Content-Type is canonical (as the broker signs it) and one the rule allows."""
    stored = obj.content_type or ""
    try:
        essence, canonical = parse_content_type(stored)
    except InvalidRequest:
        yield Failure(VerifyCheck.CONTENT_TYPE_NOT_ALLOWED, f"the stored type {stored[:100]!r} is not a media type",
                      list(rule.content_types), stored[:100] or None)
        return
    if canonical != stored or not type_matches(essence, rule.content_types):
        yield Failure(VerifyCheck.CONTENT_TYPE_NOT_ALLOWED,
                      f"the stored type {stored[:100]} is not one {rule.name} allows, as the broker signs it",
                      list(rule.content_types), stored[:100])


def check_bytes(rule: Rule, obj: StoredObject, sniff: Sniff) -> Iterator[Failure]:
    """The bytes are of the stored type; active content (markup, scripts, programs) never poses as another."""
    declared = (obj.content_type or "").split(";")[0].strip().lower()
    if obj.size == 0 or sniff.mime == "application/x-empty":
        return  # nothing to judge; the size check says whether empty is allowed
    named = declared in rule.content_types  # listed by name, not through a wildcard like image/*
    if sniff.active or sniff.markup:
        # Active content passes only as its own type, where the rule names that type itself:
        # "image/*" never means SVG, and a PNG with a <script inside is a polyglot, not a PNG.
        own_type = sniff.active and sniff.mime == declared and named
        if not own_type:
            found = f" ({sniff.markup} found)" if sniff.markup else ""
            if sniff.mime != declared:
                reason = f"the bytes are {_words(sniff)}, not {declared or 'a declared type'}{found}"
            elif not sniff.active:
                reason = f"the bytes are {declared} with active markup in them{found}"
            else:
                reason = (f"the bytes are {_words(sniff)}, active content {rule.name} allows only if its "
                          f"content_types name {declared} itself")
            yield Failure(VerifyCheck.ACTIVE_CONTENT, reason, declared or None, sniff.mime)
        return
    if sniff.mime == declared:
        return
    if agrees(declared, sniff.mime):
        return
    yield Failure(VerifyCheck.CONTENT_MISMATCH, f"the bytes are {_words(sniff)}, not {declared or 'a declared type'}",
                  declared or None, sniff.mime)


def check_headers(rule: Rule, obj: StoredObject, sniff: Sniff) -> Iterator[Failure]:
    """Stored headers are exactly those the rule sets: nothing added, nothing left out."""
    headers = {k.lower(): v for k, v in obj.headers.items()}
    disposition = headers.get("content-disposition")
    kind = disposition.split(";")[0].strip().lower() if disposition else None
    if kind != rule.content_disposition:
        yield Failure(VerifyCheck.HEADER_NOT_ALLOWED, f"Content-Disposition is {disposition or 'not set'}, "
                      f"{rule.name} sets {rule.content_disposition or 'none'}", rule.content_disposition,
                      disposition)
    cache = headers.get("cache-control")
    if cache != rule.cache_control:
        yield Failure(VerifyCheck.HEADER_NOT_ALLOWED, f"Cache-Control is {cache or 'not set'}, "
                      f"{rule.name} sets {rule.cache_control or 'none'}", rule.cache_control, cache)
    for name in FOREIGN_HEADERS:
        if headers.get(name.lower()):
            yield Failure(VerifyCheck.HEADER_NOT_ALLOWED, f"{name} is set; no rule sets it", None,
                          f"{name}: {headers[name.lower()][:200]}")


def check_metadata(rule: Rule, obj: StoredObject, sniff: Sniff) -> Iterator[Failure]:
    """User metadata only under names the rule allows, and the rule's fixed values as it sets them."""
    allowed = set(rule.metadata) | set(rule.client_metadata) | PROTOCOL_METADATA
    extra = sorted(name for name in obj.metadata if name.lower() not in allowed)
    if extra:
        yield Failure(VerifyCheck.METADATA_NOT_ALLOWED, f"metadata {', '.join(extra)[:200]} is not one {rule.name} "
                      "allows", sorted(allowed - PROTOCOL_METADATA), extra)
    stored = {k.lower(): v for k, v in obj.metadata.items()}
    wrong = sorted(name for name, value in rule.metadata.items() if stored.get(name) != value)
    if wrong:
        yield Failure(VerifyCheck.METADATA_NOT_ALLOWED, f"metadata {', '.join(wrong)} is not what {rule.name} sets",
                      {n: rule.metadata[n] for n in wrong}, {n: stored.get(n) for n in wrong})


def check_checksum(rule: Rule, obj: StoredObject, sniff: Sniff) -> Iterator[Failure]:
    """A declared SHA-256 equals the checksum the store keeps for the object (where it keeps one)."""
    declared = obj.metadata.get(DECLARED_SHA256)
    if declared is not None and obj.checksum_sha256 is not None and obj.checksum_sha256 != declared:
        yield Failure(VerifyCheck.CHECKSUM_MISMATCH, "the store's SHA-256 of the object is not the declared one",
                      declared, obj.checksum_sha256)


CHECKS: tuple[Callable[[Rule, StoredObject, Sniff], Iterator[Failure]], ...] = (
    check_size, check_content_type, check_bytes, check_headers, check_metadata, check_checksum,
)


def against_grant(verdict: Verdict, *, first_etag: str | None = None,
                  size_range: tuple[int, int] | None = None) -> Verdict:
    """The verdict with what the grant ledger adds: another object already used this key's grant
    (``first_etag``: a form posted twice), or the size is outside the grant's own range (an exact
    declared size the rule's range would allow)."""
    failures = list(verdict.failures)
    obj = verdict.obj
    if first_etag is not None:
        failures.append(Failure(VerifyCheck.GRANT_REUSED, "the grant for this key was already used by another "
                                "object: its form was posted twice", first_etag, obj.etag.strip('"')))
    if size_range is not None and not size_range[0] <= obj.size <= size_range[1]:
        low, high = size_range
        wanted = human_size(low) if low == high else f"{human_size(low)} to {human_size(high)}"
        failures.append(Failure(VerifyCheck.SIZE_NOT_GRANTED, f"{human_size(obj.size)} stored; the grant was for "
                                f"{wanted}", [low, high], obj.size))
    if len(failures) == len(verdict.failures):
        return verdict
    return Verdict(obj, verdict.rule, tuple(failures), verdict.sniffed)


def agrees(declared: str, sniffed: str) -> bool:
    """Whether bytes sniffed as ``sniffed`` may be a file of type ``declared`` (neither active)."""
    if sniffed == declared or sniffed in SAME_KIND.get(declared, ()):
        return True
    if declared.startswith(_ZIPPED) and sniffed in ("application/zip", declared):
        return True
    if declared.startswith("text/") and sniffed in ("text/plain", "text/csv"):
        return True  # text is text: a .md or .tsv sniffs as plain text
    return declared == "application/octet-stream"  # declared as "some bytes": any inactive bytes are


def _words(sniff: Sniff) -> str:
    names = {"text/html": "HTML", "image/svg+xml": "SVG", "text/javascript": "JavaScript",
             "application/octet-stream": "of no type the broker can tell"}
    return names.get(sniff.mime, sniff.mime)


def describe(check: str, expected: str | None, actual: str | None) -> str:
    """A rejection in words from what a quarantined object's tags keep (check, expected, actual)."""
    names = {"text/html": "HTML", "image/svg+xml": "SVG", "text/javascript": "JavaScript"}
    shown = names.get(actual or "", actual)
    words = {
        VerifyCheck.ACTIVE_CONTENT.value: f"the bytes are {shown}, not {expected}",
        VerifyCheck.CONTENT_MISMATCH.value: f"the bytes are {shown}, not {expected}",
        VerifyCheck.TOO_LARGE.value: f"too large: {actual} bytes stored, the limit is {expected}",
        VerifyCheck.TOO_SMALL.value: f"too small: {actual} bytes stored, at least {expected} needed",
        VerifyCheck.CONTENT_TYPE_NOT_ALLOWED.value: f"the stored type {actual} is not allowed",
        VerifyCheck.HEADER_NOT_ALLOWED.value: f"a stored header is not what the rule sets ({actual})",
        VerifyCheck.METADATA_NOT_ALLOWED.value: f"metadata not allowed ({actual})",
        VerifyCheck.KEY_NOT_GRANTED.value: "no rule grants this key",
        VerifyCheck.CHECKSUM_MISMATCH.value: "the stored SHA-256 is not the declared one",
        VerifyCheck.GRANT_REUSED.value: "its grant was already used by another object (a form posted twice)",
        VerifyCheck.SIZE_NOT_GRANTED.value: f"{actual} bytes stored; the grant was for {expected}",
    }
    return words.get(check, check)
