"""Uploads never leave a half file, and a 226 is a promise: the record exists when the reply arrives;
aborted, oversized and refused uploads leave nothing visible; concurrent uploads never mix."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from conftest import Gateway, GatewayFactory
from ftp_helpers import (
    JobPaths,
    abort_transfer,
    api_files,
    assert_records_true,
    close_quietly,
    drop_session,
    ftp_as,
    ftp_connect,
    job_login,
    md5,
    names,
    new_job,
    partials,
    payload,
    records,
    refused,
    reply,
    retr,
    send_file,
    stor,
    temp_names,
    temp_sizes,
    wait_until,
)


async def assert_nothing_visible(gw: Gateway, session: str, job: dict[str, Any], name: str,
                                 logins: list[tuple[str, str]]) -> None:
    """The name exists nowhere a user could look: listings, SIZE (even for its uploader), the files API, the
    database; and no temp file or partial is left on disk."""
    p = JobPaths.of(job)
    for login, password in logins:
        with ftp_as(gw, login, password) as f:
            assert name not in names(f, p.original)
            assert refused(f.size, f"{p.original}/{name}").startswith("550")
            assert refused(retr, f, f"{p.original}/{name}").startswith("550")
    assert name not in await api_files(gw, session, job["id"], "ORIGINAL")
    assert name not in records(gw, job["id"], "ORIGINAL")
    assert partials(gw, job["id"]) == []
    assert temp_names(gw.job_dir(job, "ORIGINAL")) == []
    assert not (gw.job_dir(job, "ORIGINAL") / name).exists()


# ----------------------------------------------------------------------------- a 226 is a promise

async def test_the_record_and_the_files_api_show_a_file_the_instant_its_226_arrives(ftp_gw: Gateway) -> None:
    session, job, p = await new_job(ftp_gw)
    sizes = {"empty.jpg": 0, "one.jpg": 1, "block.jpg": 65536, "mb.jpg": (1 << 20) + 1, "three.jpg": 3 << 20}
    for who in ("alice", "job"):
        login, password = job_login(job) if who == "job" else ("alice", ftp_gw.world.passwords["alice"])
        with ftp_as(ftp_gw, login, password) as f:
            for name, size in sizes.items():
                data = payload(size, f"{who}-{name}")
                path = f"{who}-{name}"
                assert stor(f, f"{p.original}/{path}", data) == "226 Transfer complete."
                # nothing ran in between: the database, then the API, as they are the moment 226 was read
                rec = records(ftp_gw, job["id"], "ORIGINAL").get(path)
                assert rec is not None, f"no record when 226 arrived for {path}"
                assert (rec["size"], rec["md5"], rec["protocol"], rec["login"]) == (size, md5(data), "ftp", login)
                assert (ftp_gw.job_dir(job, "ORIGINAL") / path).read_bytes() == data
                listed = await api_files(ftp_gw, session, job["id"], "ORIGINAL")
                assert listed[path]["size"] == size and listed[path]["mD5"] == md5(data)
                got = await ftp_gw.call("GET", listed[path]["downloadUrl"].split(str(ftp_gw.client.port), 1)[1],
                                        accept=None)
                assert got.status == 200 and got.body == data
    assert_records_true(ftp_gw, job)


async def test_a_running_upload_is_invisible_until_its_226(ftp_gw: Gateway) -> None:
    """While the bytes arrive, the name does not exist for anyone (only a hidden temp file is on disk)."""
    session, job, p = await new_job(ftp_gw)
    data = payload(600_000, "running")
    writer = ftp_connect(ftp_gw.ftp_port, "alice", ftp_gw.world.passwords["alice"])
    try:
        conn = writer.transfercmd(f"STOR {p.original}/running.jpg")
        with conn:
            conn.sendall(data[:300_000])
            folder = ftp_gw.job_dir(job, "ORIGINAL")
            wait_until(lambda: temp_names(folder), what="the upload's temp file")
            temp = temp_names(folder)[0]
            with ftp_as(ftp_gw, "alice") as f:
                assert names(f, p.original) == []
                assert reply(f, f"MLST {p.original}/running.jpg").startswith("550")
                assert refused(retr, f, f"{p.original}/running.jpg").startswith("550")
                for cmd in ("RETR", "SIZE", "MLST", "DELE", "RNFR"):  # the temp name cannot be named
                    assert reply(f, f"{cmd} {p.original}/{temp}")[:1] == "5", cmd
            assert records(ftp_gw, job["id"]) == {}
            conn.sendall(data[300_000:])
        assert writer.voidresp().startswith("226")
    finally:
        close_quietly(writer)
    with ftp_as(ftp_gw, "carol") as f:
        assert names(f, p.original) == ["running.jpg"] and retr(f, f"{p.original}/running.jpg") == data
    assert (await api_files(ftp_gw, session, job["id"], "ORIGINAL"))["running.jpg"]["mD5"] == md5(data)
    assert temp_names(ftp_gw.job_dir(job, "ORIGINAL")) == []


# ----------------------------------------------------------------------------- incomplete uploads leave nothing

async def test_an_aborted_upload_leaves_nothing(ftp_gw: Gateway) -> None:
    session, job, p = await new_job(ftp_gw)
    folder = ftp_gw.job_dir(job, "ORIGINAL")
    with ftp_as(ftp_gw, "alice") as f:
        conn = f.transfercmd(f"STOR {p.original}/aborted.jpg")
        with conn:
            conn.sendall(payload(256_000, "abor"))
            wait_until(lambda: any(size > 0 for size in temp_sizes(folder)),
                       what="bytes on disk")
            assert abort_transfer(f) == ["426 Transfer aborted via ABOR.", "226 ABOR command successful."]
        assert f.sendcmd("NOOP").startswith("200")
        assert refused(f.size, f"{p.original}/aborted.jpg").startswith("550")  # not even kept for resume
    await assert_nothing_visible(ftp_gw, session, job, "aborted.jpg",
                                 [("alice", ftp_gw.world.passwords["alice"]), job_login(job)])
    with ftp_as(ftp_gw, "alice") as f:  # the name is free for a fresh upload
        assert stor(f, f"{p.original}/aborted.jpg", b"second try").startswith("226")
    assert_records_true(ftp_gw, job)


async def test_an_oversized_upload_is_refused_552_and_leaves_nothing(gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory({"storage.max_file_size": 100_000}, ftp=True)
    session, job, p = await new_job(gw)
    exact, small = payload(100_000, "exact"), payload(90_000, "small")
    with ftp_as(gw, "alice") as f:
        assert stor(f, f"{p.original}/exact.jpg", exact).startswith("226")  # the limit itself is allowed
        over = send_file(f, f"STOR {p.original}/big.jpg", payload(3 << 20, "big"))
        assert over.startswith("552") and "100000" in over, over
        one_more = send_file(f, f"STOR {p.original}/big.jpg", payload(100_001, "one more"))
        assert one_more.startswith("552"), one_more
        # APPE past the limit: refused, and the file it would have grown is untouched
        assert stor(f, f"{p.original}/small.jpg", small).startswith("226")
        assert send_file(f, f"APPE {p.original}/small.jpg", payload(20_000, "tail")).startswith("552")
        assert send_file(f, f"STOR {p.original}/small.jpg", payload(200_000, "replace")).startswith("552")
        assert retr(f, f"{p.original}/small.jpg") == small
        assert f.sendcmd("NOOP").startswith("200")  # the session goes on
    await assert_nothing_visible(gw, session, job, "big.jpg", [("alice", gw.world.passwords["alice"])])
    assert sorted(records(gw, job["id"], "ORIGINAL")) == ["exact.jpg", "small.jpg"]
    assert records(gw, job["id"], "ORIGINAL")["small.jpg"]["md5"] == md5(small)
    assert_records_true(gw, job)


async def test_no_upload_starts_when_the_disk_is_below_its_floor(gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory({"storage.min_free_bytes": 1 << 62}, ftp=True)
    session, job, p = await new_job(gw)
    with ftp_as(gw, "alice") as f:
        text = refused(stor, f, f"{p.original}/photo.jpg", b"photo")
        assert text.startswith("552") and "free space" in text, text
    await assert_nothing_visible(gw, session, job, "photo.jpg", [("alice", gw.world.passwords["alice"])])


@pytest.mark.parametrize("then", ["ABOR", "STOR again", "USER", "hang up"])
async def test_a_stor_whose_data_connection_never_comes_leaves_nothing(ftp_gw: Gateway, then: str) -> None:
    session, job, p = await new_job(ftp_gw)
    folder = ftp_gw.job_dir(job, "ORIGINAL")
    f = ftp_connect(ftp_gw.ftp_port, "alice", ftp_gw.world.passwords["alice"])
    try:
        f.makepasv()  # a passive port is offered, and never connected to
        assert f.sendcmd(f"STOR {p.original}/never.jpg").startswith("150")
        if then == "ABOR":
            assert f.sendcmd("ABOR").startswith("225")
        elif then == "STOR again":
            assert stor(f, f"{p.original}/other.jpg", b"other").startswith("226")
        elif then == "USER":
            assert f.sendcmd("USER carol").startswith("331")
        else:
            drop_session(f)
    finally:
        close_quietly(f)
    wait_until(lambda: temp_names(folder) == [], what="the pending upload's temp file to go")
    await assert_nothing_visible(ftp_gw, session, job, "never.jpg", [("alice", ftp_gw.world.passwords["alice"])])


# ----------------------------------------------------------------------------- concurrency

async def test_concurrent_uploads_of_one_name_never_mix(ftp_gw: Gateway) -> None:
    """Four sessions (three logins) upload different bytes to one name at the same time, three times over."""
    rounds = 3
    session, job, p = await new_job(ftp_gw)
    logins = [("alice", ftp_gw.world.passwords["alice"]), ("carol", ftp_gw.world.passwords["carol"]),
              job_login(job), ("alice", ftp_gw.world.passwords["alice"])]
    sessions = [ftp_connect(ftp_gw.ftp_port, login, password) for login, password in logins]
    target = f"{p.original}/same.jpg"
    on_disk = ftp_gw.job_dir(job, "ORIGINAL") / "same.jpg"
    try:
        for r in range(rounds):
            sources = [payload(512 * 1024, f"mix-{r}-{i}") for i in range(len(sessions))]
            replies: list[str] = [""] * len(sessions)
            spans: list[tuple[float, float]] = [(0.0, 0.0)] * len(sessions)
            start, halfway = threading.Barrier(len(sessions)), threading.Barrier(len(sessions))

            def upload(i: int, sources: list[bytes] = sources, replies: list[str] = replies,
                       spans: list[tuple[float, float]] = spans, start: threading.Barrier = start,
                       halfway: threading.Barrier = halfway) -> None:
                f = sessions[i]
                conn = f.transfercmd(f"STOR {target}")
                with conn:
                    start.wait(10)
                    began = time.monotonic()
                    data = memoryview(sources[i])
                    for offset in range(0, len(data), 32 * 1024):
                        if offset == len(data) // 2:
                            halfway.wait(10)  # every upload is half sent before any sends its second half
                        conn.sendall(data[offset:offset + 32 * 1024])
                        time.sleep(0.001)  # interleave with the other sessions
                    spans[i] = (began, time.monotonic())
                replies[i] = f.voidresp()

            threads = [threading.Thread(target=upload, args=(i,)) for i in range(len(sessions))]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
            assert replies == ["226 Transfer complete."] * len(sessions), replies
            assert max(b for b, _ in spans) < min(e for _, e in spans), "the uploads did not overlap"
            final = on_disk.read_bytes()
            assert final in sources, f"round {r}: the stored file is none of the uploads (mixed)"
            rec = records(ftp_gw, job["id"], "ORIGINAL")
            assert list(rec) == ["same.jpg"]
            assert rec["same.jpg"]["md5"] == md5(final) and rec["same.jpg"]["size"] == len(final)
            assert retr(sessions[0], target) == final
            for f in sessions[1:]:
                f.voidcmd("NOOP")  # every client is seen to have read its 226: the replaced files' second names go
            wait_until(lambda: temp_names(ftp_gw.job_dir(job, "ORIGINAL")) == [], what="no temp files")
            assert partials(ftp_gw) == []
    finally:
        for f in sessions:
            close_quietly(f)
    listed = await api_files(ftp_gw, session, job["id"], "ORIGINAL")
    assert list(listed) == ["same.jpg"] and listed["same.jpg"]["mD5"] == md5(on_disk.read_bytes())
