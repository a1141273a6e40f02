"""Graceful stop under load: SIGTERM to `gateway serve` while curl uploads run over FTP and HTTP.

Transfers that end within [server] shutdown_grace finish and are stored; new ones are refused (HTTP
503 shutting_down, FTP 421); the process exits 0. A transfer longer than the grace is cut and leaves
no complete-looking file (at most a hidden partial an FTP client may resume).
"""

from __future__ import annotations

import ftplib
import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import ConfigFactory
from helpers_proc import (
    Served,
    clean_env,
    db_rows,
    disk_files,
    ftp_names,
    http_call,
    job_dir,
    job_ftp_dir,
    md5,
    multipart,
    payload,
    prepare,
    serving,
)

GRACE = 3.0
MiB = 1 << 20


def curl_ftp(s: Served, job: dict[str, Any], src: Path, rate: str) -> subprocess.Popen[bytes]:
    url = f"ftp://127.0.0.1:{s.ftp_port}{job_ftp_dir(job)}/{src.name}"
    return subprocess.Popen(["curl", "-sS", "--noproxy", "*", "--limit-rate", rate, "-u",
                             f"alice:{s.world.passwords['alice']}", "-T", str(src), url],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=clean_env())


def curl_http(s: Served, job: dict[str, Any], src: Path, rate: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(["curl", "-sS", "--noproxy", "*", "--limit-rate", rate, "-w", "\n%{http_code}",
                             "-F", f"file=@{src}", job["upload"]["postUrl"]],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=clean_env())


def wait_for_spools(folder: Path, count: int, timeout: float = 10) -> None:
    """Until `count` uploads have bytes in their hidden spools (the transfers are really running)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        temps = [p for p in folder.iterdir() if p.name.startswith(".gwtmp-") and p.stat().st_size > 0]
        if len(temps) >= count:
            return
        time.sleep(0.02)
    pytest.fail(f"only {len(temps)} of {count} uploads started")


@pytest.mark.slow
def test_sigterm_lets_running_transfers_finish_refuses_new_ones_and_cuts_those_past_the_grace(
        config_factory: ConfigFactory, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> None:
    setup = prepare(config_factory, tmp_path_factory, {"server.shutdown_grace": GRACE})
    files = {name: payload(i, size) for i, (name, size) in enumerate(
        (("quick-ftp.bin", MiB), ("quick-http.bin", MiB), ("long-ftp.bin", 4 * MiB), ("long-http.bin", 4 * MiB)))}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        with serving(setup, "drain") as s:
            session = s.login("alice")
            job = s.create_job(session)
            folder = job_dir(setup.storage, job)
            # ~1.7 s each: they end within the grace; ~20 s each: they cannot
            procs["quick-ftp.bin"] = curl_ftp(s, job, tmp_path / "quick-ftp.bin", "600K")
            procs["quick-http.bin"] = curl_http(s, job, tmp_path / "quick-http.bin", "600K")
            procs["long-ftp.bin"] = curl_ftp(s, job, tmp_path / "long-ftp.bin", "200K")
            procs["long-http.bin"] = curl_http(s, job, tmp_path / "long-http.bin", "200K")
            wait_for_spools(folder, 4)

            s.proc.send_signal(15)
            stopped_at = time.monotonic()
            time.sleep(0.2)
            # new requests are refused while the running transfers drain
            r = http_call(s.http_port, "GET", "/health")
            assert r.status == 503 and r.json()["code"] == "shutting_down", r
            body, ctype = multipart([("late.bin", b"late")])
            post = job["upload"]["postUrl"].split(str(s.http_port), 1)[1]
            r = http_call(s.http_port, "POST", post, body=body, headers={"Content-Type": ctype})
            assert r.status == 503 and r.content_type == "application/json", r
            assert r.json()["code"] == "shutting_down", r
            with pytest.raises(ftplib.error_temp, match=r"^421"):
                s.ftp("alice", timeout=5)

            rc = s.proc.wait(GRACE + 10)
            took = time.monotonic() - stopped_at
            assert rc == 0, s.output[-3000:]
            # the long transfers held the process for the grace, and no more
            assert GRACE - 0.5 <= took <= GRACE + 2, took
            assert "Traceback" not in s.output, s.output[-3000:]

        outcome = {name: (*p.communicate(timeout=10), p.returncode) for name, p in procs.items()}
        _, ftp_err, ftp_rc = outcome["quick-ftp.bin"]
        assert ftp_rc == 0, ftp_err
        http_out, http_err, http_rc = outcome["quick-http.bin"]
        text, _, code = http_out.decode().rpartition("\n")
        assert http_rc == 0 and code == "201", (http_out, http_err)
        assert [(f["fileName"], f["mD5"]) for f in json.loads(text)["files"]] == [
            ("quick-http.bin", md5(files["quick-http.bin"]))]
        for name in ("long-ftp.bin", "long-http.bin"):
            out, err, rc = outcome[name]
            assert rc != 0 or not out.decode().endswith("201"), f"{name} claims success: {out!r} {err!r}"

        # what the database and the disk hold: the two quick files, whole; no long file under its name
        stored = {r[0]: (r[1], r[2]) for r in db_rows(setup.db, "select path, size, md5 from files where job_id = ?",
                                                      [job["id"]])}
        quick = {n: (len(files[n]), md5(files[n])) for n in ("quick-ftp.bin", "quick-http.bin")}
        assert stored == quick
        done, temps = disk_files(folder)
        assert {n: (len(d), md5(d)) for n, d in done.items()} == quick
        partials = {r[0] for r in db_rows(setup.db, "select temp_name from partials where job_id = ?", [job["id"]])}
        assert temps <= partials, "an unrecorded temp file was left behind"

        with serving(setup, "again") as s:  # and after a restart, nothing else shows up
            session = s.login("alice")
            assert {n: (f["size"], f["mD5"]) for n, f in s.files(session, job["id"]).items()} == quick
            f = s.ftp("alice")
            try:
                assert ftp_names(f, job_ftp_dir(job)) == set(quick)
            finally:
                f.close()
            assert s.terminate(GRACE + 5) == 0
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
            p.communicate(timeout=10)


@pytest.mark.slow
def test_an_http_upload_longer_than_the_grace_is_cut_when_the_grace_ends(
        config_factory: ConfigFactory, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> None:
    grace = 1.5
    setup = prepare(config_factory, tmp_path_factory, {"server.shutdown_grace": grace})
    src = tmp_path / "slow-http.bin"
    src.write_bytes(payload(9, MiB))
    proc = None
    try:
        with serving(setup, "cut") as s:
            session = s.login("alice")
            job = s.create_job(session)
            proc = curl_http(s, job, src, "100K")  # ~10 s
            wait_for_spools(job_dir(setup.storage, job), 1)
            s.proc.send_signal(15)
            stopped_at = time.monotonic()
            rc = s.proc.wait(4 * grace + 10)
            took = time.monotonic() - stopped_at
            assert rc == 0
            out, err = proc.communicate(timeout=10)
            assert not out.decode().endswith("201"), (out, err)
            assert db_rows(setup.db, "select count(*) from files") == [(0,)]
            assert took <= grace + 1.0, f"the process stopped {took:.1f} s after SIGTERM (grace {grace} s)"
    finally:
        if proc is not None:
            if proc.poll() is None:
                proc.kill()
            proc.communicate(timeout=10)
