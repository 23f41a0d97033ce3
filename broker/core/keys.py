"""Object keys: templates, server-random names and filename sanitizing. Pure.

A key template such as ``uploads/{client}/{profile}/{date}/{uuid}{ext}`` is
rendered per grant. ``{uuid}`` is mandatory and always server-generated, so two
grants never share a key and no client can choose or overwrite one.
"""
from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
import re
import string
import unicodedata
from datetime import datetime
from typing import Callable
from urllib.parse import quote, unquote

from broker.errors import InvalidRequest
from broker.fast.filenames import screen_ascii
from broker.models import Rule


@dataclass(frozen=True)
class Placeholder:
    """One ``{name}`` a key template may use: how long it can get, what it renders to, how."""

    longest: int  # characters it can add to a key
    pattern: str | None = None  # a regex for every value it renders (None: the rule's client or profile)
    render: Callable[..., str] | None = None  # (random_id, now, filename, user=''); None: fixed per rule


#: Every placeholder a key template may use; an unknown one is refused when rules load.
PLACEHOLDERS: dict[str, Placeholder] = {
    "client": Placeholder(64),
    "profile": Placeholder(64),
    "uuid": Placeholder(32, r"[0-9a-f]{32}", lambda random_id, now, filename, user="": random_id),
    "date": Placeholder(10, r"[0-9]{4}-[0-9]{2}-[0-9]{2}",  # %-formatting: strftime is 10x the cost
                        lambda random_id, now, filename, user="": "%04d-%02d-%02d" % (now.year, now.month, now.day)),
    "year": Placeholder(4, r"[0-9]{4}", lambda random_id, now, filename, user="": "%04d" % now.year),
    "month": Placeholder(2, r"[0-9]{2}", lambda random_id, now, filename, user="": "%02d" % now.month),
    "day": Placeholder(2, r"[0-9]{2}", lambda random_id, now, filename, user="": "%02d" % now.day),
    "ext": Placeholder(11, r"(?:\.[a-z0-9]{1,10})?",
                       lambda random_id, now, filename, user="": extension(filename)),
    "filename": Placeholder(128, r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}",
                            lambda random_id, now, filename, user="": slugify(filename)),
    # The end user (a session's user, or the authorizer's sub): a rule using it denies calls without one.
    "user": Placeholder(128, r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}",
                        lambda random_id, now, filename, user="": user_slug(user)),
}
#: Placeholders that vary per request; everything before the first one is a fixed prefix.
PER_REQUEST = frozenset(name for name, p in PLACEHOLDERS.items() if p.render is not None)

Renderer = Callable[..., str]
MAX_KEY_BYTES = 1024
MAX_FILENAME_CHARS = 128
# Characters S3 documents as safe in keys; template literals must stay within them.
_SAFE_LITERAL = re.compile(r"^[A-Za-z0-9!_.*'()/=-]*$")
_SLUG_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_DOTS = re.compile(r"\.{2,}")
_DASHES = re.compile(r"-{2,}")
_EXT = re.compile(r"^\.[a-z0-9]{1,10}$")
_RANDOM_ID = re.compile(r"[0-9a-f]{32}")
# A name slugify leaves as it is: safe characters, no '..' or '--', no '.' or '-' at either end.
_ALREADY_SLUG = re.compile(r"(?!.*(?:\.\.|--))[A-Za-z0-9_](?:[A-Za-z0-9._-]*[A-Za-z0-9_])?\Z")
_USER_PLAIN = re.compile(r"[A-Za-z0-9-]")
_SLASHES = {"/", "\\", "\u2044", "\u2215", "\u29f8", "\uff0f", "\uff3c", "\u2216", "\ufe68"}


def parse_template(template: str) -> list[tuple[str, str | None]]:
    """Split a template into ``(literal, placeholder)`` pairs; raises ``ValueError``."""
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"malformed template: {exc}") from None
    out = []
    for literal, name, spec, conv in parts:
        if spec or conv:
            raise ValueError(f"placeholder '{{{name}}}' may not have a format spec or conversion")
        out.append((literal, name))
    return out


