"""SQLite through sqlite-utils: connections, schema migrations, and the process's single writer."""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Generic, TypeVar

import sqlite_utils

from gateway.threads import name_this_thread

log = logging.getLogger("gateway.db")
T = TypeVar("T")
BUSY_TIMEOUT_MS = 10_000


def now_iso(ts: float | None = None) -> str:
    """ISO 8601 UTC with a Z, to the second: how every time is stored and shown."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() if ts is None else ts))


def first(db: sqlite_utils.Database, sql: str, params: Any = ()) -> dict[str, Any] | None:
    """The first row as a dict, read straight from the connection: hot paths skip the savepoint that
    sqlite-utils' query() wraps around every statement."""
    cur = db.conn.execute(sql, params)
    try:
        row = cur.fetchone()
        return None if row is None else dict(zip([d[0] for d in cur.description], row, strict=True))
    finally:
        cur.close()


def open_db(path: str | Path, *, shared: bool = False) -> sqlite_utils.Database:
    """One connection for the calling thread (shared: for threads that take turns under a lock): WAL,
    busy_timeout, foreign keys, schema up to date."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(p), timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                           check_same_thread=not shared)
    db = sqlite_utils.Database(conn)
    db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    db.execute("PRAGMA foreign_keys = ON")
    db.execute("PRAGMA synchronous = NORMAL")  # WAL + NORMAL: a commit survives a process crash
    db.enable_wal()
    MIGRATIONS.apply(db)
    return db


class Migrations:
    """Ordered schema steps, each applied once and recorded in _migrations (sqlite-migrate style)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.steps: list[tuple[str, Callable[[sqlite_utils.Database], None]]] = []

    def __call__(self, fn: Callable[[sqlite_utils.Database], None]) -> Callable[[sqlite_utils.Database], None]:
        self.steps.append((fn.__name__, fn))
        return fn

    def applied(self, db: sqlite_utils.Database) -> set[str]:
        if not db.table("_migrations").exists():
            return set()
        rows = db.query("select step from _migrations where name = ?", [self.name])
        return {r["step"] for r in rows}

    def apply(self, db: sqlite_utils.Database) -> None:
        if len(self.applied(db)) == len(self.steps):
            return
        db.execute("BEGIN IMMEDIATE")  # serialises concurrent starters (server and CLI)
        try:
            if not db.table("_migrations").exists():
                db.table("_migrations").create({"name": str, "step": str, "applied_at": str}, pk=("name", "step"))
            done = self.applied(db)
            for step, fn in self.steps:
                if step not in done:
                    fn(db)
                    db.table("_migrations").insert({"name": self.name, "step": step,
                                              "applied_at": now_iso()})
                    log.info("migration %s applied", step)
            db.execute("COMMIT")
        except BaseException:
            db.rollback()
            raise


MIGRATIONS = Migrations("gateway")


