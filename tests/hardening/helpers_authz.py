"""Helpers of the hardening tests for traversal, authorization, secrets and brute force.

Plain functions and small classes (no fixtures): FTP with ftplib that returns reply lines instead of
raising, raw HTTP requests whose target is sent byte for byte (no client-side normalisation of `..`
or `%2f`), hand-made multipart bodies (the filename exactly as given), tree snapshots to prove
nothing changed outside a login's scope, and the small steps every scenario repeats.
"""

from __future__ import annotations

import asyncio
import ftplib
import hashlib
import io
import json
import os
import signal
import stat
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

from conftest import Gateway, Reply

from gateway import accounts

# ----------------------------------------------------------------------------- FTP


def reply_code(reply: str) -> int:
    """The three-digit code of an FTP reply line (0 when the line is not one)."""
    head = reply[:3]
    return int(head) if head.isdigit() else 0


class Ftp:
    """An ftplib session whose commands return the reply line, failures included (never raise 4xx/5xx)."""

    def __init__(self, port: int, user: str | None = None, password: str | None = None, *,
                 source: str | None = None, timeout: float = 10.0) -> None:
        self.f = ftplib.FTP(timeout=timeout)
        self.welcome = ""
        try:
            self.welcome = self.f.connect("127.0.0.1", port, timeout=timeout,
                                          source_address=(source, 0) if source else None)
            if user is not None:
                self.f.login(user, password or "")
                self.f.sendcmd("TYPE I")
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> Ftp:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.f.sock is not None:
            try:
                self.f.quit()
            except (OSError, EOFError, ftplib.Error):
                pass
        self.f.close()

    def login(self, user: str, password: str) -> str:
        """USER + PASS; the final reply line (230, 530 or 421)."""
        try:
            return self.f.login(user, password)
        except ftplib.Error as e:
            return str(e)

    def cmd(self, line: str) -> str:
        try:
            return self.f.sendcmd(line)
        except ftplib.Error as e:
            return str(e)

    def stor(self, path: str, data: bytes = b"traversal probe", *, cmd: str = "STOR",
             rest: int | None = None) -> str:
        try:
            return self.f.storbinary(f"{cmd} {path}", io.BytesIO(data), rest=rest)
        except ftplib.Error as e:
            return str(e)

    def retr(self, path: str) -> tuple[str, bytes]:
        buf = bytearray()
        try:
            reply = self.f.retrbinary(f"RETR {path}", buf.extend)
        except ftplib.Error as e:
            reply = str(e)
        return reply, bytes(buf)

    def lines(self, cmd: str, path: str | None = None) -> tuple[str, list[str]]:
        """LIST, NLST or MLSD: the final reply and the lines received."""
        out: list[str] = []
        try:
            reply = self.f.retrlines(f"{cmd} {path}" if path is not None else cmd, out.append)
        except ftplib.Error as e:
            reply = str(e)
        return reply, out

    def rename(self, src: str, dst: str) -> tuple[str, str]:
        first = self.cmd(f"RNFR {src}")
        if reply_code(first) != 350:
            return first, ""
        return first, self.cmd(f"RNTO {dst}")


def job_day(job: Mapping[str, Any]) -> str:
    return str(job["createdDate"])[:10].replace("-", "")


def job_vdir(job: Mapping[str, Any], kind: str | None = None) -> str:
    """The job's folder as FTP shows it: /<yyyymmdd>/<id>[/<KIND>]."""
    base = f"/{job_day(job)}/{job['id']}"
    return f"{base}/{kind}" if kind else base


# ----------------------------------------------------------------------------- raw HTTP


@dataclass
class RawReply:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.body)

    def __repr__(self) -> str:
        return f"<RawReply {self.status} {self.text[:300]!r}>"


