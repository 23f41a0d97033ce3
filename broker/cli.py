"""The ``broker`` command: check rules, compare two rules files, explain a decision, serve locally, make API keys."""
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
from broker.core.sizes import human_size
from broker.errors import BrokerError, ConfigError, RulesError

EPILOG = """\
examples:
  broker check rules.yaml
  broker check --production --auth jwt rules.yaml   # fit for a stack with JwtIssuer set?
  broker diff <(git show origin/main:rules.yaml) rules.yaml   # what a change grants
  broker explain --client web-app --profile avatars --filename me.png \\
                 --content-type image/png --size 120000
  broker hash-key --client web-app     # a new API key: web-app's key list with it added
  BROKER_AUDIT_FILE=var/audit.jsonl broker serve --port 8000
  broker verify --all --dry-run        # judge every stored object against the rules
  broker probe-store                   # which guarantees does this store enforce itself?

settings come from the environment (see README, "Settings"): BROKER_RULES (a path or
s3://bucket/key), BROKER_AUDIT_FILE, AWS_ENDPOINT_URL_S3, AWS_REGION, ...
"""


CHECK_EPILOG = """\
with --production, also refused (make package runs the same check):
  the demo API keys         demo-web-app-key and demo-partner-acme-key: their keys are
                            written in the repository's rules.yaml, anyone can use them
  http:// origins           in cors.allowed_origins, localhost included: a page anyone on
                            the network path can change could upload
  '*' origins               any page on the web could upload
  unreachable identities    what the stack's --auth mode never produces:
                              api-key  (no authorizer)           principals of any kind
                              jwt      (JwtIssuer set)           API keys, principal:...
                              lambda   (LambdaAuthorizerArn set) API keys, sub:..., group:...

exit status: 0 fit, 1 a problem or a refusal (each with its line and the fix), 2 a bad option

examples:
  broker check rules.yaml
  broker check --production rules.yaml                  # a stack recognising API keys
  broker check --production --auth jwt mobile-rules.yaml
  broker check --production --parameter-overrides "JwtIssuer=https://cognito-idp.eu-west-1.amazonaws.com/POOL"
"""

#: ``broker check --production --auth`` choices (broker.config.production.AUTH_MODES).
AUTH_CHOICES = ("api-key", "jwt", "lambda")


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
            for name, quota in (("quota", client.quota), ("quota per user", client.quota_per_user)):
                if quota is not None:
                    print(f"  {client.id}: {name} {quota_words(quota)} (needs BROKER_LEDGER)")
            if client.callback_url:
                print(f"  {client.id}: verdicts POSTed to {client.callback_url.split('?')[0]}, "
                      f"signed with ${client.callback_secret_env}")
            for rule in client.rules.values():
                print(f"  {client.id}/{rule.name}: s3://{rule.bucket}/{rule.key_template}  "
                      f"{rule.min_bytes}-{rule.max_bytes} bytes  {' '.join(rule.content_types)}  "
                      f"expires in {rule.expires_in}s")
    if args.production:
        return _check_production(path, ruleset, args.auth, args.parameter_overrides)
    return 0


def _check_production(path: str, ruleset: Any, auth: str | None, overrides: str | None) -> int:
    """``check --production``: list what the rules must not take to a deployment; exit 1 on any."""
    from broker.config import production

    if overrides is not None:
        try:
            stack_auth = production.auth_mode_for(production.parse_parameter_overrides(overrides))
        except ValueError as exc:
            print(f"broker check: --parameter-overrides: {exc}", file=sys.stderr)
            return 2
        if auth is not None and auth != stack_auth:
            print(f"broker check: --auth {auth} contradicts --parameter-overrides, which make a stack with "
                  f"--auth {stack_auth} ({production.AUTH_MODES[stack_auth].stack}); give one of them",
                  file=sys.stderr)
            return 2
        auth = stack_auth
    auth = auth or "api-key"
    found = production.refusals(ruleset, auth=auth)
    if found:
        try:
            with open(path, "rb") as fh:
                found = production.placed(found, fh.read())
        except OSError:
            pass
    mode = production.AUTH_MODES[auth]
    if not found:
        print(f"{path}: fit for production with --auth {auth} ({mode.stack})")
        return 0
    print(f"{path}: {len(found)} production refusal(s) with --auth {auth} ({mode.stack}):", file=sys.stderr)
    for refusal in found:
        print(f"  - {refusal.words(path)}", file=sys.stderr)
    return 1


