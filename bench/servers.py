"""The servers under test, each started in its own process group on 127.0.0.1 with its storage in the
run's work folder: the gateway (through its admin CLI and `serve`), bare pyftpdlib, bare aiohttp,
vsftpd (a throw-away local user) and nginx (its own prefix and config)."""

from __future__ import annotations

import contextlib
import ftplib
import json
import os
import pwd
import re
import secrets
import subprocess
import sys
import tomllib
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.proc import LOCAL, BenchError, Procs, free_port, free_range, run, tool_path, wait_port

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
PASSWORD = "bench-password-1"


@dataclass
class FtpTarget:
    """Where one FTP server takes uploads: login, remote folder, and that folder on disk."""

    name: str
    port: int
    user: str
    password: str
    remote_dir: str  # absolute FTP path, no trailing slash ("" for the login's home)
    local_dir: Path
    pid: int

    def url(self, name: str = "") -> str:
        return f"ftp://{LOCAL}:{self.port}{self.remote_dir}/{name}"

    def ftplib(self) -> ftplib.FTP:
        ftp = ftplib.FTP()
        ftp.connect(LOCAL, self.port, timeout=30)
        ftp.login(self.user, self.password)
        return ftp

    def remove(self, names: list[str]) -> None:
        """Delete uploaded files (not timed). On disk for the references; by DELE for the gateway."""
        for n in names:
            with contextlib.suppress(FileNotFoundError):
                (self.local_dir / n).unlink()


class GatewayFtpTarget(FtpTarget):
    def remove(self, names: list[str]) -> None:
        if not names:
            return
        ftp = self.ftplib()
        try:
            for n in names:
                with contextlib.suppress(ftplib.error_perm):
                    ftp.delete(f"{self.remote_dir}/{n}")
        finally:
            with contextlib.suppress(Exception):
                ftp.quit()


# ----------------------------------------------------------------------------- HTTP helpers (stdlib)

def http_json(method: str, url: str, headers: dict[str, str], body: Any = None,
              timeout: float = 30) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            raw = r.read()
            status = r.status
    except urllib.error.HTTPError as e:
        raw, status = e.read(), e.code
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, raw.decode(errors="replace")


# ----------------------------------------------------------------------------- the gateway

def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(v)


