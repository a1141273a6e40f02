"""Explicit FTPS (AUTH TLS): the TLS context and the data channel that ends uploads honestly.

TLS 1.2 on purpose: data connections then resume the control connection's session inside their
handshake (FileZilla warns when they cannot), and a TLS 1.3 server's post-handshake session
tickets, which clients never read on data connections, would make some of them (lftp) end an
upload with a reset that discards its last bytes.
"""

from __future__ import annotations

import errno
from typing import Any

from OpenSSL import SSL
from pyftpdlib.handlers.ftp.data import DTPHandler
from pyftpdlib.handlers.ftps.ssl import SSLConnectionMixin
from pyftpdlib.ioloop import AsyncChat, _RetryError

from gateway.config import FtpConfig

_RESET = {errno.ECONNRESET, errno.ECONNABORTED, errno.EPIPE, errno.ENOTCONN, errno.ESHUTDOWN}


def tls_context(cfg: FtpConfig) -> SSL.Context:
    ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    ctx.use_certificate_chain_file(cfg.tls_certfile)
    ctx.use_privatekey_file(cfg.tls_keyfile)
    ctx.check_privatekey()
    ctx.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_CIPHER_SERVER_PREFERENCE)
    ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
    ctx.set_max_proto_version(SSL.TLS1_2_VERSION)
    ctx.set_cipher_list(b"ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:!aNULL:!eNULL")
    ctx.set_session_id(b"gateway-ftps")  # one session cache for control and data connections
    ctx.set_session_cache_mode(SSL.SESS_CACHE_SERVER)
    return ctx


class TlsDataMixin:
    """Before SSLConnectionMixin: a reset TLS data connection is an incomplete upload, not its end
    (pyftpdlib turns resets into a normal close); a clean TCP end without close_notify still ends
    the file, as many clients close that way."""

    def __init__(self: Any, sock: Any, cmd_channel: Any) -> None:
        super().__init__(sock, cmd_channel)  # type: ignore[call-arg]
        if self.cmd_channel._prot:
            self.secure_connection(self.cmd_channel.ssl_context)

    def use_sendfile(self: Any) -> bool:
        return False if isinstance(self.socket, SSL.Connection) else DTPHandler.use_sendfile(self)

    def handle_failed_ssl_handshake(self: Any) -> None:
        self.cmd_channel.respond("522 SSL handshake failed.")
        self.close()

    def recv(self: Any, buffer_size: int) -> bytes:
        if not isinstance(self.socket, SSL.Connection):
            return super().recv(buffer_size)  # type: ignore[misc,no-any-return]
        try:
            return AsyncChat.recv(self, buffer_size)  # type: ignore[no-any-return]
        except SSL.WantReadError as err:
            self._ssl_want_read = True
            raise _RetryError from err
        except SSL.WantWriteError as err:
            self._ssl_want_write = True
            raise _RetryError from err
        except SSL.ZeroReturnError:  # close_notify: the client ended the file
            self.handle_close()
            return b""
        except SSL.SysCallError as err:
            errnum, errstr = err.args
            if errnum in _RESET:
                self._gw_failure = ConnectionResetError(errnum, errstr)
                self.handle_close()
                return b""
            if errstr == "Unexpected EOF":
                self.handle_close()
                return b""
            raise


def tls_dtp_class(upload_mixin: type, timeout: float) -> type:
    """TLS first, so that the upload logic runs after the TLS shutdown (the client gets close_notify)."""
    return type("GatewayTLSDTP", (TlsDataMixin, SSLConnectionMixin, upload_mixin, DTPHandler), {"timeout": timeout})
