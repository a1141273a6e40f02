"""Accounts, users, processors, API clients, sessions; password and token hashing; derived tokens."""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import os
import re
import secrets
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlite_utils

from gateway.db import Epoch, EpochCache, after_commit, first, now_iso
from gateway.errors import BadRequest, Conflict, NotFound, Unauthorized

SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
LOGIN_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}$")
JOB_LOGIN_RE = re.compile(r"^job-\d+$")  # reserved for the per-job FTP users
ROLES = ("customer", "processor")


# ----------------------------------------------------------------------------- secrets

class _RandomPool:
    """os.urandom read 4 KiB at a time and handed out in slices: the same kernel CSPRNG bytes, one
    system call per 128 tokens instead of one each. Each byte is handed out once."""

    def __init__(self, size: int = 4096) -> None:
        self._size = size
        self._buf = b""
        self._lock = threading.Lock()

    def take(self, n: int) -> bytes:
        with self._lock:
            if len(self._buf) < n:
                self._buf = os.urandom(max(self._size, n))
            out, self._buf = self._buf[:n], self._buf[n:]
        return out


_RANDOM = _RandomPool()


def new_token() -> str:
    """A random token of 256 bits, URL-safe."""
    return _b64(_RANDOM.take(32))


def token_hash(token: str) -> str:
    """Tokens are random, so a fast hash is enough to store them."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def hash_password(password: str) -> str:
    """scrypt with a random salt (tens of ms: never call it on an event loop)."""
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode("utf-8", "surrogatepass"), salt=salt,
                            n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=32)
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(digest)}"


@functools.cache
def _dummy_hash() -> str:
    """A real hash to check unknown logins against, so they cost the same time as known ones."""
    return hash_password(secrets.token_urlsafe(16))


def verify_password(password: str, stored: str | None) -> bool:
    """Constant-time check of a password against a stored scrypt hash (None: an unknown login)."""
    try:
        scheme, n, r, p, salt, digest = (stored or _dummy_hash()).split("$")
        if scheme != "scrypt":
            return False
        got = hashlib.scrypt(password.encode("utf-8", "surrogatepass"), salt=_unb64(salt),
                             n=int(n), r=int(r), p=int(p), dklen=len(_unb64(digest)))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, _unb64(digest)) and stored is not None


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def server_secret(path: Path) -> bytes:
    """The secret behind every derived token: a 0600 key file beside the database, made on first use
    (kept out of the database so that a copy of it cannot forge links)."""
    try:
        return bytes.fromhex(path.read_text().strip())
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process made it first
        return bytes.fromhex(path.read_text().strip())
    with os.fdopen(fd, "w") as fh:
        fh.write(secrets.token_hex(32))
        fh.flush()
        os.fsync(fh.fileno())
    return bytes.fromhex(path.read_text().strip())


@functools.lru_cache(maxsize=8)
def _keyed(secret: bytes) -> hmac.HMAC:
    return hmac.new(secret, digestmod="sha256")


def derive(secret: bytes, purpose: str, *parts: object, length: int = 43) -> str:
    """An HMAC-SHA256 token for one purpose (download, upload key, callback secret). The keyed state is
    copied, not rebuilt; small updates keep the GIL (hmac.digest drops and retakes it on every call,
    which costs the event loop a wait whenever another thread is busy)."""
    mac = _keyed(secret).copy()
    mac.update(":".join([purpose, *map(str, parts)]).encode())
    return _b64(mac.digest())[:length]


# ----------------------------------------------------------------------------- accounts

def create_account(db: sqlite_utils.Database, name: str) -> dict[str, Any]:
    name = name.strip()
    if not name or len(name) > 255:
        raise BadRequest("account name must be 1 to 255 characters")
    if db.execute("select 1 from accounts where name = ?", [name]).fetchone():
        raise Conflict(f"an account named {name!r} exists already", code="duplicate")
    row = {"id": str(uuid.uuid4()), "name": name, "callback_secret_version": 1, "created_at": now_iso()}
    db.table("accounts").insert(row)
    return row


def get_account(db: sqlite_utils.Database, name: str) -> dict[str, Any]:
    row = next(iter(db.query("select * from accounts where name = ? or id = ?", [name, name])), None)
    if row is None:
        raise NotFound(f"no account named {name!r}")
    return row


def callback_secret(secret: bytes, account: dict[str, Any]) -> str:
    """The account's key for signing job callbacks; rotating bumps its version."""
    return derive(secret, "callback", account["id"], account["callback_secret_version"])


