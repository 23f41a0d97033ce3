"""The SQLite ledger: one file in WAL mode, plus each process's grant journal and quota leases.

Safe under ``broker serve``'s worker processes and threads. Most grants cost the request path
no SQLite transaction at all (``make bench`` row 6, where one transaction per grant cost more
than the rest of the request):

- **Grant journal.** A grant is recorded by appending one line to its process's journal
  (``<ledger>.grants/<owner>.jsonl``, one ``write`` to a file opened ``O_APPEND``) before its
  form is returned. Like a transaction in the WAL under ``synchronous=NORMAL``, the line
  outlives the process being killed the moment after; only a power cut may lose the last lines
  (and their forms with them). Journals are *folded* into the ``grants`` table, in one
  transaction, every :data:`FOLD_EVERY` lines or :data:`FOLD_SECONDS`, and by every reader
  first (status, settling, reports): nothing reads a ledger that lacks a recorded grant.
- **Quota leases.** A limited counter is counted ahead, in blocks: a process takes a block of
  a scope's window with one conditional upsert of the counter, recorded in ``leases`` (owner,
  scope, window, taken, used) in the same ``BEGIN IMMEDIATE`` transaction, then spends it in
  memory under a lock. A block is a share of the room left (:data:`LEASE_SHARE`, at most
  :data:`LEASE_GRANTS` grants' worth) while the room is large (:data:`LEASE_ROOM` grants or
  more); below that, a lease is exactly what the grant needs, one transaction per grant. A
  counter never passes its limit, and a small quota (or a large one near its end) is counted
  grant by grant. What blocks have not spent (``taken - used``) is not usage:
  :meth:`SqliteLedger.counters` leaves it out; an owner gives back its blocks of ended windows
  at its next lease and all of them when closed; a dead owner's (an owner holds ``flock`` on
  its journal while it lives) are given back by the fold that finishes its journal.

Unlimited counters are counted when their grants are folded. Reports find their period by
bisecting the record order, which folding keeps within seconds of the issue order.
"""
from __future__ import annotations

import atexit
import fcntl
import json
import os
import threading
import time
import weakref
from collections import defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator, NamedTuple, Sequence

import apsw
import orjson

from broker.fast.jsontext import ascii_line
from broker.ledger import (
    EXPIRED, ISSUED, NO_GRANT, REPLAYED, REUSED, SETTLED, Counter, GrantRecord, Ledger, LedgerUnavailable,
    Limit, QuotaExceeded, Settlement, day_of, grant_id_for, hour_of, window_end, window_start,
)
from broker.logs import log_event

