"""The DynamoDB engine of the grant ledger: one table, every invariant a conditional write.

Many Lambda instances share the table, and nothing is read, changed and written back: a quota
holds because each counter moves by ``ADD`` under a ``ConditionExpression``, and a grant changes
state only by an update conditioned on the state it leaves, so exactly one writer wins.

The table (:meth:`DynamoLedger.create_table`, or ``LedgerTable`` in ``template.yaml``): string
keys ``pk`` (hash) and ``sk`` (range), on-demand billing, TTL on ``ttl``. Five kinds of item::

    item      pk               sk                           attributes
    grant     g#<grant id>     g                            the GrantRecord's fields, op, ttl
    counter   c#<scope>        d<day>                       b: the day's bytes; h<hour>: grants
                                                            issued in each of its hours
    finder    r#<scope>        <expires_at>#<grant id>      one per scope of an issued grant
    finder    p#<shard>        <expires_at>#<grant id>      one per issued grant (SHARDS shards)
    denials   n                <day>#<client>#<profile>     client, profile, day, n

Windows are written as :func:`broker.ledger.hour_of` and ``day_of`` write them, for the grant's
``issued_at``; in finder and denial keys ``expires_at`` and the day are zero-padded numbers, so
the strings sort as the numbers do.

How each operation keeps the counters right, and why a crash anywhere leaves at most an
over-count (the safe direction), never an under-count:

- **reserve**: per scope one ``ADD`` of 1 to the hour and of the reserved bytes to the day,
  conditioned on both staying within the limits; refused for bytes, the scope's expired grants
  are released first (their ``r#`` finders up to now) and the count tried once more; a refusal
  undoes the scopes already counted. Then the finders; the grant, conditioned on not existing.
  A crash after a counter: counted, never recorded.
- **release**: the grant goes ``issued`` -> ``expired`` (conditioned on ``issued``: one winner),
  then its bytes come off each scope. A crash between: the bytes stay counted.
- **settle**: the grant takes its verdict, conditioned on the status it was read in. A
  settlement that adds bytes adds them first (and takes them off again if another writer won);
  one that takes bytes off does so after. **Reuse** is conditioned on the object being neither
  the settled one nor the last reused one, so a replayed event counts once.
- Every state change also sets ``op``, a token of its writer, and accepts its own token: a write
  that botocore resent after a lost answer finds its own work done and succeeds.
- Decrements go through a client that never resends (:func:`broker.s3.client.dynamodb_clients`):
  a lost answer leaves an over-count, not a second decrement; a decrement that fails is logged
  (``ledger_overcount``) and the operation goes on. Increments may be resent: that only over-counts.

Finders are hints, never the truth: whoever finds an expired one tries the conditional release
and deletes the finder whatever the answer. The reports (:meth:`DynamoLedger.grants`,
:meth:`DynamoLedger.counters`) scan the table with a filter: they are for operators, not for the
request path. Denials share one partition (``n``): a flood of denials past about 1,000 a second
is throttled, and a denial not counted is still audited.
"""
from __future__ import annotations

import dataclasses
import secrets
import time
import types
import typing
import zlib
from typing import Any, Iterable, Iterator, Sequence

from broker.ledger import (EXPIRED, ISSUED, NO_GRANT, REPLAYED, REUSED, SETTLED, Counter,
                           GrantRecord, Ledger, LedgerUnavailable, Limit, QuotaExceeded, Settlement, day_of,
                           grant_id_for, hour_of, window_end)
from broker.logs import log_event
from broker.s3.client import dynamodb_clients, error_code, error_message, never_applied, sdk_errors

#: The table's keys (``template.yaml``'s ``LedgerTable`` declares the same).
KEY_SCHEMA = ({"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"})
ATTRIBUTE_DEFINITIONS = ({"AttributeName": "pk", "AttributeType": "S"},
                         {"AttributeName": "sk", "AttributeType": "S"})