def toml_text(data: dict[str, Any]) -> str:
    lines = [f"{k} = {_toml_value(v)}" for k, v in data.items() if not isinstance(v, dict)]
    for section, table in data.items():
        if isinstance(table, dict):
            lines.append(f"\n[{section}]")
            lines += [f"{k} = {_toml_value(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


@dataclass
class Gateway:
    """The gateway process with a customer (alice), a processor (pat) and an API client token."""

    procs: Procs
    folder: Path
    http_port: int = 0
    ftp_port: int = 0
    pid: int = 0
    client_token: str = ""
    session: str = ""
    config_path: Path = field(default_factory=Path)
    proc: subprocess.Popen[Any] | None = None

    @property
    def base(self) -> str:
        return f"http://{LOCAL}:{self.http_port}"

    @property
    def storage(self) -> Path:
        return self.folder / "storage"

    def cli(self, *args: str, stdin: str | None = None) -> dict[str, Any]:
        r = run([str(VENV_BIN / "gateway"), "--config", str(self.config_path), *args], timeout=60, input=stdin)
        return json.loads(r.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]

    def start(self) -> None:
        base = tomllib.loads((REPO / "config.toml").read_text())
        lo, hi = free_range(160)
        self.http_port, self.ftp_port = free_port(), free_port()
        base["bootstrap_demo"] = False
        base["http"]["port"] = self.http_port
        base["ftp"]["port"] = self.ftp_port
        base["ftp"]["passive_ports"] = f"{lo}-{hi}"
        base["storage"]["root"] = str(self.storage)
        base["database"]["path"] = str(self.folder / "db" / "gateway.db")
        base["server"]["shutdown_grace"] = 3
        self.folder.mkdir(parents=True, exist_ok=True)
        self.config_path = self.folder / "config.toml"
        self.config_path.write_text(toml_text(base))
        self.cli("account", "create", "acme")
        self.cli("user", "create", "--login", "alice", "--password-stdin", "--account", "acme", stdin=PASSWORD)
        self.cli("user", "create", "--login", "pat", "--password-stdin", "--processor", stdin=PASSWORD)
        self.client_token = self.cli("client", "create", "bench")["token"]
        self.proc = self.procs.start("gateway", [str(VENV_BIN / "gateway"), "--config", str(self.config_path),
                                                 "serve"], cwd=self.folder)
        self.pid = self.proc.pid
        wait_port(self.http_port, self.proc, what="gateway (HTTP)")
        wait_port(self.ftp_port, self.proc, what="gateway (FTP)")
        self.session = self.login("alice")

    def headers(self, session: str | None = None) -> dict[str, str]:
        h = {"Accept": "application/json", "Content-Type": "application/json", "X-Client-Token": self.client_token}
        if session or self.session:
            h["X-Session-Token"] = session or self.session
        return h

    def login(self, user: str) -> str:
        h = {"Accept": "application/json", "Content-Type": "application/json", "X-Client-Token": self.client_token}
        status, body = http_json("POST", f"{self.base}/sessions", h, {"login": user, "password": PASSWORD})
        if status != 201:
            raise BenchError(f"POST /sessions answered {status}: {body}")
        return str(body["token"])

    def new_job(self, name: str = "bench") -> dict[str, Any]:
        status, body = http_json("POST", f"{self.base}/jobs", self.headers(),
                                 {"name": name, "description": "benchmark job"})
        if status != 201:
            raise BenchError(f"POST /jobs answered {status}: {body}")
        return body  # type: ignore[no-any-return]

    def ftp_target(self, job: dict[str, Any]) -> GatewayFtpTarget:
        """The job's ORIGINAL/ folder, with the job's own FTP login (a fast check, no scrypt)."""
        up = job["upload"]
        path = up["ftpUrl"].split(f":{self.ftp_port}", 1)[1].rstrip("/")
        day = path.strip("/").split("/")[0]
        return GatewayFtpTarget("gateway", self.ftp_port, up["ftpUsername"], up["ftpPassword"], path,
                                self.storage / day / str(job["id"]) / "ORIGINAL", self.pid)

    def processor_target(self, job: dict[str, Any]) -> GatewayFtpTarget:
        """The job's CLIPPED/ folder, for the processor pat."""
        t = self.ftp_target(job)
        return GatewayFtpTarget("gateway", self.ftp_port, "pat", PASSWORD, t.remote_dir.rsplit("/", 1)[0] + "/CLIPPED",
                                t.local_dir.parent / "CLIPPED", self.pid)


# ----------------------------------------------------------------------------- references

def start_bare_ftp(procs: Procs, folder: Path) -> FtpTarget:
    root = folder / "files"
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    p = procs.start("pyftpdlib", [sys.executable, "-m", "bench.refs.bare_ftp", str(port), str(root), "bench",
                                  PASSWORD], cwd=REPO)
    wait_port(port, p, what="bare pyftpdlib")
    return FtpTarget("pyftpdlib", port, "bench", PASSWORD, "", root, p.pid)


@dataclass
class BareHttp:
    port: int
    root: Path
    pid: int

    @property
    def base(self) -> str:
        return f"http://{LOCAL}:{self.port}"


def start_bare_http(procs: Procs, folder: Path) -> BareHttp:
    port = free_port()
    p = procs.start("aiohttp", [sys.executable, "-m", "bench.refs.bare_http", str(port), str(folder)], cwd=REPO)
    wait_port(port, p, what="bare aiohttp")
    return BareHttp(port, folder, p.pid)


VSFTPD_CONF = """\
listen=YES
listen_ipv6=NO
listen_address=127.0.0.1
listen_port={port}
background=NO
anonymous_enable=NO
local_enable=YES
write_enable=YES
local_umask=022
local_root={root}
pasv_enable=YES
pasv_min_port={lo}
pasv_max_port={hi}
pasv_address=127.0.0.1
connect_from_port_20=NO
pam_service_name=vsftpd
secure_chroot_dir={empty}
userlist_enable=NO
xferlog_enable=NO
dirmessage_enable=NO
seccomp_sandbox=NO
isolate=NO
isolate_network=NO
max_clients=0
max_per_ip=0
"""
USER_RE = re.compile(r"^gwb-(\d+)$")


def _drop_stale_users() -> None:
    """Users of earlier runs that died before cleaning up (their pid is gone)."""
    for entry in pwd.getpwall():
        m = USER_RE.match(entry.pw_name)
        if m and not Path(f"/proc/{m.group(1)}").exists():
            subprocess.run(["userdel", entry.pw_name], capture_output=True, timeout=30)


def start_vsftpd(procs: Procs, folder: Path) -> FtpTarget:
    """vsftpd in the foreground with a local user made for this run (removed at the end)."""
    vsftpd = tool_path("vsftpd")
    if os.geteuid() != 0:
        raise BenchError("vsftpd needs root here (a local user is created for it)")
    if not Path("/etc/pam.d/vsftpd").exists():
        raise BenchError("/etc/pam.d/vsftpd is missing (vsftpd's Debian package installs it)")
    _drop_stale_users()
    user, password = f"gwb-{os.getpid()}", secrets.token_urlsafe(12)
    root, empty = folder / "files", folder / "empty"
    root.mkdir(parents=True, exist_ok=True)
    empty.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["useradd", "--no-create-home", "--home-dir", str(root), "--shell", "/bin/bash", user],
                       capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        raise BenchError(f"useradd failed: {r.stderr.strip()}")
    procs.on_close(lambda: subprocess.run(["userdel", user], capture_output=True, timeout=30))
    subprocess.run(["chpasswd"], input=f"{user}:{password}\n", text=True, check=True, timeout=30)
    entry = pwd.getpwnam(user)
    os.chown(root, entry.pw_uid, entry.pw_gid)
    lo, hi = free_range(120)
    port = free_port()
    conf = folder / "vsftpd.conf"
    conf.write_text(VSFTPD_CONF.format(port=port, root=root, lo=lo, hi=hi, empty=empty))
    p = procs.start("vsftpd", [vsftpd, str(conf)])
    wait_port(port, p, what="vsftpd")
    return FtpTarget("vsftpd", port, user, password, "", root, p.pid)


NGINX_CONF = """\
worker_processes 1;
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    default_type application/octet-stream;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    server {{
        listen 127.0.0.1:{port};
        root {root};
        location / {{ }}
    }}
}}
"""


@dataclass
class Nginx:
    port: int
    root: Path
    pid: int

    def url(self, name: str) -> str:
        return f"http://{LOCAL}:{self.port}/{name}"


def start_nginx(procs: Procs, folder: Path) -> Nginx:
    """nginx, one worker (the gateway's HTTP side is one event loop), sendfile on, its own prefix."""
    nginx = tool_path("nginx")
    root = folder / "files"
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    conf = folder / "nginx.conf"
    conf.write_text(NGINX_CONF.format(prefix=folder, port=port, root=root))
    p = procs.start("nginx", [nginx, "-p", str(folder), "-c", str(conf), "-e", str(folder / "error.log")])
    wait_port(port, p, what="nginx")
    return Nginx(port, root, p.pid)
