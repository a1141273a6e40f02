"""Shared helpers of the FTP suite: real ftplib sessions, a job's FTP paths, transfers, records, tools.

Every helper talks to a real server as a client would (ftplib, curl, lftp, urllib) and every check
reads what a user would see: reply lines, listings, bytes, the database and the files on disk.
FTP clients block the test's event loop; that is fine, the FTP thread and the writer never need it.
"""

from __future__ import annotations

import asyncio
import ftplib
import hashlib
import io
import json
import os
import random
import shutil
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import pytest
from conftest import wait_for_health

HOST = "127.0.0.1"
TIMEOUT = 15.0
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))
FtpError = (ftplib.error_perm, ftplib.error_temp, ftplib.error_reply)
LINGER_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends a reset


# ----------------------------------------------------------------------------- sessions

def ftp_connect(port: int, login: str | None = None, password: str | None = None, *,
                source: str | None = None, timeout: float = TIMEOUT, ftp: ftplib.FTP | None = None) -> ftplib.FTP:
    """A connected (and, with a login, logged-in) session in binary mode; closed again if that fails."""
    f = ftp or ftplib.FTP(timeout=timeout, source_address=(source, 0) if source else None)
    try:
        f.connect(HOST, port, timeout=timeout)
        if login is not None:
            f.login(login, password or "")
            f.voidcmd("TYPE I")
    except BaseException:
        f.close()
        raise
    return f


def close_quietly(f: ftplib.FTP) -> None:
    """QUIT when the server still answers, then close the socket (ResourceWarnings are errors here)."""
    try:
        if f.sock is not None:
            f.quit()
    except (OSError, EOFError, *FtpError):
        pass
    finally:
        f.close()


@contextmanager
def ftp_session(port: int, login: str | None = None, password: str | None = None, **kw: Any) -> Iterator[ftplib.FTP]:
    f = ftp_connect(port, login, password, **kw)
    try:
        yield f
    finally:
        close_quietly(f)


@contextmanager
def ftp_as(gw: Any, login: str, password: str | None = None, **kw: Any) -> Iterator[ftplib.FTP]:
    """A session of a world user (its password by default) or of any login/password pair."""
    pw = gw.world.passwords[login] if password is None else password
    with ftp_session(gw.ftp_port, login, pw, **kw) as f:
        yield f


def job_login(job: Mapping[str, Any]) -> tuple[str, str]:
    """The per-job FTP user handed out once in the create-job response."""
    return str(job["upload"]["ftpUsername"]), str(job["upload"]["ftpPassword"])


# ----------------------------------------------------------------------------- a job's paths

@dataclass(frozen=True)
class JobPaths:
    """The FTP paths of a job, read from the URLs the create-job response hands out."""

    day: str
    job_id: int

    @classmethod
    def of(cls, job: Mapping[str, Any]) -> JobPaths:
        up = urlsplit(str(job["upload"]["ftpUrl"]))
        down = urlsplit(str(job["download"]["ftpUrl"]))
        _, day, job_id, kind, _ = up.path.split("/")
        assert kind == "ORIGINAL" and down.path == f"/{day}/{job_id}/CLIPPED/", job
        assert int(job_id) == job["id"] and day == str(job["createdDate"])[:10].replace("-", ""), job
        return cls(day, int(job_id))

    @property
    def day_dir(self) -> str:
        return f"/{self.day}"

    @property
    def root(self) -> str:
        return f"/{self.day}/{self.job_id}"

    @property
    def original(self) -> str:
        return f"{self.root}/ORIGINAL"

    @property
    def clipped(self) -> str:
        return f"{self.root}/CLIPPED"

    def kind(self, kind: str) -> str:
        return f"{self.root}/{kind}"



async def new_job(gw: Any, login: str = "alice") -> tuple[str, dict[str, Any], JobPaths]:
    """A job created by `login` through POST /jobs: (session, job body, its FTP paths)."""
    session = await gw.session(login)
    job = await gw.create_job(session)
    return session, job, JobPaths.of(job)

# ----------------------------------------------------------------------------- commands and replies

def reply(f: ftplib.FTP, cmd: str) -> str:
    """The reply line(s) to one command, success or not."""
    try:
        return f.sendcmd(cmd)
    except FtpError as e:
        return str(e)


