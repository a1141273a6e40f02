"""Nothing else exists for a login: refused names (553), traversal vectors, planted symlinks, the database;
and abuse limits: slowed then banned failed logins (from 127.0.0.2/.3, so 127.0.0.1 stays usable),
connection caps, disabled users."""

from __future__ import annotations

import ftplib
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from conftest import Gateway, GatewayFactory
from ftp_helpers import (
    FtpError,
    JobPaths,
    close_quietly,
    drop_session,
    ftp_as,
    ftp_connect,
    ftp_session,
    job_login,
    names,
    new_job,
    partial_of,
    records,
    refused,
    reply,
    retr,
    send_file,
    stor,
    temp_names,
    temp_sizes,
    tree,
    wait_until,
)

from gateway import accounts

SECRET = b"TOP SECRET: never readable by FTP"


# ----------------------------------------------------------------------------- names that cannot be stored

REFUSED_NAMES = {
    "dot": ".",
    "dot-dot": "..",
    "control character": "a\x01b.jpg",
    "tab": "tab\tname.jpg",
    "DEL": "del\x7f.jpg",
    "C1 control": "next\x85line.jpg",
    "trailing dot": "photo.",
    "trailing dots": "photo...",
    "trailing space": "photo.jpg ",
    "CON": "CON",
    "con.jpg": "con.jpg",
    "NUL": "NUL",
    "nul.txt": "nul.txt",
    "COM1": "COM1",
    "com9.jpg": "com9.jpg",
    "LPT1": "LPT1",
    "lpt9.tar.gz": "lpt9.tar.gz",
    "PRN": "PRN",
    "AUX": "aux.jpg",
    "CONIN$": "CONIN$",
    "256 ASCII bytes": "x" * 252 + ".jpg",
    "256 UTF-8 bytes": "ü" * 126 + ".jpg",
    "temp name": ".gwtmp-0123456789abcdef01234567",
    "temp prefix": ".gwtmp-photo.jpg",
    "percent-encoded dot-dot": "%2e%2e",
    "percent-encoded slash": "a%2fb.jpg",
    "percent-encoded NUL": "a%00b.jpg",
    "backslash": "a\\b.jpg",
    "fullwidth dot-dot": "\uff0e\uff0e",
    "one-dot-leader pair": "\u2025",
    "fullwidth CON": "\uff23\uff2f\uff2e",
}
ACCEPTED_NAMES = ["x" * 251 + ".jpg", "ü" * 125 + "x.jpg", "..photo.jpg", ".hidden.jpg", "CONTRACT.jpg", "com10.jpg",
                  "100%.jpg", "a.b.c.jpg", "Ünïcödé ✓.jpg"]


@pytest.fixture
async def job_world(ftp_gw: Gateway) -> tuple[Gateway, dict[str, Any], JobPaths]:
    _, job, p = await new_job(ftp_gw)
    with ftp_as(ftp_gw, "alice") as f:
        stor(f, f"{p.original}/keep.jpg", b"keep")
        f.mkd(f"{p.original}/sub")
    return ftp_gw, job, p


def storage_state(gw: Gateway) -> tuple[Any, ...]:
    """The job folders (the database's own files under .gateway/ change with every write) and the records."""
    folders = {rel: data for rel, data in tree(gw.storage_root).items() if not rel.startswith(".gateway")}
    return folders, gw.query("select job_id, kind, path, size, md5 from files order by id")


@pytest.mark.parametrize("command", ["STOR", "MKD", "RNTO"])
async def test_names_that_cannot_be_stored_safely_are_refused_553(
        job_world: tuple[Gateway, dict[str, Any], JobPaths], command: str) -> None:
    gw, _job, p = job_world
    before = storage_state(gw)
    wrong = {}
    with ftp_as(gw, "alice") as f:
        for why, name in REFUSED_NAMES.items():
            for folder in (p.original, f"{p.original}/sub"):
                path = f"{folder}/{name}"
                if command == "STOR":
                    text = send_file(f, f"STOR {path}", b"bytes")
                elif command == "MKD":
                    text = reply(f, f"MKD {path}")
                else:
                    assert reply(f, f"RNFR {p.original}/keep.jpg").startswith("350")
                    text = reply(f, f"RNTO {path}")
                if not text.startswith("553"):
                    wrong[f"{why} in {folder}"] = text
        assert names(f, p.original) == ["keep.jpg", "sub"] and names(f, f"{p.original}/sub") == []
    assert wrong == {}
    assert storage_state(gw) == before


