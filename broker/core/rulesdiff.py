"""``broker diff``: what a rules change grants and revokes, field by field. Pure.

:func:`diff` compares two built :class:`~broker.models.RuleSet` values and returns one
:class:`Change` per difference, each of one kind:

============  =======================================================  ===========
kind          meaning                                                   widens?
============  =======================================================  ===========
``added``     a client, rule, API key, principal or origin appears      yes
``removed``   one disappears                                            no
``widened``   a limit allows more (a larger ``max_bytes``, more types,  yes
              a longer expiry, a quota raised or dropped, ...)
``narrowed``  a limit allows less                                       no
``changed``   a value that is neither more nor less: where keys go      key, prefix,
              (key template and its prefix, bucket, region,             bucket, region,
              quarantine), where verdicts are sent (callback URL),      callback: yes;
              another ACL as open, or form fields (``cache_control``)   others: no
============  =======================================================  ===========

A change that widens anything makes ``broker diff`` exit 1, so CI can ask for a review.
:func:`policy_delta` compares two IAM policy documents (computed by :mod:`broker.deploy.iam`,
which this floor cannot import) as the (action, resource, condition) triples they allow.

API keys are shown by :func:`key_fingerprint`: the first 8 hex digits of their SHA-256, never
the whole hash. That is enough to tell a client's keys apart and to find the line in
``rules.yaml`` (or the ``broker hash-key`` output it came from), and it keeps values derived
from credentials out of CI logs and review comments, which are read by more people than
the rules file is.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field as dataclass_field
from typing import Any, Callable, Iterable, Mapping

from broker.core import keys
from broker.core.mediatypes import type_matches
from broker.core.sizes import human_size
from broker.models import Client, Quota, Rule, RuleSet

ADDED, REMOVED, WIDENED, NARROWED, CHANGED = "added", "removed", "widened", "narrowed", "changed"
#: Every kind, in the order summaries count them.
KINDS = (ADDED, REMOVED, WIDENED, NARROWED, CHANGED)
#: Hex digits of a key's SHA-256 that identify it in diffs and logs.
FINGERPRINT_DIGITS = 8


def key_fingerprint(digest: str) -> str:
    """The first :data:`FINGERPRINT_DIGITS` hex digits of an ``api_key_sha256`` value."""
    return digest[:FINGERPRINT_DIGITS]


@dataclass(frozen=True)
class Change:
    """One difference between two rule sets: where, what, from what to what, and whether it widens."""

    kind: str
    field: str
    text: str
    widens: bool
    client: str | None = None
    rule: str | None = None
    old: Any = None
    new: Any = None
    items: tuple[str, ...] = ()  # for lists: the members added or removed

    def where(self) -> str:
        """``client/rule``, ``client``, or ``rules`` for a top-level field."""
        if self.client is None:
            return "rules"
        return f"{self.client}/{self.rule}" if self.rule else self.client

    def as_dict(self) -> dict[str, Any]:
        """The change as ``broker diff --json`` prints it (schemas/rules-diff.schema.json)."""
        return {"kind": self.kind, "widens": self.widens, "client": self.client, "rule": self.rule,
                "field": self.field, "old": self.old, "new": self.new, "items": list(self.items),
                "text": self.text}


# --- how one field is compared ------------------------------------------------------------
# A comparer takes (field, old, new, show) and returns the changes; ``show`` words a value.

Comparer = Callable[[str, Any, Any, Callable[[Any], str]], list[tuple[str, bool, str, tuple[str, ...]]]]


def _plain(value: Any) -> str:
    return "(none)" if value is None else repr(value) if isinstance(value, str) else str(value)


def _size(value: Any) -> str:
    return "(none)" if value is None else human_size(value)


def _seconds(value: Any) -> str:
    return f"{value}s"


def _unlimited(value: Any, show: Callable[[Any], str] = _plain) -> str:
    return "unlimited" if value is None else show(value)


def _more_is_wider(name: str, old: Any, new: Any, show: Callable[[Any], str]) -> list[Any]:
    kind = WIDENED if new > old else NARROWED
    return [(kind, kind == WIDENED, f"{name} {show(old)} -> {show(new)}", ())]


def _less_is_wider(name: str, old: Any, new: Any, show: Callable[[Any], str]) -> list[Any]:
    kind = WIDENED if new < old else NARROWED
    return [(kind, kind == WIDENED, f"{name} {show(old)} -> {show(new)}", ())]


def _limit(name: str, old: Any, new: Any, show: Callable[[Any], str]) -> list[Any]:
    """A limit where None means unlimited (quotas)."""
    wider = new is None or (old is not None and new > old)
    kind = WIDENED if wider else NARROWED
    return [(kind, wider, f"{name} {_unlimited(old, show)} -> {_unlimited(new, show)}", ())]


def _true_is_wider(name: str, old: Any, new: Any, show: Callable[[Any], str]) -> list[Any]:
    kind = WIDENED if new else NARROWED
    return [(kind, bool(new), f"{name} {_plain(old).lower()} -> {_plain(new).lower()}", ())]


def _false_is_wider(name: str, old: Any, new: Any, show: Callable[[Any], str]) -> list[Any]:
    kind = WIDENED if not new else NARROWED
    return [(kind, not new, f"{name} {_plain(old).lower()} -> {_plain(new).lower()}", ())]


def _moved(name: str, old: Any, new: Any, show: Callable[[Any], str]) -> list[Any]:
    """Neither more nor less, but somewhere new: reviewed as a widening."""
    return [(CHANGED, True, f"{name} {show(old)} -> {show(new)}", ())]


def _neutral(name: str, old: Any, new: Any, show: Callable[[Any], str]) -> list[Any]:
    return [(CHANGED, False, f"{name} {show(old)} -> {show(new)}", ())]


#: Who may read an object a canned ACL leaves readable: 0 the bucket's own account (no acl field,
#: private, bucket-owner-*), 1 any AWS account, 2 anyone.
_ACL_READERS = {None: 0, "private": 0, "bucket-owner-read": 0, "bucket-owner-full-control": 0,
                "authenticated-read": 1, "public-read": 2}


def _acl(name: str, old: Any, new: Any, show: Callable[[Any], str]) -> list[Any]:
    before, after = _ACL_READERS.get(old, 2), _ACL_READERS.get(new, 2)  # an unknown ACL: as open as any
    text = f"acl {old or '(none)'} -> {new or '(none)'}"
    if after > before:
        return [(WIDENED, True, f"{text} (objects readable by more than before)", ())]
    if after < before:
        return [(NARROWED, False, text, ())]
    return [(CHANGED, False, text, ())]


def _encryption(name: str, old: Any, new: Any, show: Callable[[Any], str]) -> list[Any]:
    if new is None:
        return [(WIDENED, True, f"encryption {old} -> none (uploads no longer have to be encrypted)", ())]
    if old is None:
        return [(NARROWED, False, f"encryption none -> {new}", ())]
    return [(CHANGED, True, f"encryption {old} -> {new}", ())]


def _members(kind_more: str, kind_less: str, covers: Callable[[str, tuple[str, ...]], bool],
             *, empty_means_any: bool = False) -> Comparer:
    """Compare two lists as sets: members the other side does not cover were added or removed."""

    def compare(name: str, old: Any, new: Any, show: Callable[[Any], str]) -> list[Any]:
        old_t, new_t = tuple(old), tuple(new)
        if empty_means_any and (not old_t or not new_t):
            if not new_t:  # any, from a list
                return [(kind_more, True, f"{name} {', '.join(old_t)} -> any", old_t)]
            return [(kind_less, False, f"{name} any -> {', '.join(new_t)}", new_t)]
        more = tuple(m for m in new_t if not covers(m, old_t))
        less = tuple(m for m in old_t if not covers(m, new_t))
        out = []
        if more:
            out.append((kind_more, True, f"{name} + {', '.join(more)}", more))
        if less:
            out.append((kind_less, False, f"{name} - {', '.join(less)}", less))
        return out

    return compare


def _in(member: str, others: tuple[str, ...]) -> bool:
    return member in others


def _type_covered(member: str, others: tuple[str, ...]) -> bool:
    if member == "*/*":
        return "*/*" in others
    if member.endswith("/*"):
        return member in others or "*/*" in others
    return type_matches(member, others)


_identities = _members(ADDED, REMOVED, _in)
_allowed = _members(WIDENED, NARROWED, _in)


def _encryption_words(rule: Rule) -> str | None:
    if rule.encryption is None:
        return None
    return rule.encryption.mode if rule.encryption.kms_key_id is None else \
        f"{rule.encryption.mode} ({rule.encryption.kms_key_id})"


#: A rule's fields: (name, how to read it, how to compare, how to word a value).
RULE_FIELDS: tuple[tuple[str, Callable[[Rule], Any], Comparer, Callable[[Any], str]], ...] = (
    ("bucket", lambda r: r.bucket, _moved, _plain),
    ("region", lambda r: r.region, _moved, _plain),
    ("key", lambda r: r.key_template, _moved, _plain),
    ("prefix", keys.rule_prefix, _moved, _plain),  # the fixed start of its keys: what IAM grants
    ("min_bytes", lambda r: r.min_bytes, _less_is_wider, _size),
    ("max_bytes", lambda r: r.max_bytes, _more_is_wider, _size),
    ("expires_in", lambda r: r.expires_in, _more_is_wider, _seconds),
    ("content_types", lambda r: r.content_types, _members(WIDENED, NARROWED, _type_covered), _plain),
    ("extensions", lambda r: r.extensions, _members(WIDENED, NARROWED, _in, empty_means_any=True), _plain),
    ("client_metadata", lambda r: r.client_metadata, _allowed, _plain),
    ("multipart", lambda r: r.multipart, _true_is_wider, _plain),
    ("acl", lambda r: r.acl, _acl, _plain),
    ("encryption", _encryption_words, _encryption, _plain),
    ("storage_class", lambda r: r.storage_class, _neutral, _plain),
    ("cache_control", lambda r: r.cache_control, _neutral, _plain),
    ("content_disposition", lambda r: r.content_disposition, _neutral, _plain),
    ("metadata", lambda r: dict(r.metadata), _neutral, lambda v: json.dumps(v, sort_keys=True)),
    ("success_action_status", lambda r: r.success_action_status, _neutral, _plain),
    ("on_reject", lambda r: r.on_reject, _neutral, _plain),
)


def _quota_part(attr: str, which: str) -> Callable[[Client], Any]:
    def read(client: Client) -> Any:
        quota: Quota | None = getattr(client, which)
        return None if quota is None else getattr(quota, attr)
    return read


#: A client's fields besides its rules, compared the same way.
CLIENT_FIELDS: tuple[tuple[str, Callable[[Client], Any], Comparer, Callable[[Any], str]], ...] = (
    ("api_key_sha256", lambda c: tuple(map(key_fingerprint, c.api_key_sha256)), _identities, _plain),
    ("principals", lambda c: c.principals, _identities, _plain),
    ("server_only", lambda c: c.server_only, _false_is_wider, _plain),
    ("quota.uploads_per_hour", _quota_part("uploads_per_hour", "quota"), _limit, _plain),
    ("quota.bytes_per_day", _quota_part("bytes_per_day", "quota"), _limit, _size),
    ("quota_per_user.uploads_per_hour", _quota_part("uploads_per_hour", "quota_per_user"), _limit, _plain),
    ("quota_per_user.bytes_per_day", _quota_part("bytes_per_day", "quota_per_user"), _limit, _size),
    ("callback.url", lambda c: c.callback_url, _moved, _plain),
    ("callback.secret_env", lambda c: c.callback_secret_env, _neutral, _plain),
    ("default_profile", lambda c: c.default_profile, _neutral, _plain),
)

#: The fields of the whole file.
RULESET_FIELDS: tuple[tuple[str, Callable[[RuleSet], Any], Comparer, Callable[[Any], str]], ...] = (
    ("cors.allowed_origins", lambda s: s.cors_origins, _identities, _plain),
    ("max_expires_in", lambda s: s.max_expires_in, _more_is_wider, _seconds),
    ("session_max_ttl", lambda s: s.session_max_ttl, _more_is_wider, _seconds),
    ("quarantine_prefix", lambda s: s.quarantine_prefix, _moved, _plain),
)


def _compare(table: Iterable[tuple[str, Callable[[Any], Any], Comparer, Callable[[Any], str]]],
             old: Any, new: Any, client: str | None, rule: str | None) -> list[Change]:
    out = []
    for name, read, compare, show in table:
        before, after = read(old), read(new)
        if before == after:
            continue
        for kind, widens, text, items in compare(name, before, after, show):
            out.append(Change(kind, name, text, widens, client, rule, _jsonable(before), _jsonable(after), items))
    return out


def _jsonable(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _rule_summary(rule: Rule) -> dict[str, Any]:
    return {"bucket": rule.bucket, "key": rule.key_template, "prefix": keys.rule_prefix(rule),
            "min_bytes": rule.min_bytes, "max_bytes": rule.max_bytes,
            "content_types": list(rule.content_types), "extensions": list(rule.extensions),
            "expires_in": rule.expires_in, "multipart": rule.multipart, "acl": rule.acl}


def _rule_words(rule: Rule) -> str:
    return (f"s3://{rule.bucket}/{rule.key_template}, up to {human_size(rule.max_bytes)}, "
            f"{', '.join(rule.content_types)}, forms valid {rule.expires_in}s")


def _client_summary(client: Client) -> dict[str, Any]:
    return {"rules": sorted(client.rules), "api_keys": [key_fingerprint(k) for k in client.api_key_sha256],
            "principals": list(client.principals)}


def _client_words(client: Client) -> str:
    who = [f"API key {key_fingerprint(k)}" for k in client.api_key_sha256] + list(client.principals)
    return (f"rules {', '.join(sorted(client.rules))}; identified by {', '.join(who) or 'nothing'}")


def _rules_of(old: Client, new: Client) -> list[Change]:
    out = []
    for name in sorted(old.rules.keys() - new.rules.keys()):
        rule = old.rules[name]
        out.append(Change(REMOVED, "rule", f"rule removed ({_rule_words(rule)})", False, old.id, name,
                          _rule_summary(rule), None))
    for name in sorted(new.rules.keys() - old.rules.keys()):
        rule = new.rules[name]
        out.append(Change(ADDED, "rule", f"rule added: {_rule_words(rule)}", True, new.id, name,
                          None, _rule_summary(rule)))
    for name in sorted(old.rules.keys() & new.rules.keys()):
        out.extend(_compare(RULE_FIELDS, old.rules[name], new.rules[name], old.id, name))
    return out


def diff(old: RuleSet, new: RuleSet) -> list[Change]:
    """Every difference from ``old`` to ``new``: file-wide fields, then clients in id order."""
    out = _compare(RULESET_FIELDS, old, new, None, None)
    for cid in sorted(old.clients.keys() | new.clients.keys()):
        before, after = old.clients.get(cid), new.clients.get(cid)
        if after is None:
            assert before is not None
            out.append(Change(REMOVED, "client", f"client removed ({_client_words(before)})", False, cid, None,
                              _client_summary(before), None,
                              tuple(key_fingerprint(k) for k in before.api_key_sha256) + before.principals))
        elif before is None:
            out.append(Change(ADDED, "client", f"client added: {_client_words(after)}", True, cid, None,
                              None, _client_summary(after),
                              tuple(key_fingerprint(k) for k in after.api_key_sha256) + after.principals))
        else:
            out.extend(_compare(CLIENT_FIELDS, before, after, cid, None))
            out.extend(_rules_of(before, after))
    return out


def summary(changes: Iterable[Change]) -> dict[str, Any]:
    """Counts per kind and whether anything widens: ``{"added": 1, ..., "widens": true}``."""
    counts = dict.fromkeys(KINDS, 0)
    widens = False
    for change in changes:
        counts[change.kind] += 1
        widens = widens or change.widens
    return {**counts, "widens": widens}


# --- the IAM delta ------------------------------------------------------------------------

@dataclass(frozen=True)
class PolicyDelta:
    """Permissions one policy grants and the other does not, grouped by resource and condition."""

    added: tuple[dict[str, Any], ...] = ()
    removed: tuple[dict[str, Any], ...] = ()

    @property
    def widens(self) -> bool:
        """True if the new policy allows anything the old one did not."""
        return bool(self.added)

    def as_dict(self) -> dict[str, Any]:
        """``{"added": [...], "removed": [...]}``, each ``{"actions", "resource", "condition"}``."""
        return {"added": list(self.added), "removed": list(self.removed)}


def _listed(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list) else [value]


def _triples(policy: Mapping[str, Any]) -> set[tuple[str, str, str]]:
    """(action, resource, condition as sorted JSON) for every Allow statement."""
    out = set()
    for stmt in _listed(policy.get("Statement", [])):
        if stmt.get("Effect") != "Allow":
            continue
        condition = json.dumps(stmt.get("Condition"), sort_keys=True) if stmt.get("Condition") else ""
        for action in _listed(stmt.get("Action", [])):
            for resource in _listed(stmt.get("Resource", [])):
                out.add((action, resource if isinstance(resource, str) else json.dumps(resource, sort_keys=True),
                         condition))
    return out


def _grouped(triples: set[tuple[str, str, str]]) -> tuple[dict[str, Any], ...]:
    by_where: dict[tuple[str, str], list[str]] = {}
    for action, resource, condition in triples:
        by_where.setdefault((resource, condition), []).append(action)
    return tuple({"actions": sorted(actions), "resource": resource,
                  "condition": json.loads(condition) if condition else None}
                 for (resource, condition), actions in sorted(by_where.items()))


def policy_delta(old: Mapping[str, Any], new: Mapping[str, Any]) -> PolicyDelta:
    """What ``new`` allows that ``old`` does not (added), and the reverse (removed)."""
    before, after = _triples(old), _triples(new)
    return PolicyDelta(_grouped(after - before), _grouped(before - after))


@dataclass(frozen=True)
class Report:
    """A whole comparison: the rule changes, and each role's IAM delta (when computed)."""

    changes: tuple[Change, ...]
    iam: Mapping[str, PolicyDelta] = dataclass_field(default_factory=dict)

    @property
    def widens(self) -> bool:
        """True if any rule change or any role's policy widens."""
        return any(c.widens for c in self.changes) or any(d.widens for d in self.iam.values())