def refused(fn: Callable[..., Any], *args: Any, **kw: Any) -> str:
    """Call an ftplib method that must fail; its error reply."""
    try:
        result = fn(*args, **kw)
    except FtpError as e:
        return str(e)
    raise AssertionError(f"expected a refusal, got {result!r}")


def stor(f: ftplib.FTP, path: str, data: bytes, *, cmd: str = "STOR", rest: int | None = None,
         blocksize: int = 1 << 16) -> str:
    return f.storbinary(f"{cmd} {path}", io.BytesIO(data), blocksize=blocksize, rest=rest)


def send_file(f: ftplib.FTP, cmd: str, data: bytes, blocksize: int = 1 << 16) -> str:
    """An upload that may be cut off by the server (552): the final reply, even when the server closed the
    data connection while we were still sending (which ftplib's storbinary reports as a socket error)."""
    try:
        conn = f.transfercmd(cmd)
    except FtpError as e:
        return str(e)
    try:
        with conn:
            view = memoryview(data)
            while view:
                conn.sendall(view[:blocksize])
                view = view[blocksize:]
    except OSError:
        pass  # the server stopped reading: its reply says why
    try:
        return f.voidresp()
    except FtpError as e:
        return str(e)


def drop_session(f: ftplib.FTP) -> None:
    """The client vanishes: the control connection is reset, not closed with QUIT."""
    if f.sock is not None:
        with suppress(OSError):
            f.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
    f.close()


def retr(f: ftplib.FTP, path: str) -> bytes:
    out = io.BytesIO()
    f.retrbinary(f"RETR {path}", out.write)
    return out.getvalue()


def names(f: ftplib.FTP, path: str) -> list[str]:
    """NLST of a folder, as base names, sorted."""
    listing = f.nlst(path)
    f.voidcmd("TYPE I")  # ftplib switched to ASCII for the listing
    return sorted(n.rsplit("/", 1)[-1] for n in listing)


def list_lines(f: ftplib.FTP, path: str) -> list[str]:
    lines: list[str] = []
    f.retrlines(f"LIST {path}", lines.append)
    f.voidcmd("TYPE I")
    return lines


def mlsd(f: ftplib.FTP, path: str) -> dict[str, dict[str, str]]:
    listing = dict(f.mlsd(path))
    f.voidcmd("TYPE I")
    return listing


def mlst(f: ftplib.FTP, path: str) -> dict[str, str]:
    """The facts of one MLST reply."""
    text = f.sendcmd(f"MLST {path}")
    line = text.splitlines()[1].strip()
    facts, _, _name = line.partition(" ")
    return dict(fact.split("=", 1) for fact in facts.rstrip(";").split(";"))


def abort_transfer(f: ftplib.FTP) -> list[str]:
    """ABOR on the control connection (in band, like most clients): the reply lines that follow it."""
    f.putcmd("ABOR")
    first = f.getmultiline()
    lines = [first]
    if first.startswith("426"):
        lines.append(f.getmultiline())
    return lines


def drop(sock: socket.socket | None) -> None:
    """Close a socket with a reset (SO_LINGER 0), like a client that vanished."""
    if sock is None:
        return
    with suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
    sock.close()


# ----------------------------------------------------------------------------- bytes

def md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def payload(size: int, seed: int | str) -> bytes:
    """Deterministic incompressible bytes."""
    return random.Random(f"ftp-suite-{seed}").randbytes(size)


# ----------------------------------------------------------------------------- what is recorded and on disk

def records(gw: Any, job_id: int, kind: str | None = None) -> dict[str, dict[str, Any]]:
    """The files table of a job (optionally one kind), by relative path."""
    sql = "select * from files where job_id = ?" + (" and kind = ?" if kind else "")
    rows = gw.query(sql, [job_id, kind] if kind else [job_id])
    return {r["path"] if kind else f"{r['kind']}/{r['path']}": r for r in rows}


def partials(gw: Any, job_id: int | None = None) -> list[dict[str, Any]]:
    if job_id is None:
        return gw.query("select * from partials")
    return gw.query("select * from partials where job_id = ?", [job_id])


def tree(folder: Path) -> dict[str, bytes | None]:
    """Every entry below folder (hidden ones too): relative path -> bytes (None for folders and links).
    Entries the server removes while we look (temp files) are left out."""
    out: dict[str, bytes | None] = {}
    if not folder.exists():
        return out
    for dirpath, dirnames, filenames in os.walk(folder):
        for n in dirnames + filenames:
            p = Path(dirpath) / n
            rel = str(p.relative_to(folder))
            try:
                out[rel] = p.read_bytes() if p.is_file() and not p.is_symlink() else None
            except FileNotFoundError:
                continue
    return out


