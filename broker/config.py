"""Settings from the environment and rules from YAML or JSON: parsed and validated once, loudly.

``load_rules`` checks a rules document against ``schemas/rules.schema.json`` and then
semantically, and raises :class:`~broker.errors.RulesError` listing *every* problem with its
JSON path and rule name. A broker whose rules do not load issues nothing.
"""
from __future__ import annotations

import functools
import gc
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from . import keys, schemas
from .errors import ConfigError, Problem, RulesError
from .mediatypes import EXTENSION_TYPES, type_matches
from .models import Client, Encryption, Rule, RuleSet

DEFAULT_RULES = str(Path(__file__).resolve().parent.parent / "rules.yaml")
SINGLE_POST_LIMIT = 5 * 1000**3  # S3 refuses a single POST above 5 GB
MULTIPART_LIMIT = 5 * 1024**4  # and any object above 5 TiB
_UNITS = {"B": 1, "kB": 1000, "KB": 1000, "MB": 1000**2, "GB": 1000**3, "TB": 1000**4,
          "KiB": 1024, "kiB": 1024, "MiB": 1024**2, "GiB": 1024**3, "TiB": 1024**4}
_SIZE = re.compile(r"^([0-9]+(?:\.[0-9]+)?)\s*([kKMGT]i?B|B)$")

RULE_DEFAULTS: dict[str, Any] = {
    "key": "uploads/{client}/{profile}/{date}/{uuid}{ext}",
    "min_bytes": 1,
    "expires_in": 300,
    "acl": "private",
}


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class Settings:
    """Process settings, read once from the environment (see README, "Settings")."""

    rules: str = DEFAULT_RULES
    rules_reload_seconds: float = 2.0
    audit_file: str | None = None
    region: str | None = None
    s3_endpoint_url: str | None = None
    s3_addressing_style: str = "auto"
    max_body_bytes: int = 64 * 1024
    host: str = "127.0.0.1"
    port: int = 8000
    grant_secret: str | None = field(default=None, repr=False)  # BROKER_GRANT_SECRET

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Settings":
        """Build settings from ``env`` (default ``os.environ``); bad values raise ``ConfigError``."""
        env = os.environ if env is None else env
        endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or None
        style = env.get("BROKER_S3_ADDRESSING_STYLE", "path" if endpoint else "auto")
        if style not in ("auto", "path", "virtual"):
            raise ConfigError(
                f"BROKER_S3_ADDRESSING_STYLE={style!r} is not one of: auto, path, virtual"
            )
        rules = env.get("BROKER_RULES") or DEFAULT_RULES
        default_reload = 60.0 if rules.startswith("s3://") else 2.0
        return cls(
            rules=rules,
            rules_reload_seconds=_number(env, "BROKER_RULES_RELOAD_SECONDS", default_reload, float),
            audit_file=env.get("BROKER_AUDIT_FILE") or None,
            region=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or None,
            s3_endpoint_url=endpoint,
            s3_addressing_style=style,
            max_body_bytes=_number(env, "BROKER_MAX_BODY_BYTES", 64 * 1024, int),
            host=env.get("BROKER_HOST", "127.0.0.1"),
            port=_number(env, "BROKER_PORT", 8000, int),
            grant_secret=_grant_secret(env),
        )


def _grant_secret(env: Mapping[str, str]) -> str | None:
    """BROKER_GRANT_SECRET: shared by every instance so each can verify the others' grant tokens."""
    value = env.get("BROKER_GRANT_SECRET") or None
    if value is not None and len(value.encode()) < 32:
        raise ConfigError("BROKER_GRANT_SECRET must be at least 32 bytes; make one with: "
                          "python -c \"import secrets; print(secrets.token_urlsafe(48))\"")
    return value


def _number(env: Mapping[str, str], name: str, default: Any, kind: Callable[[str], Any]) -> Any:
    raw = env.get(name)
    if raw in (None, ""):
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a valid {kind.__name__}") from None
    if value < 0:
        raise ConfigError(f"{name}={raw!r} must not be negative")
    return value


# --------------------------------------------------------------------------- rules


def parse_size(value: int | float | str) -> int:
    """Bytes from an int or a string such as ``'5 MB'`` (decimal) or ``'5 MiB'`` (binary)."""
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():  # 5e6 or 1000.0: JSON Schema's integers too
        return int(value)
    match = _SIZE.match(value.strip())
    if not match:
        raise ValueError(f"{value!r} is not a size such as 1048576, '5 MB' or '5 MiB'")
    number, unit = match.groups()
    return int(float(number) * _UNITS[unit])


