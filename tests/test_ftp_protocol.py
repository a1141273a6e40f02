"""FileZilla-grade protocol with Python's ftplib: FEAT, HASH/XMD5, UTF-8 names, passive mode, the
listing and file commands, and what they do to the records."""

from __future__ import annotations

import calendar
import os
import re
import socket
import threading
import time
import unicodedata
from pathlib import Path

from conftest import Gateway, GatewayFactory
from ftp_helpers import (
    HOST,
    api_files,
    assert_records_true,
    close_quietly,
    free_port_range,
    ftp_as,
    ftp_connect,
    list_lines,
    md5,
    mlsd,
    mlst,
    names,
    new_job,
    payload,
    records,
    refused,
    reply,
    retr,
    stor,
    writer_barrier,
)

from gateway.api.keys import WRITER

# ----------------------------------------------------------------------------- FEAT and options

async def test_feat_lists_what_filezilla_uses(ftp_gw: Gateway) -> None:
    with ftp_connect(ftp_gw.ftp_port) as f:
        before_login = f.sendcmd("FEAT")
    with ftp_as(ftp_gw, "alice") as f:
        feat = f.sendcmd("FEAT")
        assert feat == before_login
        lines = feat.splitlines()
        assert lines[0].startswith("211-") and lines[-1].startswith("211 ")
        features = {line.strip() for line in lines[1:-1]}
        for expected in ("UTF8", "EPSV", "SIZE", "MDTM", "MFMT", "REST STREAM"):
            assert expected in features, feat
        mlst_line = next(x for x in features if x.startswith("MLST "))
        for fact in ("type", "size", "modify", "perm"):
            assert re.search(rf"\b{fact}\*?;", mlst_line), mlst_line
        assert any(x.split()[0] == "HASH" and "MD5" in x for x in features), feat
        assert reply(f, "OPTS UTF8 ON").startswith("200")
        assert reply(f, "OPTS HASH").startswith("200 MD5")
        assert reply(f, "OPTS HASH MD5").startswith("200")
        assert reply(f, "OPTS HASH SHA-1").startswith("501")
        help_text = reply(f, "HELP")
        assert "HASH" in help_text and "XMD5" in help_text and "MLSD" in help_text


async def test_hash_and_xmd5_answer_the_recorded_md5(ftp_gw: Gateway) -> None:
    session, job, p = await new_job(ftp_gw)
    data = payload(300_000, "hash")
    with ftp_as(ftp_gw, "alice") as f:
        assert stor(f, f"{p.original}/photo.jpg", data).startswith("226")
        hashed = f.sendcmd(f"HASH {p.original}/photo.jpg")
        assert hashed == f"213 MD5 0-{len(data)} {md5(data)} {p.original}/photo.jpg"
        assert f.sendcmd(f"XMD5 {p.original}/photo.jpg") == f"250 {md5(data)}"
        f.cwd(p.original)
        assert f.sendcmd("HASH photo.jpg").split()[3] == md5(data)  # relative paths too
        assert refused(f.sendcmd, f"HASH {p.original}").startswith("550")  # a folder has no hash
        assert refused(f.sendcmd, f"XMD5 {p.original}/missing.jpg").startswith("550")
        assert refused(f.sendcmd, "HASH").startswith("501")
    rec = records(ftp_gw, job["id"], "ORIGINAL")["photo.jpg"]
    assert rec["md5"] == md5(data) and rec["size"] == len(data)
    assert (await api_files(ftp_gw, session, job["id"]))["ORIGINAL/photo.jpg"]["mD5"] == md5(data)


async def test_hash_of_a_clipped_file_for_the_customer(ftp_gw: Gateway) -> None:
    """Customers verify downloads the same way: HASH works where they may only read."""
    _, _job, p = await new_job(ftp_gw)
    data = payload(5000, "clipped-hash")
    with ftp_as(ftp_gw, "pat") as f:
        stor(f, f"{p.clipped}/result.png", data)
    with ftp_as(ftp_gw, "alice") as f:
        assert f.sendcmd(f"HASH {p.clipped}/result.png").split()[3] == md5(data)
        assert f.sendcmd(f"XMD5 {p.clipped}/result.png") == f"250 {md5(data)}"


