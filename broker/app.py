"""The broker application: routes, identification, decide -> sign -> audit, CORS, errors.

``Broker.handle(HttpRequest) -> HttpResponse`` is the one entry point both adapters
(API Gateway/Lambda and WSGI) call. Wire protocols (``broker.protocols``) add their routes
to ``Broker.router`` when :mod:`broker.service` assembles a broker; they all go through
:meth:`Broker.issue`. This module imports no protocol: they depend on it, not it on them.
"""
from __future__ import annotations

import os
import threading
import traceback
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from functools import lru_cache
from typing import Any, Callable

from broker import audit
from broker.audit import AuditLog
from broker.config.sources import RulesProvider
from broker.core import rules
from broker.core.sizes import human_size
from broker.core import sessions
from broker.errors import AuditUnavailable, BrokerError, Denied, InvalidRequest, MethodNotAllowed, Unauthenticated
from broker.fast.ids import new_random_id
from broker.fast.jsontext import compact_bytes
from broker.ledger import GrantRecord, Ledger, Limit, QuotaExceeded
from broker.logs import log_event
from broker.models import (
    Check, Client, Credentials, Decision, Grant, Quota, RequestContext, RuleSet, Session, SignedPost, UploadRequest,
)
from broker.s3.store import S3Store
from broker.web import HttpRequest, HttpResponse, Router

CORS_ALLOW_HEADERS = ("content-type, x-api-key, authorization, x-amz-date, x-requested-with, "
                      "cache-control, x-upload-grant")  # the last two: Fine Uploader


def utcnow() -> datetime:
    """The current UTC time (the default clock)."""
    return datetime.now(timezone.utc)


def _random_grant_secret() -> bytes:
    log_event("grant_secret_random", note="BROKER_GRANT_SECRET is not set: Fine Uploader grant tokens "
                                          "verify only in this process; set it where several serve the broker")
    return os.urandom(32)


def _random_session_secret() -> bytes:
    log_event("session_secret_random", note="BROKER_SESSION_SECRET is not set: session tokens verify only in "
                                            "this process; set it where several serve the broker")
    return os.urandom(32)


def split_session_path(path: str) -> tuple[str, str | None]:
    """``/s/<token>/rest`` -> (``/rest``, token); any other path -> (path, None).

    For clients that cannot set an Authorization header (Uppy's AwsS3 plugin): the token
    rides in front of any route, and is taken off before routing so no route, audit line or
    log ever sees it in a path.
    """
    if not path.startswith("/s/"):
        return path, None
    token, slash, rest = path[3:].partition("/")
    return slash + rest if slash else "/", token


def with_request_id(response: HttpResponse, request_id: str) -> None:
    """Put ``request_id`` into a JSON object body that lacks one (first member; no re-parse)."""
    body = response.body
    if body[:1] == b"{" and b'"request_id"' not in body and \
            response.headers.get("Content-Type", "").startswith("application/json"):
        member = b'"request_id":' + compact_bytes(request_id)
        rest = body[1:]
        response.body = b"{" + member + (b"}" if rest.strip() == b"}" else b"," + rest)


def _limit(scope: str, quota: Quota | None) -> Limit:
    return Limit(scope, quota.uploads_per_hour, quota.bytes_per_day) if quota else Limit(scope)


@lru_cache(maxsize=4096)
def _client_limits(client: str, quota: Quota | None) -> tuple[Limit, ...]:
    """The client's own quota scope (one per client and quota: made once)."""
    return (_limit(f"client:{client}", quota),)


def _quota_words(quota: str, limit: int) -> str:
    return f"{limit} files an hour" if quota == "uploads_per_hour" else f"{human_size(limit)} a day"


def _usage_words(quota: str, usage: int) -> str:
    return f"{usage} granted this hour" if quota == "uploads_per_hour" else f"{human_size(usage)} granted today"


