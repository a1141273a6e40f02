"""Crash: `gateway serve` SIGKILLed in the middle of 20 concurrent uploads (FTP and HTTP), then restarted.

Every upload answered complete (226 / 201) must be there, whole, on disk and in the database; nothing
partial may be visible (FTP listing, files API, zip); temp leftovers are gone after start-up (an FTP
partial may only stay as a recorded, invisible partial); SQLite passes its integrity check. The kill
comes at three different moments, on one database that survives them all.
"""

from __future__ import annotations

import ftplib
import http.client
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from conftest import ConfigFactory
from helpers_proc import (
    Served,
    db_rows,
    disk_files,
    ftp_names,
    integrity_check,
    job_dir,
    job_ftp_dir,
    md5,
    multipart,
    payload,
    prepare,
    serving,
)

UPLOADS = 20  # half FTP, half HTTP
CHUNK = 256 << 10
KILL_AFTER = (0.5, 1.2, 2.0)  # seconds after the uploads start


@dataclass
class Outcome:
    sent: dict[str, bytes] = field(default_factory=dict)  # every file attempted
    acked: set[str] = field(default_factory=set)  # answered 226 / 201
    errors: dict[str, str] = field(default_factory=dict)
    wrong: dict[str, str] = field(default_factory=dict)  # a 201 whose body describes another file
    lock: threading.Lock = field(default_factory=threading.Lock)


def _paced(send: Callable[[bytes], Any], data: bytes, duration: float, stop: threading.Event) -> None:
    chunks = [data[i:i + CHUNK] for i in range(0, len(data), CHUNK)]
    pause = duration / len(chunks)
    for c in chunks:
        if stop.is_set():
            raise ConnectionAbortedError("test stopped")
        send(c)
        time.sleep(pause)


def _ftp_upload(f: ftplib.FTP, folder: str, name: str, data: bytes, duration: float, start: threading.Barrier,
                stop: threading.Event, out: Outcome) -> None:
    try:
        start.wait()
        conn = f.transfercmd(f"STOR {folder}/{name}")
        with conn:
            _paced(conn.sendall, data, duration, stop)
        reply = f.voidresp()
        if reply.startswith("226"):
            with out.lock:
                out.acked.add(name)
    except (OSError, EOFError, ftplib.Error, threading.BrokenBarrierError) as e:
        out.errors[name] = repr(e)
    finally:
        f.close()


def _http_upload(port: int, path: str, name: str, data: bytes, duration: float, start: threading.Barrier,
                 stop: threading.Event, out: Outcome) -> None:
    body, ctype = multipart([(name, data)])
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    try:
        conn.connect()
        start.wait()
        conn.putrequest("POST", path)
        conn.putheader("Content-Type", ctype)
        conn.putheader("Content-Length", str(len(body)))
        conn.endheaders()
        _paced(conn.send, body, duration, stop)
        resp = conn.getresponse()
        answer = resp.read()
        if resp.status == 201:
            files = [(f["fileName"], f["size"], f["mD5"]) for f in json.loads(answer)["files"]]
            with out.lock:
                out.acked.add(name)
                if files != [(name, len(data), md5(data))]:
                    out.wrong[name] = repr(files)
        else:
            out.errors[name] = f"{resp.status} {answer[:200]!r}"
    except (OSError, http.client.HTTPException, threading.BrokenBarrierError) as e:
        out.errors[name] = repr(e)
    finally:
        conn.close()


