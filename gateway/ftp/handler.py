"""make_handler(service) -> a per-server FTPHandler subclass: async logins, atomic uploads, 226 as a promise.

Uploads go to a hidden spool beside the final name; when the client closes the data connection the
spool's hash catches up, the writer renames it into place and records it, and only then is 226
sent. Until that reply, further commands on the session wait in order (never run early).
"""

from __future__ import annotations

import calendar
import errno
import logging
import os
import select
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyftpdlib.exceptions import FilesystemError
from pyftpdlib.handlers import FTPHandler
from pyftpdlib.handlers.ftp.data import DTPHandler
from pyftpdlib.ioloop import AsyncChat, _RetryError
from pyftpdlib.utils import is_ssl_sock

from gateway import accounts, jobs
from gateway.errors import GatewayError, InvalidParameter
from gateway.ftp.authorizer import DbAuthorizer, FtpLogin, check_job_password, lookup
from gateway.ftp.filesystem import FtpRefusal, Node, VirtualFS
from gateway.ftp.service import FtpService
from gateway.storage import Spool, finished_stat

log = logging.getLogger("gateway.ftp")
BUFFER = 1 << 20
MAX_DEFERRED = 64
MAX_LINE = 2048
CHECKED_COMMANDS = {"STOR", "APPE", "RETR", "DELE", "RNFR", "RNTO", "MKD", "XMKD", "RMD", "XRMD", "MFMT"}
NAMING_COMMANDS = {"STOR", "APPE", "MKD", "XMKD", "RNTO"}
_DISCONNECTED = {errno.ECONNRESET, errno.ECONNABORTED, errno.EPIPE, errno.ENOTCONN, errno.ESHUTDOWN}


def reply_for(exc: BaseException) -> str:
    """The FTP reply line for a failure."""
    if isinstance(exc, FtpRefusal):
        return f"{exc.code} {exc.message}"
    if isinstance(exc, InvalidParameter):
        return f"553 File name not allowed: {exc.reason}."
    if isinstance(exc, GatewayError):
        return f"{exc.ftp_code} {exc.message}"
    if isinstance(exc, FilesystemError):
        return f"550 {str(exc).rstrip('.')}."
    if isinstance(exc, FileNotFoundError):
        return "550 No such file or directory."
    if isinstance(exc, OSError):
        return f"550 {os.strerror(exc.errno) if exc.errno else exc}."
    log.error("FTP operation failed", exc_info=exc)
    return "451 Internal error; nothing was changed."


@dataclass
class UploadCtx:
    node: Node
    spool: Spool
    cmd: str
    started: float


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

    def recv(self: Any, buffer_size: int) -> bytes | memoryview:
        if is_ssl_sock(self.socket):
            return super().recv(buffer_size)  # type: ignore[misc,no-any-return]
        buf = self.__dict__.get("_gw_buf")
        if buf is None:  # one buffer per data connection: no 1 MiB allocation per read
            buf = self._gw_buf = bytearray(BUFFER)
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
        return memoryview(buf)[:n]  # written out before the next read reuses the buffer

    def close(self: Any) -> None:
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


