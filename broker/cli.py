"""The ``broker`` command: check rules, explain a decision, serve locally, make API keys."""
from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
from datetime import datetime, timezone
from typing import Any, Sequence

from broker import __version__
from broker.config import DEFAULT_RULES, Settings, load_rules_file
from broker.core.rules import api_key_hash
from broker.errors import BrokerError, ConfigError, RulesError

EPILOG = """\
examples:
  broker check rules.yaml
  broker explain --client web-app --profile avatars --filename me.png \\
                 --content-type image/png --size 120000
  broker hash-key                      # a new API key and the line for rules.yaml
  BROKER_AUDIT_FILE=var/audit.jsonl broker serve --port 8000
  broker verify --all --dry-run        # judge every stored object against the rules
  broker probe-store                   # which guarantees does this store enforce itself?

settings come from the environment (see README, "Settings"): BROKER_RULES (a path or
s3://bucket/key), BROKER_AUDIT_FILE, AWS_ENDPOINT_URL_S3, AWS_REGION, ...
"""


def _rules_path(value: str | None) -> str:
    return value or os.environ.get("BROKER_RULES") or DEFAULT_RULES


def cmd_check(args: argparse.Namespace) -> int:
    """Validate a rules file; list every problem; exit 1 on any."""
    path = _rules_path(args.rules)
    try:
        ruleset = load_rules_file(path)
    except RulesError as exc:
        print(f"{exc.source}: {len(exc.problems)} problem(s)", file=sys.stderr)
        for problem in exc.problems:
            print(f"  - {problem}", file=sys.stderr)
        return 1
    n_rules = sum(len(c.rules) for c in ruleset.clients.values())
    print(f"{path}: OK ({len(ruleset.clients)} clients, {n_rules} rules, "
          f"buckets: {', '.join(sorted(ruleset.buckets()))})")
    if args.verbose:
        for client in ruleset.clients.values():
            for rule in client.rules.values():
                print(f"  {client.id}/{rule.name}: s3://{rule.bucket}/{rule.key_template}  "
                      f"{rule.min_bytes}-{rule.max_bytes} bytes  {' '.join(rule.content_types)}  "
                      f"expires in {rule.expires_in}s")
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    """Dry-run one request through the rules and print the decision (no signing, no I/O)."""
    from broker.core import rules as engine
    from broker.models import UploadRequest

    try:
        ruleset = load_rules_file(_rules_path(args.rules))
    except RulesError as exc:
        print(exc.message, file=sys.stderr)
        return 2
    client = ruleset.clients.get(args.client)
    if client is None:
        print(f"unknown client '{args.client}'; clients: {', '.join(sorted(ruleset.clients))}",
              file=sys.stderr)
        return 2
    metadata = dict(item.split("=", 1) for item in args.metadata or [])
    request = UploadRequest(args.filename, args.content_type, args.size, args.profile, metadata)
    now = datetime.now(timezone.utc)
    try:
        decision = engine.evaluate(ruleset, client, request, now=now, random_id=secrets.token_hex(16))
    except BrokerError as exc:
        _print({"decision": "error", "error": exc.code, "message": exc.message, **exc.details}, args)
        return 1
    if not decision.allowed:
        _print({"decision": "denied", "client": decision.client, "rule": decision.profile,
                "check": decision.check.value if decision.check else None,
                "reason": decision.reason, "expected": decision.expected,
                "actual": decision.actual}, args)
        return 1
    grant = decision.grant
    assert grant is not None
    conditions = [{"bucket": grant.bucket}, {"key": grant.key}, *grant.conditions()]
    _print({"decision": "allowed", "client": grant.client, "rule": grant.profile,
            "bucket": grant.bucket, "key": grant.key, "expires_in": grant.expires_in,
            "conditions": conditions,
            "note": "the key's random part differs on every real request"}, args)
    return 0


def _print(payload: dict[str, Any], args: argparse.Namespace) -> None:
    if args.json:
        print(json.dumps(payload, indent=2, default=str))
        return
    for name, value in payload.items():
        if name == "conditions":
            print("conditions that would be signed:")
            for cond in value:
                print(f"  {json.dumps(cond)}")
        else:
            print(f"{name}: {value if isinstance(value, str) else json.dumps(value, default=str)}")


