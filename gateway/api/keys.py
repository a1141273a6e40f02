"""Typed keys for what the application shares (no module globals)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import sqlite_utils
from aiohttp import web

from gateway.accounts import LoginGuard, SessionCache
from gateway.config import Config
from gateway.db import Writer
from gateway.storage import HashPool, Storage


@dataclass(frozen=True)
class Addresses:
    """Where clients reach this process (ports known only once the sockets are bound)."""

    public_url: str
    ftp_host: str
    ftp_port: int

    def ftp_base(self) -> str:
        port = "" if self.ftp_port == 21 else f":{self.ftp_port}"
        return f"ftp://{self.ftp_host}{port}"


@dataclass
class Lifecycle:
    """Draining on SIGTERM: new requests are answered 503 while the running ones finish."""

    draining: bool = False
    active: int = 0


CONFIG = web.AppKey("config", Config)
LIFECYCLE = web.AppKey("lifecycle", Lifecycle)
ADDRESSES = web.AppKey("addresses", Addresses)
DB = web.AppKey("db", sqlite_utils.Database)  # the loop thread's reading connection
WRITER = web.AppKey("writer", Writer)
STORAGE = web.AppKey("storage", Storage)
SECRET = web.AppKey("secret", bytes)
GUARD = web.AppKey("login_guard", LoginGuard)
EXECUTOR = web.AppKey("executor", ThreadPoolExecutor)
HASHERS = web.AppKey("hashers", HashPool)  # shared with the FTP service
SESSIONS = web.AppKey("sessions", SessionCache)  # the loop's cache of session checks
