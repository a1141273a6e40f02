"""Resume without exposing half files: an interrupted upload is kept hidden for its login only, SIZE
reports it to that login, REST+STOR or APPE finish it (ftplib, and curl killed with -9 then `lftp put -c`)."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import Gateway, GatewayFactory
from ftp_helpers import (
    JobPaths,
    api_files,
    assert_records_true,
    async_wait_until,
    clean_env,
    close_quietly,
    drop,
    drop_session,
    ftp_as,
    ftp_connect,
    ftp_url,
    job_login,
    lftp,
    md5,
    names,
    new_job,
    partial_of,
    partials,
    payload,
    records,
    refused,
    require_tool,
    retr,
    stor,
    temp_names,
    temp_sizes,
    wait_until,
    writer_barrier,
)

from gateway.api.keys import WRITER
from gateway.ftp import uploads

SIZE = 1_000_000
CUT = 400_000


def temp_file(gw: Gateway, job: dict[str, Any]) -> Path:
    folder = gw.job_dir(job, "ORIGINAL")
    found = temp_names(folder)
    assert len(found) == 1, found
    return folder / found[0]


def interrupted_upload(gw: Gateway, job: dict[str, Any], name: str, data: bytes, cut: int,
                       login: str = "alice", password: str | None = None) -> None:
    """Send the first `cut` bytes of an upload, wait until the server has them on disk, then vanish (the
    control connection is reset; the data connection closes after it)."""
    p = JobPaths.of(job)
    f = ftp_connect(gw.ftp_port, login, password or gw.world.passwords[login])
    conn = f.transfercmd(f"STOR {p.original}/{name}")
    try:
        conn.sendall(data[:cut])
        folder = gw.job_dir(job, "ORIGINAL")
        wait_until(lambda: cut in temp_sizes(folder),
                   what=f"{cut} bytes on the server's disk")
        drop_session(f)
    finally:
        conn.close()
        f.close()
    wait_until(lambda: partial_of(gw, job["id"], name, login), what="the partial to be recorded")


async def assert_hidden_partial(gw: Gateway, session: str, job: dict[str, Any], name: str, cut: int,
                                owner: str) -> None:
    """Only the uploader's SIZE sees the partial; no listing, record or API entry for anyone."""
    p = JobPaths.of(job)
    others = [(x, gw.world.passwords[x]) for x in ("alice", "carol", "pat") if x != owner]
    if owner != job_login(job)[0]:
        others.append(job_login(job))
    with ftp_as(gw, owner, None if owner in gw.world.passwords else job_login(job)[1]) as f:
        assert f.size(f"{p.original}/{name}") == cut
        assert names(f, p.original) == []
        assert refused(retr, f, f"{p.original}/{name}").startswith("550")
    for login, password in others:
        with ftp_as(gw, login, password) as f:
            assert refused(f.size, f"{p.original}/{name}").startswith("550"), login
            assert names(f, p.original) == [], login
    assert records(gw, job["id"]) == {}
    assert await api_files(gw, session, job["id"]) == {}
    assert not (gw.job_dir(job, "ORIGINAL") / name).exists()


# ----------------------------------------------------------------------------- ftplib

@pytest.mark.parametrize("how", ["REST+STOR", "APPE"])
async def test_resume_after_a_dropped_control_connection(ftp_gw: Gateway, how: str) -> None:
    session, job, p = await new_job(ftp_gw)
    data = payload(SIZE, "resume")
    interrupted_upload(ftp_gw, job, "photo.jpg", data, CUT)
    partial_inode = temp_file(ftp_gw, job).stat().st_ino
    await assert_hidden_partial(ftp_gw, session, job, "photo.jpg", CUT, "alice")
    with ftp_as(ftp_gw, "alice") as f:
        offset = f.size(f"{p.original}/photo.jpg")  # what a resuming client asks first
        assert offset == CUT
        if how == "APPE":
            assert stor(f, f"{p.original}/photo.jpg", data[offset:], cmd="APPE").startswith("226")
        else:
            assert stor(f, f"{p.original}/photo.jpg", data[offset:], rest=offset).startswith("226")
        assert f.size(f"{p.original}/photo.jpg") == SIZE
        assert f.sendcmd(f"XMD5 {p.original}/photo.jpg") == f"250 {md5(data)}"
    final = ftp_gw.job_dir(job, "ORIGINAL") / "photo.jpg"
    assert final.read_bytes() == data
    assert final.stat().st_ino == partial_inode  # the kept bytes were continued, not sent again
    assert records(ftp_gw, job["id"], "ORIGINAL")["photo.jpg"]["md5"] == md5(data)
    assert (await api_files(ftp_gw, session, job["id"], "ORIGINAL"))["photo.jpg"]["mD5"] == md5(data)
    assert partials(ftp_gw) == [] and temp_names(ftp_gw.job_dir(job, "ORIGINAL")) == []
    with ftp_as(ftp_gw, "carol") as f:
        assert retr(f, f"{p.original}/photo.jpg") == data


