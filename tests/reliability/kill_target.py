"""A broker writing audit lines as fast as it can, from several threads, until it is killed.

Run by ``test_faults.py::test_killed_mid_write_leaves_valid_json_lines`` as
``python -m tests.reliability.kill_target AUDIT_PATH THREADS``; it prints ``ready`` once the
first line is written. Signing needs no store, so the S3 client points nowhere.
"""
from __future__ import annotations

import json
import os
import sys
import threading
from pathlib import Path

REQUESTS = [
    {"filename": "me.png", "content_type": "image/png", "size": 1200},          # allowed
    {"filename": "me.svg", "content_type": "image/svg+xml"},                    # denied
    {"filename": "../x.png", "content_type": "image/png"},                      # invalid
    {"filename": "big.png", "content_type": "image/png", "size": 10**9},        # too large
]


def main(audit_path: str, threads: int) -> None:
    """Serve requests in process from ``threads`` threads forever, auditing to ``audit_path``."""
    import boto3
    from botocore.config import Config

    from broker.service import assemble
    from broker.audit import AuditLog
    from broker.s3.store import S3Store
    from broker.config.sources import RulesProvider, StaticSource
    from broker.web import HttpRequest

    root = Path(__file__).resolve().parents[2]
    provider = RulesProvider(StaticSource((root / "rules.yaml").read_text()), reload_seconds=3600)
    provider.refresh()
    s3 = boto3.client("s3", region_name="us-east-1", endpoint_url="http://127.0.0.1:9",
                      aws_access_key_id="AKIDKILLTARGET", aws_secret_access_key=os.environ["KILL_SECRET"],
                      config=Config(signature_version="s3v4"))
    broker = assemble(provider, S3Store(s3), AuditLog(stream=None, path=audit_path))
    bodies = [json.dumps(b).encode() for b in REQUESTS]
    headers = {"content-type": "application/json", "x-api-key": "demo-web-app-key",
               "user-agent": "kill-target " + "x" * 200}  # longer lines: more bytes per write

    def loop(n: int) -> None:
        i = 0
        while True:
            i += 1
            broker.handle(HttpRequest("POST", "/uploads", headers, {}, bodies[i % len(bodies)],
                                      "127.0.0.1", f"{os.getpid()}-{n}-{i}"))

    for n in range(threads):
        threading.Thread(target=loop, args=(n,), daemon=True).start()
    while not os.path.exists(audit_path) or os.path.getsize(audit_path) == 0:
        threading.Event().wait(0.01)
    print("ready", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
