"""The upload side of an FTP session: spools, resume from partials, and a 226 that is a promise.

STOR, APPE and REST+STOR write to a hidden spool beside the final name; when the client closes the
data connection the spool's hash catches up, the writer renames it into place and records it, and
only then is 226 sent. An interrupted upload is kept for the same login to resume; ABOR and refused
bytes are discarded; a client that left before it read its 226 gets its commit taken back.

A killed client ends its data stream like a finished one, and its control connection a moment later
(tens of microseconds on an idle machine, milliseconds on a busy one): no wait before the 226 could
tell the two apart. What does is the 226 itself: a client that read it either sends another command
or closes after its TCP acknowledged the reply; a client that never read it (killed, or hung up
without reading) resets the connection, or closes with the reply unacknowledged. Until one of those
is seen (or CONFIRM_AFTER passes) the commit stays revocable and the file it replaced is kept aside.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import select
import socket
import struct
import termios
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyftpdlib.exceptions import FilesystemError

from gateway import jobs
from gateway.errors import GatewayError
from gateway.ftp.filesystem import Node, VirtualFS
from gateway.ftp.replies import FtpRefusal, reply_for
from gateway.storage import Spool, finished_stat, unlink_quiet

log = logging.getLogger("gateway.ftp")
CONFIRM_AFTER = 5.0  # seconds after a 226 with the session still up: the client is taken to have read it
_TCP_CLOSE = 7  # tcp_info.tcpi_state of a connection the peer reset


@dataclass
class UploadCtx:
    node: Node
    spool: Spool
    cmd: str
    started: float


@dataclass
class Unconfirmed:
    """A committed upload whose 226 was sent but not yet seen to be read."""

    ctx: UploadCtx
    up: jobs.Upload
    done: jobs.Committed
    timer: Any


class UploadsMixin:
    """STOR/APPE/STOU, ABOR and SIZE for GatewayHandlerMixin (which provides _resume and _gw_busy)."""

    _upload: UploadCtx | None = None  # the STOR of this session, from its 150 until its data ends
    _committing: jobs.Upload | None = None  # its commit, queued on the writer
    _hashed_now: UploadCtx | None = None  # hashed while its data channel closed: commit right after
    _unconfirmed: Unconfirmed | None = None  # its 226 is sent; taken back if the client never read it

    def _abandon_pending_upload(self: Any) -> None:
        """A STOR whose bytes never came (ABOR, another STOR, logout, hang-up): its spool goes. The data
        connection may already be open (a client connects before it sends the next STOR): it is kept
        for the next transfer as long as nothing was received into the abandoned spool."""
        ctx, dc = self._upload, self.data_channel
        if ctx is None or (dc is not None and (dc.file_obj is not ctx.spool or dc.get_transmitted_bytes())):
            return
        self._upload = None
        if dc is not None:
            dc.file_obj = None
        if self._in_dtp_queue is not None and self._in_dtp_queue[0] is ctx.spool:
            self._in_dtp_queue = None
        self._drop_upload(ctx)

    def ftp_STOR(self: Any, file: str, mode: str = "w") -> str | None:
        rest = self._restart_position
        self._restart_position = 0
        cmd = "APPE" if "a" in mode else "STOR"
        self._abandon_pending_upload()
        if self._upload is not None:
            self.respond("425 An upload is already running on this session.")
            return None
        try:
            node = self._upload_target(file)
            self.gw.storage.check_free()
            spool = self._open_spool(node, mode, rest)
        except (FtpRefusal, GatewayError, FilesystemError, OSError) as e:
            self.respond(reply_for(e))
            return None
        self.gw.busy_temps.add(spool.path)
        self._upload = UploadCtx(node, spool, cmd, time.monotonic())
        if self.data_channel is not None:
            self.respond("125 Data connection already open. Transfer starting.")
            self.data_channel.file_obj = spool
            self.data_channel.enable_receiving(self._current_type, cmd)
        else:
            self.respond("150 File status okay. About to open data connection.")
            self._in_dtp_queue = (spool, cmd)
        return file

    def ftp_APPE(self: Any, file: str) -> str | None:
        if self._restart_position:
            self.respond("450 Can't APPE while REST request is pending.")
            return None
        return self.ftp_STOR(file, mode="a")  # type: ignore[no-any-return]

    def ftp_STOU(self: Any, line: str) -> None:
        self.respond("502 STOU is not supported; use STOR with a file name.")

    def _upload_target(self: Any, file: str) -> Node:
        fs: VirtualFS = self.fs
        try:
            node = fs.resolve(file)
        except FilesystemError as e:
            if "archived" in str(e):
                raise
            node = fs.resolve_new(file)
        else:
            if node.depth < 4 or node.real.is_dir():
                raise FilesystemError("Is a directory")
        fs.writable(node)
        return node

    def _open_spool(self: Any, node: Node, mode: str, rest: int) -> Spool:
        """A fresh spool, or the login's partial continued (REST/APPE), or a copy of the finished file."""
        storage, login = self.gw.storage, self.gw_login
        max_size = self.gw.config.storage.max_file_size
        kind_dir = storage.kind_dir(node.day, node.job_id, node.kind)
        partial = self.gw.partials.find(self.gw.db, node.job_id, node.kind, node.rel, login.name)
        ptemp = kind_dir / partial["temp_name"] if partial else None
        if ptemp is not None and ptemp in self.gw.busy_temps:
            raise FtpRefusal(450, "This upload is being resumed in another session.")
        psize = _regular_size(ptemp) if ptemp is not None else None
        fsize = _regular_size(node.real)
        if mode == "a" and psize is not None:
            return Spool(ptemp, max_size, self.gw.hashers, start=psize, existing=True)  # type: ignore[arg-type]
        if rest and psize is not None and rest <= psize:
            return Spool(ptemp, max_size, self.gw.hashers, start=rest, existing=True)  # type: ignore[arg-type]
        if rest and (fsize is None or rest > fsize):
            raise FtpRefusal(554, f"REST position ({rest}) is beyond the file size ({psize or fsize or 0}).")
        prefix = rest if rest else (fsize or 0) if mode == "a" else 0
        spool = Spool(storage.temp_path(node.real.parent), max_size, self.gw.hashers)
        if prefix:
            spool.prefill(node.real, prefix)
        return spool

    def gw_upload_finished(self: Any) -> None:
        ctx, self._upload = self._upload, None
        if ctx is None:
            return
        self._gw_busy = True
        if not ctx.spool.when_hashed(lambda _s: self.gw.call_soon(self._upload_hashed, ctx)):
            self._hashed_now = ctx  # a small file, hashed already: committed once the data channel is closed

    def gw_data_closed(self: Any) -> None:
        ctx, self._hashed_now = self._hashed_now, None
        if ctx is not None:
            self._upload_hashed(ctx)

    def _peer_gone(self: Any) -> bool:
        """The control connection was closed by the client (a killed client also ends its data stream)."""
        if self._closed:
            return True
        p = select.poll()
        p.register(self._fileno, select.POLLIN | select.POLLRDHUP)
        return any(ev & (select.POLLRDHUP | select.POLLHUP | select.POLLERR) for _, ev in p.poll(0))

    def _upload_hashed(self: Any, ctx: UploadCtx) -> None:
        if self._peer_gone():
            self._keep_partial(ctx)
            return
        try:
            digest = ctx.spool.digest()
        except Exception as e:
            self._drop_upload(ctx)
            self.respond(reply_for(e))
            self._resume()
            return
        ctx.spool.release()
        up = jobs.Upload(ctx.node.job_id, ctx.node.kind, ctx.node.rel, ctx.spool.path, digest, "ftp",
                         self.gw_login.name, self.gw_login.principal, threading.Event())
        self._committing = up
        # an idle writer lets this thread commit it at once (one session's mput: no thread hand-offs);
        # a busy one batches it with the other sessions' commits. Either way the 226 that follows stays
        # revocable until the client is seen to read it (gw_settle_226): no wait guards it.
        fut = self.gw.writer.submit(jobs.commit_upload_tentative, self.gw.storage, up, now=True)
        if fut.done():
            self._upload_committed(ctx, up, fut)
        else:
            fut.add_done_callback(lambda f: self.gw.call_soon(self._upload_committed, ctx, up, f))

    def _upload_committed(self: Any, ctx: UploadCtx, up: jobs.Upload, fut: Any) -> None:
        self._committing = None
        exc = fut.exception()
        if exc is None and fut.result().record is None:  # the client left first: kept as its partial
            self.gw.busy_temps.discard(ctx.spool.path)
            return
        if exc is not None:
            self._drop_upload(ctx)
            self.respond(reply_for(exc))
        elif self._peer_gone():  # the control connection ended while this was committed: no 226 seen
            self._withdraw(ctx, up, fut.result())
            return
        else:
            done: jobs.Committed = fut.result()
            self.gw.busy_temps.discard(ctx.spool.path)
            elapsed = time.monotonic() - ctx.started
            self.respond("226 Transfer complete.")
            if self._closed:  # the reply could not be sent: the client is gone
                self._withdraw(ctx, up, done)
                return
            self._unconfirmed = Unconfirmed(ctx, up, done, self.ioloop.call_later(CONFIRM_AFTER, self.gw_settle_226))
            # logged once the reply is on its way: the client reads it while this line is formatted
            self.gw.note(f"FTP {ctx.cmd} {ctx.node.job_id}/{ctx.node.kind}/{ctx.node.rel} {ctx.spool.size} bytes "
                         f"by {self.gw_login.name} in {elapsed:.2f}s")
        self._resume()

    def gw_settle_226(self: Any, closing: bool = False) -> None:
        """The last upload's 226 was read (the client sent a command, or CONFIRM_AFTER passed with the
        session up, or the server speaks again): the upload is final. When the session is closing, the
        socket says whether it was read: a reset, or a reply the client's TCP never acknowledged, means
        the client never saw it, and the upload goes back to being its partial."""
        u, self._unconfirmed = self._unconfirmed, None
        if u is None:
            return
        if not u.timer.cancelled:
            u.timer.cancel()
        if closing and self._reply_unread():
            self._withdraw(u.ctx, u.up, u.done)
        elif u.done.backup is not None:
            self.gw.executor.submit(unlink_quiet, u.done.backup)

    def _reply_unread(self: Any) -> bool:
        """Whether the client closing this control connection left our last reply unread."""
        try:
            sock = self.socket
            if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) or \
                    sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0] == _TCP_CLOSE:
                return True  # reset
            unacked = struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0"))[0]
        except OSError as e:
            return e.errno in (errno.ECONNRESET, errno.EPIPE)
        except (AttributeError, ValueError):  # no socket left to ask: the upload stands
            return False
        return bool(unacked > 0)

    def _withdraw(self: Any, ctx: UploadCtx, up: jobs.Upload, done: jobs.Committed) -> None:
        self.gw.busy_temps.discard(ctx.spool.path)
        self.gw.writer.submit(jobs.withdraw_upload, self.gw.storage, up, done).add_done_callback(log_failure)
        self.gw.note(f"FTP {ctx.cmd} {ctx.node.job_id}/{ctx.node.kind}/{ctx.node.rel}: the client left without "
                     f"reading its 226; kept for resume by {self.gw_login.name}")

    def gw_upload_incomplete(self: Any, failure: BaseException | None, resp: str | None) -> None:
        """ABOR and refused bytes are discarded; a dropped or timed-out transfer is kept to resume."""
        ctx, self._upload = self._upload, None
        if ctx is None:
            return
        if self._aborting or isinstance(failure, GatewayError):
            self._drop_upload(ctx)
            if resp:
                self.respond(resp)
        else:
            self._keep_partial(ctx, resp)

    def _drop_upload(self: Any, ctx: UploadCtx) -> None:
        ctx.spool.discard()
        self.gw.busy_temps.discard(ctx.spool.path)
        self.gw.writer.submit(_forget_partial_file, ctx.node.job_id, ctx.node.kind, ctx.node.rel,
                              self.gw_login.name, ctx.spool.path.name)

    def _keep_partial(self: Any, ctx: UploadCtx, resp: str | None = None) -> None:
        """Keep the bytes for this login to resume; a reply (426, 421) waits until SIZE can report them."""
        ctx.spool.release()
        self.gw.busy_temps.discard(ctx.spool.path)
        if ctx.spool.size == 0:
            self._drop_upload(ctx)
            if resp:
                self.respond(resp)
            return
        kind_dir = self.gw.storage.kind_dir(ctx.node.day, ctx.node.job_id, ctx.node.kind)
        temp = str(ctx.spool.path.relative_to(kind_dir))
        fut = self.gw.writer.submit(jobs.save_partial, ctx.node.job_id, ctx.node.kind, ctx.node.rel,
                                    self.gw_login.name, temp, ctx.spool.size)
        fut.add_done_callback(lambda f: _unlink_replaced(f, kind_dir))
        if resp and resp.startswith("421"):  # the session is closing (a timeout): say so while we can
            self.respond(resp)
        elif resp and not self._closed:
            self._gw_busy = True
            fut.add_done_callback(lambda f: self.gw.call_soon(self._async_done, f, resp))
        self.gw.note(f"FTP {ctx.cmd} {ctx.node.job_id}/{ctx.node.kind}/{ctx.node.rel} interrupted after "
                     f"{ctx.spool.size} bytes: kept for resume by {self.gw_login.name}")

    def ftp_ABOR(self: Any, line: str) -> None:
        self._aborting = True
        try:
            super().ftp_ABOR(line)  # type: ignore[misc]
        finally:
            self._aborting = False
        self._abandon_pending_upload()

    def ftp_SIZE(self: Any, path: str) -> None:
        """A finished file's size, or the size of this login's own interrupted upload of that name."""
        if self._current_type == "a":
            self.respond("550 SIZE not allowed in ASCII mode.")
            return
        fs: VirtualFS = self.fs
        try:
            node = fs.resolve(path)
        except FilesystemError:
            try:
                node = fs.resolve_new(path)
            except (FilesystemError, FtpRefusal):
                self.respond("550 No such file.")
                return
        if node.depth >= 4:
            partial = self.gw.partials.find(self.gw.db, node.job_id, node.kind, node.rel, self.gw_login.name)
            if partial is not None:
                temp = self.gw.storage.kind_dir(node.day, node.job_id, node.kind) / partial["temp_name"]
                if temp.is_file():
                    self.respond(f"213 {temp.stat().st_size}")
                    return
        if node.depth >= 4 and fs.isfile(path):
            self.respond(f"213 {fs.getsize(path)}")
        else:
            self.respond(f"550 {path} is not retrievable.")


def _regular_size(path: Path) -> int | None:
    """The size of a regular file (never through a link), or None."""
    try:
        return finished_stat(path).st_size
    except OSError:
        return None


def log_failure(fut: Any) -> None:
    if fut.exception() is not None:
        log.warning("FTP: a deferred change failed: %s", fut.exception())


def _forget_partial_file(db: Any, job_id: int, kind: str, rel: str, login: str, temp_name: str) -> None:
    """After a discarded resume of a partial, its record goes too (the bytes are gone)."""
    p = jobs.find_partial(db, job_id, kind, rel, login)
    if p is not None and os.path.basename(p["temp_name"]) == temp_name:
        jobs.drop_partial(db, job_id, kind, rel, login)


def _unlink_replaced(fut: Any, kind_dir: Path) -> None:
    if fut.exception() is None and fut.result():
        unlink_quiet(kind_dir / fut.result())
