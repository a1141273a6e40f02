"""The FTP data channel of an upload: size and disk limits, resets seen as incomplete, no early 226."""

from __future__ import annotations

import errno
import logging
import socket
import sys
from typing import Any

from pyftpdlib.handlers.ftp.data import DTPHandler
from pyftpdlib.ioloop import AsyncChat, _RetryError
from pyftpdlib.utils import is_ssl_sock

from gateway.errors import GatewayError
from gateway.storage import Spool

log = logging.getLogger("gateway.ftp")
BUFFER = 1 << 20
LOW_WATER = 512 << 10  # an upload's socket wakes the FTP thread once this much has arrived (or at its end)
DRAIN_EVERY = 0.1  # ... and what waits under that mark is read at least this often
_DISCONNECTED = {errno.ECONNRESET, errno.ECONNABORTED, errno.EPIPE, errno.ENOTCONN, errno.ESHUTDOWN}


class UploadDTPMixin:
    """Data channel side of an upload: size and disk limits, resets seen as incomplete, no early 226."""

    ac_in_buffer_size = BUFFER
    ac_out_buffer_size = BUFFER
    _gw_failure: BaseException | None = None

    def handle_error(self: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, GatewayError):  # the spool refused the bytes: too large or disk full
            self._gw_failure = exc
            self._resp = (f"{exc.ftp_code} {exc.message}", log.info)
            self.close()
            return
        super().handle_error()  # type: ignore[misc]

    def enable_receiving(self: Any, type: str, cmd: str) -> None:
        super().enable_receiving(type, cmd)  # type: ignore[misc]
        if not is_ssl_sock(self.socket):
            # fewer, larger reads: a rate-limited or small upload no longer wakes the FTP thread (and
            # takes the GIL from the API) for every segment; the end of the stream and errors still wake
            # it at once, and what waits below the mark is read before the transfer is judged idle
            try:
                self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, LOW_WATER)
            except OSError:
                return
            self._gw_drain = self.ioloop.call_every(DRAIN_EVERY, self._read_pending)

    def _read_pending(self: Any) -> None:
        """Read what waits under the low-water mark (a non-blocking recv returns it): a slow client's
        bytes reach the disk, and its partial upload, within DRAIN_EVERY."""
        if self.receive and not self._closed:
            try:
                self.handle_read()
            except Exception:
                self.handle_error()

    def handle_timeout(self: Any) -> None:
        self._read_pending()  # bytes under the mark are progress too
        if not self._closed:
            super().handle_timeout()  # type: ignore[misc]

    def recv(self: Any, buffer_size: int) -> bytes | memoryview:
        if is_ssl_sock(self.socket):
            return super().recv(buffer_size)  # type: ignore[misc,no-any-return]
        # one buffer for the FTP thread: every read is written out before the next one (on this same
        # thread), and a fresh 1 MiB buffer per data connection cost more than a 100 KiB upload itself
        buf = self.cmd_channel.gw.recv_buffer
        try:
            n = self.socket.recv_into(buf)
        except OSError as e:
            if e.errno in _DISCONNECTED:  # a reset is not an end of file: the upload is incomplete
                self._gw_failure = e
                self.handle_close()
                return b""
            if e.errno in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR):
                raise _RetryError from e
            raise
        if not n:
            self.handle_close()
            return b""
        if self._data_wrapper is not None:  # ASCII mode rewrites line ends on bytes
            return bytes(buf[:n])
        return memoryview(buf)[:n]  # written out (handle_read) before the next read reuses the buffer

    def close(self: Any) -> None:
        drain = self.__dict__.get("_gw_drain")
        if drain is not None and not drain.cancelled:
            drain.cancel()
        spool = self.file_obj
        if self._closed or not self.receive or not isinstance(spool, Spool):
            super().close()  # type: ignore[misc]
            return
        AsyncChat.close(self)
        if self._idler is not None and not self._idler.cancelled:
            self._idler.cancel()
        ch = self.cmd_channel
        if self.transfer_finished and self._gw_failure is None:
            ch.gw_upload_finished()
        else:
            resp = self._resp[0] if self._resp else None
            if isinstance(self._gw_failure, OSError):  # reset: never the 226 a normal end would get
                resp = "426 Connection closed; transfer aborted."
            ch.gw_upload_incomplete(self._gw_failure, resp)
        ch._on_dtp_close()
        ch.gw_data_closed()


def plain_dtp_class(timeout: float) -> type:
    return type("GatewayDTP", (UploadDTPMixin, DTPHandler), {"timeout": timeout})
