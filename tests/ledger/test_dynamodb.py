"""The DynamoDB engine's own guarantees, on moto and on dynalite (a real DynamoDB API server).

The shared contract (tests/ledger/test_contract.py) runs on this engine too; here: the table it
creates, its errors (a missing table, a server down or silent), all or nothing across scopes
when a scope refuses or a write fails, a crash between counting and recording, writes resent
after a lost answer, and the counters against the grants under 16 threads.
"""
from __future__ import annotations

import json
import random
import socket
import threading
import time
from dataclasses import replace
from typing import Any, Callable, Iterator

import pytest
from botocore.exceptions import ClientError, ReadTimeoutError

from broker.deploy.iam import LEDGER_ACTIONS
from broker.ledger import (EXPIRED, ISSUED, REPLAYED, SETTLED, VERIFIED, GrantRecord, LedgerUnavailable, Limit,
                           QuotaExceeded, day_of, grant_id_for, hour_of, window_end)
from broker.ledger.dynamodb import ATTRIBUTE_DEFINITIONS, KEY_SCHEMA, TTL_SECONDS, DynamoLedger
from broker.s3.client import dynamodb_client
from tests.ledger.dynamo_fixtures import dynalite_ledger, free_port, moto_ledger

T0 = 1_795_000_000 - 1_795_000_000 % 86400 + 3600 * 10  # 10:00 UTC on some day
MIB = 1024 * 1024
ENGINES = [pytest.param("moto", id="moto"), pytest.param("dynalite", id="dynalite", marks=pytest.mark.store)]


@pytest.fixture(params=ENGINES)
def dyn(request: pytest.FixtureRequest) -> Iterator[DynamoLedger]:
    if request.param == "moto":
        with moto_ledger() as ledger:
            yield ledger
    else:
        with dynalite_ledger(request.getfixturevalue("dynalite")) as ledger:
            yield ledger


@pytest.fixture
def real_dyn(dynalite: str) -> Iterator[DynamoLedger]:
    """dynalite only: requests really run at once (moto serialises them)."""
    with dynalite_ledger(dynalite) as ledger:
        yield ledger


def grant(n: int = 0, *, client: str = "acme", reserved: int = MIB, issued: int = T0, ttl: int = 300,
          user: str | None = None) -> GrantRecord:
    key = f"uploads/{client}/{n:032x}.png"
    return GrantRecord(
        grant_id=grant_id_for("uploads", key), client=client, profile="avatar", bucket="uploads", key=key,
        content_type="image/png", min_bytes=1, max_bytes=5 * MIB, reserved_bytes=reserved, issued_at=issued,
        expires_at=issued + ttl, declared_size=reserved, user=user, request_id=f"req-{n}")


def raw_counter(ledger: DynamoLedger, scope: str, day: str = day_of(T0)) -> dict[str, int]:
    """The counter item of (scope, day) as it is stored, zeros included."""
    item = ledger._client.get_item(TableName=ledger.table, Key={"pk": {"S": f"c#{scope}"}, "sk": {"S": day}},
                                   ConsistentRead=True).get("Item", {})
    return {name: int(value["N"]) for name, value in item.items() if name not in ("pk", "sk")}


def raw_items(ledger: DynamoLedger, prefix: str) -> list[dict[str, Any]]:
    return [item for item in ledger._client.scan(TableName=ledger.table, ConsistentRead=True)["Items"]
            if item["pk"]["S"].startswith(prefix)]


class Faulty:
    """A DynamoDB client whose named operations go through ``fault(real_operation, params)``."""

    def __init__(self, real: Any, **faults: Callable[[Callable[..., Any], dict[str, Any]], Any]) -> None:
        self._real, self._faults = real, faults

    def __getattr__(self, name: str) -> Any:
        operation = getattr(self._real, name)
        fault = self._faults.get(name)
        return operation if fault is None else (lambda **params: fault(operation, params))


class Crash(BaseException):
    """The process dies here: no except clause of the engine runs."""


def client_error(code: str, status: int, operation: str) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": f"simulated {code}"},
                        "ResponseMetadata": {"HTTPStatusCode": status}}, operation)


# --------------------------------------------------------------------------- the table


