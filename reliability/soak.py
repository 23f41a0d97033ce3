"""``make soak``: load the local server with concurrent clients, then prove nothing was lost.

Starts ``broker serve`` (granian, one worker process per CPU unless ``--server-workers``
says otherwise) on a free loopback port with a copy of
``rules.yaml``, a fresh audit file and signing credentials made up for the run (a form is
signed locally: no store is needed). Then ``--clients`` threads, each with one keep-alive
connection, send ``--requests`` ``POST /uploads`` between them, drawn by a seeded generator
from a mix of allowed, denied and malformed requests. Bounded in count and in time
(``--max-seconds``); loopback only.

Alongside the load, ``--slow-clients`` connections stall: each sends the headers of a
``POST /uploads`` announcing a 100-byte body, then one byte and nothing more (silent) or a byte
every two seconds (trickling), again and again until the load is done. Each must be answered
408 within the server's body deadline (``adapters/rsgi.py``: a stalled client holds a socket,
never a worker), and the load's latency figures are taken while they stall.

Checked after the run (so checking costs no load): every answer has the status its kind
expects (0 errors: no 5xx, no connection failure, no surprise), every body matches its JSON
schema, every grant is within its rule (decoded policy), and the audit file holds exactly one
well-formed line per request, with exactly the request ids the clients were given (nothing
lost, nothing doubled, no interleaved line, though several workers write it); the server's
stdout copy of the audit log holds the same lines (in another order: each worker writes the
file, then stdout); no secret is in any of it. Exit status 1 if anything fails.

    python -m reliability.soak --requests 24000 --clients 16
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import re
import secrets
import shutil
import signal
import socket
import statistics
import string
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from broker.config import schemas
from broker.config import load_rules_file

from .oracle import body_violations, client_for_key, grant_violations

ROOT = Path(__file__).resolve().parent.parent
WEB_KEY = "demo-web-app-key"
ACME_KEY = "demo-partner-acme-key"
BOGUS_KEY = "soak-unknown-key-" + secrets.token_hex(6)


@dataclass(frozen=True)
class Planned:
    """One request to send: its kind, API key, body bytes and the statuses it may get."""

    kind: str
    api_key: str | None
    body: bytes
    expect: frozenset[int]
    asked: dict[str, Any]


def _name(rng: random.Random) -> str:
    return "".join(rng.choice(string.ascii_letters + string.digits + " -_") for _ in range(rng.randint(1, 24)))


def plan(rng: random.Random) -> Planned:
    """One request drawn from the mix: 60% allowed, the rest denied or malformed."""
    roll = rng.random()
    ok = frozenset({200})

    def req(kind: str, key: str | None, asked: dict[str, Any], expect: frozenset[int]) -> Planned:
        return Planned(kind, key, json.dumps(asked).encode(), expect, asked)

    if roll < 0.30:
        ctype = rng.choice(["image/png", "IMAGE/PNG", "image/png; charset=utf-8", "Image/Png; x=y"])
        return req("avatar", WEB_KEY, {"filename": _name(rng) + ".png", "content_type": ctype,
                                       "size": rng.randint(1, 5 * 1024**2)}, ok)
    if roll < 0.45:
        ext, ctype = rng.choice([(".pdf", "application/pdf"), (".txt", "text/plain; charset=UTF-8"),
                                 (".csv", "text/csv")])
        return req("document", WEB_KEY, {"filename": _name(rng) + ext, "content_type": ctype,
                                         "profile": "documents", "metadata": {"title": _name(rng)}}, ok)
    if roll < 0.60:
        return req("invoice", ACME_KEY, {"filename": _name(rng) + ".csv", "content_type": "text/csv",
                                         "metadata": {"invoice-id": str(rng.randint(1, 10**9))}}, ok)
    if roll < 0.67:
        return req("too_large", WEB_KEY, {"filename": "big.png", "content_type": "image/png",
                                          "size": 5 * 1024**2 + rng.randint(1, 10**9)}, frozenset({413}))
    if roll < 0.74:
        return req("type_denied", WEB_KEY, {"filename": "x.svg", "content_type": "image/svg+xml"},
                   frozenset({403}))
    if roll < 0.79:
        return req("other_clients_profile", ACME_KEY, {"filename": "a.png", "content_type": "image/png",
                                                       "profile": "avatars"}, frozenset({403}))
    if roll < 0.84:
        name = rng.choice(["../../etc/passwd.png", "%2e%2e%2fx.png", "a\u202egnp.exe", "x\u2215y.png"])
        return req("hostile_filename", WEB_KEY, {"filename": name, "content_type": "image/png"},
                   frozenset({400}))
    if roll < 0.89:
        return req("unknown_key", BOGUS_KEY, {"filename": "a.png", "content_type": "image/png"},
                   frozenset({401}))
    if roll < 0.92:
        return req("no_key", None, {"filename": "a.png", "content_type": "image/png"}, frozenset({401}))
    if roll < 0.96:
        return req("client_chosen_key", WEB_KEY, {"filename": "a.png", "content_type": "image/png",
                                                  "key": "uploads/web-app/avatars/mine.png"}, frozenset({400}))
    body = rng.choice([b'{"filename":', b"[" * 40 + b"]" * 40, b"\xff\xfe", b"null", b'{"size": 1e999}'])
    return Planned("malformed_json", WEB_KEY, body, frozenset({400}), {})


@dataclass
class Result:
    """What one request got back."""

    planned: Planned
    status: int
    body: bytes
    request_id: str | None
    seconds: float
    error: str | None = None


def free_port() -> int:
    """A free loopback port."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(work: Path, port: int, options: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    """``broker serve`` (and its workers) in their own processes; returns once /health answers 200."""
    out = (work / "server-stdout.log").open("wb")
    err = (work / "server-stderr.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "broker", "serve", "--host", "127.0.0.1", "--port", str(port),
         "--rules", str(work / "rules.yaml"), "--audit-file", str(work / "audit.jsonl"), *options],
        cwd=ROOT, env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the broker exited with {proc.returncode}; see {work / 'server-stderr.log'}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                conn.close()
                return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("the broker did not answer /health within 30 s")


def client(port: int, work: list[Planned], results: list[Result], deadline: float) -> None:
    """One client: one keep-alive connection, its share of the requests, in order."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    for planned in work:
        if time.monotonic() > deadline:
            break
        headers = {"content-type": "application/json", "user-agent": "soak"}
        if planned.api_key:
            headers["x-api-key"] = planned.api_key
        started = time.perf_counter()
        try:
            conn.request("POST", "/uploads", body=planned.body, headers=headers)
            response = conn.getresponse()
            body = response.read()
            results.append(Result(planned, response.status, body, response.getheader("X-Request-Id"),
                                  time.perf_counter() - started))
            if response.getheader("Connection", "").lower() == "close":
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        except (OSError, http.client.HTTPException) as exc:
            results.append(Result(planned, 0, b"", None, time.perf_counter() - started, repr(exc)))
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.close()


