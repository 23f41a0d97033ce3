"""The SQLite ledger's grant journals and quota leases (``broker.ledger.sqlite``), tried as a crash,
a fork, a full disk or a flood of workers would try them.

The contract every engine keeps is in ``test_contract.py``; here are what only this engine has:
a grant is recorded in its process's journal before ``reserve`` returns, blocks counted ahead
never let a counter pass its limit, and what a dead worker held comes back.
"""
from __future__ import annotations

import multiprocessing
import os
import signal
import threading
from pathlib import Path
from typing import Any

import apsw
import pytest

from broker.ledger import GrantRecord, LedgerUnavailable, Limit, QuotaExceeded, day_of, grant_id_for, hour_of
from broker.ledger import sqlite as engine
from broker.ledger.sqlite import SqliteLedger

T0 = 1_795_000_000 - 1_795_000_000 % 86400 + 3600 * 10
MIB = 1024 * 1024
BIG = [Limit("client:acme", 1_000_000, 10**15)]  # room for blocks


def grant(n: int, *, reserved: int = MIB, issued: int = T0, scopes: tuple[str, ...] = ("client:acme",)) -> GrantRecord:
    key = f"uploads/acme/{n:032x}.png"
    return GrantRecord(grant_id=grant_id_for("uploads", key), client="acme", profile="avatar", bucket="uploads",
                       key=key, content_type="image/png", min_bytes=1, max_bytes=5 * MIB, reserved_bytes=reserved,
                       issued_at=issued, expires_at=issued + 300, declared_size=reserved, scopes=scopes)


def rows(path: Path, sql: str) -> list[tuple[Any, ...]]:
    """What the file itself holds, read by another connection (as another process would)."""
    conn = apsw.Connection(str(path))
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def counters(ledger: SqliteLedger) -> dict[tuple[str, str], int]:
    return {(c.scope, c.window): c.value for c in ledger.counters()}


def test_a_grant_is_in_its_journal_before_reserve_returns_and_readers_see_it(tmp_path: Path) -> None:
    ledger = SqliteLedger(tmp_path / "ledger.db")
    g = ledger.reserve(grant(1), BIG, now=T0)
    (journal,) = (tmp_path / "ledger.db.grants").glob("*.jsonl")
    assert g.grant_id in journal.read_text()  # recorded: one line, written before the form could be
    assert rows(tmp_path / "ledger.db", "SELECT count(*) FROM grants") == [(0,)]  # not folded yet...
    assert ledger.get(g.grant_id) == g  # ...but no read misses it: readers fold first
    assert rows(tmp_path / "ledger.db", "SELECT grant_id FROM grants") == [(g.grant_id,)]
    assert counters(ledger) == {("client:acme", hour_of(T0)): 1, ("client:acme", day_of(T0)): MIB}
    ledger.close()
    assert not list((tmp_path / "ledger.db.grants").glob("*.jsonl"))  # closed: folded and removed
    assert rows(tmp_path / "ledger.db", "SELECT count(*) FROM leases") == [(0,)]  # blocks given back
    assert rows(tmp_path / "ledger.db", "SELECT value FROM counters ORDER BY window") == [(MIB,), (1,)]


def test_blocks_are_counted_ahead_but_reports_show_only_what_was_granted(tmp_path: Path) -> None:
    ledger = SqliteLedger(tmp_path / "ledger.db")
    for n in range(10):
        ledger.reserve(grant(n), BIG, now=T0)
    raw = dict(((scope, window), value) for scope, window, value in
               rows(tmp_path / "ledger.db", "SELECT scope, window, value FROM counters"))
    assert raw[("client:acme", hour_of(T0))] == engine.LEASE_GRANTS  # one block: 64 grants counted ahead
    assert counters(ledger) == {("client:acme", hour_of(T0)): 10, ("client:acme", day_of(T0)): 10 * MIB}
    ledger.close()


