"""Configuration: config.toml read once into frozen dataclasses; every default and check lives here."""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

GiB = 1 << 30
MiB = 1 << 20


class ConfigError(Exception):
    """The configuration cannot be used; the message names the key."""


@dataclass(frozen=True)
class HttpConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    public_url: str = ""  # empty: http(s)://host:port
    tls_certfile: str = ""
    tls_keyfile: str = ""
    body_timeout: float = 60.0
    header_timeout: float = 30.0
    cors_origins: tuple[str, ...] = ()

    @property
    def tls(self) -> bool:
        return bool(self.tls_certfile and self.tls_keyfile)


@dataclass(frozen=True)
class FtpConfig:
    host: str = "127.0.0.1"
    port: int = 2121
    public_host: str = ""  # empty: host (127.0.0.1 when host is a wildcard)
    passive_ports: str = "60000-60099"
    masquerade_address: str = ""
    max_cons: int = 512
    max_cons_per_ip: int = 64
    idle_timeout: float = 300.0
    tls_certfile: str = ""
    tls_keyfile: str = ""
    tls_required: bool = False
    partial_ttl: float = 86400.0

    @property
    def passive_range(self) -> tuple[int, int]:
        lo, hi = self.passive_ports.split("-")
        return int(lo), int(hi)

    @property
    def tls(self) -> bool:
        return bool(self.tls_certfile and self.tls_keyfile)


@dataclass(frozen=True)
class StorageConfig:
    root: str = "storage_root"
    max_file_size: int = 20 * GiB
    min_free_bytes: int = 256 * MiB


@dataclass(frozen=True)
class DatabaseConfig:
    path: str = ""  # empty: <storage.root>/.gateway/gateway.db


@dataclass(frozen=True)
class SessionsConfig:
    lifetime: float = 86400.0


@dataclass(frozen=True)
class JobsConfig:
    retention_days: float = 30.0


@dataclass(frozen=True)
class SecurityConfig:
    login_failures: int = 5
    login_window: float = 300.0
    ban_time: float = 900.0


@dataclass(frozen=True)
class ServerConfig:
    shutdown_grace: float = 10.0