@dataclass
class Call:
    """One request in flight: the request, the time it is judged at, and audit context."""

    broker: "Broker"
    request: HttpRequest
    now: datetime
    context: RequestContext
    client_id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    path_token: str | None = field(default=None, repr=False)  # a session token from /s/<token>/ (never logged)
    session: Session | None = None  # the verified session, once client() has seen one

    def ruleset(self) -> RuleSet:
        """The rules in force (503 if none ever loaded); their digest goes into the call's audit lines."""
        ruleset = self.broker.rules.current()
        self.context.fields["rules"] = ruleset.digest
        return ruleset

    def session_token(self) -> str | None:
        """The session token the call presents: in the path (``/s/<token>/``) or as ``Authorization: Bearer``.

        A bearer credential that is not a session token (an authorizer's JWT) is not one.
        """
        if self.path_token is not None:
            return self.path_token
        authorization = self.request.header("authorization")
        if not authorization:  # the usual API-key call: nothing more to look at
            return None
        scheme, _, value = authorization.strip().partition(" ")
        value = value.strip()
        if scheme.lower() == "bearer" and sessions.looks_like_token(value):
            return value
        return None

    def client(self, ruleset: RuleSet) -> Client:
        """The calling client: from its session token, API key or authorizer principals (401 if unknown).

        An API key together with a session token is ambiguous (400); a ``server_only`` client's
        API key sent from a browser (with an ``Origin`` header) is refused (403).
        """
        api_key = self.request.header("x-api-key")
        token = self.session_token()
        if token is not None:
            if api_key:
                raise InvalidRequest("send an API key or a session token, not both: a browser sends the session "
                                     "token only, the app backend its API key")
            return self._session_client(ruleset, token)
        creds = Credentials(
            api_key_sha256=rules.api_key_hash(api_key) if api_key else None,
            principals=self.request.principals,
        )
        client = rules.identify(ruleset, creds)
        self.client_id = client.id
        fields = self.context.fields  # who, for the audit line (rules: set by ruleset()): never the key, never a token
        if creds.api_key_sha256 is not None:
            fields["key_fingerprint"] = creds.api_key_sha256[:audit.KEY_FINGERPRINT_CHARS]
        else:
            self._note_principal(ruleset, client, fields)
        if api_key and client.server_only and self.request.header("origin"):
            raise Denied(f"client '{client.id}' uses its API key from servers only, and this call came from a "
                         "browser (it has an Origin header); have the app backend create a session (POST /sessions) "
                         "and give the browser its token", check=Check.SERVER_ONLY_KEY.value, client=client.id)
        return client

    def _note_principal(self, ruleset: RuleSet, client: Client, fields: dict[str, str]) -> None:
        """The authorizer's principal that named the client, and its end user (``sub``), for the audit line."""
        for principal in self.request.principals:
            if ruleset.by_principal.get(principal) == client.id:
                fields["principal"] = principal[:256]
                break
        user = self.user()
        if user is not None:
            fields["user"] = user[:256]

    def _session_client(self, ruleset: RuleSet, token: str) -> Client:
        broker = self.broker
        try:
            session = sessions.verify_token(token, broker.session_secrets, now=int(self.now.timestamp()))
        except sessions.SessionError as exc:
            raise Unauthenticated(str(exc)) from None
        client = ruleset.clients.get(session.client)
        if client is None:
            raise Unauthenticated(f"the session's client '{session.client}' is no longer in the rules")
        self.session = session
        self.client_id = client.id
        self.context = replace(self.context, session=session.id, user=session.user)  # the same fields dict
        return client

    def user(self) -> str | None:
        """The end user behind the call, when one is known: the session's user, or the authorizer's ``sub``."""
        if self.session is not None:
            return self.session.user
        for principal in self.request.principals:
            if principal.startswith("sub:"):
                return principal[4:]
        return None