def test_create_table_makes_the_documented_table_and_may_run_again(dyn: DynamoLedger) -> None:
    table = dyn._client.describe_table(TableName=dyn.table)["Table"]
    assert table["KeySchema"] == list(KEY_SCHEMA)
    assert sorted(table["AttributeDefinitions"], key=str) == sorted(ATTRIBUTE_DEFINITIONS, key=str)
    assert table["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"
    assert not table.get("GlobalSecondaryIndexes") and not table.get("LocalSecondaryIndexes")
    ttl = dyn._client.describe_time_to_live(TableName=dyn.table)["TimeToLiveDescription"]
    if dyn._client.meta.endpoint_url.startswith("http://127.0.0.1"):  # dynalite: no UpdateTimeToLive
        assert ttl["TimeToLiveStatus"] == "DISABLED"
    else:
        assert (ttl["TimeToLiveStatus"], ttl["AttributeName"]) == ("ENABLED", "ttl")
    dyn.create_table()  # already there, TTL already on: fine

    g = dyn.reserve(grant(1), [Limit("client:acme")], now=T0)
    (item,) = raw_items(dyn, "g#")
    assert int(item["ttl"]["N"]) == g.expires_at + TTL_SECONDS  # grants vanish 90 days after they expire


def test_every_field_of_a_grant_survives_the_round_trip(dyn: DynamoLedger) -> None:
    full = replace(grant(1, user="bob"), profile="", content_type="", declared_size=None, protocol="companion")
    stored = dyn.reserve(full, [], now=T0)
    assert stored.scopes == () and dyn.get(full.grant_id) == stored  # no scope: counted nowhere
    assert list(dyn.counters()) == []


# --------------------------------------------------------------------------- errors


def test_a_missing_table_says_so_and_how_to_create_it(dyn: DynamoLedger, capsys: pytest.CaptureFixture[str]) -> None:
    other = DynamoLedger("no-such-ledger", client=dyn._client)
    calls = {
        "get": lambda: other.get("0" * 32),
        "reserve": lambda: other.reserve(grant(1), [Limit("client:acme", 1, MIB)], now=T0),
        "settle": lambda: other.settle("uploads", "k", etag="e", size=1, verdict=VERIFIED, now=T0),
        "grants": lambda: list(other.grants()),
        "counters": lambda: list(other.counters()),
        "release_expired": lambda: other.release_expired(now=T0),
        "denials": lambda: list(other.denials()),
    }
    for name, call in calls.items():
        with pytest.raises(LedgerUnavailable) as caught:
            call()
        message = str(caught.value)
        assert "ledger table 'no-such-ledger' does not exist" in message, name
        assert "deploy template.yaml, or create it with the key schema in broker/ledger/dynamodb.py" in message
        assert caught.value.status == 503
    other.count_denial("acme", "avatar", now=T0)  # best effort: logged, not raised
    assert '"event": "ledger_denial_not_counted"' in capsys.readouterr().err


def test_a_server_that_is_down_fails_in_seconds_and_names_the_table() -> None:
    port = free_port()  # nothing listens there
    ledger = DynamoLedger("broker-ledger", endpoint_url=f"http://127.0.0.1:{port}")
    started = time.monotonic()
    with pytest.raises(LedgerUnavailable) as caught:
        ledger.reserve(grant(1), [Limit("client:acme", 10, 10 * MIB)], now=T0)
    assert time.monotonic() - started < 8  # three tries with standard backoff, then 503
    message = str(caught.value)
    assert "ledger table 'broker-ledger'" in message and "EndpointConnectionError" in message
    assert "test-secret-key-never-logged" not in message and "AKID" not in message
    ledger.close()


def test_a_server_that_never_answers_times_out_instead_of_hanging() -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept_and_say_nothing() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept_and_say_nothing, daemon=True)
    thread.start()
    endpoint = f"http://127.0.0.1:{listener.getsockname()[1]}"
    try:
        # The ledger's own clients: short timeouts, three tries, and a twin that never resends.
        ledger = DynamoLedger("broker-ledger", endpoint_url=endpoint)
        config, once = ledger._client.meta.config, ledger._once.meta.config
        assert (config.connect_timeout, config.read_timeout) == (1, 3)
        assert config.retries == {"total_max_attempts": 3, "mode": "standard"}
        assert once.retries == {"total_max_attempts": 1, "mode": "standard"}  # a lost answer is never resent
        ledger.close()
        # The same settings, shortened so the test takes a second.
        quick = DynamoLedger("broker-ledger", client=dynamodb_client(endpoint_url=endpoint, read_timeout=0.5,
                                                                     max_attempts=1))
        started = time.monotonic()
        with pytest.raises(LedgerUnavailable, match="ReadTimeoutError"):
            quick.get("0" * 32)
        assert time.monotonic() - started < 3
    finally:
        stop.set()
        thread.join()
        for conn in held:
            conn.close()
        listener.close()


