"""Database-backed FTP logins: customers, processors and per-job users (the pyftpdlib authorizer protocol)."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Any

import sqlite_utils
from pyftpdlib.exceptions import AuthenticationFailed

from gateway import accounts, jobs
from gateway.accounts import Principal


@dataclass(frozen=True)
class FtpLogin:
    """Who an FTP session belongs to and which jobs it sees."""

    name: str
    role: str  # customer, processor or job
    account_id: str | None = None
    job_id: int | None = None
    user_id: int = 0

    @property
    def principal(self) -> Principal | None:
        """For write checks: None means the rights of the job's customer (a per-job login)."""
        if self.role == "job":
            return None
        return Principal(self.user_id, self.name, self.role, self.account_id, 0, "")

    def may_see(self, job: dict[str, Any]) -> bool:
        if self.role == "job":
            return bool(job["id"] == self.job_id)
        if self.role == "processor":
            return True
        return bool(job["account_id"] == self.account_id)

    def _scope(self) -> tuple[str, list[Any]]:
        if self.role == "job":
            return "id = ?", [self.job_id]
        if self.role == "processor":
            return "1 = 1", []
        return "account_id = ?", [self.account_id]

    def days(self, db: sqlite_utils.Database) -> list[str]:
        where, params = self._scope()
        rows = db.execute(f"select distinct day from jobs where {where} and status != ? order by day",  # noqa: S608
                          [*params, jobs.ARCHIVED]).fetchall()
        return [r[0] for r in rows]

    def has_day(self, db: sqlite_utils.Database, day: str) -> bool:
        where, params = self._scope()
        row = db.execute(f"select 1 from jobs where {where} and day = ? and status != ? limit 1",  # noqa: S608
                         [*params, day, jobs.ARCHIVED]).fetchone()
        return row is not None

    def job_ids(self, db: sqlite_utils.Database, day: str) -> list[int]:
        where, params = self._scope()
        rows = db.execute(f"select id from jobs where {where} and day = ? and status != ? order by id",  # noqa: S608
                          [*params, day, jobs.ARCHIVED]).fetchall()
        return [r[0] for r in rows]


def lookup(db: sqlite_utils.Database, username: str) -> tuple[FtpLogin | None, str | None]:
    """The login a username would be, and the password hash to check (None: unknown user)."""
    if username.startswith(jobs.JOB_USER_PREFIX) and username[len(jobs.JOB_USER_PREFIX):].isdigit():
        job = jobs.get_job(db, int(username[len(jobs.JOB_USER_PREFIX):]))
        if job is None or job["status"] == jobs.ARCHIVED:
            return None, None
        return FtpLogin(username, "job", job["account_id"], job["id"]), job["ftp_password_hash"]
    user = accounts.get_user(db, username)
    if user is None or user["disabled"]:
        return None, user["password_hash"] if user else None
    return FtpLogin(user["login"], user["role"], user["account_id"], None, user["id"]), user["password_hash"]


def check_job_password(password: str, stored: str | None) -> bool:
    """Per-job passwords are random 256-bit tokens: a fast hash, compared in constant time."""
    return stored is not None and hmac.compare_digest(accounts.token_hash(password), stored)


class DbAuthorizer:
    """pyftpdlib's authorizer protocol. Logins are checked by the handler off the loop (see handler.py);
    per-path permissions are enforced by the virtual filesystem, so has_perm only says 'ask the fs'."""

    read_perms = "elr"
    write_perms = "adfmwMT"

    def validate_authentication(self, username: str, password: str, handler: Any) -> None:
        raise AuthenticationFailed("Authentication failed.")  # never used: ftp_PASS is asynchronous

    def get_home_dir(self, username: str) -> str:
        return "/"

    def has_perm(self, username: str, perm: str, path: str | None = None) -> bool:
        return True

    def get_perms(self, username: str) -> str:
        return self.read_perms + self.write_perms

    def get_msg_login(self, username: str) -> str:
        return "Login successful."

    def get_msg_quit(self, username: str) -> str:
        return "Goodbye."

    def impersonate_user(self, username: str, password: str) -> None:
        pass

    def terminate_impersonation(self, username: str) -> None:
        pass
