"""Bare aiohttp: the references for the HTTP figures, without any of the gateway's stack.

  POST /json      parse a JSON body, answer JSON
  POST /jobs      parse a JSON body, one SQLite insert (WAL, synchronous=NORMAL), two mkdirs, answer JSON 201
  POST /upload    stream the first multipart part to disk with read_chunk(1 MiB), answer JSON
  GET  /files/{n} FileResponse (sendfile) of ROOT/files/n

usage: python -m bench.refs.bare_http PORT ROOT
"""

from __future__ import annotations

import os
import secrets
import sqlite3
import sys
import time
from pathlib import Path

from aiohttp import BodyPartReader, web

CHUNK = 1 << 20
DB = web.AppKey("db", sqlite3.Connection)
ROOT = web.AppKey("root", Path)


async def json_handler(request: web.Request) -> web.Response:
    body = await request.json()
    return web.json_response({"ok": True, "name": body.get("name"), "_type": "Bare"})


async def create_job(request: web.Request) -> web.Response:
    body = await request.json()
    db, root = request.app[DB], request.app[ROOT]
    day = time.strftime("%Y%m%d", time.gmtime())
    cur = db.execute("insert into jobs (name, description, day, created_at) values (?, ?, ?, ?)",
                     (body.get("name"), body.get("description"), day, time.time()))
    job_id = cur.lastrowid
    for kind in ("ORIGINAL", "CLIPPED"):
        (root / "jobs" / day / str(job_id) / kind).mkdir(parents=True)
    return web.json_response({"id": job_id, "name": body.get("name"), "day": day}, status=201)


async def upload(request: web.Request) -> web.Response:
    reader = await request.multipart()
    part = await reader.next()
    if not isinstance(part, BodyPartReader) or part.name != "file":
        raise web.HTTPBadRequest(text="expected a part named file")
    target = request.app[ROOT] / "uploads" / f".tmp-{secrets.token_hex(8)}"
    size = 0
    with open(target, "wb", buffering=0) as fh:
        while chunk := await part.read_chunk(CHUNK):
            fh.write(chunk)
            size += len(chunk)
    os.replace(target, target.with_name(os.path.basename(part.filename or "upload.bin")))
    return web.json_response({"size": size}, status=201)


async def download(request: web.Request) -> web.FileResponse:
    name = request.match_info["name"]
    return web.FileResponse(request.app[ROOT] / "files" / os.path.basename(name))


def make_app(root: Path) -> web.Application:
    for sub in ("jobs", "uploads", "files"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(root / "bare.db", isolation_level=None)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = NORMAL")
    db.execute("create table if not exists jobs (id integer primary key, name text, description text,"
               " day text, created_at real)")
    app = web.Application()
    app[DB], app[ROOT] = db, root
    app.router.add_post("/json", json_handler)
    app.router.add_post("/jobs", create_job)
    app.router.add_post("/upload", upload)
    app.router.add_get("/files/{name}", download)
    return app


def main(argv: list[str]) -> None:
    port, root = int(argv[0]), Path(argv[1])
    web.run_app(make_app(root), host="127.0.0.1", port=port, access_log=None, print=None)


if __name__ == "__main__":
    main(sys.argv[1:])
