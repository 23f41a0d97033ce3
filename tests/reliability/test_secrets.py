"""The last test of the run: no secret in anything the suite logged or audited.

``conftest.py`` moves this file to the end of the session and its watch plugin has gathered,
from every test of the run (not only this folder): each captured stdout, stderr and log
section, every ``io.StringIO`` fixture (the in-process audit streams), and the audit files of
``live`` and of this suite's servers. Files under the session's temporary directory that look
like audit or log output are added here. The store's own files are not the broker's output
and are left out (its identities file holds its secret by design).

Searched for: the signing secrets (``AWS_SECRET_ACCESS_KEY``, the store's generated key and
the other secrets the suite signs with), session tokens, the API keys the tests send (valid
and unknown), every signature value the suite was issued, and any signature, credential or
session token field with a value next to it.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.reliability.conftest import SecretsWatch

#: A field that must never be logged together with its value.
FIELD_PATTERNS = [
    re.compile(r"(?i)x-amz-signature\W{1,4}[0-9a-f]{64}"),
    re.compile(r'(?i)"signature"\s*:\s*"[0-9a-f]{40,}"'),
    re.compile(r"(?i)x-amz-security-token\W{1,4}[A-Za-z0-9+/=]{16,}"),
    re.compile(r"(?i)aws_secret_access_key\W{1,4}\S{8,}"),
    re.compile(r"(?i)x-api-key\W{1,4}[A-Za-z0-9_\-]{8,}"),
    # an audit line names the API key used by 8 hex characters of its stored hash, never more
    re.compile(r'(?i)"key_fingerprint"\s*:\s*"[^"]{9,}"'),
]
HEX64 = re.compile(r"[0-9a-f]{64}")
# The stores' own logs and files (SeaweedFS; the Ceph daemons of broker/dev/rgw.py: radosgw logs
# request URLs, presigned query strings included): what the store writes, not what the broker does.
STORE_FILES = {"weed.log", "s3-identities.json", "credentials.json", "client.rgw.a.log", "mon.a.log", "osd.0.log"}


def _texts(watch: SecretsWatch, basetemp: Path) -> list[tuple[str, str]]:
    texts = [(f"{nodeid} [{section}]", text) for nodeid, section, text in watch.sections]
    texts += [(name, stream.getvalue()) for name, stream in watch.streams]
    files = set(watch.files)
    for pattern in ("*.jsonl", "*audit*", "*.log"):
        files.update(p for p in basetemp.rglob(pattern) if p.name not in STORE_FILES)
    for path in sorted(files):
        if path.is_file() and not path.is_symlink():
            texts.append((str(path), path.read_text(errors="replace")))
    return texts


def find_secrets(texts: list[tuple[str, str]], secrets: dict[str, str]) -> list[str]:
    """Every place a known secret or a secret-bearing field appears, as 'where: what'."""
    found = []
    signatures = {s for s in secrets if HEX64.fullmatch(s)}
    others = {s: what for s, what in secrets.items() if s not in signatures}
    for where, text in texts:
        for secret, what in others.items():
            if secret in text:
                found.append(f"{where}: {what}")
        if signatures and signatures.intersection(HEX64.findall(text)):
            found.append(f"{where}: a signature the broker issued")
        for pattern in FIELD_PATTERNS:
            match = pattern.search(text)
            if match:
                found.append(f"{where}: {match.group(0)[:40]}...")
    return found


def test_the_scanner_finds_what_it_looks_for() -> None:
    """The scan below can fail: planted secrets of each kind are all found."""
    secrets = {"s3cr3t-signing-key": "secret", "a" * 64: "signature"}
    planted = [("log", "x s3cr3t-signing-key y"), ("audit", '{"k":"' + "a" * 64 + '"}'),
               ("stderr", '"x-amz-signature": "' + "b" * 64 + '"'),
               ("stdout", "X-Amz-Security-Token=FwoGZXIvYXdzEJr0123456789"),
               ("fingerprint", '{"key_fingerprint":"demo-web-app-key"}'),
               ("clean", '{"decision":"allowed","key":"uploads/web-app/avatars/' + "c" * 32 + '.png",'
                         '"key_fingerprint":"0123abcd"}')]
    found = find_secrets(planted, secrets)
    assert [f.split(":")[0] for f in found] == ["log", "audit", "stderr", "stdout", "fingerprint"], found


def test_no_secret_in_any_log_or_audit_line(watch: SecretsWatch, tmp_path_factory: pytest.TempPathFactory,
                                            request: pytest.FixtureRequest) -> None:
    texts = _texts(watch, tmp_path_factory.getbasetemp())
    lines = sum(text.count("\n") + 1 for _, text in texts)
    audit_lines = sum(text.count('"decision":') for _, text in texts)
    watch.note("secrets scan", f"{len(texts)} outputs, {lines} lines ({audit_lines} audit records), "
                               f"{len(watch.secrets)} secret values")
    assert audit_lines > 0, "the scan saw no audit record at all: the watch is not collecting"
    assert any(what.startswith("API key") for what in watch.secrets.values())
    found = find_secrets(texts, watch.secrets)
    assert found == [], f"{len(found)} secrets in logs or audit lines:\n" + "\n".join(found[:20])
    if request.config.getoption("capture") == "no":  # nothing was captured to scan
        pytest.fail("run with output capture (not -s): the secrets scan reads the captured logs")
