"""Shared fixtures: configs in tmp_path, a real gateway on 127.0.0.1 with a populated world, leak checks.

Everything here is real: the config is a TOML file read by `load_config`, the app is
`gateway.server.build_app` served by aiohttp on a socket bound by `gateway.server.bind`, the
database is a SQLite file in tmp_path and the world is made by the domain functions through the
process's one writer. Later feature tests (FTP, uploads) extend `Gateway` rather than copy it.
"""

from __future__ import annotations

import base64
import gc
import io
import json
import os
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlencode

import pytest
import sqlite_utils
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from multidict import CIMultiDictProxy

from gateway import accounts, jobs
from gateway.api.keys import SECRET, WRITER
from gateway.config import Config, load_config
from gateway.db import open_db
from gateway.server import addresses_for, bind, build_app

T = TypeVar("T")
JSON = "application/json"
FORM = "application/x-www-form-urlencoded"
VALID_JOB = {"name": "Job of fruits", "description": "Cleap fruits from background"}
PASSWORDS = {
    "alice": "alice-password-1",
    "carol": "carol-password-2",
    "bob": "bob-password-3",
    "pat": "pat-password-4",
}
CUSTOMERS = {"alice": "acme", "carol": "acme", "bob": "globex"}
PROCESSORS = ("pat",)
CLIENTS = ("web", "mobile")
DEFAULT = object()  # "use the gateway's default client token" (None means: send no header)
SQLITE_SUFFIXES = (".db", ".db-wal", ".db-shm", ".db-journal")


# ----------------------------------------------------------------------------- leak checks (STYLE.md, 9)

def _sqlite_fds() -> set[str]:
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.endswith(SQLITE_SUFFIXES):
            found.add(f"{fd} -> {target}")
    return found


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    """Fail a test that leaves threads running or SQLite files open (after a short grace)."""
    threads_before = set(threading.enumerate())
    fds_before = _sqlite_fds()
    yield
    deadline = time.monotonic() + 2.0
    for t in threading.enumerate():
        if t not in threads_before and t is not threading.current_thread():
            t.join(max(0.0, deadline - time.monotonic()))
    leaked = [t.name for t in threading.enumerate() if t not in threads_before and t.is_alive()]
    open_dbs = _sqlite_fds() - fds_before
    if open_dbs:
        gc.collect()  # only what is unreachable may still be closed by the collector
        open_dbs = _sqlite_fds() - fds_before
    problems = []
    if leaked:
        problems.append(f"threads still running: {leaked}")
    if open_dbs:
        problems.append(f"SQLite files still open: {sorted(open_dbs)}")
    if problems:
        pytest.fail("leak: " + "; ".join(problems), pytrace=False)


# ----------------------------------------------------------------------------- config files

def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # JSON string escapes are valid TOML basic-string escapes
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {value!r}")


def toml_text(data: Mapping[str, Any]) -> str:
    """A TOML document from {key: value, section: {key: value}} (top-level keys first)."""
    lines = [f"{k} = {toml_value(v)}" for k, v in data.items() if not isinstance(v, Mapping)]
    for section, values in data.items():
        if isinstance(values, Mapping):
            lines.append(f"\n[{section}]")
            lines += [f"{k} = {toml_value(v)}" for k, v in values.items()]
    return "\n".join(lines) + "\n"


def wait_for_health(proc: subprocess.Popen[Any], port: int, output: Callable[[], str], timeout: float = 30) -> None:
    """Until a `gateway serve` subprocess answers GET /health with 200 (fail with its output if it dies)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"serve exited with {proc.returncode}: {output()[-3000:]}")
        try:
            with opener.open(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except (OSError, urllib.error.URLError):
            pass
        time.sleep(0.05)
    pytest.fail(f"serve did not answer /health within {timeout} s: {output()[-3000:]}")


def free_port() -> int:
    """A port nobody listens on right now (for subprocesses that must bind it themselves)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class ConfigFile:
    path: Path
    config: Config


