"""Jobs, their files and statuses: plain synchronous functions taking the database first."""

from __future__ import annotations

import json
import logging
import os
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlite_utils

from gateway.accounts import LOGINS_CHANGED, Principal
from gateway.db import Epoch, EpochCache, after_commit, first, now_iso, self_contained
from gateway.errors import Conflict, Forbidden, Gone, InvalidParameter, NotFound
from gateway.storage import KINDS, Digest, Storage, finished_stat, hash_file, unlink_quiet

log = logging.getLogger("gateway.jobs")

PREPROCESS, WORK_PROGRESS, FINISHED, ARCHIVED = "CJ_PREPROCESS", "CJ_WORK_PROGRESS", "CJ_FINISHED", "CJ_ARCHIVED"
STATUSES = {
    PREPROCESS: "Created: originals are being uploaded (FTP or POST).",
    WORK_PROGRESS: "Submitted: originals are frozen and the job is being processed.",
    FINISHED: "Finished: the clipped images are ready for download.",
    ARCHIVED: "Archived: the retention time passed and the files were removed.",
}
JOB_USER_PREFIX = "job-"


def job_ftp_username(job_id: int) -> str:
    return f"{JOB_USER_PREFIX}{job_id}"


# ----------------------------------------------------------------------------- deadlines, specifications

def create_deadline(db: sqlite_utils.Database, name: str, hours: int) -> dict[str, Any]:
    if not name.strip():
        raise InvalidParameter("name", "a deadline needs a name")
    if not 0 < hours <= 1_000_000:
        raise InvalidParameter("hours", "expected a number of hours from 1 to 1000000")
    row = {"name": name.strip(), "hours": hours, "created_at": now_iso()}
    row["id"] = db.table("deadlines").insert(row).last_pk
    return {"id": row["id"], "name": row["name"], "hours": hours}


def create_specification(db: sqlite_utils.Database, key: int, name: str) -> dict[str, Any]:
    if not 0 <= key <= 2**63 - 1:
        raise InvalidParameter("key", "expected an integer from 0 to 2**63-1")
    if not name.strip():
        raise InvalidParameter("name", "a specification needs a name")
    if db.execute("select 1 from specifications where key = ?", [key]).fetchone():
        raise Conflict(f"a specification with key {key} exists already", code="duplicate")
    db.table("specifications").insert({"key": key, "name": name.strip(), "created_at": now_iso()})
    return {"key": key, "name": name.strip()}


def list_deadlines(db: sqlite_utils.Database) -> list[dict[str, Any]]:
    return [{"id": r["id"], "name": r["name"], "hours": r["hours"]}
            for r in db.query("select * from deadlines order by id")]


def list_specifications(db: sqlite_utils.Database) -> list[dict[str, Any]]:
    return [{"key": r["key"], "name": r["name"]} for r in db.query("select * from specifications order by key")]


def deadline_exists(db: sqlite_utils.Database, deadline_id: int) -> bool:
    return db.execute("select 1 from deadlines where id = ?", [deadline_id]).fetchone() is not None


def specification_exists(db: sqlite_utils.Database, key: int) -> bool:
    return db.execute("select 1 from specifications where key = ?", [key]).fetchone() is not None


# ----------------------------------------------------------------------------- jobs

@dataclass(frozen=True)
class NewJob:
    """A checked create-job request."""

    name: str
    description: str
    invoice_reference: str | None = None
    is_test: bool = False
    deadline_id: int | None = None
    specification_key: int | None = None
    tags: tuple[str, ...] = ()
    callback_url: str | None = None


_INSERT_JOB = """insert into jobs (account_id, created_by, name, description, invoice_reference, is_test, deadline_id,
                                   specification_key, tags, callback_url, status, day, created_at, ftp_password_hash)
                 values (:account_id, :created_by, :name, :description, :invoice_reference, :is_test, :deadline_id,
                         :specification_key, :tags, :callback_url, :status, :day, :created_at, :ftp_password_hash)"""


