"""The admin CLI tells the running server that logins changed, and waits until the server has heard it.

The CLI writes the database directly (another process), so the server cannot see a disabled user or
a revoked client in its caches of login checks (accounts.SessionCache, the FTP login check) until it
reads the database again. After every admin command the CLI sends one datagram to the server of the
same database; the server bumps accounts.LOGINS_CHANGED and answers; only then does the CLI return.
So a change made with the CLI holds for the very next request, as it did without any cache.

The socket lives in Linux's abstract namespace: no file to leave behind, no path-length limit. Its
name is derived from the database's real path, so each database has its own. Anyone on the machine
may send to it; all a datagram can do is make the server read logins from the database again.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import threading
from pathlib import Path

from gateway.accounts import LOGINS_CHANGED
from gateway.threads import name_this_thread

log = logging.getLogger("gateway.notify")
MESSAGE = b"logins-changed"
ACK = b"ok"


def address(db_path: str | Path) -> str:
    digest = hashlib.sha256(os.path.realpath(db_path).encode("utf-8", "surrogateescape")).hexdigest()[:32]
    return f"\0gateway-{digest}"


def tell_server(db_path: str | Path, timeout: float = 2.0) -> bool | None:
    """True: the running server has dropped what it cached about logins. None: no server runs on this
    database. False: a server is there but did not answer in time."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind("")  # an automatic abstract address, for the answer
        s.settimeout(timeout)
        try:
            s.sendto(MESSAGE, address(db_path))
        except (ConnectionRefusedError, FileNotFoundError):
            return None
        try:
            while True:
                data = s.recv(64)
                if data == ACK:
                    return True
        except TimeoutError:
            return False


class Listener:
    """The server's end, on a thread of its own (so an answer never waits for a busy event loop): each
    datagram bumps LOGINS_CHANGED and is then answered."""

    def __init__(self, db_path: str | Path) -> None:
        self.address = address(db_path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            self.sock.bind(self.address)
        except OSError:
            self.sock.close()
            raise
        self._stop = False
        self._thread = threading.Thread(target=self._serve, name="admin-notify", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _serve(self) -> None:
        name_this_thread()
        while not self._stop:
            try:
                data, peer = self.sock.recvfrom(64)
            except OSError as e:
                log.warning("admin notification socket: %s", e)
                return
            if data != MESSAGE:
                continue
            LOGINS_CHANGED.bump()
            if peer:
                try:
                    self.sock.sendto(ACK, peer)
                except OSError:  # the CLI gave up waiting already
                    pass

    def close(self) -> None:
        self._stop = True
        if self._thread.is_alive():
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:  # wake it up
                s.sendto(b"", self.address)
            self._thread.join(5)
        self.sock.close()
