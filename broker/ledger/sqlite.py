"""The SQLite ledger: one file, WAL mode, every invariant inside one ``BEGIN IMMEDIATE`` transaction.

Safe under ``broker serve``'s worker processes and threads: each thread of each process has its
own connection (opened again after a fork), and ``BEGIN IMMEDIATE`` takes the write lock before
reading a counter, so two reservations never both see room for one. ``synchronous=NORMAL`` in
WAL mode: a committed grant survives the process being killed (the write is in the WAL before
the form is returned); only a power cut may lose the last transactions, and then the form is
lost with them.

Built for the request path (``make bench`` row 6): a reservation is one transaction of one
conditional upsert per counter (``... DO UPDATE ... WHERE value + n <= limit``: the check and the
count in one statement) and one insert appended to a table kept in the order grants are
recorded, with one index (the grant id). Nothing else is read on the way: expired grants give
their bytes back only when a reservation is refused for want of them (and in
:meth:`SqliteLedger.release_expired`); reports find their period by bisecting the record order.
"""
from __future__ import annotations

import json
import os
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator, Sequence

import apsw

from broker.ledger import (
    EXPIRED, ISSUED, NO_GRANT, REPLAYED, REUSED, SETTLED, Counter, GrantRecord, Ledger, LedgerUnavailable,
    Limit, QuotaExceeded, Settlement, day_of, grant_id_for, hour_of, window_end, window_start,
)
from broker.logs import log_event

#: The file's layout; a file of another (PRAGMA user_version) is refused, not guessed at.
SCHEMA_VERSION = 2
SCHEMA = f"""
CREATE TABLE IF NOT EXISTS grants (
    seq INTEGER PRIMARY KEY,  -- the order grants were recorded in (about their issue order)
    grant_id TEXT NOT NULL UNIQUE,
    client TEXT NOT NULL, profile TEXT NOT NULL, bucket TEXT NOT NULL, key TEXT NOT NULL,
    content_type TEXT NOT NULL, min_bytes INTEGER NOT NULL, max_bytes INTEGER NOT NULL,
    reserved_bytes INTEGER NOT NULL, issued_at INTEGER NOT NULL, expires_at INTEGER NOT NULL,
    declared_size INTEGER, user TEXT, protocol TEXT NOT NULL, request_id TEXT, scopes TEXT NOT NULL,
    status TEXT NOT NULL, size INTEGER, etag TEXT, checks TEXT NOT NULL DEFAULT '[]', settled_at INTEGER,
    reused INTEGER NOT NULL DEFAULT 0, reused_etag TEXT, reused_bytes INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS counters (
    scope TEXT NOT NULL, window TEXT NOT NULL, value INTEGER NOT NULL, ends_at INTEGER NOT NULL,
    PRIMARY KEY (scope, window)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS denials (
    client TEXT NOT NULL, profile TEXT NOT NULL, day TEXT NOT NULL, n INTEGER NOT NULL,
    PRIMARY KEY (client, profile, day)
) WITHOUT ROWID;
PRAGMA user_version = {SCHEMA_VERSION};
"""
_COLUMNS = ("grant_id", "client", "profile", "bucket", "key", "content_type", "min_bytes", "max_bytes",
            "reserved_bytes", "issued_at", "expires_at", "declared_size", "user", "protocol", "request_id",
            "scopes", "status", "size", "etag", "checks", "settled_at", "reused", "reused_etag", "reused_bytes")
_SELECT = f"SELECT {', '.join(_COLUMNS)} FROM grants"
_INSERT = f"INSERT INTO grants ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})"
_ADD = ("INSERT INTO counters (scope, window, value, ends_at) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (scope, window) DO UPDATE SET value = value + excluded.value")
#: Count ``n`` unless the counter would pass the limit (then nothing changes: rowcount 0).
_ADD_WITHIN = _ADD + " WHERE value + excluded.value <= ?"
_NO_LIMIT = 2**62
#: Clocks of the processes that record grants may differ this much (seconds): a period's first
#: grant is looked for this much earlier in the record order.
_CLOCK_SLACK = 300
#: The longest a grant lives (SigV4's 7 days): its expiry is within this of its issue.
_LONGEST_GRANT = 7 * 86400
DENIAL_WAIT_MS = 200  # how long counting a denial waits for the write lock
#: The WAL is copied into the database file (a checkpoint, with its two fsyncs) once it holds this
#: many pages (16 MiB at 4 KiB), not SQLite's default 1,000: a reservation dirties the same few pages
#: (its counters, the newest grants, an index leaf) again and again, and each checkpoint copies a
#: page once however often it was written since. Measured: ~10 µs less per reservation.
WAL_CHECKPOINT_PAGES = 4000


