"""broker.reports and ``broker reconcile``: the reading around the pure comparison.

A fake store for the reading rules (what is kept of a listing, which grants are looked up, which
counters were busy), then the command itself: its errors, and once against a real SeaweedFS
bucket with real objects and a SQLite ledger.
"""
from __future__ import annotations

import io
import json
import socket
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import yaml

from broker import reports
from broker.cli import main
from broker.ledger import VERIFIED, Counter, GrantRecord, Ledger, Limit, grant_id_for
from broker.ledger.sqlite import SqliteLedger
from broker.timefmt import from_unix

ROOT = Path(__file__).resolve().parent.parent
DAY = 86400
T0 = 1_795_000_000 - 1_795_000_000 % DAY + 10 * 3600  # 10:00 UTC
NOW = T0 + 3600
PREFIX = "uploads/web-app/avatars/"
LIMITS = [Limit("client:web-app")]


def grant(key: str, *, bucket: str = "b", issued: int = T0, ttl: int = 300, max_bytes: int = 1000) -> GrantRecord:
    return GrantRecord(grant_id=grant_id_for(bucket, key), client="web-app", profile="avatars", bucket=bucket,
                       key=key, content_type="image/png", min_bytes=1, max_bytes=max_bytes, reserved_bytes=max_bytes,
                       issued_at=issued, expires_at=issued + ttl)


class FakeStore:
    """S3Store.objects over a dict: bucket -> [(key, size, etag, last_modified)]."""

    def __init__(self, objects: dict[str, list[tuple[str, int, str, datetime | None]]]) -> None:
        self._objects = objects

    def objects(self, bucket: str, prefix: str) -> Iterator[tuple[str, int, str, datetime | None]]:
        yield from (o for o in self._objects.get(bucket, []) if o[0].startswith(prefix))


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[SqliteLedger]:
    db = SqliteLedger(tmp_path / "ledger.db")
    yield db
    db.close()


def reconcile(ledger: Ledger, store: Any, **options: Any) -> Any:
    options = {"quarantine_prefix": "quarantine/", "since": T0 - 600, "now": NOW, "unsettled_after": 900, **options}
    return reports.reconcile_store(ledger, store, [("b", PREFIX)], **options)


# --------------------------------------------------------------------------- the reading


def test_an_object_granted_before_the_period_is_found_by_its_grant_not_called_grantless(ledger: Ledger) -> None:
    old = grant(f"{PREFIX}old.png", issued=T0 - 2 * DAY, ttl=3 * DAY)  # a long-lived form, posted in the period
    ledger.reserve(old, LIMITS, now=old.issued_at)
    ledger.settle("b", old.key, etag="e", size=10, verdict=VERIFIED, now=T0)
    store = FakeStore({"b": [(old.key, 10, "e", from_unix(T0)), (f"{PREFIX}stray.png", 10, "s", from_unix(T0)),
                             (f"{PREFIX}ancient.png", 10, "a", from_unix(T0 - 5 * DAY))]})
    result = reconcile(ledger, store)
    assert [(f.kind, f.key) for f in result.findings] == [("no_grant", f"{PREFIX}stray.png")]
    assert result.objects == 3


def test_progress_is_told_as_the_listing_goes(ledger: Ledger, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reports, "PROGRESS_EVERY", 2)
    store = FakeStore({"b": [(f"{PREFIX}{n}.png", 1, "e", from_unix(T0 - 5 * DAY)) for n in range(5)]})
    seen: list[int] = []
    result = reconcile(ledger, store, progress=seen.append)
    assert seen == [2, 4, 5] and result.findings == ()


def test_a_counter_that_moves_while_its_grants_are_read_is_not_compared(ledger: SqliteLedger) -> None:
    ledger.reserve(grant(f"{PREFIX}a.png"), LIMITS, now=T0)
    reads: list[int] = []

    class Busy(SqliteLedger):
        def counters(self, *, since: int = 0) -> Iterator[Counter]:
            reads.append(since)
            for c in super().counters(since=since):  # the second read sees one more grant in the hour
                yield Counter(c.scope, c.window, c.value + (len(reads) > 1 and c.window[0] == "h"))

    busy = Busy(ledger.path)
    result = reconcile(busy, FakeStore({}), now=T0 + 60)
    assert result.busy == 1 and result.findings == () and len(reads) == 2


def test_release_expired_releases_every_batch(ledger: Ledger) -> None:
    for n in range(5):
        ledger.reserve(grant(f"{PREFIX}{n}.png", issued=T0 + n), LIMITS, now=T0 + n)
    assert reports.release_expired(ledger, now=NOW, batch=2) == 5
    assert reports.release_expired(ledger, now=NOW, batch=2) == 0


def test_audit_files_malformed_lines_are_counted_per_file(tmp_path: Path) -> None:
    good = json.dumps({"time": "2026-11-28T14:54:31.123Z", "event": "upload", "decision": "denied",
                       "client": "web-app"})
    (tmp_path / "a.jsonl").write_text(f"{good}\n{{oops\n[1]\n{good}\n")
    read = reports.read_audit([str(tmp_path / "a.jsonl"), "-"], stdin=io.StringIO(f"{good}\n"))
    assert len(read.events) == 3
    (bad,) = read.malformed
    assert (bad.path, bad.count, bad.first_line) == (str(tmp_path / "a.jsonl"), 2, 2)
    with pytest.raises(OSError):
        reports.read_audit([str(tmp_path / "missing")], stdin=io.StringIO())


# --------------------------------------------------------------------------- the command's errors


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("BROKER_LEDGER", "BROKER_AUDIT_FILE", "BROKER_RULES"):
        monkeypatch.delenv(name, raising=False)