def _upload_and_kill(s: Served, job: dict[str, Any], round_no: int, kill_after: float) -> Outcome:
    out = Outcome()
    folder = job_ftp_dir(job)
    post_path = job["upload"]["postUrl"].split(str(s.http_port), 1)[1]
    start = threading.Barrier(UPLOADS + 1, timeout=30)
    stop = threading.Event()
    threads = []
    for k in range(UPLOADS):
        size = (2 << 20) + k * (160 << 10)  # 2 to 5 MiB
        duration = 0.15 + k * 0.13  # the first ones finish long before the kill, the last ones after it
        proto = "ftp" if k % 2 == 0 else "http"
        name = f"r{round_no}-{proto}-{k:02d}.bin"
        data = payload(round_no * 100 + k, size)
        out.sent[name] = data
        if proto == "ftp":
            f = s.ftp("alice")
            f.voidcmd("TYPE I")
            args: tuple[Any, ...] = (f, folder, name, data, duration, start, stop, out)
            threads.append(threading.Thread(target=_ftp_upload, args=args, name=f"up-{name}"))
        else:
            args = (s.http_port, post_path, name, data, duration, start, stop, out)
            threads.append(threading.Thread(target=_http_upload, args=args, name=f"up-{name}"))
    for t in threads:
        t.start()
    try:
        start.wait()
        time.sleep(kill_after)
        s.sigkill()
    finally:
        stop.set()
        for t in threads:
            t.join(20)
    assert not any(t.is_alive() for t in threads)
    return out


def _check_job(s: Served, session: str, job: dict[str, Any], out: Outcome, storage: Any, db: Any) -> None:
    """What the restarted gateway shows of one job is whole, and holds every acknowledged upload."""
    sent = out.sent
    api = s.files(session, job["id"])
    for name, rec in api.items():
        assert name in sent, f"unknown file {name} recorded"
        assert (rec["size"], rec["mD5"]) == (len(sent[name]), md5(sent[name])), f"{name} recorded partial: {rec}"
    lost = out.acked - set(api)
    assert not lost, f"acknowledged uploads lost after the crash: {sorted(lost)}"

    done, temps = disk_files(job_dir(storage, job))
    assert set(done) == set(api), "disk and database disagree"
    for name, data in done.items():
        assert md5(data) == md5(sent[name]), f"{name} on disk is not the file sent"
    partials = {r[0] for r in db_rows(db, "select temp_name from partials where job_id = ?", [job["id"]])}
    assert temps == partials, f"temp leftovers after start-up: {sorted(temps - partials)}"

    f = s.ftp("alice")
    try:
        assert ftp_names(f, job_ftp_dir(job)) == set(api), "the FTP listing shows something else"
    finally:
        f.close()
    entries = s.zip_entries(session, job["id"])
    assert set(entries) == set(api)
    for name, data in entries.items():
        assert data == sent[name], f"{name} in the zip is not the file sent"


@pytest.mark.slow
def test_sigkill_during_20_concurrent_uploads_loses_nothing_acknowledged_and_shows_nothing_partial(
        config_factory: ConfigFactory, tmp_path_factory: pytest.TempPathFactory) -> None:
    setup = prepare(config_factory, tmp_path_factory, {"ftp.max_cons_per_ip": 64})
    history: list[tuple[dict[str, Any], Outcome]] = []
    interrupted = acked = 0
    for round_no, kill_after in enumerate(KILL_AFTER):
        with serving(setup, f"round{round_no}") as s:
            session = s.login("alice")
            job = s.create_job(session, name=f"crash round {round_no}")
            out = _upload_and_kill(s, job, round_no, kill_after)
        assert integrity_check(setup.db) == "ok"
        assert not out.wrong, out.wrong
        history.append((job, out))
        print(f"round {round_no}: killed after {kill_after} s: {len(out.acked)} answered, "
              f"{len(out.sent) - len(out.acked)} cut")
        interrupted += len(out.sent) - len(out.acked)
        acked += len(out.acked)
        with serving(setup, f"after{round_no}") as s:
            session = s.login("alice")
            for j, o in history:  # earlier rounds' files survive later crashes too
                _check_job(s, session, j, o, setup.storage, setup.db)
            assert "Traceback" not in s.output
    # the kills really came in the middle: some uploads had been answered, others were cut
    assert acked >= 3 and interrupted >= 3, (acked, interrupted)
    assert integrity_check(setup.db) == "ok"