# ----------------------------------------------------------------------------- names

UTF8_NAMES = ["Äpfel und Birnen.jpg", "日本語の写真.png", "emoji 🍎🍌.jpg", "Ελληνικά.tif", "naïve café.jpeg"]


async def test_utf8_names_round_trip(ftp_gw: Gateway) -> None:
    session, job, p = await new_job(ftp_gw)
    sent = {name: payload(1000 + i, name) for i, name in enumerate(UTF8_NAMES)}
    folder = "Überordner ç"
    with ftp_as(ftp_gw, "alice") as f:
        assert f.encoding == "utf-8"
        assert f.mkd(f"{p.original}/{folder}") == f"{p.original}/{folder}"
        for name, data in sent.items():
            assert stor(f, f"{p.original}/{folder}/{name}", data).startswith("226")
        assert names(f, f"{p.original}/{folder}") == sorted(sent)
        assert set(mlsd(f, f"{p.original}/{folder}")) == set(sent)
        assert names(f, p.original) == [folder]
        f.cwd(f"{p.original}/{folder}")
        assert f.pwd() == f"{p.original}/{folder}"
        for name, data in sent.items():
            assert retr(f, name) == data
            assert f.size(name) == len(data)
    on_disk = ftp_gw.job_dir(job, "ORIGINAL") / folder
    assert sorted(x.name for x in on_disk.iterdir()) == sorted(sent)
    api = await api_files(ftp_gw, session, job["id"], "ORIGINAL")
    assert sorted(api) == sorted(f"{folder}/{n}" for n in sent)
    for name, data in sent.items():
        assert api[f"{folder}/{name}"]["fileName"] == name and api[f"{folder}/{name}"]["mD5"] == md5(data)
    assert_records_true(ftp_gw, job)


async def test_names_are_stored_as_sent_not_normalised(ftp_gw: Gateway) -> None:
    """A decomposed name (macOS sends NFD) is kept byte for byte, so the client finds it again."""
    _, job, p = await new_job(ftp_gw)
    nfd = unicodedata.normalize("NFD", "Äpfel.jpg")
    with ftp_as(ftp_gw, "alice") as f:
        stor(f, f"{p.original}/{nfd}", b"nfd")
        assert names(f, p.original) == [nfd]
        assert retr(f, f"{p.original}/{nfd}") == b"nfd"
    assert [x.name for x in ftp_gw.job_dir(job, "ORIGINAL").iterdir()] == [nfd]


# ----------------------------------------------------------------------------- passive mode

async def test_passive_mode_uses_the_configured_range_and_the_masquerade_address(
        gateway_factory: GatewayFactory) -> None:
    lo, hi = free_port_range(4)
    gw = await gateway_factory({"ftp.passive_ports": f"{lo}-{hi}", "ftp.masquerade_address": "203.0.113.7"},
                               ftp=True)
    _, _job, p = await new_job(gw)
    seen: list[int] = []
    with ftp_as(gw, "alice") as f:
        for _ in range(3):
            text = f.sendcmd("PASV")
            m = re.search(r"\((\d+),(\d+),(\d+),(\d+),(\d+),(\d+)\)", text)
            assert text.startswith("227") and m, text
            assert ".".join(m.groups()[:4]) == "203.0.113.7", text
            seen.append(int(m.group(5)) * 256 + int(m.group(6)))
            f.sendcmd("ABOR")
        text = f.sendcmd("EPSV")
        m = re.search(r"\(\|\|\|(\d+)\|\)", text)
        assert text.startswith("229") and m, text
        epsv_port = int(m.group(1))
        seen.append(epsv_port)
        # a real transfer over that EPSV port (EPSV names no address: the client uses the server's)
        with socket.create_connection((HOST, epsv_port), timeout=10) as data_conn:
            assert f.sendcmd(f"NLST {p.root}")[:3] in ("125", "150")
            listing = b""
            while chunk := data_conn.recv(4096):
                listing += chunk
        assert f.voidresp().startswith("226")
        assert sorted(listing.decode().split()) == ["CLIPPED", "ORIGINAL"]
        # ftplib's own PASV transfers (it connects to the control host, ignoring the masquerade address)
        original = f.makepasv

        def recording_makepasv() -> tuple[str, int]:
            host, port = original()
            seen.append(port)
            return host, port

        f.makepasv = recording_makepasv  # type: ignore[method-assign]
        data = payload(50_000, "pasv")
        assert stor(f, f"{p.original}/p.jpg", data).startswith("226")
        assert retr(f, f"{p.original}/p.jpg") == data
        assert names(f, p.original) == ["p.jpg"]
    assert len(seen) == 7 and all(lo <= port <= hi for port in seen), (lo, hi, seen)


