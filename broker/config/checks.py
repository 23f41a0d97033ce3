"""The semantic checks of a rules file: small pure functions, each yielding the problems it finds.

:mod:`broker.config.loader` builds values from the schema-checked document, then runs

- :data:`RULE_CHECKS` on each rule (as written, with the defaults merged in, and as built),
- :data:`CLIENT_CHECKS` on each client (with the owners of every API key hash and principal),
- :data:`RULESET_CHECKS` on the whole set,

in that order, rule by rule and client by client. Every problem names its JSON path and,
inside a rule, the rule (the loader adds the line and column). A new check is one function
added to one of these tables; a client check that judges the client's rules together is also
named in :data:`NEEDS_EVERY_RULE`, so it is skipped when a rule of that client is already
reported broken (it would only repeat that problem in other words).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Mapping

from broker.core import keys
from broker.core.callbacks import url_problem as callback_url_problem
from broker.core.mediatypes import EXTENSION_TYPES, type_matches
from broker.core.sizes import human_size
from broker.errors import Problem
from broker.models import Client, Rule

SINGLE_POST_LIMIT = 5 * 1000**3  # S3 refuses a single POST above 5 GB
MULTIPART_LIMIT = 5 * 1024**4  # and any object above 5 TiB


@dataclass(frozen=True)
class RuleDraft:
    """One rule as written (defaults merged in) and as built, with the file's expiry cap."""

    rule: Rule
    doc: Mapping[str, Any]
    max_expires_in: int

    def problem(self, field: str, message: str) -> Problem:
        """A problem at ``field`` of this rule ('' for the rule itself)."""
        return Problem(f"{self.rule.path}.{field}" if field else self.rule.path, message, self.rule.name)


@dataclass(frozen=True)
class Owners:
    """Who first claimed each API key hash and principal: ``{value: (client id, JSON path)}``."""

    api_keys: Mapping[str, tuple[str, str]]
    principals: Mapping[str, tuple[str, str]]


# --------------------------------------------------------------------------- rule checks


def validate_max_bytes_present(d: RuleDraft) -> Iterator[Problem]:
    """Every upload needs a size limit."""
    if "max_bytes" not in d.doc:
        yield d.problem("", "max_bytes is required (in the rule or in defaults): every upload needs a size limit")


def validate_size_order(d: RuleDraft) -> Iterator[Problem]:
    """min_bytes <= max_bytes."""
    if "max_bytes" in d.doc and d.rule.min_bytes > d.rule.max_bytes:
        yield d.problem("max_bytes", f"max_bytes ({d.rule.max_bytes}) must be >= min_bytes ({d.rule.min_bytes})")


def validate_size_limit(d: RuleDraft) -> Iterator[Problem]:
    """max_bytes within what one POST (or a multipart upload) can store."""
    multipart = d.doc.get("multipart")
    if d.rule.max_bytes > (MULTIPART_LIMIT if multipart else SINGLE_POST_LIMIT):
        what = "5 TiB, the largest S3 object" if multipart else \
               "5 GB, the most one POST can carry (set multipart: true for larger files)"
        yield d.problem("max_bytes", f"max_bytes ({d.rule.max_bytes}) is above {what}")


def validate_content_types_present(d: RuleDraft) -> Iterator[Problem]:
    """Allowed types are never implied."""
    if "content_types" not in d.doc:
        yield d.problem("", "content_types is required (in the rule or in defaults); use ['*/*'] to allow any")


def validate_key_template(d: RuleDraft) -> Iterator[Problem]:
    """The key template is safe and server-random (``keys.template_problems``)."""
    for message in _template_problems(d.rule.key_template):
        yield d.problem("key", f"key template {d.rule.key_template!r}: {message}")


def validate_expiry(d: RuleDraft) -> Iterator[Problem]:
    """expires_in within the file's max_expires_in."""
    expires_in = whole(d.doc["expires_in"])
    if expires_in > d.max_expires_in:
        yield d.problem("expires_in", f"expires_in ({expires_in}s) is above max_expires_in ({d.max_expires_in}s)")


