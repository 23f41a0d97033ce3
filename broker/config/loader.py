"""Rules from YAML or JSON: parsed, checked against the schema, built, then checked semantically.

``load_rules`` checks a rules document against ``schemas/rules.schema.json``, builds the
values (:mod:`broker.models`), runs the small checks of :mod:`broker.config.checks`, and
raises :class:`~broker.errors.RulesError` listing *every* problem with its line and column,
JSON path and rule name, in the order they stand in the file. A ``.json`` file is read as
strict JSON; anything else as YAML. A key written twice in one mapping is refused (YAML and
JSON would silently keep the last). A broker whose rules do not load issues nothing.

Lines and columns are found only when there is a problem to place (:mod:`broker.config.where`):
loading a good file costs nothing for them.
"""
from __future__ import annotations

import dataclasses
import functools
import gc
import hashlib
import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

from broker.config.schemas import json_path, pattern_words, property_names, validator
from broker.config.checks import (CLIENT_CHECKS, NEEDS_EVERY_RULE, RULE_CHECKS, RULESET_CHECKS, Owners, RuleDraft,
                                  did_you_mean, whole)
from broker.core.sizes import SIZE_WORDS, parse_size
from broker.errors import Problem, RulesError
from broker.fast.limits import within_limits
from broker.models import Client, Encryption, Quota, Rule, RuleSet

if TYPE_CHECKING:
    from broker.config.where import Tree

RULE_DEFAULTS: dict[str, Any] = {
    "key": "uploads/{client}/{profile}/{date}/{uuid}{ext}",
    "min_bytes": 1,
    "expires_in": 300,
}