# --------------------------------------------------------------------------- all or nothing


def test_a_refusal_in_the_second_scope_takes_the_first_scope_count_back(dyn: DynamoLedger) -> None:
    limits = [Limit("client:acme", 10, 10 * MIB), Limit("user:acme:bob", 1, None)]
    dyn.reserve(grant(1, user="bob"), limits, now=T0)
    with pytest.raises(QuotaExceeded) as caught:
        dyn.reserve(grant(2, user="bob", reserved=2 * MIB), limits, now=T0 + 30)
    exc = caught.value
    assert (exc.scope, exc.quota, exc.limit, exc.usage) == ("user:acme:bob", "uploads_per_hour", 1, 1)
    assert exc.retry_after == window_end(hour_of(T0)) - (T0 + 30)
    assert raw_counter(dyn, "client:acme") == {hour_of(T0): 1, "b": MIB}  # counted, then taken back
    assert dyn.get(grant(2).grant_id) is None
    assert len(raw_items(dyn, "r#client:acme")) == 1  # no finder for the refused grant


def test_a_reservation_larger_than_the_whole_quota_is_refused_without_a_write(dyn: DynamoLedger) -> None:
    with pytest.raises(QuotaExceeded) as caught:
        dyn.reserve(grant(1, reserved=3 * MIB), [Limit("client:acme", 5, 2 * MIB)], now=T0)
    assert (caught.value.quota, caught.value.usage, caught.value.limit) == ("bytes_per_day", 0, 2 * MIB)
    with pytest.raises(QuotaExceeded) as caught:
        dyn.reserve(grant(2), [Limit("client:acme", 0, None)], now=T0)
    assert (caught.value.quota, caught.value.usage) == ("uploads_per_hour", 0)
    assert raw_items(dyn, "c#") == []


def test_a_crash_between_counting_and_recording_leaves_only_an_over_count(dyn: DynamoLedger) -> None:
    def crash(put: Callable[..., Any], params: dict[str, Any]) -> Any:
        raise Crash()

    crashing = DynamoLedger(dyn.table, client=Faulty(dyn._client, put_item=crash))
    limit = Limit("client:acme", 10, 2 * MIB)
    with pytest.raises(Crash):
        crashing.reserve(grant(1, ttl=60), [limit], now=T0)
    assert dyn.get(grant(1).grant_id) is None
    assert raw_counter(dyn, "client:acme") == {hour_of(T0): 1, "b": MIB}  # counted, never recorded: over
    dyn.reserve(grant(2), [limit], now=T0 + 61)
    # Its finder outlives it; once expired, the next reservation refused for want of bytes releases
    # what it can: it finds no grant behind that finder and drops it without taking anything off (a
    # count is never taken back twice), so the refusal stands.
    with pytest.raises(QuotaExceeded):
        dyn.reserve(grant(3), [limit], now=T0 + 62)
    assert raw_counter(dyn, "client:acme") == {hour_of(T0): 2, "b": 2 * MIB}
    assert [i["sk"]["S"].partition("#")[2] for i in raw_items(dyn, "r#")] == [grant(2).grant_id]
    recorded = sum(g.reserved_bytes for g in dyn.grants() if g.status == ISSUED)
    assert raw_counter(dyn, "client:acme")["b"] >= recorded  # over, never under


def test_a_put_that_certainly_failed_takes_the_counts_back(dyn: DynamoLedger) -> None:
    def refuse(put: Callable[..., Any], params: dict[str, Any]) -> Any:
        raise client_error("ValidationException", 400, "PutItem")

    failing = DynamoLedger(dyn.table, client=Faulty(dyn._client, put_item=refuse))
    with pytest.raises(LedgerUnavailable, match="cannot record grant .*ValidationException"):
        failing.reserve(grant(1), [Limit("client:acme", 10, 10 * MIB), Limit("user:acme:bob")], now=T0)
    assert raw_counter(dyn, "client:acme") == {hour_of(T0): 0, "b": 0}
    assert raw_counter(dyn, "user:acme:bob") == {hour_of(T0): 0, "b": 0}
    assert list(dyn.counters()) == []  # as if nothing happened (the SQLite engine rolls back)


