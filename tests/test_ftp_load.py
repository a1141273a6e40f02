"""Nothing slow runs on the FTP loop: 100 logins at once (their scrypt checks run off the loop) while a
transfer runs; the transfer completes, a NOOP on another session keeps answering fast, all logins succeed."""

from __future__ import annotations

import ftplib
import threading
import time

from conftest import Gateway, GatewayFactory
from ftp_helpers import (
    JobPaths,
    close_quietly,
    ftp_connect,
    job_login,
    md5,
    payload,
    records,
    retr,
)

LOGINS = 100


async def test_100_simultaneous_logins_while_a_transfer_runs(gateway_factory: GatewayFactory) -> None:
    gw: Gateway = await gateway_factory({"ftp.max_cons_per_ip": 4 * LOGINS, "ftp.max_cons": 4 * LOGINS}, ftp=True)
    job = await gw.create_job(await gw.session("alice"))
    p = JobPaths.of(job)
    data = payload(4 << 20, "under load")
    # three in five check a human password (scrypt, tens of ms each), two a per-job one (a fast hash)
    users = [("alice", gw.world.passwords["alice"]), job_login(job), ("bob", gw.world.passwords["bob"]),
             ("pat", gw.world.passwords["pat"]), job_login(job)]

    uploader = ftp_connect(gw.ftp_port, "alice", gw.world.passwords["alice"])
    watcher = ftp_connect(gw.ftp_port, "pat", gw.world.passwords["pat"])
    start = threading.Barrier(LOGINS + 1)
    logins_done = threading.Event()
    results: list[str | None] = [None] * LOGINS
    sessions: list[ftplib.FTP | None] = [None] * LOGINS
    upload_reply: list[str] = []

    def log_in(i: int) -> None:
        login, password = users[i % len(users)]
        start.wait(30)
        try:
            f = ftp_connect(gw.ftp_port, login, password, timeout=60)
            sessions[i] = f
            results[i] = f.sendcmd("PWD")
        except Exception as e:  # reported by the assertion below
            results[i] = repr(e)

    def upload() -> None:
        conn = uploader.transfercmd(f"STOR {p.original}/big.jpg")
        with conn:
            view = memoryview(data)
            for offset in range(0, len(view), 64 * 1024):  # paced so that it runs through the whole storm
                conn.sendall(view[offset:offset + 64 * 1024])
                if not logins_done.is_set():
                    time.sleep(0.02)
        upload_reply.append(uploader.voidresp())

    threads = [threading.Thread(target=log_in, args=(i,), name=f"login-{i}") for i in range(LOGINS)]
    transfer = threading.Thread(target=upload, name="uploader")
    noop_times: list[float] = []
    try:
        for t in threads:
            t.start()
        transfer.start()
        start.wait(30)
        storm_started = time.monotonic()
        while any(t.is_alive() for t in threads):
            t0 = time.monotonic()
            assert watcher.sendcmd("NOOP").startswith("200")
            noop_times.append(time.monotonic() - t0)
            time.sleep(0.01)
        storm = time.monotonic() - storm_started
        logins_done.set()
        for t in threads:
            t.join(60)
        transfer.join(60)
    finally:
        logins_done.set()
        for f in [uploader, watcher, *[s for s in sessions if s is not None]]:
            close_quietly(f)
    assert results == ['257 "/" is the current directory.'] * LOGINS, [r for r in results if "257" not in str(r)]
    assert upload_reply == ["226 Transfer complete."]
    assert len(noop_times) >= 5, (noop_times, storm)
    assert max(noop_times) < 1.0, f"slowest NOOP {max(noop_times):.3f} s during a {storm:.1f} s login storm"
    assert records(gw, job["id"], "ORIGINAL")["big.jpg"]["md5"] == md5(data)
    check = ftp_connect(gw.ftp_port, "carol", gw.world.passwords["carol"])
    try:
        assert retr(check, f"{p.original}/big.jpg") == data
    finally:
        close_quietly(check)