async def raw_http(port: int, method: str, target: str, headers: Mapping[str, str] | None = None,
                   body: bytes = b"", *, timeout: float = 10.0) -> RawReply:
    """One HTTP/1.1 request with the request target sent exactly as given (no normalisation)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        h = {"Host": f"127.0.0.1:{port}", "Connection": "close", **(headers or {})}
        if body or method in ("POST", "PUT"):
            h["Content-Length"] = str(len(body))
        head = f"{method} {target} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in h.items()) + "\r\n"
        writer.write(head.encode("utf-8", "surrogateescape") + body)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except OSError:
            pass
    head_bytes, _, payload = data.partition(b"\r\n\r\n")
    lines = head_bytes.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers_out = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers_out[k.strip().lower()] = v.strip()
    if headers_out.get("transfer-encoding", "").lower() == "chunked":
        payload = _dechunk(payload)
    return RawReply(status, headers_out, payload)


def _dechunk(data: bytes) -> bytes:
    out = bytearray()
    while data:
        size_line, _, rest = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out += rest[:size]
        data = rest[size + 2:]
    return bytes(out)


def target_of(url: str) -> str:
    """The request target (path and query) of an absolute URL handed out by the gateway."""
    u = urlsplit(url)
    return u.path + (f"?{u.query}" if u.query else "")


def query_param(url: str, name: str) -> str:
    return parse_qs(urlsplit(url).query)[name][0]


# ----------------------------------------------------------------------------- multipart


def multipart(files: list[tuple[str, bytes]], *, extended: bool = True,
              boundary: str = "gwhardeningboundary7MA4YWxkTrZu0gW") -> tuple[bytes, str]:
    """A multipart/form-data body with one `file` part per (filename, bytes).

    extended: the name goes in `filename*=UTF-8''<percent-encoded>` (RFC 5987, exact bytes after
    decoding, NUL and quotes included); else in a plain quoted `filename="..."`.
    """
    out = bytearray()
    for name, data in files:
        if extended:
            disp = f"form-data; name=\"file\"; filename*=UTF-8''{quote(name, safe='')}"
        else:
            disp = f'form-data; name="file"; filename="{name}"'
        out += f"--{boundary}\r\nContent-Disposition: {disp}\r\nContent-Type: application/octet-stream\r\n\r\n".encode()
        out += data + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out), f"multipart/form-data; boundary={boundary}"


async def post_files(gw: Gateway, url_or_path: str, files: list[tuple[str, bytes]], *,
                     session: str | None = None, extended: bool = True) -> Reply:
    """POST a multipart body to the postUrl (no headers needed) or to /jobs/{id}/clipped (a session)."""
    body, ctype = multipart(files, extended=extended)
    target = target_of(url_or_path) if "://" in url_or_path else url_or_path
    if session is None:
        return await gw.call("POST", target, client=None, accept=None, data=body, content_type=ctype)
    return await gw.call("POST", target, session=session, data=body, content_type=ctype)


async def upload_original(gw: Gateway, job: Mapping[str, Any], name: str, data: bytes) -> dict[str, Any]:
    r = await post_files(gw, str(job["upload"]["postUrl"]), [(name, data)])
    assert r.status == 201, r
    return dict(r.json()["files"][0])


async def upload_clipped(gw: Gateway, processor_session: str, job: Mapping[str, Any], name: str,
                         data: bytes) -> dict[str, Any]:
    r = await post_files(gw, f"/jobs/{job['id']}/clipped", [(name, data)], session=processor_session)
    assert r.status == 201, r
    return dict(r.json()["files"][0])


# ----------------------------------------------------------------------------- sessions in every state


async def expire_session(gw: Gateway, token: str) -> None:
    """Move a live session's expiry into the past, through the process's writer."""
    h = accounts.token_hash(token)

    def expire(db: Any) -> None:
        db.execute("update sessions set expires_at = ? where token_hash = ?", [time.time() - 1, h])
    await gw.write(expire)


async def logout(gw: Gateway, token: str, *, client: str = "web") -> None:
    r = await gw.call("DELETE", "/sessions", session=token, client=client)
    assert r.status == 204, r


# ----------------------------------------------------------------------------- tree snapshots


def snapshot(root: Path, skip: tuple[str, ...] = ()) -> dict[str, tuple[Any, ...]]:
    """Every entry below root (links not followed; `skip`: relative paths left out): kind, size and
    sha256 of files, link targets."""
    found: dict[str, tuple[Any, ...]] = {}
    skipped = {os.path.normpath(s) for s in skip}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        rel_dir = os.path.relpath(dirpath, root)
        # never descend into a skipped folder (listing it would move its atime)
        dirnames[:] = [d for d in dirnames if os.path.normpath(os.path.join(rel_dir, d)) not in skipped]
        for name in [*dirnames, *(f for f in filenames if os.path.normpath(os.path.join(rel_dir, f)) not in skipped)]:
            rel = os.path.normpath(os.path.join(rel_dir, name))
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                found[rel] = ("link", os.readlink(p))
            elif stat.S_ISDIR(st.st_mode):
                found[rel] = ("dir",)
            elif stat.S_ISREG(st.st_mode):
                with open(p, "rb") as fh:
                    found[rel] = ("file", st.st_size, hashlib.sha256(fh.read()).hexdigest())
            else:
                found[rel] = ("other", stat.S_IFMT(st.st_mode))
    return found


def snapshot_diff(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[str]:
    out = [f"created: {k} {after[k]}" for k in sorted(set(after) - set(before))]
    out += [f"removed: {k}" for k in sorted(set(before) - set(after))]
    out += [f"changed: {k} {before[k]} -> {after[k]}" for k in sorted(set(before) & set(after))
            if before[k] != after[k]]
    return out


class Untouchable:
    """A folder outside storage_root holding a secret: proves nothing was written there, listed or read.

    `arm()` ages every entry (atime 100 s before mtime) and records it; on a relatime mount the
    next read of a file or listing of a folder then moves its atime (checked on a canary first;
    without it, atimes are not compared). `problems()` lstats the recorded entries before any
    listing of its own, so the check itself reads nothing. A folder's mtime moves when anything
    is created in it, even for a moment.
    """

    def __init__(self, folder: Path, secret: bytes) -> None:
        self.folder = folder
        self.secret = secret
        folder.mkdir(parents=True, exist_ok=True)
        self.secret_path = folder / "secret.txt"
        self.secret_path.write_bytes(secret)
        self.atime_works = self._canary()
        self.before: dict[str, tuple[Any, ...]] = {}

    @staticmethod
    def _age(path: str | Path) -> None:
        st = os.lstat(path)
        os.utime(path, ns=(st.st_mtime_ns - 100 * 10**9, st.st_mtime_ns), follow_symlinks=False)

    def _canary(self) -> bool:
        canary = self.folder.parent / f".{self.folder.name}-atime-canary"
        canary.write_bytes(b"canary")
        self._age(canary)
        before = os.stat(canary).st_atime_ns
        canary.read_bytes()
        works = os.stat(canary).st_atime_ns != before
        canary.unlink()
        return works

    def _paths(self) -> list[str]:
        found = [str(self.folder)]
        for dirpath, dirnames, filenames in os.walk(self.folder, followlinks=False):
            found += [os.path.join(dirpath, n) for n in [*dirnames, *filenames]]
        return found

    def _stat(self, p: str) -> tuple[Any, ...] | None:
        try:
            st = os.lstat(p)
        except FileNotFoundError:
            return None
        return (stat.S_IFMT(st.st_mode), st.st_size, st.st_mtime_ns, st.st_atime_ns if self.atime_works else None)

    def arm(self) -> None:
        """Call once the scenario's set-up is done (links planted): from now on nothing may change."""
        paths = self._paths()
        for p in paths:
            self._age(p)
        self.before = {p: self._stat(p) for p in paths}

    def problems(self) -> list[str]:
        """What happened since arm(): entries created, removed or written, files read, folders listed."""
        assert self.before, "arm() first"
        after = {p: self._stat(p) for p in self.before}  # lstat only: no reading, no listing
        out = []
        for p, b in self.before.items():
            a, rel = after[p], os.path.relpath(p, self.folder.parent)
            if a is None:
                out.append(f"removed outside: {rel}")
            elif b is not None and b[:3] != a[:3]:
                out.append(f"modified outside: {rel} (written, or an entry created in it)")
            elif b is not None and b[3] != a[3]:
                out.append(f"{'listed' if b[0] == stat.S_IFDIR else 'read'} outside: {rel} (its atime moved)")
        out += [f"created outside: {os.path.relpath(p, self.folder.parent)}"
                for p in sorted(set(self._paths()) - set(self.before))]
        return out


