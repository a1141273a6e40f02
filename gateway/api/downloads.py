"""Files of a job: the list, one file (DownloadBin.ashx) and the whole folder as one zip (DownloadZip.ashx).

The zip is stored (no compression) and fixed by the recorded names, sizes, times and crc32s, so its
length and any byte range are known before the first byte; entry bytes go out by sendfile between
small header writes. A file that changed since it was recorded aborts the connection.
"""

from __future__ import annotations

import asyncio
import logging
import os
import stat
from typing import Any
from urllib.parse import quote, urlencode

import sqlite_utils
from aiohttp import web

from gateway import accounts, jobs
from gateway.accounts import Principal
from gateway.api.keys import ADDRESSES, DB, SECRET, STORAGE, WRITER
from gateway.api.middleware import endpoint, principal
from gateway.errors import Conflict, Gone, InvalidParameter, NotFound, Unauthorized
from gateway.zips import FileSlice, StoredZip, ZipEntry

log = logging.getLogger("gateway.api")
KIND_PARAM = {"original": "ORIGINAL", "clipped": "CLIPPED"}


def file_body(rec: dict[str, Any], download_url: str | None = None) -> dict[str, Any]:
    body = {"id": rec["id"], "fileName": rec["path"].rsplit("/", 1)[-1], "path": rec["path"],
            "isOriginal": rec["kind"] == "ORIGINAL", "size": rec["size"], "mD5": rec["md5"],
            "crc32": f"{rec['crc32']:08x}", "createdDate": rec["created_at"]}
    if download_url is not None:
        body["downloadUrl"] = download_url
    return body


def _kind(request: web.Request, default: str | None) -> str | None:
    raw = request.query.get("kind")
    if raw is None or raw == "":
        return default
    if raw.lower() not in KIND_PARAM:
        raise InvalidParameter("kind", "expected original or clipped")
    return KIND_PARAM[raw.lower()]


@endpoint()
async def list_files(request: web.Request) -> web.Response:
    """GET /jobs/{id}/files[?kind=original|clipped], newest first, each with a download link."""
    who = principal(request)
    db = request.app[DB]
    job = jobs.require_job(db, int(request.match_info["id"]), who)
    kind = _kind(request, None)
    token = accounts.download_token(request.app[SECRET], job["id"], who)
    base = request.app[ADDRESSES].public_url + "/ajax/DownloadBin.ashx?"
    files = [file_body(r, base + urlencode({"fileID": r["id"], "sessionid": token}))
             for r in jobs.list_files(db, job["id"], kind)]
    return web.json_response({"files": files, "_type": "GetFilesResponseBody"})


def _job_for_token(request: web.Request, job_id: int | None, token: str) -> tuple[dict[str, Any], Principal]:
    """The job a download token opens: a foreign, expired or ended token never reveals whether it exists."""
    db = request.app[DB]
    job = jobs.get_job(db, job_id) if job_id is not None else None
    if job is None or not token:
        raise NotFound("Nothing to download at this link.", code="download_not_found")
    try:
        who = accounts.check_download_token(db, request.app[SECRET], job["id"], token)
    except Unauthorized:
        raise Unauthorized("The download link expired or is not valid; ask the API for a fresh one.") from None
    if not jobs.can_see(job, who):
        raise NotFound("Nothing to download at this link.", code="download_not_found")
    if job["status"] == jobs.ARCHIVED:
        raise Gone()
    return job, who


def _int_param(request: web.Request, name: str) -> int | None:
    raw = request.query.get(name, "")
    return int(raw) if raw.isascii() and raw.isdigit() and len(raw) < 19 else None


def _disposition(filename: str) -> str:
    ascii_name = "".join(c if c.isascii() and c.isprintable() and c not in '"\\' else "_" for c in filename)
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(filename, safe='')}"


@endpoint(kind="storage", auth="none")
async def download_file(request: web.Request) -> web.StreamResponse:
    """DownloadBin.ashx?fileID=..&sessionid=..: one recorded file, with ETag, Last-Modified and Range."""
    file_id = _int_param(request, "fileID")
    rec = jobs.get_file(request.app[DB], file_id) if file_id is not None else None
    job, _who = _job_for_token(request, rec["job_id"] if rec else None, request.query.get("sessionid", ""))
    assert rec is not None
    path = request.app[STORAGE].path(job["day"], job["id"], rec["kind"], rec["path"])
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise NotFound("The file is gone.", code="download_not_found") from None
    if not stat.S_ISREG(st.st_mode):
        raise NotFound("The file is gone.", code="download_not_found")
    if_range = request.headers.get("If-Range", "")
    # aiohttp only understands dates in If-Range: an entity tag that no longer matches means the file
    # changed since the first part was fetched, so the whole new file is sent, never a tail of it
    stale = if_range.startswith(('"', "W/")) and if_range != f'"{st.st_mtime_ns:x}-{st.st_size:x}"'
    return _FileDownload(path, stale, chunk_size=1 << 20, headers={
        "Content-Disposition": _disposition(path.name), "Content-Type": "application/octet-stream"})


class _FileDownload(web.FileResponse):
    """A FileResponse that can be told to ignore the request's Range (a stale If-Range)."""

    def __init__(self, path: Any, whole: bool, **kwargs: Any) -> None:
        super().__init__(path, **kwargs)
        self._whole = whole

    async def prepare(self, request: web.BaseRequest) -> Any:
        if self._whole:
            request = request.clone(headers={k: v for k, v in request.headers.items()
                                             if k.lower() not in ("range", "if-range")})
        return await super().prepare(request)


