"""The SQLite ledger: one file, WAL mode, every invariant inside one ``BEGIN IMMEDIATE`` transaction.

Safe under ``broker serve``'s worker processes and threads: each thread of each process has its
own connection (opened again after a fork), and ``BEGIN IMMEDIATE`` takes the write lock before
reading a counter, so two reservations never both see room for one. ``synchronous=NORMAL`` in
WAL mode: a committed grant survives the process being killed (the write is in the WAL before
the form is returned); only a power cut may lose the last transactions, and then the form is
lost with them.
"""
from __future__ import annotations

import json
import os
import sqlite3
import threading
from pathlib import Path
from typing import Any, Iterator, Sequence

from broker.ledger import (
    EXPIRED, ISSUED, NO_GRANT, REPLAYED, REUSED, SETTLED, Counter, GrantRecord, Ledger, LedgerUnavailable,
    Limit, QuotaExceeded, Settlement, day_of, grant_id_for, hour_of, window_end,
)
from broker.logs import log_event

SCHEMA = """
CREATE TABLE IF NOT EXISTS grants (
    grant_id TEXT PRIMARY KEY,
    client TEXT NOT NULL, profile TEXT NOT NULL, bucket TEXT NOT NULL, key TEXT NOT NULL,
    content_type TEXT NOT NULL, min_bytes INTEGER NOT NULL, max_bytes INTEGER NOT NULL,
    reserved_bytes INTEGER NOT NULL, issued_at INTEGER NOT NULL, expires_at INTEGER NOT NULL,
    declared_size INTEGER, user TEXT, protocol TEXT NOT NULL, request_id TEXT, scopes TEXT NOT NULL,
    status TEXT NOT NULL, size INTEGER, etag TEXT, checks TEXT NOT NULL DEFAULT '[]', settled_at INTEGER,
    reused INTEGER NOT NULL DEFAULT 0, reused_etag TEXT, reused_bytes INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS grants_by_issue ON grants (issued_at);
CREATE INDEX IF NOT EXISTS grants_open ON grants (expires_at) WHERE status = 'issued';
CREATE TABLE IF NOT EXISTS counters (
    scope TEXT NOT NULL, window TEXT NOT NULL, value INTEGER NOT NULL, ends_at INTEGER NOT NULL,
    PRIMARY KEY (scope, window)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS denials (
    client TEXT NOT NULL, profile TEXT NOT NULL, day TEXT NOT NULL, n INTEGER NOT NULL,
    PRIMARY KEY (client, profile, day)
) WITHOUT ROWID;
"""
_COLUMNS = ("grant_id", "client", "profile", "bucket", "key", "content_type", "min_bytes", "max_bytes",
            "reserved_bytes", "issued_at", "expires_at", "declared_size", "user", "protocol", "request_id",
            "scopes", "status", "size", "etag", "checks", "settled_at", "reused", "reused_etag", "reused_bytes")
_SELECT = f"SELECT {', '.join(_COLUMNS)} FROM grants"
_INSERT = f"INSERT INTO grants ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})"
_ADD = ("INSERT INTO counters (scope, window, value, ends_at) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (scope, window) DO UPDATE SET value = value + excluded.value")
_RELEASE_BATCH = 100  # expired grants released by one reservation, at most
DENIAL_WAIT_MS = 200  # how long counting a denial waits for the write lock


