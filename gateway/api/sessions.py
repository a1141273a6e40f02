"""POST /sessions (log in with an API client) and DELETE /sessions (log out)."""

from __future__ import annotations

import asyncio

from aiohttp import web

from gateway import accounts
from gateway.api.keys import CONFIG, DB, EXECUTOR, GUARD, WRITER
from gateway.api.middleware import CLIENT, endpoint, principal, read_body
from gateway.errors import InvalidParameter, MissingParameter, TooManyRequests, Unauthorized


@endpoint(body="required", auth="client")
async def create_session(request: web.Request) -> web.Response:
    guard = request.app[GUARD]
    ip = request.remote or "?"
    if guard.banned(ip):
        raise TooManyRequests("Too many failed logins from this address; try again later.")
    body = await read_body(request)
    creds: dict[str, str] = {}
    for field in ("login", "password"):
        value = body.get(field)
        if value is None or value == "":
            raise MissingParameter(field)
        if not isinstance(value, str) or len(value) > 1024:
            raise InvalidParameter(field, "expected a string of at most 1024 characters")
        creds[field] = value
    user = accounts.get_user(request.app[DB], creds["login"])
    loop = asyncio.get_running_loop()
    ok = await loop.run_in_executor(request.app[EXECUTOR], accounts.verify_password, creds["password"],
                                    user["password_hash"] if user else None)
    if not ok or user is None or user["disabled"]:
        if guard.failed(ip):
            raise TooManyRequests("Too many failed logins from this address; try again later.")
        raise Unauthorized("Wrong login or password, or the user is disabled.")
    guard.succeeded(ip)
    client = request[CLIENT]
    body_out = await request.app[WRITER].run(accounts.create_session, user["id"], client["id"],
                                             request.app[CONFIG].sessions.lifetime)
    return web.json_response(body_out, status=201)


@endpoint()
async def delete_session(request: web.Request) -> web.Response:
    await request.app[WRITER].run(accounts.end_session, principal(request).session_id)
    return web.Response(status=204)