@MIGRATIONS
def m001_initial(db: sqlite_utils.Database) -> None:
    db.table("settings").create({"key": str, "value": str}, pk="key")
    db.table("accounts").create({"id": str, "name": str, "callback_secret_version": int, "created_at": str}, pk="id",
                          not_null={"name", "created_at"}, defaults={"callback_secret_version": 1})
    db.table("accounts").create_index(["name"], unique=True)
    db.table("users").create({"id": int, "login": str, "password_hash": str, "role": str, "account_id": str,
                        "disabled": int, "created_at": str}, pk="id",
                       not_null={"login", "password_hash", "role", "created_at"},
                       defaults={"disabled": 0}, foreign_keys=[("account_id", "accounts", "id")])
    db.table("users").create_index(["login"], unique=True)
    db.table("clients").create({"id": int, "name": str, "token_hash": str, "created_at": str, "revoked_at": str},
                         pk="id", not_null={"name", "token_hash", "created_at"})
    db.table("clients").create_index(["name"], unique=True)
    db.table("clients").create_index(["token_hash"], unique=True)
    db.table("sessions").create({"id": int, "token_hash": str, "user_id": int, "client_id": int, "created_at": str,
                           "expires_at": float, "ended_at": str}, pk="id",
                          not_null={"token_hash", "user_id", "client_id", "created_at", "expires_at"},
                          foreign_keys=[("user_id", "users", "id"), ("client_id", "clients", "id")])
    db.table("sessions").create_index(["token_hash"], unique=True)
    db.table("sessions").create_index(["user_id"])
    db.table("deadlines").create({"id": int, "name": str, "hours": int, "created_at": str}, pk="id",
                           not_null={"name", "hours", "created_at"})
    db.table("specifications").create({"key": int, "name": str, "created_at": str}, pk="key",
                                not_null={"name", "created_at"})
    db.execute("""
        create table jobs (
            id integer primary key autoincrement,
            account_id text not null references accounts(id),
            created_by integer not null references users(id),
            name text not null,
            description text not null,
            invoice_reference text,
            is_test integer not null default 0,
            deadline_id integer references deadlines(id),
            specification_key integer references specifications(key),
            tags text not null default '[]',
            callback_url text,
            status text not null,
            day text not null,
            created_at text not null,
            ftp_password_hash text not null,
            finished_at real,
            archived_at text
        )""")
    db.table("jobs").create_index(["account_id", "id"])
    db.table("jobs").create_index(["status"])
    db.table("job_events").create({"id": int, "job_id": int, "status": str, "at": str, "actor": str}, pk="id",
                            not_null={"job_id", "status", "at"}, foreign_keys=[("job_id", "jobs", "id")])
    db.table("job_events").create_index(["job_id"])
    db.table("files").create({"id": int, "job_id": int, "kind": str, "path": str, "size": int, "md5": str,
                        "crc32": int, "mtime_ns": int, "created_at": str, "protocol": str, "login": str},
                       pk="id", not_null={"job_id", "kind", "path", "size", "md5", "crc32", "mtime_ns",
                                          "created_at"},
                       foreign_keys=[("job_id", "jobs", "id")])
    db.table("files").create_index(["job_id", "kind", "path"], unique=True)
    db.table("partials").create({"id": int, "job_id": int, "kind": str, "path": str, "login": str, "temp_name": str,
                           "size": int, "updated_at": float}, pk="id",
                          not_null={"job_id", "kind", "path", "login", "temp_name", "size", "updated_at"},
                          foreign_keys=[("job_id", "jobs", "id")])
    db.table("partials").create_index(["job_id", "kind", "path", "login"], unique=True)
    db.table("callbacks").create({"id": int, "job_id": int, "url": str, "attempts": int, "next_at": float,
                            "state": str, "last_error": str}, pk="id",
                           not_null={"job_id", "url", "attempts", "next_at", "state"},
                           foreign_keys=[("job_id", "jobs", "id")])


@MIGRATIONS
def m002_lookup_indexes(db: sqlite_utils.Database) -> None:
    """FTP listings go by day; the callback loop looks for due deliveries twice a second."""
    db.table("jobs").create_index(["day", "account_id"])
    db.table("callbacks").create_index(["state", "next_at"])


@MIGRATIONS
def m003_files_uploaded_ns(db: sqlite_utils.Database) -> None:
    """Newest-first listings need sub-second upload order (a replaced file keeps its id)."""
    db.table("files").add_column("uploaded_ns", int, not_null_default=0)
    db.execute("update files set uploaded_ns = id")  # rows so far: their id order is their upload order
    db.table("files").create_index(["job_id", "uploaded_ns"])


@MIGRATIONS
def m004_job_created_event(db: sqlite_utils.Database) -> None:
    """A new job's first statusHistory entry is written by the INSERT itself: one statement on the
    writer instead of two (every statement the writer runs drops and retakes the GIL the API's loop
    needs: POST /jobs went 2,560 -> 2,900 req/s without the second one)."""
    db.execute("""create trigger job_created_event after insert on jobs
                  begin
                    insert into job_events (job_id, status, at, actor)
                    values (new.id, new.status, new.created_at,
                            (select login from users where id = new.created_by));
                  end""")


F = TypeVar("F", bound=Callable[..., Any])


def self_contained(fn: F) -> F:
    """Marks a writer function that leaves nothing behind when it fails: one SQL statement (SQLite undoes
    a failed statement by itself) and nothing after it that can fail, or a function that undoes its own
    statement before it raises. In a batch it needs no savepoint: two statements fewer, and each
    statement the writer runs hands the GIL to the API's loop and back."""
    fn.self_contained = True  # type: ignore[attr-defined]
    return fn