class ConfigFactory:
    """Writes a config.toml into a folder of tmp_path and loads it with the real loader.

    `settings` are dotted keys ("sessions.lifetime": 0.5, "bootstrap_demo": True) laid over a base
    with storage and database in tmp_path, both ports 0 and bootstrap_demo false; None drops a key.
    """

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path

    def base(self, folder: Path) -> dict[str, Any]:
        return {
            "bootstrap_demo": False,
            "http": {"host": "127.0.0.1", "port": 0},
            "ftp": {"host": "127.0.0.1", "port": 0},
            "storage": {"root": str(folder / "storage_root"), "min_free_bytes": 1 << 20},
            "database": {"path": str(folder / "db" / "gateway.db")},
            "server": {"shutdown_grace": 2},
        }

    def data(self, settings: Mapping[str, Any] | None = None, folder: Path | None = None) -> dict[str, Any]:
        data = self.base(folder or self.tmp_path)
        for dotted, value in (settings or {}).items():
            section, _, key = dotted.rpartition(".")
            table = data.setdefault(section, {}) if section else data
            if value is None:
                table.pop(key, None)
            else:
                table[key] = value
        return data

    def write(self, settings: Mapping[str, Any] | None = None, *, name: str = "config.toml",
              folder: Path | None = None) -> Path:
        folder = folder or self.tmp_path
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / name
        path.write_text(toml_text(self.data(settings, folder)), encoding="utf-8")
        return path

    def __call__(self, settings: Mapping[str, Any] | None = None, *, name: str = "config.toml",
                 folder: Path | None = None) -> ConfigFile:
        path = self.write(settings, name=name, folder=folder)
        return ConfigFile(path, load_config(path))


@pytest.fixture
def config_factory(tmp_path: Path) -> ConfigFactory:
    return ConfigFactory(tmp_path)


# ----------------------------------------------------------------------------- the world

@pytest.fixture(scope="session")
def password_hashes() -> dict[str, str]:
    """Real scrypt hashes, made once per run (each costs tens of milliseconds)."""
    return {login: accounts.hash_password(pw) for login, pw in PASSWORDS.items()}


@dataclass
class World:
    """What `populate` created: accounts by name, users by login, client tokens by client name."""

    accounts: dict[str, dict[str, Any]] = field(default_factory=dict)
    users: dict[str, dict[str, Any]] = field(default_factory=dict)
    clients: dict[str, str] = field(default_factory=dict)
    deadline: dict[str, Any] = field(default_factory=dict)
    specification: dict[str, Any] = field(default_factory=dict)
    passwords: dict[str, str] = field(default_factory=lambda: dict(PASSWORDS))

    def account_id(self, login: str) -> str:
        return str(self.users[login]["accountId"])


def populate(db: sqlite_utils.Database, hashes: Mapping[str, str]) -> World:
    """Accounts acme/globex, customers alice+carol (acme) and bob (globex), processor pat, clients
    web and mobile, one deadline and one specification: all through the domain functions."""
    w = World()
    for name in ("acme", "globex"):
        w.accounts[name] = accounts.create_account(db, name)
    for login, account in CUSTOMERS.items():
        w.users[login] = accounts.create_user(db, login, hashes[login], "customer", account)
    for login in PROCESSORS:
        w.users[login] = accounts.create_user(db, login, hashes[login], "processor", None)
    for name in CLIENTS:
        w.clients[name] = accounts.create_client(db, name)["token"]
    w.deadline = jobs.create_deadline(db, "Tomorrow", 24)
    w.specification = jobs.create_specification(db, 432, "Clipping path")
    return w


# ----------------------------------------------------------------------------- HTTP replies

@dataclass
class Reply:
    """A finished response: status, headers and the whole body."""

    status: int
    headers: CIMultiDictProxy[str]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    @property
    def content_type(self) -> str:
        return self.headers.get("Content-Type", "").split(";")[0].strip().lower()

    def json(self) -> Any:
        return json.loads(self.body)

    def __repr__(self) -> str:
        return f"<Reply {self.status} {self.content_type} {self.text[:300]!r}>"