#: A stalled request must be answered within the server's body deadline plus this (seconds).
STALL_GRACE = 3.0
STALL_KIND = "stalled_body"


def slow_client(port: int, index: int, results: list[Result], done: threading.Event) -> None:
    """Stall request after request until ``done``: headers announcing 100 bytes, then one byte and
    silence (even ``index``) or a byte every two seconds (odd); record what the server answered."""
    from broker.adapters.rsgi import BODY_SECONDS

    planned = Planned(STALL_KIND, WEB_KEY, b"", frozenset({408}), {})
    head = (b"POST /uploads HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: soak-slow\r\n"
            b"Content-Type: application/json\r\nX-Api-Key: " + WEB_KEY.encode() + b"\r\n"
            b"Content-Length: 100\r\n\r\n{")
    while not done.is_set():
        started = time.perf_counter()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=BODY_SECONDS + STALL_GRACE) as sock:
                sock.sendall(head)
                raw = b""
                sock.settimeout(2.0)
                while time.perf_counter() - started < BODY_SECONDS + STALL_GRACE:
                    try:
                        chunk = sock.recv(65536)
                    except socket.timeout:
                        if index % 2:
                            sock.sendall(b" ")  # trickling: a byte every two seconds
                        continue
                    if not chunk or _complete(raw := raw + chunk):
                        break  # answered (or closed) by the server
                seconds = time.perf_counter() - started
        except OSError as exc:
            results.append(Result(planned, 0, b"", None, time.perf_counter() - started, repr(exc)))
            continue
        head_part, _, body = raw.partition(b"\r\n\r\n")
        status_line = head_part.split(b"\r\n", 1)[0].split()
        status = int(status_line[1]) if len(status_line) > 1 and status_line[1].isdigit() else 0
        found = re.search(rb"(?im)^x-request-id: *([^\r\n]+)", head_part)
        error = None if status else f"no answer within {seconds:.1f} s"
        if status and seconds > BODY_SECONDS + STALL_GRACE:
            error = f"answered only after {seconds:.1f} s"
        results.append(Result(planned, status, body, found.group(1).decode() if found else None, seconds, error))