def temp_names(folder: Path) -> list[str]:
    """Our hidden temp files below folder."""
    if not folder.exists():
        return []
    return sorted(str((Path(d) / n).relative_to(folder)) for d, _, files in os.walk(folder) for n in files
                  if n.startswith(".gwtmp-"))


def temp_sizes(folder: Path) -> list[int]:
    """The sizes of our hidden temp files below folder (how much of a running upload is on disk)."""
    sizes = []
    for rel in temp_names(folder):
        try:
            sizes.append((folder / rel).stat().st_size)
        except FileNotFoundError:
            continue
    return sizes


def assert_records_true(gw: Any, job: Mapping[str, Any]) -> None:
    """The database and the disk agree: every record's file exists with its size and md5, and every
    visible finished file on disk is recorded."""
    for kind in ("ORIGINAL", "CLIPPED"):
        base = gw.job_dir(job, kind)
        recs = records(gw, int(job["id"]), kind)
        on_disk = {rel: data for rel, data in tree(base).items()
                   if data is not None and not rel.rsplit("/", 1)[-1].startswith(".gwtmp-")}
        assert sorted(recs) == sorted(on_disk), (kind, sorted(recs), sorted(on_disk))
        for rel, rec in recs.items():
            data = on_disk[rel]
            assert data is not None
            assert (rec["size"], rec["md5"]) == (len(data), md5(data)), (kind, rel, rec)


async def api_files(gw: Any, session: str, job_id: int, kind: str | None = None) -> dict[str, dict[str, Any]]:
    """GET /jobs/{id}/files as the user sees it, by path (ORIGINAL/.. and CLIPPED/.. without a kind)."""
    query = f"?kind={kind.lower()}" if kind else ""
    r = await gw.call("GET", f"/jobs/{job_id}/files{query}", session=session)
    assert r.status == 200, r
    out = {}
    for f in r.json()["files"]:
        key = f["path"] if kind else f"{'ORIGINAL' if f['isOriginal'] else 'CLIPPED'}/{f['path']}"
        out[key] = f
    return out


def wait_until(pred: Callable[[], Any], timeout: float = 5.0, interval: float = 0.02, what: str = "") -> Any:
    """Poll pred (in this thread) until it is truthy; its value. Fails the test after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what or pred}")
        time.sleep(interval)


async def async_wait_until(pred: Callable[[], Any], timeout: float = 5.0, interval: float = 0.05,
                           what: str = "") -> Any:
    """Like wait_until, but lets the event loop (the HTTP app, its sweeper) run in between."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what or pred}")
        await asyncio.sleep(interval)


async def seed_file(gw: Any, job: Mapping[str, Any], kind: str, rel: str, data: bytes, login: str) -> None:
    """A recorded file put in place through the domain (jobs.commit_upload on the writer), as an upload by
    `login` would leave it: a precondition for tests of other commands, cheaper than an FTP login."""
    from gateway import accounts, jobs
    from gateway.api.keys import STORAGE
    from gateway.storage import hash_file

    user = gw.read(accounts.get_user, login)
    who = accounts.Principal(user["id"], login, user["role"], user["account_id"], 0, "")
    target = gw.job_dir(job, kind) / rel
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = gw.app[STORAGE].temp_path(target.parent)
    temp.write_bytes(data)
    up = jobs.Upload(int(job["id"]), kind, rel, temp, hash_file(temp), "ftp", login, who)
    await gw.write(jobs.commit_upload, gw.app[STORAGE], up)


async def writer_barrier(gw: Any) -> None:
    """Wait until the writer has applied everything submitted before now (it runs calls in order): changes
    a server answers before they are applied (MFMT) are then on disk and in the records."""
    await gw.write(lambda _db: None)


def partial_of(gw: Any, job_id: int, path: str, login: str) -> dict[str, Any] | None:
    rows = gw.query("select * from partials where job_id = ? and path = ? and login = ?", [job_id, path, login])
    return rows[0] if rows else None


# ----------------------------------------------------------------------------- ports

def free_port_range(n: int) -> tuple[int, int]:
    """n consecutive ports nobody listens on right now, outside the kernel's usual ephemeral range."""
    rng = random.Random()
    for _ in range(200):
        lo = rng.randrange(20000, 32000)
        socks = []
        try:
            for port in range(lo, lo + n):
                s = socket.socket()
                socks.append(s)
                s.bind((HOST, port))
            return lo, lo + n - 1
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free port range")