class SqliteLedger(Ledger):
    """The embedded ledger (``BROKER_LEDGER=sqlite:///var/ledger.db``)."""

    def __init__(self, path: str | os.PathLike[str], *, busy_timeout: float = 10.0) -> None:
        self.path = Path(path)
        self.location = f"sqlite:///{path}"
        self._busy = busy_timeout
        self._local = threading.local()
        self._scopes_json: dict[tuple[str, ...], str] = {}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = self._conn()
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            tables = conn.execute("SELECT count(*) FROM sqlite_master WHERE name = 'grants'").fetchone()[0]
            if tables and version != SCHEMA_VERSION:
                raise LedgerUnavailable(
                    f"the ledger {self.path} was written by an earlier version of the broker (layout {version}, "
                    f"not {SCHEMA_VERSION}); move the file aside (mv {self.path} {self.path}.old) and a new one "
                    "is started")
            conn.execute(SCHEMA)
        except (OSError, apsw.Error) as exc:
            raise LedgerUnavailable(f"the ledger {self.path} cannot be opened: {exc}; check that its "
                                    "directory exists and is writable by the broker") from None

    # ------------------------------------------------------------------ connections

    def _conn(self) -> apsw.Connection:
        local = self._local
        if getattr(local, "pid", None) != os.getpid():  # new thread, or a forked worker
            conn = apsw.Connection(str(self.path))
            conn.setbusytimeout(int(self._busy * 1000))
            conn.execute("PRAGMA journal_mode=WAL").fetchall()
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(f"PRAGMA wal_autocheckpoint={WAL_CHECKPOINT_PAGES}")
            local.conn, local.pid = conn, os.getpid()
        return local.conn  # type: ignore[no-any-return]

    def _write(self) -> "_Transaction":
        return _Transaction(self, "BEGIN IMMEDIATE")

    def _read(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        try:
            return self._conn().execute(sql, args).fetchall()
        except apsw.Error as exc:
            raise self._unavailable("read", exc) from None

    def _unavailable(self, what: str, exc: BaseException) -> LedgerUnavailable:
        return LedgerUnavailable(f"the ledger {self.path} could not be {what}: {exc}")

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None and getattr(self._local, "pid", None) == os.getpid():
            conn.close()
        self._local = threading.local()

    # ------------------------------------------------------------------ grants

    def reserve(self, grant: GrantRecord, limits: Sequence[Limit], *, now: int) -> GrantRecord:
        scopes = tuple(limit.scope for limit in limits)
        stored = grant if grant.scopes == scopes else replace(grant, scopes=scopes)
        row = self._row(stored)
        try:
            return self._reserve(stored, row, limits, now)
        except QuotaExceeded as refused:
            if refused.quota != "bytes_per_day":
                raise
            with self._write() as db:  # bytes are wanting: the scope's expired grants of that day give theirs back
                released = self._release(db, now, scope=refused.scope, since=window_start(day_of(grant.issued_at)))
            if not released:
                raise
        return self._reserve(stored, row, limits, now)

    def _reserve(self, stored: GrantRecord, row: tuple[Any, ...], limits: Sequence[Limit], now: int) -> GrantRecord:
        hour, day = hour_of(stored.issued_at), day_of(stored.issued_at)
        with self._write() as db:  # a refusal raises inside: everything counted is rolled back
            for limit in limits:
                _count(db, limit.scope, hour, 1, limit.uploads_per_hour, "uploads_per_hour", now)
                _count(db, limit.scope, day, stored.reserved_bytes, limit.bytes_per_day, "bytes_per_day", now)
            try:
                db.execute(_INSERT, row)
            except apsw.ConstraintError:
                raise LedgerUnavailable(f"grant {stored.grant_id} is already in the ledger; "
                                        "a key is never granted twice") from None
        return stored

    def _row(self, g: GrantRecord) -> tuple[Any, ...]:
        scopes = self._scopes_json.get(g.scopes)
        if scopes is None:
            scopes = self._scopes_json[g.scopes] = json.dumps(list(g.scopes))
            if len(self._scopes_json) > 4096:
                self._scopes_json.clear()
        return (g.grant_id, g.client, g.profile, g.bucket, g.key, g.content_type, g.min_bytes, g.max_bytes,
                g.reserved_bytes, g.issued_at, g.expires_at, g.declared_size, g.user, g.protocol, g.request_id,
                scopes, g.status, g.size, g.etag, json.dumps(list(g.checks)) if g.checks else "[]", g.settled_at,
                g.reused, g.reused_etag, g.reused_bytes)

    def settle(self, bucket: str, key: str, *, etag: str, size: int, verdict: str,
               checks: Sequence[str] = (), now: int) -> Settlement:
        etag = etag.strip('"')
        gid = grant_id_for(bucket, key)
        with self._write() as db:
            rows = db.execute(f"{_SELECT} WHERE grant_id = ?", (gid,)).fetchall()
            if not rows:
                return Settlement(NO_GRANT, None)
            grant = _record(rows[0])
            if etag in (grant.etag, grant.reused_etag):
                return Settlement(REPLAYED, grant)
            day = day_of(grant.issued_at)
            if grant.etag is not None:  # a different object at a key already settled: the form was reused
                for scope in grant.scopes:
                    db.execute(_ADD, (scope, day, size, window_end(day)))
                db.execute("UPDATE grants SET reused = reused + 1, reused_etag = ?, reused_bytes = reused_bytes + ? "
                           "WHERE grant_id = ?", (etag, size, gid))
                return Settlement(REUSED, _fetch(db, gid))
            held = grant.reserved_bytes if grant.status == ISSUED else 0  # an expired grant held nothing
            for scope in grant.scopes:
                db.execute(_ADD, (scope, day, size - held, window_end(day)))
            db.execute("UPDATE grants SET status = ?, size = ?, etag = ?, checks = ?, settled_at = ? "
                       "WHERE grant_id = ?", (verdict, size, etag, json.dumps(list(checks)), now, gid))
            return Settlement(SETTLED, _fetch(db, gid))

    def get(self, grant_id: str) -> GrantRecord | None:
        rows = self._read(f"{_SELECT} WHERE grant_id = ?", (grant_id,))
        return _record(rows[0]) if rows else None

    def grants(self, *, since: int = 0, until: int | None = None) -> Iterator[GrantRecord]:
        end = until if until is not None else _NO_LIMIT
        try:
            last = self._first_seq(self._conn(), since) - 1
        except apsw.Error as exc:
            raise self._unavailable("read", exc) from None
        while True:  # in pages, so a long report never holds a read transaction open
            rows = self._read(f"SELECT seq, {', '.join(_COLUMNS)} FROM grants WHERE seq > ? ORDER BY seq LIMIT 500",
                              (last,))
            if not rows:
                return
            for row in rows:
                issued = row[10]
                if since <= issued < end:
                    yield _record(row[1:])
                elif issued >= end + _CLOCK_SLACK:
                    return
            last = rows[-1][0]

    def counters(self, *, since: int = 0) -> Iterator[Counter]:
        for scope, window, value in self._read(
                "SELECT scope, window, value FROM counters WHERE ends_at > ? ORDER BY scope, window", (since,)):
            yield Counter(scope, window, value)

    def release_expired(self, *, now: int, limit: int = 1000) -> int:
        with self._write() as db:
            return self._release(db, now, limit=limit, since=now - _LONGEST_GRANT)

    def _release(self, db: apsw.Connection, now: int, *, since: int, scope: str | None = None,
                 limit: int = 1000) -> int:
        """Mark expired, unused grants issued since ``since`` (of ``scope``, if given) expired, and give
        their bytes back; how many."""
        rows = db.execute(f"{_SELECT} WHERE seq >= ? AND status = 'issued' AND expires_at <= ? ORDER BY seq",
                          (self._first_seq(db, since), now)).fetchall()
        released = 0
        for row in rows:
            grant = _record(row)
            if scope is not None and scope not in grant.scopes:
                continue
            day = day_of(grant.issued_at)
            for counted in grant.scopes:
                db.execute(_ADD, (counted, day, -grant.reserved_bytes, window_end(day)))
            db.execute("UPDATE grants SET status = ?, settled_at = ? WHERE grant_id = ?",
                       (EXPIRED, now, grant.grant_id))
            released += 1
            if released >= limit:
                break
        return released

    @staticmethod
    def _first_seq(db: apsw.Connection, since: int) -> int:
        """The first record that may be of a grant issued at ``since`` or later (bisecting the record
        order, which follows the issue times within the processes' clock differences)."""
        low, high = db.execute("SELECT coalesce(min(seq), 0), coalesce(max(seq), 0) FROM grants").fetchone()
        target = since - _CLOCK_SLACK
        while low < high:
            middle = (low + high) // 2
            found = db.execute("SELECT seq, issued_at FROM grants WHERE seq >= ? ORDER BY seq LIMIT 1",
                               (middle,)).fetchone()
            if found is None or found[1] >= target:
                high = middle
            else:
                low = found[0] + 1
        return low

    def count_denial(self, client: str, profile: str | None, *, now: int) -> None:
        conn = self._conn()
        try:  # best effort, so it never waits long: a denial is audited whether or not it is counted
            conn.setbusytimeout(DENIAL_WAIT_MS)
            conn.execute(
                "INSERT INTO denials (client, profile, day, n) VALUES (?, ?, ?, 1) "
                "ON CONFLICT (client, profile, day) DO UPDATE SET n = n + 1", (client, profile or "", day_of(now)))
        except apsw.Error as exc:
            log_event("ledger_denial_not_counted", ledger=self.location, error=str(exc))
        finally:
            conn.setbusytimeout(int(self._busy * 1000))

    def denials(self, *, since: int = 0) -> Iterator[tuple[str, str, str, int]]:
        for client, profile, day, n in self._read(
                "SELECT client, profile, day, n FROM denials ORDER BY day, client, profile"):
            if window_end(day) > since:
                yield client, profile, day, n


class _Transaction:
    """``with`` block: one write transaction; any SQLite error becomes LedgerUnavailable."""

    def __init__(self, ledger: SqliteLedger, begin: str) -> None:
        self.ledger, self.begin = ledger, begin

    def __enter__(self) -> apsw.Connection:
        self.conn = self.ledger._conn()
        try:
            self.conn.execute(self.begin)
        except apsw.Error as exc:
            raise self.ledger._unavailable("written", exc) from None
        return self.conn

    def __exit__(self, kind: Any, exc: Any, tb: Any) -> None:
        if kind is None:
            try:
                self.conn.execute("COMMIT")
                return
            except apsw.Error as commit_exc:
                self._rollback()  # a full disk or an I/O error may have rolled it back already
                raise self.ledger._unavailable("written", commit_exc) from None
        self._rollback()
        if isinstance(exc, apsw.Error):
            raise self.ledger._unavailable("written", exc) from None

    def _rollback(self) -> None:
        if not self.conn.getautocommit():
            try:
                self.conn.execute("ROLLBACK")
            except apsw.Error:
                pass


def _count(db: apsw.Connection, scope: str, window: str, n: int, limit: int | None,
           quota: str, now: int) -> None:
    """Count ``n`` in ``scope``'s ``window``, checked and counted in one statement; QuotaExceeded if it
    would pass ``limit`` (nothing counted)."""
    ends = window_end(window)
    if limit is None:
        db.execute(_ADD, (scope, window, n, ends))
        return
    if n <= limit:
        db.execute(_ADD_WITHIN, (scope, window, n, ends, limit))
        if db.changes() == 1:
            return
    row = db.execute("SELECT value FROM counters WHERE scope = ? AND window = ?", (scope, window)).fetchone()
    raise QuotaExceeded(scope, quota, limit, row[0] if row else 0, max(1, ends - now))


def _fetch(db: apsw.Connection, gid: str) -> GrantRecord:
    return _record(db.execute(f"{_SELECT} WHERE grant_id = ?", (gid,)).fetchone())


def _record(row: tuple[Any, ...]) -> GrantRecord:
    values = dict(zip(_COLUMNS, row))
    values["scopes"] = tuple(json.loads(values["scopes"]))
    values["checks"] = tuple(json.loads(values["checks"]))
    return GrantRecord(**values)
