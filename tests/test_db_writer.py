"""gateway.db: the process's one writer (batches, savepoints, durability, shutdown) and open_db."""

from __future__ import annotations

import concurrent.futures
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlite_utils

from gateway import accounts, jobs
from gateway.db import MIGRATIONS, Writer, after_commit, open_db, self_contained
from gateway.errors import Conflict
from gateway.storage import Storage


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    path = tmp_path / "db" / "gateway.db"
    open_db(path).close()  # schema in place before the tests look
    return path


@pytest.fixture
def writer(db_path: Path) -> Iterator[Writer]:
    w = Writer(db_path)
    w.start()
    yield w
    w.close()


def names_on_disk(path: Path) -> set[str]:
    """What a brand-new connection (another process, say) sees in the accounts table."""
    conn = sqlite3.connect(path)
    try:
        return {r[0] for r in conn.execute("select name from accounts")}
    finally:
        conn.close()


class Gate:
    """A writer call that holds the writer until released, so the next calls queue up into one batch."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self, db: sqlite_utils.Database) -> str:
        self.entered.set()
        assert self.release.wait(10)
        return "gate"


def insert_then_fail(db: sqlite_utils.Database, name: str) -> None:
    accounts.create_account(db, name)
    raise ValueError("this call fails after writing")


def test_one_failing_call_does_not_roll_back_the_others_in_its_batch(writer: Writer, db_path: Path) -> None:
    gate = Gate()
    held = writer.submit(gate)
    assert gate.entered.wait(10)
    seen_by_c: dict[str, Any] = {}

    def c(db: sqlite_utils.Database) -> dict[str, Any]:
        # sees a in this same, still open transaction; nobody else sees it yet
        seen_by_c["own"] = {r["name"] for r in db.query("select name from accounts")}
        seen_by_c["others"] = names_on_disk(db_path)
        return accounts.create_account(db, "c")

    futures: list[concurrent.futures.Future[Any]] = [
        writer.submit(accounts.create_account, "a"),
        writer.submit(insert_then_fail, "b"),
        writer.submit(accounts.create_account, "a"),  # a duplicate: Conflict, before writing
        writer.submit(lambda db: db.execute("insert into accounts (id, name, created_at) "
                                            "values ('x', 'a', 'now')")),  # IntegrityError
        writer.submit(c)]
    gate.release.set()
    assert held.result(10) == "gate"
    assert futures[0].result(10)["name"] == "a"
    with pytest.raises(ValueError, match="fails after writing"):
        futures[1].result(10)
    with pytest.raises(Conflict):
        futures[2].result(10)
    with pytest.raises(sqlite3.IntegrityError):
        futures[3].result(10)
    assert futures[4].result(10)["name"] == "c"
    assert seen_by_c == {"own": {"a"}, "others": set()}  # one batch, one transaction
    assert names_on_disk(db_path) == {"a", "c"}


def test_result_is_durable_once_the_future_resolves(writer: Writer, db_path: Path) -> None:
    for i in range(20):
        row = writer.call(accounts.create_account, f"acct-{i}")
        assert row["name"] in names_on_disk(db_path)  # a fresh connection sees it at once


def test_results_survive_close_and_reopen(db_path: Path) -> None:
    w = Writer(db_path)
    w.start()
    futures = [w.submit(accounts.create_account, f"n{i}") for i in range(50)]
    w.close()  # queued work is done before close returns
    assert all(f.done() for f in futures)
    assert {f.result()["name"] for f in futures} == {f"n{i}" for i in range(50)}
    db = open_db(db_path)
    try:
        assert db.execute("select count(*) from accounts").fetchone()[0] == 50
    finally:
        db.close()


def test_close_joins_the_writer_thread_and_refuses_later_work(db_path: Path) -> None:
    w = Writer(db_path)
    w.start()
    assert "db-writer" in [t.name for t in threading.enumerate()]
    w.close()
    assert "db-writer" not in [t.name for t in threading.enumerate() if t.is_alive()]
    with pytest.raises(RuntimeError, match="closed"):
        w.call(accounts.create_account, "late")
    w.close()  # twice is fine
    assert names_on_disk(db_path) == set()


async def test_run_awaits_the_result_on_the_loop(writer: Writer) -> None:
    row = await writer.run(accounts.create_account, "async")
    assert row["name"] == "async"
    with pytest.raises(Conflict):
        await writer.run(accounts.create_account, "async")


def test_a_cancelled_call_never_runs(writer: Writer, db_path: Path) -> None:
    gate = Gate()
    writer.submit(gate)
    assert gate.entered.wait(10)
    doomed = writer.submit(accounts.create_account, "doomed")
    assert doomed.cancel()
    after = writer.submit(accounts.create_account, "after")
    gate.release.set()
    assert after.result(10)["name"] == "after"
    assert names_on_disk(db_path) == {"after"}


def test_start_reports_a_database_that_cannot_be_opened(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the database folder should be")
    w = Writer(blocker / "gateway.db")
    with pytest.raises(OSError):
        w.start()
    w.close()


def test_every_reported_result_matches_what_is_durable(writer: Writer, db_path: Path) -> None:
    writer.call(lambda db: db.execute("create table guarded (v text)"))
    writer.call(lambda db: db.execute("create trigger no_guarded before insert on guarded "
                                      "begin select raise(rollback, 'refused'); end"))
    gate = Gate()
    writer.submit(gate)
    assert gate.entered.wait(10)
    before = writer.submit(accounts.create_account, "before")
    aborting = writer.submit(lambda db: db.execute("insert into guarded values ('x')"))
    after = writer.submit(accounts.create_account, "after")
    gate.release.set()
    concurrent.futures.wait([before, aborting, after], timeout=10)
    durable = names_on_disk(db_path)
    for name, fut in (("before", before), ("after", after)):
        ok = fut.exception() is None
        assert ok == (name in durable), f"{name}: reported {'ok' if ok else fut.exception()}, durable {durable}"
    with pytest.raises(sqlite3.IntegrityError, match="refused"):  # its own error, not the batch's
        aborting.result()


def test_open_db_sets_wal_and_foreign_keys_and_migrates_once(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "g.db"
    db = open_db(path)
    try:
        assert db.execute("pragma journal_mode").fetchone()[0] == "wal"
        assert db.execute("pragma foreign_keys").fetchone()[0] == 1
        steps = db.execute("select count(*) from _migrations").fetchone()[0]
        assert steps == len(MIGRATIONS.steps) >= 1
        with pytest.raises(sqlite3.IntegrityError):  # a user of a missing account is refused
            db.execute("insert into users (login, password_hash, role, account_id, created_at) "
                       "values ('x', 'h', 'customer', 'no-such-account', 'now')")
    finally:
        db.close()
    db = open_db(path)
    try:
        assert db.execute("select count(*) from _migrations").fetchone()[0] == steps
    finally:
        db.close()


# ----------------------------------------------------------------------------- deferred calls

def test_a_deferred_call_is_written_within_the_delay_without_other_work(writer: Writer, db_path: Path) -> None:
    writer.defer(accounts.create_account, "deferred")
    deadline = time.monotonic() + writer.DEFER_DELAY + 5
    while "deferred" not in names_on_disk(db_path):
        assert time.monotonic() < deadline, "the deferred call never ran"
        time.sleep(0.01)


def test_a_deferred_call_runs_before_anything_submitted_after_it(writer: Writer, db_path: Path) -> None:
    """MFMT's record then a rename by another session: the rename must see the record first."""
    gate = Gate()
    held = writer.submit(gate)
    assert gate.entered.wait(5)
    writer.defer(accounts.create_account, "first")
    later = writer.submit(lambda db: db.execute("select count(*) from accounts where name = 'first'").fetchone()[0])
    gate.release.set()
    assert held.result(5) == "gate"
    assert later.result(5) == 1  # the deferred insert was there when the later call ran