def validate_extensions(d: RuleDraft) -> Iterator[Problem]:
    """Every allowed extension is known and fits an allowed content type."""
    for field, message in _extension_problems(d.rule.extensions, d.rule.content_types):
        yield d.problem(field, message)


RULE_CHECKS: tuple[Callable[[RuleDraft], Iterator[Problem]], ...] = (
    validate_max_bytes_present, validate_size_order, validate_size_limit, validate_content_types_present,
    validate_key_template, validate_expiry, validate_extensions,
)


# --------------------------------------------------------------------------- client checks


def validate_default_profile(client: Client, owners: Owners) -> Iterator[Problem]:
    """default_profile names one of the client's rules."""
    if client.default_profile is not None and client.default_profile not in client.rules:
        yield Problem(f"{client.path}.default_profile",
                      f"default_profile '{client.default_profile}' is not one of this client's "
                      f"rules ({', '.join(client.rules)}){did_you_mean(client.default_profile, client.rules)}")


def validate_identifiable(client: Client, owners: Owners) -> Iterator[Problem]:
    """Some request can be recognised as this client."""
    if not client.api_key_sha256 and not client.principals:
        yield Problem(client.path, f"client '{client.id}' has neither api_key_sha256 nor principals, "
                                   "so no request can ever be recognised as it")


def validate_unique_api_keys(client: Client, owners: Owners) -> Iterator[Problem]:
    """Each API key identifies one client."""
    for j, digest in enumerate(client.api_key_sha256):
        owner, where = owners.api_keys[digest]
        if where != f"{client.path}.api_key_sha256[{j}]":
            yield Problem(f"{client.path}.api_key_sha256[{j}]",
                          f"this API key hash is already used by client '{owner}' (at {where}); "
                          "each key must identify one client")


def validate_unique_principals(client: Client, owners: Owners) -> Iterator[Problem]:
    """Each principal maps to one client."""
    for j, principal in enumerate(client.principals):
        owner, where = owners.principals[principal]
        if where != f"{client.path}.principals[{j}]":
            yield Problem(f"{client.path}.principals[{j}]",
                          f"principal '{principal}' is already mapped to client '{owner}'")


def validate_quota_room(client: Client, owners: Owners) -> Iterator[Problem]:
    """A bytes_per_day quota leaves room for at least one upload of some rule."""
    smallest = min((rule.min_bytes for rule in client.rules.values()), default=0)
    for name, quota in (("quota", client.quota), ("quota_per_user", client.quota_per_user)):
        if quota is not None and quota.bytes_per_day is not None and quota.bytes_per_day < max(1, smallest):
            yield Problem(f"{client.path}.{name}.bytes_per_day",
                          f"bytes_per_day ({human_size(quota.bytes_per_day)}) is less than the smallest file any "
                          f"rule of '{client.id}' accepts ({human_size(max(1, smallest))}): nothing could ever "
                          "be uploaded")


def validate_callback(client: Client, owners: Owners) -> Iterator[Problem]:
    """A completion callback goes to an https:// address (http:// only on this machine)."""
    if client.callback_url is not None:
        problem = callback_url_problem(client.callback_url)
        if problem is not None:
            yield Problem(f"{client.path}.callback.url", problem)


CLIENT_CHECKS: tuple[Callable[[Client, Owners], Iterator[Problem]], ...] = (
    validate_default_profile, validate_identifiable, validate_unique_api_keys, validate_unique_principals,
    validate_quota_room, validate_callback,
)

NEEDS_EVERY_RULE: frozenset[Callable[[Client, Owners], Iterator[Problem]]] = frozenset({
    validate_default_profile, validate_quota_room,
})
"""The client checks skipped for a client with a rule already reported broken (left out of ``client.rules``)."""


# --------------------------------------------------------------------------- rule-set checks


