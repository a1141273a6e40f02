"""config.toml: defaults, relative paths, and every bad key or value stopping start-up with its name."""

from __future__ import annotations

import dataclasses
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import ConfigFactory, toml_text

from gateway.config import (
    SECTIONS,
    Config,
    ConfigError,
    DatabaseConfig,
    FtpConfig,
    HttpConfig,
    JobsConfig,
    SecurityConfig,
    ServerConfig,
    SessionsConfig,
    load_config,
)

REPO = Path(__file__).resolve().parent.parent


def load_text(folder: Path, text: str, name: str = "config.toml") -> Config:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(text, encoding="utf-8")
    return load_config(folder / name)


# ----------------------------------------------------------------------------- defaults

def test_an_empty_file_gives_the_documented_defaults(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, "")
    assert cfg.bootstrap_demo is True
    assert (cfg.http.host, cfg.http.port, cfg.http.public_url, cfg.http.tls) == ("127.0.0.1", 8080, "", False)
    assert (cfg.ftp.host, cfg.ftp.port, cfg.ftp.passive_range) == ("127.0.0.1", 2121, (60000, 60099))
    assert cfg.storage.max_file_size == 20 * 2**30
    assert cfg.storage.min_free_bytes == 256 * 2**20
    assert cfg.sessions.lifetime == 86400
    assert cfg.storage_root == tmp_path / "storage_root"
    assert cfg.db_path == tmp_path / "storage_root" / ".gateway" / "gateway.db"
    assert cfg.public_url_for(8080) == "http://127.0.0.1:8080"
    assert cfg.ftp_public_host == "127.0.0.1"
    for section, cls in (("http", HttpConfig), ("ftp", FtpConfig), ("database", DatabaseConfig),
                         ("sessions", SessionsConfig), ("jobs", JobsConfig), ("security", SecurityConfig),
                         ("server", ServerConfig)):
        assert getattr(cfg, section) == cls(), section


def test_an_absent_key_keeps_its_default_beside_the_given_ones(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, "[http]\nport = 9000\n[sessions]\nlifetime = 60\n")
    assert cfg.http.port == 9000 and cfg.http.host == "127.0.0.1"
    assert cfg.sessions.lifetime == 60.0 and isinstance(cfg.sessions.lifetime, float)
    assert cfg.ftp == FtpConfig()


def test_the_repository_config_toml_documents_every_key_with_its_default(tmp_path: Path) -> None:
    text = (REPO / "config.toml").read_text(encoding="utf-8")
    assert load_text(tmp_path, text) == load_text(tmp_path, "", "empty.toml")
    assert re.search(r"^bootstrap_demo\s*=", text, re.M)
    for section, cls in SECTIONS.items():
        body = re.search(rf"^\[{section}\]\n(.*?)(?=^\[|\Z)", text, re.M | re.S)
        assert body, f"[{section}] is not in config.toml"
        for f in dataclasses.fields(cls):
            assert re.search(rf"^{f.name}\s*=", body.group(1), re.M), f"{section}.{f.name} is not documented"


def test_wildcard_hosts_give_loopback_urls(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, '[http]\nhost = "0.0.0.0"\n[ftp]\nhost = "0.0.0.0"\n')
    assert cfg.public_url_for(1234) == "http://127.0.0.1:1234"
    assert cfg.ftp_public_host == "127.0.0.1"
    cfg = load_text(tmp_path, '[http]\npublic_url = "https://gw.example.com/"\n[ftp]\npublic_host = "f.example"\n')
    assert cfg.public_url_for(1234) == "https://gw.example.com"
    assert cfg.ftp_public_host == "f.example"


# ----------------------------------------------------------------------------- relative paths