def cmd_hash_key(args: argparse.Namespace) -> int:
    """Print a new random API key (or hash a given one) and its rules.yaml entry."""
    key = sys.stdin.readline().strip() if args.stdin else args.key
    if not key:
        key = "bk_" + secrets.token_urlsafe(32)
        print(f"api key (give it to the client; it is not stored anywhere): {key}")
    print(f"rules.yaml entry:  api_key_sha256: [\"{api_key_hash(key)}\"]")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the HTTP server (granian, one Broker per worker process) for the API and the upload page."""
    from broker.adapters.wsgi import default_workers, serve
    from broker.logs import log_event
    from broker.service import SERVE_TARGET, build

    overrides: dict[str, str] = {}
    if args.rules:
        overrides["BROKER_RULES"] = args.rules
    if args.audit_file:
        overrides["BROKER_AUDIT_FILE"] = args.audit_file
    if not os.environ.get("BROKER_GRANT_SECRET"):
        # One secret for every worker of this server (and any worker restarted after a crash), so
        # a Fine Uploader grant token issued by one verifies in all of them. Not across servers:
        # set BROKER_GRANT_SECRET for that.
        overrides["BROKER_GRANT_SECRET"] = secrets.token_urlsafe(32)
    env = {**os.environ, **overrides}
    try:
        settings = Settings.from_env(env)
    except ConfigError as exc:
        print(f"broker serve: {exc.message}", file=sys.stderr)
        return 2
    host = args.host or settings.host
    port = args.port if args.port is not None else settings.port
    workers = args.workers or default_workers()
    # Build and check one Broker here, as each worker will: bad rules, an audit file that cannot
    # be opened or bad settings stop the server now, with the reason, before any worker starts.
    try:
        broker = build(settings)
    except BrokerError as exc:
        print(f"broker serve: {exc.message}", file=sys.stderr)
        return 2
    if broker.rules.last_error is not None or broker.rules.refresh() is None:
        err = broker.rules.last_error
        print(f"broker serve: the rules do not load, so nothing would be issued:\n"
              f"{getattr(err, 'message', err)}", file=sys.stderr)
        return 2
    broker.audit_log.close()  # the workers open their own
    del broker
    _check_port(host, port)
    if "BROKER_GRANT_SECRET" in overrides:
        log_event("grant_secret_random", note="BROKER_GRANT_SECRET is not set: Fine Uploader grant tokens "
                                              "verify only in this server's workers; set it where several "
                                              "servers serve the broker")
    log_event("serving", url=f"http://{host}:{port}/", workers=workers, threads=args.threads,
              rules=settings.rules, audit_file=settings.audit_file, store=settings.s3_endpoint_url or "AWS S3")
    os.environ.update(overrides)  # the workers read their settings from the environment
    sys.stdout.flush()  # nothing buffered here may be written again by forked workers
    try:
        serve(host, port, factory=SERVE_TARGET, workers=workers, threads=args.threads)
    except KeyboardInterrupt:
        pass
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    """Verify one object, or sweep a prefix (or every rule's prefix), and print each verdict."""
    from broker.config.sources import parse_s3_url
    from broker.service import build

    targets = [t for t in (args.object, args.prefix) if t]
    if len(targets) + bool(args.all) != 1:
        print("broker verify: give one s3://bucket/key, or --prefix s3://bucket/prefix/, or --all",
              file=sys.stderr)
        return 2
    env = {**os.environ, **({"BROKER_RULES": args.rules} if args.rules else {})}
    try:
        settings = Settings.from_env(env)
        broker = build(settings, audit_stream=sys.stderr)  # audit lines never mix with the verdicts
        broker.rules.current()
        if args.object:
            bucket, key = parse_s3_url(args.object)
            return _print_outcome(broker.verifier.verify_object(bucket, key, source="cli", act=not args.dry_run),
                                  args, single=True)
        if args.prefix:
            bucket, _, prefix = args.prefix[len("s3://"):].partition("/") if args.prefix.startswith("s3://") else ("", "", "")
            if not bucket:
                print(f"broker verify: --prefix {args.prefix!r} is not s3://bucket/prefix/", file=sys.stderr)
                return 2
            areas = [(bucket, prefix)]
        else:
            areas = broker.verifier.prefixes()
        counts = {"verified": 0, "rejected": 0, "skipped": 0}
        progress = sys.stderr.isatty() and not args.json
        for bucket, prefix in areas:
            for outcome in broker.verifier.sweep(bucket, prefix, act=not args.dry_run, source="cli-sweep"):
                counts[outcome.status] += 1
                if outcome.status != "skipped" or args.verbose:
                    _print_outcome(outcome, args, single=False)
                if progress:
                    print(f"\r{sum(counts.values())} checked: {counts['verified']} verified, "
                          f"{counts['rejected']} rejected, {counts['skipped']} skipped", end="", file=sys.stderr)
        if progress:
            print(file=sys.stderr)
        summary = {"summary": counts, "dry_run": args.dry_run}
        print(json.dumps(summary) if args.json else
              f"{sum(counts.values())} objects: {counts['verified']} verified, {counts['rejected']} rejected, "
              f"{counts['skipped']} skipped (already judged, or in quarantine)")
        return 1 if counts["rejected"] else 0
    except BrokerError as exc:
        print(f"broker verify: {exc.message}", file=sys.stderr)
        return 2


def _print_outcome(outcome: Any, args: argparse.Namespace, *, single: bool) -> int:
    verdict = outcome.verdict
    rec = {"status": outcome.status, "object": f"s3://{outcome.bucket}/{outcome.key}", "action": outcome.action,
           "note": outcome.note or None, "quarantine_key": outcome.quarantine_key}
    if verdict is not None:
        rec.update(rule=f"{verdict.rule.client}/{verdict.rule.name}" if verdict.rule else None,
                   sniffed=verdict.sniffed, size=verdict.obj.size, content_type=verdict.obj.content_type,
                   checks=[{"check": f.check.value, "reason": f.reason, "expected": f.expected, "actual": f.actual}
                           for f in verdict.failures])
    if args.json:
        print(json.dumps({k: v for k, v in rec.items() if v is not None}, default=str))
    else:
        line = f"{outcome.status:9} {rec['object']}"
        if verdict is not None and verdict.failures:
            line += ": " + "; ".join(f"{f.reason} ({f.check.value})" for f in verdict.failures)
        elif outcome.note:
            line += f" ({outcome.note})"
        if outcome.quarantine_key:
            line += f" -> moved to s3://{outcome.bucket}/{outcome.quarantine_key}"
        print(line)
    if not single:
        return 0
    status = outcome.status
    if status == "skipped" and outcome.note.startswith("already "):  # judged before: that verdict stands
        status = outcome.note.split()[1]
    return {"verified": 0, "rejected": 1}.get(status, 2)


def _check_port(host: str, port: int) -> None:
    import socket

    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise SystemExit(f"broker serve: cannot listen on {host}:{port} ({exc.strerror}); "
                             "is another broker running? choose another with --port or BROKER_PORT")


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser, with one sub-command per task."""
    from broker.adapters.wsgi import DEFAULT_THREADS, default_workers

    parser = argparse.ArgumentParser(
        prog="broker", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="Issue S3 presigned POST forms to browsers, only for uploads rules.yaml allows.")
    parser.add_argument("--version", action="version", version=f"broker {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("check", help="validate a rules file and list every problem",
                       description="Validate a rules file against the schema and semantically; "
                                   "exit 1 if there is any problem, listing all of them.")
    p.add_argument("rules", nargs="?", help=f"rules file (default: $BROKER_RULES or {DEFAULT_RULES})")
    p.add_argument("-v", "--verbose", action="store_true", help="list every client's rules")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("explain", help="dry-run one upload request through the rules",
                       description="Print what the broker would decide for one request, and for an "
                                   "allowed one the policy conditions it would sign. Exit 0 if "
                                   "allowed, 1 if denied, 2 on a usage error.")
    p.add_argument("--rules", help="rules file (default: $BROKER_RULES or the bundled rules.yaml)")
    p.add_argument("--client", required=True, help="client id as in rules.yaml")
    p.add_argument("--profile", help="rule name (default: the client's default profile)")
    p.add_argument("--filename", required=True, help="the file's original name")
    p.add_argument("--content-type", required=True, help="the media type, e.g. image/png")
    p.add_argument("--size", type=int, help="declared size in bytes")
    p.add_argument("--metadata", action="append", metavar="NAME=VALUE", help="client metadata (repeatable)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser(
        "serve", help="run the HTTP server (API + upload page)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="""\
Serve the HTTP API and the upload page with granian (an HTTP server written in Rust)
from worker processes, each with its own broker. The settings, rules and audit file
are checked here first: a problem stops the server with the reason, before any worker
starts. Settings come from the environment (see README, "Settings"); flags override
them. Ctrl-C or SIGTERM stops it.""",
        epilog="""\
workers and threads:
  A request is CPU-bound Python and one process runs Python on one CPU at a time, so
  throughput grows with --workers up to the number of CPUs, the default (each worker
  takes ~70 MB). Each worker loads the rules once at start and re-reads them on its own
  (BROKER_RULES_RELOAD_SECONDS). --threads run requests within a worker; threads of one
  process take turns on the GIL (4 threads cost 10-50% more CPU per request than 1, the
  default), so add some only to keep a worker answering while a request waits on S3:
  Fine Uploader's and Uppy's multipart and success endpoints call S3, and so does
  re-reading rules from s3://; POST /uploads and the signatures never do.

the audit log with several workers:
  Every worker appends to BROKER_AUDIT_FILE and to standard output with one write() per
  line, so lines do not mix; across workers their order is only roughly the order of
  the requests.
  Fine Uploader grant tokens are signed with BROKER_GRANT_SECRET; without it, one random
  secret shared by this server's workers (set it when other servers must accept them).

examples:
  BROKER_AUDIT_FILE=var/audit.jsonl broker serve --port 8000
  broker serve --rules s3://config-bucket/rules.yaml --host 0.0.0.0 --workers 4""")
    p.add_argument("--rules", help="rules file or s3:// URL (default: $BROKER_RULES)")
    p.add_argument("--host", help="address to bind (default: $BROKER_HOST or 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default: $BROKER_PORT or 8000)")
    p.add_argument("--audit-file", help="JSON Lines audit file (default: $BROKER_AUDIT_FILE)")
    p.add_argument("--workers", type=_positive, metavar="N",
                   help="worker processes, each with its own broker (default: the number of CPUs, "
                        f"here {default_workers()})")
    p.add_argument("--threads", type=_positive, default=DEFAULT_THREADS, metavar="N",
                   help=f"threads per worker that run requests (default: {DEFAULT_THREADS})")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser(
        "verify", help="check stored objects against the rules: tag, or quarantine",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="""\
Judge stored objects as the verifier does for each new upload: the key must come from one
rule's template, the size lie in its range, the stored Content-Type be one it allows, the
bytes be of that type (read from the first 4 KiB: HTML, SVG, scripts and programs never pass
as another type), and the stored headers and metadata be exactly those the rule sets.
A verified object is tagged broker-verdict=verified; a rejected one is moved to the rules'
quarantine_prefix (or deleted, if its rule says on_reject: delete). Each verdict is one audit
line (to BROKER_AUDIT_FILE, else standard error). Objects already judged are skipped.""",
        epilog="""\
exit status:
  one object: 0 verified (now, or before), 1 rejected, 2 missing, outside the rules, or an error
  a sweep:    0 nothing rejected, 1 something rejected, 2 an error

examples:
  broker verify s3://broker-uploads/uploads/web-app/avatars/2026-11-29/<uuid>.png
  broker verify --prefix s3://broker-uploads/uploads/ --dry-run     # judge, change nothing
  broker verify --all --json > verdicts.jsonl                        # every rule's prefix""")
    p.add_argument("object", nargs="?", help="one object, s3://bucket/key")
    p.add_argument("--prefix", metavar="S3_URL", help="every unjudged object under s3://bucket/prefix/")
    p.add_argument("--all", action="store_true", help="every unjudged object under every rule's prefix")
    p.add_argument("--dry-run", action="store_true", help="judge and print, but tag, move and audit nothing")
    p.add_argument("--rules", help="rules file or s3:// URL (default: $BROKER_RULES)")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("-v", "--verbose", action="store_true", help="also list the objects skipped")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("hash-key", help="make a new API key and its rules.yaml line",
                       description="Print a new random API key and the api_key_sha256 entry for "
                                   "rules.yaml. With --key or --stdin, hash an existing key instead.")
    p.add_argument("--key", help="hash this key instead of making one (visible in shell history)")
    p.add_argument("--stdin", action="store_true", help="read the key to hash from standard input")
    p.set_defaults(func=cmd_hash_key)

    from broker.deploy import register_cli  # deployment helpers add their own sub-commands
    from broker.probe import register_cli as register_probe  # broker probe-store

    register_cli(sub)
    register_probe(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``broker`` command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args))
    except BrokenPipeError:  # e.g. `broker iam-policy | head`: the reader left, nothing is wrong
        sys.stderr.close()
        return 0