@self_contained
def create_job(db: sqlite_utils.Database, storage: Storage, who: Principal, new: NewJob,
               ftp_password_hash: str) -> dict[str, Any]:
    """Insert the job and make its ORIGINAL/ and CLIPPED/ folders (both before the caller answers)."""
    if who.account_id is None:
        raise Forbidden("Only a customer of an account can create jobs.")
    if new.deadline_id is not None and not deadline_exists(db, new.deadline_id):
        raise InvalidParameter("deadlineId", f"no deadline with id {new.deadline_id}")
    if new.specification_key is not None and not specification_exists(db, new.specification_key):
        raise InvalidParameter("specificationKey", f"no specification with key {new.specification_key}")
    now = time.time()
    job: dict[str, Any] = {
        "account_id": who.account_id, "created_by": who.user_id, "name": new.name, "description": new.description,
        "invoice_reference": new.invoice_reference, "is_test": int(new.is_test), "deadline_id": new.deadline_id,
        "specification_key": new.specification_key, "tags": json.dumps(list(new.tags)),
        "callback_url": new.callback_url, "status": PREPROCESS, "day": time.strftime("%Y%m%d", time.gmtime(now)),
        "created_at": now_iso(now), "ftp_password_hash": ftp_password_hash}
    # one step of one statement (no RETURNING row to fetch, the first status event comes from trigger
    # job_created_event): each statement the writer runs hands the GIL back and forth with the loop
    job["id"] = db.conn.execute(_INSERT_JOB, job).lastrowid
    job.update(tags=list(new.tags), finished_at=None, archived_at=None)  # the row as `select *` reads it
    try:
        storage.make_job_dirs(job["day"], job["id"])
    except BaseException:  # no job without its folders; self_contained: undo the insert (and its event)
        db.conn.execute("delete from job_events where job_id = ?", [job["id"]])
        db.conn.execute("delete from jobs where id = ?", [job["id"]])
        raise
    return job


def _event(db: sqlite_utils.Database, job_id: int, status: str, actor: str, at: str | None = None) -> None:
    db.execute("insert into job_events (job_id, status, at, actor) values (?, ?, ?, ?)",
               [job_id, status, at or now_iso(), actor])


def get_job(db: sqlite_utils.Database, job_id: int) -> dict[str, Any] | None:
    if not 0 < job_id < 2**63:
        return None
    row = first(db, "select * from jobs where id = ?", [job_id])
    if row is not None:
        row["tags"] = json.loads(row["tags"])
    return row


# every committed change of a job's status moves it (after COMMIT); JobCache entries die with it
JOBS_CHANGED = Epoch()


class JobCache:
    """get_job() for the FTP thread without a database read per command. An entry holds until
    JOBS_CHANGED moves (a submit, finish or archive committed by this process: no other writes a job's
    status) and for `ttl` seconds at most (see EpochCache). The rows returned are shared: read them,
    never change them."""

    MAX_ENTRIES = 4096

    def __init__(self, ttl: float = 1.0) -> None:
        self._cache: EpochCache[int, dict[str, Any]] = EpochCache(JOBS_CHANGED, ttl, self.MAX_ENTRIES)

    def get(self, db: sqlite_utils.Database, job_id: int) -> dict[str, Any] | None:
        job = self._cache.get(job_id)
        if job is None:
            seen = self._cache.seen()
            job = get_job(db, job_id)
            if job is not None:
                self._cache.put(job_id, job, seen)
        return job


def can_see(job: dict[str, Any], who: Principal) -> bool:
    return who.is_processor or job["account_id"] == who.account_id


def require_job(db: sqlite_utils.Database, job_id: int, who: Principal) -> dict[str, Any]:
    """The job when this principal may see it; another account's job is exactly like a missing one."""
    job = get_job(db, job_id)
    if job is None or not can_see(job, who):
        raise NotFound(f"Job {job_id} was not found.", code="job_not_found")
    return job


def list_jobs(db: sqlite_utils.Database, who: Principal, page: int, page_size: int,
              status: str | None) -> tuple[list[dict[str, Any]], int]:
    where, params = [], []
    if not who.is_processor:
        where.append("account_id = ?")
        params.append(who.account_id)
    if status:
        where.append("status = ?")
        params.append(status)
    clause = (" where " + " and ".join(where)) if where else ""
    total = db.execute(f"select count(*) from jobs{clause}", params).fetchone()[0]  # noqa: S608
    rows = list(db.query(f"select * from jobs{clause} order by id desc limit ? offset ?",  # noqa: S608
                         [*params, page_size, (page - 1) * page_size]))
    for r in rows:
        r["tags"] = json.loads(r["tags"])
    return rows, total