class GatewayHandlerMixin:
    """Control channel: logins off the loop, virtual paths, atomic uploads, HASH/XMD5."""

    gw: FtpService
    gw_login: FtpLogin | None = None
    auth_failed_timeout = 1.0

    def __init__(self: Any, conn: Any, server: Any, ioloop: Any = None) -> None:
        self._gw_busy = False
        self._gw_overlong = False
        self._gw_checked = 0.0
        self._deferred: deque[tuple[str, str, str]] = deque()
        self._aborting = False
        self._upload: UploadCtx | None = None
        self._committing: jobs.Upload | None = None
        super().__init__(conn, server, ioloop)  # type: ignore[call-arg]
        self._extra_feats = [*getattr(self, "_extra_feats", []), "HASH MD5*"]

    # -- session state
    def gw_busy(self: Any) -> bool:
        """A transfer or its completion is running (shutdown waits for these)."""
        return bool(self.data_channel is not None or self._upload is not None or self._gw_busy)

    def on_connect(self: Any) -> None:
        if self.gw.stopping:
            self.respond("421 Server shutting down; try again later.")
            self.close_when_done()
        elif self.gw.guard.banned(self.remote_ip):
            self.respond("421 Too many failed logins from your address; try again later.")
            self.close_when_done()

    def respond(self: Any, resp: str, logfun: Any = None) -> None:
        if not self._closed:
            super().respond(resp, logfun or logging.getLogger("pyftpdlib").debug)  # type: ignore[misc]

    def collect_incoming_data(self: Any, data: bytes) -> None:
        if self._gw_overlong:
            return  # the rest of a refused line: dropped up to its end
        self._in_buffer.append(data)
        self._in_buffer_len += len(data)
        if self._in_buffer_len > MAX_LINE:
            self.respond("500 Command too long.")
            self._in_buffer.clear()
            self._in_buffer_len, self._gw_overlong = 0, True

    def found_terminator(self: Any) -> None:
        if self._gw_overlong:  # one reply per line, even for a line that was too long
            self._in_buffer.clear()
            self._in_buffer_len, self._gw_overlong = 0, False
            return
        super().found_terminator()  # type: ignore[misc]

    def _login_still_valid(self: Any, cmd: str) -> bool:
        """A user disabled (or a per-job login's job archived) while connected loses the session: at
        its next transfer or change, or within a second for anything else."""
        now = time.monotonic()
        if cmd not in CHECKED_COMMANDS and now - self._gw_checked < 1.0:
            return True
        self._gw_checked = now
        login = self.gw_login
        if login.role == "job":
            job = jobs.get_job(self.gw.db, login.job_id)
            return job is not None and job["status"] != jobs.ARCHIVED
        user = accounts.get_user(self.gw.db, login.name)
        return user is not None and not user["disabled"]

    def pre_process_command(self: Any, line: str, cmd: str, arg: str) -> None:
        if self.authenticated and self.gw_login is not None and not self._login_still_valid(cmd):
            self.respond("421 This login was disabled; the session ends.")
            self.close_when_done()
            return
        if self._gw_busy:
            if len(self._deferred) >= MAX_DEFERRED:
                self.respond("421 Too many commands while busy.")
                self.close_when_done()
                return
            self._deferred.append((line, cmd, arg))
            return
        if self.authenticated and not self.pre_process_command_raw_check(cmd, arg):
            return
        super().pre_process_command(line, cmd, arg)  # type: ignore[misc]

    def _resume(self: Any) -> None:
        self._gw_busy = False
        while self._deferred and not self._gw_busy and not self._closed:
            line, cmd, arg = self._deferred.popleft()
            GatewayHandlerMixin.pre_process_command(self, line, cmd, arg)

    def pre_process_command_raw_check(self: Any, cmd: str, arg: str) -> bool:
        """'.' and '..' as the name to create are refused as names (553), before path normalisation."""
        if cmd in NAMING_COMMANDS and arg and arg.rstrip("/").rsplit("/", 1)[-1] in (".", "..", ""):
            self.respond("553 File name not allowed: '.' and '..' are not names.")
            return False
        return True

    def process_command(self: Any, cmd: str, *args: Any, **kwargs: Any) -> None:
        try:
            super().process_command(cmd, *args, **kwargs)  # type: ignore[misc]
        except (FtpRefusal, GatewayError, FilesystemError, OSError) as e:
            self.respond(reply_for(e))

    def flush_account(self: Any) -> None:
        self._abandon_pending_upload()
        super().flush_account()  # type: ignore[misc]
        self.gw_login = None

    def close(self: Any) -> None:
        if not self._closed:
            self._abandon_pending_upload()
            if self._committing is not None and self._committing.gone is not None:
                self._committing.gone.set()  # the commit still queued keeps the bytes as a partial instead
        super().close()  # type: ignore[misc]

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

    def _async(self: Any, ok: str, fn: Any, *args: Any) -> None:
        """Run fn(db, *args) on the writer; answer ok (or the failure) when it is durable."""
        self._gw_busy = True
        fut = self.gw.writer.submit(fn, *args)
        fut.add_done_callback(lambda f: self.gw.call_soon(self._async_done, f, ok))

    def _async_done(self: Any, fut: Any, ok: str) -> None:
        exc = fut.exception()
        self.respond(ok if exc is None else reply_for(exc))
        self._resume()

    # -- logins: human passwords are checked on a worker thread, never on the FTP loop
    def ftp_PASS(self: Any, line: str) -> None:
        if self.authenticated:
            self.respond("503 User already authenticated.")
            return
        if not self.username:
            self.respond("503 Login with USER first.")
            return
        if self.gw.guard.banned(self.remote_ip):
            self.respond("421 Too many failed logins from your address; try again later.")
            self.close_when_done()
            return
        login, stored = lookup(self.gw.db, self.username)
        self._gw_busy = True
        if login is not None and login.role == "job":
            self._auth_done(login if check_job_password(line, stored) else None, line)
            return
        fut = self.gw.executor.submit(accounts.verify_password, line, stored)
        fut.add_done_callback(lambda f: self.gw.call_soon(
            self._auth_done, login if (not f.exception() and f.result() and login) else None, line))

    def _auth_done(self: Any, login: FtpLogin | None, password: str) -> None:
        if self._closed:
            return
        if self.gw.guard.banned(self.remote_ip):  # banned while this guess was checked: no verdict
            self.respond("421 Too many failed logins from your address; try again later.")
            self.close_when_done()
            return
        if login is None:
            banned = self.gw.guard.failed(self.remote_ip)
            log.warning("FTP login failed for %r from %s%s", self.username, self.remote_ip,
                        " (address banned)" if banned else "")
            self.username = ""
            self.call_later(self.auth_failed_timeout, self._auth_failed, banned)
            return
        self.gw_login = login
        self.handle_auth_success("/", password, "Login successful.")
        self._resume()

    def _auth_failed(self: Any, banned: bool) -> None:
        self.attempted_logins += 1
        if banned:
            self.respond("421 Too many failed logins from your address; try again later.")
            self.close_when_done()
        elif self.attempted_logins >= self.max_login_attempts:
            self.respond("530 Authentication failed. Disconnecting.")
            self.close_when_done()
        else:
            self.respond("530 Authentication failed.")
            self._resume()

    # -- uploads
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
        partial = jobs.find_partial(self.gw.db, node.job_id, node.kind, node.rel, login.name)
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
        ctx.spool.when_hashed(lambda _s: self.gw.call_soon(self._upload_hashed, ctx))  # small files: at once

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
        fut = self.gw.writer.submit(jobs.commit_upload_tentative, self.gw.storage, up)
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
            self.gw.busy_temps.discard(ctx.spool.path)
            self.gw.writer.submit(jobs.withdraw_upload, self.gw.storage, up, fut.result()).add_done_callback(
                _log_failure)
            log.info("FTP %s %s/%s/%s: the client left before its 226; kept for resume by %s", ctx.cmd,
                     ctx.node.job_id, ctx.node.kind, ctx.node.rel, self.gw_login.name)
            return
        else:
            done: jobs.Committed = fut.result()
            if done.backup is not None:
                self.gw.executor.submit(_unlink_quiet, done.backup)
            self.gw.busy_temps.discard(ctx.spool.path)
            log.info("FTP %s %s/%s/%s %d bytes by %s in %.2fs", ctx.cmd, ctx.node.job_id, ctx.node.kind,
                     ctx.node.rel, ctx.spool.size, self.gw_login.name, time.monotonic() - ctx.started)
            self.respond("226 Transfer complete.")
        self._resume()

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
        log.info("FTP %s %s/%s/%s interrupted after %d bytes: kept for resume by %s", ctx.cmd,
                 ctx.node.job_id, ctx.node.kind, ctx.node.rel, ctx.spool.size, self.gw_login.name)

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
            partial = jobs.find_partial(self.gw.db, node.job_id, node.kind, node.rel, self.gw_login.name)
            if partial is not None:
                temp = self.gw.storage.kind_dir(node.day, node.job_id, node.kind) / partial["temp_name"]
                if temp.is_file():
                    self.respond(f"213 {temp.stat().st_size}")
                    return
        if node.depth >= 4 and fs.isfile(path):
            self.respond(f"213 {fs.getsize(path)}")
        else:
            self.respond(f"550 {path} is not retrievable.")

    # -- changes recorded by the writer
    def _existing_file(self: Any, path: str) -> Node:
        node: Node = self.fs.resolve(path)
        if node.depth < 4:
            raise FilesystemError("Permission denied: this folder belongs to the job")
        self.fs.writable(node)
        return node

    def ftp_DELE(self: Any, path: str) -> None:
        node = self._existing_file(path)
        if not self.fs.isfile(path):
            raise FilesystemError("Is a directory: use RMD" if self.fs.isdir(path) else "No such file")
        self._async("250 File removed.", jobs.delete_file, self.gw.storage, node.job_id, node.kind, node.rel)

    def ftp_RNFR(self: Any, path: str) -> None:
        self._existing_file(path)
        if not self.fs.lexists(path):
            raise FilesystemError("No such file or directory")
        self._rnfr = path
        self.respond("350 Ready for destination name.")

    def ftp_RNTO(self: Any, path: str) -> None:
        src, self._rnfr = self._rnfr, None
        if not src:
            self.respond("503 Bad sequence of commands: use RNFR first.")
            return
        s = self._existing_file(src)
        d = self.fs.resolve_new(path)
        if d.job is None or d.job_id != s.job_id or d.kind != s.kind:
            raise FtpRefusal(553, "Renaming works only inside one folder tree (ORIGINAL/ or CLIPPED/) of a job.")
        self.fs.writable(d)
        self._async("250 Renaming ok.", jobs.rename_path, self.gw.storage, s.job_id, s.kind, s.rel, d.rel)

    def ftp_MFMT(self: Any, path: str, timeval: str) -> None:
        """Set a file's time (clients send MFMT after every STOR). The disk changes at once, so the
        session reads its own change; the record follows through the writer without a wait."""
        try:
            mtime = calendar.timegm(time.strptime(timeval, "%Y%m%d%H%M%S"))
        except ValueError:
            self.respond("501 Invalid time format; expected: YYYYMMDDHHMMSS.")
            return
        node = self._existing_file(path)
        if not self.fs.isfile(path):
            raise FilesystemError("Not a file")
        os.utime(node.real, (mtime, mtime), follow_symlinks=False)
        fut = self.gw.writer.submit(jobs.record_mtime, node.job_id, node.kind, node.rel,
                                    os.lstat(node.real).st_mtime_ns)
        fut.add_done_callback(_log_failure)
        self.respond(f"213 Modify={timeval}; {path}.")

    def ftp_SITE_CHMOD(self: Any, path: str, mode: str) -> None:
        self.respond("550 Permission denied: modes are fixed.")

    # -- checksums from the record
    def _recorded(self: Any, path: str) -> dict[str, Any]:
        node: Node = self.fs.resolve(path)
        if node.depth < 4 or not self.fs.isfile(path):
            raise FilesystemError("Not a file")
        rec = jobs.file_record(self.gw.db, node.job_id, node.kind, node.rel)
        if rec is None or rec["size"] != self.fs.getsize(path):
            raise FilesystemError("No checksum recorded for this file")
        return rec

    def ftp_HASH(self: Any, path: str) -> None:
        rec = self._recorded(path)
        self.respond(f"213 MD5 0-{rec['size']} {rec['md5']} {path}")

    def ftp_XMD5(self: Any, path: str) -> None:
        self.respond(f"250 {self._recorded(path)['md5']}")

    def ftp_OPTS(self: Any, line: str) -> None:
        cmd, _, arg = line.strip().partition(" ")
        if cmd.upper() != "HASH":
            super().ftp_OPTS(line)  # type: ignore[misc]
        elif arg.strip().upper() in ("", "MD5"):
            self.respond("200 MD5")
        else:
            self.respond("501 MD5 is the only hash algorithm supported.")


