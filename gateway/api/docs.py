"""GET /health, GET /openapi.json and GET /docs (rendered on the server: no CDN, no script)."""

from __future__ import annotations

import html
from typing import Any

from aiohttp import web

from gateway.api.keys import DB, STORAGE
from gateway.api.middleware import endpoint
from gateway.api.openapi import build_openapi


@endpoint(kind="open", auth="none")
async def health(request: web.Request) -> web.Response:
    storage = request.app[STORAGE]
    body: dict[str, Any] = {"status": "ok", "database": "ok", "_type": "HealthResponseBody"}
    status = 200
    try:
        request.app[DB].execute("select 1").fetchone()
    except Exception:
        body["database"], body["status"], status = "unavailable", "unavailable", 503
    try:
        free = storage.free_bytes()
    except OSError:
        free = 0
    body["storage"] = {"freeBytes": free, "minFreeBytes": storage.min_free_bytes,
                       "acceptingUploads": free >= storage.min_free_bytes}
    if free < storage.min_free_bytes:
        body["status"], status = "low_disk_space", 503
    return web.json_response(body, status=status)


@endpoint(kind="open", auth="none")
async def openapi_json(request: web.Request) -> web.Response:
    return web.json_response(build_openapi(request.app))


@endpoint(kind="open", auth="none")
async def docs_page(request: web.Request) -> web.Response:
    doc = build_openapi(request.app)
    e = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{e(doc['info']['title'])}</title>",
             "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto;padding:0 1em}"
             "code,pre{background:#f4f4f4;padding:.1em .3em}h3{margin-bottom:.2em}"
             ".m{display:inline-block;min-width:4.5em;font-weight:bold}</style></head><body>",
             f"<h1>{e(doc['info']['title'])} {e(doc['info']['version'])}</h1>",
             f"<p>{e(doc['info']['description'])}</p>",
             "<p>Machine-readable document: <a href='/openapi.json'>/openapi.json</a></p>"]
    for path, item in doc["paths"].items():
        for method, op in item.items():
            if method == "parameters":
                continue
            parts.append(f"<h3><span class='m'>{e(method.upper())}</span><code>{e(path)}</code></h3>")
            parts.append(f"<p>{e(op.get('summary', ''))}</p>")
            if op.get("description"):
                parts.append(f"<p>{e(op['description'])}</p>")
            params = [p for p in op.get("parameters", []) if "name" in p]
            if params:
                parts.append("<p>Parameters: " + ", ".join(
                    f"<code>{e(p['name'])}</code> ({e(p['in'])}{', required' if p.get('required') else ''})"
                    for p in params) + "</p>")
            parts.append("<p>Responses: " + ", ".join(
                f"<b>{e(code)}</b> {e(r.get('description', ''))}" for code, r in op["responses"].items()) + "</p>")
    parts.append("</body></html>")
    return web.Response(text="".join(parts), content_type="text/html")