def job_history(db: sqlite_utils.Database, job_id: int) -> list[dict[str, Any]]:
    return [{"status": r["status"], "at": r["at"], "actor": r["actor"]}
            for r in db.query("select * from job_events where job_id = ? order by id", [job_id])]


def file_counts(db: sqlite_utils.Database, job_id: int) -> dict[str, int]:
    counts = dict.fromkeys(KINDS, 0)
    for r in db.query("""select f.kind, count(*) as n from files f join jobs j on j.id = f.job_id
                         where f.job_id = ? and j.status != ? group by f.kind""", [job_id, ARCHIVED]):
        counts[r["kind"]] = r["n"]
    return counts


def submit_job(db: sqlite_utils.Database, job_id: int, who: Principal) -> dict[str, Any]:
    """The customer hands the job over: originals freeze from this moment."""
    job = require_job(db, job_id, who)
    if who.is_processor:
        raise Forbidden("Only the customer submits a job.")
    _transition(db, job, PREPROCESS, WORK_PROGRESS, who.login)
    if file_counts(db, job_id)["ORIGINAL"] == 0:
        raise Conflict("A job needs at least one original before it is submitted.", code="no_original_files")
    return require_job(db, job_id, who)


def finish_job(db: sqlite_utils.Database, job_id: int, who: Principal) -> dict[str, Any]:
    """A processor delivers: CLIPPED freezes, the callback (if any) is queued."""
    job = require_job(db, job_id, who)
    if not who.is_processor:
        raise Forbidden("Only a processor finishes a job.")
    _transition(db, job, WORK_PROGRESS, FINISHED, who.login)
    if file_counts(db, job_id)["CLIPPED"] == 0:
        raise Conflict("A job needs at least one clipped file before it is finished.", code="no_clipped_files")
    db.execute("update jobs set finished_at = ? where id = ?", [time.time(), job_id])
    if job["callback_url"]:
        db.table("callbacks").insert({"job_id": job_id, "url": job["callback_url"], "attempts": 0,
                                "next_at": time.time(), "state": "pending", "last_error": None})
    return require_job(db, job_id, who)


def _transition(db: sqlite_utils.Database, job: dict[str, Any], source: str, target: str, actor: str) -> None:
    if job["status"] == ARCHIVED:
        raise Gone()
    if job["status"] != source:
        raise Conflict(f"A job in {job['status']} cannot move to {target}.", code="invalid_status",
                       status=job["status"])
    db.execute("update jobs set status = ? where id = ?", [target, job["id"]])
    _event(db, job["id"], target, actor)
    after_commit(db, JOBS_CHANGED.bump)


def jobs_due_for_archive(db: sqlite_utils.Database, retention_days: float) -> list[dict[str, Any]]:
    cutoff = time.time() - retention_days * 86400
    return list(db.query("select * from jobs where status = ? and finished_at <= ?", [FINISHED, cutoff]))


def archive_job(db: sqlite_utils.Database, storage: Storage, job_id: int) -> bool:
    """Remove a finished job's files past retention. The job and its file records stay (so old links
    answer 410 Gone); listings, counts and zips of an archived job are empty."""
    job = get_job(db, job_id)
    if job is None or job["status"] != FINISHED:
        return False
    db.execute("update jobs set status = ?, archived_at = ? where id = ?", [ARCHIVED, now_iso(), job_id])
    db.execute("delete from partials where job_id = ?", [job_id])
    _event(db, job_id, ARCHIVED, "retention")
    storage.remove_job(job["day"], job_id)
    after_commit(db, LOGINS_CHANGED.bump)  # the job's FTP login ends with it
    after_commit(db, JOBS_CHANGED.bump)
    return True


# ----------------------------------------------------------------------------- finish callbacks

CALLBACK_MAX_ATTEMPTS = 8
CALLBACK_BACKOFF = 1.0  # seconds before the first retry; doubles each time, at most 5 minutes