class Epoch:
    """A number bumped after every committed change of some kind (gateway.db.after_commit). A cache of
    rows of that kind keeps an entry only while the value it saw before reading the database is still
    the current one (EpochCache)."""

    def __init__(self) -> None:
        self.value = 0
        self._lock = threading.Lock()

    def bump(self) -> None:
        with self._lock:
            self.value += 1


K = TypeVar("K")
V = TypeVar("V")


class EpochCache(Generic[K, V]):
    """Values read from the database, kept until `epoch` moves and for `ttl` seconds at most (a change
    made behind the gateway's back, such as an UPDATE in the sqlite3 shell, counts within that time).
    The caller takes `seen()` before its read and hands it to `put()`: a change committed during the
    read moves the epoch, so that value is never served. At most max_entries are kept."""

    def __init__(self, epoch: Epoch, ttl: float, max_entries: int) -> None:
        self.epoch, self.ttl, self.max_entries = epoch, ttl, max_entries
        self._entries: dict[K, tuple[V, int, float]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: K) -> V | None:
        hit = self._entries.get(key)
        if hit is None:
            return None
        value, seen, until = hit
        if seen == self.epoch.value and time.monotonic() < until:
            return value
        del self._entries[key]
        return None

    def seen(self) -> int:
        return self.epoch.value

    def put(self, key: K, value: V, seen: int) -> None:
        if self.ttl <= 0:
            return
        if len(self._entries) >= self.max_entries:
            self._entries.clear()
        self._entries[key] = (value, seen, time.monotonic() + self.ttl)


def after_commit(db: sqlite_utils.Database, fn: Callable[[], None]) -> None:
    """Call fn() once what the calling writer function wrote is committed; never if it is rolled back.
    Outside the writer (the admin CLI commits when its command ends) fn runs at once."""
    hooks: list[Callable[[], None]] | None = getattr(db, "_gw_after_commit", None)
    if hooks is None:
        fn()
    else:
        hooks.append(fn)


class _LoopCaller:
    """A caller awaiting on an event loop: results go back one wake-up per loop per batch, not one each."""

    __slots__ = ("fut", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop, fut: asyncio.Future[Any]) -> None:
        self.loop, self.fut = loop, fut

    def set_running_or_notify_cancel(self) -> bool:
        return not self.fut.cancelled()  # read from the writer thread: a late cancel just loses the result