def assert_error(reply: Reply, status: int, code: str | None = None, **fields: Any) -> dict[str, Any]:
    """The reply is the application's JSON error body with this status (and code and fields)."""
    assert reply.status == status, reply
    assert reply.content_type == JSON, reply
    body = reply.json()
    assert isinstance(body, dict), reply
    assert isinstance(body.get("code"), str) and body["code"], reply
    assert isinstance(body.get("message"), str) and body["message"], reply
    assert body.get("_type") == "ErrorResponseBody", reply
    assert "Traceback" not in reply.text, reply
    if code is not None:
        assert body["code"] == code, reply
    for k, v in fields.items():
        assert body.get(k) == v, f"{k}: {body.get(k)!r} != {v!r} in {reply}"
    return body


# ----------------------------------------------------------------------------- the gateway under test

class Gateway:
    """A running gateway (build_app on a real socket) and helpers to call it as a client would."""

    def __init__(self, config_file: ConfigFile, client: TestClient[Any, Any], world: World | None,
                 ftp_port: int) -> None:
        self.config_path = config_file.path
        self.config = config_file.config
        self.client = client
        self.world = world or World()
        self.ftp_port = ftp_port

    @property
    def app(self) -> web.Application:
        app = self.client.app
        assert isinstance(app, web.Application)
        return app

    @property
    def db_path(self) -> Path:
        return self.config.db_path

    @property
    def storage_root(self) -> Path:
        return self.config.storage_root

    @property
    def public_url(self) -> str:
        return f"http://127.0.0.1:{self.client.port}"

    @property
    def secret(self) -> bytes:
        return bytes(self.app[SECRET])

    # -- database, through the real writer or a reading connection of our own
    async def write(self, fn: Callable[..., T], *args: Any) -> T:
        return await self.app[WRITER].run(fn, *args)

    def read(self, fn: Callable[..., T], *args: Any) -> T:
        db = open_db(self.db_path)
        try:
            return fn(db, *args)
        finally:
            db.close()

    def query(self, sql: str, params: list[Any] | None = None) -> list[dict[str, Any]]:
        return self.read(lambda db: list(db.query(sql, params or [])))

    # -- HTTP
    def headers(self, session: str | None = None, *, client: Any = DEFAULT,
                accept: str | None = JSON) -> dict[str, str]:
        """The headers of a JSON API call: Accept, X-Client-Token and X-Session-Token when given.

        `client` is a world client's name or a raw token; by default the web client; None: no header.
        """
        h: dict[str, str] = {}
        if accept is not None:
            h["Accept"] = accept
        token = self.client_token(client)
        if token is not None:
            h["X-Client-Token"] = token
        if session is not None:
            h["X-Session-Token"] = session
        return h

    async def call(self, method: str, path: str, *, session: str | None = None, client: Any = DEFAULT,
                   accept: str | None = JSON, json_body: Any = DEFAULT,
                   form: Mapping[str, Any] | list[tuple[str, str]] | None = None,
                   data: bytes | None = None, content_type: str | None = None,
                   headers: Mapping[str, str] | None = None) -> Reply:
        """One request; a header given as None is not sent at all (aiohttp adds no default)."""
        h = self.headers(session, client=client, accept=accept)
        body = data
        if json_body is not DEFAULT:
            body = json.dumps(json_body).encode()
            content_type = content_type or JSON
        elif form is not None:
            body = urlencode(form, doseq=True).encode()
            content_type = content_type or FORM
        if content_type is not None:
            h["Content-Type"] = content_type
        h.update(headers or {})
        skip = [name for name in ("Accept", "Content-Type") if name not in h]
        payload: Any = io.BytesIO(body) if body is not None and len(body) > 1 << 20 else body
        async with self.client.request(method, path, headers=h, data=payload, skip_auto_headers=skip,
                                       allow_redirects=False) as resp:
            return Reply(resp.status, resp.headers, await resp.read())

    async def login_reply(self, login: str, password: str | None = None, *, client: Any = DEFAULT) -> Reply:
        pw = self.world.passwords[login] if password is None else password
        return await self.call("POST", "/sessions", client=client, json_body={"login": login, "password": pw})

    async def login(self, login: str, *, client: Any = DEFAULT) -> str:
        """A fresh session token for this user (opened through `client`, default the web client)."""
        r = await self.login_reply(login, client=client)
        assert r.status == 201, r
        return str(r.json()["token"])

    async def session(self, login: str, *, client: str = "web") -> str:
        """A session opened by the domain function through the writer: like a login, without the
        deliberate cost of scrypt (tests of POST /sessions itself use `login`)."""
        def open_session(db: sqlite_utils.Database) -> str:
            user = accounts.get_user(db, login)
            row = next(iter(db.query("select id from clients where name = ?", [client])))
            assert user is not None
            return str(accounts.create_session(db, user["id"], row["id"], self.config.sessions.lifetime)["token"])
        return await self.write(open_session)

    def client_token(self, client: Any) -> Any:
        """DEFAULT -> the web client's token; a world client name -> its token; else as given."""
        if client is DEFAULT:
            return self.world.clients.get("web")
        if isinstance(client, str) and client in self.world.clients:
            return self.world.clients[client]
        return client

    async def post_job(self, session: str, body: Any = DEFAULT, **kw: Any) -> Reply:
        return await self.call("POST", "/jobs", session=session,
                               json_body=dict(VALID_JOB) if body is DEFAULT else body, **kw)

    async def create_job(self, session: str, **fields: Any) -> dict[str, Any]:
        """Create a job through POST /jobs (name and description defaulted) and return its body."""
        r = await self.post_job(session, {**VALID_JOB, **fields})
        assert r.status == 201, r
        body: dict[str, Any] = r.json()
        return body

    def job_dir(self, job: Mapping[str, Any], kind: str) -> Path:
        day = str(job["createdDate"])[:10].replace("-", "")
        return self.storage_root / day / str(job["id"]) / kind


