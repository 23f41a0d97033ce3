"""The broker's exception hierarchy.

Every error the HTTP API can return is a subclass of :class:`BrokerError` and
carries its own machine-readable ``code`` and HTTP ``status``::

    BrokerError
    ├── RequestError (4xx: the client sent something we cannot accept)
    │   ├── InvalidRequest        400 invalid_request     body/headers/event malformed
    │   ├── Unauthenticated       401 unauthenticated     no or unknown API key / principal / session token
    │   ├── Denied                403 denied              a credential used where it may not be (``check``)
    │   ├── NotFound              404 not_found           unknown route
    │   │   └── UploadNotFound                            no such multipart upload in the store
    │   ├── MethodNotAllowed      405 method_not_allowed
    │   ├── PayloadTooLarge       413 payload_too_large   request body over the limit
    │   └── UnsupportedMediaType  415 unsupported_media_type
    ├── ServiceUnavailable        503 (the broker refuses to issue anything)
    │   ├── RulesUnavailable      503 rules_unavailable   no valid rules were ever loaded
    │   ├── AuditUnavailable      503 audit_unavailable   the audit log cannot be written
    │   └── StoreUnavailable      503 service_unavailable the store refused a call or is out of reach
    └── ConfigError               (start-up only: rules or settings are invalid)
        └── RulesError            every problem in a rules file, each with a JSON path

A denial by the rules is *not* an exception: it is a :class:`broker.models.Decision`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class BrokerError(Exception):
    """Base class for every error raised by the broker."""

    code = "internal_error"
    status = 500

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = {k: v for k, v in details.items() if v is not None}

    def to_body(self) -> dict[str, Any]:
        """The JSON body sent to the client: code, message and safe details."""
        return {"error": self.code, "message": self.message, **self.details}


class RequestError(BrokerError):
    """The client sent something the broker cannot accept (4xx)."""

    code = "bad_request"
    status = 400


class InvalidRequest(RequestError):
    """The request body, headers or event are malformed; ``path`` says where."""

    code = "invalid_request"
    status = 400


class Unauthenticated(RequestError):
    """No credentials, or credentials that match no client."""

    code = "unauthenticated"
    status = 401


class Denied(RequestError):
    """A credential the broker knows, used where it may not be; ``check`` names the rule broken.

    (A request the *rules* deny is a :class:`broker.models.Decision`, not this.)
    """

    code = "denied"
    status = 403


class NotFound(RequestError):
    """No route matches the request's path."""

    code = "not_found"
    status = 404


class UploadNotFound(NotFound):
    """The store has no such multipart upload for this key (completed, aborted, or never made)."""


class MethodNotAllowed(RequestError):
    """The route exists but not for this HTTP method."""

    code = "method_not_allowed"
    status = 405


class PayloadTooLarge(RequestError):
    """The request body is larger than the broker accepts."""

    code = "payload_too_large"
    status = 413


class UnsupportedMediaType(RequestError):
    """The request body is not JSON (or the form encoding a route expects)."""

    code = "unsupported_media_type"
    status = 415


class ServiceUnavailable(BrokerError):
    """The broker cannot safely issue anything right now (fail closed)."""

    code = "service_unavailable"
    status = 503


class RulesUnavailable(ServiceUnavailable):
    """No valid rules have ever been loaded, so nothing may be issued."""

    code = "rules_unavailable"


class AuditUnavailable(ServiceUnavailable):
    """The audit log cannot be written; an unaudited grant is never issued."""

    code = "audit_unavailable"


class StoreUnavailable(ServiceUnavailable):
    """An S3 call failed: the store refused it (``code``, ``status``) or could not be reached.

    Raised only by :class:`broker.s3.store.S3Store`, which turns every botocore error into
    one of the broker's own, once. ``store_message`` is the store's own text (never a secret).
    """

    def __init__(self, message: str, *, code: str = "", status: int | None = None,
                 store_message: str | None = None, unreachable: bool = False) -> None:
        super().__init__(message)
        self.store_code = code
        self.store_status = status
        self.store_message = store_message
        self.unreachable = unreachable


class ConfigError(BrokerError):
    """Settings or rules are invalid; raised at start-up or on reload."""

    code = "config_error"


@dataclass(frozen=True)
class Problem:
    """One problem found in a rules file: where it is, which rule, and what is wrong."""

    path: str
    message: str
    rule: str | None = None
    line: int | None = None  # 1-based, where the problem stands in the file (None: unknown)
    column: int | None = None

    def __str__(self) -> str:
        where = f"line {self.line}, column {self.column}: " if self.line is not None else ""
        rule = f"rule '{self.rule}': " if self.rule else ""
        return f"{where}{rule}{self.message} (at {self.path})"


class RulesError(ConfigError):
    """A rules file failed validation; ``problems`` lists every problem found."""

    code = "rules_invalid"

    def __init__(self, source: str, problems: list[Problem]) -> None:
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        n = len(problems)
        super().__init__(f"{source}: {n} problem{'s' if n != 1 else ''} in the rules:\n{lines}")
