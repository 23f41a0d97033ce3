"""The assembled service: a :class:`~broker.app.Broker` wired to its rules, store, audit log and protocols.

``build(settings)`` is what the Lambda handler, ``broker serve``'s workers, ``make run`` and
the tests call: the rules source (a file, or ``s3://`` read through the store), one S3
client in one :class:`~broker.s3.store.S3Store`, the audit log, and every protocol's routes.
``assemble`` does the last step for parts made elsewhere (tests hand in their own).
"""
from __future__ import annotations

import os
import signal
import sys
from datetime import datetime
from typing import Any, Callable

from broker.app import Broker, utcnow
from broker.audit import AuditLog
from broker.config.settings import Settings
from broker.config.sources import FileSource, RulesProvider, RulesSource, S3Source
from broker.errors import BrokerError, ConfigError
from broker.logs import log_event
from broker.ledger import Ledger, LedgerUnavailable
from broker.ledger.engines import open_ledger
from broker.protocols import register_all
from broker.s3.client import make_s3_client
from broker.s3.store import S3Store


def assemble(rules_provider: RulesProvider, store: S3Store, audit_log: AuditLog, **options: Any) -> Broker:
    """A Broker from its parts, with every protocol's routes (``options``: as ``Broker`` takes them)."""
    broker = Broker(rules_provider, store, audit_log, **options)
    register_all(broker)
    return broker


def build(settings: Settings, *, s3_client: Any = None, audit_stream: Any = sys.stdout,
          clock: Callable[[], datetime] = utcnow, ledger: Ledger | None = None) -> Broker:
    """Assemble a Broker from settings: rules provider, one S3 client in one store, audit log, routes."""
    holder: dict[str, Any] = {}

    def client(region: str = "us-east-1") -> Any:
        if "client" not in holder:
            holder["client"] = s3_client or make_s3_client(settings, region)
        return holder["client"]

    source: RulesSource
    if settings.rules.startswith("s3://"):
        source = S3Source(settings.rules, S3Store(client()))
    else:
        source = FileSource(settings.rules)
    provider = RulesProvider(source, reload_seconds=settings.rules_reload_seconds)
    ruleset = provider.refresh()
    store = S3Store(client(ruleset.region if ruleset else "us-east-1"))
    if ledger is None:
        ledger = ledger_from(settings, ruleset.region if ruleset else None)
    if ledger is None and ruleset is not None:
        unheld = sorted(c.id for c in ruleset.clients.values() if c.quota or c.quota_per_user)
        if unheld:
            log_event("quota_not_enforced", clients=unheld,
                      note="these clients have quotas, but BROKER_LEDGER is off: nothing counts them; "
                           "set BROKER_LEDGER=sqlite:///var/ledger.db (one machine) or dynamodb://table")
    return assemble(provider, store, AuditLog(stream=audit_stream, path=settings.audit_file),
                    clock=clock, max_body_bytes=settings.max_body_bytes,
                    grant_secret=settings.grant_secret.encode() if settings.grant_secret else None,
                    events_token=settings.events_token, ledger=ledger,
                    session_secret=settings.session_secret.encode() if settings.session_secret else None,
                    session_secret_previous=settings.session_secret_previous.encode()
                    if settings.session_secret_previous else None)


def ledger_from(settings: Settings, region: str | None = None) -> Ledger | None:
    """The ledger BROKER_LEDGER names (None for off); ConfigError says why it cannot be opened."""
    try:
        return open_ledger(settings.ledger, endpoint_url=settings.dynamodb_endpoint_url,
                           region=settings.region or region)
    except LedgerUnavailable as exc:
        raise ConfigError(f"BROKER_LEDGER={settings.ledger}: {exc.message}") from None
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def serve_worker() -> Any:
    """The RSGI app of one ``broker serve`` worker process: settings from the environment, its own Broker.

    ``broker serve`` has already built a Broker from the same settings and checked it, so this
    normally cannot fail; if it does (the rules file broke in between), the worker says why on
    stderr and exits, and the server stops (exit status 1).
    """
    from broker.adapters import rsgi, wsgi

    # A forked worker starts with the handlers of granian's main process, which only flag that
    # process: Ctrl-C or SIGTERM while this worker builds its broker would be lost, and the server
    # would wait for a worker that never stops. Until granian sets the worker's own, they end it.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    wsgi.stop_with_the_server(signal.SIGTERM)
    wsgi.drop_http_variables(os.environ)
    try:
        broker = build(Settings.from_env(os.environ), audit_stream=wsgi.LineStream(1))
        if broker.rules.last_error is not None or broker.rules.refresh() is None:
            err = broker.rules.last_error
            raise SystemExit(f"broker serve: worker {os.getpid()}: the rules do not load, so nothing would "
                             f"be issued:\n{getattr(err, 'message', err)}")
    except BrokerError as exc:
        raise SystemExit(f"broker serve: worker {os.getpid()}: {exc.message}") from None
    return rsgi.RsgiApp(broker, threads=int(os.environ.get(SERVE_THREADS_VARIABLE) or wsgi.DEFAULT_THREADS))


#: What each ``broker serve`` worker process imports and calls (granian's factory target).
SERVE_TARGET = f"{__name__}:serve_worker"
#: How ``broker serve --threads N`` reaches its workers: the threads that run requests in each.
SERVE_THREADS_VARIABLE = "BROKER_SERVE_THREADS"
