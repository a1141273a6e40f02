"""FTP replies for refusals and failures (one place maps domain errors to reply codes)."""

from __future__ import annotations

import logging
import os

from pyftpdlib.exceptions import FilesystemError

from gateway.errors import GatewayError, InvalidParameter

log = logging.getLogger("gateway.ftp")


class FtpRefusal(Exception):
    """An FTP reply other than 550 (553 for names, 552 for space): carries the whole reply line."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{code} {message}")
        self.code, self.message = code, message


def refusal(err: GatewayError) -> FtpRefusal:
    if isinstance(err, InvalidParameter):
        return FtpRefusal(553, f"File name not allowed: {err.reason}.")
    return FtpRefusal(err.ftp_code, err.message)


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