def cmd_diff(args: argparse.Namespace) -> int:
    """Compare two rules files: what the change grants and revokes; exit 1 if it widens anything."""
    from broker.core import rulesdiff
    from broker.deploy.iam import PolicyError, Target, policy_document, verifier_policy_document

    sets = []
    for location in (args.old, args.new):
        try:
            sets.append(_diff_side(location))
        except ConfigError as exc:
            print(f"broker diff: {exc.message}", file=sys.stderr)
            return 2
    old, new = sets
    target = Target(args.partition, args.account_id or "ACCOUNT")
    try:
        iam = {role: rulesdiff.policy_delta(make(old, target=target), make(new, target=target))
               for role, make in (("signer", policy_document), ("verifier", verifier_policy_document))}
    except PolicyError as exc:
        print(f"broker diff: {exc}", file=sys.stderr)
        return 2
    report = rulesdiff.Report(tuple(rulesdiff.diff(old, new)), iam)
    counts = rulesdiff.summary(report.changes)
    if args.json:
        print(json.dumps({
            "format": DIFF_FORMAT, "old": {"source": args.old, "digest": old.digest},
            "new": {"source": args.new, "digest": new.digest}, "widens": report.widens,
            "summary": {kind: counts[kind] for kind in rulesdiff.KINDS},
            "changes": [c.as_dict() for c in report.changes],
            "iam": {role: delta.as_dict() for role, delta in iam.items()}}, indent=2))
        return 1 if report.widens else 0
    marks = {"added": "+", "removed": "-", "widened": ">", "narrowed": "<", "changed": "~"}
    total = len(report.changes)
    print(f"{args.old} -> {args.new}: {total} change{'s' if total != 1 else ''} ("
          + ", ".join(f"{counts[kind]} {kind}" for kind in rulesdiff.KINDS) + ")")
    for change in report.changes:
        flag = " [widens]" if change.kind == "changed" and change.widens else ""
        print(f"  {marks[change.kind]} {change.where()}: {change.text}{flag}")
    for role, delta in iam.items():
        if not delta.added and not delta.removed:
            print(f"IAM, {role} role: no change")
            continue
        print(f"IAM, {role} role:")
        for mark, grants in (("+", delta.added), ("-", delta.removed)):
            for grant in grants:
                cond = f" if {json.dumps(grant['condition'], sort_keys=True)}" if grant["condition"] else ""
                print(f"  {mark} {', '.join(grant['actions'])} on {grant['resource']}{cond}")
    if report.widens:
        print("this change WIDENS what callers or the roles may do: have it reviewed before it is deployed "
              "(exit status 1)")
    else:
        print("nothing is widened" + (" (exit status 0)" if total else ""))
    return 1 if report.widens else 0


def _diff_side(location: str) -> Any:
    """The rules at a path, or in an S3 object (``s3://bucket/key``, read once, as the broker reads them)."""
    if not location.startswith("s3://"):
        return load_rules_file(location)
    from broker.config.sources import S3Source
    from broker.s3.client import make_s3_client
    from broker.s3.store import S3Store

    settings = Settings.from_env(os.environ)
    ruleset, _ = S3Source(location, S3Store(make_s3_client(settings, "us-east-1"))).fetch(None)
    return ruleset


#: The ``format`` of ``broker diff --json`` (schemas/rules-diff.schema.json); bumped on any breaking change.
DIFF_FORMAT = "broker-rules-diff/1"


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
    quotas = {name: quota_words(quota) for name, quota in (("client", client.quota),
                                                           ("each user", client.quota_per_user)) if quota}
    reserved = args.size if args.size is not None else grant.max_bytes
    _print({"decision": "allowed", "client": grant.client, "rule": grant.profile,
            "bucket": grant.bucket, "key": grant.key, "expires_in": grant.expires_in,
            "conditions": conditions,
            **({"quota": quotas, "reserves": f"{human_size(reserved)} of bytes_per_day until the upload is "
                                             "verified (then its real size), or released if never used"}
               if quotas else {}),
            "note": "the key's random part differs on every real request"
                    + ("; quotas are counted by the grant ledger (BROKER_LEDGER), not here" if quotas else "")
                    + ("; with a ledger, the declared size is signed exactly (content-length-range "
                       f"{args.size}-{args.size})" if args.size is not None else "")},
           args)
    return 0