async def test_a_per_job_login_resumes_its_own_partial(ftp_gw: Gateway) -> None:
    session, job, p = await new_job(ftp_gw)
    user, password = job_login(job)
    data = payload(SIZE, "job-login")
    interrupted_upload(ftp_gw, job, "photo.jpg", data, CUT, user, password)
    await assert_hidden_partial(ftp_gw, session, job, "photo.jpg", CUT, user)
    with ftp_as(ftp_gw, user, password) as f:
        stor(f, f"{p.original}/photo.jpg", data[CUT:], rest=CUT)
    assert (ftp_gw.job_dir(job, "ORIGINAL") / "photo.jpg").read_bytes() == data
    assert records(ftp_gw, job["id"], "ORIGINAL")["photo.jpg"]["login"] == user


async def test_partials_of_two_logins_stay_apart(ftp_gw: Gateway) -> None:
    _, job, p = await new_job(ftp_gw)
    a, c = payload(SIZE, "alice"), payload(SIZE, "carol")
    interrupted_upload(ftp_gw, job, "photo.jpg", a, 300_000, "alice")
    interrupted_upload(ftp_gw, job, "photo.jpg", c, 500_000, "carol")
    with ftp_as(ftp_gw, "alice") as fa, ftp_as(ftp_gw, "carol") as fc:
        assert fa.size(f"{p.original}/photo.jpg") == 300_000
        assert fc.size(f"{p.original}/photo.jpg") == 500_000
        stor(fc, f"{p.original}/photo.jpg", c[500_000:], rest=500_000)
        assert retr(fa, f"{p.original}/photo.jpg") == c  # alice sees carol's finished file...
        assert fa.size(f"{p.original}/photo.jpg") == 300_000  # ...and SIZE still offers her own partial
        stor(fa, f"{p.original}/photo.jpg", a[300_000:], rest=300_000)
        assert retr(fc, f"{p.original}/photo.jpg") == a
    assert partials(ftp_gw) == [] and temp_names(ftp_gw.job_dir(job, "ORIGINAL")) == []
    assert_records_true(ftp_gw, job)


async def stalled_upload(gw: Gateway, job: dict[str, Any], data: bytes) -> str:
    """Send CUT bytes, then nothing: the server's answer once [ftp] idle_timeout (0.5 s) has passed."""
    p = JobPaths.of(job)
    f = ftp_connect(gw.ftp_port, "alice", gw.world.passwords["alice"])
    try:
        conn = f.transfercmd(f"STOR {p.original}/photo.jpg")
        with conn:
            conn.sendall(data[:CUT])
            started = time.monotonic()
            answer = _reply_or_error(f)  # nothing more is sent: wait for the server
        assert time.monotonic() - started < 5
        return answer
    finally:
        f.close()


async def test_a_stalled_upload_times_out_and_is_kept_for_resume(gateway_factory: GatewayFactory) -> None:
    """A transfer that stops sending for longer than [ftp] idle_timeout is cut and is incomplete: its bytes
    are kept for the same login, like a dropped connection's."""
    gw = await gateway_factory({"ftp.idle_timeout": 0.5}, ftp=True)
    session, job, p = await new_job(gw)
    data = payload(SIZE, "stalled")
    answer = await stalled_upload(gw, job, data)
    assert not answer.startswith("226"), answer
    wait_until(lambda: partial_of(gw, job["id"], "photo.jpg", "alice"), what="the partial")
    assert records(gw, job["id"]) == {} and await api_files(gw, session, job["id"]) == {}
    with ftp_as(gw, "alice") as g:
        assert g.size(f"{p.original}/photo.jpg") == CUT
        assert stor(g, f"{p.original}/photo.jpg", data[CUT:], rest=CUT).startswith("226")
    assert (gw.job_dir(job, "ORIGINAL") / "photo.jpg").read_bytes() == data


