"""POST /sessions (log in with an API client) and DELETE /sessions (log out)."""

from __future__ import annotations

import asyncio

from aiohttp import web

from gateway import accounts
from gateway.api.keys import CONFIG, DB, EXECUTOR, GUARD, WRITER
from gateway.api.middleware import CLIENT, endpoint, principal, read_body
from gateway.errors import InvalidParameter, MissingParameter, TooManyRequests, Unauthorized


def banned_error(guard: accounts.LoginGuard) -> TooManyRequests:
    err = TooManyRequests("Too many failed logins from this address; try again later.")
    err.headers = {"Retry-After": str(int(guard.ban_time))}
    return err


@endpoint(body="required", auth="client")
async def create_session(request: web.Request) -> web.Response:
    guard = request.app[GUARD]
    ip = request.remote or "?"
    if guard.banned(ip):
        raise banned_error(guard)
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
    if guard.banned(ip):  # banned while this guess was checked (guesses sent at once): no verdict
        raise banned_error(guard)
    if not ok or user is None or user["disabled"]:
        if guard.failed(ip):
            raise banned_error(guard)
        raise Unauthorized("Wrong login or password, or the user is disabled.")
    client = request[CLIENT]
    body_out = await request.app[WRITER].run(accounts.create_session, user["id"], client["id"],
                                             request.app[CONFIG].sessions.lifetime)
    return web.json_response(body_out, status=201)


@endpoint()
async def delete_session(request: web.Request) -> web.Response:
    await request.app[WRITER].run(accounts.end_session, principal(request).session_id)
    return web.Response(status=204)