def load_rules_file(path: str | os.PathLike[str]) -> RuleSet:
    """Read and validate a rules file from disk."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise RulesError(str(path), [Problem("$", f"cannot read the rules file: {exc.strerror}")])
    return load_rules(data, source=str(path))


def load_rules(text: str | bytes, *, source: str = "<rules>") -> RuleSet:
    """Parse and validate a rules document; raises ``RulesError`` with every problem found."""
    # Loading builds many small objects that all stay alive: the cyclic GC would scan them
    # again and again for nothing (measured: a reload of 1,000 clients takes 1.9x as long).
    paused = gc.isenabled()
    gc.disable()
    try:
        return _load_rules(text, source)
    finally:
        if paused:
            gc.enable()


def _load_rules(text: str | bytes, source: str) -> RuleSet:
    json_file = source.lower().endswith(".json")
    doc, tree = _load_json(text, source) if json_file else _load_yaml(text, source)
    if not isinstance(doc, dict):
        form = "JSON object" if json_file else "YAML mapping"
        raise RulesError(source, [Problem("$", f"the rules file must be a {form} "
                                               "with version, bucket and clients")])
    oversized = _oversized(doc)
    if oversized:
        raise RulesError(source, [Problem("$", oversized)])
    problems = _schema_problems(doc)
    broken = {p.path for p in problems}
    ruleset, semantic = _build(doc, source, broken)
    problems.extend(semantic)
    if problems:
        raise RulesError(source, _placed(problems, tree()))
    assert ruleset is not None
    return ruleset


def _placed(problems: list[Problem], tree: Tree) -> list[Problem]:
    """The problems with their line and column, in the order they stand in the file.

    A rule's field that the rule takes from ``defaults`` is placed there; anything else not
    written in the file (a built-in default) at the nearest place that is.
    """
    where = _where()
    placed = []
    for problem in problems:
        place = where.locate(tree, problem.path, exact=True)
        inherited = _RULE_FIELD.search(problem.path) if place is None else None
        if inherited:
            place = where.locate(tree, f"$.defaults.{inherited.group(1)}", exact=True)
        line, column = place or where.locate(tree, problem.path)  # type: ignore[misc]
        placed.append(dataclasses.replace(problem, line=line, column=column))
    return sorted(placed, key=lambda p: (p.line, p.column))  # stable: one place keeps the check order


_RULE_FIELD = re.compile(r"^\$\.clients\..+\.rules\[[0-9]+\]\.(.+)$")


def _duplicate_problem(path: str, key: Any, first: tuple[int, int], again: tuple[int, int]) -> Problem:
    """A key written twice: both places, and what to do instead."""
    if key == "api_key_sha256":
        fix = ("list every key of the client under one api_key_sha256 (`broker hash-key --client ID` prints "
               "the client's list with a new key added)")
    elif path == "$.clients":
        fix = f"two clients are named '{key}' (a block pasted twice?): rename one or remove it"
    else:
        fix = "remove one, or merge the two"
    return Problem(f"{path}.{key}" if isinstance(key, str) else path,
                   f"{key!r} is written twice in this mapping (first at line {first[0]}, column {first[1]}): "
                   f"only the last would count, silently; {fix}", line=again[0], column=again[1])


_JSON_HINT = ("a .json rules file must be strict JSON: double-quoted names and strings, no trailing "
              "commas, no comments (or name it .yaml to write YAML)")


class _DuplicateKey(Exception):
    """A JSON object with a key written twice (positions are found afterwards)."""


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    mapping = dict(pairs)
    if len(mapping) != len(pairs):
        raise _DuplicateKey
    return mapping


def _load_json(text: str | bytes, source: str) -> tuple[Any, Callable[[], Tree]]:
    if isinstance(text, str) and text.startswith("\ufeff"):
        text = text[1:]  # json.loads refuses a BOM in str (it skips one in bytes)
    try:
        return _parse_json(text, source, unique=True), lambda: _where().JsonTree(text)
    except _DuplicateKey:
        _parse_json(text, source, unique=False)  # any other problem of the text comes first
    where = _where()
    found = where.duplicate_keys(where.JsonTree(text))
    raise RulesError(source, [_duplicate_problem(*dup) for dup in found])


def _parse_json(text: str | bytes, source: str, *, unique: bool) -> Any:
    line = column = None
    try:
        return json.loads(text, object_pairs_hook=_unique_pairs) if unique else json.loads(text)
    except json.JSONDecodeError as exc:
        line, column = exc.lineno, exc.colno
        problem = f"not valid JSON: {exc.msg}; {_JSON_HINT}"
    except UnicodeDecodeError as exc:
        problem = (f"not valid JSON: the text cannot be decoded ({exc.reason} at byte {exc.start}); "
                   "save it as UTF-8")
    except RecursionError:
        problem = f"the rules nest more than {MAX_RULES_DEPTH} levels deep"
    except ValueError as exc:  # e.g. an integer of more than 4,300 digits
        problem = f"not valid JSON: {exc}"
    raise RulesError(source, [Problem("$", problem, line=line, column=column)])


def _load_yaml(text: str | bytes, source: str) -> tuple[Any, Callable[[], Tree]]:
    import yaml  # only here: rules written as JSON never need PyYAML (~30 ms of a cold start)

    from broker.fast.yamlload import DuplicateKeyError, Loader

    loader = Loader(text)
    try:
        doc = loader.get_single_data()
    except DuplicateKeyError as exc:
        where = _where()
        tree = where.YamlTree(loader.root)
        problems = []
        for dup in exc.duplicates:
            problems.append(_duplicate_problem(where.path_of(tree, dup.mapping) or "$", dup.key,
                                               (dup.first.line + 1, dup.first.column + 1),
                                               (dup.again.line + 1, dup.again.column + 1)))
        raise RulesError(source, problems) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        line, column = (mark.line + 1, mark.column + 1) if mark is not None else (None, None)
        raise RulesError(source, [Problem("$", f"not valid YAML: {problem}", line=line, column=column)]) from None
    except (ValueError, KeyError, AttributeError, TypeError) as exc:  # PyYAML's converters: 0x_, !!bool maybe
        raise RulesError(source, [Problem("$", f"not valid YAML: a tagged or number-like value cannot be "
                                               f"converted ({type(exc).__name__}: {exc}); quote it if "
                                               "it is meant as text")]) from None
    finally:
        loader.dispose()
    root = loader.root
    return doc, lambda: _where().YamlTree(root)


def _where() -> Any:
    import broker.config.where  # only when a problem is to be placed (not on a good file's path)

    return broker.config.where


# Far above any real rules file. Past them the validator would recurse out of the stack
# (nesting) or hang printing a value (YAML aliases of aliases expand to billions of items).
MAX_RULES_DEPTH = 32
# About 32 values a client: room for ~60,000 clients, while a YAML alias bomb is still
# refused after a couple of million steps instead of expanding for ever.
MAX_RULES_VALUES = 2_000_000


def _oversized(doc: Any) -> str | None:
    """Why ``doc`` is too deep or too large to validate, or None (iterative: never recurses).

    The slow twin of :func:`broker.fast.limits.within_limits`, which answers first; this walk
    words the limit that is hit.
    """
    if within_limits(doc, max_depth=MAX_RULES_DEPTH, max_values=MAX_RULES_VALUES):
        return None
    stack: list[tuple[Any, int]] = [(doc, 1)]
    count = 0
    while stack:
        item, depth = stack.pop()
        count += 1
        if count > MAX_RULES_VALUES:
            return (f"the rules expand to more than {MAX_RULES_VALUES} values (YAML aliases "
                    "nested in each other?); write them out plainly")
        if isinstance(item, (dict, list)):
            if depth > MAX_RULES_DEPTH:
                return f"the rules nest more than {MAX_RULES_DEPTH} levels deep"
            stack.extend((v, depth + 1) for v in (item.values() if isinstance(item, dict) else item))
    return None


def _rule_name_at(doc: Any, parts: list[Any]) -> str | None:
    """The rule name for a path under ``clients.<id>.rules[i]``, if the path is in one."""
    if len(parts) >= 4 and parts[0] == "clients" and parts[2] == "rules":
        try:
            rule = doc["clients"][parts[1]]["rules"][parts[3]]
            return str(rule.get("name")) if isinstance(rule, dict) else None
        except (KeyError, IndexError, TypeError):
            return None
    return None


def _schema_problems(doc: Any) -> list[Problem]:
    problems = []
    for err in validator("rules").iter_errors(doc):
        parts = list(err.absolute_path)
        rule = _rule_name_at(doc, parts)
        if err.validator in ("unevaluatedProperties", "additionalProperties"):
            # Each unknown field on its own, at its own line. unevaluatedProperties also names every
            # known sibling of an invalid field (they count as "unevaluated"): those are left out.
            known = property_names(err.schema, validator("rules").schema)
            for name in err.instance:
                if name not in known:
                    problems.append(Problem(json_path([*parts, name]), _unknown_field(name, known), rule))
            continue
        if "propertyNames" in err.schema_path:  # a mapping key, not a value: point at the key
            parts.append(err.instance)
        problems.append(Problem(json_path(parts), _schema_message(err, parts), rule))
    return sorted(problems, key=lambda p: p.path)


def _unknown_field(name: Any, known: set[str]) -> str:
    """"unknown field 'max_byte'; did you mean 'max_bytes'?" (or the fields this place takes)."""
    hint = did_you_mean(str(name), known) or f"; the fields here are: {', '.join(sorted(known))}"
    return f"unknown field {name!r}{hint}"


def _schema_message(err: Any, parts: list[Any]) -> str:
    """jsonschema's message, in the words of a rules file: no regular expressions."""
    if err.validator == "pattern" and isinstance(err.instance, str):
        what = "the name" if "propertyNames" in err.schema_path else "the value"
        if parts[:1] == ["clients"] and len(parts) == 2 and "propertyNames" in err.schema_path:
            what = "the client id"
        return f"{what} {err.instance!r} is not {pattern_words(err.validator_value)}"
    if err.validator == "oneOf" and str(err.schema.get("description", "")).startswith("Bytes"):
        return f"{err.instance!r} is not {SIZE_WORDS}"
    if err.validator == "enum" and isinstance(err.instance, str):
        choices = [c for c in err.validator_value if isinstance(c, str)]
        return (f"{err.instance!r} is not one of {', '.join(map(repr, err.validator_value))}"
                f"{did_you_mean(err.instance, choices)}")
    if err.validator == "required":
        return f"{err.message.split(' is a required')[0]} is required here"
    return err.message