GatewayFactory = Callable[..., Awaitable[Gateway]]


@pytest.fixture
async def gateway_factory(config_factory: ConfigFactory, aiohttp_client: Any,
                          password_hashes: dict[str, str]) -> AsyncIterator[GatewayFactory]:
    """`await gateway_factory(settings, world=True, ftp=False)`: a gateway served on 127.0.0.1 (port 0).

    The HTTP socket is bound first (gateway.server.bind) so the addresses the app hands out name
    its real port; the FTP socket is bound the same way and, with ftp=True, the app's FTP service
    (its own thread) serves it. FTP clients (ftplib, curl, lftp) may block the test's event loop:
    the FTP thread and the writer never need it.
    """
    reserved: list[socket.socket] = []

    async def make(settings: Mapping[str, Any] | None = None, *, world: bool = True,
                   folder: Path | None = None, ftp: bool = False) -> Gateway:
        cf = config_factory(settings, folder=folder)
        cfg = cf.config
        http_sock = bind(cfg.http.host, cfg.http.port)
        ftp_sock = bind(cfg.ftp.host, cfg.ftp.port)
        reserved.append(ftp_sock)
        ftp_port = ftp_sock.getsockname()[1]
        addrs = addresses_for(cfg, http_sock.getsockname()[1], ftp_port)
        app = build_app(cfg, addrs, ftp_sock if ftp else None)
        server = TestServer(app, host=cfg.http.host, socket_factory=lambda *_: http_sock)
        client = await aiohttp_client(server)
        gw = Gateway(cf, client, None, ftp_port)
        if world:
            gw.world = await gw.write(populate, password_hashes)
        return gw

    yield make
    for s in reserved:
        s.close()


@pytest.fixture
async def gw(gateway_factory: GatewayFactory) -> Gateway:
    """The default gateway with its world."""
    return await gateway_factory()


def token_bytes(token: str) -> bytes:
    """The raw bytes of a URL-safe base64 token."""
    return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))


@pytest.fixture
async def ftp_gw(gateway_factory: GatewayFactory) -> Gateway:
    """The default gateway with its world and its FTP server."""
    return await gateway_factory(ftp=True)