def rotate_callback_secret(db: sqlite_utils.Database, name: str) -> dict[str, Any]:
    account = get_account(db, name)
    db.execute("update accounts set callback_secret_version = callback_secret_version + 1 where id = ?",
               [account["id"]])
    return get_account(db, account["id"])


# ----------------------------------------------------------------------------- users

def check_login_name(login: str) -> None:
    if not LOGIN_RE.match(login):
        raise BadRequest("login must be 1 to 64 letters, digits or ._@+- and start with a letter or digit")
    if JOB_LOGIN_RE.match(login):
        raise BadRequest("logins shaped job-<number> are reserved for per-job FTP users")


def check_password_strength(password: str) -> None:
    if len(password) < 8 or len(password) > 1024:
        raise BadRequest("password must be 8 to 1024 characters")


def create_user(db: sqlite_utils.Database, login: str, password_hash: str, role: str,
                account: str | None) -> dict[str, Any]:
    check_login_name(login)
    if role not in ROLES:
        raise BadRequest(f"role must be one of {ROLES}")
    account_id = None
    if role == "customer":
        if not account:
            raise BadRequest("a customer needs --account")
        account_id = get_account(db, account)["id"]
    if db.execute("select 1 from users where login = ?", [login]).fetchone():
        raise Conflict(f"a user with login {login!r} exists already", code="duplicate")
    row = {"login": login, "password_hash": password_hash, "role": role, "account_id": account_id,
           "disabled": 0, "created_at": now_iso()}
    row["id"] = db.table("users").insert(row).last_pk
    return public_user(row)


def public_user(row: dict[str, Any]) -> dict[str, Any]:
    return {"id": row["id"], "login": row["login"], "role": row["role"], "accountId": row["account_id"],
            "disabled": bool(row["disabled"])}


def get_user(db: sqlite_utils.Database, login: str) -> dict[str, Any] | None:
    return first(db, "select * from users where login = ?", [login])


def _require_user(db: sqlite_utils.Database, login: str) -> dict[str, Any]:
    user = get_user(db, login)
    if user is None:
        raise NotFound(f"no user with login {login!r}")
    return user


def set_password(db: sqlite_utils.Database, login: str, password_hash: str) -> dict[str, Any]:
    user = _require_user(db, login)
    db.execute("update users set password_hash = ? where id = ?", [password_hash, user["id"]])
    return public_user({**user, "password_hash": password_hash})


def set_disabled(db: sqlite_utils.Database, login: str, disabled: bool) -> dict[str, Any]:
    """Disable or enable a user; disabling ends every session of the user at once."""
    user = _require_user(db, login)
    db.execute("update users set disabled = ? where id = ?", [int(disabled), user["id"]])
    if disabled:
        db.execute("update sessions set ended_at = ? where user_id = ? and ended_at is null",
                   [now_iso(), user["id"]])
    after_commit(db, LOGINS_CHANGED.bump)
    return public_user({**user, "disabled": int(disabled)})


# ----------------------------------------------------------------------------- API clients

def create_client(db: sqlite_utils.Database, name: str) -> dict[str, Any]:
    name = name.strip()
    if not name or len(name) > 255:
        raise BadRequest("client name must be 1 to 255 characters")
    if db.execute("select 1 from clients where name = ?", [name]).fetchone():
        raise Conflict(f"a client named {name!r} exists already", code="duplicate")
    token = new_token()
    row = {"name": name, "token_hash": token_hash(token), "created_at": now_iso(), "revoked_at": None}
    pk = db.table("clients").insert(row).last_pk
    return {"id": pk, "name": name, "token": token}