def test_a_put_whose_answer_was_lost_is_found_by_its_token(dyn: DynamoLedger) -> None:
    def lose_answer(put: Callable[..., Any], params: dict[str, Any]) -> Any:
        put(**params)  # carried out...
        raise ReadTimeoutError(endpoint_url="http://dynamodb")  # ...but the answer never came

    lossy = DynamoLedger(dyn.table, client=Faulty(dyn._client, put_item=lose_answer))
    stored = lossy.reserve(grant(1), [Limit("client:acme", 10, 10 * MIB)], now=T0)
    assert dyn.get(stored.grant_id) == stored
    assert raw_counter(dyn, "client:acme") == {hour_of(T0): 1, "b": MIB}

    def lose_request(put: Callable[..., Any], params: dict[str, Any]) -> Any:
        raise ReadTimeoutError(endpoint_url="http://dynamodb")  # never carried out

    lost = DynamoLedger(dyn.table, client=Faulty(dyn._client, put_item=lose_request))
    with pytest.raises(LedgerUnavailable, match="ReadTimeoutError"):
        lost.reserve(grant(2), [Limit("client:acme", 10, 10 * MIB)], now=T0)
    assert raw_counter(dyn, "client:acme") == {hour_of(T0): 1, "b": MIB}  # checked absent: taken back


def test_a_settlement_resent_after_a_lost_answer_finds_its_own_work(dyn: DynamoLedger) -> None:
    g = dyn.reserve(grant(1, reserved=5 * MIB), [Limit("client:acme")], now=T0)

    def resend(update: Callable[..., Any], params: dict[str, Any]) -> Any:
        if params["Key"]["pk"]["S"].startswith("g#"):
            update(**params)  # carried out, the answer lost: botocore sends the same request again
        return update(**params)

    resending = DynamoLedger(dyn.table, client=Faulty(dyn._client, update_item=resend))
    done = resending.settle(g.bucket, g.key, etag="e1", size=MIB, verdict=VERIFIED, now=T0 + 1)
    assert done.outcome == SETTLED  # not "replayed": the second send matched its own token
    assert raw_counter(dyn, "client:acme")["b"] == MIB