def test_a_failing_deferred_call_is_logged_and_harms_no_other_call(writer: Writer, db_path: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    gate = Gate()
    held = writer.submit(gate)
    assert gate.entered.wait(5)
    writer.defer(insert_then_fail, "undone")
    after = writer.submit(accounts.create_account, "kept")
    gate.release.set()
    held.result(5)
    after.result(5)
    assert names_on_disk(db_path) == {"kept"}  # the failing call's own write was rolled back
    assert "deferred database write insert_then_fail failed" in caplog.text


def test_close_writes_what_was_deferred(db_path: Path) -> None:
    w = Writer(db_path)
    w.start()
    w.defer(accounts.create_account, "at close")
    w.close()
    assert names_on_disk(db_path) == {"at close"}
    w.defer(accounts.create_account, "too late")  # after close: dropped with an error, never raised
    assert names_on_disk(db_path) == {"at close"}


def customer_alice(db: sqlite_utils.Database) -> accounts.Principal:
    """Account acme and its customer alice, as the principal of a (pretend) session."""
    acct = accounts.create_account(db, "acme")
    user = accounts.create_user(db, "alice", "x", "customer", acct["id"])
    return accounts.Principal(user["id"], "alice", "customer", acct["id"], 1, "key")


def test_create_job_returns_the_row_as_stored_with_its_first_status_event(writer: Writer, db_path: Path,
                                                                          tmp_path: Path) -> None:
    """create_job builds its answer instead of reading the row back: it must be the row exactly."""
    who = writer.call(customer_alice)
    storage = Storage(tmp_path / "root")
    new = jobs.NewJob("name", "description", invoice_reference="inv-1", is_test=True, tags=("a", "b"),
                      callback_url="https://example.com/hook")
    made = writer.call(jobs.create_job, storage, who, new, "hash")
    db = open_db(db_path)
    try:
        assert made == jobs.get_job(db, made["id"])
        assert jobs.job_history(db, made["id"]) == [{"status": jobs.PREPROCESS, "at": made["created_at"],
                                                     "actor": "alice"}]
    finally:
        db.close()
    assert all(storage.kind_dir(made["day"], made["id"], k).is_dir() for k in ("ORIGINAL", "CLIPPED"))


def test_after_commit_runs_once_the_write_is_durable_and_never_for_a_rolled_back_call(writer: Writer,
                                                                                    db_path: Path) -> None:
    seen: list[tuple[str, bool]] = []

    def visible(name: str) -> bool:  # from another connection: only what was committed
        with sqlite3.connect(db_path) as other:
            return other.execute("select count(*) from accounts where name = ?", [name]).fetchone()[0] == 1

    def write(db: sqlite_utils.Database, name: str, fail: bool) -> None:
        accounts.create_account(db, name)
        after_commit(db, lambda: seen.append((name, visible(name))))
        if fail:
            raise Conflict("refused after writing")

    ok = writer.submit(write, "kept", False)
    bad = writer.submit(write, "undone", True)
    ok.result()
    with pytest.raises(Conflict):
        bad.result()
    assert seen == [("kept", True)]


@self_contained
def insert_account_row(db: sqlite_utils.Database, account_id: str, name: str) -> None:
    db.execute("insert into accounts (id, name, created_at) values (?, ?, '2026-01-01T00:00:00Z')",
               [account_id, name])


def test_a_failing_self_contained_call_runs_without_a_savepoint_and_harms_nobody(writer: Writer,
                                                                                   db_path: Path) -> None:
    gate = Gate()
    held = writer.submit(gate)
    assert gate.entered.wait(10)
    before = writer.submit(accounts.create_account, "before")
    ok = writer.submit(insert_account_row, "id-1", "single")
    dup = writer.submit(insert_account_row, "id-1", "duplicate id")  # the same primary key: refused
    after = writer.submit(accounts.create_account, "after")
    gate.release.set()
    assert held.result() == "gate"
    with pytest.raises(sqlite3.IntegrityError):
        dup.result()
    assert before.result()["name"] == "before" and ok.result() is None and after.result()["name"] == "after"
    assert names_on_disk(db_path) == {"before", "single", "after"}


def test_a_job_whose_folders_cannot_be_made_leaves_no_row_and_harms_its_batch_not(writer: Writer, db_path: Path,
                                                                                 tmp_path: Path) -> None:
    """create_job runs without a savepoint (self_contained): it must take its own row back."""
    who = writer.call(customer_alice)
    storage = Storage(tmp_path / "root")
    new = jobs.NewJob("name", "description", invoice_reference=None, is_test=False, tags=(), callback_url=None)
    first = writer.call(jobs.create_job, storage, who, new, "hash")
    blocker = storage.job_dir(first["day"], first["id"] + 1)
    blocker.write_bytes(b"a file where the next job's folder goes")
    gate = Gate()
    held = writer.submit(gate)
    assert gate.entered.wait(10)
    failing = writer.submit(jobs.create_job, storage, who, new, "hash")
    other = writer.submit(accounts.create_account, "same batch")
    gate.release.set()
    assert held.result() == "gate"
    with pytest.raises(OSError):
        failing.result()
    assert other.result()["name"] == "same batch"
    with sqlite3.connect(db_path) as conn:
        assert conn.execute("select id from jobs").fetchall() == [(first["id"],)]
        assert conn.execute("select distinct job_id from job_events").fetchall() == [(first["id"],)]
    blocker.unlink()
    again = writer.call(jobs.create_job, storage, who, new, "hash")
    assert storage.kind_dir(again["day"], again["id"], "ORIGINAL").is_dir()


# ----------------------------------------------------------------------------- calls run on the caller's thread

def test_a_now_call_runs_on_the_callers_thread_when_the_writer_is_idle_and_is_durable_at_once(
        writer: Writer, db_path: Path) -> None:
    threads: list[str] = []

    def create(db: sqlite_utils.Database, name: str) -> dict[str, Any]:
        threads.append(threading.current_thread().name)
        return accounts.create_account(db, name)

    fut = writer.submit(create, "here", now=True)
    assert fut.done() and fut.result()["name"] == "here"
    assert threads == [threading.current_thread().name]
    assert "here" in names_on_disk(db_path)
    writer.submit(create, "there").result()  # without now=True: the writer's own thread
    assert threads[-1] == "db-writer"


def test_a_now_call_waits_its_turn_behind_queued_work(writer: Writer, db_path: Path) -> None:
    gate = Gate()
    held = writer.submit(gate)
    assert gate.entered.wait(10)
    queued = writer.submit(accounts.create_account, "first")
    later = writer.submit(accounts.create_account, "second", now=True)
    assert not later.done()  # the writer is busy: it queued
    gate.release.set()
    assert held.result() == "gate" and queued.result()["name"] == "first" and later.result()["name"] == "second"
    db = open_db(db_path)
    try:
        order = [r[0] for r in db.execute("select name from accounts order by rowid")]
    finally:
        db.close()
    assert order == ["first", "second"]


def test_deferred_calls_run_before_a_now_call_in_its_transaction(writer: Writer, db_path: Path) -> None:
    writer.defer(accounts.create_account, "deferred")
    seen: dict[str, bool] = {}

    def check(db: sqlite_utils.Database) -> None:
        seen["deferred"] = db.execute("select 1 from accounts where name = 'deferred'").fetchone() is not None

    writer.submit(check, now=True).result()
    assert seen == {"deferred": True}


def test_a_failing_now_call_rolls_back_and_raises_to_its_caller(writer: Writer, db_path: Path) -> None:
    fut = writer.submit(insert_then_fail, "never", now=True)
    assert fut.done()
    with pytest.raises(ValueError, match="fails after writing"):
        fut.result()
    assert "never" not in names_on_disk(db_path)
    assert writer.submit(accounts.create_account, "after", now=True).result()["name"] == "after"


def test_the_wal_stays_bounded_when_every_commit_runs_on_callers_threads(db_path: Path) -> None:
    """Automatic checkpoints are off on the writer's connection (a caller must never wait for one):
    the writer's thread checkpoints after CHECKPOINT_EVERY commits, so the WAL is reused, not grown."""
    w = Writer(db_path)
    w.CHECKPOINT_EVERY = 20
    w.start()
    wal, largest, here = db_path.with_name(db_path.name + "-wal"), 0, 0
    try:
        for i in range(1500):
            fut = w.submit(accounts.create_account, f"a{i}", now=True)
            here += fut.done()  # not done: the writer was checkpointing, so the call queued
            fut.result()
            if i % 50 == 0:
                largest = max(largest, wal.stat().st_size)
    finally:
        w.close()
    assert here > 1000  # nearly all of them ran here
    assert largest < 2 << 20, f"the WAL grew to {largest:,} bytes"
