"""``broker usage`` as an operator runs it: on a SQLite ledger, or on audit files, in a table or JSON."""
from __future__ import annotations

import io
import json
import time
from pathlib import Path
from typing import Any

import pytest

from broker.cli import main
from broker.core.usage import day_label
from broker.ledger import REJECTED, VERIFIED, GrantRecord, Limit, grant_id_for
from broker.ledger.sqlite import SqliteLedger
from broker.timefmt import from_unix, iso_z

NOW = int(time.time())
ISSUED = NOW - 7200  # two hours ago: every grant's form has expired
DAY = day_label(ISSUED)
KIB = 1024


def grant(n: int, *, client: str = "web-app", profile: str = "avatars", issued: int = ISSUED,
          ttl: int = 300) -> GrantRecord:
    key = f"uploads/{client}/{profile}/{n:032x}.png"
    return GrantRecord(grant_id=grant_id_for("b", key), client=client, profile=profile, bucket="b", key=key,
                       content_type="image/png", min_bytes=1, max_bytes=5 * KIB * KIB, reserved_bytes=KIB * KIB,
                       issued_at=issued, expires_at=issued + ttl)


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("BROKER_LEDGER", "BROKER_AUDIT_FILE", "BROKER_RULES"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def ledger_url(tmp_path: Path, env: None) -> str:
    """A ledger with web-app's avatars (one verified, one rejected, one reused, one unused) and docs, and denials."""
    path = tmp_path / "ledger.db"
    db = SqliteLedger(path)
    limits = [Limit("client:web-app")]
    for g, size, verdict in ((grant(1), 2 * KIB, VERIFIED), (grant(2), 9 * KIB, REJECTED),
                             (grant(3, profile="documents"), 3 * KIB, VERIFIED)):
        db.reserve(g, limits, now=g.issued_at)
        db.settle(g.bucket, g.key, etag=f"e{g.key}", size=size, verdict=verdict, now=g.issued_at + 5)
    db.settle("b", grant(1).key, etag="again", size=KIB, verdict=VERIFIED, now=ISSUED + 60)  # the form posted twice
    db.reserve(grant(4), limits, now=ISSUED)  # never used
    db.reserve(grant(5, client="mobile", profile="photos", issued=NOW - 60, ttl=3600), [], now=NOW - 60)  # open
    db.count_denial("web-app", "avatars", now=ISSUED)
    db.count_denial("web-app", None, now=ISSUED)
    db.close()
    return f"sqlite:///{path}"  # sqlite:////abs/path.db


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def usage_json(args: list[str], capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    code, out, err = run(["usage", "--json", *args], capsys)
    assert code == 0, err
    return json.loads(out)


def test_json_counts_every_column_per_client_and_day(ledger_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    doc = usage_json(["--ledger", ledger_url], capsys)
    assert set(doc) == {"since", "until", "by", "rows", "totals", "source"}
    assert doc["source"] == "ledger" and doc["by"] == ["client", "day"]
    assert doc["rows"] == [
        {"client": "mobile", "day": day_label(NOW - 60), "grants": 1, "uploads": 0, "verified": 0, "rejected": 0,
         "expired": 0, "unused": 1, "bytes": 0, "denials": 0, "reused": 0},
        {"client": "web-app", "day": DAY, "grants": 4, "uploads": 3, "verified": 2, "rejected": 1, "expired": 1,
         "unused": 0, "bytes": 15 * KIB, "denials": 2, "reused": 1},
    ]
    assert doc["totals"]["grants"] == 5 and doc["totals"]["bytes"] == 15 * KIB
    assert doc["until"] >= iso_z(from_unix(NOW)) > doc["since"]


def test_by_profile_and_one_client(ledger_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    doc = usage_json(["--ledger", ledger_url, "--by", "profile", "--client", "web-app"], capsys)
    assert [(r["profile"], r["grants"], r["bytes"], r["denials"]) for r in doc["rows"]] == [
        ("", 0, 0, 1), ("avatars", 3, 12 * KIB, 1), ("documents", 1, 3 * KIB, 0)]


def test_the_ledger_comes_from_broker_ledger(ledger_url: str, capsys: pytest.CaptureFixture[str],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BROKER_LEDGER", ledger_url)
    assert usage_json(["--by", "client"], capsys)["totals"]["grants"] == 5


def test_the_table_is_aligned_with_human_sizes_and_a_total(ledger_url: str,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["usage", "--ledger", ledger_url, "--by", "client"], capsys)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("usage from ") and "(ledger: sqlite:///" in lines[0]
    header, *rows = lines[1:]
    assert header.split() == ["client", "grants", "uploads", "verified", "rejected", "expired", "unused", "bytes",
                              "denials", "reused"]
    assert rows[1].split() == ["web-app", "4", "3", "2", "1", "1", "0", "15", "KiB", "2", "1"]
    assert rows[-1].split()[:2] == ["total", "5"] and "15 KiB" in rows[-1]
    assert len({len(line) for line in lines[1:] if line.rstrip() == line}) == 1  # every row as wide as the header


def test_an_empty_period_says_so(ledger_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["usage", "--ledger", ledger_url, "--since", "2020-01-01", "--until", "2020-01-02"], capsys)
    assert code == 0 and out.splitlines()[-1] == "no grants in that period"
    assert usage_json(["--ledger", ledger_url, "--since", "2020-01-01", "--until", "2020-01-02"], capsys)["rows"] == []


@pytest.mark.parametrize("args, message", [
    pytest.param(["--by", "client,user"], "'user' is not one of client, profile, day", id="bad_by"),
    pytest.param(["--since", "last week"], "--since 'last week' is not a time", id="bad_since"),
    pytest.param(["--since", "1d", "--until", "2d"], "must be after --since", id="until_before_since"),
])
def test_bad_options_exit_2(args: list[str], message: str, ledger_url: str,
                            capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["usage", "--ledger", ledger_url, *args], capsys)
    assert code == 2 and message in err and out == ""


def test_a_ledger_that_is_not_there_is_an_error_and_is_not_created(tmp_path: Path, env: None,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["usage", "--ledger", f"sqlite:///{tmp_path}/nope.db"], capsys)
    assert code == 2 and "there is no ledger at" in err and "Traceback" not in err
    assert not (tmp_path / "nope.db").exists()
    code, _, err = run(["usage", "--ledger", "postgres://db"], capsys)
    assert code == 2 and "is not a ledger" in err


def test_without_ledger_or_audit_log_it_says_what_to_give(env: None, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["usage"], capsys)
    assert code == 2 and "--ledger sqlite:///var/ledger.db, or --audit FILE" in err


# --------------------------------------------------------------------------- from audit files


def line(rec: dict[str, Any]) -> str:
    return json.dumps(rec) + "\n"


def audit_lines(at: int) -> str:
    t = iso_z(from_unix(at), millis=True)
    exp = iso_z(from_unix(at + 300), millis=True)
    allowed = {"time": t, "event": "upload", "decision": "allowed", "client": "web-app", "profile": "avatars",
               "bucket": "b", "expires_at": exp}
    return "".join([
        line({**allowed, "key": "k1"}),
        line({"time": t, "event": "verification", "verdict": "verified", "client": "web-app", "profile": "avatars",
              "bucket": "b", "key": "k1", "etag": "x", "size": 2048}),
        line({**allowed, "key": "k2"}),
        line({"time": t, "event": "upload", "decision": "denied", "client": "web-app", "profile": "avatars"}),
        line({"time": t, "event": "upload", "decision": "error", "status": 400, "error": "invalid_request"}),
        "this is not JSON\n",
        "\n",
        line({"event": "upload", "decision": "allowed", "client": "web-app", "key": "k3"}),  # no time
    ])


def test_audit_files_count_and_malformed_lines_are_reported(tmp_path: Path, env: None,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "audit.jsonl"
    log.write_text(audit_lines(ISSUED))
    code, out, err = run(["usage", "--json", "--audit", str(log)], capsys)
    assert code == 0
    doc = json.loads(out)
    assert doc["source"] == "audit"
    assert doc["rows"] == [{"client": "web-app", "day": DAY, "grants": 2, "uploads": 1, "verified": 1,
                            "rejected": 0, "expired": 1, "unused": 0, "bytes": 2048, "denials": 1, "reused": 0}]
    assert f"{log}: skipped 2 malformed line(s) (the first, line 6:" in err


def test_the_audit_file_defaults_to_broker_audit_file_and_dash_is_stdin(
        tmp_path: Path, env: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "audit.jsonl"
    log.write_text(audit_lines(ISSUED))
    monkeypatch.setenv("BROKER_AUDIT_FILE", str(log))
    code, out, _ = run(["usage", "--by", "client"], capsys)
    assert code == 0 and "(audit: " in out and out.splitlines()[-1].split()[:3] == ["total", "2", "1"]
    monkeypatch.setattr("sys.stdin", io.StringIO(audit_lines(ISSUED)))
    doc = usage_json(["--audit", "-", "--audit", str(log), "--by", "day"], capsys)
    assert [(r["day"], r["grants"], r["denials"]) for r in doc["rows"]] == [(DAY, 2, 2)]  # same keys: one grant each


def test_an_unreadable_audit_file_exits_2(tmp_path: Path, env: None, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["usage", "--audit", str(tmp_path / "missing.jsonl")], capsys)
    assert code == 2 and "cannot read the audit log" in err and "No such file" in err


def test_help_teaches(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["usage", "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    for words in ("examples:", "broker usage --since 24h", "exit status:", "unused", "--audit -"):
        assert words in out
