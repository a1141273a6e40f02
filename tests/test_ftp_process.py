"""The FTP server inside a real `gateway serve` process: a SIGKILL during uploads then a restart that
reconciles disk and database; SIGTERM closing idle sessions at once while a running transfer gets
[server] shutdown_grace; and the in-process app shutdown leaving no thread behind."""

from __future__ import annotations

import ftplib
import os
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import ConfigFactory, Gateway, free_port, populate
from ftp_helpers import (
    FtpError,
    JobPaths,
    Served,
    close_quietly,
    drop_session,
    ftp_connect,
    http_json,
    md5,
    payload,
    retr,
    serving,
    sqlite_rows,
    stor,
    temp_names,
    temp_sizes,
    wait_until,
)

from gateway.db import open_db


class Deployment:
    """A config with free ports, a database with the test world, and helpers to talk to `gateway serve`."""

    def __init__(self, config_factory: ConfigFactory, password_hashes: dict[str, str], **settings: Any) -> None:
        self.http_port, self.ftp_port = free_port(), free_port()
        self.folder = config_factory.tmp_path
        self.config = config_factory.write({"http.port": self.http_port, "ftp.port": self.ftp_port, **settings})
        self.db_path = self.folder / "db" / "gateway.db"
        self.storage_root = self.folder / "storage_root"
        db = open_db(self.db_path)
        try:
            with db.atomic():
                self.world = populate(db, password_hashes)
        finally:
            db.close()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def create_job(self, login: str = "alice") -> dict[str, Any]:
        client = {"X-Client-Token": self.world.clients["web"]}
        status, body = http_json("POST", f"{self.base}/sessions",
                                 {"login": login, "password": self.world.passwords[login]}, client)
        assert status == 201, body
        status, job = http_json("POST", f"{self.base}/jobs", {"name": "Job", "description": "fruits"},
                                {**client, "X-Session-Token": body["token"]})
        assert status == 201, job
        assert f":{self.ftp_port}/" in job["upload"]["ftpUrl"]
        return dict(job)

    def ftp(self, login: str = "alice") -> ftplib.FTP:
        return ftp_connect(self.ftp_port, login, self.world.passwords[login])

    def kind_dir(self, job: dict[str, Any], kind: str = "ORIGINAL") -> Path:
        p = JobPaths.of(job)
        return self.storage_root / p.day / str(p.job_id) / kind

    def rows(self, sql: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
        return sqlite_rows(self.db_path, sql, params)


# ----------------------------------------------------------------------------- SIGKILL and reconciliation

async def test_a_sigkill_during_uploads_loses_nothing_that_was_answered_226(
        config_factory: ConfigFactory, password_hashes: dict[str, str], tmp_path: Path) -> None:
    d = Deployment(config_factory, password_hashes)
    done: dict[str, bytes] = {}
    partial_data = payload(800_000, "partial")
    running = payload(2_000_000, "running")
    first = Served(d.config, tmp_path, "first")
    try:
        first.wait_ready(d.http_port)
        job = d.create_job()
        p = JobPaths.of(job)
        folder = d.kind_dir(job)
        with d.ftp() as f:  # three finished uploads
            for name, size in (("small.jpg", 1000), ("medium.jpg", 300_000), ("large.jpg", 2_500_000)):
                done[name] = payload(size, name)
                assert stor(f, f"{p.original}/{name}", done[name]).startswith("226")
        # an upload interrupted by the client: kept as a partial
        f = d.ftp("carol")
        conn = f.transfercmd(f"STOR {p.original}/resume.jpg")
        conn.sendall(partial_data[:300_000])
        wait_until(lambda: 300_000 in temp_sizes(folder))
        drop_session(f)
        conn.close()
        wait_until(lambda: d.rows("select 1 from partials"), what="the partial record")
        # an upload still running when the server dies, and one answered 226 just before it
        runner = d.ftp()
        running_conn = runner.transfercmd(f"STOR {p.original}/running.jpg")
        running_conn.sendall(running[:600_000])
        wait_until(lambda: 600_000 in temp_sizes(folder))
        last = d.ftp()
        done["last.jpg"] = payload(700_000, "last")
        assert stor(last, f"{p.original}/last.jpg", done["last.jpg"]) == "226 Transfer complete."
        os.killpg(first.proc.pid, signal.SIGKILL)  # the moment the 226 was read
        first.proc.wait(10)
        for client in (runner, last):
            client.close()
        running_conn.close()
    finally:
        first.sigkill()
    assert first.proc.returncode == -signal.SIGKILL
    # on disk right after the crash: every answered file complete; the running upload only as a temp file
    for name, data in done.items():
        assert (folder / name).read_bytes() == data, name
    assert not (folder / "running.jpg").exists() and not (folder / "resume.jpg").exists()
    assert len(temp_names(folder)) == 2
    (folder / "copied-in.jpg").write_bytes(b"put there while the gateway was down")

    with serving(d.config, tmp_path, "second", d.http_port) as second:
        log = second.output
        assert "start-up reconciliation changed" in log, log
        assert "temp_removed=1" in log and "files_recorded=1" in log, log
        recorded = {path: (size, digest, protocol) for path, size, digest, protocol in d.rows(
            "select path, size, md5, protocol from files where job_id = ?", [job["id"]])}
        for name, data in done.items():
            assert recorded[name][:2] == (len(data), md5(data)), name
        assert recorded["copied-in.jpg"][2] == "reconcile"
        assert sorted(recorded) == sorted([*done, "copied-in.jpg"])
        # the interrupted upload is still a partial of carol's; the running one's temp file is gone
        (temp_name,) = [r[0] for r in d.rows("select temp_name from partials where login = 'carol'")]
        assert temp_names(folder) == [temp_name]
        assert d.rows("select count(*) from partials") == [(1,)]
        assert d.rows("pragma integrity_check") == [("ok",)]
        with d.ftp("carol") as f:
            assert f.size(f"{p.original}/resume.jpg") == 300_000
            assert stor(f, f"{p.original}/resume.jpg", partial_data[300_000:], rest=300_000).startswith("226")
            assert retr(f, f"{p.original}/resume.jpg") == partial_data
            listed = f.nlst(p.original)
            f.voidcmd("TYPE I")
            assert sorted(listed) == sorted([*done, "copied-in.jpg", "resume.jpg"])
            for name, data in done.items():
                assert f.sendcmd(f"XMD5 {p.original}/{name}") == f"250 {md5(data)}"
        assert temp_names(folder) == []
        second.sigterm()
        assert second.wait(15) == 0


# ----------------------------------------------------------------------------- SIGTERM

def paced_upload(f: ftplib.FTP, path: str, data: bytes, chunk: int, pause: float, out: dict[str, Any]) -> None:
    """Send data slowly; record the final reply (or how the connection ended)."""
    try:
        conn = f.transfercmd(f"STOR {path}")
        with conn:
            for offset in range(0, len(data), chunk):
                conn.sendall(data[offset:offset + chunk])
                time.sleep(pause)
        out["reply"] = f.voidresp()
    except (OSError, EOFError, *FtpError) as e:
        out["reply"] = repr(e)
    out["ended"] = time.monotonic()


async def test_sigterm_closes_idle_sessions_at_once_and_gives_a_running_transfer_the_grace(
        config_factory: ConfigFactory, password_hashes: dict[str, str], tmp_path: Path) -> None:
    grace = 3.0
    d = Deployment(config_factory, password_hashes, **{"server.shutdown_grace": grace})
    served = Served(d.config, tmp_path, "term")
    clients: list[ftplib.FTP] = []
    threads: list[threading.Thread] = []
    try:
        served.wait_ready(d.http_port)
        job = d.create_job()
        p = JobPaths.of(job)
        folder = d.kind_dir(job)
        idle = d.ftp("carol")
        finishing, cut = d.ftp(), d.ftp()
        clients += [idle, finishing, cut]
        short, long = payload(600_000, "short"), payload(3_000_000, "long")
        short_out: dict[str, Any] = {}
        long_out: dict[str, Any] = {}
        threads = [  # ~1.5 s of sending, well inside the grace; and ~8 s, well beyond it
            threading.Thread(target=paced_upload, args=(finishing, f"{p.original}/short.jpg", short, 40_000, 0.1,
                                                        short_out)),
            threading.Thread(target=paced_upload, args=(cut, f"{p.original}/long.jpg", long, 40_000, 0.1, long_out)),
        ]
        for t in threads:
            t.start()
        wait_until(lambda: len(temp_names(folder)) == 2, what="both uploads to start")
        idle.sock.settimeout(5)
        served.sigterm()
        term_sent = time.monotonic()
        assert idle.getline().startswith("421"), "the idle session was not told"
        assert time.monotonic() - term_sent < 1.5  # at once, not after the grace
        assert idle.sock.recv(10) == b""  # and closed
        with pytest.raises(ftplib.error_temp, match=r"^421"):
            ftp_connect(d.ftp_port)  # no new sessions while draining
        for t in threads:
            t.join(15)
        code = served.wait(grace + 5)
        exited = time.monotonic()
    finally:
        for c in clients:
            c.close()
        served.sigkill()
    assert code == 0
    assert short_out["reply"] == "226 Transfer complete.", short_out
    assert short_out["ended"] - term_sent < grace
    assert not str(long_out["reply"]).startswith("226"), long_out
    assert grace - 0.5 < exited - term_sent < grace + 3.0
    log = served.output
    assert "stopped" in log and "Traceback" not in log, log[-3000:]
    assert (folder / "short.jpg").read_bytes() == short
    assert not (folder / "long.jpg").exists()
    recorded = [r[0] for r in d.rows("select path from files where job_id = ?", [job["id"]])]
    assert recorded == ["short.jpg"]
    kept = d.rows("select temp_name, size from partials")  # the cut upload may be resumed later
    assert [(folder / name).stat().st_size for name, _ in kept] == [size for _, size in kept]
    assert set(temp_names(folder)) == {name for name, _ in kept}


# ----------------------------------------------------------------------------- in process

async def test_stopping_the_app_closes_idle_sessions_and_leaves_no_thread(ftp_gw: Gateway) -> None:
    job = await ftp_gw.create_job(await ftp_gw.session("alice"))
    p = JobPaths.of(job)
    idle = ftp_connect(ftp_gw.ftp_port, "alice", ftp_gw.world.passwords["alice"])
    busy = ftp_connect(ftp_gw.ftp_port, "carol", ftp_gw.world.passwords["carol"])
    data = payload(400_000, "in-process")
    out: dict[str, Any] = {}
    uploader = threading.Thread(target=paced_upload, args=(busy, f"{p.original}/a.jpg", data, 40_000, 0.05, out))
    try:
        uploader.start()
        wait_until(lambda: temp_names(ftp_gw.job_dir(job, "ORIGINAL")), what="the upload to start")
        assert any(t.name == "ftp-server" for t in threading.enumerate())
        await ftp_gw.client.close()  # the app's shutdown and cleanup, as `gateway serve` runs them
        uploader.join(10)
        idle.sock.settimeout(5)
        assert idle.getline().startswith("421")
        assert idle.sock.recv(10) == b""
    finally:
        close_quietly(idle)
        close_quietly(busy)
    assert out["reply"] == "226 Transfer complete.", out  # shutdown_grace (2 s) let it finish
    assert (ftp_gw.job_dir(job, "ORIGINAL") / "a.jpg").read_bytes() == data
    assert [t.name for t in threading.enumerate() if t.name.startswith(("ftp-", "db-writer", "spool-"))] == []
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", ftp_gw.ftp_port), timeout=2).close()
