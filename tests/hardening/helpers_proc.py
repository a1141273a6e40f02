"""Shared helpers of the hardening suite: a real `gateway serve` process and plain blocking clients.

The world of a served gateway (accounts, users, the API client) is made once per test run with the
admin CLI, into a template database that each test copies; every test then starts its own process on
free ports with its own storage. Clients are the standard library's (http.client, ftplib, sockets),
so they can run in plain threads next to the process under test.
"""

from __future__ import annotations

import ftplib
import hashlib
import http.client
import io
import json
import os
import random
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from conftest import ConfigFactory, free_port

GATEWAY = Path(sys.executable).with_name("gateway")
JSON = "application/json"
PASSWORDS = {"alice": "alice-hardening-1", "bob": "bob-hardening-2", "pat": "pat-hardening-3"}
ACCOUNTS = {"alice": "acme", "bob": "globex"}


def clean_env() -> dict[str, str]:
    """The environment without proxies: everything here talks to 127.0.0.1."""
    return {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}


def free_port_range(n: int = 20) -> str:
    """A passive port range "LO-HI" of n ports nobody listens on right now."""
    rng = random.Random()
    for _ in range(200):
        lo = rng.randrange(20000, 60000 - n)
        socks: list[socket.socket] = []
        try:
            for port in range(lo, lo + n):
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                socks.append(s)
                s.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
        return f"{lo}-{lo + n - 1}"
    raise RuntimeError("no free passive port range")


def md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def payload(seed: int, size: int) -> bytes:
    """Reproducible incompressible bytes (each upload distinct)."""
    return random.Random(seed).randbytes(size)


# ----------------------------------------------------------------------------- the CLI and the world

def cli(config: Path, *args: str, stdin: str | None = None) -> dict[str, Any]:
    run = subprocess.run([str(GATEWAY), "--config", str(config), *args], input=stdin, capture_output=True,
                         text=True, timeout=60, check=False, env=clean_env())
    assert run.returncode == 0, f"gateway {' '.join(args)}: {run.stderr}"
    result: dict[str, Any] = json.loads(run.stdout)
    return result


@dataclass
class World:
    client_token: str
    passwords: dict[str, str] = field(default_factory=lambda: dict(PASSWORDS))


_TEMPLATE: dict[str, tuple[Path, World]] = {}


def template_db(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, World]:
    """A database made by the admin CLI (accounts acme and globex, customers alice and bob, processor
    pat, client web, a deadline, a specification), once per run; tests copy it."""
    if "db" not in _TEMPLATE:
        folder = tmp_path_factory.mktemp("world")
        db = folder / "gateway.db"
        cfg = folder / "config.toml"
        cfg.write_text(f'bootstrap_demo = false\n[storage]\nroot = "{folder / "storage"}"\n'
                       f'[database]\npath = "{db}"\n', encoding="utf-8")
        for account in sorted(set(ACCOUNTS.values())):
            cli(cfg, "account", "create", account)
        for login, account in ACCOUNTS.items():
            cli(cfg, "user", "create", "--login", login, "--password-stdin", "--account", account,
                stdin=PASSWORDS[login])
        cli(cfg, "user", "create", "--login", "pat", "--password-stdin", "--processor", stdin=PASSWORDS["pat"])
        token = cli(cfg, "client", "create", "web")["token"]
        cli(cfg, "deadline", "create", "Tomorrow", "--hours", "24")
        cli(cfg, "specification", "create", "--key", "432", "Clipping path")
        _TEMPLATE["db"] = (db, World(token))
    return _TEMPLATE["db"]


# ----------------------------------------------------------------------------- HTTP (blocking)

@dataclass
class HttpReply:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "").split(";")[0].strip().lower()

    def json(self) -> Any:
        return json.loads(self.body)

    def __repr__(self) -> str:
        return f"<HttpReply {self.status} {self.body[:300]!r}>"


def http_call(port: int, method: str, path: str, *, body: bytes | None = None, headers: Mapping[str, str] | None = None,
         timeout: float = 30) -> HttpReply:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=dict(headers or {}))
        resp = conn.getresponse()
        data = resp.read()
        return HttpReply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data)
    finally:
        conn.close()