def template_problems(template: str) -> list[str]:
    """Everything wrong with a key template, as messages (empty when it is fine)."""
    try:
        parts = parse_template(template)
    except ValueError as exc:
        return [str(exc)]
    problems = []
    names = [n for _, n in parts if n is not None]
    for name in names:
        if name not in PLACEHOLDERS:
            choices = ", ".join("{%s}" % p for p in PLACEHOLDERS)
            problems.append(f"unknown placeholder '{{{name}}}' (choose from {choices})")
    if "uuid" not in names:
        problems.append("must contain '{uuid}' so every key is server-random and never overwritten")
    literals = "".join(lit for lit, _ in parts)
    if not _SAFE_LITERAL.match(literals):
        problems.append("literal text may only use A-Z a-z 0-9 and ! _ . * ' ( ) / = -")
    if template.startswith("/"):
        problems.append("must not start with '/'")
    if ".." in literals or "//" in template:
        problems.append("must not contain '..' or '//'")
    if "${" in template:
        problems.append("must not contain '${' (S3 would treat it as ${filename})")
    longest = len(literals.encode()) + sum(PLACEHOLDERS[n].longest for n in names if n in PLACEHOLDERS)
    if longest > MAX_KEY_BYTES:
        problems.append(f"keys could reach {longest} bytes; S3 allows {MAX_KEY_BYTES}")
    return problems


def static_prefix(template: str, *, client: str, profile: str) -> str:
    """The literal prefix every key from this template starts with."""
    prefix = []
    for literal, name in parse_template(template):
        prefix.append(literal)
        if name is None:
            continue
        if name in PER_REQUEST:
            break
        prefix.append(client if name == "client" else profile)
    return "".join(prefix)


def rule_prefix(rule: Rule) -> str:
    """The fixed part of a rule's keys, before the first per-request placeholder."""
    return static_prefix(rule.key_template, client=rule.client, profile=rule.name)


def may_start_with(rule: Rule, prefix: str) -> bool:
    """Whether some key the rule's template can make starts with ``prefix`` (exact for prefixes ending in '/')."""
    literal = rule.key_template.split("{", 1)[0]
    if literal and not (literal.startswith(prefix) or prefix.startswith(literal)):
        return False  # the template's fixed start already tells (most rules: checked once per rules load)
    parts: list[tuple[str, str | None]] = []  # (literal, None) or ("", a placeholder's pattern)
    for literal, name in parse_template(rule.key_template):
        if literal:
            parts.append((literal, None))
        if name in ("client", "profile"):
            parts.append((rule.client if name == "client" else rule.name, None))
        elif name is not None:
            parts.append(("", PLACEHOLDERS[name].pattern if name in PLACEHOLDERS else ".*"))

    def walk(i: int, at: int) -> bool:
        rest = prefix[at:]
        if not rest:
            return True  # the prefix is used up: some keys start with it
        if i == len(parts):
            return False
        literal, pattern = parts[i]
        if pattern is None:
            return walk(i + 1, at + len(literal)) if rest.startswith(literal) else literal.startswith(rest)
        if _begins(pattern, rest):
            return True  # the prefix ends inside this placeholder's value
        return any(re.fullmatch(pattern, rest[:n]) and walk(i + 1, at + n) for n in range(len(rest) + 1))

    return walk(0, 0)


def _begins(pattern: str, text: str) -> bool:
    """Whether some value of a placeholder's ``pattern`` may start with ``text``.

    No placeholder's value holds a '/', so for a prefix ending in '/' (as ``quarantine_prefix``
    must) this is exact: False. For other text it answers True (may), erring on the safe side.
    """
    return "/" not in text


def screen_unicode(filename: str) -> tuple[str, str | None, bool]:
    """(NFC name, first control/format character or None, whether it has a slash or look-alike).

    The slow twin of :func:`broker.fast.filenames.screen_ascii`, used for non-ASCII names.
    """
    name = unicodedata.normalize("NFC", filename)
    bad = next((c for c in name if unicodedata.category(c) in ("Cc", "Cf", "Cs", "Zl", "Zp")), None)
    folded = unicodedata.normalize("NFKC", name)
    return name, bad, any(c in _SLASHES for c in name) or any(c in _SLASHES for c in folded)


def check_filename(filename: str) -> str:
    """Return the NFC form of a client filename, or raise ``InvalidRequest`` if it is hostile."""
    name, bad, slashed = (screen_ascii if filename.isascii() else screen_unicode)(filename)
    if bad is not None:
        raise InvalidRequest(
            f"filename contains the control or format character U+{ord(bad):04X}; "
            "send the plain file name",
            path="$.filename",
        )
    if slashed:
        raise InvalidRequest(
            "filename must be a base name without '/' or '\\' (or look-alike slashes)",
            path="$.filename",
        )
    if name.strip(". ") == "":
        raise InvalidRequest("filename must not be empty, '.' or '..'", path="$.filename")
    decoded = name
    for _ in range(2 if "%" in name else 0):  # '%2e%2e%2f', '%252f', '%00': whatever decodes
        decoded = unquote(decoded)              # the name later must not see them
        if decoded.strip(". ") == "" or any(c in _SLASHES or unicodedata.category(c) in ("Cc", "Cf")
                                            for c in decoded):
            raise InvalidRequest(
                "filename hides '..', a slash or a control character in %-escapes; "
                "send the plain file name",
                path="$.filename",
            )
    if len(name) > 1024:
        raise InvalidRequest("filename is longer than 1024 characters", path="$.filename")
    return name