#: The file's layout; a file of another (PRAGMA user_version) is refused, not guessed at.
#: Layout 2 (before leases) is upgraded in place: 3 only adds tables.
SCHEMA_VERSION = 3
UPGRADABLE = (2,)
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
CREATE TABLE IF NOT EXISTS leases (  -- blocks of a limited counter counted ahead by one process
    owner TEXT NOT NULL, scope TEXT NOT NULL, window TEXT NOT NULL,
    taken INTEGER NOT NULL, used INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (owner, scope, window)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS journals (  -- how far each process's grant journal is folded (bytes)
    owner TEXT PRIMARY KEY, folded INTEGER NOT NULL
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
_TAKE = ("INSERT INTO leases (owner, scope, window, taken) VALUES (?, ?, ?, ?) "
         "ON CONFLICT (owner, scope, window) DO UPDATE SET taken = taken + excluded.taken")
_USE = "UPDATE leases SET used = used + ? WHERE owner = ? AND scope = ? AND window = ?"
_HELD = "SELECT coalesce(sum(taken - used), 0) FROM leases WHERE scope = ? AND window = ?"
_BLOCKS = "SELECT scope, window, taken - used FROM leases WHERE owner = ?"
_NO_LIMIT = 2**62
#: Clocks of the processes that record grants may differ this much (seconds): a period's first
#: grant is looked for this much earlier in the record order (folding adds FOLD_SECONDS at most).
_CLOCK_SLACK = 300
#: The longest a grant lives (SigV4's 7 days): its expiry is within this of its issue.
_LONGEST_GRANT = 7 * 86400
DENIAL_WAIT_MS = 200  # how long counting a denial waits for the write lock
#: The WAL is copied into the database file (a checkpoint, with its two fsyncs) once it holds this
#: many pages (16 MiB at 4 KiB), not SQLite's default 1,000: folds and leases dirty the same few
#: pages again and again, and a checkpoint copies a page once however often it was written since.
WAL_CHECKPOINT_PAGES = 4000
#: A process folds its journal after this many grants, or once its oldest unfolded grant is this
#: old (seconds), whichever comes first; readers fold every journal before they read. Large
#: batches: each grant's id goes to a random page of the id index, and a fold writes each page
#: it touched once (measured per grant: 60 µs folding every 64, 50 every 256, 40 every 1,024).
FOLD_EVERY = 1024
FOLD_SECONDS = 1.0
#: Blocks are taken only while a counter has room for this many grants (uploads: grants; bytes:
#: the grant's bytes times this); with less, a lease is exactly what the grant needs.
LEASE_ROOM = 1024
#: A block is this share of the room left...
LEASE_SHARE = 16
#: ...and never more than this many grants' worth: at most this many grants' worth of a quota can
#: sit unspent in one worker when the quota's last grants are made by others.
LEASE_GRANTS = 64
JOURNAL_SUFFIX = ".jsonl"


class _Need(NamedTuple):
    """One limited counter a grant takes ``n`` of."""

    scope: str
    window: str
    n: int
    limit: int
    quota: str  # "uploads_per_hour" | "bytes_per_day"


@dataclass
class _Process:
    """This process's journal and leases (a forked child makes its own)."""

    pid: int
    owner: str
    path: Path
    fd: int
    lock: threading.Lock = field(default_factory=threading.Lock)
    leases: dict[tuple[str, str], int] = field(default_factory=dict)  # what each block has left
    recent: set[str] = field(default_factory=set)  # grant ids journaled since the last fold
    unfolded: int = 0
    oldest: float = 0.0  # monotonic time of the oldest unfolded line


class SqliteLedger(Ledger):
    """The embedded ledger (``BROKER_LEDGER=sqlite:///var/ledger.db``)."""

    def __init__(self, path: str | os.PathLike[str], *, busy_timeout: float = 10.0) -> None:
        self.path = Path(path)
        self.location = f"sqlite:///{path}"
        self.journals = self.path.with_name(self.path.name + ".grants")
        self._busy = busy_timeout
        self._local = threading.local()
        self._process: _Process | None = None
        self._process_lock = threading.Lock()
        self._scopes_json: dict[tuple[str, ...], str] = {}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = self._conn()
            # Opening writes nothing unless the file is new or of an older layout; then one process
            # lays it out, in one transaction, while any other opening it at the same moment waits
            # (worker processes start together; a table without its layout number is never seen).
            if conn.execute("PRAGMA user_version").fetchone()[0] != SCHEMA_VERSION:
                with _Transaction(self, "BEGIN IMMEDIATE", "laid out") as db:
                    version = db.execute("PRAGMA user_version").fetchone()[0]
                    tables = db.execute("SELECT count(*) FROM sqlite_master WHERE name = 'grants'").fetchone()[0]
                    if tables and version != SCHEMA_VERSION and version not in UPGRADABLE:
                        raise LedgerUnavailable(
                            f"the ledger {self.path} was written by an earlier version of the broker (layout "
                            f"{version}, not {SCHEMA_VERSION}); move the file aside (mv {self.path} "
                            f"{self.path}.old) and a new one is started")
                    if version != SCHEMA_VERSION:
                        db.execute(SCHEMA)
        except (OSError, apsw.Error) as exc:
            raise LedgerUnavailable(f"the ledger {self.path} cannot be opened: {_said(exc)}; check that its "
                                    "directory exists and is writable by the broker") from None

    # ------------------------------------------------------------------ connections

    def _conn(self) -> apsw.Connection:
        local = self._local
        if getattr(local, "pid", None) != os.getpid():  # new thread, or a forked worker
            conn = apsw.Connection(str(self.path))
            _OPENED.add(conn)
            conn.setbusytimeout(int(self._busy * 1000))
            _wal(conn, self._busy)
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
        """Fold this process's journal, give back its blocks, remove the journal; close connections."""
        self._finish()
        conn = getattr(self._local, "conn", None)
        if conn is not None and getattr(self._local, "pid", None) == os.getpid():
            conn.close()
        self._local = threading.local()

    def _finish(self) -> None:
        """This process's part of :meth:`close` (also run at interpreter exit: a worker that stops
        gives its blocks back at once instead of when a reader finds its journal)."""
        proc = self._process
        if proc is None or proc.pid != os.getpid():
            return
        with proc.lock:
            try:
                with self._write() as db:
                    self._fold_own(db, proc)
                    self._retire(db, proc.owner, proc.path)
            except LedgerUnavailable as exc:  # left as a dead worker's journal: the next fold finishes it
                log_event("ledger_close_incomplete", ledger=self.location, error=exc.message)
            finally:
                os.close(proc.fd)
                self._process = None

    # ------------------------------------------------------------------ this process

    def _proc(self) -> _Process:
        proc = self._process
        if proc is not None and proc.pid == os.getpid():
            return proc
        with self._process_lock:
            proc = self._process
            pid = os.getpid()
            if proc is not None and proc.pid != pid:  # forked: the parent's journal and blocks stay its own
                try:
                    os.close(proc.fd)
                except OSError:
                    pass
                proc = None
            if proc is None:
                owner = f"{pid}-{os.urandom(6).hex()}"
                path = self.journals / f"{owner}{JOURNAL_SUFFIX}"
                try:  # locked before it has its name: no fold ever sees it unlocked while its owner lives
                    self.journals.mkdir(parents=True, exist_ok=True)
                    starting = path.with_name(f".{owner}.starting")
                    fd = os.open(starting, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held while it lives (see _held)
                    os.rename(starting, path)
                except OSError as exc:
                    raise LedgerUnavailable(f"the ledger's grant journal {path} cannot be opened: {exc}; check "
                                            "that the ledger's directory is writable by the broker") from None
                proc = self._process = _Process(pid, owner, path, fd)
                atexit.register(_finish_at_exit, weakref.ref(self))
            return proc

    # ------------------------------------------------------------------ grants

    def reserve(self, grant: GrantRecord, limits: Sequence[Limit], *, now: int) -> GrantRecord:
        scopes = tuple(limit.scope for limit in limits)
        stored = grant if grant.scopes == scopes else replace(grant, scopes=scopes)
        hour, day = hour_of(stored.issued_at), day_of(stored.issued_at)
        needs: list[_Need] = []
        counted: list[tuple[str, str, int]] = []  # unlimited: counted when folded
        for limit in limits:
            if limit.uploads_per_hour is None:
                counted.append((limit.scope, hour, 1))
            else:
                needs.append(_Need(limit.scope, hour, 1, limit.uploads_per_hour, "uploads_per_hour"))
            if limit.bytes_per_day is None:
                counted.append((limit.scope, day, stored.reserved_bytes))
            else:
                needs.append(_Need(limit.scope, day, stored.reserved_bytes, limit.bytes_per_day, "bytes_per_day"))
        line = (ascii_line([self._row(stored), [[x.scope, x.window, x.n] for x in needs], counted]) + "\n").encode()
        proc = self._proc()
        with proc.lock:
            if stored.grant_id in proc.recent:
                raise LedgerUnavailable(f"grant {stored.grant_id} is already in the ledger; "
                                        "a key is never granted twice")
            leases = proc.leases
            short = [x for x in needs if leases.get((x.scope, x.window), 0) < x.n]
            if short:
                self._lease(proc, short, now, day)
            for x in needs:
                leases[(x.scope, x.window)] -= x.n
            try:
                written = os.write(proc.fd, line)
                if written != len(line):
                    raise OSError(f"only {written} of {len(line)} bytes written")
            except OSError as exc:
                # Not granted. The journal may now end in part of a line, which the next line would
                # run into: this worker starts a new journal (and new blocks) with its next grant, and
                # this one is finished like a dead worker's (its torn tail skipped, its blocks given back).
                self._process = None
                os.close(proc.fd)
                raise LedgerUnavailable(f"the ledger's grant journal {proc.path} could not be written: {exc}") \
                    from None
            proc.recent.add(stored.grant_id)
            proc.unfolded += 1
            if proc.unfolded == 1:
                proc.oldest = time.monotonic()
            if proc.unfolded >= FOLD_EVERY or time.monotonic() - proc.oldest >= FOLD_SECONDS:
                try:
                    with self._write() as db:
                        self._fold_own(db, proc)
                except LedgerUnavailable as exc:  # recorded in the journal all the same; folded later
                    log_event("ledger_fold_postponed", ledger=self.location, error=exc.message)
        return stored

    def _lease(self, proc: _Process, short: list[_Need], now: int, day: str) -> None:
        """Take what every counter in ``short`` lacks, all or none: QuotaExceeded names the first that
        has no room, with its usage once every journal is folded. Called with ``proc.lock`` held."""
        try:
            self._take(proc, short, now)
            return
        except QuotaExceeded as refused:
            with self._write() as db:  # gone workers' blocks come back; for bytes, so do expired grants'
                self._fold_all(db, proc)
                if refused.quota == "bytes_per_day":
                    self._release(db, now, scope=refused.scope, since=window_start(day))
        self._take(proc, short, now)  # refused again: the usage it names is exact now

    def _take(self, proc: _Process, short: list[_Need], now: int) -> None:
        leases = proc.leases
        taken: dict[tuple[str, str], int] = {}
        with self._write() as db:  # a refusal raises inside: nothing is taken
            if any(window_end(window) <= now for _, window, _ in db.execute(_BLOCKS, (proc.owner,)).fetchall()):
                self._fold_own(db, proc)  # what its lines spent is "used" before the rest goes back
                for key in self._give_back(db, proc.owner, ended_by=now)[1]:  # blocks of ended windows
                    leases.pop(key, None)
            for x in short:
                key = (x.scope, x.window)
                want = x.n - leases.get(key, 0)
                row = db.execute("SELECT value FROM counters WHERE scope = ? AND window = ?", key).fetchone()
                value = row[0] if row else 0
                room = x.limit - value
                if want > room:
                    held = db.execute(_HELD, key).fetchone()[0]  # counted ahead, not granted yet
                    raise QuotaExceeded(x.scope, x.quota, x.limit, value - held, max(1, window_end(x.window) - now))
                block = max(want, min(LEASE_GRANTS * x.n, room // LEASE_SHARE)) if room >= LEASE_ROOM * x.n else want
                db.execute(_ADD, (x.scope, x.window, block, window_end(x.window)))
                db.execute(_TAKE, (proc.owner, x.scope, x.window, block))
                taken[key] = block
        for key, block in taken.items():  # committed: now they may be spent
            leases[key] = leases.get(key, 0) + block

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

    # ------------------------------------------------------------------ folding journals

    def _fold_own(self, db: apsw.Connection, proc: _Process) -> None:
        """Fold this process's journal (inside the caller's write transaction; ``proc.lock`` held)."""
        self._fold_file(db, proc.owner, proc.path, alive=True)
        proc.unfolded = 0
        proc.recent.clear()

    def _fold_all(self, db: apsw.Connection, own: _Process | None = None) -> int:
        """Fold every journal (inside the caller's write transaction), and finish those whose owner
        is gone: the unspent part of their blocks goes back (how much)."""
        returned = 0
        for path in self._journal_files():
            owner = path.name[: -len(JOURNAL_SUFFIX)]
            if own is not None and owner == own.owner:
                self._fold_own(db, own)
            else:
                returned += self._fold_file(db, owner, path, alive=_held(path))
        return returned

    def _journal_files(self) -> list[Path]:
        try:
            return sorted(self.journals.glob(f"*{JOURNAL_SUFFIX}"))
        except OSError as exc:
            raise self._unavailable("read (its grant journals)", exc) from None

    def _fold_file(self, db: apsw.Connection, owner: str, path: Path, *, alive: bool) -> int:
        """Fold one journal's complete lines; if its owner is gone, finish it (how much went back)."""
        row = db.execute("SELECT folded FROM journals WHERE owner = ?", (owner,)).fetchone()
        folded = row[0] if row else 0
        if folded < 0:  # finished: only the file is left
            _after_commit(self, path)
            return 0
        try:
            with open(path, "rb") as f:
                f.seek(folded)
                data = f.read()
        except FileNotFoundError:
            return 0
        except OSError as exc:
            raise self._unavailable(f"read (grant journal {path.name})", exc) from None
        end = data.rfind(b"\n") + 1
        if end:
            self._apply(db, owner, data[:end])
            folded += end
        if alive:
            if end:
                db.execute("INSERT INTO journals (owner, folded) VALUES (?, ?) "
                           "ON CONFLICT (owner) DO UPDATE SET folded = excluded.folded", (owner, folded))
            return 0
        if end < len(data):  # a line its writer never finished: that grant's form was never sent
            log_event("ledger_journal_torn", ledger=self.location, journal=path.name, bytes=len(data) - end)
        return self._retire(db, owner, path)

    def _retire(self, db: apsw.Connection, owner: str, path: Path) -> int:
        """``owner``'s journal is finished: all its blocks' unspent part goes back (how much), the
        journal is marked done and its file removed once the transaction commits."""
        returned = self._give_back(db, owner)[0]
        db.execute("INSERT INTO journals (owner, folded) VALUES (?, -1) "
                   "ON CONFLICT (owner) DO UPDATE SET folded = -1", (owner,))
        _after_commit(self, path)
        return returned

    @staticmethod
    def _give_back(db: apsw.Connection, owner: str, *, ended_by: int | None = None
                   ) -> tuple[int, list[tuple[str, str]]]:
        """Take out of the counters what ``owner``'s blocks (of windows ended by ``ended_by``, if
        given) have not spent, and drop those blocks: how much, and which (scope, window)."""
        returned, dropped = 0, []
        for scope, window, left in db.execute(_BLOCKS, (owner,)).fetchall():
            if ended_by is not None and window_end(window) > ended_by:
                continue
            db.execute(_ADD, (scope, window, -left, window_end(window)))
            db.execute("DELETE FROM leases WHERE owner = ? AND scope = ? AND window = ?", (owner, scope, window))
            returned += left
            dropped.append((scope, window))
        return returned, dropped

    def _apply(self, db: apsw.Connection, owner: str, lines: bytes) -> None:
        parsed = []
        for raw in lines.splitlines():
            try:
                try:
                    entry = orjson.loads(raw)
                except orjson.JSONDecodeError:  # orjson refuses what json wrote for a lone surrogate
                    entry = json.loads(raw)
                row, needs, plain = entry
                if len(row) != len(_COLUMNS):
                    raise ValueError(f"{len(row)} columns, not {len(_COLUMNS)}")
            except ValueError as exc:
                log_event("ledger_journal_line_unreadable", ledger=self.location, journal=owner, error=str(exc))
                continue
            parsed.append((row, needs, plain))
        db.execute("SAVEPOINT fold")
        try:
            db.executemany(_INSERT, [row for row, _, _ in parsed])
            kept = parsed
        except apsw.ConstraintError:  # a grant id recorded before: one by one, to name it
            db.execute("ROLLBACK TO fold")
            kept = []
            for entry in parsed:
                try:
                    db.execute(_INSERT, entry[0])
                    kept.append(entry)
                except apsw.ConstraintError:
                    log_event("ledger_grant_recorded_twice", ledger=self.location, grant_id=entry[0][0])
        db.execute("RELEASE fold")
        used: dict[tuple[str, str], int] = defaultdict(int)
        counted: dict[tuple[str, str], int] = defaultdict(int)
        for _, needs, plain in kept:
            for scope, window, n in needs:
                used[(scope, window)] += n
            for scope, window, n in plain:
                counted[(scope, window)] += n
        for (scope, window), n in used.items():
            db.execute(_USE, (n, owner, scope, window))
        for (scope, window), n in counted.items():
            db.execute(_ADD, (scope, window, n, window_end(window)))

    def _sync(self) -> None:
        """Before a read: fold what any journal holds beyond what is folded, and finish journals whose
        owner is gone."""
        files = self._journal_files()
        if not files:
            return
        folded = dict(self._read("SELECT owner, folded FROM journals"))
        proc = self._process if self._process is not None and self._process.pid == os.getpid() else None
        for path in files:
            owner = path.name[: -len(JOURNAL_SUFFIX)]
            done = folded.get(owner, 0)
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise self._unavailable("read (its grant journals)", exc) from None
            if done < 0 or size > done or (proc is None or owner != proc.owner) and not _held(path):
                break
        else:
            return
        if proc is not None:
            with proc.lock:
                with self._write() as db:
                    self._fold_all(db, proc)
        else:
            with self._write() as db:
                self._fold_all(db)

    def settle(self, bucket: str, key: str, *, etag: str, size: int, verdict: str,
               checks: Sequence[str] = (), now: int) -> Settlement:
        etag = etag.strip('"')
        gid = grant_id_for(bucket, key)
        with self._write() as db:
            self._fold_all(db)
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
        self._sync()
        rows = self._read(f"{_SELECT} WHERE grant_id = ?", (grant_id,))
        return _record(rows[0]) if rows else None

    def grants(self, *, since: int = 0, until: int | None = None) -> Iterator[GrantRecord]:
        end = until if until is not None else _NO_LIMIT
        self._sync()
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
        """What was granted (and settled) in each window: what blocks counted ahead and have not
        spent is left out."""
        self._sync()
        for scope, window, value in self._read(
                "SELECT c.scope, c.window, c.value - coalesce((SELECT sum(l.taken - l.used) FROM leases l "
                "WHERE l.scope = c.scope AND l.window = c.window), 0) "
                "FROM counters c WHERE c.ends_at > ? ORDER BY c.scope, c.window", (since,)):
            yield Counter(scope, window, value)

    def release_expired(self, *, now: int, limit: int = 1000) -> int:
        with self._write() as db:
            self._fold_all(db)
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

    def __init__(self, ledger: SqliteLedger, begin: str, what: str = "written") -> None:
        self.ledger, self.begin, self.what = ledger, begin, what

    def __enter__(self) -> apsw.Connection:
        self.conn = self.ledger._conn()
        try:
            self.conn.execute(self.begin)
        except apsw.Error as exc:
            raise self.ledger._unavailable(self.what, exc) from None
        return self.conn

    def __exit__(self, kind: Any, exc: Any, tb: Any) -> None:
        after: list[Path] = getattr(self.ledger._local, "after", [])
        self.ledger._local.after = []
        if kind is None:
            try:
                self.conn.execute("COMMIT")
            except apsw.Error as commit_exc:
                self._rollback()  # a full disk or an I/O error may have rolled it back already
                raise self.ledger._unavailable(self.what, commit_exc) from None
            for path in after:  # journals finished by this transaction, now that it holds
                try:
                    path.unlink(missing_ok=True)
                except OSError as unlink_exc:
                    log_event("ledger_journal_not_removed", ledger=self.ledger.location, journal=path.name,
                              error=str(unlink_exc))
            return
        self._rollback()
        if isinstance(exc, apsw.Error):
            raise self.ledger._unavailable(self.what, exc) from None

    def _rollback(self) -> None:
        if not self.conn.getautocommit():
            try:
                self.conn.execute("ROLLBACK")
            except apsw.Error:
                pass


def _fetch(db: apsw.Connection, gid: str) -> GrantRecord:
    return _record(db.execute(f"{_SELECT} WHERE grant_id = ?", (gid,)).fetchone())


def _record(row: tuple[Any, ...]) -> GrantRecord:
    values = dict(zip(_COLUMNS, row))
    values["scopes"] = tuple(json.loads(values["scopes"]))
    values["checks"] = tuple(json.loads(values["checks"]))
    return GrantRecord(**values)


def _wal(conn: apsw.Connection, patience: float) -> None:
    """WAL mode. Turning a new file to WAL needs it alone for a moment, and SQLite does not wait for
    that (``database is locked`` at once when several processes open a new ledger together): retry."""
    deadline = time.monotonic() + patience
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL").fetchall()  # (":memory:" stays "memory")
            return
        except apsw.BusyError:
            pass
        if time.monotonic() >= deadline:
            raise apsw.BusyError("database is locked (turning it to WAL mode)")
        time.sleep(0.01)


def _said(exc: BaseException) -> str:
    """An error as SQLite words it, with its extended code when it has one (SQLITE_IOERR_SHORT_READ)."""
    code = getattr(exc, "extendedresult", None)
    name = apsw.mapping_extended_result_codes.get(code) if isinstance(code, int) else None
    text = str(exc).split(": ", 1)[-1] if isinstance(exc, apsw.Error) else str(exc)
    return f"{text} ({name})" if name and name not in text else text


def _after_commit(ledger: SqliteLedger, path: Path) -> None:
    """Remove ``path`` once the current write transaction commits (never if it rolls back)."""
    after = getattr(ledger._local, "after", None)
    if after is None:
        after = ledger._local.after = []
    after.append(path)


def _held(path: Path) -> bool:
    """Whether a live process holds this journal (its owner ``flock``s it for as long as it lives)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return True  # finished by someone else meanwhile: nothing to do here
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def _finish_at_exit(ref: "weakref.ref[SqliteLedger]") -> None:
    ledger = ref()
    if ledger is not None:
        ledger._finish()


#: Every connection this process opened. A forked child keeps the ones it inherited alive, never
#: closed: closing a parent's SQLite connection in a child (as the garbage collector would, with a
#: ledger object the parent still held at fork) can checkpoint and remove the parent's WAL under the
#: other processes (SQLite's "How To Corrupt An SQLite Database File": a connection carried across
#: fork). broker serve's master also closes its own before its workers fork.
_OPENED: "weakref.WeakSet[apsw.Connection]" = weakref.WeakSet()
_INHERITED: list[apsw.Connection] = []


def _keep_inherited() -> None:
    _INHERITED.extend(_OPENED)
    _OPENED.clear()


os.register_at_fork(after_in_child=_keep_inherited)
