"""The grant ledger under real ``broker serve`` worker processes: quotas, kill -9, a locked ledger.

Each test starts ``broker serve`` as an operator does (granian, several worker processes forked
from one server process) with ``BROKER_LEDGER=sqlite:////<tmp>/ledger.db``, in its own session
so that the whole process group can be killed at once, and opens that ledger itself afterwards
with :class:`~broker.ledger.sqlite.SqliteLedger`. Signing needs no store: no request here makes
the S3 client call anything.

The quota race and kill -9 also run on the DynamoDB engine (``-dynalite``): ``BROKER_LEDGER=
dynamodb://<a fresh table>`` with ``AWS_ENDPOINT_URL_DYNAMODB`` pointing at the session's dynalite
server (a real DynamoDB-API server, ``tests/ledger/dynamo_fixtures.py``), read back afterwards with
a :class:`~broker.ledger.dynamodb.DynamoLedger`. The locked ledger and the full disk are SQLite
faults and stay SQLite-only.

- quotas: 16 client threads race for the last grants of one client's quota; exactly the quota is
  issued, across every worker process, and the ledger holds exactly what was issued.
- kill -9: the whole server killed at a random moment under load, three times on one ledger
  file (twice on one table); every form a client received has its record, the file is intact,
  the counters add up. On DynamoDB a worker killed between its counter update and its grant put
  leaves a grant counted but never recorded, by design (an over-count, the safe direction): there
  the counters may exceed the grants, by at most the requests in flight, and the excess is a figure.
- a locked ledger (another process holds its write lock past the busy timeout, which no root
  privilege gets around): 503 ``ledger_unavailable``, no form, audited; issuing resumes after.
- a full disk under the ledger (a commit that cannot write its WAL): the same 503, audited (a
  failed COMMIT, which SQLite has already rolled back, once escaped as a 500).
"""
from __future__ import annotations

import contextlib
import json
import os
import random
import resource
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pytest
import requests
import yaml

from broker.ledger import ISSUED, Ledger, day_of, hour_of
from broker.ledger.dynamodb import DynamoLedger
from broker.ledger.sqlite import SqliteLedger
from tests.adapters.test_wsgi import children, free_port
from tests.conftest import ROOT, WEB_KEY
from tests.ledger.dynamo_fixtures import dynalite  # noqa: F401 - the session's DynamoDB-API server
from tests.ledger.dynamo_fixtures import dynalite_cli, running_dynalite, table_name

SIZE = 1200
AVATAR = {"filename": "me.png", "content_type": "image/png", "size": SIZE}
SCOPE = "client:web-app"
#: Off Linux these tests cannot find the workers; on CI (Linux) they never skip: a missing /proc fails them.
OFF_LINUX = not Path("/proc/self/io").exists() and not os.environ.get("CI")
pytestmark = pytest.mark.skipif(OFF_LINUX, reason="finds the workers through Linux /proc")
#: SqliteLedger's busy timeout (seconds): how long a write waits for the lock before it fails.
BUSY_TIMEOUT = 10.0
#: The engines the quota race runs on (the ``place`` fixture's params). On dynalite (one Node
#: process, a few ms of CPU per call, four or five calls a request) both tests are made smaller:
#: fewer requests in the race, fewer kills (see ``SIZES``).
ENGINES = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("dynalite", id="dynalite", marks=pytest.mark.store),  # a real server, as in tests/ledger
]
#: kill -9 runs on a dynalite server of its own, one that a client killed mid-request does not end
#: (``own_dynalite``): the session's would die, and every later dynalite test with it.
KILL_ENGINES = [ENGINES[0], pytest.param("own dynalite", id="dynalite", marks=pytest.mark.store)]
#: Per engine: requests in the quota race (for a quota of 50), servers killed in turn on one ledger.
SIZES = {"sqlite": (200, 3), "dynalite": (100, 2)}