async def test_unsafe_names_cannot_be_read_either(job_world: tuple[Gateway, dict[str, Any], JobPaths]) -> None:
    """Files with such names put on disk by other means are not listed and cannot be read, entered or
    changed: CWD, RETR, MLST, SIZE and RNFR all refuse them."""
    gw, job, p = job_world
    folder = gw.job_dir(job, "ORIGINAL")
    planted = ["CON", "photo.", "photo.jpg ", "a\x01b.jpg", "del\x7f.jpg", ".gwtmp-0123456789abcdef01234567",
               ".gwtmp-photo.jpg", "a\\b.jpg", "x" * 255]
    for name in planted:
        (folder / name).write_bytes(SECRET)
    (folder / "nul").mkdir()
    before = tree(folder)
    with ftp_as(gw, "alice") as f:
        assert names(f, p.original) == ["keep.jpg", "sub", "x" * 255]  # the one safe name among them
        for why, name in REFUSED_NAMES.items():
            if name in (".", ".."):
                continue  # navigation, not names (see the traversal tests)
            for cmd in ("CWD", "SIZE", "MLST", "MDTM", "HASH", "DELE"):
                text = reply(f, f"{cmd} {p.original}/{name}")
                assert text[:1] == "5", (why, cmd, text)
            text = refused(retr, f, f"{p.original}/{name}")
            assert text[:1] == "5", (why, text)
        for name in [*planted[:-1], "nul"]:
            for cmd in ("CWD", "SIZE", "MLST", "RNFR", "DELE", "RMD", "MFMT 20200101000000"):
                assert reply(f, f"{cmd} {p.original}/{name}")[:1] == "5", (cmd, name)
            assert refused(retr, f, f"{p.original}/{name}")[:1] == "5", name
    assert tree(folder) == before


async def test_safe_unusual_names_are_accepted(job_world: tuple[Gateway, dict[str, Any], JobPaths]) -> None:
    gw, job, p = job_world
    with ftp_as(gw, "alice") as f:
        for name in ACCEPTED_NAMES:
            assert stor(f, f"{p.original}/{name}", name.encode()).startswith("226"), name
            assert retr(f, f"{p.original}/{name}") == name.encode()
        assert names(f, p.original) == sorted([*ACCEPTED_NAMES, "keep.jpg", "sub"])
    assert sorted(records(gw, job["id"], "ORIGINAL")) == sorted([*ACCEPTED_NAMES, "keep.jpg"])


# ----------------------------------------------------------------------------- traversal

@pytest.fixture
async def outside_world(gateway_factory: GatewayFactory, tmp_path: Path) -> dict[str, Any]:
    """The database in its default place inside storage_root (.gateway/), a secret next to storage_root,
    one job with a file."""
    gw = await gateway_factory({"database.path": None}, ftp=True)
    assert gw.db_path == gw.storage_root / ".gateway" / "gateway.db"
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_bytes(SECRET)
    _, job, p = await new_job(gw)
    with ftp_as(gw, "alice") as f:
        stor(f, f"{p.original}/keep.jpg", b"keep")
    return {"gw": gw, "job": job, "p": p, "outside": outside}


def vectors(p: JobPaths, outside: Path, storage_root: Path) -> list[str]:
    secret = outside / "secret.txt"
    up = "../" * 12
    return [
        f"{up}outside/secret.txt", f"{up}etc/passwd", "/etc/passwd", "//etc/passwd", str(secret),
        str(storage_root / ".gateway" / "gateway.db"), "/.gateway/gateway.db", "/.gateway",
        f"{p.original}/../../../.gateway/gateway.db", f"{p.original}/../../../../outside/secret.txt",
        f"{p.root}/../../.gateway", "..\\..\\..\\..\\outside\\secret.txt", f"{p.original}\\..\\..\\..\\.gateway",
        "%2e%2e/%2e%2e/%2e%2e/%2e%2e/outside/secret.txt", "..%2f..%2f..%2f..%2foutside%2fsecret.txt",
        f"{p.original}/%2e%2e/%2e%2e/%2e%2e/.gateway/gateway.db", f"{p.original}/keep.jpg\x00/../../../.gateway",
        "\x00/etc/passwd", "\uff0e\uff0e/\uff0e\uff0e/\uff0e\uff0e/\uff0e\uff0e/outside/secret.txt",
        "\u2025/\u2025/\u2025/\u2025/outside/secret.txt", "~/secret.txt", "~root/.ssh", "/proc/self/environ",
        "..\uff0f..\uff0f..\uff0f..\uff0foutside\uff0fsecret.txt", "..\u2215..\u2215..\u2215.gateway",
        f"{p.original}/../../../{p.day}/../../outside",
    ]


