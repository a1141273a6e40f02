"""The FTP thread: its own IO loop and database connection, started and stopped by the app's lifecycle.

pyftpdlib's loop is not thread-safe, so other threads (the writer, the password hasher, the spool
hashers, the aiohttp loop) hand work to it with call_soon(), which wakes the poller through a
socketpair. Shutdown happens inside the FTP thread itself (close_all() from another thread hangs
on epoll: pyftpdlib issues 367/577).
"""

from __future__ import annotations

import collections
import concurrent.futures
import logging
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlite_utils
from pyftpdlib.ioloop import IOLoop
from pyftpdlib.servers import FTPServer

from gateway import jobs
from gateway.accounts import LoginGuard
from gateway.config import Config
from gateway.db import Writer, open_db
from gateway.ftp.data import BUFFER
from gateway.logbuf import LineLog
from gateway.storage import HashPool, Storage
from gateway.threads import name_this_thread

log = logging.getLogger("gateway.ftp")


class _Waker:
    """A socketpair registered in the pyftpdlib loop; other threads queue calls and poke it."""

    def __init__(self, ioloop: Any, run: Callable[[], None]) -> None:
        self._r, self._w = socket.socketpair()
        self._r.setblocking(False)
        self._w.setblocking(False)
        self._fileno = self._r.fileno()
        self._run = run
        self._ioloop = ioloop
        ioloop.register(self._fileno, self, ioloop.READ)

    def poke(self) -> None:
        try:
            self._w.send(b"\0")
        except (BlockingIOError, OSError):
            pass  # already poked (buffer full) or closing

    # the dispatcher protocol the loop calls
    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return False

    def handle_read_event(self) -> None:
        try:
            while self._r.recv(4096):
                pass
        except (BlockingIOError, OSError):
            pass
        self._run()

    def handle_write_event(self) -> None:
        pass

    def handle_expt_event(self) -> None:
        pass

    def handle_error(self) -> None:
        log.exception("FTP call failed")

    def handle_close(self) -> None:
        pass

    def close(self) -> None:
        try:
            self._ioloop.unregister(self._fileno)
        except Exception:  # noqa: S110 - the loop may be closing already
            pass
        self._r.close()
        self._w.close()


def _sessions(server: Any) -> int:
    """What [ftp] max_cons caps: FTP sessions (pyftpdlib counts every socket of the loop, the listening
    socket, data connections and our waker included)."""
    return sum(1 for h in server.ioloop.socket_map.values() if hasattr(h, "gw_busy"))


class FtpService:
    """pyftpdlib in one dedicated thread, sharing the process's writer, storage and login guard."""

    def __init__(self, config: Config, sock: socket.socket, writer: Writer, storage: Storage,
                 guard: LoginGuard, hashers: HashPool, lines: LineLog | None = None) -> None:
        self.config = config
        self.lines = lines  # the process's buffered log for per-transfer lines (None: plain logging)
        self.hashers = hashers
        self.sock = sock
        self.writer = writer
        self.storage = storage
        self.guard = guard
        self.address: tuple[str, int] = sock.getsockname()[:2]
        self.db: sqlite_utils.Database  # the FTP thread's own reading connection, opened in the thread
        self.jobs = jobs.JobCache()  # job rows for path resolution (FTP thread only)
        self.partials = jobs.PartialFinder()  # a login's interrupted uploads, for STOR and SIZE (FTP thread only)
        self.executor = concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="ftp-login",
                                                              initializer=name_this_thread)
        self.busy_temps: set[Path] = set()  # temp files a running transfer writes (FTP thread only)
        self.recv_buffer = bytearray(BUFFER)  # every plain upload read lands here (FTP thread only)
        self.stopping = False  # new sessions are answered 421 while running transfers finish
        self._calls: collections.deque[tuple[Callable[..., Any], tuple[Any, ...]]] = collections.deque()
        self._waker: _Waker | None = None
        self._ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ftp-server", daemon=True)

    # -- any thread
    def start(self) -> None:
        self._thread.start()
        self._ready.result()

    def note(self, message: str) -> None:
        """A per-transfer log line: buffered when the process has a line log, else through logging."""
        if self.lines is not None:
            self.lines.info("gateway.ftp", message)
        else:
            log.info("%s", message)

    def call_soon(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run fn(*args) on the FTP thread, soon."""
        self._calls.append((fn, args))
        waker = self._waker
        if waker is not None:
            waker.poke()

    def request_stop(self) -> None:
        """Idle sessions close at once; running transfers get [server] shutdown_grace."""
        self._stop.set()
        if self._waker is not None:
            self._waker.poke()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def running(self) -> bool:
        return self._thread.is_alive()

    # -- the FTP thread
    def _run_calls(self) -> None:
        while self._calls:
            fn, args = self._calls.popleft()
            try:
                fn(*args)
            except Exception:
                log.exception("FTP call %s failed", getattr(fn, "__qualname__", fn))

    def _run(self) -> None:
        from gateway.ftp.handler import make_handler

        name_this_thread()
        ioloop = None
        try:
            self.db = open_db(self.config.db_path)
            ioloop = IOLoop.factory()
            self._waker = _Waker(ioloop, self._run_calls)
            server_cls = type("GatewayFTPServer", (FTPServer,), {
                "max_cons": self.config.ftp.max_cons, "max_cons_per_ip": self.config.ftp.max_cons_per_ip,
                "_map_len": _sessions})
            server = server_cls(self.sock, make_handler(self), ioloop=ioloop, backlog=1024)
        except BaseException as e:
            self._ready.set_exception(e)
            if ioloop is not None:
                ioloop.close()
            return
        self._ready.set_result(None)
        try:
            self._loop(ioloop, server)
        except Exception:
            log.exception("FTP loop crashed")
        finally:
            ioloop.close()  # closes every remaining session (their partial uploads are kept)
            self._run_calls()
            if self._waker is not None:
                self._waker.close()
            self.executor.shutdown(wait=True)
            self.db.close()

    def _loop(self, ioloop: Any, server: Any) -> None:
        soonest: float | None = None
        deadline: float | None = None
        while True:
            ioloop.poll(1.0 if soonest is None else min(soonest, 1.0))
            soonest = ioloop.sched.poll()
            if self._calls:
                self._run_calls()
            if self._stop.is_set():
                if deadline is None:
                    deadline = time.monotonic() + self.config.server.shutdown_grace
                    self.stopping = True
                    log.info("FTP: stopping; running transfers get %.0f s", self.config.server.shutdown_grace)
                if self._close_idle(ioloop) == 0 or time.monotonic() > deadline:
                    return

    def _close_idle(self, ioloop: Any) -> int:
        """Close sessions without a running transfer; return how many sessions are still busy."""
        busy = 0
        for h in list(ioloop.socket_map.values()):
            if not hasattr(h, "gw_busy"):
                continue
            if h.gw_busy():
                busy += 1
            elif not h._closed and not h._closing:
                h.respond("421 Server shutting down.")
                h.close_when_done()
        return busy