# ----------------------------------------------------------------------------- navigation and listings

async def test_two_servers_in_one_process_keep_their_own_options(gateway_factory: GatewayFactory,
                                                                tmp_path: Path) -> None:
    """Options live on a per-server handler class: two gateways in one process do not share them."""
    ranges = [free_port_range(2), free_port_range(2)]
    gws = [await gateway_factory({"ftp.passive_ports": f"{lo}-{hi}", "ftp.masquerade_address": f"198.51.100.{i}"},
                                 folder=tmp_path / f"gw{i}", ftp=True) for i, (lo, hi) in enumerate(ranges, 1)]
    for i, (gw, (lo, hi)) in enumerate(zip(gws, ranges, strict=True), 1):
        with ftp_as(gw, "alice") as f:
            text = f.sendcmd("PASV")
            numbers = [int(x) for x in re.findall(r"\d+", text.split("(", 1)[1])]
            assert numbers[:4] == [198, 51, 100, i], text
            assert lo <= numbers[4] * 256 + numbers[5] <= hi, (text, lo, hi)


async def test_navigation_stays_in_the_virtual_tree(ftp_gw: Gateway) -> None:
    _, _job, p = await new_job(ftp_gw)
    cwd_before = os.getcwd()
    with ftp_as(ftp_gw, "alice") as f:
        assert f.pwd() == "/"
        f.cwd(p.original)
        assert f.pwd() == p.original
        f.sendcmd("CDUP")
        assert f.pwd() == p.root
        f.cwd("..")
        assert f.pwd() == p.day_dir
        for _ in range(3):
            f.sendcmd("CDUP")
            assert f.pwd() == "/"
        f.cwd(f"{p.day}/{p.job_id}/CLIPPED")  # relative to /
        assert f.pwd() == p.clipped
        f.cwd("/")
        assert names(f, "") == [p.day]
        assert refused(f.cwd, f"{p.root}/NOPE").startswith("550")
        assert refused(f.cwd, "/19990101").startswith("550")
        assert refused(f.cwd, "/not-a-day").startswith("550")
        assert f.pwd() == "/"
    assert os.getcwd() == cwd_before  # CWD never changes the process's working directory


async def test_listings_of_each_level(ftp_gw: Gateway) -> None:
    _, job, p = await new_job(ftp_gw)
    data = payload(1234, "listing")
    with ftp_as(ftp_gw, "alice") as f:
        stor(f, f"{p.original}/a.jpg", data)
        f.mkd(f"{p.original}/sub")
        root_mlsd = mlsd(f, "/")
        assert list(root_mlsd) == [p.day] and root_mlsd[p.day]["type"] == "dir"
        assert list(mlsd(f, p.day_dir)) == [str(p.job_id)]
        job_level = mlsd(f, p.root)
        assert sorted(job_level) == ["CLIPPED", "ORIGINAL"]
        assert {facts["type"] for facts in job_level.values()} == {"dir"}
        orig = mlsd(f, p.original)
        assert sorted(orig) == ["a.jpg", "sub"]
        assert orig["a.jpg"]["type"] == "file" and orig["a.jpg"]["size"] == "1234"
        assert orig["sub"]["type"] == "dir"
        assert "w" in orig["a.jpg"]["perm"] and "d" in orig["a.jpg"]["perm"]
        lines = list_lines(f, p.original)
        assert len(lines) == 2 and any(line.endswith(" a.jpg") and " 1234 " in line for line in lines), lines
        assert all(" owner " in line and " group " in line for line in lines)  # no host user names leak
        assert list_lines(f, f"{p.original}/a.jpg")[0].endswith(" a.jpg")
        facts = mlst(f, f"{p.original}/a.jpg")
        assert facts["type"] == "file" and facts["size"] == "1234"
        assert names(f, p.clipped) == []
        stat = f.sendcmd(f"STAT {p.original}")
        assert stat.startswith("213-") and "a.jpg" in stat
        assert f.size(f"{p.original}/a.jpg") == 1234
        mdtm = f.sendcmd(f"MDTM {p.original}/a.jpg")
        on_disk = (ftp_gw.job_dir(job, "ORIGINAL") / "a.jpg").stat().st_mtime
        assert mdtm == "213 " + time.strftime("%Y%m%d%H%M%S", time.gmtime(on_disk))
        f.voidcmd("TYPE A")
        assert refused(f.size, f"{p.original}/a.jpg").startswith("550")  # SIZE is meaningless in ASCII mode
        f.voidcmd("TYPE I")
        assert refused(f.size, f"{p.original}/sub").startswith("550")
        assert refused(f.size, p.root).startswith("550")