def multipart(files: Iterable[tuple[str, bytes]], boundary: str = "hardening-boundary-7f3a") -> tuple[bytes, str]:
    """A multipart/form-data body with one `file` part per (filename, bytes), and its Content-Type."""
    out = io.BytesIO()
    for name, data in files:
        out.write(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
                  f"Content-Type: application/octet-stream\r\n\r\n".encode())
        out.write(data)
        out.write(b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue(), f"multipart/form-data; boundary={boundary}"


# ----------------------------------------------------------------------------- FTP (blocking)

def ftp_login(port: int, login: str, password: str, timeout: float = 15) -> ftplib.FTP:
    f = ftplib.FTP()
    try:
        f.connect("127.0.0.1", port, timeout=timeout)
        f.login(login, password)
    except BaseException:
        f.close()  # ftplib keeps the socket of a refused greeting open
        raise
    return f


def ftp_names(f: ftplib.FTP, folder: str) -> set[str]:
    return {name for name, _facts in f.mlsd(folder)} - {".", ".."}


# ----------------------------------------------------------------------------- the process

class Served:
    """One `gateway --config <file> serve` process (own session) with its output in files."""

    def __init__(self, config: Path, folder: Path, name: str, http_port: int, ftp_port: int, world: World) -> None:
        self.config, self.http_port, self.ftp_port, self.world = config, http_port, ftp_port, world
        self.out_path, self.err_path = folder / f"{name}.out", folder / f"{name}.err"
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen([str(GATEWAY), "--config", str(config), "serve"], stdin=subprocess.DEVNULL,
                                         stdout=out, stderr=err, env=clean_env(), start_new_session=True)

    @property
    def output(self) -> str:
        return self.out_path.read_text(errors="replace") + self.err_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"serve exited with {self.proc.returncode}: {self.output[-3000:]}")
            with suppress(OSError, http.client.HTTPException):
                if http_call(self.http_port, "GET", "/health", timeout=2).status in (200, 503):
                    with suppress(OSError), socket.create_connection(("127.0.0.1", self.ftp_port), timeout=2):
                        return
            time.sleep(0.05)
        pytest.fail(f"serve did not answer within {timeout} s: {self.output[-3000:]}")

    def sigkill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self, within: float) -> int:
        """SIGTERM; the exit code, which must come within `within` seconds."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(within)
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running {within} s after SIGTERM: {self.output[-3000:]}")

    # -- calls as a client would make them
    def headers(self, session: str | None = None, **extra: str) -> dict[str, str]:
        h = {"Accept": JSON, "X-Client-Token": self.world.client_token}
        if session is not None:
            h["X-Session-Token"] = session
        h.update(extra)
        return h

    def call(self, method: str, path: str, session: str | None = None, json_body: Any = None,
             timeout: float = 30) -> HttpReply:
        body = None if json_body is None else json.dumps(json_body).encode()
        extra = {} if body is None else {"Content-Type": JSON}
        return http_call(self.http_port, method, path, body=body, headers=self.headers(session, **extra),
                         timeout=timeout)

    def login(self, login: str) -> str:
        r = self.call("POST", "/sessions", json_body={"login": login, "password": self.world.passwords[login]})
        assert r.status == 201, r
        return str(r.json()["token"])

    def create_job(self, session: str, **fields: Any) -> dict[str, Any]:
        r = self.call("POST", "/jobs", session, {"name": "Hardening", "description": "faults", **fields})
        assert r.status == 201, r
        job: dict[str, Any] = r.json()
        return job

    def ftp(self, login: str, timeout: float = 15) -> ftplib.FTP:
        return ftp_login(self.ftp_port, login, self.world.passwords[login], timeout)

    def files(self, session: str, job_id: int, kind: str = "original") -> dict[str, dict[str, Any]]:
        r = self.call("GET", f"/jobs/{job_id}/files?kind={kind}", session)
        assert r.status == 200, r
        return {f["fileName"]: f for f in r.json()["files"]}

    def zip_entries(self, session: str, job_id: int, kind: str = "original") -> dict[str, bytes]:
        """The job's zip, checked with zipfile (every CRC verified): {name: bytes}; {} when none."""
        r = self.call("GET", f"/jobs/{job_id}", session)
        assert r.status == 200, r
        url = r.json()["download"]["getUrl"]
        path = url.split(str(self.http_port), 1)[1] + f"&kind={kind}"
        z = http_call(self.http_port, "GET", path)
        if z.status == 404:
            return {}
        assert z.status == 200, z
        assert int(z.headers["content-length"]) == len(z.body)
        with zipfile.ZipFile(io.BytesIO(z.body)) as zf:
            assert zf.testzip() is None
            return {i.filename: zf.read(i) for i in zf.infolist()}


@dataclass
class ProcSetup:
    config: Path
    db: Path
    storage: Path
    http_port: int
    ftp_port: int
    world: World
    folder: Path


def prepare(config_factory: ConfigFactory, tmp_path_factory: pytest.TempPathFactory,
            settings: Mapping[str, Any] | None = None, folder: Path | None = None) -> ProcSetup:
    """A config on free ports (HTTP, FTP, a passive range) with the CLI-made world copied in."""
    template, world = template_db(tmp_path_factory)
    folder = folder or config_factory.tmp_path
    http_port, ftp_port = free_port(), free_port()
    base = {"http.port": http_port, "ftp.port": ftp_port, "ftp.passive_ports": free_port_range(),
            "security.login_failures": 1000}
    cfg = config_factory.write({**base, **(settings or {})}, folder=folder)
    data = config_factory.data({**base, **(settings or {})}, folder)
    db = Path(data["database"]["path"])
    db.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(template, db)
    key = template.with_name("server.key")  # the server secret lives beside the database
    if key.exists():
        shutil.copy2(key, db.with_name("server.key"))
    return ProcSetup(cfg, db, Path(data["storage"]["root"]), http_port, ftp_port, world, folder)


@contextmanager
def serving(setup: ProcSetup, name: str = "serve") -> Iterator[Served]:
    """A started, answering `gateway serve`; SIGKILLed (with its process group) on the way out."""
    s = Served(setup.config, setup.folder, name, setup.http_port, setup.ftp_port, setup.world)
    try:
        s.wait_ready()
        yield s
    finally:
        s.sigkill()


def integrity_check(db: Path) -> str:
    conn = sqlite3.connect(db)
    try:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        conn.close()


def db_rows(db: Path, sql: str, params: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(db)
    try:
        return list(conn.execute(sql, list(params)))
    finally:
        conn.close()


def job_dir(storage: Path, job: Mapping[str, Any], kind: str = "ORIGINAL") -> Path:
    return storage / str(job["createdDate"])[:10].replace("-", "") / str(job["id"]) / kind


def job_ftp_dir(job: Mapping[str, Any], kind: str = "ORIGINAL") -> str:
    return f"/{str(job['createdDate'])[:10].replace('-', '')}/{job['id']}/{kind}"


def disk_files(folder: Path) -> tuple[dict[str, bytes], set[str]]:
    """({finished name: bytes}, {temp names}) of one kind folder."""
    done, temps = {}, set()
    for p in folder.iterdir():
        if p.name.startswith(".gwtmp-"):
            temps.add(p.name)
        elif p.is_file():
            done[p.name] = p.read_bytes()
    return done, temps