def due_callbacks(db: sqlite_utils.Database, now: float) -> list[dict[str, Any]]:
    return list(db.query("select * from callbacks where state = 'pending' and next_at <= ? order by next_at",
                         [now]))


def callback_attempted(db: sqlite_utils.Database, callback_id: int, error: str | None) -> str:
    """Record one delivery attempt; returns the new state (delivered, pending or failed)."""
    row = next(iter(db.query("select * from callbacks where id = ?", [callback_id])))
    attempts = row["attempts"] + 1
    if error is None:
        state, next_at = "delivered", row["next_at"]
    elif attempts >= CALLBACK_MAX_ATTEMPTS:
        state, next_at = "failed", row["next_at"]
    else:
        state, next_at = "pending", time.time() + min(300.0, CALLBACK_BACKOFF * 2 ** (attempts - 1))
    db.execute("update callbacks set attempts = ?, state = ?, next_at = ?, last_error = ? where id = ?",
               [attempts, state, next_at, error, callback_id])
    return state


# ----------------------------------------------------------------------------- who may write where

def write_refusal(job: dict[str, Any], kind: str, who: Principal | None) -> Exception | None:
    """Why this principal may not write into this kind folder now (None: it may)."""
    status = job["status"]
    if status == ARCHIVED:
        return Gone("The job is archived: its files were removed.")
    processor = who is not None and who.is_processor
    if kind == "ORIGINAL":
        if processor:
            return Forbidden("Originals are read-only for processors.")
        if status != PREPROCESS:
            return Conflict(f"The job is {status}: originals are frozen once it is submitted.",
                            code="job_not_accepting_uploads", status=status)
        return None
    if not processor:
        return Forbidden("Clipped files are delivered by processors; they are read-only for customers.")
    if status not in (PREPROCESS, WORK_PROGRESS):
        return Conflict(f"The job is {status}: clipped files are frozen once it is finished.",
                        code="job_not_accepting_uploads", status=status)
    return None


def check_write(job: dict[str, Any], kind: str, who: Principal | None) -> None:
    err = write_refusal(job, kind, who)
    if err is not None:
        raise err


# ----------------------------------------------------------------------------- files

@dataclass(frozen=True)
class Upload:
    """A finished spool to move into place and record, in one writer call."""

    job_id: int
    kind: str
    relpath: str
    temp: Path
    digest: Digest
    protocol: str
    login: str
    who: Principal | None  # None: a per-job FTP login or an upload key, rights of the owning customer
    gone: threading.Event | None = None  # set when the client left before it could be answered


@dataclass(frozen=True)
class Committed:
    """A commit the FTP side may still take back: the client must see its 226 first."""

    record: dict[str, Any] | None  # None: the client had left, the bytes were kept as its partial
    backup: Path | None  # the file it replaced, kept under a hidden name until the client is told
    previous: dict[str, Any] | None  # the replaced file's record


def commit_upload(db: sqlite_utils.Database, storage: Storage, up: Upload) -> dict[str, Any]:
    """Check the job still takes the file, rename it into place and record it (the caller answers after)."""
    rec = _commit(db, storage, up, keep_replaced=False).record
    assert rec is not None
    return rec


def commit_upload_tentative(db: sqlite_utils.Database, storage: Storage, up: Upload) -> Committed:
    """commit_upload, keeping the replaced file aside so that withdraw_upload can put it back."""
    return _commit(db, storage, up, keep_replaced=True)