@dataclass(frozen=True)
class Config:
    bootstrap_demo: bool = True
    http: HttpConfig = field(default_factory=HttpConfig)
    ftp: FtpConfig = field(default_factory=FtpConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    sessions: SessionsConfig = field(default_factory=SessionsConfig)
    jobs: JobsConfig = field(default_factory=JobsConfig)
    security: SecurityConfig = field(default_factory=SecurityConfig)
    server: ServerConfig = field(default_factory=ServerConfig)

    @property
    def storage_root(self) -> Path:
        return Path(self.storage.root)

    @property
    def secret_path(self) -> Path:
        """The server secret (0600), beside the database."""
        return self.db_path.with_name("server.key")

    @property
    def db_path(self) -> Path:
        return Path(self.database.path) if self.database.path else self.storage_root / ".gateway" / "gateway.db"

    def public_url_for(self, port: int) -> str:
        """Base of every returned HTTP URL: [http] public_url, else this host and the bound port."""
        if self.http.public_url:
            return self.http.public_url.rstrip("/")
        scheme = "https" if self.http.tls else "http"
        return f"{scheme}://{_url_host(self.http.host)}:{port}"

    @property
    def ftp_public_host(self) -> str:
        return self.ftp.public_host or _url_host(self.ftp.host)


def _url_host(host: str) -> str:
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


SECTIONS: dict[str, type[Any]] = {
    "http": HttpConfig,
    "ftp": FtpConfig,
    "storage": StorageConfig,
    "database": DatabaseConfig,
    "sessions": SessionsConfig,
    "jobs": JobsConfig,
    "security": SecurityConfig,
    "server": ServerConfig,
}


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> Config:
    """Read and check config.toml; relative paths resolve against the file's folder."""
    p = Path(path)
    try:
        raw = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {p}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read config file {p}: {e}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{p} is not valid TOML: {e}") from None
    for dotted, value in (overrides or {}).items():
        section, _, key = dotted.rpartition(".")
        (raw.setdefault(section, {}) if section else raw)[key] = value
    return build_config(raw, base=p.resolve().parent)


def build_config(raw: dict[str, Any], base: Path) -> Config:
    """Turn a parsed TOML mapping into a checked Config."""
    top: dict[str, Any] = {}
    for key, value in raw.items():
        if key in SECTIONS:
            if not isinstance(value, dict):
                raise ConfigError(f"{key}: expected a [{key}] table")
            top[key] = _section(key, SECTIONS[key], value)
        elif key == "bootstrap_demo":
            top[key] = _coerce("bootstrap_demo", bool, value)
        else:
            raise ConfigError(f"unknown config key: {key}")
    cfg = Config(**top)
    if not cfg.storage.root.strip():
        raise ConfigError("storage.root: must not be empty")
    cfg = dataclasses.replace(
        cfg,
        storage=dataclasses.replace(cfg.storage, root=str(_resolve(base, cfg.storage.root))),
        database=dataclasses.replace(
            cfg.database, path=str(_resolve(base, cfg.database.path)) if cfg.database.path else ""
        ),
        http=_resolve_tls(cfg.http, base, "http"),
        ftp=_resolve_tls(cfg.ftp, base, "ftp"),
    )
    _check(cfg)
    return cfg


def _resolve(base: Path, value: str) -> Path:
    p = Path(value).expanduser()
    return p if p.is_absolute() else (base / p).resolve()


def _resolve_tls(section: Any, base: Path, name: str) -> Any:
    cert, key = section.tls_certfile, section.tls_keyfile
    if bool(cert) != bool(key):
        raise ConfigError(f"{name}.tls_certfile and {name}.tls_keyfile must be set together")
    if not cert:
        return section
    paths = {k: str(_resolve(base, v)) for k, v in (("tls_certfile", cert), ("tls_keyfile", key))}
    for k, v in paths.items():
        if not Path(v).is_file():
            raise ConfigError(f"{name}.{k}: no such file: {v}")
    return dataclasses.replace(section, **paths)


def _section(name: str, cls: type[Any], values: dict[str, Any]) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if key not in fields:
            raise ConfigError(f"unknown config key: {name}.{key}")
        default = getattr(cls(), key)
        kwargs[key] = _coerce(f"{name}.{key}", type(default), value)
    return cls(**kwargs)


def _coerce(key: str, kind: type[Any], value: Any) -> Any:
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{key}: expected a number of seconds, got {value!r}")
    if kind is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    if kind is tuple:
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return tuple(value)
        raise ConfigError(f"{key}: expected a list of strings, got {value!r}")
    raise ConfigError(f"{key}: unsupported value {value!r}")  # pragma: no cover


def _check(cfg: Config) -> None:
    for key, port in (("http.port", cfg.http.port), ("ftp.port", cfg.ftp.port)):
        if not 0 <= port <= 65535:
            raise ConfigError(f"{key}: expected a port from 0 to 65535, got {port}")
    positive = {
        "http.body_timeout": cfg.http.body_timeout,
        "http.header_timeout": cfg.http.header_timeout,
        "ftp.idle_timeout": cfg.ftp.idle_timeout,
        "ftp.partial_ttl": cfg.ftp.partial_ttl,
        "ftp.max_cons": cfg.ftp.max_cons,
        "ftp.max_cons_per_ip": cfg.ftp.max_cons_per_ip,
        "storage.max_file_size": cfg.storage.max_file_size,
        "sessions.lifetime": cfg.sessions.lifetime,
        "jobs.retention_days": cfg.jobs.retention_days,
        "security.login_failures": cfg.security.login_failures,
        "security.login_window": cfg.security.login_window,
        "security.ban_time": cfg.security.ban_time,
    }
    for key, value in positive.items():
        if value <= 0:
            raise ConfigError(f"{key}: must be greater than 0, got {value}")
    for key, value in (("storage.min_free_bytes", cfg.storage.min_free_bytes),
                       ("server.shutdown_grace", cfg.server.shutdown_grace)):
        if value < 0:
            raise ConfigError(f"{key}: must not be negative, got {value}")
    _check_passive(cfg.ftp.passive_ports)
    if cfg.http.public_url:
        u = urlsplit(cfg.http.public_url)
        if u.scheme not in ("http", "https") or not u.netloc or u.path not in ("", "/") or u.query:
            raise ConfigError(f"http.public_url: expected http(s)://host[:port], got {cfg.http.public_url!r}")
    for origin in cfg.http.cors_origins:
        u = urlsplit(origin)
        if u.scheme not in ("http", "https") or not u.netloc or u.path:
            raise ConfigError(f"http.cors_origins: {origin!r} is not an origin like https://app.example.com")
    if cfg.ftp.tls_required and not cfg.ftp.tls:
        raise ConfigError("ftp.tls_required: needs ftp.tls_certfile and ftp.tls_keyfile")


def _check_passive(value: str) -> None:
    lo_s, sep, hi_s = value.partition("-")
    if not (sep and lo_s.strip().isdigit() and hi_s.strip().isdigit()):
        raise ConfigError(f'ftp.passive_ports: expected "LOW-HIGH" like "60000-60099", got {value!r}')
    lo, hi = int(lo_s), int(hi_s)
    if not 1024 <= lo <= hi <= 65535:
        raise ConfigError(f"ftp.passive_ports: expected 1024 <= LOW <= HIGH <= 65535, got {value!r}")

