"""Middlewares: error -> JSON body mapping, content negotiation (406/415), token headers (400/401)."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import parse_qsl

from aiohttp import web

from gateway import accounts
from gateway.accounts import Principal
from gateway.api.keys import CONFIG, DB, LIFECYCLE, SESSIONS
from gateway.errors import (
    GatewayError,
    InvalidJson,
    MissingHeader,
    NotAcceptable,
    RequestTimeout,
    ShuttingDown,
    Unauthorized,
    UnsupportedMediaType,
)

log = logging.getLogger("gateway.api")
JSON = "application/json"
FORM = "application/x-www-form-urlencoded"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
H = TypeVar("H", bound=Handler)
PRINCIPAL = web.RequestKey("principal", Principal)
CLIENT = web.RequestKey("client", dict)


@dataclass(frozen=True)
class Endpoint:
    """How a handler is reached: negotiated JSON or a storage URL, its body, the tokens it needs."""

    kind: str = "json"  # json: Accept must name application/json; storage/open: exempt
    body: str = "none"  # required: JSON or form body expected; optional: checked when present; none
    auth: str = "session"  # session: both token headers; client: X-Client-Token only; none
    cors: bool = False  # browsers on [http] cors_origins may call it


def endpoint(kind: str = "json", body: str = "none", auth: str = "session", cors: bool = False) -> Callable[[H], H]:
    def deco(fn: H) -> H:
        fn.__gw_endpoint__ = Endpoint(kind, body, auth, cors)  # type: ignore[attr-defined]
        return fn
    return deco


def endpoint_of(request: web.Request) -> Endpoint | None:
    return getattr(request.match_info.handler, "__gw_endpoint__", None)


def principal(request: web.Request) -> Principal:
    return request[PRINCIPAL]


def error_response(err: GatewayError) -> web.Response:
    return web.json_response(err.body(), status=err.status, headers=err.headers or None)


@web.middleware
async def drain_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Counts running requests; once the server drains for shutdown, new ones get 503."""
    life = request.app[LIFECYCLE]
    if life.draining:
        raise ShuttingDown()
    life.active += 1
    try:
        return await handler(request)
    finally:
        life.active -= 1


def cors_headers(request: web.Request) -> dict[str, str] | None:
    """CORS headers for a browser origin listed in [http] cors_origins (None: not allowed)."""
    origin = request.headers.get("Origin")
    if origin is None or origin not in request.app[CONFIG].http.cors_origins:
        return None
    return {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}


@web.middleware
async def cors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answers to allowed browser origins carry Access-Control-Allow-Origin, errors included."""
    resp = await handler(request)
    ep = endpoint_of(request)
    if ep is not None and ep.cors and not resp.prepared:
        resp.headers.update(cors_headers(request) or {})
    return resp


_HTTP_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 408: "request_timeout",
               411: "length_required", 413: "request_too_large", 415: "unsupported_media_type",
               416: "range_not_satisfiable", 431: "headers_too_large"}
_KEPT_HEADERS = ("allow", "retry-after", "content-range")


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error the application produces leaves as an ErrorResponseBody; no traceback ever does."""
    try:
        return await handler(request)
    except GatewayError as e:
        return error_response(e)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        body = {"code": _HTTP_CODES.get(e.status, "http_error"), "message": e.reason,
                "_type": "ErrorResponseBody"}
        if e.status == 404:
            body["message"] = "The resource was not found."
        headers = {k: v for k, v in e.headers.items() if k.lower() in _KEPT_HEADERS}
        return web.json_response(body, status=e.status, headers=headers)
    except asyncio.CancelledError:
        raise
    except ConnectionResetError:  # the client went away mid-request: nobody to answer
        log.info("client went away during %s %s", request.method, request.path)
        return web.Response(status=400)
    except Exception:
        log.exception("unexpected failure on %s %s", request.method, request.path)
        body = {"code": "internal_error", "message": "The server encountered an unexpected condition.",
                "_type": "ErrorResponseBody"}
        return web.json_response(body, status=500)


@functools.lru_cache(maxsize=256)  # clients send the same few Accept headers over and over
def accepts_json(accept: str | None) -> bool:
    """True when Accept names application/json explicitly with q > 0 (wildcards do not count)."""
    if not accept:
        return False
    for item in accept.split(","):
        media, *params = [p.strip() for p in item.split(";")]
        if media.lower() != JSON:
            continue
        q = 1.0
        for p in params:
            k, _, v = p.partition("=")
            if k.strip().lower() == "q":
                try:
                    q = float(v)
                except ValueError:
                    q = 0.0
        if q > 0:
            return True
    return False


def body_type(request: web.Request) -> str | None:
    """The bare media type of the body ('application/json'), or None without a Content-Type."""
    raw = request.headers.get("Content-Type")
    if raw is None:
        return None
    return raw.split(";")[0].strip().lower()


def has_body(request: web.Request) -> bool:
    return bool(request.content_length) or request.headers.get("Transfer-Encoding", "").lower() == "chunked"


@web.middleware
async def negotiation_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """406, then 415, then the token headers (400 missing_header, 401), in the spec's order."""
    ep = endpoint_of(request)
    if ep is None:
        return await handler(request)
    if ep.kind == "json" and not accepts_json(", ".join(request.headers.getall("Accept", []))):
        raise NotAcceptable()
    if ep.body == "required" or (ep.body == "optional" and has_body(request)):
        if body_type(request) not in (JSON, FORM):
            raise UnsupportedMediaType()
    if ep.auth != "none":
        who = authenticate(request, ep.auth)
        if who is not None:
            request[PRINCIPAL] = who
    return await handler(request)


def authenticate(request: web.Request, auth: str) -> Principal | None:
    client_token = request.headers.get("X-Client-Token")
    session_token = request.headers.get("X-Session-Token")
    if not client_token:
        raise MissingHeader("X-Client-Token")
    if auth == "session" and not session_token:
        raise MissingHeader("X-Session-Token")
    db = request.app[DB]
    if auth == "session":
        assert session_token is not None
        return request.app[SESSIONS].authenticate(db, client_token, session_token)
    client = accounts.find_client(db, client_token)
    if client is None:
        raise Unauthorized("The client token is unknown or revoked.")
    request[CLIENT] = client
    return None


async def read_body(request: web.Request) -> dict[str, Any]:
    """The body as a mapping: a JSON object, or form fields (a repeated field becomes a list)."""
    if request.content.is_eof():  # the whole body came with the headers (the usual small JSON body)
        raw = await request.read()
    else:
        try:
            async with asyncio.timeout(request.app[CONFIG].http.body_timeout):
                raw = await request.read()
        except TimeoutError:
            raise RequestTimeout() from None
    kind = body_type(request)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidJson("The request body is not valid UTF-8.") from None
    if kind == JSON:
        try:
            value = json.loads(text) if text.strip() else None
        except ValueError:
            raise InvalidJson() from None
        if not isinstance(value, dict):
            raise InvalidJson("The request body must be a JSON object.")
        return value
    if kind == FORM:
        fields: dict[str, Any] = {}
        try:
            pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=False, errors="strict",
                              max_num_fields=1000)
        except (ValueError, UnicodeDecodeError):
            raise InvalidJson("The form body could not be parsed.") from None
        for k, v in pairs:
            if k in fields:
                prev = fields[k]
                fields[k] = [*prev, v] if isinstance(prev, list) else [prev, v]
            else:
                fields[k] = v
        return fields
    return {}


def is_form(request: web.Request) -> bool:
    return body_type(request) == FORM