def revoke_client(db: sqlite_utils.Database, name: str) -> dict[str, Any]:
    row = next(iter(db.query("select * from clients where name = ?", [name])), None)
    if row is None:
        raise NotFound(f"no client named {name!r}")
    at = row["revoked_at"] or now_iso()
    db.execute("update clients set revoked_at = ? where id = ?", [at, row["id"]])
    db.execute("update sessions set ended_at = ? where client_id = ? and ended_at is null", [at, row["id"]])
    after_commit(db, LOGINS_CHANGED.bump)
    return {"id": row["id"], "name": name, "revokedAt": at}


def find_client(db: sqlite_utils.Database, token: str) -> dict[str, Any] | None:
    """The live client holding this token, or None."""
    h = token_hash(token)
    row = first(db, "select * from clients where token_hash = ?", [h])
    if row is None or row["revoked_at"] or not hmac.compare_digest(row["token_hash"], h):
        return None
    return row


# ----------------------------------------------------------------------------- sessions

@dataclass(frozen=True)
class Principal:
    """Who is calling: the user behind a live session (or a download token)."""

    user_id: int
    login: str
    role: str
    account_id: str | None
    session_id: int
    session_key: str  # the stored hash of the session token; derived tokens bind to it

    @property
    def is_processor(self) -> bool:
        return self.role == "processor"


def create_session(db: sqlite_utils.Database, user_id: int, client_id: int,
                   lifetime: float) -> dict[str, Any]:
    token = new_token()
    expires = time.time() + lifetime
    db.execute("insert into sessions (token_hash, user_id, client_id, created_at, expires_at) values (?, ?, ?, ?, ?)",
               [token_hash(token), user_id, client_id, now_iso(), expires])
    return {"token": token, "expiresAt": now_iso(expires), "_type": "CreateSessionResponseBody"}


def end_session(db: sqlite_utils.Database, session_id: int) -> None:
    db.execute("update sessions set ended_at = ? where id = ? and ended_at is null", [now_iso(), session_id])
    after_commit(db, LOGINS_CHANGED.bump)


_SESSION_SQL = """
    select s.id as session_id, s.token_hash, s.client_id, s.expires_at, s.ended_at,
           u.id as user_id, u.login, u.role, u.account_id, u.disabled
    from sessions s join users u on u.id = s.user_id
"""


def _principal(row: dict[str, Any] | None, now: float) -> Principal:
    if row is None or row["ended_at"] or row["disabled"] or row["expires_at"] <= now:
        raise Unauthorized("The client or the session is unknown, revoked, expired or ended.")
    return Principal(row["user_id"], row["login"], row["role"], row["account_id"], row["session_id"],
                     row["token_hash"])


def authenticate(db: sqlite_utils.Database, client_token: str, session_token: str) -> Principal:
    """The principal of a live session opened by this very (live) client, else Unauthorized (the API
    goes through SessionCache)."""
    return _principal(_session_row(db, token_hash(client_token), token_hash(session_token)), time.time())


def _session_row(db: sqlite_utils.Database, ch: str, h: str) -> dict[str, Any] | None:
    """The session with token hash h and its user, if client hash ch is its (unrevoked) client's. One query."""
    row = first(db, """select s.id as session_id, s.token_hash, s.client_id, s.expires_at, s.ended_at,
                              u.id as user_id, u.login, u.role, u.account_id, u.disabled,
                              c.token_hash as client_hash, c.revoked_at
                       from sessions s join users u on u.id = s.user_id join clients c on c.id = s.client_id
                       where s.token_hash = ?""", [h])
    if row is not None and (row["revoked_at"] or not hmac.compare_digest(row["client_hash"], ch)
                            or not hmac.compare_digest(row["token_hash"], h)):
        return None
    return row


# bumped after every committed change that can end a login (a disabled user, a revoked client, an
# ended session, an archived job's FTP user); the admin CLI, another process, makes the running server
# bump it before the CLI returns (gateway.notify)
LOGINS_CHANGED = Epoch()


