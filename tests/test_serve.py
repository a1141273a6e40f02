"""`gateway serve` as a real process: the first-start demo, no demo later, SIGTERM, warnings."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from conftest import ConfigFactory, free_port, wait_for_health

BANNER_END = "=" * 104
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def clean_env() -> dict[str, str]:
    """The environment without proxies: everything here talks to 127.0.0.1."""
    return {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}


class Served:
    """One `python -m gateway serve` process with its stdout and stderr in files."""

    def __init__(self, config: Path, folder: Path, name: str, python_args: tuple[str, ...] = ()) -> None:
        self.out_path, self.err_path = folder / f"{name}.out", folder / f"{name}.err"
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen([sys.executable, *python_args, "-m", "gateway", "--config", str(config),
                                          "serve"], stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                         env=clean_env(), start_new_session=True)

    @property
    def stdout(self) -> str:
        return self.out_path.read_text(errors="replace")

    @property
    def output(self) -> str:
        return self.stdout + self.err_path.read_text(errors="replace")

    def wait_ready(self, port: int, timeout: float = 30) -> None:
        wait_for_health(self.proc, port, lambda: self.output, timeout)

    def terminate(self, within: float = 5.0) -> int:
        """SIGTERM; the exit code, which must come within `within` seconds."""
        self.proc.send_signal(signal.SIGTERM)
        start = time.monotonic()
        try:
            rc = self.proc.wait(within)
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running {within} s after SIGTERM: {self.output[-2000:]}")
        assert time.monotonic() - start < within
        return rc

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)


@contextmanager
def serving(config: Path, folder: Path, name: str, port: int, python_args: tuple[str, ...] = ()) -> Iterator[Served]:
    s = Served(config, folder, name, python_args)
    try:
        s.wait_ready(port)
        yield s
    finally:
        s.kill()


@pytest.fixture
def ports() -> tuple[int, int]:
    return free_port(), free_port()


def serve_config(config_factory: ConfigFactory, ports: tuple[int, int], **settings: Any) -> Path:
    return config_factory.write({"http.port": ports[0], "ftp.port": ports[1], **settings})


def table(db_path: Path, sql: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(db_path)
    try:
        return list(conn.execute(sql))
    finally:
        conn.close()


def banner_value(stdout: str, label: str) -> str:
    for line in stdout.splitlines():
        if label in line:
            return line.split(label, 1)[1].split()[0]
    raise AssertionError(f"{label!r} not in {stdout!r}")


# ----------------------------------------------------------------------------- first start

def test_first_start_prints_demo_credentials_and_a_command_that_creates_a_job(
        config_factory: ConfigFactory, ports: tuple[int, int], tmp_path: Path) -> None:
    cfg = serve_config(config_factory, ports, bootstrap_demo=True)
    with serving(cfg, tmp_path, "first", ports[0]) as s:
        out = s.stdout
        assert BANNER_END in out, out
        password, token = banner_value(out, "password:"), banner_value(out, "API client token:")
        assert "login: demo" in out and len(password) >= 12 and len(token) >= 43
        commands = [line for line in out.splitlines() if line.startswith(("SESSION=", "curl "))]
        assert len(commands) == 2 and "curl" in commands[0] and "/jobs" in commands[1], out
        assert password in commands[0] and token in commands[1]
        run = subprocess.run(["bash", "-c", "set -euo pipefail\n" + "\n".join(commands)], capture_output=True,
                             text=True, timeout=60, check=False, env=clean_env())
        assert run.returncode == 0, run
        job = json.loads(run.stdout)
        assert job["_type"] == "CreateJobResponseBody" and job["name"] == "Job of fruits", job
        assert table(config_factory.tmp_path / "db" / "gateway.db", "select id, name from jobs") == [
            (job["id"], "Job of fruits")]
        day = job["createdDate"][:10].replace("-", "")
        assert (config_factory.tmp_path / "storage_root" / day / str(job["id"]) / "ORIGINAL").is_dir()
        assert s.terminate() == 0


def test_a_later_start_on_the_same_database_prints_no_demo(config_factory: ConfigFactory, ports: tuple[int, int],
                                                           tmp_path: Path) -> None:
    cfg = serve_config(config_factory, ports, bootstrap_demo=True)
    with serving(cfg, tmp_path, "first", ports[0]) as s:
        assert "curl" in s.stdout
        first_password = banner_value(s.stdout, "password:")
        assert s.terminate() == 0
    with serving(cfg, tmp_path, "second", ports[0]) as s:
        assert s.terminate() == 0
        assert "curl" not in s.output
        assert first_password not in s.output
    db = config_factory.tmp_path / "db" / "gateway.db"
    assert table(db, "select name from accounts") == [("demo",)]
    assert table(db, "select count(*) from clients") == [(1,)]


def test_no_demo_when_bootstrap_demo_is_false(config_factory: ConfigFactory, ports: tuple[int, int],
                                              tmp_path: Path) -> None:
    cfg = serve_config(config_factory, ports, bootstrap_demo=False)
    with serving(cfg, tmp_path, "plain", ports[0]) as s:
        assert s.terminate() == 0
        assert "curl" not in s.output
    assert table(config_factory.tmp_path / "db" / "gateway.db", "select count(*) from accounts") == [(0,)]


# ----------------------------------------------------------------------------- stopping

def test_sigterm_stops_serve_with_exit_code_0_even_with_an_idle_connection(
        config_factory: ConfigFactory, ports: tuple[int, int], tmp_path: Path) -> None:
    cfg = serve_config(config_factory, ports, **{"server.shutdown_grace": 10})
    with serving(cfg, tmp_path, "term", ports[0]) as s, socket.create_connection(("127.0.0.1", ports[0])) as idle:
        idle.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")  # a keep-alive connection left open
        assert b"200" in idle.recv(4096).split(b"\r\n")[0]
        assert s.terminate(within=5) == 0
        assert "Traceback" not in s.output
        assert "stopped" in s.output


# ----------------------------------------------------------------------------- warnings

def test_serve_runs_clean_under_w_error(config_factory: ConfigFactory, ports: tuple[int, int],
                                        tmp_path: Path) -> None:
    """No warning on the way from start-up through a login (aiohttp >= 3.14 warns once per process
    about str request keys; under -W error, like the suite's filterwarnings, that was a 500)."""
    cfg = serve_config(config_factory, ports, bootstrap_demo=True)
    with serving(cfg, tmp_path, "werror", ports[0], python_args=("-W", "error")) as s:
        password, token = banner_value(s.stdout, "password:"), banner_value(s.stdout, "API client token:")
        req = urllib.request.Request(
            f"http://127.0.0.1:{ports[0]}/sessions", method="POST",
            data=json.dumps({"login": "demo", "password": password}).encode(),
            headers={"Accept": "application/json", "Content-Type": "application/json", "X-Client-Token": token})
        try:
            with NO_PROXY.open(req, timeout=10) as r:
                status = r.status
        except urllib.error.HTTPError as e:
            status = e.code
        assert status == 201, s.output[-1500:]
        assert s.terminate() == 0