def _parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """One byte range [start, end) of a 'bytes=' header; None means the whole body (no header, several
    ranges, or a range that does not parse: RFC 9110 says to ignore it); 416 when nothing of it exists."""
    if not header:
        return None
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = (p.strip() for p in spec.strip().partition("-"))
    if not dash or not (first.isdigit() or first == "") or not (last.isdigit() or last == "") or first == last == "":
        return None
    if first == "":
        n = int(last)
        if n == 0:
            raise web.HTTPRequestRangeNotSatisfiable(headers={"Content-Range": f"bytes */{size}"})
        return max(0, size - n), size
    start = int(first)
    if last and int(last) < start:
        return None
    if start >= size:
        raise web.HTTPRequestRangeNotSatisfiable(headers={"Content-Range": f"bytes */{size}"})
    return start, min(size, int(last) + 1) if last else size


def _check_recorded(entries: list[tuple[ZipEntry, dict[str, Any]]]) -> None:
    for entry, rec in entries:
        try:
            st = os.lstat(entry.path)
        except OSError:
            st = None
        if st is None or not stat.S_ISREG(st.st_mode) or st.st_size != rec["size"] or st.st_mtime_ns != rec[
                "mtime_ns"]:
            log.warning("zip of job %s: %s changed since it was recorded", rec["job_id"], rec["path"])
            raise Conflict("A file of this job changed since it was recorded; try again in a moment.",
                           code="files_changed")


def _settled(db: sqlite_utils.Database) -> None:
    """Nothing: a writer round trip, after which every deferred write is on disk."""


@endpoint(kind="storage", auth="none")
async def download_zip(request: web.Request) -> web.StreamResponse:
    """DownloadZip.ashx?centraljobid=..&sessionID=..[&kind=original]: the job's files as one zip."""
    job, _who = _job_for_token(request, _int_param(request, "centraljobid"), request.query.get("sessionID", ""))
    kind = _kind(request, "CLIPPED") or "CLIPPED"
    storage = request.app[STORAGE]
    await request.app[WRITER].run(_settled)  # deferred records (an MFMT's time) are written first
    recs = jobs.files_for_zip(request.app[DB], job["id"], kind)
    if not recs:
        raise NotFound(f"This job has no {kind.lower()} files yet.", code=f"no_{kind.lower()}_files")
    pairs = [(ZipEntry(r["path"], storage.path(job["day"], job["id"], kind, r["path"]), r["size"],
                       r["mtime_ns"] / 1e9, r["crc32"]), r) for r in recs]
    _check_recorded(pairs)
    archive = StoredZip([e for e, _ in pairs])
    span = None
    if_range = request.headers.get("If-Range")
    if if_range is None or if_range == archive.etag:
        span = _parse_range(request.headers.get("Range"), archive.size)
    start, end = span or (0, archive.size)
    resp = web.StreamResponse(status=206 if span else 200, headers={
        "Content-Type": "application/zip", "Accept-Ranges": "bytes", "ETag": archive.etag,
        "Content-Disposition": f'attachment; filename="job-{job["id"]}-{kind.lower()}.zip"'})
    resp.last_modified = max(r["mtime_ns"] for r in recs) / 1e9
    resp.content_length = end - start
    if span:
        resp.headers["Content-Range"] = f"bytes {start}-{end - 1}/{archive.size}"
    await resp.prepare(request)
    if request.method == "HEAD":
        return resp
    sizes = {str(e.path): (rec["size"], rec["mtime_ns"]) for e, rec in pairs}
    try:
        await _send(request, resp, archive, start, end, sizes)
    except _Aborted as e:
        log.warning("zip of job %s aborted: %s", job["id"], e)
        if request.transport is not None:
            request.transport.abort()  # a truncated zip must never look complete
        return resp
    await resp.write_eof()
    return resp


class _Aborted(Exception):
    pass


async def _send(request: web.Request, resp: web.StreamResponse, archive: StoredZip, start: int, end: int,
                recorded: dict[str, tuple[int, int]]) -> None:
    loop = asyncio.get_running_loop()
    for seg in archive.segments(start, end):
        if isinstance(seg, bytes):
            await resp.write(seg)
            continue
        size, mtime_ns = recorded[str(seg.path)]
        await _send_slice(loop, request, resp, seg, size, mtime_ns)


async def _send_slice(loop: asyncio.AbstractEventLoop, request: web.Request, resp: web.StreamResponse,
                      seg: FileSlice, size: int, mtime_ns: int) -> None:
    try:
        fh = open(seg.path, "rb", opener=lambda p, f: os.open(p, f | os.O_NOFOLLOW))
    except OSError as e:
        raise _Aborted(f"{seg.path.name} vanished") from e
    with fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_size != size or st.st_mtime_ns != mtime_ns:
            raise _Aborted(f"{seg.path.name} changed since it was recorded")
        transport = request.transport
        if transport is None:
            raise ConnectionResetError("Connection lost")
        sent = await loop.sendfile(transport, fh, seg.offset, seg.length)
        if sent != seg.length:
            raise _Aborted(f"{seg.path.name} shrank while it was sent")