def validate_disjoint_prefixes(clients: Mapping[str, Client], quarantine: str) -> Iterator[Problem]:
    """Prefixes of different clients in one bucket where one is a prefix of the other."""
    entries = []
    for client in clients.values():
        for rule in client.rules.values():
            try:
                entries.append((rule.bucket, keys.rule_prefix(rule), client.id, rule))
            except ValueError:
                continue  # a malformed template is already reported
    entries.sort(key=lambda e: (e[0], e[1]))
    seen = set()
    for i, (bucket, prefix, cid, rule) in enumerate(entries):
        for other_bucket, other_prefix, other_cid, other in entries[i + 1:]:
            if other_bucket != bucket or not other_prefix.startswith(prefix):
                break
            if other_cid != cid and (cid, other_cid) not in seen:
                seen.add((cid, other_cid))
                yield Problem(
                    f"{rule.path}.key",
                    f"keys of client '{cid}' (prefix '{prefix}') overlap keys of client '{other_cid}' "
                    f"rule '{other.name}' (prefix '{other_prefix}') in bucket '{bucket}': one client "
                    "could write among the other's objects; start each template with a prefix that "
                    "ends in '{client}/'",
                    rule.name,
                )


def validate_quarantine_apart(clients: Mapping[str, Client], quarantine: str) -> Iterator[Problem]:
    """No rule's keys and the quarantine prefix overlap (the verifier skips what lies in quarantine)."""
    for client in clients.values():
        for rule in client.rules.values():
            try:
                overlaps = keys.may_start_with(rule, quarantine)
            except (ValueError, KeyError):
                continue  # a malformed template is already reported
            if overlaps:
                yield Problem("$.quarantine_prefix",
                              f"quarantine_prefix '{quarantine}' overlaps the keys of client '{client.id}' rule "
                              f"'{rule.name}' (template '{rule.key_template}'): its uploads could land in the "
                              "quarantine, where they are never verified; start the template with another fixed "
                              "prefix such as 'uploads/', or choose another quarantine_prefix")


RULESET_CHECKS: tuple[Callable[[Mapping[str, Client], str], Iterator[Problem]], ...] = (
    validate_disjoint_prefixes, validate_quarantine_apart,
)


# --------------------------------------------------------------------------- helpers


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """``"; did you mean 'max_bytes'?"`` for the choice closest to ``word``, or '' if none is close."""
    import difflib  # only here: asked only when a rules file has a problem

    choices = [str(c) for c in choices]
    lowered = {c.lower(): c for c in choices}
    close = [lowered[word.lower()]] if word.lower() in lowered else difflib.get_close_matches(word, choices, 1, 0.55)
    return f"; did you mean '{close[0]}'?" if close else ""


def whole(number: Any) -> Any:
    """201 for 201.0: JSON Schema counts integral floats as integers, S3 wants "201"."""
    return int(number) if isinstance(number, float) and number.is_integer() else number


# Rules files repeat the same templates and type lists across clients: each distinct value is
# checked once (pure functions; bounded caches, reused by reloads).
_template_problems = functools.lru_cache(maxsize=1024)(keys.template_problems)


@functools.lru_cache(maxsize=1024)
def _extension_problems(extensions: tuple[str, ...], content_types: tuple[str, ...]
                        ) -> tuple[tuple[str, str], ...]:
    """``(field, message)`` for each extension no allowed content type fits."""
    problems = []
    for j, ext in enumerate(extensions):
        types = EXTENSION_TYPES.get(ext)
        if types is None:
            problems.append((f"extensions[{j}]", f"the broker does not know which content types '{ext}' "
                             f"files have; known: {' '.join(sorted(EXTENSION_TYPES))}"))
        elif not any(type_matches(t, content_types) for t in types):
            problems.append((f"extensions[{j}]", f"'{ext}' files are {' or '.join(sorted(types))}, none of "
                             f"which content_types allows ({', '.join(content_types)})"))
    return tuple(problems)
