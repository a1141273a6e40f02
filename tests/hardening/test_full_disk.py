"""Full disk: storage_root on a size-limited tmpfs (mounted when running as root, else skipped).

Uploads that do not fit fail cleanly (FTP 552, HTTP 507 insufficient_storage), leave nothing behind,
and the server keeps serving; once space is freed they succeed again. Under [storage] min_free_bytes
new uploads are refused up front and GET /health answers 503, while the database (on the same
small disk) keeps working: sessions and job creation.
"""

from __future__ import annotations

import ftplib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Gateway, GatewayFactory, assert_error
from helpers_proc import md5, payload

MiB = 1 << 20
DISK = 8 * MiB


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """An 8 MiB tmpfs at tmp_path/small, unmounted after the gateway using it has stopped (this fixture
    is set up before gateway_factory, so it is torn down after it)."""
    if os.geteuid() != 0:
        pytest.skip(f"mounting a size-limited tmpfs needs root (running as uid {os.geteuid()})")
    mnt = tmp_path / "small"
    mnt.mkdir()
    run = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK}", "tmpfs", str(mnt)],
                         capture_output=True, text=True, check=False)
    if run.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {run.stderr.strip()}")
    try:
        yield mnt
    finally:
        if subprocess.run(["umount", str(mnt)], capture_output=True, check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True, check=False)


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def fill(path: Path, leave: int) -> Path:
    """A filler file taking all but `leave` bytes of the disk holding path."""
    filler = path / "filler.bin"
    with open(filler, "wb") as fh:
        fh.write(b"\0" * max(0, free_bytes(path) - leave))
    return filler


def ftp_store(gw: Gateway, path: str, data: bytes) -> str:
    """STOR as alice; the final reply line (a refusal before or after the data connection included)."""
    f = ftplib.FTP()
    f.connect("127.0.0.1", gw.ftp_port, timeout=20)
    try:
        f.login("alice", gw.world.passwords["alice"])
        f.voidcmd("TYPE I")
        try:
            conn = f.transfercmd(f"STOR {path}")
        except ftplib.Error as e:
            return str(e)
        try:
            conn.sendall(data)
        except OSError:
            pass  # the server cut the data connection: its reply says why
        finally:
            conn.close()
        try:
            reply = f.voidresp()
        except ftplib.Error as e:
            reply = str(e)
        assert f.voidcmd("NOOP").startswith("200")  # the session goes on
        return reply
    finally:
        f.close()


def multipart(name: str, data: bytes) -> tuple[bytes, str]:
    b = "fulldisk-boundary"
    body = (f'--{b}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
            f"Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{b}--\r\n".encode()
    return body, f"multipart/form-data; boundary={b}"


async def http_store(gw: Gateway, job: dict[str, Any], name: str, data: bytes) -> Any:
    body, ctype = multipart(name, data)
    path = job["upload"]["postUrl"].split(gw.public_url, 1)[1]
    return await gw.call("POST", path, data=body, content_type=ctype, accept=None, client=None)


def ftp_folder(job: dict[str, Any]) -> str:
    return f"/{job['createdDate'][:10].replace('-', '')}/{job['id']}/ORIGINAL"


def assert_nothing_left(gw: Gateway, job: dict[str, Any], names: set[str]) -> None:
    folder = gw.job_dir(job, "ORIGINAL")
    assert {p.name for p in folder.iterdir()} == names, "leftovers in the job folder"
    rows = gw.query("select path from files where job_id = ?", [job["id"]])
    assert {r["path"] for r in rows} == names


async def test_uploads_that_do_not_fit_fail_cleanly_and_succeed_once_space_is_freed(
        small_disk: Path, gateway_factory: GatewayFactory, tmp_path: Path) -> None:
    gw = await gateway_factory({"storage.root": str(small_disk / "storage_root"),
                                "database.path": str(tmp_path / "db" / "gateway.db"),
                                "storage.min_free_bytes": 64 << 10}, ftp=True)
    job = await gw.create_job(await gw.session("alice"))
    before = free_bytes(small_disk)
    too_big = payload(1, 10 * MiB)

    reply = ftp_store(gw, f"{ftp_folder(job)}/big-ftp.bin", too_big)
    assert reply.startswith("552"), reply
    assert_nothing_left(gw, job, set())
    assert free_bytes(small_disk) == before

    r = await http_store(gw, job, "big-http.bin", too_big)
    assert_error(r, 507, "insufficient_storage")
    assert_nothing_left(gw, job, set())
    assert free_bytes(small_disk) == before
    assert (await gw.call("GET", "/health")).status == 200

    # a nearly full disk: a 2 MiB file does not fit, then fits once the filler is gone
    filler = fill(small_disk, leave=MiB)
    two = payload(2, 2 * MiB)
    assert ftp_store(gw, f"{ftp_folder(job)}/two-ftp.bin", two).startswith("552")
    assert_error(await http_store(gw, job, "two-http.bin", two), 507, "insufficient_storage")
    assert_nothing_left(gw, job, set())
    filler.unlink()
    assert ftp_store(gw, f"{ftp_folder(job)}/two-ftp.bin", two).startswith("226")
    r = await http_store(gw, job, "two-http.bin", two)
    assert r.status == 201, r
    assert_nothing_left(gw, job, {"two-ftp.bin", "two-http.bin"})
    files = (await gw.call("GET", f"/jobs/{job['id']}/files", session=await gw.session("alice"))).json()["files"]
    assert sorted((f["fileName"], f["size"], f["mD5"]) for f in files) == [
        ("two-ftp.bin", len(two), md5(two)), ("two-http.bin", len(two), md5(two))]


async def test_under_the_floor_uploads_are_refused_up_front_health_says_so_and_the_database_works(
        small_disk: Path, gateway_factory: GatewayFactory) -> None:
    # the database lives on the small disk too (its default place below storage_root)
    gw = await gateway_factory({"storage.root": str(small_disk / "storage_root"), "database.path": None,
                                "storage.min_free_bytes": 4 * MiB}, ftp=True)
    assert gw.db_path.is_relative_to(small_disk)
    session = await gw.session("alice")
    job = await gw.create_job(session)
    health = await gw.call("GET", "/health")
    assert health.status == 200 and health.json()["storage"]["acceptingUploads"] is True, health

    filler = fill(small_disk, leave=3 * MiB)  # under the 4 MiB floor, with room left for the database
    health = await gw.call("GET", "/health")
    assert health.status == 503, health
    body = health.json()
    assert body["status"] == "low_disk_space" and body["storage"]["acceptingUploads"] is False, body
    assert body["storage"]["minFreeBytes"] == 4 * MiB and body["storage"]["freeBytes"] < 4 * MiB, body

    small = payload(3, 10_000)
    reply = ftp_store(gw, f"{ftp_folder(job)}/small.bin", small)
    assert reply.startswith("552"), reply  # refused before any data connection
    assert_error(await http_store(gw, job, "small.bin", small), 507, "insufficient_storage")
    assert_nothing_left(gw, job, set())

    # the database keeps working under the floor: a login, a job, a listing
    assert (await gw.login_reply("carol")).status == 201
    second = await gw.post_job(session)
    assert second.status == 201, second
    assert (await gw.call("GET", "/jobs", session=session)).json()["total"] == 2

    filler.unlink()
    assert (await gw.call("GET", "/health")).status == 200
    assert ftp_store(gw, f"{ftp_folder(job)}/small.bin", small).startswith("226")
    assert (await http_store(gw, job, "small-http.bin", small)).status == 201
    assert_nothing_left(gw, job, {"small.bin", "small-http.bin"})
