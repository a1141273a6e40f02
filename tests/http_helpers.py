"""Shared helpers of the HTTP upload/download/lifecycle tests: multipart bodies, real clients, disk and DB views.

Every client here is a real one talking to the gateway's real socket on 127.0.0.1: the aiohttp client
(absolute URLs from job bodies), curl as an asyncio subprocess (a blocking subprocess would stall the
server's own loop, which runs in the test's thread) and raw asyncio sockets for bodies no client sends.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import shutil
import time
import zipfile
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp
import pytest
from conftest import Gateway, Reply
from multidict import CIMultiDict, CIMultiDictProxy

TEMP_PREFIX = ".gwtmp-"
BOUNDARY = "gw-test-boundary-7MA4YWxkTrZu0gW"


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def blob(seed: str, size: int) -> bytes:
    """size deterministic, incompressible-looking bytes (different for every seed)."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}:{counter}".encode()).digest() * 64
        counter += 1
    return bytes(out[:size])


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} is not installed")
    return path


# ----------------------------------------------------------------------------- multipart bodies

@dataclass
class Part:
    """One multipart part; filename None makes a plain form field, `star` sends filename*=UTF-8''..."""

    filename: str | None
    data: bytes = b""
    name: str = "file"
    headers: Mapping[str, str] = field(default_factory=dict)
    star: bool = False