def _commit(db: sqlite_utils.Database, storage: Storage, up: Upload, keep_replaced: bool) -> Committed:
    job = get_job(db, up.job_id)
    if job is None:
        raise NotFound("The job is gone.", code="job_not_found")
    if up.gone is not None and up.gone.is_set():  # the client left while this waited for the writer
        kind_dir = storage.kind_dir(job["day"], up.job_id, up.kind)
        save_partial(db, up.job_id, up.kind, up.relpath, up.login, str(up.temp.relative_to(kind_dir)),
                     up.digest.size)
        return Committed(None, None, None)
    check_write(job, up.kind, up.who)
    target = storage.path(job["day"], up.job_id, up.kind, up.relpath)
    try:
        mode = os.stat(target).st_mode
    except FileNotFoundError:
        mode = None  # a new name: no record to keep aside
    if mode is not None and stat.S_ISDIR(mode):
        raise Conflict("A folder of that name exists.", code="name_conflict")
    previous = file_record(db, up.job_id, up.kind, up.relpath) if keep_replaced and mode is not None else None
    backup = None
    if previous is not None and mode is not None and stat.S_ISREG(mode):
        backup = storage.temp_path(target.parent)
        try:
            os.link(target, backup)  # a second name for the old bytes: free, and gone with one unlink
        except OSError:  # a filesystem without hard links: the commit cannot be taken back
            backup = previous = None
    os.replace(up.temp, target)
    st = os.stat(target)
    row = {"job_id": up.job_id, "kind": up.kind, "path": up.relpath, "size": up.digest.size,
           "md5": up.digest.md5, "crc32": up.digest.crc32, "mtime_ns": st.st_mtime_ns,
           "created_at": now_iso(), "protocol": up.protocol, "login": up.login, "uploaded_ns": time.time_ns()}
    rec = first(db,  # straight on the connection: no savepoint of its own inside the writer's transaction
        """insert into files (job_id, kind, path, size, md5, crc32, mtime_ns, created_at, protocol, login,
                              uploaded_ns)
           values (:job_id, :kind, :path, :size, :md5, :crc32, :mtime_ns, :created_at, :protocol, :login,
                   :uploaded_ns)
           on conflict (job_id, kind, path) do update set size = excluded.size, md5 = excluded.md5,
             crc32 = excluded.crc32, mtime_ns = excluded.mtime_ns, created_at = excluded.created_at,
             protocol = excluded.protocol, login = excluded.login, uploaded_ns = excluded.uploaded_ns
           returning *""", row)
    old = drop_partial(db, up.job_id, up.kind, up.relpath, up.login)
    if old is not None and storage.kind_dir(job["day"], up.job_id, up.kind) / old != up.temp:
        unlink_quiet(storage.kind_dir(job["day"], up.job_id, up.kind) / old)  # a fresh STOR replaced it
    return Committed(rec, backup, previous)


def withdraw_upload(db: sqlite_utils.Database, storage: Storage, up: Upload, done: Committed) -> None:
    """The client vanished without reading its 226 (a killed client's data stream ends like a finished
    one): the bytes become that login's partial upload again and the replaced file and record come back.
    Unless the name changed since (renamed, deleted or uploaded again): then that change stands."""
    job = get_job(db, up.job_id)
    if job is None or done.record is None:
        return
    now = file_record(db, up.job_id, up.kind, up.relpath)
    if now is None or now["id"] != done.record["id"] or now["uploaded_ns"] != done.record["uploaded_ns"]:
        if done.backup is not None:
            unlink_quiet(done.backup)
        return
    target = storage.path(job["day"], up.job_id, up.kind, up.relpath)
    temp = storage.temp_path(target.parent)
    os.replace(target, temp)
    if done.backup is not None and done.previous is not None:
        os.replace(done.backup, target)
        prev = {k: done.previous[k] for k in ("size", "md5", "crc32", "mtime_ns", "created_at", "protocol",
                                              "login", "uploaded_ns")}
        db.table("files").update(done.previous["id"], prev)
    else:
        db.execute("delete from files where id = ?", [done.record["id"]])
    kind_dir = storage.kind_dir(job["day"], up.job_id, up.kind)
    save_partial(db, up.job_id, up.kind, up.relpath, up.login, str(temp.relative_to(kind_dir)), up.digest.size)


def file_record(db: sqlite_utils.Database, job_id: int, kind: str, relpath: str) -> dict[str, Any] | None:
    return first(db, "select * from files where job_id = ? and kind = ? and path = ?", [job_id, kind, relpath])


def get_file(db: sqlite_utils.Database, file_id: int) -> dict[str, Any] | None:
    if not 0 < file_id < 2**63:
        return None
    return first(db, "select * from files where id = ?", [file_id])


def list_files(db: sqlite_utils.Database, job_id: int, kind: str | None = None) -> list[dict[str, Any]]:
    """The job's recorded files, the latest upload first (nothing once the job is archived)."""
    kinds = [kind] if kind else list(KINDS)
    return list(db.query(
        f"""select f.* from files f join jobs j on j.id = f.job_id
            where f.job_id = ? and j.status != ? and f.kind in ({", ".join("?" * len(kinds))})
            order by f.uploaded_ns desc, f.id desc""", [job_id, ARCHIVED, *kinds]))  # noqa: S608