def quota_words(quota: Any) -> str:
    """'1000 files an hour, 5 GB a day' for a Quota."""
    parts = []
    if quota.uploads_per_hour is not None:
        parts.append(f"{quota.uploads_per_hour} files an hour")
    if quota.bytes_per_day is not None:
        parts.append(f"{human_size(quota.bytes_per_day)} a day")
    return ", ".join(parts)


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
    """Print a new random API key (or hash a given one) as a list item to paste, or a client's whole new list."""
    if args.stdin or args.key is not None:
        key = sys.stdin.readline().strip() if args.stdin else args.key.strip()
        if not key:
            where = "standard input was empty" if args.stdin else "--key was empty"
            print(f"no key to hash: {where}. Pass the key (printf '%s' \"$KEY\" | broker hash-key --stdin), "
                  "or leave out --stdin and --key to make a new one", file=sys.stderr)
            return 2
        made = None
    else:
        key = made = "bk_" + secrets.token_urlsafe(32)
    digest = api_key_hash(key)
    block = listed = None
    if args.client:
        try:
            listed, block = _api_key_block(_rules_path(args.rules), args.client, digest)
        except (RulesError, LookupError) as exc:
            print(exc.message if isinstance(exc, RulesError) else exc.args[0], file=sys.stderr)
            return 2
    if args.json:
        print(json.dumps({"api_key": made, "api_key_sha256": digest, "client": args.client,
                          **({"api_key_sha256_list": listed} if listed is not None else {})}, indent=2))
        return 0
    if made:  # on standard error: standard output is only what to paste into the rules
        print(f"api key (give it to the client; it is not stored anywhere): {made}", file=sys.stderr)
    if block is None:
        print("# Add this item to the client's api_key_sha256 list in the rules, under the keys already there (a\n"
              "# second 'api_key_sha256:' line would replace them); remove the old key once no caller uses it:")
        print(f"      - {digest}  # added {datetime.now(timezone.utc):%Y-%m-%d}")
    else:
        print(block, end="")
    return 0