def _regular_size(path: Path) -> int | None:
    """The size of a regular file (never through a link), or None."""
    try:
        return finished_stat(path).st_size
    except OSError:
        return None


def _unlink_quiet(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _log_failure(fut: Any) -> None:
    if fut.exception() is not None:
        log.warning("FTP: a deferred change failed: %s", fut.exception())


def _forget_partial_file(db: Any, job_id: int, kind: str, rel: str, login: str, temp_name: str) -> None:
    """After a discarded resume of a partial, its record goes too (the bytes are gone)."""
    p = jobs.find_partial(db, job_id, kind, rel, login)
    if p is not None and os.path.basename(p["temp_name"]) == temp_name:
        jobs.drop_partial(db, job_id, kind, rel, login)


def _unlink_replaced(fut: Any, kind_dir: Any) -> None:
    if fut.exception() is None and fut.result():
        try:
            os.unlink(kind_dir / fut.result())
        except FileNotFoundError:
            pass


EXTRA_COMMANDS = {
    "HASH": {"perm": "r", "auth": True, "arg": True, "help": "Syntax: HASH <SP> file-name (MD5 of a file)."},
    "XMD5": {"perm": "r", "auth": True, "arg": True, "help": "Syntax: XMD5 <SP> file-name (MD5 of a file)."},
}


def make_handler(gw: FtpService) -> type:
    """A handler class for this server only: pyftpdlib's options are class attributes, never set globally."""
    cfg = gw.config.ftp
    lo, hi = cfg.passive_range
    attrs: dict[str, Any] = {
        "gw": gw,
        "authorizer": DbAuthorizer(),
        "abstracted_fs": VirtualFS,
        "timeout": cfg.idle_timeout,
        "passive_ports": list(range(lo, hi + 1)),
        "masquerade_address": cfg.masquerade_address or None,
        "banner": "gateway FTP server ready.",
        "max_login_attempts": 3,
        "use_sendfile": True,
    }
    if cfg.tls:
        from pyftpdlib.handlers import TLS_FTPHandler

        from gateway.ftp.tls import tls_context, tls_dtp_class

        base: type = TLS_FTPHandler
        dtp = tls_dtp_class(UploadDTPMixin, cfg.idle_timeout)
        attrs.update({"ssl_context": tls_context(cfg), "tls_control_required": cfg.tls_required,
                      "tls_data_required": cfg.tls_required, "certfile": cfg.tls_certfile,
                      "keyfile": cfg.tls_keyfile})
    else:
        base = FTPHandler
        dtp = type("GatewayDTP", (UploadDTPMixin, DTPHandler), {"timeout": cfg.idle_timeout})
    attrs["dtp_handler"] = dtp
    attrs["proto_cmds"] = {**base.proto_cmds, **EXTRA_COMMANDS}  # type: ignore[attr-defined]
    return type("GatewayFTPHandler", (GatewayHandlerMixin, base), attrs)