def alive_in_group(pgid: int) -> list[int]:
    """Processes of process group ``pgid`` that still run (zombies excluded: they run no code)."""
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                fields = Path(f"/proc/{name}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                found.append(int(name))
    return found


def bytes_written(pid: int) -> int:
    """Bytes process ``pid`` has written so far (``wchar`` of /proc/PID/io), 0 if it is gone."""
    try:
        for line in Path(f"/proc/{pid}/io").read_text().splitlines():
            if line.startswith("wchar:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def clear_of_an_hour_end(margin: float) -> None:
    """Wait past the next UTC hour if it ends within ``margin`` seconds (windows are UTC hours and days)."""
    left = 3600 - time.time() % 3600
    if left < margin:
        time.sleep(left + 0.5)


def write_rules(path: Path, quota: dict[str, Any] | None) -> Path:
    """A copy of the example rules.yaml, web-app given ``quota``."""
    doc = yaml.safe_load((ROOT / "rules.yaml").read_text())
    if quota is not None:
        doc["clients"]["web-app"]["quota"] = quota
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@dataclass
class LedgerPlace:
    """Where a test's ``broker serve`` keeps its grant ledger, and how the test reads it afterwards."""

    engine: str  # "sqlite" or "dynalite"
    url: str  # BROKER_LEDGER
    env: dict[str, str] = field(default_factory=dict)  # more environment for broker serve
    path: Path | None = None  # sqlite: the file
    endpoint: str | None = None  # dynalite: its endpoint URL

    def open(self) -> Ledger:
        """The ledger, opened by the test itself (close it)."""
        if self.path is not None:
            return SqliteLedger(self.path)
        return DynamoLedger(self.url[len("dynamodb://"):], endpoint_url=self.endpoint, region="us-east-1")

    def check_intact(self) -> None:
        """A SQLite file passes ``integrity_check`` (a DynamoDB table has no file to tear)."""
        if self.path is not None:
            assert integrity(self.path) == [("ok",)]


#: Loaded into the ``own_dynalite`` server (``node --require``). dynalite 4.0.0 rethrows any error of
#: a request (``index.js``: ``req.on('error', function (err) { throw err })``), and Node emits one
#: ("aborted", ECONNRESET) when a client's connection closes before the answer: a broker worker
#: killed mid-request ends the whole server (``Error: aborted ... code: 'ECONNRESET'``, exit 1), and
#: the test then reads a dead endpoint. DynamoDB goes on serving: so does this server. A request cut
#: short while it was sent was never carried out; one received in full is carried out (the callbacks
#: that do it are already queued), its answer lost: as on DynamoDB. Each one is a line in
#: ``$LEDGER_TEST_ABORTS``; any other uncaught error still ends the server.
SURVIVE_ABORTED_CLIENTS = """\
const fs = require('fs')
process.on('uncaughtException', function (err) {
  if (err && err.code === 'ECONNRESET' && err.message === 'aborted') {
    fs.appendFileSync(process.env.LEDGER_TEST_ABORTS, 'aborted\\n')
    return
  }
  console.error(err && err.stack ? err.stack : err)
  process.exit(1)
})
"""


@pytest.fixture
def own_dynalite(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A dynalite server of this test's own that outlives clients killed mid-request (its URL, its aborts file)."""
    cli, node = dynalite_cli(), shutil.which("node")
    if cli is None or node is None:
        request.getfixturevalue("dynalite")  # skips (fails in CI) with the command that installs it
        raise AssertionError("unreachable")
    preload, aborts = tmp_path / "survive_aborted_clients.js", tmp_path / "dynalite.aborts"
    preload.write_text(SURVIVE_ABORTED_CLIENTS)
    aborts.touch()
    with contextlib.ExitStack() as stack:
        with pytest.MonkeyPatch.context() as env:  # only while the server starts (Popen takes os.environ)
            env.setenv("NODE_OPTIONS", f"{os.environ.get('NODE_OPTIONS', '')} --require {preload}".strip())
            env.setenv("LEDGER_TEST_ABORTS", str(aborts))
            url = stack.enter_context(running_dynalite(node, cli))
        yield url, aborts


@pytest.fixture
def place(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LedgerPlace]:
    """An empty ledger of the engine ``request.param`` names: a file in tmp_path, or a fresh dynalite table
    (of the session's server, or of ``own_dynalite`` for "own dynalite")."""
    if request.param == "sqlite":
        path = tmp_path / "ledger.db"
        yield LedgerPlace("sqlite", f"sqlite:///{path}", path=path)
        return
    if request.param == "own dynalite":
        endpoint = request.getfixturevalue("own_dynalite")[0]
    else:
        endpoint = request.getfixturevalue("dynalite")
    table = table_name()
    ledger = DynamoLedger(table, endpoint_url=endpoint, region="us-east-1")
    try:
        ledger.create_table()
        env = {"AWS_ENDPOINT_URL_DYNAMODB": endpoint,  # dynalite takes any credentials: dummies unless set
               "AWS_ACCESS_KEY_ID": os.environ.get("AWS_ACCESS_KEY_ID", "AKIDTESTTESTTEST"),
               "AWS_SECRET_ACCESS_KEY": os.environ.get("AWS_SECRET_ACCESS_KEY", "test-secret-key-never-logged"),
               "AWS_DEFAULT_REGION": os.environ.get("AWS_DEFAULT_REGION", "us-east-1")}
        yield LedgerPlace("dynalite", f"dynamodb://{table}", env=env, endpoint=endpoint)
    finally:
        with contextlib.suppress(Exception):
            ledger._client.delete_table(TableName=table)
        ledger.close()


@dataclass
class Server:
    """A running ``broker serve`` (its own process group), its files and a way to end it."""

    proc: subprocess.Popen[bytes]
    url: str
    work: Path
    tag: str
    audit_path: Path
    workers: list[int] = field(default_factory=list)

    @property
    def stderr_path(self) -> Path:
        return self.work / f"{self.tag}.stderr.log"

    def log(self) -> list[dict[str, Any]]:
        """The server's JSON log lines (stderr)."""
        return [json.loads(line) for line in self.stderr_path.read_text().splitlines() if line.startswith("{")]

    def kill(self) -> None:
        """SIGKILL the whole process group (server and workers at once); return once none of it runs."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=30)
        deadline = time.monotonic() + 30
        while alive_in_group(self.proc.pid):
            assert time.monotonic() < deadline, f"still running after SIGKILL: {alive_in_group(self.proc.pid)}"
            time.sleep(0.01)

    def stop(self) -> int:
        """SIGTERM, as an operator stops it; the exit status."""
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)


@pytest.fixture
def start(tmp_path: Path, watch: Any) -> Iterator[Any]:
    """A factory: ``start(tag, ledger, rules, workers)`` runs ``broker serve`` and waits until every worker is up.

    ``ledger``: a SQLite file, or a :class:`LedgerPlace`.
    """
    started: list[Server] = []

    def make(tag: str, ledger: Path | LedgerPlace, rules: Path, workers: int) -> Server:
        port = free_port()
        audit = tmp_path / "audit.jsonl"
        watch.files.add(audit)
        if isinstance(ledger, Path):
            ledger = LedgerPlace("sqlite", f"sqlite:///{ledger}", path=ledger)
        env = {**os.environ, **ledger.env, "BROKER_LEDGER": ledger.url, "PYTHONPATH": str(ROOT)}
        env.pop("BROKER_AUDIT_FILE", None)
        with (tmp_path / f"{tag}.stdout.log").open("wb") as out, (tmp_path / f"{tag}.stderr.log").open("wb") as err:
            proc = subprocess.Popen(
                [sys.executable, "-m", "broker", "serve", "--host", "127.0.0.1", "--port", str(port),
                 "--workers", str(workers), "--rules", str(rules), "--audit-file", str(audit)],
                cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err, start_new_session=True)
        server = Server(proc, f"http://127.0.0.1:{port}", tmp_path, tag, audit)
        started.append(server)
        deadline = time.monotonic() + 60
        while True:  # every worker has built its broker (it logs rules_loaded), and one answers
            assert proc.poll() is None, f"broker serve exited with {proc.returncode}:\n{server.stderr_path.read_text()}"
            assert time.monotonic() < deadline, f"broker serve not up in 60 s:\n{server.stderr_path.read_text()}"
            loaded = server.stderr_path.read_text().count('"event": "rules_loaded"')
            if loaded >= workers + 1:  # broker serve checks the rules once, then each worker
                try:
                    if requests.get(f"{server.url}/health", timeout=5).status_code == 200:
                        break
                except requests.RequestException:
                    pass
            time.sleep(0.05)
        server.workers = children(proc.pid)
        assert len(server.workers) == workers, server.workers
        return server

    yield make
    for server in started:
        if server.proc.poll() is None or alive_in_group(server.proc.pid):
            server.kill()


def post(session: requests.Session, url: str, timeout: float = 30, *, close: bool = False) -> requests.Response:
    """POST /uploads (``close``: on a connection of its own, closed after the answer)."""
    headers = {"x-api-key": WEB_KEY, **({"Connection": "close"} if close else {})}
    return session.post(f"{url}/uploads", json=AVATAR, headers=headers, timeout=timeout)


def audit_records(path: Path) -> list[dict[str, Any]]:
    """Every audit line (fails on a torn or invalid one)."""
    return [json.loads(line) for line in path.read_text().split("\n") if line] if path.exists() else []


def integrity(path: Path) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("PRAGMA integrity_check").fetchall()
    finally:
        conn.close()


def expected_counters(grants: list[Any]) -> dict[tuple[str, str], int]:
    """What the counters must hold for these grants (all still issued): grants per hour, bytes per day."""
    expected: dict[tuple[str, str], int] = defaultdict(int)
    for grant in grants:
        for scope in grant.scopes:
            expected[(scope, hour_of(grant.issued_at))] += 1
            expected[(scope, day_of(grant.issued_at))] += grant.reserved_bytes
    return dict(expected)


# --------------------------------------------------------------------------- quotas


@pytest.mark.parametrize("place", ENGINES, indirect=True)
@pytest.mark.parametrize("quota, name, limit, usage", [
    pytest.param({"uploads_per_hour": 50}, "uploads_per_hour", 50, 50, id="uploads_per_hour"),
    # 50 uploads of 1200 bytes fit, with 1199 bytes to spare: the 51st does not.
    pytest.param({"bytes_per_day": f"{50 * SIZE + SIZE - 1} B"}, "bytes_per_day", 51 * SIZE - 1, 50 * SIZE,
                 id="bytes_per_day"),
])
def test_a_quota_is_never_exceeded_across_worker_processes(start: Any, tmp_path: Path, watch: Any,
                                                           place: LedgerPlace, quota: dict[str, Any], name: str,
                                                           limit: int, usage: int) -> None:
    """16 threads race for the last of a quota of 50 on 4 worker processes; exactly 50 are granted.

    200 requests (100 on dynalite: 50 past the quota are as good a race, at half the cost).
    """
    clear_of_an_hour_end(30)  # a new window in the middle of the race would rightly grant more
    server = start("quota", place, write_rules(tmp_path / "rules.yaml", quota), workers=4)
    written = {pid: bytes_written(pid) for pid in server.workers}
    total = SIZES[place.engine][0]
    tickets, lock = iter(range(total)), threading.Lock()
    results: list[tuple[int, Any, dict[str, Any]]] = []  # status, headers (any case), body
    errors: list[str] = []
    go = threading.Event()

    def client() -> None:
        with requests.Session() as session:
            go.wait()
            while True:
                with lock:
                    if next(tickets, None) is None:
                        return
                try:  # a new connection each time: the workers accept from one socket, and a few
                    # keep-alive connections opened at once may all land on one worker
                    r = post(session, server.url, close=True)
                    item = (r.status_code, r.headers, r.json())
                except Exception as exc:  # noqa: BLE001 - reported below
                    errors.append(repr(exc))
                    continue
                with lock:
                    results.append(item)

    threads = [threading.Thread(target=client) for _ in range(16)]
    for t in threads:
        t.start()
    go.set()
    for t in threads:
        t.join(timeout=60)
    assert errors == [] and len(results) == total
    statuses = Counter(status for status, _, _ in results)
    assert statuses == {200: 50, 429: total - 50}, statuses  # exactly the quota: not 51, and never a 500
    served_by = [pid for pid in server.workers if bytes_written(pid) - written[pid] > 10_000]
    assert len(served_by) >= 2, "the race did not reach several worker processes"
    watch.note(f"ledger: quota race ({name}, {place.engine}), worker processes that answered",
               f"{len(served_by)} of 4")

    granted = {body["grant_id"]: body for status, _, body in results if status == 200}
    assert len(granted) == 50
    for body in granted.values():
        watch.secret(body["fields"]["x-amz-signature"], "a signature the broker issued")
    span = 86400 if name == "bytes_per_day" else 3600
    for status, headers, body in results:
        if status != 429:
            continue
        assert "fields" not in body and "url" not in body
        assert (body["error"], body["check"], body["quota"], body["limit"], body["usage"]) == (
            "denied", "quota_exceeded", name, limit, usage), body
        assert headers.get("Retry-After", "").isdigit(), headers
        assert 1 <= int(headers["Retry-After"]) <= span and abs(int(headers["Retry-After"]) - body["retry_after"]) <= 1
    assert server.stop() == 0

    ledger = place.open()
    try:
        grants = list(ledger.grants())
        assert {g.grant_id for g in grants} == set(granted)  # exactly the forms issued, nothing more
        for g in grants:
            body = granted[g.grant_id]
            assert (g.client, g.bucket, g.key, g.status, g.reserved_bytes, g.scopes) == (
                "web-app", body["bucket"], body["key"], ISSUED, SIZE, (SCOPE,))
        counters = {(c.scope, c.window): c.value for c in ledger.counters()}
        assert counters == expected_counters(grants)
        assert counters[(SCOPE, hour_of(grants[0].issued_at))] == 50
        assert counters[(SCOPE, day_of(grants[0].issued_at))] == 50 * SIZE
        assert [n for client, _, _, n in ledger.denials() if client == "web-app"] == [total - 50]
    finally:
        ledger.close()
    place.check_intact()
    records = audit_records(server.audit_path)
    assert Counter((r["decision"], r["status"], r.get("check")) for r in records) == {
        ("allowed", 200, None): 50, ("denied", 429, "quota_exceeded"): total - 50}
    assert {r["grant_id"] for r in records if r["decision"] == "allowed"} == set(granted)
    assert not [e for e in server.log() if e["event"] == "internal_error"]


# --------------------------------------------------------------------------- kill -9


@pytest.mark.parametrize("place", KILL_ENGINES, indirect=True)
def test_kill_9_mid_load_leaves_no_form_without_its_record(start: Any, tmp_path: Path, watch: Any,
                                                           place: LedgerPlace, request: pytest.FixtureRequest) -> None:
    """Servers in turn on one ledger (three on a file, two on a table), each SIGKILLed at a random moment.

    A grant is committed before its form is signed, so every form a client received has its
    record. A record whose form never reached its client is allowed (the form died with the
    process): counted as a figure. On DynamoDB a grant counted but never recorded is allowed
    too (a worker killed between its counter update and its grant put): an over-count, a figure.
    """
    clients = 8
    rules = write_rules(tmp_path / "rules.yaml", {"uploads_per_hour": 1_000_000, "bytes_per_day": "1 TB"})
    rng = random.Random()
    received: dict[str, dict[str, Any]] = {}
    statuses: Counter[int] = Counter()
    lock = threading.Lock()
    rounds = SIZES[place.engine][1]
    for round_ in range(rounds):
        server = start(f"kill{round_}", place, rules, workers=3)
        stop = threading.Event()
        round_received = []
        answered = threading.Event()  # the load is on: a first answer came

        def client() -> None:
            with requests.Session() as session:
                while not stop.is_set():
                    try:
                        r = post(session, server.url, timeout=10)
                        body = r.json()
                    except (requests.RequestException, ValueError):  # the server died under this request
                        return
                    with lock:
                        statuses[r.status_code] += 1
                        if r.status_code == 200:
                            round_received.append(body)
                    answered.set()

        threads = [threading.Thread(target=client) for _ in range(clients)]
        for t in threads:
            t.start()
        # A random moment under load: counted from the first answer, as a fresh server's first
        # requests may take a while on a busy machine (a kill before any would test nothing).
        assert answered.wait(timeout=30), f"round {round_}: no answer in 30 s"
        time.sleep(0.1 + rng.random() * 0.7)
        server.kill()
        stop.set()
        for t in threads:
            t.join(timeout=30)
        assert not any(t.is_alive() for t in threads)
        assert round_received, f"round {round_}: no grant before the kill ({dict(statuses)})"
        for body in round_received:
            assert body["grant_id"] not in received, "one grant id answered twice"
            received[body["grant_id"]] = body
    assert set(statuses) == {200}, statuses  # no 500, no 503 while the servers lived

    place.check_intact()
    ledger = place.open()
    try:
        grants = {g.grant_id: g for g in ledger.grants()}  # read before the counters: a grant put follows its count
        missing = sorted(set(received) - set(grants))
        assert missing == [], f"{len(missing)} forms issued without a ledger record: {missing[:5]}"
        for gid, body in received.items():
            g = grants[gid]
            assert (g.client, g.profile, g.bucket, g.key, g.content_type, g.min_bytes, g.max_bytes) == (
                "web-app", body["profile"], body["bucket"], body["key"], body["content_type"],
                body["min_bytes"], body["max_bytes"])
        counters = {(c.scope, c.window): c.value for c in ledger.counters()}
    finally:
        ledger.close()
    expected = expected_counters(list(grants.values()))
    if place.engine == "sqlite":  # one transaction: counted if and only if recorded
        assert counters == expected
        over_grants = 0
    else:  # counted, then recorded: a kill between leaves an over-count, never an under-count
        over = {k: counters.get(k, 0) - expected.get(k, 0) for k in {*counters, *expected}}
        assert all(n >= 0 for n in over.values()), f"under-counted: { {k: n for k, n in over.items() if n < 0} }"
        over_grants = sum(n for (_, window), n in over.items() if window.startswith("h"))
        over_bytes = sum(n for (_, window), n in over.items() if window.startswith("d"))
        assert over_bytes == over_grants * SIZE, (over_grants, over_bytes)  # one ADD counts both
        # at most one grant in flight per client thread when its server died
        assert over_grants <= rounds * clients, f"{over_grants} grants counted but never recorded"
    # An audit line is written after the grant is recorded: none names a grant the ledger lacks.
    audited = {r["grant_id"] for r in audit_records(tmp_path / "audit.jsonl") if r["decision"] == "allowed"}
    assert audited <= set(grants)
    unanswered = len(grants) - len(received)
    watch.count(f"ledger: kill -9 ({place.engine}), forms received (each with its record)", len(received))
    watch.count(f"ledger: kill -9 ({place.engine}), grants recorded whose form never reached its client", unanswered)
    if place.engine != "sqlite":
        watch.count(f"ledger: kill -9 ({place.engine}), grants counted but never recorded (over-count)", over_grants)
        aborts = request.getfixturevalue("own_dynalite")[1].read_text().count("aborted")
        watch.count(f"ledger: kill -9 ({place.engine}), requests to dynalite cut off by the kill", aborts)


# --------------------------------------------------------------------------- ledger unavailable


def test_a_locked_ledger_fails_closed_and_issuing_resumes_once_it_is_free(start: Any, tmp_path: Path,
                                                                          watch: Any) -> None:
    """Another process holds the ledger's write lock (``BEGIN EXCLUSIVE``) past the busy timeout.

    Root gets around file modes, not SQLite's locks: every write waits the busy timeout, then
    fails. The request is refused with 503 ``ledger_unavailable``, no form, and audited so.
    """
    ledger_path = tmp_path / "ledger.db"
    server = start("locked", ledger_path, write_rules(tmp_path / "rules.yaml", {"uploads_per_hour": 100}), workers=2)
    session = requests.Session()
    before = post(session, server.url)
    assert before.status_code == 200, before.text

    holder = sqlite3.connect(ledger_path, isolation_level=None, timeout=30)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        started = time.monotonic()
        refused = post(session, server.url, timeout=BUSY_TIMEOUT * 3)
        waited = time.monotonic() - started
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert refused.status_code == 503, refused.text
    body = refused.json()
    assert body["error"] == "ledger_unavailable" and "database is locked" in body["message"], body
    assert not {"fields", "url", "grant_id", "key"} & set(body)
    watch.note("ledger: a locked ledger, time to the 503", f"{waited:.1f} s (busy timeout {BUSY_TIMEOUT:.0f} s)")

    after = post(session, server.url)  # the lock is gone: issuing resumes at once
    assert after.status_code == 200, after.text
    session.close()
    assert server.stop() == 0

    ledger = SqliteLedger(ledger_path)
    try:
        grants = list(ledger.grants())
        assert {g.grant_id for g in grants} == {before.json()["grant_id"], after.json()["grant_id"]}
        assert {(c.scope, c.window): c.value for c in ledger.counters()} == expected_counters(grants)
    finally:
        ledger.close()
    by_request = {r["request_id"]: r for r in audit_records(server.audit_path)}
    assert len(by_request) == 3
    line = by_request[refused.headers["X-Request-Id"]]
    assert (line["decision"], line["status"], line["error"], line["client"]) == (
        "error", 503, "ledger_unavailable", "web-app")
    assert "database is locked" in line["reason"]
    assert not {"key", "grant_id", "conditions", "bucket"} & set(line)
    assert by_request[before.headers["X-Request-Id"]]["decision"] == "allowed"
    assert by_request[after.headers["X-Request-Id"]]["grant_id"] == after.json()["grant_id"]


def test_a_full_disk_under_the_ledger_fails_closed_with_503(start: Any, tmp_path: Path) -> None:
    """Every commit fails for want of space: 503 ``ledger_unavailable``, no form, audited; then issuing resumes.

    The disk is made full for the ledger alone: no write of a worker may take a file past the
    WAL's current size (``RLIMIT_FSIZE``, set on the running workers; Python ignores SIGXFSZ, so
    the write fails with EFBIG as it would with ENOSPC). The audit file stays far below that.
    """
    ledger_path = tmp_path / "ledger.db"
    server = start("full", ledger_path, write_rules(tmp_path / "rules.yaml", {"uploads_per_hour": 100}), workers=2)
    session = requests.Session()
    before = [post(session, server.url, close=True) for _ in range(3)]
    assert [r.status_code for r in before] == [200] * 3
    wal = ledger_path.with_name(ledger_path.name + "-wal")
    limit = wal.stat().st_size
    # The audit file gets 5 more lines (4 refused, 1 after) of about the size of these 3: twice that
    # must still be under the limit. (The WAL grows by whole pages a commit, an audit line by ~1 KB.)
    line = server.audit_path.stat().st_size / len(before)
    assert limit > 2 * (len(before) + 5) * line, f"the audit file would hit the limit too ({limit} B)"
    saved = {pid: resource.prlimit(pid, resource.RLIMIT_FSIZE) for pid in server.workers}
    try:
        for pid, (_, hard) in saved.items():
            resource.prlimit(pid, resource.RLIMIT_FSIZE, (limit, hard))
        refused = [post(session, server.url, close=True) for _ in range(4)]
    finally:
        for pid, limits in saved.items():
            resource.prlimit(pid, resource.RLIMIT_FSIZE, limits)
    after = post(session, server.url)
    session.close()
    assert after.status_code == 200, after.text
    assert [r.status_code for r in refused] == [503] * 4, [r.text for r in refused]
    for r in refused:
        assert r.json()["error"] == "ledger_unavailable" and "fields" not in r.json()
    assert server.stop() == 0

    ledger = SqliteLedger(ledger_path)
    try:
        grants = list(ledger.grants())
        assert {g.grant_id for g in grants} == {r.json()["grant_id"] for r in [*before, after]}
        assert {(c.scope, c.window): c.value for c in ledger.counters()} == expected_counters(grants)
    finally:
        ledger.close()
    assert integrity(ledger_path) == [("ok",)]
    by_request = {r["request_id"]: r for r in audit_records(server.audit_path)}
    for r in refused:
        line = by_request[r.headers["X-Request-Id"]]
        assert (line["decision"], line["status"], line["error"]) == ("error", 503, "ledger_unavailable")