def api_key_hash(api_key: str) -> str:
    """The SHA-256 hex digest stored in ``rules.yaml`` for an API key."""
    return hashlib.sha256(api_key.encode("utf-8")).hexdigest()


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
    doc, form = _parse(text, source)
    if not isinstance(doc, dict):
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
        raise RulesError(source, problems)
    assert ruleset is not None
    return ruleset


_JSON_TEXT = re.compile(r"\ufeff?\s*\{")
_JSON_BYTES = re.compile(rb"(?:\xef\xbb\xbf)?\s*\{")
_JSON_HINT = ("a .json rules file must be strict JSON: double-quoted names and strings, no trailing "
              "commas, no comments (or name it .yaml to write YAML)")


def _parse(text: str | bytes, source: str) -> tuple[Any, str]:
    """The document and what it was written as: JSON for a ``.json`` source, else YAML.

    YAML text that starts with ``{`` and is valid JSON is read by the JSON parser, a tenth
    of the time; anything it refuses (YAML's flow style, comments) is read as YAML.
    """
    if source.lower().endswith(".json"):
        return _load_json(text, source), "JSON object"
    if (_JSON_BYTES if isinstance(text, bytes) else _JSON_TEXT).match(text):  # type: ignore[arg-type]
        try:
            return json.loads(text), "YAML mapping"
        except (ValueError, RecursionError):
            pass
    return _load_yaml(text, source), "YAML mapping"


def _load_json(text: str | bytes, source: str) -> Any:
    if isinstance(text, str) and text.startswith("\ufeff"):
        text = text[1:]  # json.loads refuses a BOM in str (it skips one in bytes)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        problem = f"not valid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}; {_JSON_HINT}"
    except UnicodeDecodeError as exc:
        problem = (f"not valid JSON: the text cannot be decoded ({exc.reason} at byte {exc.start}); "
                   "save it as UTF-8")
    except RecursionError:
        problem = f"the rules nest more than {MAX_RULES_DEPTH} levels deep"
    except ValueError as exc:  # e.g. an integer of more than 4,300 digits
        problem = f"not valid JSON: {exc}"
    raise RulesError(source, [Problem("$", problem)])