FOREIGN = {"secret.txt", "passwd", ".gateway", "gateway.db", "outside", "etc", "environ", "proc"}


async def test_traversal_vectors_reach_nothing_outside(outside_world: dict[str, Any]) -> None:
    gw, p, outside = outside_world["gw"], outside_world["p"], outside_world["outside"]
    before, outside_before = storage_state(gw), tree(outside)
    problems = []
    with ftp_as(gw, "alice") as f:
        for start in ("/", p.original):
            for v in vectors(p, outside, gw.storage_root):
                f.cwd(start)
                for cmd in ("RETR", "SIZE", "MLST", "MDTM", "HASH", "XMD5", "DELE", "RMD"):
                    text = reply(f, f"{cmd} {v}")
                    if not text.startswith("5"):
                        problems.append((start, cmd, v, text))
                if reply(f, f"RNFR {v}").startswith("350"):  # (RNFR does not check existence: the RNTO must fail)
                    text = reply(f, f"RNTO {p.original}/stolen")
                    if not text.startswith("5"):
                        problems.append((start, "RNFR+RNTO", v, text))
                got = b""
                try:
                    got = retr(f, v)
                except FtpError:
                    pass
                if got:
                    problems.append((start, "RETR data", v, got[:40]))
                for listing in ("NLST", "LIST", "MLSD"):
                    lines: list[str] = []
                    try:
                        f.retrlines(f"{listing} {v}", lines.append)
                    except FtpError:
                        pass
                    f.voidcmd("TYPE I")
                    seen = {part.strip().rsplit("/", 1)[-1] for line in lines for part in line.split(";")[-1:]}
                    seen |= {line.split()[-1] for line in lines if line.split()}
                    if seen & FOREIGN:
                        problems.append((start, listing, v, lines))
                cwd = reply(f, f"CWD {v}")
                if cwd.startswith("250"):  # '..' beyond the root stays at the root of the virtual tree
                    if names(f, "") and set(names(f, "")) & FOREIGN:
                        problems.append((start, "CWD listing", v, names(f, "")))
                    if not f.pwd().startswith("/") or any(x in f.pwd() for x in ("outside", ".gateway", "etc")):
                        problems.append((start, "PWD", v, f.pwd()))
                for text in (send_file(f, f"STOR {v}", b"planted"), send_file(f, f"APPE {v}", b"planted"),
                             reply(f, f"MKD {v}"), reply(f, f"MKD {v}/x")):
                    if not text.startswith("5"):
                        problems.append((start, "write", v, text))
                assert reply(f, f"RNFR {p.original}/keep.jpg").startswith("350")
                text = reply(f, f"RNTO {v}")
                if not text.startswith("5"):
                    problems.append((start, "RNTO", v, text))
    assert problems == [], "\n".join(map(repr, problems))
    assert storage_state(gw) == before
    assert tree(outside) == outside_before
    assert (gw.storage_root / ".gateway" / "gateway.db").stat().st_size > 0