# ----------------------------------------------------------------------------- external clients

def clean_env() -> dict[str, str]:
    """The environment without proxies: everything here talks to 127.0.0.1."""
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env["LC_ALL"] = "C.UTF-8"
    return env


def require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (`make tools` installs lftp, curl and unzip)")
    return path


def run_tool(argv: list[str], timeout: float = 30, cwd: Path | None = None,
             env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    require_tool(argv[0])
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False, cwd=cwd,
                          env={**clean_env(), **(env or {})}, stdin=subprocess.DEVNULL)


def ftp_url(port: int, path: str, login: str | None = None, password: str | None = None) -> str:
    """ftp://[USER:PASS@]127.0.0.1:PORT/path (path segments percent-encoded for curl)."""
    auth = f"{quote(login, safe='')}:{quote(password or '', safe='')}@" if login else ""
    return f"ftp://{auth}{HOST}:{port}{quote(path)}"


def with_credentials(url: str, login: str, password: str) -> str:
    """A handed-out ftpUrl with a login and password put in (curl -T file URL)."""
    u = urlsplit(url)
    return f"{u.scheme}://{quote(login, safe='')}:{quote(password, safe='')}@{u.netloc}{u.path}"


def curl(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return run_tool(["curl", "-sS", "--connect-timeout", "10", "--max-time", str(int(timeout)), *args],
                    timeout=timeout + 5)


def lftp(port: int, login: str, password: str, script: str, *, timeout: float = 40, tls: bool = False,
         cwd: Path | None = None, home: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run an lftp script against the server (no retries, failures end the script with an error)."""
    settings = [
        "set cmd:fail-exit yes", "set net:max-retries 1", "set net:timeout 10", "set net:reconnect-interval-base 1",
        "set ftp:passive-mode on", "set ftp:prefer-epsv no", "set xfer:clobber on", "set cmd:interactive no",
    ]
    if tls:
        settings += ["set ftp:ssl-force true", "set ftp:ssl-protect-data true", "set ftp:ssl-protect-list true",
                     "set ssl:verify-certificate no"]
    else:
        settings += ["set ftp:ssl-allow no"]
    full = "; ".join([*settings, f"open -u {login},{password} -p {port} {HOST}", script, "quit"])
    env = {"LFTP_HOME": str(home)} if home else None
    return run_tool(["lftp", "-c", full], timeout=timeout, cwd=cwd, env=env)


# ----------------------------------------------------------------------------- a `gateway serve` process

class Served:
    """One `python -m gateway serve` process with stdout and stderr in files (own process group)."""

    def __init__(self, config: Path, folder: Path, name: str) -> None:
        self.out_path, self.err_path = folder / f"{name}.out", folder / f"{name}.err"
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", "gateway", "--config", str(config), "serve"],
                                         stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=clean_env(),
                                         start_new_session=True, cwd=folder)

    @property
    def output(self) -> str:
        return self.out_path.read_text(errors="replace") + self.err_path.read_text(errors="replace")

    def wait_ready(self, http_port: int, timeout: float = 30) -> None:
        wait_for_health(self.proc, http_port, lambda: self.output, timeout)

    def sigkill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def sigterm(self) -> None:
        self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"serve still running {timeout} s after SIGTERM: {self.output[-3000:]}")


@contextmanager
def serving(config: Path, folder: Path, name: str, http_port: int) -> Iterator[Served]:
    s = Served(config, folder, name)
    try:
        s.wait_ready(http_port)
        yield s
    finally:
        s.sigkill()


def http_json(method: str, url: str, body: Any = None, headers: Mapping[str, str] | None = None) -> tuple[int, Any]:
    """One JSON API call with urllib (for the serve subprocess)."""
    data = json.dumps(body).encode() if body is not None else None
    h = {"Accept": "application/json", **({"Content-Type": "application/json"} if data else {}), **(headers or {})}
    req = urllib.request.Request(url, data=data, method=method, headers=h)
    try:
        with NO_PROXY.open(req, timeout=10) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        with e:
            return e.code, json.loads(e.read() or b"null")


def sqlite_rows(db_path: Path, sql: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(db_path)
    try:
        return list(conn.execute(sql, params or []))
    finally:
        conn.close()