def _load_yaml(text: str | bytes, source: str) -> Any:
    import yaml  # only here: rules written as JSON never need PyYAML (~30 ms of a cold start)

    from .yamlload import Loader

    try:
        return yaml.load(text, Loader=Loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown position"
        problem = getattr(exc, "problem", None) or str(exc)
        raise RulesError(source, [Problem("$", f"not valid YAML at {where}: {problem}")]) from None
    except (ValueError, KeyError, AttributeError, TypeError) as exc:  # PyYAML's converters: 0x_, !!bool maybe
        raise RulesError(source, [Problem("$", f"not valid YAML: a tagged or number-like value cannot be "
                                               f"converted ({type(exc).__name__}: {exc}); quote it if "
                                               "it is meant as text")]) from None


# Far above any real rules file. Past them the validator would recurse out of the stack
# (nesting) or hang printing a value (YAML aliases of aliases expand to billions of items).
MAX_RULES_DEPTH = 32
# About 32 values a client: room for ~60,000 clients, while a YAML alias bomb is still
# refused after a couple of million steps instead of expanding for ever.
MAX_RULES_VALUES = 2_000_000


def _oversized(doc: Any) -> str | None:
    """Why ``doc`` is too deep or too large to validate, or None (iterative: never recurses)."""
    if _within_limits(doc):
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


def _within_limits(doc: Any) -> bool:
    """True when ``doc`` is within both limits: what ``_oversized`` finds, a few times faster.

    It counts the values the same way (every item, aliases as often as they are reached) but
    stacks only the containers; when it says False, ``_oversized`` walks again to say which
    limit is hit first.
    """
    if not isinstance(doc, (dict, list)):
        return True
    count = 1
    stack: list[tuple[Any, int]] = [(doc, 1)]
    pop, push = stack.pop, stack.append
    while stack:
        item, depth = pop()
        if depth > MAX_RULES_DEPTH:
            return False
        values = item.values() if isinstance(item, dict) else item
        count += len(values)
        if count > MAX_RULES_VALUES:
            return False
        for value in values:
            if isinstance(value, (dict, list)):
                push((value, depth + 1))
    return True


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
    errors = list(schemas.validator("rules").iter_errors(doc))
    # When a property of a rule is invalid, unevaluatedProperties also flags every sibling
    # (they count as "unevaluated"); drop that noise where a real error explains it.
    real = [list(e.absolute_path) for e in errors if e.validator != "unevaluatedProperties"]
    problems = []
    for err in errors:
        parts = list(err.absolute_path)
        if err.validator == "unevaluatedProperties" and any(r[:len(parts)] == parts for r in real):
            continue
        problems.append(Problem(schemas.json_path(parts), _schema_message(err), _rule_name_at(doc, parts)))
    return sorted(problems, key=lambda p: p.path)


def _schema_message(err: Any) -> str:
    """jsonschema's message, made shorter and clearer for the common cases."""
    if err.validator == "unevaluatedProperties" or err.validator == "additionalProperties":
        return f"unknown field(s): {err.message.split('(')[-1].rstrip(')')}"
    if err.validator == "pattern" and isinstance(err.instance, str):
        return f"{err.instance!r} does not match the expected form {err.validator_value}"
    if err.validator == "oneOf" and str(err.schema.get("description", "")).startswith("Bytes"):
        return f"{err.instance!r} is not a size such as 1048576, '5 MB' or '5 MiB'"
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
    """Turn a schema-checked document into a RuleSet, collecting semantic problems."""
    problems: list[Problem] = []
    if any(not b.startswith("$.clients.") for b in broken) or not isinstance(doc.get("clients"), dict):
        return None, problems  # top-level errors: semantic checks would only add noise
    bucket = doc["bucket"]
    region = doc.get("region", "us-east-1")
    max_expires = _whole(doc.get("max_expires_in", 3600))
    defaults = {**RULE_DEFAULTS, **doc.get("defaults", {})}
    clients: dict[str, Client] = {}
    by_key: dict[str, str] = {}
    by_principal: dict[str, str] = {}
    key_paths: dict[str, str] = {}
    broken_in = _broken_by_client(broken)  # per client: no scan of every problem per rule
    for cid, cdoc in doc["clients"].items():
        cpath = f"$.clients.{cid}"
        mine = broken_in.get(cid, ())
        if not isinstance(cdoc, dict) or not isinstance(cdoc.get("rules"), list) or \
                any(not b.startswith(f"{cpath}.rules[") for b in mine):
            continue
        rules: dict[str, Rule] = {}
        for i, rdoc in enumerate(cdoc["rules"]):
            rpath = f"{cpath}.rules[{i}]"
            if mine and _inside(rpath, mine):
                continue
            name = rdoc["name"]
            if name in rules:
                problems.append(Problem(f"{rpath}.name", f"duplicate rule name '{name}' in client '{cid}'", name))
                continue
            rule, rule_problems = _build_rule(cid, {**defaults, **rdoc}, bucket, region, max_expires, rpath)
            problems.extend(rule_problems)
            rules[name] = rule
        default_profile = cdoc.get("default_profile")
        if default_profile is not None and default_profile not in rules:
            problems.append(Problem(f"{cpath}.default_profile",
                                    f"default_profile '{default_profile}' is not one of this client's "
                                    f"rules ({', '.join(rules)})"))
        hashes = tuple(cdoc.get("api_key_sha256", ()))
        principals = tuple(cdoc.get("principals", ()))
        if not hashes and not principals:
            problems.append(Problem(cpath, f"client '{cid}' has neither api_key_sha256 nor principals, "
                                           "so no request can ever be recognised as it"))
        for j, digest in enumerate(hashes):
            if digest in by_key:
                problems.append(Problem(f"{cpath}.api_key_sha256[{j}]",
                                        f"this API key hash is already used by client '{by_key[digest]}' "
                                        f"(at {key_paths[digest]}); each key must identify one client"))
            else:
                by_key[digest] = cid
                key_paths[digest] = f"{cpath}.api_key_sha256[{j}]"
        for j, principal in enumerate(principals):
            if principal in by_principal:
                problems.append(Problem(f"{cpath}.principals[{j}]",
                                        f"principal '{principal}' is already mapped to client "
                                        f"'{by_principal[principal]}'"))
            else:
                by_principal[principal] = cid
        clients[cid] = Client(cid, rules, hashes, principals, default_profile, cpath)
    problems.extend(_overlap_problems(clients))
    cors = doc.get("cors", {}).get("allowed_origins", [])
    digest = hashlib.sha256(repr(doc).encode()).hexdigest()[:16]
    ruleset = RuleSet(1, bucket, region, max_expires, tuple(cors), clients, by_key, by_principal,
                      source, digest)
    return ruleset, problems


def _whole(number: Any) -> Any:
    """201 for 201.0: JSON Schema counts integral floats as integers, S3 wants "201"."""
    return int(number) if isinstance(number, float) and number.is_integer() else number


def _build_rule(cid: str, r: dict[str, Any], bucket: str, region: str, max_expires: int,
                path: str) -> tuple[Rule, list[Problem]]:
    name = r["name"]
    problems: list[Problem] = []

    def problem(field: str, message: str) -> None:
        problems.append(Problem(f"{path}.{field}" if field else path, message, name))

    sizes = {}
    for size_name in ("min_bytes", "max_bytes"):
        try:
            sizes[size_name] = _parse_size(r[size_name]) if size_name in r else None
        except ValueError as exc:
            problem(size_name, str(exc))
            sizes[size_name] = 0
    min_bytes, max_bytes = sizes["min_bytes"] or 0, sizes["max_bytes"]
    if max_bytes is None:
        problem("", "max_bytes is required (in the rule or in defaults): every upload needs a size limit")
        max_bytes = 0
    elif min_bytes > max_bytes:
        problem("max_bytes", f"max_bytes ({max_bytes}) must be >= min_bytes ({min_bytes})")
    limit = MULTIPART_LIMIT if r.get("multipart") else SINGLE_POST_LIMIT
    if max_bytes > limit:
        what = "5 TiB, the largest S3 object" if r.get("multipart") else \
               "5 GB, the most one POST can carry (set multipart: true for larger files)"
        problem("max_bytes", f"max_bytes ({max_bytes}) is above {what}")
    if "content_types" not in r:
        problem("", "content_types is required (in the rule or in defaults); use ['*/*'] to allow any")
    content_types = tuple([t.lower() for t in r.get("content_types", ())])
    for msg in _template_problems(r["key"]):
        problem("key", f"key template {r['key']!r}: {msg}")
    expires_in = _whole(r["expires_in"])
    if expires_in > max_expires:
        problem("expires_in", f"expires_in ({expires_in}s) is above max_expires_in ({max_expires}s)")
    extensions = tuple(r.get("extensions", ()))
    for where, message in _extension_problems(extensions, content_types):
        problem(where, message)
    enc = r.get("encryption")
    encryption = None if enc is None else (
        Encryption("AES256") if enc == "AES256" else Encryption("aws:kms", enc["kms_key_id"]))
    status = r.get("success_action_status")
    rule = Rule(
        name=name, client=cid, key_template=r["key"], bucket=r.get("bucket", bucket), region=region,
        min_bytes=min_bytes, max_bytes=max_bytes, content_types=content_types,
        expires_in=min(expires_in, max_expires), extensions=extensions, acl=r["acl"],
        cache_control=r.get("cache_control"), content_disposition=r.get("content_disposition"),
        encryption=encryption, storage_class=r.get("storage_class"),
        metadata=dict(r.get("metadata", {})), client_metadata=tuple(r.get("client_metadata", ())),
        success_action_status=None if status is None else str(_whole(status)),
        multipart=bool(r.get("multipart", False)), path=path,
    )
    return rule, problems


# Rules files repeat the same templates, sizes and type lists across clients: each distinct
# value is checked once (pure functions; bounded caches, reused by reloads).
_template_problems = functools.lru_cache(maxsize=1024)(keys.template_problems)
_parse_size = functools.lru_cache(maxsize=1024, typed=True)(parse_size)


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


def _overlap_problems(clients: Mapping[str, Client]) -> list[Problem]:
    """Prefixes of different clients in one bucket where one is a prefix of the other."""
    entries = []
    for client in clients.values():
        for rule in client.rules.values():
            try:
                entries.append((rule.bucket, rule.key_prefix, client.id, rule))
            except ValueError:
                continue  # a malformed template is already reported
    entries.sort(key=lambda e: (e[0], e[1]))
    problems, seen = [], set()
    for i, (bucket, prefix, cid, rule) in enumerate(entries):
        for other_bucket, other_prefix, other_cid, other in entries[i + 1:]:
            if other_bucket != bucket or not other_prefix.startswith(prefix):
                break
            if other_cid != cid and (cid, other_cid) not in seen:
                seen.add((cid, other_cid))
                problems.append(Problem(
                    f"{rule.path}.key",
                    f"keys of client '{cid}' (prefix '{prefix}') overlap keys of client '{other_cid}' "
                    f"rule '{other.name}' (prefix '{other_prefix}') in bucket '{bucket}': one client "
                    "could write among the other's objects; start each template with a prefix that "
                    "ends in '{client}/'",
                    rule.name,
                ))
    return problems


def __getattr__(name: str) -> Any:
    if name == "_Loader":  # the YAML loader, imported on first use (bench/bench.py times it)
        from .yamlload import Loader

        return Loader
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