def test_a_small_quota_is_counted_grant_by_grant(tmp_path: Path) -> None:
    ledger = SqliteLedger(tmp_path / "ledger.db")
    limit = [Limit("client:acme", uploads_per_hour=engine.LEASE_ROOM - 1)]
    ledger.reserve(grant(1), limit, now=T0)
    assert rows(tmp_path / "ledger.db", "SELECT taken FROM leases") == [(1,)]  # exactly what the grant needed
    ledger.close()


def test_near_its_limit_a_large_quota_is_never_passed_by_blocks(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine, "LEASE_ROOM", 4)  # blocks even with a small limit: 40 // 16 = 2 at first
    first, second = SqliteLedger(tmp_path / "ledger.db"), SqliteLedger(tmp_path / "ledger.db")  # two "workers"
    limit = [Limit("client:acme", uploads_per_hour=40)]
    granted = 0
    refused = []
    for n in range(100):
        try:
            (first if n % 3 else second).reserve(grant(n), limit, now=T0)
            granted += 1
        except QuotaExceeded as exc:
            refused.append(exc)
    assert granted <= 40 and granted >= 40 - 2 * 2  # never over; at most a block per worker left unspent
    assert all(exc.limit == 40 and exc.usage <= 40 for exc in refused)
    assert counters(first)[("client:acme", hour_of(T0))] == granted == len(list(first.grants()))
    first.close()
    second.close()
    assert rows(tmp_path / "ledger.db", "SELECT value FROM counters WHERE window LIKE 'h%'") == [(granted,)]


