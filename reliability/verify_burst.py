"""``make soak``, part two: a burst of object events at the verifier, duplicated and out of order.

Starts SeaweedFS and the broker (in process, its HTTP server on loopback), stores ``--objects``
small files under the example rules' ``avatars`` prefix (one in ``--bad-every`` is HTML posing as
a PNG), then posts one SeaweedFS ``create`` event per object to ``POST /events/seaweedfs`` plus
``--duplicates`` of them again (10% by default), shuffled, from ``--clients`` threads: the same
object may be announced twice at once, or after its verdict.

Checked afterwards: every event got a 200 (0 lost), every object has exactly one verification
line (none judged twice), every good one is tagged verified at its key, every bad one is gone
from its key and held in quarantine, and the audit lines are schema-valid. Exit status 1 if
anything fails. Bounded in count and time; loopback only.

    python -m reliability.verify_burst --objects 10000
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "burst-" + "x" * 40
HTML = b"<html><script>alert(document.cookie)</script></html>"


def png() -> bytes:
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00\x00\x00\x00")) + chunk(b"IEND", b""))


def post_event(url: str, key: str) -> int:
    body = json.dumps({"event_type": "create", "key": f"/buckets/broker-uploads/{key}",
                       "message": {"new_entry": {"name": key.rsplit("/", 1)[-1]}}}).encode()
    request = urllib.request.Request(url, data=body, method="POST", headers={
        "authorization": f"Bearer {TOKEN}", "content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as answer:
        return int(answer.status)


def main(argv: list[str] | None = None) -> int:
    """Run the burst; print the figures; exit 1 on any failure."""
    parser = argparse.ArgumentParser(prog="python -m reliability.verify_burst", description=__doc__.split("\n\n")[0])
    parser.add_argument("--objects", type=int, default=10_000, help="objects stored and announced (default 10000)")
    parser.add_argument("--duplicates", type=float, default=0.10, help="share announced twice (default 0.10)")
    parser.add_argument("--bad-every", type=int, default=10, help="every Nth object is HTML posing as PNG (default 10)")
    parser.add_argument("--clients", type=int, default=8, help="threads posting events (default 8)")
    parser.add_argument("--max-seconds", type=float, default=900, help="give up after this (default 900)")
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args(argv)

    from broker.adapters.wsgi import ServerThread, WsgiApp
    from broker.config import Settings, schemas
    from broker.dev.store import Store, StoreConfig, pick_free_ports
    from broker.service import build

    rng = random.Random(args.seed)
    deadline = time.monotonic() + args.max_seconds
    work = Path(tempfile.mkdtemp(prefix="broker-burst-"))
    s3_port, base_port = pick_free_ports()
    store = Store(StoreConfig.generate(work / "store", s3_port=s3_port, base_port=base_port))
    store.start(timeout=60)
    failures: list[str] = []
    try:
        store.ensure_bucket("broker-uploads")
        s3 = store.s3_client(max_pool_connections=args.clients * 2)
        audit_path = work / "audit.jsonl"
        settings = Settings(rules=str(ROOT / "rules.yaml"), rules_reload_seconds=3600, audit_file=str(audit_path),
                            s3_endpoint_url=store.endpoint_url, s3_addressing_style="path", events_token=TOKEN)
        broker = build(settings, s3_client=s3, audit_stream=None)
        server = ServerThread(WsgiApp(broker), "127.0.0.1", 0, threads=args.clients)
        good, bad = png(), HTML
        keys = [f"uploads/web-app/avatars/2026-11-29/{i:032x}.png" for i in range(args.objects)]
        is_bad = {k for i, k in enumerate(keys) if i % args.bad_every == args.bad_every - 1}
        started = time.monotonic()

        def put(key: str) -> None:
            s3.put_object(Bucket="broker-uploads", Key=key, Body=bad if key in is_bad else good,
                          ContentType="image/png", CacheControl="public, max-age=86400",
                          ContentDisposition='inline; filename="me.png"')

        with ThreadPoolExecutor(args.clients) as pool:
            list(pool.map(put, keys))
        stored_in = time.monotonic() - started
        events = keys + rng.sample(keys, int(len(keys) * args.duplicates))
        rng.shuffle(events)
        url = f"{server.url}/events/seaweedfs"
        statuses: Counter[int] = Counter()
        lock = threading.Lock()

        def deliver(key: str) -> None:
            if time.monotonic() > deadline:
                status = 0
            else:
                try:
                    status = post_event(url, key)
                except Exception as exc:  # noqa: BLE001 - counted as lost
                    status = getattr(exc, "code", -1)
            with lock:
                statuses[status] += 1

        started = time.monotonic()
        with ThreadPoolExecutor(args.clients) as pool:
            list(pool.map(deliver, events))
        judged_in = time.monotonic() - started

        lines = [json.loads(line) for line in audit_path.read_text().splitlines() if line]
        verifications = [r for r in lines if r.get("event") == "verification"]
        validator = schemas.validator("audit")
        invalid = sum(1 for r in verifications if not validator.is_valid(r))
        per_key = Counter(r["key"] for r in verifications)
        twice = [k for k, n in per_key.items() if n > 1]
        never = [k for k in keys if per_key[k] == 0]
        wrong = [r["key"] for r in verifications
                 if (r["verdict"] == "rejected") != (r["key"] in is_bad)]
        left_bad = [k for k in sorted(is_bad)[:200] if s3.list_objects_v2(Bucket="broker-uploads", Prefix=k)["KeyCount"]]
        sample = rng.sample([k for k in keys if k not in is_bad], min(200, len(keys) - len(is_bad)))
        untagged = [k for k in sample if {"Key": "broker-verdict", "Value": "verified"}
                    not in s3.get_object_tagging(Bucket="broker-uploads", Key=k)["TagSet"]]
        lost = sum(n for status, n in statuses.items() if status != 200)
        for name, bad_ones in (("events not answered 200", lost), ("objects judged twice", len(twice)),
                               ("objects never judged", len(never)), ("verdicts that are wrong", len(wrong)),
                               ("schema-invalid lines", invalid), ("rejected objects left at their key", len(left_bad)),
                               ("verified objects without the tag (of a sample of 200)", len(untagged))):
            if bad_ones:
                failures.append(f"{name}: {bad_ones}")
        print(json.dumps({
            "objects": len(keys), "events": len(events), "duplicates": len(events) - len(keys),
            "bad_objects": len(is_bad), "statuses": dict(statuses), "verification_lines": len(verifications),
            "verified": sum(1 for r in verifications if r["verdict"] == "verified"),
            "rejected": sum(1 for r in verifications if r["verdict"] == "rejected"),
            "stored_seconds": round(stored_in, 1), "judging_seconds": round(judged_in, 1),
            "events_per_second": round(len(events) / judged_in, 1) if judged_in else None,
        }, indent=2))
        time.sleep(0.5)  # waitress's threads finish with their last connections before the server closes
        server.close()
    finally:
        store.stop()
    for failure in failures:
        print(f"FAIL {failure}", file=sys.stderr)
    print("verify burst: " + ("FAILED" if failures else "OK: 0 lost, each object judged exactly once"))
    return 1 if failures else 0


if __name__ == "__main__":
    os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
    sys.exit(main())
