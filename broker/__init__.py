"""The broker: issues S3 presigned POST forms only for uploads that ``rules.yaml`` allows.

The folders are the architecture; imports point down this map, never up, and never in a
cycle (``tests/test_layers.py`` checks it)::

    errors.py        the exception tree (drawn in its docstring), each HTTP error with its status
    models.py        frozen values: Rule, Client, RuleSet, UploadRequest, Decision, Grant, SignedPost
    logs.py          log_event: operational JSON lines on stderr (never the audit log)
    timefmt.py       iso_z: the one ISO 8601 UTC formatter, and its parser
    fast/            speed twins, each naming its slow twin (proven equal in tests/fast/)
      schema.py        compiled yes/no JSON Schema check (twin: jsonschema)
      yamlload.py      PyYAML's safe loader, plain values built directly, duplicate keys refused
                       (twin: UniqueKeyLoader, yaml.CSafeLoader refusing duplicates)
      jsontext.py      orjson text for responses and audit lines (twin: json.dumps)
      limits.py        is a rules document within size limits (twin: config.loader._oversized)
      ids.py           uuid4 hex ids (twin: uuid.uuid4().hex)
      filenames.py     ASCII filename screening (twin: core.keys.screen_unicode)
    core/            PURE decisions: no I/O, no boto3, ``now`` and random ids passed in
      rules.py         identify a client, evaluate one request through a table of checks
      keys.py          key templates, server-random names, filename screening and slugs
      mediatypes.py    content types and the extensions each may carry
      sizes.py         parse_size ('5 MiB' in) and human_size ('5 MiB' out)
      grants.py        grant tokens (HMAC) and the keys each rule can produce
      sessions.py      session tokens (HMAC): an app backend's short-lived permission for one end user
      limits.py        what a caller may upload, per profile (GET /limits; Uppy's restrictions shape)
      multipart.py     a rule's size limit at completion; how many parts a rule can need
      resume.py        may a re-added file continue an interrupted multipart upload under its old key
      verify.py        is a stored object what its rule allowed: each failed check named
      callbacks.py     completion callbacks: the payload, its HMAC signature, URL checks
      usage.py         broker usage: grants, uploads, bytes and denials counted per client/profile/day
      reconcile.py     broker reconcile: ledger records against a bucket listing -> findings
      windows.py       quota windows: fixed UTC hours and days, and their names
      rulesdiff.py     broker diff: what a rules change grants and revokes; the IAM delta
    config/          settings and rules loading, validated once, loudly
      settings.py      Settings from the environment
      loader.py        parse (YAML, or JSON for .json; duplicate keys refused), schema, build, run the checks
      where.py         the line and column of a JSON path in the rules text (only when there are problems)
      checks.py        the semantic checks: small validate_* functions in three tables
      schemas.py       the JSON Schemas under schemas/, each compiled once
      sources.py       rules from a file, text or S3 (through the store); RulesProvider
      production.py    check --production: demo keys, http:// and * origins, identities the stack lacks
    s3/              store access: the ONLY importer of boto3/botocore
      client.py        the botocore client (and boto3 clients for a local store)
      store.py         S3Store: every S3 call, botocore errors mapped once
      post.py          presigned POST forms (Signer); its fast path in fastpost.py
      fastpost.py      generate_presigned_post with per-bucket work done once (twin: botocore)
      sigv4.py         signatures for checked Fine Uploader requests
      notify.py        Ceph RGW's bucket notifications to an HTTP endpoint (make run STORE=rgw, tests)
    ledger/          the grant ledger: every grant recorded before its form, quotas, settlement
      __init__.py      the Ledger interface and its records (GrantRecord, Limit, QuotaExceeded)
      sqlite.py        the embedded engine: one file (WAL) + a grant journal per process, quota leases
      dynamodb.py      the engine for many Lambda instances: conditional writes only
      engines.py       BROKER_LEDGER -> an engine (sqlite:///..., dynamodb://..., off)
    audit.py         the audit record (pure) and the sink that fails closed
    callbacks.py     Notifier: verdicts POSTed to a client's backend, signed, retried
    metrics.py       counts as CloudWatch EMF lines: decisions, errors, failed reloads and starts
    web.py           transport-neutral HttpRequest, HttpResponse and Router
    sniff.py         what bytes are: libmagic's database (pure-magic-rs) + a scan for active markup
    app.py           Broker: route -> identify -> decide -> sign -> audit -> respond
    verifier.py      every stored object judged (core/verify.py), then tagged or quarantined
    probe.py         broker probe-store: which guarantees the store enforces, which rest on the verifier
    reports.py       broker usage and broker reconcile: read the ledger, audit files and the bucket
    protocols/       wire formats, each turning its requests into UploadRequests
      native.py        POST /uploads, GET /health, GET /openapi.yaml
      common.py        what Fine Uploader and Companion share
      sessions.py      POST /sessions: session tokens for browsers (Bearer, or /s/<token>/ before any route)
      limits.py        GET /limits: each profile the caller may use, with its limits
      companion.py     Uppy's Companion protocol (/s3/params, /s3/multipart/*)
      verification.py  the store's object events in (/events/seaweedfs, /events/s3), verdicts and grant status out
                       (/uploads/verdict, /uploads/{grant_id})
      fineuploader/    Fine Uploader S3 v4: endpoints.py, policy.py, canonical.py
    adapters/        Lambda events (apigw.py), S3 object events for the verifier (s3events.py),
                     and WSGI + the servers of broker serve (wsgi.py)
    service.py       build(settings): a Broker wired to rules, store, audit log and protocols
    cli.py           broker check | diff | explain | serve | verify | usage | reconcile | hash-key (+ deploy's)
    deploy/          IAM policy, CORS, SAM template, the Lambda package
    dev/             make run's stores (store.py: SeaweedFS; rgw.py: Ceph RGW), runner and demo app
                     backend (demo.py: GET /demo/session mints the pages' sessions); left out of the Lambda zip
    static/          the upload pages (plain, Fine Uploader, Uppy) and the scripts pages load from the
                     broker: broker.js (native API), fineuploader-broker.js (Fine Uploader's S3 options)
"""
from __future__ import annotations

__version__ = "0.1.0"