class Broker:
    """Ties rules, signer and audit log together behind one ``handle`` method."""

    #: Renders the metric line(s) counting an audit record ('' for none): decisions and errors.
    #: lambda_handler sets it (``broker.metrics.install``). They go to the audit stream with the
    #: audit line, in the same write.
    metrics: Callable[[dict[str, Any]], str] | None = None

    def __init__(
        self,
        rules_provider: RulesProvider,
        store: S3Store,
        audit_log: AuditLog,
        *,
        clock: Callable[[], datetime] = utcnow,
        new_id: Callable[[], str] = new_random_id,
        max_body_bytes: int = 64 * 1024,
        grant_secret: bytes | None = None,
        events_token: str | None = None,
        ledger: Ledger | None = None,
        session_secret: bytes | None = None,
        session_secret_previous: bytes | None = None,
    ) -> None:
        self.rules = rules_provider
        self.store = store  # every S3 call: signing forms and part URLs, multipart, head, delete
        self.audit_log = audit_log
        self.clock = clock
        self.new_id = new_id
        self.max_body_bytes = max_body_bytes
        # MACs Fine Uploader grant tokens (broker.core.grants); without one, a random one per process
        self.grant_secret = grant_secret or _random_grant_secret()
        # MACs session tokens (broker.core.sessions): signs with the first, verifies with either
        self.session_secrets = (session_secret or _random_session_secret(),) + \
            ((session_secret_previous,) if session_secret_previous else ())
        self.router = Router()  # empty: broker.service adds every protocol's routes
        self.body_limits: dict[str, int] = {}  # paths that take larger bodies than max_body_bytes
        self.events_token = events_token  # BROKER_EVENTS_TOKEN: the store's events may be posted here
        self.ledger = ledger  # BROKER_LEDGER: every grant recorded before its form is returned (None: off)
        self._verifier: Any = None
        self._verifier_lock = threading.Lock()

    #: Deliver completion callbacks in the background (a server), or before returning (Lambda sets False).
    callbacks_in_background = True

    def notifier(self) -> Any:
        """A :class:`broker.callbacks.Notifier` for clients with a ``callback`` (its workers start on first use)."""
        from broker.callbacks import Notifier

        if self.callbacks_in_background:
            return Notifier()
        return Notifier(background=False, attempts=3, backoff=(0.5, 2), timeout=3.0)

    @property
    def verifier(self) -> Any:
        """The :class:`broker.verifier.Verifier` judging stored objects with this broker's rules and store."""
        if self._verifier is None:
            with self._verifier_lock:  # one per broker: its per-object locks must be the only ones
                if self._verifier is None:
                    from broker.verifier import Verifier  # loaded when first needed: a signer never does

                    self._verifier = Verifier(self.rules, self.store, self.audit_log, clock=self.clock,
                                              ledger=self.ledger, notifier=self.notifier())
        return self._verifier

    # ------------------------------------------------------------------ decide, sign, audit

    def issue(self, call: Call, client: Client, ruleset: RuleSet,
              request: UploadRequest) -> tuple[Decision, SignedPost | None]:
        """Evaluate a request, sign it if allowed, and audit the outcome before returning."""
        decision = rules.evaluate(ruleset, client, request, now=call.now, random_id=self.new_id(),
                                  user=call.user(), session=call.session)
        decision = self.record(call, client, decision, request)
        signed = None
        if decision.allowed and decision.grant is not None:
            signed = self.store.sign_post(decision.grant, now=call.now)
        self.emit(audit.record(now=call.now, context=call.context, decision=decision,
                               request=request, signed=signed))
        return decision, signed

    def record(self, call: Call, client: Client, decision: Decision, request: UploadRequest) -> Decision:
        """Record an allowed decision's grant in the ledger before anything is signed, or deny it.

        Every protocol calls this between deciding and signing. With a ledger, a declared size
        becomes the grant's exact size range (that is what is reserved), and a grant that would
        take the client or its user over a quota becomes a ``quota_exceeded`` denial (429, with
        Retry-After). A ledger that cannot be written raises ``LedgerUnavailable`` (503): no
        grant leaves without its record. Without a ledger the decision passes unchanged.
        """
        ledger = self.ledger
        if ledger is None or not decision.allowed or decision.grant is None:
            return decision
        grant = decision.grant
        if request.size is not None:  # reserve what was declared, and let S3 hold the upload to it
            grant = Grant(grant.client, grant.profile, grant.bucket, grant.key, grant.content_type,
                          request.size, request.size, grant.expires_in, grant.fields)
        user = call.user()
        limits = _client_limits(client.id, client.quota)
        if user is not None and client.quota_per_user is not None:
            limits = (*limits, _limit(f"user:{client.id}:{user}", client.quota_per_user))
        if call.session is not None and call.session.max_files is not None:  # the session's files, counted
            limits = (*limits, Limit(f"session:{call.session.id}", uploads_per_hour=call.session.max_files))
        issued = int(call.now.timestamp())
        context = call.context
        record = GrantRecord(
            grant_id=grant.grant_id, client=client.id, profile=grant.profile,
            bucket=grant.bucket, key=grant.key, content_type=grant.content_type, min_bytes=grant.min_bytes,
            max_bytes=grant.max_bytes, reserved_bytes=grant.max_bytes, issued_at=issued,
            expires_at=issued + self.store.expires_in(grant, call.now), declared_size=request.size, user=user,
            protocol=context.protocol, request_id=context.request_id,
            scopes=tuple(limit.scope for limit in limits))  # as stored: the engine need not copy it
        try:
            ledger.reserve(record, limits, now=issued)
        except QuotaExceeded as exc:
            who = "each user of " + client.id if exc.scope.startswith("user:") else \
                "session " + exc.scope[8:] if exc.scope.startswith("session:") else client.id
            return Decision(False, client.id, grant.profile, check=Check.QUOTA_EXCEEDED,
                            reason=f"quota exceeded: {who} may upload {_quota_words(exc.quota, exc.limit)}; "
                                   f"{_usage_words(exc.quota, exc.usage)} so far; try again in {exc.retry_after} s",
                            expected={exc.quota: exc.limit}, actual={exc.quota: exc.usage},
                            retry_after=exc.retry_after)
        return Decision(True, decision.client, decision.profile, grant=grant)

    def emit(self, rec: dict[str, Any]) -> None:
        """Write an audit record; failing to write means failing the request (503).

        Every protocol's decisions pass through here, so this is also where allowed/denied
        decisions are counted (EMF lines on Lambda, written to stdout in the same write as
        the audit line: a decision that could not be audited is not counted either).
        """
        try:
            self.audit_log.emit(rec, also=self.metrics(rec) if self.metrics is not None else "")
        except AuditUnavailable as exc:
            log_event("audit_write_failed", error=exc.message, request_id=rec.get("request_id"))
            raise
        if self.ledger is not None and rec.get("decision") == "denied" and rec.get("client"):
            self.ledger.count_denial(rec["client"], rec.get("profile"), now=int(self.clock().timestamp()))

    # ------------------------------------------------------------------ HTTP

    def handle(self, request: HttpRequest, *, transport: str = "http", invocation: str | None = None) -> HttpResponse:
        """Answer one HTTP request; never raises, never leaks a traceback to the client.

        ``invocation``: the Lambda request id (``context.aws_request_id``), for the audit line.
        """
        now = self.clock()
        request_id = request.request_id or new_random_id()
        user_agent = request.headers.get("user-agent")
        fields: dict[str, str] = {}  # the call's further audit fields (RequestContext.fields)
        origin = request.headers.get("origin")
        if origin:
            fields["origin"] = origin[:audit.MAX_ORIGIN]
        if invocation and invocation != request_id:
            fields["lambda_request_id"] = invocation
        path, path_token = split_session_path(request.path)
        if path_token is not None:  # from here on the path is the route's: the token is never seen in it
            request = replace(request, path=path)
        try:
            if request.method == "OPTIONS":
                route = None
            else:
                route, params = self.router.match(request.method, request.path)
                if params:
                    request = replace(request, path_params=params)
        except BrokerError as exc:  # no such route: audited as the broker's own protocol
            call = Call(self, request, now, RequestContext(request_id, request.source_ip, user_agent,
                                                           transport=transport, fields=fields), path_token=path_token)
            return self._finish(request, call, self.error_response(call, exc))
        call = Call(self, request, now, RequestContext(
            request_id, request.source_ip, user_agent,
            "native" if route is None else route.protocol, transport, fields=fields), path_token=path_token)
        try:
            response = self._preflight(request) if route is None else route.handler(call)
        except BrokerError as exc:
            response = self.error_response(call, exc)
        except Exception:  # a bug: log it for the operator, tell the client nothing inside
            log_event("internal_error", request_id=call.context.request_id,
                      error=traceback.format_exc(limit=8))
            # audited and counted like any error; BrokerError itself is the 500 internal_error
            response = self.error_response(call, BrokerError("the broker failed; the request id is "
                                                             + call.context.request_id))
        return self._finish(request, call, response)

    def _finish(self, request: HttpRequest, call: Call, response: HttpResponse) -> HttpResponse:
        request_id = call.context.request_id
        response.headers.setdefault("X-Request-Id", request_id)
        if response.status >= 400:  # every error body names the request, as its audit line does
            with_request_id(response, request_id)
        self._cors(request, response)
        return response

    def error_response(self, call: Call, exc: BrokerError) -> HttpResponse:
        """Audit an error (best effort), count it, and render it as a JSON response with its request id."""
        request_id = call.context.request_id
        protocol = call.context.protocol  # each protocol's errors under its own event
        rec = audit.record(now=call.now, context=call.context, error=exc, client=call.client_id,
                           event="upload" if protocol == "native" else f"{protocol}_error")
        counted = self.metrics(rec) if self.metrics is not None else ""  # Errors, by status class and code
        if isinstance(exc, AuditUnavailable):  # logged where it happened; there is no audit to write to
            self.audit_log.write_stream(counted)
        else:
            try:
                self.audit_log.emit(rec, also=counted)
            except AuditUnavailable as audit_exc:
                # Nothing was issued, so the client still learns what was wrong with its request.
                log_event("audit_write_failed", error=audit_exc.message, request_id=request_id)
                self.audit_log.write_stream(counted)
        headers = {"X-Request-Id": request_id}
        if isinstance(exc, Unauthenticated):
            headers["WWW-Authenticate"] = 'ApiKey header="x-api-key"'
        elif isinstance(exc, MethodNotAllowed) and exc.details.get("allow"):
            headers["Allow"] = ", ".join(exc.details["allow"])
        return HttpResponse.json(exc.status, {**exc.to_body(), "request_id": request_id}, headers)

    def _allowed_origin(self, origin: str | None) -> str | None:
        if not origin:
            return None
        try:
            origins = self.rules.current().cors_origins
        except BrokerError:
            return None
        if origin in origins:
            return origin
        return "*" if "*" in origins else None

    def _cors(self, request: HttpRequest, response: HttpResponse) -> None:
        allowed = self._allowed_origin(request.header("origin"))
        if allowed:
            response.headers["Access-Control-Allow-Origin"] = allowed
            response.headers["Access-Control-Expose-Headers"] = "X-Request-Id"
        response.headers["Vary"] = "Origin"

    def _preflight(self, request: HttpRequest) -> HttpResponse:
        methods = self.router.methods(request.path)
        if not methods:
            self.router.match("GET", request.path)  # raises NotFound with the usual message
        response = HttpResponse(204)
        if self._allowed_origin(request.header("origin")):
            response.headers.update({
                "Access-Control-Allow-Methods": ", ".join(sorted(methods | {"OPTIONS"})),
                "Access-Control-Allow-Headers": CORS_ALLOW_HEADERS,
                "Access-Control-Max-Age": "600",
            })
        return response

