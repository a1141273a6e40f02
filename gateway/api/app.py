"""create_app(config): the aiohttp application with its middlewares, routes and resources."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aiohttp import web

from gateway import accounts
from gateway.accounts import LoginGuard
from gateway.api.callbacks import deliver_callbacks
from gateway.api.keys import (
    ADDRESSES,
    CONFIG,
    DB,
    EXECUTOR,
    GUARD,
    HASHERS,
    LIFECYCLE,
    SECRET,
    SESSIONS,
    STORAGE,
    WRITER,
    Addresses,
    Lifecycle,
)
from gateway.api.middleware import cors_middleware, drain_middleware, errors_middleware, negotiation_middleware
from gateway.api.routes import add_routes
from gateway.config import Config
from gateway.db import Writer, open_db
from gateway.notify import Listener
from gateway.storage import HashPool, Storage
from gateway.threads import name_this_thread

MAX_JSON_BODY = 1 << 20
log = logging.getLogger("gateway")


def background(loop_fn: Callable[[web.Application], Coroutine[Any, Any, None]]) -> Callable[
        [web.Application], AsyncIterator[None]]:
    """A cleanup_ctx running loop_fn(app) as a task for the app's lifetime (sweeps, deliveries)."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(loop_fn(app))
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    return ctx


def default_addresses(config: Config) -> Addresses:
    return Addresses(config.public_url_for(config.http.port), config.ftp_public_host, config.ftp.port)


def create_app(config: Config, addresses: Addresses | None = None) -> web.Application:
    """Everything the API shares lives under typed keys; resources open and close in cleanup_ctx."""
    app = web.Application(middlewares=[cors_middleware, errors_middleware, drain_middleware, negotiation_middleware],
                          client_max_size=MAX_JSON_BODY)
    app[CONFIG] = config
    app[LIFECYCLE] = Lifecycle()
    app[ADDRESSES] = addresses or default_addresses(config)
    app[STORAGE] = Storage(config.storage_root, config.storage.min_free_bytes)
    app[GUARD] = LoginGuard(config.security.login_failures, config.security.login_window,
                            config.security.ban_time)
    app.cleanup_ctx.append(_resources)
    app.cleanup_ctx.append(background(deliver_callbacks))
    add_routes(app)
    return app


async def _resources(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    loop = asyncio.get_running_loop()
    listener: Listener | None = None
    app[STORAGE].root.mkdir(parents=True, exist_ok=True)
    executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="gw-work", initializer=name_this_thread)
    writer = Writer(config.db_path)
    hashers = HashPool(min(2, os.cpu_count() or 1))
    app[HASHERS] = hashers
    try:
        await loop.run_in_executor(executor, writer.start)  # opens and migrates the database
        app[EXECUTOR] = executor
        app[WRITER] = writer
        app[DB] = open_db(config.db_path)
        app[SECRET] = accounts.server_secret(config.secret_path)
        app[SESSIONS] = accounts.SessionCache()
        try:
            listener = Listener(config.db_path)  # the admin CLI's changes reach the cache through it
            listener.start()
        except OSError as e:  # another server runs on this database: it would not hear the CLI
            log.warning("admin notifications unavailable (%s): session checks are not cached", e)
            app[SESSIONS] = accounts.SessionCache(ttl=0)
            listener = None
        yield
    finally:
        if listener is not None:
            listener.close()
        if DB in app:
            app[DB].close()
        await loop.run_in_executor(None, writer.close)
        executor.shutdown(wait=True)
        await loop.run_in_executor(None, hashers.close)