def _api_key_block(path: str, client_id: str, digest: str) -> tuple[list[str], str]:
    """A client's api_key_sha256 list with ``digest`` added, and the block that replaces the one in ``path``."""
    from broker.config.where import JsonTree, YamlTree, locate

    ruleset = load_rules_file(path)
    client = ruleset.clients.get(client_id)
    if client is None:
        raise LookupError(f"unknown client '{client_id}' in {path}; clients: {', '.join(sorted(ruleset.clients))}")
    owner = ruleset.by_api_key.get(digest)
    if owner is not None and owner != client_id:
        raise LookupError(f"this key already belongs to client '{owner}' in {path}: each key must identify one client")
    keys = list(client.api_key_sha256)
    new = digest not in keys
    listed = keys + [digest] if new else keys
    with open(path, "rb") as file:
        text = file.read()
    if path.lower().endswith(".json"):
        tree: Any = JsonTree(text)
    else:
        import yaml

        tree = YamlTree(yaml.compose(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)))
    here = locate(tree, f"$.clients.{client_id}.api_key_sha256", exact=True)
    if here is None:  # no keys yet: the field goes in the client's block
        line, column = locate(tree, f"$.clients.{client_id}") or (1, 1)
        column += 2
        head = f"# In {path}, add this to client '{client_id}' (line {line}):\n"
    else:
        line, column = here
        kept = "the key is in the list already: nothing to change" if not new else \
            f"its {len(keys)} key{'s' if len(keys) != 1 else ''} kept, the new one last"
        head = (f"# In {path}, replace the api_key_sha256 list of client '{client_id}' (line {line}) with this\n"
                f"# ({kept}). Remove an old key once no caller uses it.\n")
    today = f"{datetime.now(timezone.utc):%Y-%m-%d}"
    pad = " " * (column - 1)
    if isinstance(tree, JsonTree):
        return listed, f'{head}{pad}"api_key_sha256": {json.dumps(listed)}\n'
    items = "".join(f"{pad}  - {d}{f'  # added {today}' if d == digest and new else ''}\n" for d in listed)
    return listed, f"{head}{pad}api_key_sha256:\n{items}"


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the HTTP server (granian, one Broker per worker process) for the API and the upload page."""
    from broker.adapters.wsgi import default_workers, serve
    from broker.logs import log_event
    from broker.service import SERVE_TARGET, SERVE_THREADS_VARIABLE, build

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
    if not os.environ.get("BROKER_SESSION_SECRET"):  # likewise: a session minted by one worker works in all
        overrides["BROKER_SESSION_SECRET"] = secrets.token_urlsafe(32)
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
    if broker.ledger is not None:  # likewise: no connection of this process may live on in a worker
        broker.ledger.close()
    del broker
    _check_port(host, port)
    if "BROKER_GRANT_SECRET" in overrides:
        log_event("grant_secret_random", note="BROKER_GRANT_SECRET is not set: Fine Uploader grant tokens "
                                              "verify only in this server's workers; set it where several "
                                              "servers serve the broker")
    if "BROKER_SESSION_SECRET" in overrides:
        log_event("session_secret_random", note="BROKER_SESSION_SECRET is not set: session tokens verify only in "
                                                "this server's workers; set it where several servers serve the broker")
    log_event("serving", url=f"http://{host}:{port}/", workers=workers, threads=args.threads,
              rules=settings.rules, audit_file=settings.audit_file, store=settings.s3_endpoint_url or "AWS S3")
    os.environ.update(overrides)  # the workers read their settings from the environment
    os.environ[SERVE_THREADS_VARIABLE] = str(args.threads)
    sys.stdout.flush()  # nothing buffered here may be written again by forked workers
    try:
        # RSGI: bodies are awaited under a deadline, so a client that stalls mid-request holds a
        # socket, not one of the threads that run requests (issue 16; broker/adapters/rsgi.py).
        serve(host, port, factory=SERVE_TARGET, workers=workers, threads=args.threads, interface="rsgi")
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


def _report_settings(args: argparse.Namespace) -> Settings:
    """Settings for broker usage/reconcile: the environment, with --ledger and --rules over it."""
    overrides = {name: value for name, value in (("BROKER_LEDGER", args.ledger),
                                                  ("BROKER_RULES", getattr(args, "rules", None))) if value}
    return Settings.from_env({**os.environ, **overrides})


def _report_ledger(settings: Settings) -> Any:
    """The ledger to report on, or None (off); ConfigError when it cannot be opened. Never creates one."""
    from broker.service import ledger_from

    if settings.ledger.startswith("sqlite:///"):
        path = settings.ledger[len("sqlite:///"):]
        if not os.path.exists(path):
            raise ConfigError(f"BROKER_LEDGER={settings.ledger}: there is no ledger at {os.path.abspath(path)} "
                              "(a report never creates one): check the path and the working directory")
    try:
        return ledger_from(settings)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def cmd_usage(args: argparse.Namespace) -> int:
    """Print grants, uploads, bytes and denials per client, profile and day (ledger, else audit files)."""
    from broker import reports
    from broker.core import usage
    from broker.timefmt import iso_z

    now = datetime.now(timezone.utc)
    try:
        by = usage.parse_by(args.by)
        since = usage.parse_moment(args.since, now=now)
        until = usage.parse_moment(args.until, now=now, option="--until") if args.until else now
    except ValueError as exc:
        print(f"broker usage: {exc}", file=sys.stderr)
        return 2
    if until <= since:
        print(f"broker usage: --until ({iso_z(until)}) must be after --since ({iso_z(since)})", file=sys.stderr)
        return 2
    # "now" takes in the grants of this very second (windows are [since, until) in whole seconds)
    window = {"by": by, "since": int(since.timestamp()), "until": int(until.timestamp()) + (0 if args.until else 1),
              "now": int(now.timestamp()), "client": args.client}
    try:
        settings = _report_settings(args)
        ledger = None if args.audit else _report_ledger(settings)
        if ledger is not None:
            source, where = "ledger", ledger.location or settings.ledger
            try:
                rows = reports.usage_from_ledger(ledger, **window)
            finally:
                ledger.close()
        else:
            paths = args.audit or ([settings.audit_file] if settings.audit_file else [])
            if not paths:
                print("broker usage: no ledger (BROKER_LEDGER is off) and no audit log to count from: give "
                      "--ledger sqlite:///var/ledger.db, or --audit FILE (or set BROKER_AUDIT_FILE)", file=sys.stderr)
                return 2
            try:
                read = reports.read_audit(paths, stdin=sys.stdin)
            except OSError as exc:
                print(f"broker usage: cannot read the audit log {exc.filename}: {exc.strerror}", file=sys.stderr)
                return 2
            for bad in read.malformed:
                print(f"broker usage: {bad.path}: skipped {bad.count} malformed line(s) "
                      f"(the first, line {bad.first_line}: {bad.reason})", file=sys.stderr)
            source, where = "audit", ", ".join(paths)
            rows = usage.from_audit(read.events, **window)
    except BrokerError as exc:
        print(f"broker usage: {exc.message}", file=sys.stderr)
        return 2
    total = usage.totals(rows)
    if args.json:
        print(json.dumps({"since": iso_z(since), "until": iso_z(until), "by": list(by),
                          "rows": [row.as_dict() for row in rows], "totals": total.as_dict(), "source": source}))
        return 0
    print(f"usage from {iso_z(since)} to {iso_z(until)} ({source}: {where})")
    if not rows:
        print("no grants in that period" + (f" for client {args.client}" if args.client else ""))
        return 0

    def cells(row: Any, label: list[str]) -> list[str]:
        return [*label, *(human_size(row.bytes) if name == "bytes" else str(getattr(row, name))
                          for name in usage.COUNTS)]

    body = [cells(row, [value or "-" for _, value in row.group]) for row in rows]
    foot = cells(total, ["total", *[""] * (len(by) - 1)])
    _print_table([*by, *usage.COUNTS], [*body, foot], text_columns=len(by))
    return 0


def _print_table(headers: Sequence[str], rows: Sequence[Sequence[str]], *, text_columns: int) -> None:
    """Columns aligned: the first ``text_columns`` to the left, the numbers to the right."""
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    for row in [headers, *rows]:
        print("  ".join(str(cell).ljust(w) if i < text_columns else str(cell).rjust(w)
                        for i, (cell, w) in enumerate(zip(row, widths))).rstrip())


def cmd_reconcile(args: argparse.Namespace) -> int:
    """Compare the grant ledger with a listing of the rules' prefixes; print every finding."""
    from dataclasses import replace

    from broker import reports
    from broker.core.reconcile import KINDS
    from broker.core.usage import parse_moment
    from broker.service import build
    from broker.timefmt import iso_z

    now = datetime.now(timezone.utc)
    try:
        since = parse_moment(args.since, now=now)
    except ValueError as exc:
        print(f"broker reconcile: {exc}", file=sys.stderr)
        return 2
    now_s, since_s = int(now.timestamp()), int(since.timestamp())
    progress = sys.stderr.isatty() and not args.json
    shown = {"listed": False}

    def listed(n: int) -> None:
        shown["listed"] = True
        print(f"\r{n} objects listed", end="", file=sys.stderr, flush=True)

    settings: Settings | None = None
    try:
        settings = _report_settings(args)
        ledger = _report_ledger(settings)
        if ledger is None:
            print("broker reconcile: reconcile needs the grant ledger: set BROKER_LEDGER (sqlite:///var/ledger.db "
                  "or dynamodb://table-name) or give --ledger URL", file=sys.stderr)
            return 2
        broker = build(replace(settings, audit_file=None), audit_stream=None, ledger=ledger)
        quarantine = broker.rules.current().quarantine_prefix
        areas = broker.verifier.prefixes()
        released = reports.release_expired(ledger, now=now_s) if args.release_expired else None
        result = reports.reconcile_store(ledger, broker.store, areas, quarantine_prefix=quarantine, since=since_s,
                                         now=now_s, unsettled_after=args.unsettled_minutes * 60,
                                         progress=listed if progress else None)
    except BrokerError as exc:
        if shown["listed"]:
            print(file=sys.stderr)
        hint = f" (is the store at {settings.s3_endpoint_url or 'AWS S3'} reachable?)" \
            if settings is not None and getattr(exc, "unreachable", False) and "Connect" in exc.message else ""
        print(f"broker reconcile: {exc.message}{hint}", file=sys.stderr)
        return 2
    if shown["listed"]:
        print(file=sys.stderr)
    summary = result.summary()
    if args.json:
        print(json.dumps({"since": iso_z(since), "now": iso_z(now), "ledger": ledger.location or settings.ledger,
                          "areas": [f"s3://{b}/{p}" for b, p in areas], "released": released,
                          "findings": [f.as_dict() for f in result.findings], "summary": summary}, default=str))
        return 1 if result.findings else 0
    buckets = ", ".join(sorted({bucket for bucket, _ in areas})) or "no bucket"
    print(f"reconcile since {iso_z(since)}: {result.grants} grants, {result.objects} objects under "
          f"{len(areas)} rule prefixes ({buckets}), {result.counters} quota counters")
    if released is not None:
        print(f"released {released} expired, unused grant(s) first")
    if result.unlisted:
        print(f"note: {result.unlisted} grant(s) are under no rule's prefix now (the rules changed?): not compared")
    if result.busy:
        print(f"note: {result.busy} quota counter(s) changed while being read: not compared (run again)")
    for finding in result.findings[:args.limit]:
        where = f"s3://{finding.bucket}/{finding.key}" if finding.key else \
            f"{finding.details['scope']} {finding.details['window']}"
        grant = f"  grant {finding.grant_id}" if finding.grant_id else ""
        print(f"{finding.kind:14}  {where}{grant}\n{'':16}{finding.explanation}")
    if len(result.findings) > args.limit:
        print(f"... and {len(result.findings) - args.limit} more (--limit, or --json for all)")
    if not result.findings:
        print("nothing found: the ledger and the bucket agree")
        return 0
    counts = ", ".join(f"{summary[kind]} {kind}" for kind in KINDS if summary[kind])
    print(f"{len(result.findings)} finding(s): {counts}")
    return 1


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
                                   "exit 1 if there is any problem, listing all of them.",
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=CHECK_EPILOG)
    p.add_argument("rules", nargs="?", help=f"rules file (default: $BROKER_RULES or {DEFAULT_RULES})")
    p.add_argument("-v", "--verbose", action="store_true", help="list every client's rules")
    p.add_argument("--production", action="store_true",
                   help="also refuse what must not reach a deployment: the demo API keys, http:// and '*' "
                        "origins, identities the stack's --auth mode cannot produce (exit 1, each named "
                        "with its line and the fix)")
    p.add_argument("--auth", choices=sorted(AUTH_CHOICES),
                   help="with --production, how the stack recognises callers: api-key (JwtIssuer and "
                        "LambdaAuthorizerArn empty, the template's default), jwt (JwtIssuer set: sub:/group: "
                        "principals) or lambda (LambdaAuthorizerArn set: principal: principals); one stack "
                        "serves one mode (default: from --parameter-overrides, else api-key)")
    p.add_argument("--parameter-overrides", metavar="'NAME=VALUE ...'",
                   help="with --production, the stack's parameters as given to sam deploy "
                        "--parameter-overrides: --auth follows from JwtIssuer and LambdaAuthorizerArn")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser(
        "diff", help="what a rules change grants and revokes (exit 1 if it widens anything)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="""\
Compare two rules files and list every difference that matters to who may upload what:
clients, API keys, principals, rules, key templates and prefixes, sizes, expiry, types and
extensions, quotas, sessions, callbacks, server_only, origins; then the IAM delta of the
signer's and the verifier's roles (the policies `broker iam-policy` derives from each file).
Only the comparison is made: nothing is deployed or changed.""",
        epilog="""\
each change is one line:
  +  added      a client, rule, API key, principal or origin appears   (widens)
  -  removed    one disappears
  >  widened    a limit allows more: larger max_bytes, more types, longer expiry,
                a quota raised or dropped, multipart on, server_only off   (widens)
  <  narrowed   a limit allows less
  ~  changed    neither more nor less; [widens] when keys or verdicts go somewhere
                new (key template, prefix, bucket, region, quarantine, callback URL)
                or another ACL or KMS key is used; form fields (cache_control, ...)
                change nothing anyone may do

API keys are shown by fingerprint: the first 8 hex digits of their api_key_sha256,
enough to find the line in rules.yaml, never the whole hash.

exit status: 0 nothing widens (only narrowed, removed or neutral changes, or none),
1 something widens (review it), 2 a file does not load or a bad option

examples:
  broker diff <(git show origin/main:rules.yaml) rules.yaml
  broker diff deployed.yaml rules.yaml --json > rules-diff.json
  broker diff s3://ops-config/broker/rules.yaml rules.yaml   # against the rules in force""")
    p.add_argument("old", help="the rules in force (or the base of the change): a file, or s3://bucket/key "
                               "read with the environment's AWS settings (AWS_ENDPOINT_URL_S3, ...)")
    p.add_argument("new", help="the rules about to be deployed: a file or s3://bucket/key")
    p.add_argument("--json", action="store_true",
                   help="one JSON document: format, old, new, widens, summary, changes, iam")
    p.add_argument("--account-id", help="AWS account of KMS keys named by id or alias (default: ACCOUNT in ARNs)")
    p.add_argument("--partition", default="aws", help="ARN partition (default: aws)")
    p.set_defaults(func=cmd_diff)

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

    p = sub.add_parser(
        "usage", help="grants, uploads, bytes and denials per client, profile and day",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="""\
Count what the broker granted and what was uploaded with it, per client, profile and UTC
day. From the grant ledger (BROKER_LEDGER, or --ledger) when there is one; otherwise from
audit log files (--audit, default BROKER_AUDIT_FILE). An upload is counted in its grant's
row: the day it was granted, not the day it landed.""",
        epilog="""\
the columns:
  grants    forms issued in the period
  uploads   grants whose object the verifier has judged: verified + rejected
  expired   grants whose form expired with nothing uploaded
  unused    grants whose form can still be posted
  bytes     the judged objects' sizes, plus every extra object of a reused form
  denials   requests the rules refused (the ledger counts them per UTC day: a day
            that overlaps the period counts whole)
  reused    extra objects posted with a form already used once (see broker reconcile)

from audit files (no ledger): an allowed line is a grant, a denied line a denial, a
verification line an upload with its verdict and size. Lines that are not audit records
are skipped, and how many is said on standard error.

examples:
  broker usage                                      # the last 7 days, per client and day
  broker usage --since 24h --by client,profile
  broker usage --since 2026-11-01 --until 2026-12-01 --client web-app --json
  broker usage --ledger sqlite:///var/ledger.db --by day
  broker usage --audit var/audit.jsonl --audit var/audit.old.jsonl
  zcat audit-*.jsonl.gz | broker usage --audit - --by profile

exit status: 0 the report was printed (even an empty one), 2 an error (no ledger and no
audit log, a file that cannot be read, a bad option)""")
    p.add_argument("--since", default="7d", metavar="WHEN",
                   help="start: 7d, 24h, 30m, 2w ago, a date (2026-11-01, UTC) or an ISO time (default: 7d)")
    p.add_argument("--until", metavar="WHEN", help="end, written as --since (default: now)")
    p.add_argument("--by", default="client,day", metavar="DIMS",
                   help="group by any of client, profile, day, comma-separated (default: client,day)")
    p.add_argument("--client", metavar="ID", help="only this client")
    p.add_argument("--ledger", metavar="URL", help="the ledger to read: sqlite:///var/ledger.db or "
                                                   "dynamodb://table (default: $BROKER_LEDGER)")
    p.add_argument("--audit", action="append", metavar="FILE",
                   help="count from this audit log (JSON lines; '-' is standard input; repeatable) instead of "
                        "the ledger (default without a ledger: $BROKER_AUDIT_FILE)")
    p.add_argument("--json", action="store_true", help="one JSON document: since, until, by, rows, totals, source")
    p.set_defaults(func=cmd_usage)

    p = sub.add_parser(
        "reconcile", help="compare the grant ledger with what is in the bucket",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="""\
List every object under the rules' prefixes (the quarantine prefix left out) and compare
the listing with the grants the ledger recorded in the period, and the ledger's quota
counters with the grants they count. Needs the grant ledger (BROKER_LEDGER or --ledger).
Reads only: nothing is changed, except with --release-expired.""",
        epilog="""\
findings:
  unused_grant    a grant expired with nothing at its key: the form was never posted, or
                  the upload failed. Harmless; many of them from one client can mean a
                  broken upload page.
  no_grant        an object (stored in the period) that no grant in the ledger allowed:
                  written with IAM credentials rather than through a form, or uploaded
                  before the ledger was turned on.
  differs         an object unlike its grant: a size outside the grant's range, an ETag
                  the verifier never saw (the object changed after it was judged), a
                  rejected object still at its key, or a verified object that is gone.
  reused          a form was posted more than once: each later object replaced the
                  first. With bucket versioning on, restore the first verified version.
  unsettled       an object whose grant is still "issued" --unsettled-minutes after it
                  landed: the verifier has not judged it (its event was lost?). Run
                  broker verify s3://bucket/key, or broker verify --all.
  quota_mismatch  a quota counter that is not what its grants add up to: an hour counter
                  must equal the grants issued that hour, a day counter the stored sizes
                  (the reservation while a grant is open) plus reused objects.

exit status: 0 nothing found, 1 something found, 2 an error (no ledger configured, the
ledger or the store cannot be read, the rules do not load, a bad option)

examples:
  broker reconcile                                 # the last 2 days
  broker reconcile --since 7d --limit 200
  broker reconcile --ledger sqlite:///var/ledger.db --json > findings.json
  broker reconcile --release-expired               # give expired grants' bytes back first""")
    p.add_argument("--since", default="2d", metavar="WHEN",
                   help="grants issued and objects stored since: 2d, 12h, a date or an ISO time (default: 2d)")
    p.add_argument("--ledger", metavar="URL", help="the ledger to read: sqlite:///var/ledger.db or "
                                                   "dynamodb://table (default: $BROKER_LEDGER)")
    p.add_argument("--rules", help="rules file or s3:// URL, for the prefixes to list (default: $BROKER_RULES)")
    p.add_argument("--unsettled-minutes", type=_positive, default=15, metavar="N",
                   help="an object still unjudged this long after it landed is unsettled (default: 15)")
    p.add_argument("--release-expired", action="store_true",
                   help="first mark expired, unused grants expired and release their bytes (the one change)")
    p.add_argument("--limit", type=_positive, default=50, metavar="N",
                   help="findings printed (default: 50; --json prints all)")
    p.add_argument("--json", action="store_true", help="one JSON document: findings and a summary of each kind")
    p.set_defaults(func=cmd_reconcile)

    p = sub.add_parser(
        "hash-key", help="make a new API key and the rules lines for it",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="""\
Make a new random API key (printed on standard error, once: it is stored nowhere) and print
its SHA-256 as an item of a client's api_key_sha256 list, to paste under the keys already
there. Never paste a second 'api_key_sha256:' line into a client: the rules refuse a key
written twice in one mapping (before, the second silently replaced the first, revoking the
old keys). With --client, the client's whole list from the rules file, old keys kept and the
new one added, to replace the list that is there. With --key or --stdin, hash an existing key.""",
        epilog="""\
examples:
  broker hash-key                                  # a new key and the list item to paste
  broker hash-key --client web-app                 # rotation: web-app's list with a new key added
  broker hash-key --client web-app --rules conf/rules.json
  printf '%s' "$KEY" | broker hash-key --stdin     # the hash of a key you have
  broker hash-key --client web-app --json          # for scripts: api_key, api_key_sha256, the list

rotating a key: add the new one (old kept), deploy, move every caller to the new key, then
delete the old line and deploy again. broker diff shows the key added, then the one removed.

exit status: 0 printed, 2 an error (an empty key, an unknown client, rules that do not load)""")
    given = p.add_mutually_exclusive_group()
    given.add_argument("--key", help="hash this key instead of making one (visible in shell history)")
    given.add_argument("--stdin", action="store_true",
                       help="read the key to hash from the first line of standard input (empty: an error)")
    p.add_argument("--client", metavar="ID",
                   help="print this client's api_key_sha256 list from the rules with the new key added")
    p.add_argument("--rules", help="the rules file for --client (default: $BROKER_RULES or rules.yaml)")
    p.add_argument("--json", action="store_true",
                   help="one JSON document: api_key (null when hashing a given key), api_key_sha256, client "
                        "and, with --client, api_key_sha256_list")
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
