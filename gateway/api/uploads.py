"""Uploads over HTTP: originals to a job's postUrl (the URL is the capability), clipped files by processors.

Each multipart part streams in 1 MiB chunks to a hidden spool (written on a worker thread while the
next chunk is read; md5 and crc32 follow on the spool's hasher), then the writer renames it into
place and records it before the next part starts. Parts are atomic one by one.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import concurrent.futures
import contextlib
import hmac
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import unquote

from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError

from gateway import jobs
from gateway.accounts import Principal
from gateway.api.downloads import file_body
from gateway.api.jobs import upload_key
from gateway.api.keys import CONFIG, DB, EXECUTOR, HASHERS, SECRET, STORAGE, WRITER
from gateway.api.middleware import body_type, cors_headers, endpoint, principal
from gateway.errors import (
    BadRequest,
    ChecksumMismatch,
    Forbidden,
    GatewayError,
    InvalidParameter,
    LengthRequired,
    MissingParameter,
    NotFound,
    RequestTimeout,
    UnsupportedMediaType,
)
from gateway.storage import Spool, check_name

CHUNK = 1 << 20
T = TypeVar("T")


@dataclass(frozen=True)
class Target:
    job: dict[str, Any]
    kind: str
    who: Principal | None  # None: the job's customer, through its upload key
    login: str


async def _parsed(aw: Awaitable[T]) -> T:
    """aiohttp's multipart reader raises ValueError/AssertionError on a malformed body: that is a 400."""
    try:
        return await aw
    except (ValueError, AssertionError, HttpProcessingError) as e:
        raise BadRequest(f"The multipart body could not be parsed: {e}", code="invalid_multipart") from None


async def _timed(aw: Awaitable[T], timeout: float) -> T:
    try:
        async with asyncio.timeout(timeout):  # a timer, not a task per chunk as wait_for makes
            return await aw
    except TimeoutError:
        raise RequestTimeout(f"No part of the body arrived for {timeout:.0f} s.") from None


def _md5_matches(header: str, hexdigest: str) -> bool:
    """Content-MD5 is base64 of the digest (RFC 1864); a hex digest is accepted too."""
    value = header.strip()
    if not value.isascii():
        return False
    if len(value) == 32:
        return hmac.compare_digest(value.lower(), hexdigest)
    try:
        return hmac.compare_digest(base64.b64decode(value, validate=True), bytes.fromhex(hexdigest))
    except (binascii.Error, ValueError):
        return False


def part_filename(part: BodyPartReader) -> str | None:
    """The part's file name as the user chose it (None: a plain form field).

    aiohttp reads '\\' in filename="..." as an escape, but browsers and curl send a backslash as
    itself (WHATWG form encoding), so a raw backslash is refused here before it can vanish. Names
    arrive percent-encoded from some clients (RFC 7578 4.2; '"' and line breaks as %22, %0D, %0A
    from browsers): they are decoded when that yields valid UTF-8.
    """
    name = part.filename
    if name is None:
        return None
    raw = part.headers.get("Content-Disposition", "")
    if "\\" in raw:
        raise InvalidParameter("fileName", "a name must not contain '/' or '\\'")
    if "%" in name:
        with contextlib.suppress(UnicodeDecodeError):
            name = unquote(name, errors="strict")
    return name


async def _store_part(request: web.Request, target: Target, part: BodyPartReader, name: str) -> dict[str, Any]:
    app = request.app
    config, storage, executor = app[CONFIG], app[STORAGE], app[EXECUTOR]
    check_name(name)
    expected = part.headers.get("Content-MD5")
    loop = asyncio.get_running_loop()
    kind_dir = storage.kind_dir(target.job["day"], target.job["id"], target.kind)
    spool = Spool(storage.temp_path(kind_dir), config.storage.max_file_size, app[HASHERS])
    pending: concurrent.futures.Future[int] | None = None
    # aiohttp hands out what the socket had (often 64 KiB): writes go out in 1 MiB, or at least every
    # half second for a slow client
    buf = bytearray()
    flushed = loop.time()
    try:
        while True:
            chunk = await _timed(part.read_chunk(CHUNK), config.http.body_timeout)
            if chunk:
                buf += chunk
                if len(buf) < CHUNK and loop.time() - flushed < 0.5:
                    continue
                flushed = loop.time()
            elif not part.at_eof():
                raise BadRequest("The body ended inside a part.", code="invalid_multipart")
            if pending is not None:
                await asyncio.wrap_future(pending)
                pending = None
            if buf:
                pending = executor.submit(spool.write, buf)  # written while the next chunk is read
                buf = bytearray()
            if not chunk:
                break
        if pending is not None:
            await asyncio.wrap_future(pending)
            pending = None
        digest = await loop.run_in_executor(executor, spool.digest)
        if expected is not None and not _md5_matches(expected, digest.md5):
            raise ChecksumMismatch(f"Content-MD5 of {name!r} does not match the bytes received.")
        spool.release()
        up = jobs.Upload(target.job["id"], target.kind, name, spool.path, digest, "http", target.login, target.who)
        return await app[WRITER].run(jobs.commit_upload, storage, up)
    except BaseException:
        if pending is not None:
            concurrent.futures.wait([pending])  # never close the file under a running write
        spool.discard()
        raise