def _inside(path: str, broken: Iterable[str]) -> bool:
    return any(b == path or b.startswith(path + ".") or b.startswith(path + "[") for b in broken)


def _broken_by_client(broken: set[str]) -> dict[str, list[str]]:
    """The problem paths inside each ``$.clients.<id>`` (an id may hold ``.`` or ``[``)."""
    inside: dict[str, list[str]] = {}
    for path in broken:
        if not path.startswith("$.clients."):
            continue
        rest = path[len("$.clients."):]
        for end, char in enumerate(rest):
            if char in ".[":
                inside.setdefault(rest[:end], []).append(path)
        inside.setdefault(rest, []).append(path)
    return inside


def _build(doc: dict[str, Any], source: str, broken: set[str]) -> tuple[RuleSet | None, list[Problem]]:
    """Turn a schema-checked document into a RuleSet, running every check as each part is built.

    Parts the schema already found broken are left out (their checks would only add noise).
    """
    problems: list[Problem] = []
    if any(not b.startswith("$.clients.") for b in broken) or not isinstance(doc.get("clients"), dict):
        return None, problems  # top-level errors: semantic checks would only add noise
    bucket = doc["bucket"]
    region = doc.get("region", "us-east-1")
    max_expires = whole(doc.get("max_expires_in", 3600))
    defaults = {**RULE_DEFAULTS, **doc.get("defaults", {})}
    clients: dict[str, Client] = {}
    api_keys: dict[str, tuple[str, str]] = {}
    principals: dict[str, tuple[str, str]] = {}
    owners = Owners(api_keys, principals)
    broken_in = _broken_by_client(broken)  # per client: no scan of every problem per rule
    for cid, cdoc in doc["clients"].items():
        cpath = f"$.clients.{cid}"
        mine = broken_in.get(cid, ())
        if not isinstance(cdoc, dict) or not isinstance(cdoc.get("rules"), list) or \
                any(not b.startswith(f"{cpath}.rules[") for b in mine):
            continue
        rules: dict[str, Rule] = {}
        incomplete = False  # a rule left out: checks of the client's rules together would mislead
        for i, rdoc in enumerate(cdoc["rules"]):
            rpath = f"{cpath}.rules[{i}]"
            if mine and _inside(rpath, mine):
                incomplete = True
                continue
            name = rdoc["name"]
            if name in rules:
                problems.append(Problem(f"{rpath}.name", f"duplicate rule name '{name}' in client '{cid}'", name))
                continue
            merged = {**defaults, **rdoc}
            rule = _build_rule(cid, merged, bucket, region, max_expires, rpath, problems)
            draft = RuleDraft(rule, merged, max_expires)
            for check in RULE_CHECKS:
                problems.extend(check(draft))
            rules[name] = rule
        callback = cdoc.get("callback") or {}
        client = Client(cid, rules, tuple(cdoc.get("api_key_sha256", ())), tuple(cdoc.get("principals", ())),
                        cdoc.get("default_profile"), cpath, quota=_quota(cdoc.get("quota")),
                        quota_per_user=_quota(cdoc.get("quota_per_user")),
                        callback_url=callback.get("url"), callback_secret_env=callback.get("secret_env"),
                        server_only=bool(cdoc.get("server_only", False)))
        for j, digest in enumerate(client.api_key_sha256):
            api_keys.setdefault(digest, (cid, f"{cpath}.api_key_sha256[{j}]"))
        for j, principal in enumerate(client.principals):
            principals.setdefault(principal, (cid, f"{cpath}.principals[{j}]"))
        for client_check in CLIENT_CHECKS:
            if not (incomplete and client_check in NEEDS_EVERY_RULE):
                problems.extend(client_check(client, owners))
        clients[cid] = client
    quarantine = doc.get("quarantine_prefix", "quarantine/")
    for set_check in RULESET_CHECKS:
        problems.extend(set_check(clients, quarantine))
    cors = doc.get("cors", {}).get("allowed_origins", [])
    digest = hashlib.sha256(repr(doc).encode()).hexdigest()[:16]
    by_key = {digest_: owner for digest_, (owner, _) in api_keys.items()}
    by_principal = {principal: owner for principal, (owner, _) in principals.items()}
    ruleset = RuleSet(1, bucket, region, max_expires, tuple(cors), clients, by_key, by_principal,
                      source, digest, quarantine, session_max_ttl=whole(doc.get("session_max_ttl", 3600)))
    return ruleset, problems