async def test_a_slow_upload_that_keeps_sending_is_not_cut(gateway_factory: GatewayFactory) -> None:
    """Uploads are read in large pieces (a low-water mark on the socket), yet a client that sends a little
    within every idle_timeout is making progress: never cut, every byte stored."""
    gw = await gateway_factory({"ftp.idle_timeout": 0.5}, ftp=True)
    session, job, p = await new_job(gw)
    data = payload(12 * 20_000, "trickle")
    f = ftp_connect(gw.ftp_port, "alice", gw.world.passwords["alice"])
    try:
        with f.transfercmd(f"STOR {p.original}/slow.jpg") as conn:
            for i in range(0, len(data), 20_000):  # 20 kB every 0.25 s: 3 s in all, far under the mark
                conn.sendall(data[i:i + 20_000])
                time.sleep(0.25)
        assert f.voidresp().startswith("226")
    finally:
        f.close()
    assert (gw.job_dir(job, "ORIGINAL") / "slow.jpg").read_bytes() == data
    assert (await api_files(gw, session, job["id"], "ORIGINAL"))["slow.jpg"]["size"] == len(data)


async def test_a_stalled_upload_is_told_why_it_was_cut(gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory({"ftp.idle_timeout": 0.5}, ftp=True)
    _, job, _ = await new_job(gw)
    answer = await stalled_upload(gw, job, payload(SIZE, "told"))
    assert answer.startswith("421") and "timed out" in answer, answer


def _reply_or_error(f: Any) -> str:
    try:
        return str(f.getresp())
    except (OSError, EOFError) as e:
        return repr(e)
    except Exception as e:
        return str(e)


async def test_a_fresh_stor_replaces_a_partial(ftp_gw: Gateway) -> None:
    _, job, p = await new_job(ftp_gw)
    interrupted_upload(ftp_gw, job, "photo.jpg", payload(SIZE, "old"), CUT)
    fresh = payload(5000, "fresh")
    with ftp_as(ftp_gw, "alice") as f:
        assert stor(f, f"{p.original}/photo.jpg", fresh).startswith("226")
        assert f.size(f"{p.original}/photo.jpg") == len(fresh)
    assert partials(ftp_gw) == [] and temp_names(ftp_gw.job_dir(job, "ORIGINAL")) == []
    assert (ftp_gw.job_dir(job, "ORIGINAL") / "photo.jpg").read_bytes() == fresh


async def test_expired_partials_are_removed(gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory({"ftp.partial_ttl": 1.0}, ftp=True)
    _, job, p = await new_job(gw)
    interrupted_upload(gw, job, "photo.jpg", payload(SIZE, "expire"), CUT)
    folder = gw.job_dir(job, "ORIGINAL")
    assert len(temp_names(folder)) == 1
    await async_wait_until(lambda: not temp_names(folder) and not partials(gw), timeout=10,
                           what="the sweeper to remove the expired partial")
    with ftp_as(gw, "alice") as f:
        assert refused(f.size, f"{p.original}/photo.jpg").startswith("550")
        assert names(f, p.original) == []


async def test_a_reset_data_connection_is_never_answered_226(ftp_gw: Gateway) -> None:
    """The control connection stays; only the data connection is reset mid-upload: that is not a finished
    file, so the reply must not be 226 (which promises the file is stored)."""
    _, job, p = await new_job(ftp_gw)
    data = payload(SIZE, "reset")
    with ftp_as(ftp_gw, "alice") as f:
        conn = f.transfercmd(f"STOR {p.original}/photo.jpg")
        conn.sendall(data[:CUT])
        folder = ftp_gw.job_dir(job, "ORIGINAL")
        wait_until(lambda: CUT in temp_sizes(folder))
        drop(conn)
        try:
            answer = f.voidresp()
        except (OSError, EOFError) as e:
            answer = repr(e)
        except Exception as e:
            answer = str(e)
        stored = (folder / "photo.jpg").exists()
        assert not answer.startswith("226") or stored, f"{answer!r} but the file is not stored"
        assert answer[:1] == "4", answer  # 426: transfer aborted (kept for resume)
        assert f.size(f"{p.original}/photo.jpg") == CUT


# ----------------------------------------------------------------------------- real clients

async def test_a_killed_curl_leaves_no_file_and_lftp_put_c_finishes_it(ftp_gw: Gateway, tmp_path: Path) -> None:
    require_tool("curl")
    require_tool("lftp")
    session, job, p = await new_job(ftp_gw)
    src = tmp_path / "photo.jpg"
    data = payload(1_500_000, "curl-kill")
    src.write_bytes(data)
    password = ftp_gw.world.passwords["alice"]
    folder = ftp_gw.job_dir(job, "ORIGINAL")
    proc = subprocess.Popen(["curl", "-sS", "--limit-rate", "400k", "-T", str(src),
                             ftp_url(ftp_gw.ftp_port, p.original + "/", "alice", password)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=clean_env())
    try:
        wait_until(lambda: any(size > 200_000 for size in temp_sizes(folder)),
                   timeout=15, what="curl's first bytes on disk")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    assert proc.returncode == -signal.SIGKILL
    # the kill ends the data stream like a finished upload; the control connection ends with it, so the
    # bytes must end up kept for resume, not recorded as a finished (truncated) file
    kept = wait_until(lambda: partial_of(ftp_gw, job["id"], "photo.jpg", "alice"), timeout=10,
                      what="the killed upload to be kept as a partial")
    assert "photo.jpg" not in records(ftp_gw, job["id"], "ORIGINAL")
    kept_bytes = (folder / kept["temp_name"]).stat().st_size
    assert 200_000 < kept_bytes < len(data)
    assert (folder / kept["temp_name"]).read_bytes() == data[:kept_bytes]
    await assert_hidden_partial(ftp_gw, session, job, "photo.jpg", kept_bytes, "alice")
    partial_inode = (folder / kept["temp_name"]).stat().st_ino

    run = lftp(ftp_gw.ftp_port, "alice", password, f'cd "{p.original}"; put -c "{src}" -o photo.jpg',
               home=tmp_path)
    assert run.returncode == 0, run
    final = folder / "photo.jpg"
    assert final.read_bytes() == data
    assert records(ftp_gw, job["id"], "ORIGINAL")["photo.jpg"]["md5"] == md5(data)
    assert (await api_files(ftp_gw, session, job["id"], "ORIGINAL"))["photo.jpg"]["mD5"] == md5(data)
    assert partials(ftp_gw) == [] and temp_names(folder) == []
    assert os.listdir(folder) == ["photo.jpg"]
    assert final.stat().st_ino == partial_inode  # lftp continued the kept bytes (SIZE, REST, STOR)


async def test_a_client_gone_before_its_226_leaves_no_complete_file(ftp_gw: Gateway) -> None:
    """A killed client's data stream ends like a finished one, and its control connection may end a moment
    later. Made deterministic: the data connection ends, the commit waits its turn on the busy writer, and
    the control connection drops before any reply could be sent. Per the issue an upload whose control
    connection dropped is incomplete: it must end up kept as a partial, not recorded as a finished file."""
    _, job, p = await new_job(ftp_gw)
    data = payload(SIZE, "gone-before-226")
    release = threading.Event()
    busy = ftp_gw.app[WRITER].submit(lambda _db: release.wait(10))  # other work holds the one writer
    f = ftp_connect(ftp_gw.ftp_port, "alice", ftp_gw.world.passwords["alice"])
    try:
        conn = f.transfercmd(f"STOR {p.original}/photo.jpg")
        with conn:
            conn.sendall(data[:CUT])
            folder = ftp_gw.job_dir(job, "ORIGINAL")
            wait_until(lambda: CUT in temp_sizes(folder))
        time.sleep(0.05)  # the server has seen the end of the data and queued the commit
        drop_session(f)  # the client is gone: it was killed, it never saw a reply
        time.sleep(0.05)
    finally:
        f.close()
        release.set()
        busy.result(10)
    wait_until(lambda: partial_of(ftp_gw, job["id"], "photo.jpg", "alice"), timeout=10,
               what="the upload to be kept as a partial")
    await writer_barrier(ftp_gw)
    assert records(ftp_gw, job["id"], "ORIGINAL") == {}, "a truncated upload was recorded as a finished file"
    assert not (ftp_gw.job_dir(job, "ORIGINAL") / "photo.jpg").exists()
    with ftp_as(ftp_gw, "alice") as f2:
        assert f2.size(f"{p.original}/photo.jpg") == CUT


def stor_unread(gw: Gateway, path: str, data: bytes) -> None:
    """A client that sends a whole file, then hangs up without reading the 226 waiting for it (a client
    killed at that moment does the same): its TCP resets the connection over the unread reply."""
    f = ftp_connect(gw.ftp_port, "alice", gw.world.passwords["alice"])
    try:
        with f.transfercmd(f"STOR {path}") as conn:
            conn.sendall(data)
        ready, _, _ = select.select([f.sock], [], [], 10)
        assert ready, "no 226 came"
    finally:
        f.close()  # unread bytes on the socket: a reset, not a FIN


async def test_an_upload_whose_226_was_never_read_is_taken_back(ftp_gw: Gateway) -> None:
    """However late the control connection ends, a 226 the client never read does not make a finished
    file: the bytes go back to being the login's partial, and the file they replaced comes back."""
    _, job, p = await new_job(ftp_gw)
    old, new = payload(SIZE, "before"), payload(SIZE + 10, "after")
    with ftp_as(ftp_gw, "alice") as f:
        stor(f, f"{p.original}/photo.jpg", old)
    stor_unread(ftp_gw, f"{p.original}/photo.jpg", new)
    wait_until(lambda: partial_of(ftp_gw, job["id"], "photo.jpg", "alice"), timeout=10,
               what="the unread upload to be kept as a partial")
    await writer_barrier(ftp_gw)
    folder = ftp_gw.job_dir(job, "ORIGINAL")
    assert (folder / "photo.jpg").read_bytes() == old
    assert records(ftp_gw, job["id"], "ORIGINAL")["photo.jpg"]["md5"] == md5(old)
    assert_records_true(ftp_gw, job)
    kept = partial_of(ftp_gw, job["id"], "photo.jpg", "alice")
    assert (folder / kept["temp_name"]).read_bytes() == new
    assert temp_names(folder) == [kept["temp_name"]]  # the old file's second name went with the restore
    with ftp_as(ftp_gw, "alice") as f:
        assert f.size(f"{p.original}/photo.jpg") == len(new)  # offered for resume


async def test_a_new_upload_whose_226_was_never_read_leaves_no_file(ftp_gw: Gateway) -> None:
    _, job, p = await new_job(ftp_gw)
    data = payload(SIZE, "unread")
    stor_unread(ftp_gw, f"{p.original}/photo.jpg", data)
    wait_until(lambda: partial_of(ftp_gw, job["id"], "photo.jpg", "alice"), timeout=10,
               what="the unread upload to be kept as a partial")
    await writer_barrier(ftp_gw)
    assert records(ftp_gw, job["id"], "ORIGINAL") == {}
    assert not (ftp_gw.job_dir(job, "ORIGINAL") / "photo.jpg").exists()


@pytest.mark.parametrize("then", ["hang up", "next command", "idle"])
async def test_a_226_the_client_read_is_final(ftp_gw: Gateway, then: str,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A client that read its 226 keeps its file: it hangs up without QUIT (its TCP acknowledged the
    reply), or sends another command, or stays idle (the 226 counts as read after CONFIRM_AFTER); a reset
    after either of the last two changes nothing. The replaced file's second name is gone each time.
    (A reset right after the 226, with no command between, looks like a killed client: see above.)"""
    monkeypatch.setattr(uploads, "CONFIRM_AFTER", 0.3)
    _, job, p = await new_job(ftp_gw)
    old, new = payload(SIZE, "old"), payload(SIZE, "new " + then)
    folder = ftp_gw.job_dir(job, "ORIGINAL")
    f = ftp_connect(ftp_gw.ftp_port, "alice", ftp_gw.world.passwords["alice"])
    try:
        stor(f, f"{p.original}/photo.jpg", old)
        f.voidcmd("NOOP")
        stor(f, f"{p.original}/photo.jpg", new)  # reads the 226
        if then == "next command":
            f.voidcmd("NOOP")
            drop_session(f)
        elif then == "idle":
            wait_until(lambda: temp_names(folder) == [], timeout=5, what="the replaced file's second name to go")
            drop_session(f)
    finally:
        f.close()
    wait_until(lambda: temp_names(folder) == [], timeout=5, what="the replaced file's second name to go")
    await writer_barrier(ftp_gw)
    assert (folder / "photo.jpg").read_bytes() == new
    assert records(ftp_gw, job["id"], "ORIGINAL")["photo.jpg"]["md5"] == md5(new)
    assert partials(ftp_gw) == []


async def test_a_resume_already_running_elsewhere_is_refused(ftp_gw: Gateway) -> None:
    """Two sessions of one login cannot continue the same partial at once (the second is told to wait)."""
    _, job, p = await new_job(ftp_gw)
    data = payload(SIZE, "twice")
    interrupted_upload(ftp_gw, job, "photo.jpg", data, CUT)
    first = ftp_connect(ftp_gw.ftp_port, "alice", ftp_gw.world.passwords["alice"])
    try:
        first.sendcmd(f"REST {CUT}")
        conn = first.transfercmd(f"STOR {p.original}/photo.jpg")
        with conn:
            conn.sendall(data[CUT:CUT + 100_000])
            with ftp_as(ftp_gw, "alice") as second:
                text = refused(stor, second, f"{p.original}/photo.jpg", data[CUT:], rest=CUT)
                assert text.startswith("450"), text
            conn.sendall(data[CUT + 100_000:])
        assert first.voidresp().startswith("226")
    finally:
        close_quietly(first)
    assert (ftp_gw.job_dir(job, "ORIGINAL") / "photo.jpg").read_bytes() == data