def part_head(p: Part, boundary: str = BOUNDARY) -> bytes:
    disp = f'form-data; name="{p.name}"'
    if p.filename is not None:
        disp += f"; filename*=UTF-8''{quote(p.filename, safe='')}" if p.star else f'; filename="{p.filename}"'
    lines = [f"--{boundary}", f"Content-Disposition: {disp}"]
    if p.filename is not None:
        lines.append("Content-Type: application/octet-stream")
    lines += [f"{k}: {v}" for k, v in p.headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")


def multipart(parts: Sequence[Part], boundary: str = BOUNDARY) -> tuple[bytes, str]:
    """(body, Content-Type) of a multipart/form-data body made byte by byte."""
    out = io.BytesIO()
    for p in parts:
        out.write(part_head(p, boundary))
        out.write(p.data)
        out.write(b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue(), f"multipart/form-data; boundary={boundary}"


def tail(boundary: str = BOUNDARY) -> bytes:
    return f"\r\n--{boundary}--\r\n".encode()


# ----------------------------------------------------------------------------- the aiohttp client, absolute URLs

async def fetch(method: str, url: str, *, data: Any = None, headers: Mapping[str, str] | None = None) -> Reply:
    """One request with a fresh aiohttp ClientSession (as a separate client program would)."""
    if isinstance(data, bytes) and len(data) > 1 << 20:
        data = io.BytesIO(data)  # aiohttp warns about large raw bytes bodies (warnings are errors here)
    async with aiohttp.ClientSession() as http, http.request(
            method, url, data=data, headers=dict(headers or {}), allow_redirects=False,
            auto_decompress=False) as resp:
        return Reply(resp.status, resp.headers, await resp.read())


async def post_files(url: str, files: Sequence[tuple[str, bytes]], headers: Mapping[str, str] | None = None,
                     ) -> Reply:
    """What a user of the aiohttp client writes: FormData with one `file` field per file."""
    form = aiohttp.FormData()
    for name, data in files:
        form.add_field("file", io.BytesIO(data), filename=name, content_type="application/octet-stream")
    return await fetch("POST", url, data=form, headers=headers)


async def post_multipart(url: str, parts: Sequence[Part], headers: Mapping[str, str] | None = None) -> Reply:
    body, ctype = multipart(parts)
    return await fetch("POST", url, data=body, headers={"Content-Type": ctype, **(headers or {})})


async def upload(gw: Gateway, job: Mapping[str, Any], files: Sequence[tuple[str, bytes]]) -> list[dict[str, Any]]:
    """Upload originals to the job's postUrl; returns the 201 body's files."""
    r = await post_files(job["upload"]["postUrl"], files)
    assert r.status == 201, r
    body = r.json()
    assert body["_type"] == "UploadFilesResponseBody"
    return list(body["files"])


async def clip(gw: Gateway, job_id: int, session: str, files: Sequence[tuple[str, bytes]]) -> Reply:
    """POST /jobs/{id}/clipped (multipart) with a session's headers."""
    body, ctype = multipart([Part(n, d) for n, d in files])
    return await gw.call("POST", f"/jobs/{job_id}/clipped", session=session, data=body, content_type=ctype)


async def deliver(gw: Gateway, job_id: int, session: str, files: Sequence[tuple[str, bytes]]) -> list[dict[str, Any]]:
    r = await clip(gw, job_id, session, files)
    assert r.status == 201, r
    return list(r.json()["files"])


async def job(gw: Gateway, job_id: int, session: str) -> dict[str, Any]:
    r = await gw.call("GET", f"/jobs/{job_id}", session=session)
    assert r.status == 200, r
    body: dict[str, Any] = r.json()
    return body


async def files_api(gw: Gateway, job_id: int, session: str, kind: str | None = None) -> list[dict[str, Any]]:
    r = await gw.call("GET", f"/jobs/{job_id}/files" + (f"?kind={kind}" if kind else ""), session=session)
    assert r.status == 200, r
    body = r.json()
    assert body["_type"] == "GetFilesResponseBody"
    return list(body["files"])


# ----------------------------------------------------------------------------- what is on disk and recorded

def disk(gw: Gateway, job: Mapping[str, Any], kind: str) -> dict[str, str]:
    """{relative path: md5} of the regular, non-temp files below a kind folder."""
    base = gw.job_dir(job, kind)
    out = {}
    for dirpath, _dirs, names in os.walk(base):
        for n in names:
            p = Path(dirpath) / n
            if n.startswith(TEMP_PREFIX) or p.is_symlink():
                continue
            out[str(p.relative_to(base))] = md5(p.read_bytes())
    return out


def temps(gw: Gateway, job: Mapping[str, Any] | None = None) -> list[Path]:
    """Hidden temp files left anywhere below the job (or the whole storage root)."""
    base = gw.job_dir(job, "ORIGINAL").parent if job is not None else gw.storage_root
    return sorted(Path(d) / n for d, _, names in os.walk(base) for n in names if n.startswith(TEMP_PREFIX))


def records(gw: Gateway, job_id: int, kind: str | None = None) -> dict[str, dict[str, Any]]:
    """{path: row} of the job's file records (of one kind)."""
    sql = "select * from files where job_id = ?" + (" and kind = ?" if kind else "")
    return {r["path"]: r for r in gw.query(sql, [job_id, *([kind] if kind else [])])}


async def wait_for(check: Callable[[], Any], timeout: float = 5.0, every: float = 0.02, what: str = "") -> Any:
    """Poll check() (sync or async) until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if isinstance(value, Awaitable):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or check}")
        await asyncio.sleep(every)


# ----------------------------------------------------------------------------- raw HTTP over asyncio sockets

def path_of(url: str) -> str:
    u = urlsplit(url)
    return u.path + (f"?{u.query}" if u.query else "")


class Raw:
    """One HTTP/1.1 connection written by hand (bodies no client library would send)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, gw: Gateway) -> Raw:
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.client.port)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def head(self, method: str, url: str, headers: Iterable[tuple[str, str]]) -> None:
        lines = [f"{method} {path_of(url)} HTTP/1.1", "Host: 127.0.0.1", *(f"{k}: {v}" for k, v in headers)]
        await self.send(("\r\n".join(lines) + "\r\n\r\n").encode())

    async def chunk(self, data: bytes) -> None:
        await self.send(f"{len(data):x}\r\n".encode() + data + b"\r\n")

    async def feed(self, data: bytes, until: Callable[[], Any], *, chunked: bool = False, piece: int = 32_768,
                   timeout: float = 5.0) -> int:
        """Send data piece by piece, a little apart, until until() holds; returns how many bytes were sent.

        aiohttp reads a part one read ahead of what it hands out, so the server acts on bytes only once
        more arrive: a test waiting for a server-side effect keeps feeding until it sees it.
        """
        sent = 0
        deadline = time.monotonic() + timeout
        while not until():
            if time.monotonic() > deadline:
                raise AssertionError(f"the server did not react after {sent} bytes")
            if sent < len(data):
                if chunked:
                    await self.chunk(data[sent:sent + piece])
                else:
                    await self.send(data[sent:sent + piece])
                sent = min(len(data), sent + piece)
            await asyncio.sleep(0.01)
        return sent

    async def end_chunks(self) -> None:
        await self.send(b"0\r\n\r\n")

    async def response(self, timeout: float = 10.0) -> Reply:
        """Status line, headers and a Content-Length body."""
        async def read() -> Reply:
            status_line = (await self.reader.readline()).decode("latin-1")
            assert status_line.startswith("HTTP/1.1 "), status_line
            status = int(status_line.split()[1])
            hdrs: CIMultiDict[str] = CIMultiDict()
            while (line := (await self.reader.readline()).decode("latin-1").rstrip("\r\n")):
                k, _, v = line.partition(":")
                hdrs.add(k.strip(), v.strip())
            body = await self.reader.readexactly(int(hdrs.get("Content-Length", "0")))
            return Reply(status, CIMultiDictProxy(hdrs), body)
        return await asyncio.wait_for(read(), timeout)

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except (ConnectionError, OSError):
            pass


# ----------------------------------------------------------------------------- subprocesses (curl, unzip, the CLI)

@dataclass
class Done:
    rc: int
    out: bytes
    err: bytes


async def run(*cmd: str, stdin: bytes | None = None, timeout: float = 30.0, cwd: Path | None = None) -> Done:
    """A subprocess run without blocking the event loop the gateway serves on."""
    proc = await asyncio.create_subprocess_exec(
        *cmd, stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=cwd)
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return Done(proc.returncode, out, err)


def zip_entries(data: bytes) -> dict[str, tuple[int, str, int]]:
    """{name: (size, md5, compress_type)} of a zip, after zipfile's own CRC check of every entry."""
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        assert z.testzip() is None
        return {i.filename: (i.file_size, md5(z.read(i)), i.compress_type) for i in z.infolist()}


def is_zip(data: bytes) -> bool:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            return z.testzip() is None
    except (zipfile.BadZipFile, OSError, EOFError, ValueError):
        return False
