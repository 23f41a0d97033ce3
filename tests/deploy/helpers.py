"""Small rules documents for the deployment tests."""
from __future__ import annotations

from typing import Any

import yaml

from broker.config import load_rules
from broker.models import RuleSet

HASH = "%064x"


def make_rules(clients: dict[str, list[dict[str, Any]]], *, bucket: str = "up-bucket",
               origins: tuple[str, ...] = ("https://app.example.com",),
               region: str = "eu-west-1", quarantine_prefix: str | None = None) -> RuleSet:
    """A valid RuleSet with one API key per client and the given rules (defaults filled in)."""
    doc: dict[str, Any] = {
        "version": 1, "bucket": bucket, "region": region,
        "cors": {"allowed_origins": list(origins)},
        "defaults": {"max_bytes": "1 MiB", "content_types": ["*/*"]},
        "clients": {cid: {"api_key_sha256": [HASH % (n + 1)], "rules": rules}
                    for n, (cid, rules) in enumerate(clients.items())},
    }
    if quarantine_prefix is not None:
        doc["quarantine_prefix"] = quarantine_prefix
    return load_rules(yaml.safe_dump(doc), source="<test>")
