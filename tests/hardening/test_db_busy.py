"""Database busy: another connection holds the write lock for about a second (BEGIN IMMEDIATE).

Writes wait for it (busy_timeout) and then succeed: job creation, a login, an FTP upload (its
226 comes once the record is durable); reads go on meanwhile (WAL).
"""

from __future__ import annotations

import ftplib
import io
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from conftest import Gateway
from helpers_proc import md5, payload

HOLD = 1.0


@contextmanager
def write_lock(db_path: Path, hold: float) -> Iterator[threading.Event]:
    """Hold SQLite's write lock from a connection of our own for `hold` seconds (from a thread).

    Yields an event set once the lock is taken; the lock is released after `hold` seconds.
    """
    taken = threading.Event()
    errors: list[BaseException] = []

    def holder() -> None:
        conn = sqlite3.connect(db_path, isolation_level=None, timeout=10)
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("create table if not exists hardening_lock (x)")
            taken.set()
            time.sleep(hold)
            conn.execute("COMMIT")
        except BaseException as e:
            errors.append(e)
            taken.set()
        finally:
            conn.close()

    t = threading.Thread(target=holder, name="db-lock-holder")
    t.start()
    try:
        assert taken.wait(10)
        yield taken
    finally:
        t.join(10)
    assert not errors, errors


def ftp_upload(gw: Gateway, path: str, data: bytes, result: dict[str, object]) -> None:
    f = ftplib.FTP()
    try:
        f.connect("127.0.0.1", gw.ftp_port, timeout=20)
        f.login("alice", gw.world.passwords["alice"])
        start = time.monotonic()
        result["reply"] = f.storbinary(f"STOR {path}", io.BytesIO(data))
        result["took"] = time.monotonic() - start
        f.quit()
    except (OSError, ftplib.Error) as e:
        result["reply"] = repr(e)
    finally:
        f.close()


async def test_writes_wait_for_a_locked_database_instead_of_failing(ftp_gw: Gateway) -> None:
    gw = ftp_gw
    session = await gw.session("alice")
    job = await gw.create_job(session)
    folder = f"/{job['createdDate'][:10].replace('-', '')}/{job['id']}/ORIGINAL"
    data = payload(7, 300_000)
    result: dict[str, object] = {}
    with write_lock(gw.db_path, HOLD):
        started = time.monotonic()
        uploader = threading.Thread(target=ftp_upload, args=(gw, f"{folder}/during-lock.bin", data, result),
                                    name="ftp-uploader")
        uploader.start()
        try:
            # reads are not blocked by a writer (WAL)
            listing = await gw.call("GET", "/jobs", session=session)
            assert listing.status == 200, listing
            assert time.monotonic() - started < HOLD * 0.8
            # writes wait for the lock and succeed
            created = await gw.post_job(session)
            login = await gw.login_reply("carol")
        finally:
            uploader.join(30)
    waited = time.monotonic() - started
    assert created.status == 201, created
    assert login.status == 201, login
    assert waited >= HOLD * 0.9, waited
    assert str(result.get("reply", "")).startswith("226"), result
    rows = gw.query("select size, md5 from files where job_id = ? and path = ?", [job["id"], "during-lock.bin"])
    assert rows == [{"size": len(data), "md5": md5(data)}]


async def test_a_ftp_upload_answered_during_the_lock_waits_for_the_commit(ftp_gw: Gateway) -> None:
    """The 226 is a promise: it cannot come before the record is written, i.e. before the lock ends."""
    gw = ftp_gw
    job = await gw.create_job(await gw.session("alice"))
    folder = f"/{job['createdDate'][:10].replace('-', '')}/{job['id']}/ORIGINAL"
    result: dict[str, object] = {}
    with write_lock(gw.db_path, HOLD):
        t0 = time.monotonic()
        ftp_upload(gw, f"{folder}/promise.bin", b"x" * 1000, result)
        answered = time.monotonic() - t0
    assert str(result["reply"]).startswith("226"), result
    assert answered >= HOLD * 0.8, answered