def test_sixteen_threads_on_blocks_never_exceed_the_quota(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine, "LEASE_ROOM", 2)
    ledger = SqliteLedger(tmp_path / "ledger.db")
    limit = [Limit("client:acme", uploads_per_hour=100, bytes_per_day=70 * MIB)]
    granted: list[int] = []
    start = threading.Barrier(16)

    def hammer(worker: int) -> None:
        start.wait()
        for i in range(10):
            try:
                ledger.reserve(grant(worker * 100 + i), limit, now=T0)
                granted.append(1)
            except QuotaExceeded:
                pass

    threads = [threading.Thread(target=hammer, args=(w,)) for w in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(granted) == 70  # one process: its blocks are all spent before it is refused
    assert counters(ledger) == {("client:acme", hour_of(T0)): 70, ("client:acme", day_of(T0)): 70 * MIB}
    ledger.close()


def _reserve_then_die(path: str, first: int, count: int, kill: bool) -> None:
    ledger = SqliteLedger(path)
    for n in range(first, first + count):
        ledger.reserve(grant(n), BIG, now=T0)
    if kill:
        os.kill(os.getpid(), signal.SIGKILL)  # no close, no exit handlers: as kill -9 leaves it
    ledger.close()


def test_a_killed_worker_loses_no_grant_and_its_blocks_come_back(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    SqliteLedger(path).close()
    ctx = multiprocessing.get_context("fork")
    workers = [ctx.Process(target=_reserve_then_die, args=(str(path), w * 1000, 25, w == 0)) for w in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    assert [w.exitcode for w in workers] == [-signal.SIGKILL, 0]
    assert len(list((tmp_path / "ledger.db.grants").glob("*.jsonl"))) == 1  # the killed one's is left
    ledger = SqliteLedger(path)
    assert len(list(ledger.grants())) == 50  # every grant the killed worker recorded is there
    assert counters(ledger) == {("client:acme", hour_of(T0)): 50, ("client:acme", day_of(T0)): 50 * MIB}
    assert rows(path, "SELECT count(*) FROM leases") == [(0,)]  # its blocks' unspent part went back
    assert rows(path, "SELECT value FROM counters ORDER BY window") == [(50 * MIB,), (50,)]
    assert not list((tmp_path / "ledger.db.grants").glob("*.jsonl"))
    ledger.close()


def test_a_forked_child_never_spends_its_parents_blocks(tmp_path: Path) -> None:
    ledger = SqliteLedger(tmp_path / "ledger.db")
    limit = [Limit("client:acme", uploads_per_hour=engine.LEASE_ROOM * engine.LEASE_SHARE)]
    ledger.reserve(grant(0), limit, now=T0)  # the parent holds a block
    parent_owner = ledger._proc().owner
    pid = os.fork()
    if pid == 0:  # the child: its own journal, its own block
        code = 0
        try:
            ledger.reserve(grant(1), limit, now=T0)
            code = 0 if ledger._proc().owner != parent_owner else 3
            ledger.close()
        except BaseException:
            code = 4
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    owners = {owner for (owner,) in rows(tmp_path / "ledger.db", "SELECT DISTINCT owner FROM leases")}
    assert owners == {parent_owner}  # the child's blocks went back when it closed
    assert counters(ledger)[("client:acme", hour_of(T0))] == 2
    ledger.close()


def test_a_journal_that_cannot_be_written_means_no_grant_and_a_fresh_journal(tmp_path: Path) -> None:
    ledger = SqliteLedger(tmp_path / "ledger.db")
    ledger.reserve(grant(0), BIG, now=T0)
    proc = ledger._proc()
    real, proc.fd = proc.fd, os.open(os.devnull, os.O_RDONLY)  # every write fails (EBADF)
    try:
        with pytest.raises(LedgerUnavailable) as caught:
            ledger.reserve(grant(1), BIG, now=T0)
        assert "grant journal" in caught.value.message and caught.value.status == 503
    finally:
        os.close(real)  # what the journal's owner held: now it is like a dead worker's
    with open(proc.path, "ab") as f:
        f.write(b'[["half a line, as a full disk leaves it')  # the next grant must not run into it
    ledger.reserve(grant(2), BIG, now=T0)
    assert ledger._proc().owner != proc.owner  # a new journal, new blocks
    assert ledger.get(grant(1).grant_id) is None
    assert ledger.get(grant(2).grant_id) is not None
    assert counters(ledger)[("client:acme", hour_of(T0))] == 2  # grants 0 and 2: the old blocks went back
    assert rows(tmp_path / "ledger.db", "SELECT DISTINCT owner FROM leases") == [(ledger._proc().owner,)]
    ledger.close()


def test_a_torn_last_line_of_a_dead_journal_is_not_folded(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    ctx = multiprocessing.get_context("fork")
    worker = ctx.Process(target=_reserve_then_die, args=(str(path), 0, 3, True))
    worker.start()
    worker.join(60)
    (journal,) = (tmp_path / "ledger.db.grants").glob("*.jsonl")
    with open(journal, "ab") as f:
        f.write(b'[["cut off by a power cut')  # no newline: its writer never finished it
    ledger = SqliteLedger(path)
    assert len(list(ledger.grants())) == 3
    assert counters(ledger)[("client:acme", hour_of(T0))] == 3
    ledger.close()


def test_a_file_of_the_layout_before_leases_is_upgraded_in_place(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    conn = apsw.Connection(str(path))
    old = engine.SCHEMA.split("CREATE TABLE IF NOT EXISTS leases")[0] + "PRAGMA user_version = 2;"
    conn.execute(old)
    conn.close()
    ledger = SqliteLedger(path)
    ledger.reserve(grant(1), BIG, now=T0)
    assert ledger.get(grant(1).grant_id) is not None
    ledger.close()
    assert rows(path, "PRAGMA user_version") == [(engine.SCHEMA_VERSION,)]


def test_a_worker_that_exits_without_closing_gives_its_blocks_back(tmp_path: Path) -> None:
    import subprocess
    import sys

    path = tmp_path / "ledger.db"
    script = ("from broker.ledger import Limit; from tests.ledger.test_sqlite_journal import grant, BIG, T0; "
              "from broker.ledger.sqlite import SqliteLedger; "
              f"ledger = SqliteLedger({str(path)!r}); [ledger.reserve(grant(n), BIG, now=T0) for n in range(5)]")
    done = subprocess.run([sys.executable, "-c", script], cwd=Path(__file__).resolve().parents[2],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert not list((tmp_path / "ledger.db.grants").glob("*.jsonl"))  # folded and removed at exit
    assert rows(path, "SELECT count(*) FROM grants") == [(5,)]
    assert rows(path, "SELECT count(*) FROM leases") == [(0,)]
    assert rows(path, "SELECT value FROM counters ORDER BY window") == [(5 * MIB,), (5,)]


def test_a_block_of_an_ended_hour_goes_back_without_what_it_spent(tmp_path: Path) -> None:
    ledger = SqliteLedger(tmp_path / "ledger.db")
    for n in range(3):  # three grants from one block of the hour, none folded yet
        ledger.reserve(grant(n), BIG, now=T0)
    later = T0 + 3600
    ledger.reserve(grant(9, issued=later), BIG, now=later)  # a new hour: the old block goes back
    assert rows(tmp_path / "ledger.db", "SELECT count(*) FROM leases WHERE window = ?".replace(
        "?", f"'{hour_of(T0)}'")) == [(0,)]
    assert counters(ledger)[("client:acme", hour_of(T0))] == 3  # not 0: the spent part stayed counted
    assert rows(tmp_path / "ledger.db", f"SELECT value FROM counters WHERE window = '{hour_of(T0)}'") == [(3,)]
    ledger.close()


def test_a_forked_child_never_closes_a_connection_it_inherited(tmp_path: Path) -> None:
    """Closing the parent's SQLite connection in a child (the garbage collector would, for a ledger
    the parent still held when it forked, as ``broker serve``'s master did) can checkpoint and remove
    the WAL under the other processes: seen as "disk I/O error" in a worker opening the ledger."""
    ledger = SqliteLedger(tmp_path / "ledger.db")
    inherited = ledger._conn()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            import gc

            mine = ledger._conn()
            code = 3 if mine is inherited else 0  # the child opens its own
            kept = engine._INHERITED[:]
            del ledger
            gc.collect()
            if not any(c is inherited for c in kept) or not any(c is inherited for c in engine._INHERITED):
                code = 4
        except BaseException:
            code = 5
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    ledger.reserve(grant(1), BIG, now=T0)  # the parent's connection still works
    assert ledger.get(grant(1).grant_id) is not None
    assert rows(tmp_path / "ledger.db", "PRAGMA integrity_check") == [("ok",)]
    ledger.close()


def _open_together(path: str, start: Any, out: Any) -> None:
    start.wait()
    try:
        SqliteLedger(path).close()
        out.put("ok")
    except LedgerUnavailable as exc:
        out.put(exc.message)


def test_worker_processes_opening_a_new_ledger_together_all_succeed(tmp_path: Path) -> None:
    """Before: 1 in 3 tries failed, with 'database is locked' (turning a new file to WAL mode) or
    'written by an earlier version (layout 0)' (a table seen before its layout number)."""
    ctx = multiprocessing.get_context("fork")
    failures = []
    for attempt in range(15):
        start, out = ctx.Barrier(3), ctx.Queue()
        workers = [ctx.Process(target=_open_together, args=(str(tmp_path / f"{attempt}.db"), start, out))
                   for _ in range(3)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(60)
        failures += [said for said in (out.get(timeout=10) for _ in workers) if said != "ok"]
    assert failures == []


def test_opening_a_ledger_writes_nothing(tmp_path: Path) -> None:
    """A worker that opens the ledger late (a full disk by then) must still open it."""
    first = SqliteLedger(tmp_path / "ledger.db")  # lays it out, and stays open (the WAL stays)
    wal = tmp_path / "ledger.db-wal"
    size = wal.stat().st_size
    SqliteLedger(tmp_path / "ledger.db").close()
    assert wal.stat().st_size == size and rows(tmp_path / "ledger.db", "PRAGMA user_version") == [(3,)]
    first.close()