def files_for_zip(db: sqlite_utils.Database, job_id: int, kind: str) -> list[dict[str, Any]]:
    return list(db.query("select * from files where job_id = ? and kind = ? order by path", [job_id, kind]))


def delete_file(db: sqlite_utils.Database, storage: Storage, job_id: int, kind: str, relpath: str) -> None:
    job = get_job(db, job_id)
    if job is None:
        raise NotFound()
    path = storage.path(job["day"], job_id, kind, relpath)
    finished_stat(path)
    os.unlink(path)
    db.execute("delete from files where job_id = ? and kind = ? and path = ?", [job_id, kind, relpath])


def rename_path(db: sqlite_utils.Database, storage: Storage, job_id: int, kind: str, src: str, dst: str) -> None:
    """Rename a file or folder below one kind folder and keep the records true."""
    job = get_job(db, job_id)
    if job is None:
        raise NotFound()
    s, d = storage.path(job["day"], job_id, kind, src), storage.path(job["day"], job_id, kind, dst)
    if d.exists() and (d.is_dir() or s.is_dir()):
        raise Conflict("The destination exists.", code="name_conflict")
    os.rename(s, d)
    db.execute("delete from files where job_id = ? and kind = ? and path = ?", [job_id, kind, dst])
    db.execute("update files set path = ? where job_id = ? and kind = ? and path = ?", [dst, job_id, kind, src])
    db.execute("""update files set path = ? || substr(path, ?) where job_id = ? and kind = ?
                  and substr(path, 1, ?) = ?""", [dst + "/", len(src) + 2, job_id, kind, len(src) + 1, src + "/"])


@self_contained
def record_mtime(db: sqlite_utils.Database, job_id: int, kind: str, relpath: str, mtime_ns: int) -> None:
    """MFMT changed a finished file's time: the record follows (the zip is built from recorded times)."""
    db.conn.execute("update files set mtime_ns = ? where job_id = ? and kind = ? and path = ?",
                    [mtime_ns, job_id, kind, relpath])


# ----------------------------------------------------------------------------- partial uploads (resume)

def find_partial(db: sqlite_utils.Database, job_id: int, kind: str, relpath: str,
                 login: str) -> dict[str, Any] | None:
    return first(db, "select * from partials where job_id = ? and kind = ? and path = ? and login = ?",
                 [job_id, kind, relpath, login])


# moves after every committed save_partial (the only way a partial comes to be): PartialFinder's
# knowledge that a login has none in a job dies with it
PARTIALS_SAVED = Epoch()


class PartialFinder:
    """find_partial() for the FTP thread, where nearly every STOR asks it and nearly every answer is
    none: that a login has no partial in a job is kept until PARTIALS_SAVED moves, for `ttl` seconds
    at most, so an mput asks the database about once a second instead of once per file. Only
    save_partial makes partials, and it moves the epoch after its commit; the ttl bounds a row inserted
    behind the gateway's back, which could then only be missed (a fresh upload), never wrongly used."""

    MAX_ENTRIES = 4096

    def __init__(self, ttl: float = 1.0) -> None:
        self._none: EpochCache[tuple[int, str], bool] = EpochCache(PARTIALS_SAVED, ttl, self.MAX_ENTRIES)

    def find(self, db: sqlite_utils.Database, job_id: int, kind: str, relpath: str,
             login: str) -> dict[str, Any] | None:
        key = (job_id, login)
        if self._none.get(key):
            return None
        seen = self._none.seen()
        if first(db, "select 1 as any_partial from partials where job_id = ? and login = ? limit 1",
                 [job_id, login]) is None:
            self._none.put(key, True, seen)
            return None
        return find_partial(db, job_id, kind, relpath, login)