async def test_planted_symlinks_are_not_followed(outside_world: dict[str, Any]) -> None:
    gw, job, p, outside = outside_world["gw"], outside_world["job"], outside_world["p"], outside_world["outside"]
    original = gw.job_dir(job, "ORIGINAL")
    os.symlink(outside / "secret.txt", original / "link.jpg")
    os.symlink(outside, original / "linkdir")
    os.symlink(gw.storage_root / ".gateway", original / "db")
    outside_before = tree(outside)
    with ftp_as(gw, "alice") as f:
        assert names(f, p.original) == ["keep.jpg"]
        assert "link" not in "".join(_lines(f, f"LIST {p.original}"))
        for link in ("link.jpg", "linkdir", "db", "linkdir/secret.txt", "db/gateway.db"):
            path = f"{p.original}/{link}"
            for cmd in ("CWD", "SIZE", "MLST", "MDTM", "HASH", "DELE", "RMD", "RNFR", "MFMT 20200101000000"):
                assert reply(f, f"{cmd} {path}").startswith("5"), (cmd, link)
            assert refused(retr, f, path).startswith("550"), link
            assert _lines(f, f"NLST {path}") == [] or set(_lines(f, f"NLST {path}")).isdisjoint(FOREIGN)
        for target in ("link.jpg", "linkdir/new.jpg", "linkdir/secret.txt", "db/gateway.db"):
            assert send_file(f, f"STOR {p.original}/{target}", b"overwritten").startswith("5"), target
            assert send_file(f, f"APPE {p.original}/{target}", b"appended").startswith("5"), target
        assert reply(f, f"MKD {p.original}/linkdir/newdir").startswith("5")
        assert reply(f, f"RNFR {p.original}/keep.jpg").startswith("350")
        assert reply(f, f"RNTO {p.original}/linkdir/keep.jpg").startswith("5")
        assert reply(f, f"RNFR {p.original}/keep.jpg").startswith("350")
        assert reply(f, f"RNTO {p.original}/link.jpg").startswith("5")
    assert tree(outside) == outside_before and (outside / "secret.txt").read_bytes() == SECRET
    assert os.path.islink(original / "link.jpg") and os.path.islink(original / "linkdir")
    assert sorted(records(gw, job["id"], "ORIGINAL")) == ["keep.jpg"]
    assert temp_names(original) == [] and temp_names(outside) == []


def _lines(f: ftplib.FTP, cmd: str) -> list[str]:
    lines: list[str] = []
    try:
        f.retrlines(cmd, lines.append)
    except FtpError:
        pass
    f.voidcmd("TYPE I")
    return lines


@pytest.mark.parametrize("level", ["kind", "job", "day"])
async def test_a_folder_of_the_tree_replaced_by_a_symlink_is_not_followed(outside_world: dict[str, Any],
                                                                          level: str) -> None:
    """A symlink planted as ORIGINAL/ or CLIPPED/, as a job folder or as a day folder leads nowhere: nothing
    is listed, read, created or written through it."""
    gw, job, p, outside = outside_world["gw"], outside_world["job"], outside_world["p"], outside_world["outside"]
    clipped = gw.job_dir(job, "CLIPPED")
    link = {"kind": clipped, "job": clipped.parent, "day": clipped.parent.parent}[level]
    inside = {"kind": "", "job": "CLIPPED/", "day": f"{p.job_id}/CLIPPED/"}[level]
    (outside / inside).mkdir(parents=True, exist_ok=True)
    (outside / inside / "secret.txt").write_bytes(SECRET)
    moved = link.with_name(link.name + "-real")
    link.rename(moved)
    os.symlink(outside, link)
    outside_before = tree(outside)
    with ftp_as(gw, "pat") as f:
        assert reply(f, f"CWD {p.clipped}")[:1] == "5"
        assert set(_lines(f, f"NLST {p.clipped}")).isdisjoint(FOREIGN)
        assert _lines(f, f"LIST {p.clipped}") == []
        assert refused(retr, f, f"{p.clipped}/secret.txt")[:1] == "5"
        for cmd in ("SIZE", "MLST", "HASH", "DELE", "RNFR"):
            assert reply(f, f"{cmd} {p.clipped}/secret.txt")[:1] == "5", cmd
        assert reply(f, f"MKD {p.clipped}/newdir")[:1] == "5"
        assert send_file(f, f"STOR {p.clipped}/secret.txt", b"overwritten")[:1] == "5"
        assert send_file(f, f"STOR {p.clipped}/result.png", b"x" * 200_000)[:1] == "5"
        assert send_file(f, f"APPE {p.clipped}/secret.txt", b"appended")[:1] == "5"
    assert tree(outside) == outside_before
    assert (outside / inside / "secret.txt").read_bytes() == SECRET