class SqliteLedger(Ledger):
    """The embedded ledger (``BROKER_LEDGER=sqlite:///var/ledger.db``)."""

    def __init__(self, path: str | os.PathLike[str], *, busy_timeout: float = 10.0) -> None:
        self.path = Path(path)
        self.location = f"sqlite:///{path}"
        self._busy = busy_timeout
        self._local = threading.local()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._conn().executescript(SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise LedgerUnavailable(f"the ledger {self.path} cannot be opened: {exc}; check that its "
                                    "directory exists and is writable by the broker") from None

    # ------------------------------------------------------------------ connections

    def _conn(self) -> sqlite3.Connection:
        local = self._local
        if getattr(local, "pid", None) != os.getpid():  # new thread, or a forked worker
            conn = sqlite3.connect(self.path, timeout=self._busy, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            local.conn, local.pid = conn, os.getpid()
        return local.conn  # type: ignore[no-any-return]

    def _write(self) -> "_Transaction":
        return _Transaction(self, "BEGIN IMMEDIATE")

    def _read(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        try:
            return self._conn().execute(sql, args).fetchall()
        except sqlite3.Error as exc:
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
        stored = _with_scopes(grant, limits)
        hour, day = hour_of(grant.issued_at), day_of(grant.issued_at)
        with self._write() as db:
            self._release(db, now, _RELEASE_BATCH)
            for limit in limits:
                _check(db, limit.scope, hour, 1, limit.uploads_per_hour, "uploads_per_hour", now)
                _check(db, limit.scope, day, grant.reserved_bytes, limit.bytes_per_day, "bytes_per_day", now)
            for limit in limits:
                db.execute(_ADD, (limit.scope, hour, 1, window_end(hour)))
                db.execute(_ADD, (limit.scope, day, grant.reserved_bytes, window_end(day)))
            try:
                db.execute(_INSERT, _row(stored))
            except sqlite3.IntegrityError:
                raise LedgerUnavailable(f"grant {grant.grant_id} is already in the ledger; "
                                        "a key is never granted twice") from None
        return stored

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
        last = (since - 1, "")
        while True:  # in pages, so a long report never holds a read transaction open
            rows = self._read(f"{_SELECT} WHERE (issued_at, grant_id) > (?, ?) AND issued_at < ? "
                              "ORDER BY issued_at, grant_id LIMIT 500",
                              (*last, until if until is not None else 2**62))
            if not rows:
                return
            for row in rows:
                yield _record(row)
            last = (rows[-1][9], rows[-1][0])

    def counters(self, *, since: int = 0) -> Iterator[Counter]:
        for scope, window, value in self._read(
                "SELECT scope, window, value FROM counters WHERE ends_at > ? ORDER BY scope, window", (since,)):
            yield Counter(scope, window, value)

    def release_expired(self, *, now: int, limit: int = 1000) -> int:
        with self._write() as db:
            return self._release(db, now, limit)

    def _release(self, db: sqlite3.Connection, now: int, limit: int) -> int:
        rows = db.execute(f"{_SELECT} WHERE status = 'issued' AND expires_at <= ? ORDER BY expires_at LIMIT ?",
                          (now, limit)).fetchall()
        for row in rows:
            grant = _record(row)
            day = day_of(grant.issued_at)
            for scope in grant.scopes:
                db.execute(_ADD, (scope, day, -grant.reserved_bytes, window_end(day)))
            db.execute("UPDATE grants SET status = ?, settled_at = ? WHERE grant_id = ?",
                       (EXPIRED, now, grant.grant_id))
        return len(rows)

    def count_denial(self, client: str, profile: str | None, *, now: int) -> None:
        conn = self._conn()
        try:  # best effort, so it never waits long: a denial is audited whether or not it is counted
            conn.execute(f"PRAGMA busy_timeout = {DENIAL_WAIT_MS}")
            conn.execute(
                "INSERT INTO denials (client, profile, day, n) VALUES (?, ?, ?, 1) "
                "ON CONFLICT (client, profile, day) DO UPDATE SET n = n + 1", (client, profile or "", day_of(now)))
        except sqlite3.Error as exc:
            log_event("ledger_denial_not_counted", ledger=self.location, error=str(exc))
        finally:
            try:
                conn.execute(f"PRAGMA busy_timeout = {int(self._busy * 1000)}")
            except sqlite3.Error:
                pass

    def denials(self, *, since: int = 0) -> Iterator[tuple[str, str, str, int]]:
        for client, profile, day, n in self._read(
                "SELECT client, profile, day, n FROM denials ORDER BY day, client, profile"):
            if window_end(day) > since:
                yield client, profile, day, n


class _Transaction:
    """``with`` block: one write transaction; any SQLite error becomes LedgerUnavailable."""

    def __init__(self, ledger: SqliteLedger, begin: str) -> None:
        self.ledger, self.begin = ledger, begin

    def __enter__(self) -> sqlite3.Connection:
        self.conn = self.ledger._conn()
        try:
            self.conn.execute(self.begin)
        except sqlite3.Error as exc:
            raise self.ledger._unavailable("written", exc) from None
        return self.conn

    def __exit__(self, kind: Any, exc: Any, tb: Any) -> None:
        if kind is None:
            try:
                self.conn.execute("COMMIT")
                return
            except sqlite3.Error as commit_exc:
                self._rollback()  # a full disk or an I/O error may have rolled it back already
                raise self.ledger._unavailable("written", commit_exc) from None
        self._rollback()
        if isinstance(exc, sqlite3.Error):
            raise self.ledger._unavailable("written", exc) from None

    def _rollback(self) -> None:
        if self.conn.in_transaction:
            try:
                self.conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass


def _check(db: sqlite3.Connection, scope: str, window: str, add: int, limit: int | None,
           quota: str, now: int) -> None:
    if limit is None:
        return
    row = db.execute("SELECT value FROM counters WHERE scope = ? AND window = ?", (scope, window)).fetchone()
    used = row[0] if row else 0
    if used + add > limit:
        raise QuotaExceeded(scope, quota, limit, used, max(1, window_end(window) - now))


def _with_scopes(grant: GrantRecord, limits: Sequence[Limit]) -> GrantRecord:
    from dataclasses import replace

    return replace(grant, scopes=tuple(limit.scope for limit in limits))


def _fetch(db: sqlite3.Connection, gid: str) -> GrantRecord:
    return _record(db.execute(f"{_SELECT} WHERE grant_id = ?", (gid,)).fetchone())


def _row(g: GrantRecord) -> tuple[Any, ...]:
    return (g.grant_id, g.client, g.profile, g.bucket, g.key, g.content_type, g.min_bytes, g.max_bytes,
            g.reserved_bytes, g.issued_at, g.expires_at, g.declared_size, g.user, g.protocol, g.request_id,
            json.dumps(list(g.scopes)), g.status, g.size, g.etag, json.dumps(list(g.checks)), g.settled_at,
            g.reused, g.reused_etag, g.reused_bytes)


def _record(row: tuple[Any, ...]) -> GrantRecord:
    values = dict(zip(_COLUMNS, row))
    values["scopes"] = tuple(json.loads(values["scopes"]))
    values["checks"] = tuple(json.loads(values["checks"]))
    return GrantRecord(**values)