# ----------------------------------------------------------------------------- `gateway serve` as a process


def clean_env() -> dict[str, str]:
    """The environment without proxies: everything talks to 127.0.0.1."""
    return {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}


def admin(config: Path, *args: str, stdin: str | None = None) -> dict[str, Any]:
    """One `gateway --config ... <args>` admin command; its JSON output."""
    out = subprocess.run([sys.executable, "-m", "gateway", "--config", str(config), *args], input=stdin,
                         capture_output=True, text=True, env=clean_env(), timeout=60, check=False)
    assert out.returncode == 0, (args, out.stdout, out.stderr)
    return dict(json.loads(out.stdout))


class ServeProcess:
    """`python -m gateway --config <config> serve` with stdout and stderr captured in files."""

    def __init__(self, config: Path, folder: Path, http_port: int, name: str = "serve") -> None:
        self.http_port = http_port
        self.out_path, self.err_path = folder / f"{name}.stdout", folder / f"{name}.stderr"
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", "gateway", "--config", str(config), "serve"],
                                         stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=clean_env(),
                                         start_new_session=True)

    @property
    def logs(self) -> bytes:
        return self.out_path.read_bytes() + self.err_path.read_bytes()

    def wait_ready(self, timeout: float = 30.0) -> None:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"serve exited with {self.proc.returncode}: {self.logs[-2000:]!r}")
            try:
                with opener.open(f"http://127.0.0.1:{self.http_port}/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"serve did not answer /health within {timeout} s: {self.logs[-2000:]!r}")

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, then SIGKILL of the whole process group if it lingers; the exit code of SIGTERM."""
        if self.proc.poll() is not None:
            return self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
            return None

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