async def test_temp_and_partial_names_cannot_be_named(ftp_gw: Gateway) -> None:
    """A kept partial's temp file exists on disk but no command of any login reaches it."""
    _, job, p = await new_job(ftp_gw)
    f = ftp_connect(ftp_gw.ftp_port, "alice", ftp_gw.world.passwords["alice"])
    conn = f.transfercmd(f"STOR {p.original}/photo.jpg")
    conn.sendall(b"p" * 50_000)
    folder = ftp_gw.job_dir(job, "ORIGINAL")
    wait_until(lambda: 50_000 in temp_sizes(folder))
    drop_session(f)
    conn.close()
    wait_until(lambda: partial_of(ftp_gw, job["id"], "photo.jpg", "alice"))
    temp = temp_names(folder)[0]
    for login, password in (("alice", ftp_gw.world.passwords["alice"]), job_login(job),
                            ("pat", ftp_gw.world.passwords["pat"])):
        with ftp_as(ftp_gw, login, password) as g:
            assert names(g, p.original) == []
            for cmd in ("SIZE", "MDTM", "MLST", "DELE", "RNFR", "HASH", "CWD"):
                assert reply(g, f"{cmd} {p.original}/{temp}")[:1] == "5", (login, cmd)
            assert refused(retr, g, f"{p.original}/{temp}")[:1] == "5"
            assert send_file(g, f"STOR {p.original}/{temp}", b"x").startswith("553")
    assert temp_names(folder) == [temp] and (folder / temp).stat().st_size == 50_000


# ----------------------------------------------------------------------------- logins: slow failures, bans

BAN = {"security.login_failures": 3, "security.ban_time": 30}


def failed_login(port: int, login: str, password: str, source: str) -> tuple[str, float]:
    started = time.monotonic()
    try:
        f = ftp_connect(port, source=source)
    except FtpError as e:
        return str(e), time.monotonic() - started
    try:
        f.login(login, password)
        return "230 logged in", time.monotonic() - started
    except FtpError as e:
        return str(e), time.monotonic() - started
    finally:
        f.close()


async def test_failed_logins_are_slowed_then_banned_without_affecting_other_addresses(
        gateway_factory: GatewayFactory, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="gateway.ftp")
    gw = await gateway_factory(BAN, ftp=True)
    port = gw.ftp_port
    f = ftp_connect(port, source="127.0.0.2")
    try:
        slowed = []
        for _ in range(2):
            started = time.monotonic()
            with pytest.raises(ftplib.error_perm, match=r"^530"):
                f.login("alice", "wrong password")
            slowed.append(time.monotonic() - started)
        assert min(slowed) >= 0.9, slowed  # answered slowly
        with pytest.raises(ftplib.error_temp, match=r"^421"):
            f.login("alice", "another wrong one")  # the third failure bans the address
    finally:
        f.close()
    # banned: a new connection is refused at once, even with the right password
    text, took = failed_login(port, "alice", gw.world.passwords["alice"], "127.0.0.2")
    assert text.startswith("421") and took < 0.9, (text, took)  # refused at once, not slowed
    # another address is not affected, nor is the suite's own 127.0.0.1
    for source in ("127.0.0.3", "127.0.0.1"):
        started = time.monotonic()
        with ftp_session(port, "alice", gw.world.passwords["alice"], source=source) as g:
            assert g.sendcmd("NOOP").startswith("200")
        assert time.monotonic() - started < min(slowed)  # not slowed like the failures
    assert any("127.0.0.2" in r.getMessage() and "banned" in r.getMessage() for r in caplog.records), caplog.text
    assert (await gw.login_reply("alice")).status == 201  # HTTP logins from 127.0.0.1 still work