async def receive_files(request: web.Request, target: Target) -> web.Response:
    """Store every file part; a failing part leaves the earlier ones stored and is named in the error."""
    app = request.app
    if body_type(request) != "multipart/form-data":
        raise UnsupportedMediaType("Uploads must be multipart/form-data.")
    chunked = request.headers.get("Transfer-Encoding", "").lower() == "chunked"
    if request.content_length is None and not chunked:
        raise LengthRequired()
    jobs.check_write(target.job, target.kind, target.who)
    storage = app[STORAGE]
    storage.refuse_links(storage.kind_dir(target.job["day"], target.job["id"], target.kind))
    storage.check_free()
    stored: list[dict[str, Any]] = []
    current: dict[str, Any] | None = None
    try:
        timeout = app[CONFIG].http.body_timeout
        reader = await _parsed(request.multipart())
        while True:
            part = await _parsed(_timed(reader.next(), timeout))
            if part is None:
                break
            if not isinstance(part, BodyPartReader):
                raise BadRequest("Nested multipart bodies are not supported.", code="invalid_multipart")
            current = {"name": part.name, "fileName": part.filename}
            name = part_filename(part)
            if not name:  # a plain form field, or an empty file input (filename="")
                await _parsed(_timed(part.release(), timeout))
                current = None
                continue
            stored.append(await _store_part(request, target, part, name))
            current = None
    except GatewayError as e:
        if current is not None:
            e.context["failedPart"] = current
        e.context["stored"] = [file_body(r) for r in stored]
        raise
    if not stored:
        raise MissingParameter("file", "The body holds no file part (a part with a filename).")
    return web.json_response({"files": [file_body(r) for r in stored], "_type": "UploadFilesResponseBody"},
                             status=201)


@endpoint(kind="storage", auth="none", cors=True)
async def upload_original(request: web.Request) -> web.Response:
    """postUrl: /upload/UploadFile.ashx?jobID=..&accountID=<upload key of that job>."""
    raw_id, key = request.query.get("jobID", ""), request.query.get("accountID", "")
    job = jobs.get_job(request.app[DB], int(raw_id)) if raw_id.isascii() and raw_id.isdigit() and len(
        raw_id) < 19 else None
    if job is None or not key or not hmac.compare_digest(key.encode(), upload_key(
            request.app[SECRET], job["id"]).encode()):
        raise NotFound("No job accepts uploads at this link.", code="upload_link_not_found")
    return await receive_files(request, Target(job, "ORIGINAL", None, "postUrl"))


@endpoint()
async def upload_clipped(request: web.Request) -> web.Response:
    """A processor delivers clipped files over HTTP (the FTP CLIPPED/ folder takes them too)."""
    who = principal(request)
    job = jobs.require_job(request.app[DB], int(request.match_info["id"]), who)
    if not who.is_processor:
        raise Forbidden("Clipped files are delivered by processors.")
    return await receive_files(request, Target(job, "CLIPPED", who, who.login))


@endpoint(kind="storage", auth="none", cors=True)
async def upload_preflight(request: web.Request) -> web.Response:
    headers = cors_headers(request)
    if headers is None:
        raise Forbidden("This origin may not upload here.")
    headers.update({"Access-Control-Allow-Methods": "POST, OPTIONS",
                    "Access-Control-Allow-Headers": "Content-Type, Content-MD5",
                    "Access-Control-Max-Age": "600"})
    return web.Response(status=204, headers=headers)