async def test_mfmt_sets_the_time_on_disk_in_listings_and_in_the_record(ftp_gw: Gateway) -> None:
    _, job, p = await new_job(ftp_gw)
    with ftp_as(ftp_gw, "alice") as f:
        stor(f, f"{p.original}/old.jpg", b"old photo")
        assert f.sendcmd(f"MFMT 20200229123456 {p.original}/old.jpg") == (
            f"213 Modify=20200229123456; {p.original}/old.jpg.")
        assert refused(f.sendcmd, f"MFMT 2020-02-29 {p.original}/old.jpg").startswith("501")
        assert refused(f.sendcmd, f"MFMT 20200229123456 {p.original}/missing.jpg").startswith("550")
        assert f.sendcmd(f"MDTM {p.original}/old.jpg") == "213 20200229123456"
        assert mlst(f, f"{p.original}/old.jpg")["modify"] == "20200229123456"
    await writer_barrier(ftp_gw)  # the record may follow the 213 through the writer
    expected = calendar.timegm((2020, 2, 29, 12, 34, 56, 0, 0, 0))
    assert (ftp_gw.job_dir(job, "ORIGINAL") / "old.jpg").stat().st_mtime == expected
    assert records(ftp_gw, job["id"], "ORIGINAL")["old.jpg"]["mtime_ns"] == expected * 10**9
    assert_records_true(ftp_gw, job)


async def test_mfmt_takes_a_fraction_of_a_second_and_refuses_impossible_times(ftp_gw: Gateway) -> None:
    """RFC 3659 time-val: YYYYMMDDHHMMSS[.sss], in UTC; 501 for what is not a real time."""
    _, job, p = await new_job(ftp_gw)
    with ftp_as(ftp_gw, "alice") as f:
        stor(f, f"{p.original}/a.jpg", b"photo")
        assert f.sendcmd(f"MFMT 20200229123456.25 {p.original}/a.jpg").startswith("213 Modify=20200229123456.25;")
        fullwidth = "".join(chr(0xFF10 + int(d)) for d in "20200229123456")  # digits, but not ASCII ones
        for bad in ("20200230123456", "20201301000000", "20200229246000", "2020022912345", "202002291234567",
                    "20200229123456.", "20200229123456.1234567890", "2020022912345x", fullwidth):
            assert refused(f.sendcmd, f"MFMT {bad} {p.original}/a.jpg").startswith("501"), bad
    await writer_barrier(ftp_gw)
    expected = calendar.timegm((2020, 2, 29, 12, 34, 56, 0, 0, 0)) * 10**9 + 250_000_000
    assert (ftp_gw.job_dir(job, "ORIGINAL") / "a.jpg").stat().st_mtime_ns == expected
    assert records(ftp_gw, job["id"], "ORIGINAL")["a.jpg"]["mtime_ns"] == expected


async def test_a_rename_right_after_mfmt_keeps_the_new_time_in_the_record(ftp_gw: Gateway) -> None:
    """MFMT's record rides with the writer's next batch, before any change submitted after it."""
    _, job, p = await new_job(ftp_gw)
    with ftp_as(ftp_gw, "alice") as f:
        stor(f, f"{p.original}/a.jpg", b"photo")
        assert f.sendcmd(f"MFMT 20200229123456 {p.original}/a.jpg").startswith("213")
        f.rename(f"{p.original}/a.jpg", f"{p.original}/b.jpg")
    await writer_barrier(ftp_gw)
    expected = calendar.timegm((2020, 2, 29, 12, 34, 56, 0, 0, 0)) * 10**9
    assert records(ftp_gw, job["id"], "ORIGINAL")["b.jpg"]["mtime_ns"] == expected
    assert_records_true(ftp_gw, job)