def _complete(raw: bytes) -> bool:
    """Does ``raw`` hold a whole response (head and Content-Length body)?"""
    head, found, body = raw.partition(b"\r\n\r\n")
    length = re.search(rb"(?im)^content-length: *(\d+)", head)
    return bool(found) and length is not None and len(body) >= int(length.group(1))


def check(results: list[Result], work: Path, secret_values: dict[str, str]) -> dict[str, Any]:
    """Every check after the run; returns the figures and the list of failures."""
    ruleset = load_rules_file(work / "rules.yaml")
    failures: list[str] = []
    now = datetime.now(timezone.utc)
    for r in results:
        if r.error or r.status not in r.planned.expect:
            failures.append(f"{r.planned.kind}: got {r.status or r.error}, expected {sorted(r.planned.expect)}")
            continue
        problems = body_violations(r.status, r.body)
        if r.status == 200:
            grant = json.loads(r.body)
            problems += grant_violations(ruleset, client_for_key(ruleset, r.planned.api_key), r.planned.asked,
                                         grant, now=now)
            secret_values.setdefault(grant["fields"]["x-amz-signature"], "a signature the broker issued")
        failures += [f"{r.planned.kind}: {p}" for p in problems[:3]]

    raw = (work / "audit.jsonl").read_bytes()
    lines = raw.split(b"\n")
    if lines[-1] != b"":
        failures.append("the audit file does not end with a newline (a torn last line)")
    lines = lines[:-1]
    validator = schemas.validator("audit")
    records = []
    for number, line in enumerate(lines, 1):
        try:
            rec = json.loads(line)
        except ValueError:
            failures.append(f"audit line {number} is not JSON (interleaved or torn): {line[:80]!r}")
            continue
        if list(validator.iter_errors(rec)):
            failures.append(f"audit line {number} does not match audit.schema.json")
        records.append(rec)
    sent = Counter(r.request_id for r in results if not r.error)
    logged = Counter(rec.get("request_id") for rec in records)
    lost = [rid for rid in sent if logged[rid] == 0]
    doubled = [rid for rid, n in logged.items() if n > 1]
    unknown = [rid for rid in logged if rid not in sent]
    if lost or doubled or unknown or len(records) != len(results):
        failures.append(f"audit: {len(records)} lines for {len(results)} requests; {len(lost)} lost, "
                        f"{len(doubled)} doubled, {len(unknown)} not sent by the soak")
    by_id = {rec["request_id"]: rec for rec in records}
    mismatched = sum(1 for r in results if r.request_id in by_id and by_id[r.request_id]["status"] != r.status)
    if mismatched:
        failures.append(f"{mismatched} audit lines record another status than the client got")
    stdout_lines = [line for line in (work / "server-stdout.log").read_bytes().split(b"\n") if line]
    if Counter(stdout_lines) != Counter(lines):
        failures.append(f"the server's stdout holds {len(stdout_lines)} audit lines, the file {len(lines)}, "
                        f"{len(set(stdout_lines) ^ set(lines))} of them in only one")

    texts = {name: (work / name).read_text(errors="replace")
             for name in ("audit.jsonl", "server-stdout.log", "server-stderr.log")}
    signatures = {s for s in secret_values if len(s) == 64}
    for name, text in texts.items():
        for value, what in secret_values.items():
            if value not in signatures and value in text:
                failures.append(f"{name}: contains {what}")
        if signatures.intersection(re.findall(r"[0-9a-f]{64}", text)):
            failures.append(f"{name}: contains a signature the broker issued")
    latencies = sorted(r.seconds for r in results if not r.error and r.planned.kind != STALL_KIND)
    stalled = sorted(r.seconds for r in results if not r.error and r.planned.kind == STALL_KIND)
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [0.0] * 99
    return {
        "requests": len(results),
        "statuses": dict(sorted(Counter(r.status for r in results).items())),
        "kinds": dict(sorted(Counter(r.planned.kind for r in results).items())),
        "grants_checked": sum(1 for r in results if r.status == 200),
        "audit_lines": len(records),
        "latency_ms": {"p50": round(q[49] * 1000, 2), "p90": round(q[89] * 1000, 2),
                       "p99": round(q[98] * 1000, 2), "max": round(latencies[-1] * 1000, 2) if latencies else 0},
        "stalled_requests": len(stalled),
        "stalled_answered_within_s": round(stalled[-1], 2) if stalled else None,
        "failures": failures,
    }


def _json_or_none(line: str) -> Any:
    try:
        return json.loads(line)
    except ValueError:
        return None