def test_reconcile_without_a_ledger_says_it_needs_one(clean_env: None, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["reconcile"]) == 2
    assert "reconcile needs the grant ledger: set BROKER_LEDGER" in capsys.readouterr().err


def test_reconcile_with_a_missing_ledger_file_or_bad_since_exits_2(tmp_path: Path, clean_env: None,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["reconcile", "--ledger", f"sqlite:///{tmp_path}/none.db"]) == 2
    assert "there is no ledger at" in capsys.readouterr().err
    assert main(["reconcile", "--since", "soon"]) == 2
    assert "--since 'soon' is not a time" in capsys.readouterr().err


def test_reconcile_with_the_store_out_of_reach_exits_2(ledger: SqliteLedger, clean_env: None,
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDRECONCILETEST")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "reconcile-test-secret")
    assert main(["reconcile", "--ledger", f"sqlite:///{ledger.path}"]) == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == ("broker reconcile: the store refused to list the objects: "
                                    f"EndpointConnectionError (is the store at http://127.0.0.1:{port} reachable?)")
    assert "Traceback" not in err


def test_reconcile_help_explains_each_finding_and_the_exit_status(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["reconcile", "--help"])
    out = capsys.readouterr().out
    for words in ("unused_grant", "no_grant", "differs", "reused", "unsettled", "quota_mismatch",
                  "exit status: 0 nothing found, 1 something found, 2 an error", "examples:"):
        assert words in out


# --------------------------------------------------------------------------- against the real store


@pytest.fixture
def real(store: Any, make_bucket: Callable[..., str], tmp_path: Path, clean_env: None,
         monkeypatch: pytest.MonkeyPatch) -> Callable[[], tuple[str, Any, SqliteLedger]]:
    """A factory: a new bucket named by the rules, the store's client, and a new SQLite ledger."""
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", store.endpoint_url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", store.config.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", store.config.secret_key)
    monkeypatch.setenv("AWS_REGION", "us-east-1")

    def make() -> tuple[str, Any, SqliteLedger]:
        bucket = make_bucket(prefix="reconcile")
        doc = yaml.safe_load((ROOT / "rules.yaml").read_text())
        doc["bucket"] = bucket
        rules = tmp_path / f"{bucket}.yaml"
        rules.write_text(yaml.safe_dump(doc, sort_keys=False))
        monkeypatch.setenv("BROKER_RULES", str(rules))
        return bucket, store.s3_client(), SqliteLedger(tmp_path / f"{bucket}.db")

    return make


def put(s3: Any, bucket: str, size: int, ledger: SqliteLedger | None = None, *, max_bytes: int = 5 * 1024**2) -> str:
    """A real object under the avatars rule's prefix, granted and settled in ``ledger`` if one is given."""
    key = f"{PREFIX}{time.strftime('%Y-%m-%d')}/{uuid.uuid4().hex}.png"
    etag = s3.put_object(Bucket=bucket, Key=key, Body=b"\x89PNG" + b"0" * (size - 4))["ETag"].strip('"')
    if ledger is not None:
        now = int(time.time())
        ledger.reserve(grant(key, bucket=bucket, issued=now - 30, max_bytes=max_bytes), LIMITS, now=now - 30)
        ledger.settle(bucket, key, etag=etag, size=size, verdict=VERIFIED, now=now)
    return key


def reconcile_json(ledger: SqliteLedger, capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, Any]]:
    code = main(["reconcile", "--json", "--ledger", f"sqlite:///{ledger.path}"])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, json.loads(out)


def test_reconcile_finds_exactly_the_grantless_and_the_wrong_size_object(
        real: Callable[[], tuple[str, Any, SqliteLedger]], capsys: pytest.CaptureFixture[str]) -> None:
    bucket, s3, ledger = real()
    put(s3, bucket, 100, ledger)                      # granted, verified, as granted
    stray = put(s3, bucket, 100)                      # no grant: written with the store's own credentials
    wrong = put(s3, bucket, 100, ledger, max_bytes=50)  # larger than its grant allowed
    code, doc = reconcile_json(ledger, capsys)
    assert code == 1
    assert sorted((f["kind"], f["key"]) for f in doc["findings"]) == [("differs", wrong), ("no_grant", stray)]
    differs = next(f for f in doc["findings"] if f["kind"] == "differs")
    assert differs["grant_id"] == grant_id_for(bucket, wrong) and differs["cause"] == "size"
    assert doc["summary"]["objects"] == 3 and doc["summary"]["grants"] == 2 and doc["summary"]["findings"] == 2
    assert f"s3://{bucket}/{PREFIX}" in doc["areas"]

    assert main(["reconcile", "--ledger", f"sqlite:///{ledger.path}", "--limit", "1"]) == 1
    out = capsys.readouterr().out
    assert "... and 1 more" in out and out.splitlines()[-1] == "2 finding(s): 1 no_grant, 1 differs"


def test_reconcile_of_a_clean_bucket_exits_0(real: Callable[[], tuple[str, Any, SqliteLedger]],
                                             capsys: pytest.CaptureFixture[str]) -> None:
    bucket, s3, ledger = real()
    put(s3, bucket, 100, ledger)
    put(s3, bucket, 2000, ledger)
    code, doc = reconcile_json(ledger, capsys)
    assert code == 0 and doc["findings"] == [] and doc["summary"]["objects"] == 2
    assert main(["reconcile", "--ledger", f"sqlite:///{ledger.path}"]) == 0
    assert "nothing found: the ledger and the bucket agree" in capsys.readouterr().out