async def test_mdtm_right_after_mfmt_reads_the_new_time(ftp_gw: Gateway) -> None:
    """Even when the writer is busy with other sessions' work, a session reads its own MFMT at once."""
    _, _job, p = await new_job(ftp_gw)
    release = threading.Event()
    with ftp_as(ftp_gw, "alice") as f:
        stor(f, f"{p.original}/old.jpg", b"old photo")
        busy = ftp_gw.app[WRITER].submit(lambda _db: release.wait(10))  # other sessions' work on the writer
        timer = threading.Timer(0.3, release.set)
        timer.start()
        try:
            assert f.sendcmd(f"MFMT 20200229123456 {p.original}/old.jpg").startswith("213")
            mdtm = f.sendcmd(f"MDTM {p.original}/old.jpg")
        finally:
            release.set()
            timer.join()
            busy.result(10)
    assert mdtm == "213 20200229123456"


# ----------------------------------------------------------------------------- changes keep the records true

async def test_overwrite_append_and_rest_update_the_record(ftp_gw: Gateway) -> None:
    session, job, p = await new_job(ftp_gw)
    first, second = payload(10_000, "first"), payload(4_000, "second")
    target = f"{p.original}/photo.jpg"
    with ftp_as(ftp_gw, "alice") as f:
        stor(f, target, first)
        stor(f, target, second)  # overwrite
        assert retr(f, target) == second
        assert_records_true(ftp_gw, job)
        stor(f, target, b"tail", cmd="APPE")
        assert retr(f, target) == second + b"tail"
        assert_records_true(ftp_gw, job)
        stor(f, target, b"XYZ", rest=100)  # REST onto a finished file: its first 100 bytes, then the new ones
        assert retr(f, target) == second[:100] + b"XYZ"
        assert f.sendcmd(f"XMD5 {target}") == f"250 {md5(second[:100] + b'XYZ')}"
        assert refused(stor, f, target, b"x", rest=10_000).startswith("554")  # beyond the end
        stor(f, f"{p.original}/new.jpg", b"appended into nothing", cmd="APPE")  # APPE creates
        assert retr(f, f"{p.original}/new.jpg") == b"appended into nothing"
    api = await api_files(ftp_gw, session, job["id"], "ORIGINAL")
    assert sorted(api) == ["new.jpg", "photo.jpg"]
    assert api["photo.jpg"]["size"] == 103 and api["photo.jpg"]["mD5"] == md5(second[:100] + b"XYZ")
    assert len(records(ftp_gw, job["id"])) == 2
    assert_records_true(ftp_gw, job)


async def test_empty_file_is_a_file(ftp_gw: Gateway) -> None:
    _, job, p = await new_job(ftp_gw)
    with ftp_as(ftp_gw, "alice") as f:
        assert stor(f, f"{p.original}/empty.jpg", b"").startswith("226")
        assert names(f, p.original) == ["empty.jpg"] and f.size(f"{p.original}/empty.jpg") == 0
        assert retr(f, f"{p.original}/empty.jpg") == b""
    rec = records(ftp_gw, job["id"], "ORIGINAL")["empty.jpg"]
    assert (rec["size"], rec["md5"]) == (0, md5(b""))