async def test_unknown_wrong_and_disabled_logins_fail_alike_and_count_towards_the_ban(
        gateway_factory: GatewayFactory) -> None:
    """An unknown user, a wrong password and a disabled user (with its right password) get the same slow 530,
    and together they ban the address."""
    gw = await gateway_factory(BAN, ftp=True)
    job = await gw.create_job(await gw.session("carol"))
    with ftp_as(gw, "carol") as f:
        assert f.sendcmd("NOOP").startswith("200")
        await gw.write(accounts.set_disabled, "carol", True)
        # a session opened before is not a way around it: its next change ends it
        assert send_file(f, f"STOR {JobPaths.of(job).original}/late.jpg", b"late").startswith("421")
    assert records(gw, job["id"]) == {}
    tries = [("nobody", "nope"), ("alice", "nope"), ("carol", gw.world.passwords["carol"])]
    with ThreadPoolExecutor(2) as pool:  # side by side: each failure takes a second to be answered
        answers = list(pool.map(lambda t: failed_login(gw.ftp_port, *t, "127.0.0.3"), tries[:2]))
    assert [a for a, _ in answers] == ["530 Authentication failed."] * 2
    assert all(took >= 0.9 for _, took in answers)
    text, took = failed_login(gw.ftp_port, *tries[2], "127.0.0.3")  # the third failure: banned
    assert text.startswith("421") and took >= 0.9, text
    assert failed_login(gw.ftp_port, "alice", gw.world.passwords["alice"], "127.0.0.3")[0].startswith("421")
    assert failed_login(gw.ftp_port, "carol", gw.world.passwords["carol"], "127.0.0.2")[0].startswith("530")
    await gw.write(accounts.set_disabled, "carol", False)
    assert failed_login(gw.ftp_port, "carol", gw.world.passwords["carol"], "127.0.0.2")[0] == "230 logged in"


# ----------------------------------------------------------------------------- connection caps

async def test_connections_beyond_the_per_address_cap_get_421(gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory({"ftp.max_cons_per_ip": 2}, ftp=True)
    held: list[ftplib.FTP] = []
    try:
        held += [ftp_connect(gw.ftp_port, source="127.0.0.2") for _ in range(2)]
        with pytest.raises(ftplib.error_temp, match=r"^421 Too many connections from the same IP"):
            ftp_connect(gw.ftp_port, source="127.0.0.2")
        held += [ftp_connect(gw.ftp_port, "alice", gw.world.passwords["alice"], source="127.0.0.3")]
        with ftp_session(gw.ftp_port, "alice", gw.world.passwords["alice"]) as f:  # 127.0.0.1
            assert f.sendcmd("NOOP").startswith("200")
        held.pop(0).quit()
        again = wait_until(lambda: _try_connect(gw.ftp_port, "127.0.0.2"), what="a free slot for 127.0.0.2")
        held.append(again)
    finally:
        for f in held:
            close_quietly(f)


def _try_connect(port: int, source: str) -> ftplib.FTP | None:
    try:
        return ftp_connect(port, source=source)
    except ftplib.error_temp:
        return None


async def test_connections_beyond_the_server_cap_get_421(gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory({"ftp.max_cons": 4}, ftp=True)
    held: list[ftplib.FTP] = []
    refusal = ""
    try:
        for i in range(6):
            try:
                held.append(ftp_connect(gw.ftp_port, source=f"127.0.0.{2 + i % 2}"))
            except ftplib.error_temp as e:
                refusal = str(e)
                break
        assert refusal.startswith("421 Too many connections"), refusal
        assert len(held) <= 4
    finally:
        for f in held:
            close_quietly(f)


async def test_the_server_cap_admits_exactly_max_cons_sessions(gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory({"ftp.max_cons": 4}, ftp=True)
    held: list[ftplib.FTP] = []
    try:
        for i in range(4):
            held.append(ftp_connect(gw.ftp_port, source=f"127.0.0.{2 + i % 2}"))
        with pytest.raises(ftplib.error_temp, match=r"^421"):
            held.append(ftp_connect(gw.ftp_port, source="127.0.0.3"))
    finally:
        for f in held:
            close_quietly(f)


async def test_slowed_failures_do_not_hold_the_server(gateway_factory: GatewayFactory) -> None:
    """Six wrong passwords at once are each answered after the delay, while a logged-in session on
    another address keeps its prompt replies (the delay is a timer, the hashing runs off the FTP loop)."""
    gw = await gateway_factory({"security.login_failures": 1000}, ftp=True)
    results: list[str] = []
    threads = [threading.Thread(target=lambda: results.append(
        failed_login(gw.ftp_port, "alice", "wrong", "127.0.0.2")[0])) for _ in range(6)]
    with ftp_as(gw, "bob", source="127.0.0.3") as f:
        for t in threads:
            t.start()
        slowest = 0.0
        while any(t.is_alive() for t in threads):
            started = time.monotonic()
            assert f.sendcmd("NOOP").startswith("200")
            slowest = max(slowest, time.monotonic() - started)
            time.sleep(0.02)
    for t in threads:
        t.join(10)
    assert results == ["530 Authentication failed."] * 6
    assert slowest < 1.0, slowest