#: The TTL attribute: grants (and their finders) vanish this long after they expire.
TTL_ATTRIBUTE = "ttl"
TTL_SECONDS = 90 * 86400
#: Shards of the finder index that :meth:`DynamoLedger.release_expired` reads (spread the writes).
SHARDS = 8
#: Expired grants one reserve releases per scope before counting (the rest: next time, or release_expired).
RELEASE_PER_SCOPE = 100
#: Tries of a conditional step that lost a race with another writer.
ATTEMPTS = 5
#: Error codes of UpdateTimeToLive that mean "this server has no TTL" or "it is on already".
_TTL_TOLERATED = frozenset({"UnknownOperationException", "ValidationException", "NotImplemented",
                            "UnsupportedOperationException"})
_CONDITION_FAILED = "ConditionalCheckFailedException"
_MISSING_TABLE = "ResourceNotFoundException"


class _Refused(Exception):
    """A ConditionExpression was false (internal: always handled in this module)."""


# --------------------------------------------------------------------------- items <-> records


def _kind(name: str, hint: Any) -> str:
    """A GrantRecord field's DynamoDB type: N (int), S (str) or L (tuple of str); None is left out."""
    options = [arg for arg in typing.get_args(hint) if arg is not type(None)] \
        if typing.get_origin(hint) in (typing.Union, types.UnionType) else [hint]
    if options == [int]:
        return "N"
    if options == [str]:
        return "S"
    if len(options) == 1 and typing.get_origin(options[0]) is tuple:
        return "L"
    raise TypeError(f"GrantRecord.{name}: no DynamoDB encoding for {hint!r} (add one in {__name__})")


_KINDS: dict[str, str] = {name: _kind(name, hint) for name, hint in typing.get_type_hints(GrantRecord).items()}


def _value(value: int | str) -> dict[str, str]:
    """One expression value: a number or a string."""
    return {"N": str(value)} if isinstance(value, int) else {"S": value}


def _grant_item(record: GrantRecord) -> dict[str, Any]:
    """The record's fields as DynamoDB attributes (None left out)."""
    item: dict[str, Any] = {}
    for name, kind in _KINDS.items():
        value = getattr(record, name)
        if value is None:
            continue
        if kind == "N":
            item[name] = {"N": str(int(value))}
        elif kind == "S":
            item[name] = {"S": str(value)}
        else:
            item[name] = {"L": [{"S": str(v)} for v in value]}
    return item


def _record(item: dict[str, Any]) -> GrantRecord:
    """The GrantRecord a grant item holds."""
    values: dict[str, Any] = {}
    for name, kind in _KINDS.items():
        if name not in item:
            continue
        attr = item[name]
        values[name] = int(attr["N"]) if kind == "N" else attr["S"] if kind == "S" \
            else tuple(v["S"] for v in attr["L"])
    return GrantRecord(**values)


def _number(item: dict[str, Any], name: str) -> int:
    return int(item[name]["N"]) if name in item else 0


def _grant_key(grant_id: str) -> dict[str, Any]:
    return {"pk": {"S": f"g#{grant_id}"}, "sk": {"S": "g"}}


def _counter_key(scope: str, day: str) -> dict[str, Any]:
    return {"pk": {"S": f"c#{scope}"}, "sk": {"S": day}}


def _finder_sk(expires_at: int, grant_id: str) -> str:
    return f"{expires_at:012d}#{grant_id}"


def _expired_upto(now: int) -> str:
    """Finder keys below this one belong to grants expired at ``now`` (``expires_at <= now``)."""
    return f"{now + 1:012d}"


def _finder_keys(record: GrantRecord) -> list[dict[str, Any]]:
    """Every finder of a grant: one per scope and one in its shard."""
    sk = _finder_sk(record.expires_at, record.grant_id)
    shard = zlib.crc32(record.grant_id.encode("utf-8", "surrogatepass")) % SHARDS
    pks = [f"r#{scope}" for scope in dict.fromkeys(record.scopes)] + [f"p#{shard}"]
    return [{"pk": {"S": pk}, "sk": {"S": sk}} for pk in pks]


def _token() -> str:
    """A writer's token for ``op``: lets a resent write recognise its own work."""
    return secrets.token_hex(8)


# --------------------------------------------------------------------------- the engine