def test_a_decrement_that_fails_is_logged_and_left_as_an_over_count(dyn: DynamoLedger,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    dyn.reserve(grant(1, ttl=10), [Limit("client:acme")], now=T0)

    def throttled(update: Callable[..., Any], params: dict[str, Any]) -> Any:
        if params["Key"]["pk"]["S"].startswith("c#"):
            raise client_error("InternalServerError", 500, "UpdateItem")  # maybe done: never resent
        return update(**params)

    dyn._once = Faulty(dyn._once, update_item=throttled)
    assert dyn.release_expired(now=T0 + 11) == 1
    assert dyn.get(grant(1).grant_id).status == EXPIRED  # type: ignore[union-attr]
    assert raw_counter(dyn, "client:acme")["b"] == MIB  # not released: over, never under
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    assert any(line["event"] == "ledger_overcount" and line["bytes"] == MIB for line in lines)


# --------------------------------------------------------------------------- replays and races


def test_an_event_replayed_is_settled_once(dyn: DynamoLedger) -> None:
    g = dyn.reserve(grant(1), [Limit("client:acme"), Limit("user:acme:bob")], now=T0)
    outcomes = [dyn.settle(g.bucket, g.key, etag='"e1"', size=700, verdict=VERIFIED, now=T0 + n).outcome
                for n in range(3)]
    assert outcomes == [SETTLED, REPLAYED, REPLAYED]
    assert dyn.get(g.grant_id).settled_at == T0  # type: ignore[union-attr]
    assert raw_counter(dyn, "client:acme")["b"] == raw_counter(dyn, "user:acme:bob")["b"] == 700
    assert raw_items(dyn, "r#") == [] and raw_items(dyn, "p#") == []  # its finders are gone


@pytest.mark.store
def test_settlements_racing_for_one_object_settle_it_once(real_dyn: DynamoLedger) -> None:
    g = real_dyn.reserve(grant(1), [Limit("client:acme")], now=T0)
    start = threading.Barrier(8)
    outcomes: list[str] = []

    def settle() -> None:
        start.wait()
        outcomes.append(real_dyn.settle(g.bucket, g.key, etag="e1", size=700, verdict=VERIFIED, now=T0).outcome)

    threads = [threading.Thread(target=settle) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(outcomes) == [REPLAYED] * 7 + [SETTLED]
    assert raw_counter(real_dyn, "client:acme")["b"] == 700


@pytest.mark.store
def test_sixteen_threads_in_two_scopes_never_exceed_either_and_count_every_byte_once(real_dyn: DynamoLedger) -> None:
    """Reserve (client and per-user quotas), settle, replay, reuse and release at once; then the
    counters must equal what the grants say, exactly: nothing counted twice, nothing lost."""
    users = ["ann", "bob", "cy", "dee"]
    per_user, per_client = 6, 20
    granted: list[GrantRecord] = []
    lock = threading.Lock()
    start = threading.Barrier(16)
    rng = random.Random(7)
    sizes = {n: rng.randrange(1, 2 * MIB) for n in range(16 * 6)}

    def work(worker: int) -> None:
        start.wait()
        for i in range(6):
            n = worker * 6 + i
            user = users[n % len(users)]
            g = grant(n, user=user, ttl=rng.choice((5, 600)))
            limits = [Limit("client:acme", per_client, 40 * MIB), Limit(f"user:acme:{user}", per_user, None)]
            try:
                stored = real_dyn.reserve(g, limits, now=T0)
            except QuotaExceeded:
                continue
            with lock:
                granted.append(stored)
            if n % 3:  # two in three objects arrive; some events twice, some keys used again
                real_dyn.settle(g.bucket, g.key, etag=f"e{n}", size=sizes[n], verdict=VERIFIED, now=T0 + 1)
                if n % 5 == 0:
                    real_dyn.settle(g.bucket, g.key, etag=f"e{n}", size=sizes[n], verdict=VERIFIED, now=T0 + 2)
                if n % 7 == 0:
                    real_dyn.settle(g.bucket, g.key, etag=f"x{n}", size=100, verdict=VERIFIED, now=T0 + 3)
            if worker % 4 == 0:
                real_dyn.release_expired(now=T0 + 10, limit=5)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    real_dyn.release_expired(now=T0 + 10)

    stored = {g.grant_id: g for g in real_dyn.grants()}
    assert sorted(stored) == sorted(g.grant_id for g in granted)  # every grant recorded once, no ghost
    assert len(stored) <= per_client
    for user in users:
        assert sum(1 for g in stored.values() if g.user == user) <= per_user

    def held(g: GrantRecord) -> int:
        if g.etag is not None:
            return (g.size or 0) + g.reused_bytes
        return 0 if g.status == EXPIRED else g.reserved_bytes

    expected: dict[tuple[str, str], int] = {}
    for g in stored.values():
        for scope in g.scopes:
            expected[(scope, hour_of(T0))] = expected.get((scope, hour_of(T0)), 0) + 1
            expected[(scope, day_of(T0))] = expected.get((scope, day_of(T0)), 0) + held(g)
    assert {(c.scope, c.window): c.value for c in real_dyn.counters()} == expected


# --------------------------------------------------------------------------- what each function may call


def test_each_function_calls_only_what_its_iam_policy_allows() -> None:
    """The signer reserves (releasing an expired grant first), reads a grant and counts a denial;
    the verifier reads and settles (first, replayed, reused, after expiry). The operations they
    send are exactly broker/deploy/iam.py's LEDGER_ACTIONS for that role."""
    from moto import mock_aws

    with mock_aws():
        ledger = DynamoLedger("ledger-for-iam", region="us-east-1")  # its own clients, watched
        ledger.create_table()
        sent: list[str] = []

        def record(model: Any, **kwargs: Any) -> None:
            sent.append(f"dynamodb:{model.name}")

        for client in (ledger._client, ledger._once):
            client.meta.events.register("before-call.dynamodb.*", record)
        limits = [Limit("client:acme", 1, MIB), Limit("user:acme:bob", 5, None)]
        ledger.reserve(grant(1, ttl=10, user="bob"), limits, now=T0)
        with pytest.raises(QuotaExceeded):
            ledger.reserve(grant(2, user="bob"), limits, now=T0 + 5)
        ledger.reserve(grant(3, user="bob", issued=T0 + 3600), limits, now=T0 + 3600)  # needs grant 1's bytes
        ledger.get(grant(3).grant_id)
        ledger.count_denial("acme", "avatar", now=T0)
        signer, sent[:] = set(sent), []
        g = grant(3)
        for etag in ("e1", "e1", "e2"):
            ledger.get(g.grant_id)
            ledger.settle(g.bucket, g.key, etag=etag, size=100, verdict=VERIFIED, now=T0 + 3700)
        late = grant(1)
        ledger.settle(late.bucket, late.key, etag="late", size=100, verdict=VERIFIED, now=T0 + 3700)
        verifier = set(sent)
    assert signer == set(LEDGER_ACTIONS["signer"])
    assert verifier == set(LEDGER_ACTIONS["verifier"])
