"""Composition root: binds the sockets, builds the aiohttp app and attaches the FTP service."""

from __future__ import annotations

import asyncio
import ctypes
import gc
import logging
import signal
import socket
import ssl
import sys
import time
from collections.abc import AsyncIterator

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from gateway import accounts, jobs
from gateway.api.app import background, create_app
from gateway.api.keys import ADDRESSES, CONFIG, GUARD, HASHERS, LIFECYCLE, STORAGE, WRITER, Addresses
from gateway.config import Config
from gateway.ftp.service import FtpService
from gateway.logbuf import LineLog

log = logging.getLogger("gateway")
SWEEP_EVERY = 60.0
FTP_SERVICE = web.AppKey("ftp_service", FtpService)
LINE_LOG = web.AppKey("line_log", LineLog)


def access_logger_class(sink: LineLog) -> type[AbstractAccessLogger]:
    """A per-app access logger: method, path, status, size and time; never the query string (it
    carries tokens and keys)."""

    class GatewayAccessLogger(AbstractAccessLogger):
        def log(self, request: web.BaseRequest, response: web.StreamResponse, time_taken: float) -> None:
            sink.info("aiohttp.access", f'{request.remote} "{request.method} {request.path}" {response.status} '
                                        f"{response.body_length} {time_taken:.3f}s")

        @property
        def enabled(self) -> bool:
            return True

    return GatewayAccessLogger


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.create_server((host, port), family=family, reuse_port=False, backlog=1024)
    sock.setblocking(False)
    return sock


def addresses_for(config: Config, http_port: int, ftp_port: int) -> Addresses:
    return Addresses(config.public_url_for(http_port), config.ftp_public_host, ftp_port)


def build_app(config: Config, addresses: Addresses, ftp_sock: socket.socket | None) -> web.Application:
    """The API plus the process's background duties: start-up checks, sweeps, the FTP thread."""
    app = create_app(config, addresses)
    app[LINE_LOG] = LineLog(sys.stderr)
    app.cleanup_ctx.append(_startup_duties)
    if ftp_sock is not None:
        attach_ftp(app, ftp_sock)
    app.cleanup_ctx.append(background(sweep))
    return app


def attach_ftp(app: web.Application, sock: socket.socket) -> None:
    """The FTP thread starts with the app, begins stopping with the app's shutdown (in parallel with
    the HTTP side's grace) and is joined at cleanup, before the writer closes."""
    holder: list[FtpService] = []

    async def ftp_ctx(app: web.Application) -> AsyncIterator[None]:
        service = FtpService(app[CONFIG], sock, app[WRITER], app[STORAGE], app[GUARD], app[HASHERS],
                             lines=app.get(LINE_LOG))
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, service.start)
        holder.append(service)
        app[FTP_SERVICE] = service
        try:
            yield
        finally:
            service.request_stop()
            await loop.run_in_executor(None, service.join)

    async def on_shutdown(app: web.Application) -> None:
        for service in holder:
            service.request_stop()

    app.cleanup_ctx.append(ftp_ctx)
    app.on_shutdown.append(on_shutdown)


async def _startup_duties(app: web.Application) -> AsyncIterator[None]:
    config, writer = app[CONFIG], app[WRITER]
    changes = await writer.run(jobs.reconcile, app[STORAGE], config.ftp.partial_ttl)
    if changes:
        log.info("start-up reconciliation changed: %s", ", ".join(f"{k}={v}" for k, v in changes.items()))
    if config.bootstrap_demo:
        demo = await writer.run(accounts.bootstrap_demo)
        if demo is not None:
            print_demo(app[ADDRESSES], demo)
    yield


def print_demo(addrs: Addresses, demo: dict[str, str]) -> None:
    url = addrs.public_url
    login = f'{{"login": "{demo["login"]}", "password": "{demo["password"]}"}}'
    head = f"-H 'Accept: application/json' -H 'Content-Type: application/json' -H 'X-Client-Token: {demo['token']}'"
    lines = [
        "",
        "=" * 30 + " first start: demo credentials (shown once) " + "=" * 30,
        f"  account: {demo['account']}   login: {demo['login']}   password: {demo['password']}",
        f"  API client token: {demo['token']}",
        "",
        "  Create a session and a job (paste into a shell):",
        "",
        f"SESSION=$(curl -s -X POST {url}/sessions {head} -d '{login}' "
        "| python3 -c 'import json,sys; print(json.load(sys.stdin)[\"token\"])')",
        f"curl -s -X POST {url}/jobs {head} -H \"X-Session-Token: $SESSION\" "
        "-d '{\"name\": \"Job of fruits\", \"description\": \"Cleap fruits from background\"}'",
        "=" * 104,
        "",
    ]
    print("\n".join(lines), flush=True)