def slugify(filename: str) -> str:
    """Reduce a checked filename to ``[A-Za-z0-9._-]``, without '..' or a leading dot."""
    if len(filename) <= MAX_FILENAME_CHARS and _ALREADY_SLUG.match(filename):
        return filename  # what _slug_steps would give back unchanged (most names)
    return _slug_steps(filename)


def _slug_steps(filename: str) -> str:
    ascii_name = unicodedata.normalize("NFKD", filename).encode("ascii", "ignore").decode()
    slug = _SLUG_UNSAFE.sub("-", ascii_name)
    slug = _DOTS.sub(".", slug)
    slug = _DASHES.sub("-", slug).strip(".-")
    if len(slug) > MAX_FILENAME_CHARS:
        stem, dot, ext = slug.rpartition(".")
        keep = MAX_FILENAME_CHARS - len(ext) - 1
        slug = f"{stem[:keep]}.{ext}" if dot and 0 < len(ext) <= 10 else slug[:MAX_FILENAME_CHARS]
    return slug or "file"


def user_slug(user: str) -> str:
    """An end user as one key segment: ``[A-Za-z0-9._-]``, never empty, '.' or '..', one user per slug.

    Letters, digits and '-' stay; a '.' stays unless it would lead or follow another '.'; every
    other character (the '_' escape itself included) becomes ``_xx`` per UTF-8 byte, so two
    users never share a segment (``a@b`` is ``a_40b``, ``a-b`` stays ``a-b``). A slug longer than
    128 characters becomes ``_z`` and the user's SHA-256 (no escape begins ``_z``).
    """
    out = []
    for i, char in enumerate(user):
        if _USER_PLAIN.match(char) or (char == "." and i > 0 and user[i - 1] != "."):
            out.append(char)
        else:
            out.append("".join("_%02x" % b for b in char.encode("utf-8", "surrogatepass")))
    slug = "".join(out)
    if len(slug) > MAX_FILENAME_CHARS:
        slug = "_z" + hashlib.sha256(user.encode("utf-8", "surrogatepass")).hexdigest()
    return slug or "_"


def extension(filename: str) -> str:
    """The lower-case extension with its dot (``.png``), or ``''`` if there is no safe one."""
    _, dot, ext = filename.rpartition(".")
    candidate = f".{ext.lower()}" if dot else ""
    return candidate if _EXT.match(candidate) else ""


def render_key(
    template: str,
    *,
    client: str,
    profile: str,
    random_id: str,
    now: datetime,
    filename: str,
    user: str | None = None,
) -> str:
    """Render a validated template for one grant; ``random_id`` is 32 hex digits.

    ``user``: the end user for ``{user}`` (the rules engine denies before rendering a template
    that needs one when none is known).
    """
    if len(random_id) != 32 or not _RANDOM_ID.fullmatch(random_id):
        raise ValueError("random_id must be 32 lower-case hex digits (a uuid4().hex)")
    pieces, tail = _key_plan(template, client, profile)
    out = []
    for literal, render in pieces:
        out.append(literal)
        out.append(render(random_id, now, filename, user or ""))
    out.append(tail)
    return "".join(out)


@functools.lru_cache(maxsize=8192)
def _key_plan(template: str, client: str, profile: str) -> tuple[tuple[tuple[str, Renderer], ...], str]:
    """A template with ``{client}``/``{profile}`` filled in: (literal, per-request renderer) pairs + tail.

    An unknown placeholder raises ``KeyError`` (``template_problems`` refuses such templates at load).
    """
    pieces: list[tuple[str, Renderer]] = []
    literal: list[str] = []
    for text, name in parse_template(template):
        literal.append(text)
        if name == "client":
            literal.append(client)
        elif name == "profile":
            literal.append(profile)
        elif name is not None:
            render = PLACEHOLDERS[name].render
            assert render is not None
            pieces.append(("".join(literal), render))
            literal = []
    return tuple(pieces), "".join(literal)


def content_disposition(disposition: str, filename: str) -> str:
    """An RFC 6266 header value: ASCII fallback plus ``filename*`` for non-ASCII names."""
    slug = slugify(filename)
    value = f'{disposition}; filename="{slug}"'
    if not filename.isascii() or slug != filename:
        value += f"; filename*=UTF-8''{quote(filename, safe='')}"
    return value