def _build_rule(cid: str, r: dict[str, Any], bucket: str, region: str, max_expires: int,
                path: str, problems: list[Problem]) -> Rule:
    """The Rule a merged rule document describes; a size that does not parse is a problem (and 0)."""
    name = r["name"]
    sizes = {}
    for size_name in ("min_bytes", "max_bytes"):
        try:
            sizes[size_name] = _parse_size(r[size_name]) if size_name in r else None
        except ValueError as exc:
            problems.append(Problem(f"{path}.{size_name}", str(exc), name))
            sizes[size_name] = 0
    enc = r.get("encryption")
    encryption = None if enc is None else (
        Encryption("AES256") if enc == "AES256" else Encryption("aws:kms", enc["kms_key_id"]))
    status = r.get("success_action_status")
    return Rule(
        name=name, client=cid, key_template=r["key"], bucket=r.get("bucket", bucket), region=region,
        min_bytes=sizes["min_bytes"] or 0, max_bytes=sizes["max_bytes"] or 0,
        content_types=tuple([t.lower() for t in r.get("content_types", ())]),
        expires_in=min(whole(r["expires_in"]), max_expires), extensions=tuple(r.get("extensions", ())),
        acl=r.get("acl"), cache_control=r.get("cache_control"), content_disposition=r.get("content_disposition"),
        encryption=encryption, storage_class=r.get("storage_class"),
        metadata=dict(r.get("metadata", {})), client_metadata=tuple(r.get("client_metadata", ())),
        success_action_status=None if status is None else str(whole(status)),
        multipart=bool(r.get("multipart", False)), on_reject=r.get("on_reject", "quarantine"), path=path,
    )


# Rules files repeat the same sizes across clients: each distinct value is parsed once.
def _quota(doc: dict[str, Any] | None) -> Quota | None:
    """A schema-checked ``quota`` mapping as a Quota (None when absent)."""
    if not doc:
        return None
    size = doc.get("bytes_per_day")
    return Quota(doc.get("uploads_per_hour"), None if size is None else _parse_size(size))


_parse_size = functools.lru_cache(maxsize=1024, typed=True)(parse_size)