def test_relative_paths_resolve_against_the_config_files_folder(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "etc" / "gateway"
    folder.mkdir(parents=True)
    (folder / "tls").mkdir()
    for name in ("cert.pem", "key.pem"):
        (folder / "tls" / name).write_text("not checked here")
    text = toml_text({"storage": {"root": "data"}, "database": {"path": "../db/gw.db"},
                      "http": {"tls_certfile": "tls/cert.pem", "tls_keyfile": "tls/key.pem"},
                      "ftp": {"tls_certfile": "tls/cert.pem", "tls_keyfile": "tls/key.pem"}})
    (folder / "config.toml").write_text(text)
    elsewhere = tmp_path / "somewhere" / "else"
    elsewhere.mkdir(parents=True)
    monkeypatch.chdir(elsewhere)
    cfg = load_config(Path("../../etc/gateway/config.toml"))
    assert cfg.storage_root == folder / "data"
    assert cfg.db_path == tmp_path / "etc" / "db" / "gw.db"
    assert Path(cfg.http.tls_certfile) == folder / "tls" / "cert.pem"
    assert Path(cfg.ftp.tls_keyfile) == folder / "tls" / "key.pem"
    assert cfg.http.tls and cfg.ftp.tls
    assert cfg.public_url_for(443).startswith("https://")


def test_absolute_paths_are_kept(tmp_path: Path) -> None:
    root, db = tmp_path / "abs-root", tmp_path / "abs-db" / "x.db"
    cfg = load_text(tmp_path / "conf", toml_text({"storage": {"root": str(root)}, "database": {"path": str(db)}}))
    assert (cfg.storage_root, cfg.db_path) == (root, db)


def test_the_factory_config_keeps_everything_in_tmp_path(config_factory: ConfigFactory, tmp_path: Path) -> None:
    cfg = config_factory().config
    assert cfg.storage_root.is_relative_to(tmp_path) and cfg.db_path.is_relative_to(tmp_path)
    assert (cfg.http.port, cfg.ftp.port, cfg.bootstrap_demo) == (0, 0, False)


# ----------------------------------------------------------------------------- rejected files

@pytest.mark.parametrize(("text", "key"), [
    ("bogus_top_level = 1\n", "bogus_top_level"),
    ("[http]\nbogus_http_key = 1\n", "http.bogus_http_key"),
    ("[storage]\nroot_dir = 'x'\n", "storage.root_dir"),
    ("[nonsense]\nx = 1\n", "nonsense"),
    ("[sessions]\nlifetime = 5\nttl = 5\n", "sessions.ttl"),
])
def test_unknown_keys_are_refused_by_name(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(key)):
        load_text(tmp_path, text)


BAD_VALUES: list[tuple[dict[str, Any], str]] = [
    ({"http": {"port": "not-a-port"}}, "http.port"),
    ({"http": {"port": 70000}}, "http.port"),
    ({"http": {"port": -1}}, "http.port"),
    ({"ftp": {"port": True}}, "ftp.port"),
    ({"http": {"port": 80.5}}, "http.port"),
    ({"storage": {"max_file_size": -1}}, "storage.max_file_size"),
    ({"storage": {"max_file_size": 0}}, "storage.max_file_size"),
    ({"storage": {"min_free_bytes": -1}}, "storage.min_free_bytes"),
    ({"storage": {"root": 5}}, "storage.root"),
    ({"sessions": {"lifetime": 0}}, "sessions.lifetime"),
    ({"sessions": {"lifetime": "1 day"}}, "sessions.lifetime"),
    ({"jobs": {"retention_days": -1}}, "jobs.retention_days"),
    ({"security": {"login_failures": 0}}, "security.login_failures"),
    ({"server": {"shutdown_grace": -1}}, "server.shutdown_grace"),
    ({"http": {"body_timeout": 0}}, "http.body_timeout"),
    ({"ftp": {"max_cons": 0}}, "ftp.max_cons"),
    ({"ftp": {"passive_ports": "abc"}}, "ftp.passive_ports"),
    ({"ftp": {"passive_ports": "60000"}}, "ftp.passive_ports"),
    ({"ftp": {"passive_ports": "60099-60000"}}, "ftp.passive_ports"),
    ({"ftp": {"passive_ports": "80-90"}}, "ftp.passive_ports"),
    ({"ftp": {"passive_ports": "60000-70000"}}, "ftp.passive_ports"),
    ({"ftp": {"passive_ports": 60000}}, "ftp.passive_ports"),
    ({"http": {"tls_certfile": "cert.pem"}}, "http.tls_keyfile"),
    ({"http": {"tls_keyfile": "key.pem"}}, "http.tls_certfile"),
    ({"ftp": {"tls_certfile": "cert.pem"}}, "ftp.tls_keyfile"),
    ({"http": {"tls_certfile": "missing-cert.pem", "tls_keyfile": "missing-key.pem"}}, "http.tls_certfile"),
    ({"ftp": {"tls_required": True}}, "ftp.tls_required"),
    ({"ftp": {"tls_required": "yes"}}, "ftp.tls_required"),
    ({"http": {"public_url": "ftp://gw.example.com"}}, "http.public_url"),
    ({"http": {"public_url": "https://gw.example.com/api"}}, "http.public_url"),
    ({"http": {"cors_origins": "https://app.example.com"}}, "http.cors_origins"),
    ({"http": {"cors_origins": ["app.example.com"]}}, "http.cors_origins"),
    ({"bootstrap_demo": "yes"}, "bootstrap_demo"),
    ({"http": 5}, "http"),
]


@pytest.mark.parametrize(("data", "key"), BAD_VALUES, ids=[f"{k}-{i}" for i, (_, k) in enumerate(BAD_VALUES)])
def test_bad_values_are_refused_naming_the_key(tmp_path: Path, data: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(key)):
        load_text(tmp_path, toml_text(data))


def test_an_empty_storage_root_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=re.escape("storage.root")):
        cfg = load_text(tmp_path, toml_text({"storage": {"root": ""}}))
        pytest.fail(f"accepted: files would be stored in {cfg.storage_root}, the config file's own folder")