class SessionCache:
    """authenticate() without a database read for a session seen within the last `ttl` seconds.

    An entry is dropped when LOGINS_CHANGED moves (every change this process or the admin CLI makes)
    and is read again after `ttl` at the latest (see EpochCache). The session's own expiry is checked
    on every use. Keys are the tokens' SHA-256 hashes, never the tokens: what a dict lookup's timing
    could tell is about a hash, from which no token can be made (the row itself is compared with
    hmac.compare_digest when it is read)."""

    MAX_ENTRIES = 10_000

    def __init__(self, ttl: float = 1.0, max_entries: int = MAX_ENTRIES) -> None:
        self._cache: EpochCache[tuple[str, str], tuple[Principal, float]] = EpochCache(LOGINS_CHANGED, ttl,
                                                                                      max_entries)

    def __len__(self) -> int:
        return len(self._cache)

    def authenticate(self, db: sqlite_utils.Database, client_token: str, session_token: str) -> Principal:
        key = (token_hash(client_token), token_hash(session_token))
        hit = self._cache.get(key)
        now = time.time()
        if hit is not None and now < hit[1]:  # hit[1]: the session's expiry
            return hit[0]
        seen = self._cache.seen()
        row = _session_row(db, *key)
        who = _principal(row, now)
        assert row is not None
        self._cache.put(key, (who, float(row["expires_at"])), seen)
        return who


def download_token(secret: bytes, job_id: int, who: Principal) -> str:
    """A token for one job's downloads, derived from the session: it dies with it, never reveals it."""
    return f"{who.session_id}-{derive(secret, 'download', job_id, who.session_id, who.session_key)}"


def check_download_token(db: sqlite_utils.Database, secret: bytes, job_id: int, token: str) -> Principal:
    sid, _, mac = token.partition("-")
    if not sid.isdigit() or len(sid) > 18 or not mac:
        raise Unauthorized("The download link is not valid.")
    row = first(db, _SESSION_SQL + " where s.id = ?", [int(sid)])
    if row is not None:
        want = derive(secret, "download", job_id, row["session_id"], row["token_hash"])
        if not hmac.compare_digest(want.encode(), mac.encode()):
            row = None
    if row is None:
        raise Unauthorized("The download link is not valid.")
    return _principal(row, time.time())


def bootstrap_demo(db: sqlite_utils.Database) -> dict[str, str] | None:
    """On an empty database: a demo account, customer and API client with random secrets."""
    for table in ("accounts", "users", "clients"):
        if db.execute(f"select 1 from {table} limit 1").fetchone():  # noqa: S608 - fixed names
            return None
    account = create_account(db, "demo")
    password = secrets.token_urlsafe(12)
    create_user(db, "demo", hash_password(password), "customer", account["name"])
    client = create_client(db, "demo")
    return {"account": account["name"], "login": "demo", "password": password, "token": client["token"]}


# ----------------------------------------------------------------------------- login throttling

class LoginGuard:
    """Counts failed logins per IP; an IP with too many within the window is banned for a while.

    A success does not clear the address's failures (an attacker could log into an account of their
    own between guesses): failures age out with the window."""

    def __init__(self, failures: int, window: float, ban_time: float) -> None:
        self.failures, self.window, self.ban_time = failures, window, ban_time
        self._lock = threading.Lock()
        self._seen: dict[str, deque[float]] = {}
        self._banned: dict[str, float] = {}

    def banned(self, ip: str) -> bool:
        with self._lock:
            until = self._banned.get(ip)
            if until is None:
                return False
            if until > time.monotonic():
                return True
            del self._banned[ip]
            return False

    def failed(self, ip: str) -> bool:
        """Record a failure; True when it bans the IP."""
        now = time.monotonic()
        with self._lock:
            seen = self._seen.setdefault(ip, deque())
            seen.append(now)
            while seen and seen[0] < now - self.window:
                seen.popleft()
            if len(seen) >= self.failures:
                self._banned[ip] = now + self.ban_time
                del self._seen[ip]
                return True
            if len(self._seen) > 100_000:  # bound memory under a spray of addresses
                self._seen.clear()
            return False