class DynamoLedger(Ledger):
    """The grant ledger in one DynamoDB table (see the module docstring for its items)."""

    def __init__(self, table: str, *, client: Any = None, endpoint_url: str | None = None,
                 region: str | None = None, once_client: Any = None) -> None:
        """``client``: a ready botocore/boto3 DynamoDB client, and ``once_client`` its twin that
        never resends, for the decrements (default: ``client`` itself, with its own retries).
        Without ``client``, both are made (:func:`broker.s3.client.dynamodb_clients`)."""
        self.table = table
        self.location = f"dynamodb://{table}" + (f" at {endpoint_url}" if endpoint_url else "")
        self._owned = client is None
        if client is None:
            client, once_client = dynamodb_clients(region=region, endpoint_url=endpoint_url)
        self._client, self._once = client, once_client if once_client is not None else client
        self._errors = sdk_errors()

    # ------------------------------------------------------------------ the one place errors are mapped

    def _send(self, operation: str, params: dict[str, Any], *, once: bool = False) -> dict[str, Any]:
        """One client call; a false condition is :class:`_Refused`, other errors are botocore's.

        ``once``: through the client that never resends, trying again only after an error that
        certainly did nothing (throttled, no connection).
        """
        client = self._once if once else self._client
        tries = 3 if once else 1
        if operation != "batch_write_item":
            params = {"TableName": self.table, **params}
        for attempt in range(tries):
            try:
                return getattr(client, operation)(**params)  # type: ignore[no-any-return]
            except self._errors as exc:
                if error_code(exc) == _CONDITION_FAILED:
                    raise _Refused() from None
                if attempt + 1 < tries and never_applied(exc):
                    time.sleep(0.05 * 4 ** attempt)
                    continue
                raise
        raise AssertionError("unreachable")

    def _call(self, operation: str, what: str, params: dict[str, Any], *, once: bool = False) -> dict[str, Any]:
        """:meth:`_send`, with every botocore error turned into :class:`LedgerUnavailable`."""
        try:
            return self._send(operation, params, once=once)
        except self._errors as exc:
            raise self._unavailable(what, exc) from None

    def _unavailable(self, what: str, exc: BaseException) -> LedgerUnavailable:
        """The error naming the table, what failed and (for a missing table) how to fix it."""
        code = error_code(exc)
        region = getattr(getattr(self._client, "meta", None), "region_name", None)
        where = f" in region {region}" if region else ""
        if code == _MISSING_TABLE:
            return LedgerUnavailable(
                f"ledger table {self.table!r} does not exist{where} (while trying to {what}): deploy "
                "template.yaml, or create it with the key schema in broker/ledger/dynamodb.py "
                "(DynamoLedger.create_table does)")
        detail = f"{code}: {error_message(exc)}" if code else f"{type(exc).__name__}: {exc}"
        if len(detail) > 300:
            detail = detail[:297] + "..."
        return LedgerUnavailable(f"ledger table {self.table!r}{where}: cannot {what}: {detail}")

    def _maybe_applied(self, exc: BaseException) -> bool:
        """Could the failed request have been carried out (its answer lost, or a 5xx)?"""
        if never_applied(exc):
            return False
        response = getattr(exc, "response", None)
        if response is None:  # no answer at all: a read timeout, a closed connection
            return True
        return int(response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 500) >= 500

    # ------------------------------------------------------------------ small steps

    def _get(self, key: dict[str, Any], what: str) -> dict[str, Any] | None:
        item = self._call("get_item", what, {"Key": key, "ConsistentRead": True}).get("Item")
        return item if item else None

    def _query(self, pk: str, what: str, *, below: str | None = None, since: str | None = None,
               limit: int | None = None) -> Iterator[dict[str, Any]]:
        """Items of partition ``pk`` in key order, ``sk < below`` or ``sk >= since``."""
        names, values = {"#pk": "pk"}, {":pk": {"S": pk}}
        condition = "#pk = :pk"
        if below is not None:
            condition += " AND #sk < :below"
            names["#sk"], values[":below"] = "sk", {"S": below}
        elif since is not None:
            condition += " AND #sk >= :since"
            names["#sk"], values[":since"] = "sk", {"S": since}
        params: dict[str, Any] = {"KeyConditionExpression": condition, "ExpressionAttributeNames": names,
                                  "ExpressionAttributeValues": values, "ConsistentRead": True}
        left = limit
        while True:
            if left is not None:
                params["Limit"] = left
            page = self._call("query", what, params)
            for item in page.get("Items", []):
                yield item
            if left is not None:
                left -= len(page.get("Items", []))
                if left <= 0:
                    return
            if "LastEvaluatedKey" not in page:
                return
            params["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def _scan(self, prefix: str, what: str) -> Iterator[dict[str, Any]]:
        """Every item whose ``pk`` starts with ``prefix`` (a Scan: reports only)."""
        params: dict[str, Any] = {"FilterExpression": "begins_with(#pk, :prefix)",
                                  "ExpressionAttributeNames": {"#pk": "pk"},
                                  "ExpressionAttributeValues": {":prefix": {"S": prefix}}, "ConsistentRead": True}
        while True:
            page = self._call("scan", what, params)
            yield from page.get("Items", [])
            if "LastEvaluatedKey" not in page:
                return
            params["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def _batch(self, requests: list[dict[str, Any]], what: str) -> None:
        """BatchWriteItem in chunks of 25, sending unprocessed items again (puts and deletes are idempotent)."""
        for start in range(0, len(requests), 25):
            pending = {self.table: requests[start:start + 25]}
            for attempt in range(ATTEMPTS):
                left = self._call("batch_write_item", what, {"RequestItems": pending}).get("UnprocessedItems") or {}
                if not left.get(self.table):
                    break
                pending = left
                time.sleep(0.02 * 2 ** attempt)
            else:
                raise LedgerUnavailable(f"ledger table {self.table!r}: cannot {what}: still throttled after "
                                        f"{ATTEMPTS} tries")

    def _drop_finders(self, keys: list[dict[str, Any]], grant_id: str) -> None:
        """Delete finders, best effort: one left behind only costs its finder a wasted release."""
        try:
            self._batch([{"DeleteRequest": {"Key": key}} for key in keys], f"delete the finders of grant {grant_id}")
        except LedgerUnavailable as exc:
            log_event("ledger_finder_left", table=self.table, grant_id=grant_id, error=str(exc))

    def _add_bytes(self, scopes: Iterable[str], day: str, delta: int, why: str) -> None:
        """ADD ``delta`` bytes to each scope's ``day`` counter.

        Up: all or none (a failure takes off what was added, then raises). Down: best effort,
        through the client that never resends; a failure is logged and left as an over-count.
        """
        if delta == 0:
            return
        done: list[str] = []
        for scope in scopes:  # a scope named twice was counted twice
            try:
                self._call("update_item", f"{why} (scope {scope}, {day})",
                           {"Key": _counter_key(scope, day), "UpdateExpression": "ADD #b :n",
                            "ExpressionAttributeNames": {"#b": "b"},
                            "ExpressionAttributeValues": {":n": _value(delta)}}, once=delta < 0)
            except LedgerUnavailable as exc:
                if delta < 0:
                    log_event("ledger_overcount", table=self.table, scope=scope, window=day, bytes=-delta,
                              error=str(exc))
                    continue
                self._add_bytes(done, day, -delta, f"undo: {why}")
                raise
            done.append(scope)

    # ------------------------------------------------------------------ reserve

    def reserve(self, grant: GrantRecord, limits: Sequence[Limit], *, now: int) -> GrantRecord:
        """Record ``grant`` and count it in every limit's scope, all or nothing (see the module docstring)."""
        record = dataclasses.replace(grant, scopes=tuple(limit.scope for limit in limits))
        hour, day = hour_of(grant.issued_at), day_of(grant.issued_at)  # the windows it is counted in
        counted: list[str] = []
        try:
            for limit in limits:
                try:
                    self._count(limit, hour, day, record.reserved_bytes, now)
                except QuotaExceeded as exc:
                    # Expired grants give bytes back only when they are needed: one Query less per grant.
                    if exc.quota != "bytes_per_day" or not self._release_scope(limit.scope, now):
                        raise
                    self._count(limit, hour, day, record.reserved_bytes, now)
                counted.append(limit.scope)
            self._batch([{"PutRequest": {"Item": {**key, TTL_ATTRIBUTE: _value(record.expires_at + TTL_SECONDS)}}}
                         for key in _finder_keys(record)], f"record the finders of grant {record.grant_id}")
            self._put_grant(record)
        except _Unknown as exc:  # the grant may be recorded: keep its counts (at worst an over-count)
            raise LedgerUnavailable(str(exc)) from None
        except (QuotaExceeded, LedgerUnavailable):
            self._uncount(counted, hour, day, record.reserved_bytes)
            raise
        return record

    def _count(self, limit: Limit, hour: str, day: str, size: int, now: int) -> None:
        """One grant and ``size`` bytes into ``limit``'s scope, or :class:`QuotaExceeded` (nothing counted)."""
        names = {"#h": hour, "#b": "b"}
        values: dict[str, Any] = {":one": _value(1), ":n": _value(size)}
        conditions: list[str] = []
        possible = True
        if limit.uploads_per_hour is not None:
            conditions.append("(attribute_not_exists(#h) OR #h <= :hmax)")
            values[":hmax"] = _value(limit.uploads_per_hour - 1)
            possible = possible and limit.uploads_per_hour >= 1
        if limit.bytes_per_day is not None:
            conditions.append("(attribute_not_exists(#b) OR #b <= :bmax)")
            values[":bmax"] = _value(limit.bytes_per_day - size)
            possible = possible and size <= limit.bytes_per_day
        params: dict[str, Any] = {"Key": _counter_key(limit.scope, day), "UpdateExpression": "ADD #h :one, #b :n",
                                  "ExpressionAttributeNames": names, "ExpressionAttributeValues": values}
        if conditions:
            params["ConditionExpression"] = " AND ".join(conditions)
        what = f"count grant in scope {limit.scope}"
        refusal: QuotaExceeded | None = None
        for _ in range(ATTEMPTS):
            if possible:
                try:
                    self._call("update_item", what, params)
                    return
                except _Refused:
                    pass
            counter = self._get(_counter_key(limit.scope, day), f"read the counters of scope {limit.scope}") or {}
            grants, used = _number(counter, hour), _number(counter, "b")
            hourly = QuotaExceeded(limit.scope, "uploads_per_hour", limit.uploads_per_hour, grants,
                                   max(1, window_end(hour) - now)) if limit.uploads_per_hour is not None else None
            daily = QuotaExceeded(limit.scope, "bytes_per_day", limit.bytes_per_day, used,
                                  max(1, window_end(day) - now)) if limit.bytes_per_day is not None else None
            if hourly is not None and grants + 1 > hourly.limit:
                raise hourly
            if daily is not None and used + size > daily.limit:
                raise daily
            refusal = hourly or daily  # full when written, not when read: a release came between; again
        assert refusal is not None
        raise refusal

    def _uncount(self, scopes: list[str], hour: str, day: str, size: int) -> None:
        """Take one grant and ``size`` bytes off each scope (a refused or failed reserve), best effort."""
        for scope in scopes:
            try:
                self._call("update_item", f"undo the count of scope {scope}",
                           {"Key": _counter_key(scope, day), "UpdateExpression": "ADD #h :one, #b :n",
                            "ExpressionAttributeNames": {"#h": hour, "#b": "b"},
                            "ExpressionAttributeValues": {":one": _value(-1), ":n": _value(-size)}}, once=True)
            except LedgerUnavailable as exc:
                log_event("ledger_overcount", table=self.table, scope=scope, window=day, grants=1, bytes=size,
                          error=str(exc))

    def _put_grant(self, record: GrantRecord) -> None:
        """The grant item, conditioned on its id being new.

        Raises :class:`LedgerUnavailable` when it is certainly not recorded, :class:`_Unknown` when
        it may be; returns when it is (also when botocore's answer was lost but the read finds it).
        """
        op = _token()
        item = {**_grant_item(record), **_grant_key(record.grant_id), "op": {"S": op},
                TTL_ATTRIBUTE: _value(record.expires_at + TTL_SECONDS)}
        what = f"record grant {record.grant_id}"
        try:
            self._send("put_item", {"Item": item, "ConditionExpression": "attribute_not_exists(#pk) OR #op = :op",
                                    "ExpressionAttributeNames": {"#pk": "pk", "#op": "op"},
                                    "ExpressionAttributeValues": {":op": {"S": op}}})
        except _Refused:
            raise LedgerUnavailable(f"ledger table {self.table!r}: grant {record.grant_id} "
                                    f"({record.bucket}/{record.key}) is already recorded; a key is never "
                                    "granted twice") from None
        except self._errors as exc:
            if not self._maybe_applied(exc):
                raise self._unavailable(what, exc) from None
            # The put may have been carried out: undo the counts only if the grant is certainly not there.
            try:
                found = self._get(_grant_key(record.grant_id), f"check whether grant {record.grant_id} was recorded")
            except LedgerUnavailable:
                log_event("ledger_overcount", table=self.table, grant_id=record.grant_id, scopes=list(record.scopes),
                          bytes=record.reserved_bytes, error="the grant may or may not be recorded")
                raise _Unknown(str(self._unavailable(what, exc))) from None
            if found is None or found.get("op", {}).get("S") != op:
                raise self._unavailable(what, exc) from None

    # ------------------------------------------------------------------ release

    def _release_scope(self, scope: str, now: int) -> int:
        """Release the expired, unused grants counted in ``scope`` (up to RELEASE_PER_SCOPE); how many."""
        finders = list(self._query(f"r#{scope}", f"find the expired grants of scope {scope}",
                                   below=_expired_upto(now), limit=RELEASE_PER_SCOPE))
        return sum(self._release(finder, now) for finder in finders)

    def _release(self, finder: dict[str, Any], now: int) -> bool:
        """Release the grant a finder names, if it is still issued and expired; drop stale finders."""
        grant_id = finder["sk"]["S"].partition("#")[2]
        op = _token()
        try:
            attrs = self._call(
                "update_item", f"release expired grant {grant_id}",
                {"Key": _grant_key(grant_id), "UpdateExpression": "SET #st = :expired, #at = :now, #op = :op",
                 "ConditionExpression": "(#st = :issued AND #exp <= :now) OR #op = :op",
                 "ExpressionAttributeNames": {"#st": "status", "#at": "settled_at", "#op": "op",
                                              "#exp": "expires_at"},
                 "ExpressionAttributeValues": {":expired": {"S": EXPIRED}, ":issued": {"S": ISSUED},
                                               ":now": _value(now), ":op": {"S": op}},
                 "ReturnValues": "ALL_NEW"})["Attributes"]
        except _Refused:  # settled, released already, or never recorded: the finder is stale
            self._drop_finders([{"pk": finder["pk"], "sk": finder["sk"]}], grant_id)
            return False
        record = _record(attrs)
        self._add_bytes(record.scopes, day_of(record.issued_at), -record.reserved_bytes,
                        f"release the bytes of expired grant {grant_id}")
        self._drop_finders(_finder_keys(record), grant_id)
        return True

    def release_expired(self, *, now: int, limit: int = 1000) -> int:
        """Mark up to ``limit`` expired, unused grants ``expired`` and release their bytes; how many.

        Reads the oldest finders of every shard (one Query each), oldest first across shards.
        """
        if limit <= 0:
            return 0
        finders: list[dict[str, Any]] = []
        for shard in range(SHARDS):
            finders.extend(self._query(f"p#{shard}", "find expired grants", below=_expired_upto(now), limit=limit))
        finders.sort(key=lambda item: item["sk"]["S"])
        return sum(self._release(finder, now) for finder in finders[:limit])

    # ------------------------------------------------------------------ settle

    def settle(self, bucket: str, key: str, *, etag: str, size: int, verdict: str,
               checks: Sequence[str] = (), now: int) -> Settlement:
        """Settle the grant of ``bucket/key`` with the object the verifier judged (see the module docstring)."""
        grant_id = grant_id_for(bucket, key)
        etag = etag.strip('"')
        for _ in range(ATTEMPTS):
            item = self._get(_grant_key(grant_id), f"read grant {grant_id}")
            if item is None:
                return Settlement(NO_GRANT, None)
            record = _record(item)
            day = day_of(record.issued_at)  # the day its bytes were counted in
            if etag in (record.etag, record.reused_etag):
                return Settlement(REPLAYED, record)
            if record.etag is None:  # issued, or expired unused: its first object
                outcome = self._settle_first(record, day, etag=etag, size=size, verdict=verdict,
                                             checks=tuple(checks), now=now)
            else:  # a different object at a key already settled: the form was used again
                outcome = self._settle_reuse(record, day, etag=etag, size=size)
            if outcome is not None:
                return outcome
        raise LedgerUnavailable(f"ledger table {self.table!r}: grant {grant_id} kept changing while it was "
                                f"settled ({ATTEMPTS} tries); the object's event can be sent again")

    def _settle_first(self, record: GrantRecord, day: str, *, etag: str, size: int, verdict: str,
                      checks: tuple[str, ...], now: int) -> Settlement | None:
        """Issued (or expired) -> verdict; its bytes become ``size``. None: another writer came first.

        Conditioned on the status it was read in: of two settlements at once, one wins; the other
        reads again and finds a replay (same ETag) or a reuse.
        """
        held = record.reserved_bytes if record.status == ISSUED else 0  # an expired grant's bytes were released
        delta = size - held
        why = f"settle grant {record.grant_id}"
        if delta > 0:
            self._add_bytes(record.scopes, day, delta, why)
        op = _token()
        try:
            attrs = self._call(
                "update_item", why,
                {"Key": _grant_key(record.grant_id),
                 "UpdateExpression": "SET #st = :verdict, #size = :size, #etag = :etag, #checks = :checks, "
                                     "#at = :now, #op = :op",
                 "ConditionExpression": "#st = :was OR #op = :op",
                 "ExpressionAttributeNames": {"#st": "status", "#size": "size", "#etag": "etag", "#checks": "checks",
                                              "#at": "settled_at", "#op": "op"},
                 "ExpressionAttributeValues": {":verdict": {"S": verdict}, ":size": _value(size), ":etag": {"S": etag},
                                               ":checks": {"L": [{"S": c} for c in checks]}, ":now": _value(now),
                                               ":op": {"S": op}, ":was": {"S": record.status}},
                 "ReturnValues": "ALL_NEW"})["Attributes"]
        except _Refused:
            if delta > 0:
                self._add_bytes(record.scopes, day, -delta, f"undo: {why}")
            return None
        if delta < 0:
            self._add_bytes(record.scopes, day, delta, why)
        self._drop_finders(_finder_keys(record), record.grant_id)
        return Settlement(SETTLED, _record(attrs))

    def _settle_reuse(self, record: GrantRecord, day: str, *, etag: str, size: int) -> Settlement | None:
        """A different object at a settled key: counted once per ETag. None: another writer came first."""
        why = f"count another object at grant {record.grant_id}"
        self._add_bytes(record.scopes, day, size, why)
        op = _token()
        try:
            attrs = self._call(
                "update_item", why,
                {"Key": _grant_key(record.grant_id),
                 "UpdateExpression": "SET #re = :etag, #op = :op ADD #reused :one, #rb :size",
                 "ConditionExpression": "(attribute_exists(#etag) AND #etag <> :etag "
                                        "AND (attribute_not_exists(#re) OR #re <> :etag)) OR #op = :op",
                 "ExpressionAttributeNames": {"#re": "reused_etag", "#op": "op", "#reused": "reused",
                                              "#etag": "etag", "#rb": "reused_bytes"},
                 "ExpressionAttributeValues": {":etag": {"S": etag}, ":op": {"S": op}, ":one": _value(1),
                                               ":size": _value(size)},
                 "ReturnValues": "ALL_NEW"})["Attributes"]
        except _Refused:
            self._add_bytes(record.scopes, day, -size, f"undo: {why}")
            return None
        return Settlement(REUSED, _record(attrs))

    # ------------------------------------------------------------------ reading

    def get(self, grant_id: str) -> GrantRecord | None:
        """One grant, or None (a consistent read)."""
        item = self._get(_grant_key(grant_id), f"read grant {grant_id}")
        return None if item is None else _record(item)

    def grants(self, *, since: int = 0, until: int | None = None) -> Iterator[GrantRecord]:
        """Grants issued in ``[since, until)``, oldest first (ties by grant id).

        A Scan of the whole table, filtered: a report for operators, never the request path.
        """
        found = [_record(item) for item in self._scan("g#", "list grants")]
        chosen = [r for r in found if r.issued_at >= since and (until is None or r.issued_at < until)]
        yield from sorted(chosen, key=lambda r: (r.issued_at, r.grant_id))

    def counters(self, *, since: int = 0) -> Iterator[Counter]:
        """Every counter of a window that ends after ``since``, by scope and window (a Scan, filtered).

        A count undone (a reservation refused in another scope) leaves a zero behind, where the
        SQLite engine's rolled-back transaction leaves nothing: zero hours are not reported, nor
        the bytes of a day in which no grant was ever counted. A day's bytes back at zero are.
        """
        out: list[Counter] = []
        for item in self._scan("c#", "list counters"):
            scope, day = item["pk"]["S"][2:], item["sk"]["S"]
            hours = {name: int(attr["N"]) for name, attr in item.items() if name.startswith("h")}
            if not any(hours.values()):
                continue
            found = {**{h: n for h, n in hours.items() if n}, day: _number(item, "b")}
            out.extend(Counter(scope, window, n) for window, n in found.items() if window_end(window) > since)
        yield from sorted(out, key=lambda c: (c.scope, c.window))

    # ------------------------------------------------------------------ denials

    def count_denial(self, client: str, profile: str | None, *, now: int) -> None:
        """Count one denial (best effort: a failure is logged, never raised)."""
        day = now // 86400
        profile = profile or ""
        try:
            self._call("update_item", "count a denial",
                       {"Key": {"pk": {"S": "n"}, "sk": {"S": f"{day:08d}#{client}#{profile}"}},
                        "UpdateExpression": "SET #c = :c, #p = :p, #d = :d ADD #n :one",
                        "ExpressionAttributeNames": {"#c": "client", "#p": "profile", "#d": "day", "#n": "n"},
                        "ExpressionAttributeValues": {":c": {"S": client}, ":p": {"S": profile},
                                                      ":d": _value(day), ":one": _value(1)}})
        except LedgerUnavailable as exc:
            log_event("ledger_denial_not_counted", client=client, profile=profile, error=str(exc))

    def denials(self, *, since: int = 0) -> Iterator[tuple[str, str, str, int]]:
        """(client, profile or '', day window, count) for every day ending after ``since``, by day."""
        for item in self._query("n", "list denials", since=f"{since // 86400:08d}"):
            yield (item["client"]["S"], item["profile"]["S"], f"d{item['day']['N']}", int(item["n"]["N"]))

    # ------------------------------------------------------------------ the table

    def create_table(self) -> None:
        """Create the table (on-demand, ``pk``/``sk``), wait until it is active, and turn TTL on.

        Already there: fine. A server without TTL (dynalite) or with TTL already on: logged, fine.
        """
        try:
            self._send("create_table", {"KeySchema": list(KEY_SCHEMA), "BillingMode": "PAY_PER_REQUEST",
                                        "AttributeDefinitions": list(ATTRIBUTE_DEFINITIONS)})
        except self._errors as exc:
            if error_code(exc) != "ResourceInUseException":
                raise self._unavailable("create the table", exc) from None
        deadline = time.monotonic() + 60
        while self._call("describe_table", "wait for the table", {})["Table"]["TableStatus"] != "ACTIVE":
            if time.monotonic() > deadline:
                raise LedgerUnavailable(f"ledger table {self.table!r} is still not active after 60 s")
            time.sleep(0.05)
        try:
            self._send("update_time_to_live", {"TimeToLiveSpecification": {"Enabled": True,
                                                                          "AttributeName": TTL_ATTRIBUTE}})
        except self._errors as exc:
            if error_code(exc) not in _TTL_TOLERATED:
                raise self._unavailable("turn on TTL", exc) from None
            log_event("ledger_ttl_not_enabled", table=self.table, reason=error_code(exc))

    def close(self) -> None:
        """Close the clients this ledger made (a client passed in is the caller's)."""
        if self._owned:
            for client in {id(self._client): self._client, id(self._once): self._once}.values():
                client.close()


class _Unknown(Exception):
    """The grant put's answer was lost and the grant cannot be checked: keep its counts (internal)."""