def test_a_file_that_is_not_toml_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_text(tmp_path, "[http\nport = 1\n")


def test_a_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "absent.toml")


# ----------------------------------------------------------------------------- `gateway serve` refuses to start

SERVE_BROKEN = [
    ({"bogus_top_level": 1}, "bogus_top_level"),
    ({"http.bogus_unknown_key": 1}, "http.bogus_unknown_key"),
    ({"http.port": "not-a-port"}, "http.port"),
    ({"storage.max_file_size": -5}, "storage.max_file_size"),
    ({"ftp.passive_ports": "70000-70010"}, "ftp.passive_ports"),
    ({"http.tls_certfile": "cert.pem"}, "http.tls_keyfile"),
]


@pytest.mark.parametrize(("settings", "key"), SERVE_BROKEN, ids=[k for _, k in SERVE_BROKEN])
def test_serve_with_a_bad_config_exits_non_zero_naming_the_key(config_factory: ConfigFactory,
                                                               settings: dict[str, Any], key: str) -> None:
    path = config_factory.write(settings)
    p = subprocess.run([sys.executable, "-m", "gateway", "--config", str(path), "serve"], capture_output=True,
                       text=True, timeout=30, check=False, stdin=subprocess.DEVNULL)
    assert p.returncode != 0
    assert key in p.stderr, p.stderr
    assert "Traceback" not in p.stderr + p.stdout
    assert not (config_factory.tmp_path / "storage_root").exists()  # it stopped before touching anything


def test_serve_reports_a_busy_port(config_factory: ConfigFactory, tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        path = config_factory.write({"http.port": busy.getsockname()[1]})
        p = subprocess.run([sys.executable, "-m", "gateway", "--config", str(path), "serve"], capture_output=True,
                           text=True, timeout=30, check=False, stdin=subprocess.DEVNULL)
    assert p.returncode != 0
    assert "cannot listen" in p.stderr and "Traceback" not in p.stderr