async def sweep(app: web.Application) -> None:
    """Runs for the app's lifetime: archive jobs past retention and drop expired partial uploads (once a
    minute; short retention times, in tests and trials, are honoured promptly)."""
    config, writer, storage = app[CONFIG], app[WRITER], app[STORAGE]
    every = max(0.25, min(SWEEP_EVERY, config.jobs.retention_days * 86400 / 10, config.ftp.partial_ttl / 10))
    while True:
        await asyncio.sleep(every)
        try:
            for job in await writer.run(jobs.jobs_due_for_archive, config.jobs.retention_days):
                if await writer.run(jobs.archive_job, storage, job["id"]):
                    log.info("job %s archived after %s days", job["id"], config.jobs.retention_days)
            expired = await writer.run(jobs.expire_partials, storage, config.ftp.partial_ttl)
            if expired:
                log.info("%d expired partial uploads removed", expired)
        except Exception:
            log.exception("sweep failed")


def ssl_context(config: Config) -> ssl.SSLContext | None:
    if not config.http.tls:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(config.http.tls_certfile, config.http.tls_keyfile)
    return ctx


def tune_malloc() -> None:
    """glibc gives every thread that allocates its own arena; transfers run on many short-lived threads
    (hashers, workers), so cap the arenas to keep the resident size flat under load."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_arena_max = -8
    libc.mallopt(m_arena_max, 2)


def tune_gc() -> None:
    """Once the app is up: what exists now (modules, routes, the app) is never scanned again, and the
    young generation is collected every 20,000 allocations instead of 700. The cyclic collector ran
    several times per request; make bench --only post-jobs, twice each way: 4,022/3,183 -> 4,360/3,603
    req/s and p99 24.0/25.9 -> 20.9/24.6 ms. Memory stays flat (make soak)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 50, 100)


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("pyftpdlib").setLevel(logging.WARNING)


def serve(config: Config) -> int:
    """Run both servers until SIGINT/SIGTERM; running transfers get [server] shutdown_grace."""
    setup_logging()
    tune_malloc()
    # Several threads share the GIL (the loop, the FTP thread, the writer, hashers): a thread waiting
    # for it gets it after 1 ms instead of 5 ms, which keeps API latency low while transfers run.
    sys.setswitchinterval(0.001)
    try:
        http_sock = bind(config.http.host, config.http.port)
        ftp_sock = bind(config.ftp.host, config.ftp.port)
        ctx = ssl_context(config)
    except OSError as e:
        print(f"gateway: cannot listen: {e}", file=sys.stderr)
        return 1
    addrs = addresses_for(config, http_sock.getsockname()[1], ftp_sock.getsockname()[1])
    app = build_app(config, addrs, ftp_sock)
    log.info("HTTP API on %s, FTP on %s", addrs.public_url, addrs.ftp_base())
    asyncio.run(_run(config, app, http_sock, ctx))
    log.info("stopped")
    return 0


async def _run(config: Config, app: web.Application, http_sock: socket.socket, ctx: ssl.SSLContext | None) -> None:
    # aiohttp's keep-alive timer also runs from the moment a connection opens until its request
    # headers are complete: it is the [http] header_timeout (slow or absent headers are cut off).
    # drain() owns the grace; aiohttp's own shutdown wait only catches what is left after it
    access = app[LINE_LOG]
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.5,
                           keepalive_timeout=config.http.header_timeout,
                           access_log_class=access_logger_class(access), handler_cancellation=True)
    await runner.setup()
    tune_gc()
    flusher = asyncio.create_task(_flush_every(access, 0.5))
    try:
        await web.SockSite(runner, http_sock, ssl_context=ctx).start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await drain(app, config.server.shutdown_grace)
    finally:
        await runner.cleanup()
        flusher.cancel()
        access.flush()


async def _flush_every(access: LineLog, seconds: float) -> None:
    while True:
        await asyncio.sleep(seconds)
        access.flush()


async def drain(app: web.Application, grace: float) -> None:
    """New HTTP requests get 503 and new FTP sessions 421 while running ones get up to grace to finish."""
    life = app[LIFECYCLE]
    life.draining = True
    ftp = app.get(FTP_SERVICE)
    if ftp is not None:
        ftp.request_stop()
    log.info("stopping: running transfers get %.0f s", grace)
    deadline = time.monotonic() + grace
    while (life.active > 0 or (ftp is not None and ftp.running())) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