async def test_rename_delete_and_folders_keep_the_records_true(ftp_gw: Gateway) -> None:
    session, job, p = await new_job(ftp_gw)
    o = p.original
    with ftp_as(ftp_gw, "alice") as f:
        f.mkd(f"{o}/album")
        f.mkd(f"{o}/album/day one")
        stor(f, f"{o}/album/day one/a.jpg", b"a")
        stor(f, f"{o}/album/b.jpg", b"b")
        stor(f, f"{o}/c.jpg", b"c")
        stor(f, f"{o}/d.jpg", b"d")
        assert f.rename(f"{o}/album", f"{o}/holiday").startswith("250")  # a folder with files below it
        assert f.rename(f"{o}/c.jpg", f"{o}/holiday/c.jpg").startswith("250")  # into a sub-folder
        assert f.rename(f"{o}/d.jpg", f"{o}/holiday/b.jpg").startswith("250")  # over an existing file
        assert refused(f.rename, f"{o}/holiday/c.jpg", f"{o}/missing/c.jpg").startswith("550")
        assert refused(f.rename, f"{o}/holiday/c.jpg", f"{o}/holiday/day one").startswith("550")  # a folder
        assert refused(f.rename, f"{o}/nothing.jpg", f"{o}/x.jpg").startswith("550")
        assert refused(f.rename, f"{o}/holiday/c.jpg", f"{p.clipped}/c.jpg").startswith("553")
        assert refused(f.sendcmd, f"RNTO {o}/x.jpg").startswith("503")  # no RNFR first
        assert names(f, o) == ["holiday"]
        assert names(f, f"{o}/holiday") == ["b.jpg", "c.jpg", "day one"]
        assert retr(f, f"{o}/holiday/b.jpg") == b"d"
        assert assert_no_refusal(f.delete(f"{o}/holiday/c.jpg"))
        assert refused(f.delete, f"{o}/holiday/day one").startswith("550")  # DELE of a folder
        assert refused(f.rmd, f"{o}/holiday/day one").startswith("550")  # not empty
        f.delete(f"{o}/holiday/day one/a.jpg")
        f.rmd(f"{o}/holiday/day one")
        assert refused(f.mkd, f"{o}/holiday").startswith("550")  # exists
        assert refused(f.delete, f"{o}/holiday/c.jpg").startswith("550")  # gone already
    assert sorted(records(ftp_gw, job["id"], "ORIGINAL")) == ["holiday/b.jpg"]
    assert sorted(await api_files(ftp_gw, session, job["id"])) == ["ORIGINAL/holiday/b.jpg"]
    assert_records_true(ftp_gw, job)


async def test_rnfr_of_a_missing_file_answers_550(ftp_gw: Gateway) -> None:
    _, _, p = await new_job(ftp_gw)
    with ftp_as(ftp_gw, "alice") as f:
        assert reply(f, f"RNFR {p.original}/missing.jpg").startswith("550")


def assert_no_refusal(text: str) -> bool:
    assert text[:1] == "2", text
    return True


async def test_stou_and_chmod_are_refused(ftp_gw: Gateway) -> None:
    _, job, p = await new_job(ftp_gw)
    with ftp_as(ftp_gw, "alice") as f:
        f.cwd(p.original)
        assert refused(f.sendcmd, "STOU").startswith("502")
        stor(f, "a.jpg", b"a")
        assert refused(f.sendcmd, "SITE CHMOD 777 a.jpg").startswith("550")
        assert names(f, "") == ["a.jpg"]
    assert (ftp_gw.job_dir(job, "ORIGINAL") / "a.jpg").stat().st_mode & 0o777 == 0o644


async def test_commands_before_login_are_refused(ftp_gw: Gateway) -> None:
    with ftp_connect(ftp_gw.ftp_port) as f:
        assert f.welcome.startswith("220")
        for cmd in ("LIST", "CWD /", "RETR x", "STOR x", "SIZE x", "HASH x", "XMD5 x", "MKD x", "PWD"):
            assert reply(f, cmd).startswith("530"), cmd
        assert reply(f, "NOOP").startswith("200")


async def test_a_second_session_after_quit_starts_fresh(ftp_gw: Gateway) -> None:
    """USER again inside a session flushes the first login: the second login's view only."""
    _, _, p = await new_job(ftp_gw)
    _, _, q = await new_job(ftp_gw, "bob")
    f = ftp_connect(ftp_gw.ftp_port, "alice", ftp_gw.world.passwords["alice"])
    try:
        assert names(f, p.day_dir) == [str(p.job_id)]
        assert f.sendcmd("USER bob").startswith("331")
        assert f.sendcmd(f"PASS {ftp_gw.world.passwords['bob']}").startswith("230")
        f.voidcmd("TYPE I")
        assert names(f, q.day_dir) == [str(q.job_id)]
        assert refused(f.cwd, p.root).startswith("550")
    finally:
        close_quietly(f)