def _deliver(outcomes: list[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
    for fut, result, err in outcomes:
        if fut.done():
            continue
        if err is None:
            fut.set_result(result)
        else:
            fut.set_exception(err)


class _Deferred:
    """The waiter of a deferred call: nobody waits, a failure is logged."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn

    def set_running_or_notify_cancel(self) -> bool:
        return True

    def done(self) -> bool:
        return False

    def set_result(self, result: Any) -> None:
        pass

    def set_exception(self, err: BaseException) -> None:
        log.error("deferred database write %s failed: %s", getattr(self.fn, "__qualname__", self.fn), err)


_TICK = object()  # queued when deferred work arrives: wakes the writer
_CHECKPOINT = object()  # queued after calls ran on their callers' threads: the WAL is checkpointed here
Waiter = concurrent.futures.Future[Any] | _LoopCaller | _Deferred
Job = tuple[Callable[..., Any], tuple[Any, ...], Waiter]


class Writer:
    """The one connection that writes: callers submit fn(db, *args); a batch shares one transaction.

    Each call runs in its own savepoint, so one failing call rolls back only itself; results are
    handed back after COMMIT, so a caller that saw a result knows it is durable.

    Calls normally run on the writer's thread, batched. A short call marked now=True runs on its
    caller's thread instead when the writer has nothing in hand (nothing queued, nothing running):
    the same transaction and guarantees, without two thread hand-offs (about 70 us each on these VMs,
    plus the GIL changing hands around every statement). Under load the writer is busy, so such calls
    queue and batch like any other. The connection is only ever used under _busy. The WAL is
    checkpointed on the writer's thread only (automatic checkpoints are off), so a caller's thread
    never waits for a checkpoint's fsync.
    """

    DEFER_DELAY = 0.1  # seconds deferred work waits for a batch to join
    CHECKPOINT_EVERY = 200  # commits between checkpoints (SQLite's automatic one: every 1,000 WAL pages)

    def __init__(self, path: str | Path, max_batch: int = 256) -> None:
        self.path = Path(path)
        self.max_batch = max_batch
        self._queue: queue.SimpleQueue[Job | object | None] = queue.SimpleQueue()
        self._deferred: collections.deque[tuple[Callable[..., Any], tuple[Any, ...]]] = collections.deque()
        self._thread = threading.Thread(target=self._run, name="db-writer", daemon=True)
        self._ready = concurrent.futures.Future[None]()
        self._closed = False
        self._db: sqlite_utils.Database | None = None
        self._busy = threading.Lock()  # whoever holds it owns the connection
        self._count = threading.Lock()
        self._pending = 0  # calls queued or running on the writer's thread
        self._commits = 0  # since the last checkpoint
        self._checkpoint_asked = False
        self._ticked = False  # a _TICK is queued or being waited on: deferred work will be taken

    def start(self) -> None:
        self._thread.start()
        self._ready.result()  # re-raises a failure to open the database

    def _enqueue(self, job: Job) -> None:
        with self._count:
            self._pending += 1
        self._queue.put(job)

    def submit(self, fn: Callable[..., T], *args: Any, now: bool = False) -> concurrent.futures.Future[T]:
        """fn(db, *args) on the writer; now=True: on this thread if the writer is idle (the future is
        then already resolved when this returns)."""
        fut: concurrent.futures.Future[T] = concurrent.futures.Future()
        if self._closed:
            fut.set_exception(RuntimeError("database writer is closed"))
            return fut
        if not (now and self._run_here(fn, args, fut)):
            self._enqueue((fn, args, fut))
        return fut

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        if self._closed:
            raise RuntimeError("database writer is closed")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        self._enqueue((fn, args, _LoopCaller(loop, fut)))
        return await fut

    def _run_here(self, fn: Callable[..., Any], args: tuple[Any, ...], fut: concurrent.futures.Future[Any]) -> bool:
        """Run the call on this thread, deferred calls first, if the writer has nothing in hand."""
        db = self._db
        if db is None or not self._busy.acquire(blocking=False):
            return False
        try:
            if self._pending or self._closed:  # earlier calls are queued or running: keep their order
                return False
            done = self._run_batch(db, [*self._take_deferred(), (fn, args, fut)])
            self._commits += 1
            checkpoint = self._commits >= self.CHECKPOINT_EVERY and not self._checkpoint_asked
            self._checkpoint_asked |= checkpoint
        finally:
            self._busy.release()
        if checkpoint:
            self._queue.put(_CHECKPOINT)
        self._hand_back(done)
        return True

    def _take_deferred(self) -> list[Job]:
        taken: list[Job] = []
        while self._deferred:
            try:
                fn, args = self._deferred.popleft()
            except IndexError:  # taken by the other side meanwhile
                break
            taken.append((fn, args, _Deferred(fn)))
        return taken

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        return self.submit(fn, *args).result()

    def defer(self, fn: Callable[..., Any], *args: Any) -> None:
        """fn(db, *args) without a caller waiting: it runs at the start of the next batch (before what
        was submitted after it), at the latest DEFER_DELAY from now. A failure is logged."""
        if self._closed:
            log.error("database writer is closed: %s dropped", getattr(fn, "__qualname__", fn))
            return
        self._deferred.append((fn, args))
        if not self._ticked:  # one wake-up per DEFER_DELAY at most (not one per call: the GIL changes
            self._ticked = True  # hands each time), even while callers' own commits take the work
            self._queue.put(_TICK)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._queue.put(None)
            if self._thread.is_alive():
                self._thread.join()

    def _run(self) -> None:
        name_this_thread()
        try:
            db = open_db(self.path, shared=True)
            db.execute("PRAGMA wal_autocheckpoint = 0")  # checkpoints run here, see _checkpoint
        except BaseException as e:
            self._ready.set_exception(e)
            return
        self._db = db
        self._ready.set_result(None)
        try:
            while True:
                first = self._queue.get()
                if first is _TICK:  # deferred work alone: give it DEFER_DELAY to ride with real work
                    try:  # (no second tick comes meanwhile: _ticked stays set until the take below)
                        first = self._queue.get(timeout=self.DEFER_DELAY)
                    except queue.Empty:
                        pass
                batch = [first]
                while first is not None and len(batch) < self.max_batch:
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    batch.append(item)
                    if item is None:
                        break
                work: list[Job] = [b for b in batch if isinstance(b, tuple)]
                with self._busy:
                    self._ticked = False  # before the take: what is deferred after it ticks again
                    deferred = self._take_deferred()  # before anything submitted after them
                    done = self._run_batch(db, [*deferred, *work]) if work or deferred else []
                    self._commits += bool(work or deferred)
                    if self._commits >= self.CHECKPOINT_EVERY or (None in batch and self._commits):
                        self._checkpoint(db)
                with self._count:
                    self._pending -= len(work)
                self._hand_back(done)
                if None in batch:
                    return
        finally:
            with self._busy:
                self._db = None
                db.close()

    def _checkpoint(self, db: sqlite_utils.Database) -> None:
        """Copy the WAL back into the database (PASSIVE: readers are never waited for)."""
        self._commits, self._checkpoint_asked = 0, False
        try:
            db.conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except sqlite3.Error as e:  # the next one will try again
            log.warning("WAL checkpoint failed: %s", e)

    def _run_batch(self, db: sqlite_utils.Database, batch: list[Job]) -> list[tuple[Waiter, Any, BaseException | None]]:
        done: list[tuple[Waiter, Any, BaseException | None]] = []
        alone = len(batch) == 1  # nothing to protect from it: no savepoint needed
        conn = db.conn
        hooks: list[Callable[[], None]] = []
        db._gw_after_commit = hooks  # type: ignore[attr-defined]  # see after_commit
        try:
            conn.execute("BEGIN IMMEDIATE")
            for fn, args, waiter in batch:
                if not waiter.set_running_or_notify_cancel():
                    continue
                hooks_before = len(hooks)
                bare = alone or getattr(fn, "self_contained", False)  # no savepoint needed
                try:
                    if bare:
                        result = fn(db, *args)
                    else:
                        # one fixed savepoint name: its two statements stay in sqlite3's statement cache
                        conn.execute("SAVEPOINT writer_call")
                        result = fn(db, *args)
                        conn.execute("RELEASE writer_call")
                    done.append((waiter, result, None))
                except Exception as e:
                    done.append((waiter, None, e))
                    del hooks[hooks_before:]
                    if alone and conn.in_transaction:  # undo what it wrote before failing
                        conn.execute("ROLLBACK")
                    elif not bare and conn.in_transaction:
                        conn.execute("ROLLBACK TO writer_call")
                        conn.execute("RELEASE writer_call")
                    if not conn.in_transaction:
                        # the error ended the whole transaction (a disk or I/O error, a ROLLBACK
                        # trigger): what ran before it in this batch is gone too
                        lost = sqlite3.OperationalError("rolled back with its batch; nothing was written")
                        done = [(w, None, err or lost) for w, _, err in done]
                        hooks.clear()
                        conn.execute("BEGIN IMMEDIATE")
            conn.execute("COMMIT")
        except Exception as e:  # the transaction as a whole failed: nobody's write is durable
            log.exception("database batch failed")
            db.rollback()
            return [(w, None, e) for _, _, w in batch]
        finally:
            db._gw_after_commit = None  # type: ignore[attr-defined]
        for hook in hooks:
            try:
                hook()
            except Exception:
                log.exception("after-commit hook %s failed", getattr(hook, "__qualname__", hook))
        return done

    @staticmethod
    def _hand_back(done: list[tuple[Waiter, Any, BaseException | None]]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], Any, BaseException | None]]] = {}
        for waiter, result, err in done:
            if isinstance(waiter, _LoopCaller):
                by_loop.setdefault(waiter.loop, []).append((waiter.fut, result, err))
            elif not waiter.done():
                if err is None:
                    waiter.set_result(result)
                else:
                    waiter.set_exception(err)
        for loop, outcomes in by_loop.items():
            try:
                loop.call_soon_threadsafe(_deliver, outcomes)
            except RuntimeError:  # that loop is closed: nobody waits any more
                pass
