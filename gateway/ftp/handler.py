"""make_handler(service) -> a per-server FTPHandler subclass: the control channel of a session.

Logins are checked off the FTP loop, paths go through the login's virtual filesystem, changes go
through the single writer, and while an answer waits for one of them (a login, a commit, a rename)
the session's next commands wait in order: nothing runs early. Uploads live in uploads.py, the
data channel in data.py, FTPS in tls.py.
"""

from __future__ import annotations

import calendar
import datetime
import logging
import os
import stat
import time
from collections import deque
from typing import Any

from pyftpdlib.exceptions import FilesystemError
from pyftpdlib.handlers import FTPHandler

from gateway import accounts, jobs
from gateway.errors import GatewayError
from gateway.ftp.authorizer import DbAuthorizer, FtpLogin, check_job_password, lookup
from gateway.ftp.data import UploadDTPMixin, plain_dtp_class
from gateway.ftp.filesystem import Node, VirtualFS
from gateway.ftp.replies import FtpRefusal, reply_for
from gateway.ftp.service import FtpService
from gateway.ftp.uploads import UploadsMixin

log = logging.getLogger("gateway.ftp")
_PYFTPDLIB_LOG = logging.getLogger("pyftpdlib")
_REPLY_LOG = _PYFTPDLIB_LOG.debug
MAX_DEFERRED = 64
MAX_LINE = 2048
NAMING_COMMANDS = {"STOR", "APPE", "MKD", "XMKD", "RNTO"}


class GatewayHandlerMixin(UploadsMixin):
    """Control channel: logins off the loop, virtual paths, changes through the writer, HASH/XMD5."""

    gw: FtpService
    gw_login: FtpLogin | None = None
    auth_failed_timeout = 1.0

    def __init__(self: Any, conn: Any, server: Any, ioloop: Any = None) -> None:
        self._gw_busy = False
        self._gw_overlong = False
        self._gw_checked, self._gw_epoch = 0.0, -1  # when and at which LOGINS_CHANGED the login was read
        self._deferred: deque[tuple[str, str, str]] = deque()
        self._aborting = False
        self._upload = None
        self._committing = None
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
        if self._unconfirmed is not None:  # the server speaks again (a timeout, a shutdown): it was read
            self.gw_settle_226()
        if self._closed:
            return
        if logfun is None and not _PYFTPDLIB_LOG.isEnabledFor(logging.DEBUG):
            # pyftpdlib's respond() formats a log line for every reply (its session prefix from the
            # handler's __dict__) and hands it to a disabled debug logger: 4 replies per uploaded file
            self._last_response = resp
            self.push(resp + "\r\n")
            return
        super().respond(resp, logfun or _REPLY_LOG)  # type: ignore[misc]

    def log_transfer(self: Any, *args: Any, **kwargs: Any) -> None:
        if _PYFTPDLIB_LOG.isEnabledFor(logging.INFO):  # uploads get our own line (FtpService.note)
            super().log_transfer(*args, **kwargs)  # type: ignore[misc]

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
        if self._unconfirmed is not None:  # a command after an upload's 226: the client read it
            self.gw_settle_226()
        if self._gw_overlong:  # one reply per line, even for a line that was too long
            self._in_buffer.clear()
            self._in_buffer_len, self._gw_overlong = 0, False
            return
        super().found_terminator()  # type: ignore[misc]

    def _login_still_valid(self: Any, cmd: str) -> bool:
        """A user disabled (or a per-job login's job archived) while connected loses the session at its
        next command. The database is read again when accounts.LOGINS_CHANGED moved (every such change
        made by this process or the admin CLI moves it before it is reported done), and at least once a
        second (a change made behind the gateway's back)."""
        now = time.monotonic()
        epoch = accounts.LOGINS_CHANGED.value
        if epoch == self._gw_epoch and now - self._gw_checked < 1.0:
            return True
        self._gw_checked, self._gw_epoch = now, epoch  # seen before the read: a change meanwhile moves it
        login = self.gw_login
        if login.role == "job":
            job = self.gw.jobs.get(self.gw.db, login.job_id)
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
            if self._unconfirmed is not None:
                self.gw_settle_226(closing=True)
            self._abandon_pending_upload()
            if self._committing is not None and self._committing.gone is not None:
                self._committing.gone.set()  # the commit still queued keeps the bytes as a partial instead
        super().close()  # type: ignore[misc]

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
        mtime_ns = parse_mfmt_time(timeval)
        if mtime_ns is None:
            self.respond("501 Invalid time format; expected: YYYYMMDDHHMMSS.")
            return
        node = self._existing_file(path)
        try:
            st = os.lstat(node.real)
        except FileNotFoundError:
            raise FilesystemError("No such file") from None
        if not stat.S_ISREG(st.st_mode):
            raise FilesystemError("Not a file")
        os.utime(node.real, ns=(mtime_ns, mtime_ns), follow_symlinks=False)
        # the record follows without a transaction of its own: with the writer's next batch (before any
        # later change, so a rename or a zip check after it sees the new time), at the latest in 0.1 s
        self.gw.writer.defer(jobs.record_mtime, node.job_id, node.kind, node.rel, mtime_ns)
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


def parse_mfmt_time(timeval: str) -> int | None:
    """YYYYMMDDHHMMSS[.fraction] (UTC, RFC 3659) as nanoseconds since the epoch; None when invalid."""
    whole, dot, frac = timeval.partition(".")
    if len(whole) != 14 or not (whole.isascii() and whole.isdigit()):
        return None
    if dot and not (frac.isascii() and frac.isdigit() and 1 <= len(frac) <= 9):
        return None
    try:
        when = datetime.datetime(int(whole[:4]), int(whole[4:6]), int(whole[6:8]), int(whole[8:10]),
                                 int(whole[10:12]), int(whole[12:]), tzinfo=datetime.UTC)
    except ValueError:
        return None
    return calendar.timegm(when.utctimetuple()) * 1_000_000_000 + int(frac.ljust(9, "0") if frac else 0)


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
        dtp = plain_dtp_class(cfg.idle_timeout)
    attrs["dtp_handler"] = dtp
    attrs["proto_cmds"] = {**base.proto_cmds, **EXTRA_COMMANDS}  # type: ignore[attr-defined]
    return type("GatewayFTPHandler", (GatewayHandlerMixin, base), attrs)
