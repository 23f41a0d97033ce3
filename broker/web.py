"""Transport-neutral HTTP request/response values and a small route table.

The Lambda adapter and the WSGI adapter both turn their input into :class:`HttpRequest`
and render :class:`HttpResponse`; everything between is shared.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping
from urllib.parse import parse_qs

from broker.errors import InvalidRequest, MethodNotAllowed, NotFound, PayloadTooLarge, UnsupportedMediaType
from broker.fast.jsontext import compact_bytes


@dataclass(frozen=True)
class HttpRequest:
    """One HTTP request as the broker sees it; header names are lower-case."""

    method: str
    path: str
    headers: Mapping[str, str] = field(default_factory=dict)
    query: Mapping[str, list[str]] = field(default_factory=dict)
    body: bytes = b""
    source_ip: str | None = None
    request_id: str = ""
    principals: tuple[str, ...] = ()
    path_params: Mapping[str, str] = field(default_factory=dict)

    def header(self, name: str) -> str | None:
        """A header's value by lower-case name."""
        return self.headers.get(name)

    def query_one(self, name: str) -> str | None:
        """The first value of a query parameter."""
        values = self.query.get(name)
        return values[0] if values else None

    def json(self, max_bytes: int) -> Any:
        """The body parsed as JSON; 413/415/400 for oversized, non-JSON or malformed bodies."""
        if len(self.body) > max_bytes:
            raise PayloadTooLarge(f"the request body is {len(self.body)} bytes; the limit is {max_bytes}")
        ctype = (self.header("content-type") or "application/json").split(";")[0].strip().lower()
        if ctype != "application/json" and not ctype.endswith("+json") and ctype != "text/plain":
            raise UnsupportedMediaType(f"send the body as application/json, not {ctype[:80]}")
        try:
            text = self.body.decode("utf-8")
            if text.startswith("\ufeff"):  # what json.loads says; _DECODER.decode does not check
                raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
            value = _DECODER.decode(text)
        except UnicodeDecodeError:
            raise InvalidRequest("the request body is not UTF-8", path="$") from None
        except RecursionError:
            raise InvalidRequest("the request body is nested too deeply", path="$") from None
        except ValueError as exc:
            raise InvalidRequest(f"the request body is not valid JSON: {exc}", path="$") from None
        # Nesting needs an opening bracket per level: few brackets, no walk needed.
        if self.body.count(b"[") + self.body.count(b"{") > MAX_JSON_DEPTH and \
                nested_deeper_than(value, MAX_JSON_DEPTH):
            raise InvalidRequest(f"the request body nests more than {MAX_JSON_DEPTH} levels deep", path="$")
        return value

    def form(self, max_bytes: int) -> dict[str, str]:
        """An ``application/x-www-form-urlencoded`` body as a flat dict (first value wins)."""
        if len(self.body) > max_bytes:
            raise PayloadTooLarge(f"the request body is {len(self.body)} bytes; the limit is {max_bytes}")
        try:
            parsed = parse_qs(self.body.decode("utf-8"), keep_blank_values=True, max_num_fields=100)
        except (UnicodeDecodeError, ValueError) as exc:
            raise InvalidRequest(f"the form body is malformed: {exc}", path="$") from None
        return {k: v[0] for k, v in parsed.items()}


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


# Built once: json.loads with options builds a new decoder on every call.
_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


# No wire format nests deeper than 4. A body nested ~1000 deep parses, but then exhausts the
# stack in the schema validator (repr of the instance) and would end as a 500.
MAX_JSON_DEPTH = 32


def nested_deeper_than(value: Any, limit: int) -> bool:
    """True if lists/objects in ``value`` nest more than ``limit`` levels (iterative: never recurses)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            if depth > limit:
                return True
            stack.extend((v, depth + 1) for v in (item.values() if isinstance(item, dict) else item))
    return False


@dataclass
class HttpResponse:
    """A response: status, headers and a body (bytes)."""

    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, status: int, payload: Any, headers: Mapping[str, str] | None = None) -> "HttpResponse":
        """A JSON response that is never cached."""
        body = compact_bytes(payload)
        return cls(status, body, {"Content-Type": "application/json", "Cache-Control": "no-store",
                                  **(headers or {})})


Handler = Callable[..., HttpResponse]


@dataclass(frozen=True)
class Route:
    """One route: method, a path pattern with ``{name}`` segments, and its handler."""

    method: str
    pattern: str
    handler: Handler
    regex: re.Pattern[str]
    protocol: str = "native"


class Router:
    """Maps (method, path) to a handler; exact paths are a dict lookup, patterns a short scan."""

    def __init__(self) -> None:
        self._exact: dict[tuple[str, str], Route] = {}
        self._patterns: list[Route] = []
        self._paths: dict[str, set[str]] = {}

    def add(self, method: str, pattern: str, handler: Handler, *, protocol: str = "native") -> None:
        """Register ``handler`` for ``method`` on ``pattern`` (e.g. ``/s3/multipart/{id}``)."""
        regex = re.compile("^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", pattern) + "$")
        route = Route(method, pattern, handler, regex, protocol)
        if "{" in pattern:
            self._patterns.append(route)
        else:
            self._exact[(method, pattern)] = route
        self._paths.setdefault(pattern, set()).add(method)

    def match(self, method: str, path: str) -> tuple[Route, dict[str, str]]:
        """The route and path parameters; raises ``NotFound`` or ``MethodNotAllowed``."""
        route = self._exact.get((method, path))
        if route is not None:
            return route, {}
        allowed: set[str] = set(self._paths.get(path, ()))
        for candidate in self._patterns:
            m = candidate.regex.match(path)
            if m:
                if candidate.method == method:
                    return candidate, m.groupdict()
                allowed.add(candidate.method)
        if allowed:  # every path a route serves also answers OPTIONS (CORS preflight)
            raise MethodNotAllowed(f"{method} is not allowed on {path[:200]}; use {', '.join(sorted(allowed))}",
                                   allow=sorted(allowed | {"OPTIONS"}))
        raise NotFound(f"no such endpoint: {path[:200]}")

    def methods(self, path: str) -> set[str]:
        """Every method some route accepts on ``path`` (for CORS preflight)."""
        found = set(self._paths.get(path, ()))
        found.update(r.method for r in self._patterns if r.regex.match(path))
        return found

    def routes(self) -> list[tuple[str, str]]:
        """Every (method, path pattern) registered, sorted (what ``GET /openapi.yaml`` must describe)."""
        return sorted((method, pattern) for pattern, methods in self._paths.items() for method in methods)