def main(argv: list[str] | None = None) -> int:
    """Run the soak; print the figures; exit 1 on any failure."""
    parser = argparse.ArgumentParser(prog="python -m reliability.soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=24_000, help="requests in total (default 24000)")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients (default 16)")
    parser.add_argument("--server-workers", type=int, help="broker serve --workers (default: its own)")
    parser.add_argument("--server-threads", type=int, help="broker serve --threads (default: its own)")
    parser.add_argument("--max-seconds", type=float, default=600, help="stop sending after this (default 600)")
    parser.add_argument("--slow-clients", type=int, default=20,
                        help="connections that stall their request bodies alongside the load (default 20)")
    parser.add_argument("--seed", type=int, default=7, help="seed of the request generator (default 7)")
    parser.add_argument("--work", default=str(ROOT / "var" / "soak"), help="output folder (default var/soak)")
    args = parser.parse_args(argv)
    if args.requests < 1 or args.clients < 1 or args.slow_clients < 0:
        parser.error("--requests and --clients must be positive, --slow-clients not negative")

    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    shutil.copy(ROOT / "rules.yaml", work / "rules.yaml")
    secret = "soak-secret-" + secrets.token_urlsafe(24)
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "AKIDSOAK" + secrets.token_hex(6).upper(),
           "AWS_SECRET_ACCESS_KEY": secret, "AWS_DEFAULT_REGION": "us-east-1", "PYTHONUNBUFFERED": "1"}
    for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        env.pop(name, None)
    secret_values = {secret: "the signing secret", WEB_KEY: "an API key", ACME_KEY: "an API key",
                     BOGUS_KEY: "an unknown API key"}
    rng = random.Random(args.seed)
    planned = [plan(rng) for _ in range(args.requests)]
    shares: list[list[Planned]] = [planned[i::args.clients] for i in range(args.clients)]

    port = free_port()
    options = [*(["--workers", str(args.server_workers)] if args.server_workers else []),
               *(["--threads", str(args.server_threads)] if args.server_threads else [])]
    server = start_server(work, port, options, env)
    results_per_client: list[list[Result]] = [[] for _ in range(args.clients)]
    slow_results: list[list[Result]] = [[] for _ in range(args.slow_clients)]
    load_done = threading.Event()
    started = time.monotonic()
    deadline = started + args.max_seconds
    try:
        stallers = [threading.Thread(target=slow_client, args=(port, i, slow_results[i], load_done))
                    for i in range(args.slow_clients)]
        for t in stallers:
            t.start()
        time.sleep(0.5 if stallers else 0)  # the stalls are in place before the load starts
        threads = [threading.Thread(target=client, args=(port, shares[i], results_per_client[i], deadline))
                   for i in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - started
        load_done.set()
        for t in stallers:
            t.join()
    finally:
        load_done.set()
        server.send_signal(signal.SIGINT)  # broker serve stops cleanly on Ctrl-C
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    results = [r for rs in results_per_client for r in rs]
    sent = len(results)
    results += [r for rs in slow_results for r in rs]
    figures = check(results, work, secret_values)
    if args.slow_clients and not figures["stalled_requests"]:
        figures["failures"].append("no stalled request was answered: the slow clients measured nothing")
    if sent < args.requests:
        figures["failures"].insert(0, f"only {sent} of {args.requests} requests were sent within "
                                      f"{args.max_seconds:g} s")
    serving = [entry for entry in map(_json_or_none, (work / "server-stderr.log").read_text().splitlines())
               if isinstance(entry, dict) and entry.get("event") == "serving"]
    figures.update(clients=args.clients, slow_clients=args.slow_clients,
                   server_workers=serving[0]["workers"] if serving else None,
                   server_threads=serving[0]["threads"] if serving else None, seed=args.seed,
                   seconds=round(elapsed, 1), requests_per_second=round(sent / elapsed, 1),
                   cpus=os.cpu_count())
    (work / "result.json").write_text(json.dumps(figures, indent=2) + "\n")
    failures = figures.pop("failures")
    print(json.dumps(figures, indent=2))
    if failures:
        print(f"\nSOAK FAILED: {len(failures)} problem(s):", file=sys.stderr)
        for failure in failures[:30]:
            print(f"  - {failure}", file=sys.stderr)
        return 1
    print(f"\nsoak OK: {sent} requests from {args.clients} clients in {elapsed:.1f} s, 0 errors; "
          f"p50 {figures['latency_ms']['p50']} ms, p99 {figures['latency_ms']['p99']} ms; "
          f"{figures['stalled_requests']} stalled bodies from {args.slow_clients} slow clients, each answered "
          f"408 within {figures['stalled_answered_within_s']} s; "
          f"{figures['audit_lines']} audit lines, one per request. Details: {work / 'result.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
