"""Reference data: GET /deadlines, /specifications, /config/statuses."""

from __future__ import annotations

from aiohttp import web

from gateway import jobs
from gateway.api.keys import DB
from gateway.api.middleware import endpoint


@endpoint()
async def list_deadlines(request: web.Request) -> web.Response:
    return web.json_response({"deadlines": jobs.list_deadlines(request.app[DB]),
                              "_type": "GetDeadlinesResponseBody"})


@endpoint()
async def list_specifications(request: web.Request) -> web.Response:
    return web.json_response({"specifications": jobs.list_specifications(request.app[DB]),
                              "_type": "GetSpecificationsResponseBody"})


@endpoint()
async def list_statuses(request: web.Request) -> web.Response:
    return web.json_response({
        "statuses": [{"code": code, "description": text} for code, text in jobs.STATUSES.items()],
        "_type": "GetStatusesResponseBody"})