def save_partial(db: sqlite_utils.Database, job_id: int, kind: str, relpath: str, login: str,
                 temp_name: str, size: int) -> str | None:
    """Keep an incomplete upload for its login; returns the temp name it replaced (to remove), if any."""
    old = find_partial(db, job_id, kind, relpath, login)
    db.execute("""insert into partials (job_id, kind, path, login, temp_name, size, updated_at)
                  values (?, ?, ?, ?, ?, ?, ?)
                  on conflict (job_id, kind, path, login) do update set temp_name = excluded.temp_name,
                    size = excluded.size, updated_at = excluded.updated_at""",
               [job_id, kind, relpath, login, temp_name, size, time.time()])
    after_commit(db, PARTIALS_SAVED.bump)
    return old["temp_name"] if old and old["temp_name"] != temp_name else None


def drop_partial(db: sqlite_utils.Database, job_id: int, kind: str, relpath: str, login: str) -> str | None:
    """Forget a login's partial upload of a name; returns its temp name (the caller removes the file)."""
    rows = db.execute("delete from partials where job_id = ? and kind = ? and path = ? and login = ? "
                     "returning temp_name", [job_id, kind, relpath, login]).fetchall()
    return str(rows[0][0]) if rows else None


def expire_partials(db: sqlite_utils.Database, storage: Storage, ttl: float) -> int:
    """Remove partial uploads older than ttl (file and record)."""
    n = 0
    for p in list(db.query("""select p.*, j.day from partials p join jobs j on j.id = p.job_id
                              where p.updated_at < ?""", [time.time() - ttl])):
        unlink_quiet(storage.kind_dir(p["day"], p["job_id"], p["kind"]) / p["temp_name"])
        db.execute("delete from partials where id = ?", [p["id"]])
        n += 1
    return n


# ----------------------------------------------------------------------------- reconciliation

def reconcile(db: sqlite_utils.Database, storage: Storage, partial_ttl: float) -> dict[str, int]:
    """Make disk and database agree after a crash; returns what changed (logged by the caller)."""
    changes = {"expired_partials": expire_partials(db, storage, partial_ttl), "temp_removed": 0,
               "files_recorded": 0, "records_removed": 0, "records_updated": 0, "partials_removed": 0}
    for job in list(db.query("select id, day from jobs where status != ?", [ARCHIVED])):
        for kind in KINDS:
            _reconcile_kind(db, storage, job["id"], job["day"], kind, changes)
    return {k: v for k, v in changes.items() if v}


def _reconcile_kind(db: sqlite_utils.Database, storage: Storage, job_id: int, day: str, kind: str,
                    changes: dict[str, int]) -> None:
    base = storage.kind_dir(day, job_id, kind)
    if not base.is_dir():
        base.mkdir(parents=True, exist_ok=True)
    partials = {p["temp_name"]: p for p in db.query(
        "select * from partials where job_id = ? and kind = ?", [job_id, kind])}
    for temp in storage.temp_files(day, job_id, kind):
        rel = str(temp.relative_to(base))
        if rel in partials:
            partials.pop(rel)
        else:
            unlink_quiet(temp)
            changes["temp_removed"] += 1
    for p in partials.values():  # a partial whose bytes are gone
        db.execute("delete from partials where id = ?", [p["id"]])
        changes["partials_removed"] += 1
    records = {r["path"]: r for r in db.query("select * from files where job_id = ? and kind = ?", [job_id, kind])}
    for rel, st in storage.scan(day, job_id, kind):
        rec = records.pop(rel, None)
        if rec is not None and rec["size"] == st.st_size and rec["mtime_ns"] == st.st_mtime_ns:
            continue
        digest = hash_file(base / rel)
        row = {"job_id": job_id, "kind": kind, "path": rel, "size": digest.size, "md5": digest.md5,
               "crc32": digest.crc32, "mtime_ns": st.st_mtime_ns, "created_at": now_iso(st.st_mtime),
               "protocol": "reconcile", "login": None, "uploaded_ns": st.st_mtime_ns}
        if rec is None:
            db.table("files").insert(row)
            changes["files_recorded"] += 1
        else:
            db.table("files").update(rec["id"], {k: row[k] for k in ("size", "md5", "crc32", "mtime_ns",
                                                                     "uploaded_ns")})
            changes["records_updated"] += 1
    for rec in records.values():
        db.execute("delete from files where id = ?", [rec["id"]])
        changes["records_removed"] += 1
