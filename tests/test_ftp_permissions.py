"""Who sees what and who may write where, for the three kinds of login (account, per-job, processor).

World: acme's alice and carol, globex's bob, processor pat; jobs a1 (alice), a2 (carol), b1 (bob),
each seeded with originals (by their customer) and clipped files (by pat) through FTP.
"""

from __future__ import annotations

import ftplib
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pytest
from conftest import Gateway, GatewayFactory
from ftp_helpers import (
    FtpError,
    JobPaths,
    api_files,
    assert_records_true,
    async_wait_until,
    ftp_as,
    ftp_connect,
    job_login,
    mlsd,
    mlst,
    names,
    partials,
    records,
    refused,
    retr,
    seed_file,
    stor,
    tree,
)

from gateway import jobs
from gateway.api.keys import STORAGE
from gateway.db import open_db
from gateway.ftp import filesystem

SEED = b"seed-content"
KINDS = ("ORIGINAL", "CLIPPED")


@dataclass
class World:
    gw: Gateway
    sessions: dict[str, str]
    jobs: dict[str, dict[str, Any]]

    def paths(self, name: str) -> JobPaths:
        return JobPaths.of(self.jobs[name])

    def creds(self, who: str) -> tuple[str, str]:
        """customer -> alice, job -> a1's own user, processor -> pat, else a world login."""
        if who == "job":
            return job_login(self.jobs["a1"])
        login = {"customer": "alice", "processor": "pat"}.get(who, who)
        return login, self.gw.world.passwords[login]

    def ftp(self, who: str) -> Any:
        login, password = self.creds(who)
        return ftp_as(self.gw, login, password)

    async def submit(self, name: str) -> None:
        owner = {"a1": "alice", "a2": "carol", "b1": "bob"}[name]
        r = await self.gw.call("POST", f"/jobs/{self.jobs[name]['id']}/submit", session=self.sessions[owner])
        assert r.status == 200, r

    async def finish(self, name: str) -> None:
        r = await self.gw.call("POST", f"/jobs/{self.jobs[name]['id']}/finish", session=self.sessions["pat"])
        assert r.status == 200, r

    def snapshot(self, name: str) -> tuple[Any, ...]:
        job = self.jobs[name]
        return (tree(self.gw.job_dir(job, "ORIGINAL").parent), records(self.gw, job["id"]),
                partials(self.gw, job["id"]))


def seed(f: ftplib.FTP, folder: str, tag: str) -> None:
    """What a write battery works on: a file to append to, one to delete, one to rename, a folder to remove."""
    stor(f, f"{folder}/{tag}-seed.jpg", SEED)
    stor(f, f"{folder}/{tag}-victim.jpg", b"victim")
    stor(f, f"{folder}/{tag}-ren.jpg", b"rename me")
    f.mkd(f"{folder}/{tag}-sub")


async def seed_world(gw: Gateway, job: dict[str, Any], kind: str, login: str) -> None:
    """The same things `seed` makes by FTP, put in place through the domain (no logins: faster)."""
    for name, data in (("w-seed.jpg", SEED), ("w-victim.jpg", b"victim"), ("w-ren.jpg", b"rename me")):
        await seed_file(gw, job, kind, name, data, login)
    (gw.job_dir(job, kind) / "w-sub").mkdir()


@pytest.fixture
async def world(ftp_gw: Gateway) -> World:
    gw = ftp_gw
    sessions = {login: await gw.session(login) for login in ("alice", "carol", "bob", "pat")}
    made = {"a1": await gw.create_job(sessions["alice"]), "a2": await gw.create_job(sessions["carol"]),
            "b1": await gw.create_job(sessions["bob"])}
    for name, owner in (("a1", "alice"), ("a2", "carol"), ("b1", "bob")):
        await seed_world(gw, made[name], "ORIGINAL", owner)
        await seed_world(gw, made[name], "CLIPPED", "pat")
    return World(gw, sessions, made)


def attempt(fn: Callable[..., Any], *args: Any, **kw: Any) -> str:
    """The reply to one command (or transfer), whether it succeeded or not."""
    try:
        return str(fn(*args, **kw))
    except FtpError as e:
        return str(e)


def write_battery(f: ftplib.FTP, folder: str, tag: str) -> dict[str, str]:
    """Every write command once, each on names of its own; the reply of each."""
    r = {
        "STOR": attempt(stor, f, f"{folder}/{tag}-new.jpg", b"new"),
        "APPE": attempt(stor, f, f"{folder}/{tag}-seed.jpg", b"+more", cmd="APPE"),
        "REST+STOR": attempt(stor, f, f"{folder}/{tag}-seed.jpg", b"R", rest=2),
        "MKD": attempt(f.sendcmd, f"MKD {folder}/{tag}-dir"),
        "RMD": attempt(f.sendcmd, f"RMD {folder}/{tag}-sub"),
        "DELE": attempt(f.sendcmd, f"DELE {folder}/{tag}-victim.jpg"),
        "RNFR": attempt(f.sendcmd, f"RNFR {folder}/{tag}-ren.jpg"),
    }
    if r["RNFR"].startswith("350"):
        r["RNTO"] = attempt(f.sendcmd, f"RNTO {folder}/{tag}-renamed.jpg")
    r["MFMT"] = attempt(f.sendcmd, f"MFMT 20200101000000 {folder}/{tag}-seed.jpg")
    return r


WRITES_OK = {"STOR": "226", "APPE": "226", "REST+STOR": "226", "MKD": "257", "RMD": "250", "DELE": "250",
             "RNFR": "350", "RNTO": "250", "MFMT": "213"}


def assert_writes_allowed(f: ftplib.FTP, folder: str, tag: str) -> None:
    seed(f, folder, tag)
    replies = write_battery(f, folder, tag)
    assert {op: text[:3] for op, text in replies.items()} == WRITES_OK, replies
    listed = [n for n in names(f, folder) if n.startswith(f"{tag}-")]
    assert listed == sorted(f"{tag}-{n}" for n in ("new.jpg", "seed.jpg", "dir", "renamed.jpg")), listed
    assert retr(f, f"{folder}/{tag}-seed.jpg") == SEED[:2] + b"R"  # APPE, then REST 2 + STOR
    assert retr(f, f"{folder}/{tag}-renamed.jpg") == b"rename me"
    assert f.sendcmd(f"MDTM {folder}/{tag}-seed.jpg") == "213 20200101000000"


def assert_writes_refused(w: World, f: ftplib.FTP, job: str, kind: str, why: str) -> None:
    """Every write is refused with 550 and the reason, and nothing changes (disk, records, partials)."""
    before = w.snapshot(job)
    replies = write_battery(f, w.paths(job).kind(kind), "w")
    assert "RNTO" not in replies
    for op, text in replies.items():
        assert text.startswith("550") and why in text, (op, text)
    assert w.snapshot(job) == before


def assert_reads_allowed(f: ftplib.FTP, folder: str) -> None:
    """LIST, NLST, MLSD, MLST, SIZE, MDTM, RETR and HASH all answer, with the seeded file."""
    path = f"{folder}/w-seed.jpg"
    lines: list[str] = []
    assert f.retrlines(f"LIST {folder}", lines.append).startswith("226")
    f.voidcmd("TYPE I")
    assert any(line.endswith(" w-seed.jpg") for line in lines), lines
    assert "w-seed.jpg" in names(f, folder)
    assert mlsd(f, folder)["w-seed.jpg"]["type"] == "file"
    assert mlst(f, path)["size"] == str(len(SEED))
    assert f.size(path) == len(SEED)
    assert f.sendcmd(f"MDTM {path}").startswith("213 ")
    assert retr(f, path) == SEED
    assert f.sendcmd(f"HASH {path}").startswith("213 MD5")


# ----------------------------------------------------------------------------- what each login sees

@pytest.mark.parametrize(("who", "visible"), [
    ("alice", ["a1", "a2"]), ("carol", ["a1", "a2"]), ("bob", ["b1"]), ("job", ["a1"]), ("pat", ["a1", "a2", "b1"]),
])
async def test_what_each_login_lists(world: World, who: str, visible: list[str]) -> None:
    day = world.paths("a1").day
    with world.ftp(who) as f:
        assert names(f, "/") == [day]
        assert mlsd(f, "/")[day]["type"] == "dir"
        assert names(f, f"/{day}") == sorted(str(world.jobs[j]["id"]) for j in visible)
        f.cwd(f"/{day}")
        assert names(f, "") == sorted(str(world.jobs[j]["id"]) for j in visible)
        for j in visible:
            p = world.paths(j)
            assert names(f, p.root) == ["CLIPPED", "ORIGINAL"]
            for kind in KINDS:
                assert names(f, p.kind(kind)) == ["w-ren.jpg", "w-seed.jpg", "w-sub", "w-victim.jpg"]


async def test_a_login_without_jobs_sees_an_empty_root(ftp_gw: Gateway) -> None:
    for login in ("bob", "pat"):
        with ftp_as(ftp_gw, login) as f:
            assert names(f, "/") == []
    job = await ftp_gw.create_job(await ftp_gw.session("alice"))
    with ftp_as(ftp_gw, "bob") as f:
        assert names(f, "/") == []
        assert refused(f.cwd, JobPaths.of(job).day_dir).startswith("550")
    with ftp_as(ftp_gw, "pat") as f:
        assert names(f, "/") == [JobPaths.of(job).day]


def probe(f: ftplib.FTP, root: str) -> list[str]:
    """Every way to name something of a job: the replies (each must be a refusal)."""
    o = f"{root}/ORIGINAL"
    out = []
    for cmd in (f"CWD {root}", f"CWD {o}", f"CWD {root}/CLIPPED", f"MLST {root}", f"MLST {o}/w-seed.jpg",
                f"SIZE {o}/w-seed.jpg", f"MDTM {o}/w-seed.jpg", f"HASH {o}/w-seed.jpg", f"XMD5 {o}/w-seed.jpg",
                f"MKD {o}/new", f"RMD {o}/w-sub", f"DELE {o}/w-victim.jpg", f"RNFR {o}/w-ren.jpg",
                f"MFMT 20200101000000 {o}/w-seed.jpg", f"STAT {o}"):
        out.append(attempt(f.sendcmd, cmd))
    for path in (root, o, f"{o}/w-seed.jpg"):
        out.append(attempt(f.nlst, path))
        out.append(attempt(f.retrlines, f"LIST {path}", lambda _line: None))
        out.append(attempt(f.retrlines, f"MLSD {path}", lambda _line: None))
    f.voidcmd("TYPE I")
    out.append(attempt(retr, f, f"{o}/w-seed.jpg"))
    out.append(attempt(stor, f, f"{o}/planted.jpg", b"planted"))
    out.append(attempt(stor, f, f"{o}/w-seed.jpg", b"planted", cmd="APPE"))
    out.append(attempt(stor, f, f"{root}/CLIPPED/planted.png", b"planted"))
    return out


@pytest.mark.parametrize(("who", "target"), [("alice", "b1"), ("bob", "a1"), ("job", "a2"), ("job", "b1")])
async def test_other_jobs_are_invisible_and_unreachable(world: World, who: str, target: str) -> None:
    """Every command on another job's paths is refused exactly like a job that does not exist."""
    p = world.paths(target)
    before = world.snapshot(target)
    missing_root = f"/{p.day}/999999"
    with world.ftp(who) as f:
        assert str(p.job_id) not in names(f, p.day_dir)
        foreign = probe(f, p.root)
        missing = probe(f, missing_root)
    assert all(text[:1] == "5" for text in foreign), [t for t in foreign if t[:1] != "5"]
    assert foreign == [t.replace(missing_root, p.root) for t in missing]
    assert world.snapshot(target) == before


async def test_job_logins_only_open_their_own_job(world: World) -> None:
    a1_user, a1_password = job_login(world.jobs["a1"])
    a2_user, _ = job_login(world.jobs["a2"])
    assert a1_user != a2_user

    def login_fails(user: str, password: str) -> str:
        with pytest.raises(ftplib.error_perm) as e:
            ftp_connect(world.gw.ftp_port, user, password)
        return str(e.value)

    tries = [(a2_user, a1_password), (a1_user, a1_password + "x"), ("job-999999", a1_password), (a1_user, " ")]
    with ThreadPoolExecutor(len(tries)) as pool:  # each failure is answered slowly: try them side by side
        answers = list(pool.map(lambda t: login_fails(*t), tries))
    assert all(a.startswith("530") for a in answers), answers
    with world.ftp("job") as f:
        assert f.sendcmd("PWD") == '257 "/" is the current directory.'


# ----------------------------------------------------------------------------- customers and per-job logins

@pytest.mark.parametrize("who", ["customer", "job"])
async def test_originals_are_writable_while_the_job_is_preprocess(world: World, who: str) -> None:
    p = world.paths("a1")
    with world.ftp(who) as f:
        assert_writes_allowed(f, p.original, "t")
        f.mkd(f"{p.original}/t-dir/deeper")
        stor(f, f"{p.original}/t-dir/deeper/photo.jpg", b"deep")
        assert_reads_allowed(f, p.original)
    login = world.creds(who)[0]
    recs = records(world.gw, world.jobs["a1"]["id"], "ORIGINAL")
    assert recs["t-dir/deeper/photo.jpg"]["login"] == login and recs["t-new.jpg"]["protocol"] == "ftp"
    api = await api_files(world.gw, world.sessions["alice"], world.jobs["a1"]["id"], "ORIGINAL")
    assert {"t-new.jpg", "t-seed.jpg", "t-renamed.jpg", "t-dir/deeper/photo.jpg"} <= set(api)
    assert "t-victim.jpg" not in api and "t-ren.jpg" not in api
    assert_records_true(world.gw, world.jobs["a1"])


async def test_account_login_writes_the_originals_of_any_job_of_its_account(world: World) -> None:
    p = world.paths("a2")  # carol's job, same account as alice
    with world.ftp("alice") as f:
        assert_writes_allowed(f, p.original, "alice")
    assert_records_true(world.gw, world.jobs["a2"])


@pytest.mark.parametrize("who", ["customer", "job"])
async def test_clipped_is_read_only_for_customers(world: World, who: str) -> None:
    with world.ftp(who) as f:
        assert_writes_refused(world, f, "a1", "CLIPPED", "read-only for customers")
        assert_reads_allowed(f, world.paths("a1").clipped)


@pytest.mark.parametrize("who", ["customer", "job"])
async def test_originals_freeze_once_the_job_is_submitted(world: World, who: str) -> None:
    await world.submit("a1")
    with world.ftp(who) as f:
        assert_writes_refused(world, f, "a1", "ORIGINAL", "frozen once it is submitted")
        assert "CJ_WORK_PROGRESS" in refused(stor, f, f"{world.paths('a1').original}/late.jpg", b"late")
        assert_reads_allowed(f, world.paths("a1").original)
        assert_reads_allowed(f, world.paths("a1").clipped)
    with world.ftp("alice") as f:  # the account's other jobs are not affected
        assert_writes_allowed(f, world.paths("a2").original, "still")


async def test_a_write_refused_mid_session_when_the_job_is_submitted(world: World) -> None:
    """The status is read at each command: a session opened before the submit is refused after it."""
    p = world.paths("a1")
    f = ftp_connect(world.gw.ftp_port, *world.creds("customer"))
    try:
        assert stor(f, f"{p.original}/before.jpg", b"before").startswith("226")
        await world.submit("a1")
        assert "frozen once it is submitted" in refused(stor, f, f"{p.original}/after.jpg", b"after")
        assert names(f, p.original).count("after.jpg") == 0
    finally:
        f.close()


async def test_a_submit_reaches_a_session_that_just_resolved_the_job(world: World) -> None:
    """The FTP thread keeps job rows between commands; a committed submit drops them, so the refusal
    comes at the STOR itself, before any byte is sent (not only when the upload is committed)."""
    p = world.paths("a1")
    f = ftp_connect(world.gw.ftp_port, *world.creds("customer"))
    try:
        assert stor(f, f"{p.original}/before.jpg", b"before").startswith("226")
        await world.submit("a1")
        with pytest.raises(ftplib.error_perm, match="frozen once it is submitted"):
            f.sendcmd(f"MFMT 20200101000000 {p.original}/before.jpg")  # the path the STOR resolved last
        with pytest.raises(ftplib.error_perm, match="frozen once it is submitted"):
            f.sendcmd(f"STOR {p.original}/after.jpg")  # no data connection was even offered
    finally:
        f.close()


async def test_a_change_behind_the_gateways_back_reaches_the_session_within_the_ttls(world: World) -> None:
    """The node a STOR resolved serves the MFMT that follows it, but never past the job row's own ttl
    (JobCache, 1 s) plus REUSE_NODE: a status changed in the sqlite3 shell is obeyed after that."""
    p = world.paths("a1")
    f = ftp_connect(world.gw.ftp_port, *world.creds("customer"))
    try:
        assert stor(f, f"{p.original}/before.jpg", b"before").startswith("226")
        assert f.sendcmd(f"MFMT 20200101000000 {p.original}/before.jpg").startswith("213")
        with sqlite3.connect(world.gw.db_path) as conn:  # nobody tells the gateway
            conn.execute("update jobs set status = ? where id = ?", [jobs.WORK_PROGRESS, world.jobs["a1"]["id"]])
        time.sleep(1.0 + filesystem.REUSE_NODE + 0.1)
        with pytest.raises(ftplib.error_perm, match="CJ_WORK_PROGRESS"):
            f.sendcmd(f"MFMT 20210101000000 {p.original}/before.jpg")
    finally:
        f.close()


# ----------------------------------------------------------------------------- processors

async def test_processor_reads_originals_and_writes_clipped_until_finished(world: World) -> None:
    p = world.paths("a1")
    with world.ftp("processor") as f:
        assert_writes_refused(world, f, "a1", "ORIGINAL", "read-only for processors")
        assert_reads_allowed(f, p.original)
        assert_writes_allowed(f, p.clipped, "pre")  # already while the customer uploads
    await world.submit("a1")
    with world.ftp("processor") as f:
        assert_writes_refused(world, f, "a1", "ORIGINAL", "read-only for processors")
        assert_writes_allowed(f, p.clipped, "work")
    await world.finish("a1")
    with world.ftp("processor") as f:
        assert_writes_refused(world, f, "a1", "CLIPPED", "frozen once it is finished")
        assert "CJ_FINISHED" in refused(stor, f, f"{p.clipped}/late.png", b"late")
        assert_reads_allowed(f, p.clipped)
        assert_reads_allowed(f, p.original)
    for who in ("customer", "job"):  # the customer downloads the results
        with world.ftp(who) as f:
            assert_reads_allowed(f, p.clipped)
            assert retr(f, f"{p.clipped}/work-renamed.jpg") == b"rename me"
    assert_records_true(world.gw, world.jobs["a1"])


async def submitted_job(gw: Gateway) -> tuple[str, dict[str, Any], JobPaths]:
    """alice's new job with one original stored by FTP, submitted: (pat's session, the job, its paths)."""
    alice, pat = await gw.session("alice"), await gw.session("pat")
    job = await gw.create_job(alice)
    p = JobPaths.of(job)
    with ftp_as(gw, "alice") as f:
        stor(f, f"{p.original}/photo.jpg", b"photo")
    assert (await gw.call("POST", f"/jobs/{job['id']}/submit", session=alice)).status == 200
    return pat, job, p


async def test_finish_needs_a_clipped_file_delivered_by_ftp(ftp_gw: Gateway) -> None:
    pat, job, p = await submitted_job(ftp_gw)
    r = await ftp_gw.call("POST", f"/jobs/{job['id']}/finish", session=pat)
    assert r.status == 409 and r.json()["code"] == "no_clipped_files", r
    with ftp_as(ftp_gw, "pat") as f:
        assert stor(f, f"{p.clipped}/photo.png", b"clipped").startswith("226")
    r = await ftp_gw.call("POST", f"/jobs/{job['id']}/finish", session=pat)
    assert r.status == 200 and r.json()["status"] == jobs.FINISHED, r
    with ftp_as(ftp_gw, "pat") as f:
        assert "frozen once it is finished" in refused(stor, f, f"{p.clipped}/more.png", b"more")
    with ftp_as(ftp_gw, "alice") as f:
        assert retr(f, f"{p.clipped}/photo.png") == b"clipped"


@pytest.mark.parametrize("who", ["alice", "job", "pat"])
async def test_only_the_kind_folders_hold_files(world: World, who: str) -> None:
    p = world.paths("a1")
    before = world.snapshot("a1")
    with world.ftp(who) as f:
        for folder in ("", p.day_dir, p.root):
            assert refused(stor, f, f"{folder}/x.jpg", b"x").startswith("553")
            assert refused(f.mkd, f"{folder}/NEW").startswith("553")
        for path in (p.original, p.clipped, p.root, p.day_dir):
            assert refused(f.rmd, path).startswith("550")
            assert refused(f.delete, path).startswith("550")
            assert refused(f.sendcmd, f"RNFR {path}").startswith("550")
            assert refused(f.sendcmd, f"MFMT 20200101000000 {path}").startswith("550")
    assert world.snapshot("a1") == before
    assert sorted(x.name for x in world.gw.storage_root.iterdir()) == [p.day]


# ----------------------------------------------------------------------------- archived jobs

async def archive(w: World, name: str) -> None:
    await w.submit(name)
    await w.finish(name)
    assert await w.gw.write(jobs.archive_job, w.gw.app[STORAGE], w.jobs[name]["id"]) is True


@pytest.mark.parametrize("who", ["alice", "pat"])
async def test_an_archived_job_answers_job_archived(world: World, who: str) -> None:
    await archive(world, "a1")
    p = world.paths("a1")
    with world.ftp(who) as f:
        assert str(p.job_id) not in names(f, p.day_dir)
        assert str(world.jobs["a2"]["id"]) in names(f, p.day_dir)
        for text in (refused(f.cwd, p.root), refused(f.cwd, p.original), refused(f.nlst, p.clipped),
                     refused(retr, f, f"{p.original}/w-seed.jpg"),
                     refused(stor, f, f"{p.original}/late.jpg", b"late"),
                     refused(stor, f, f"{p.clipped}/late.png", b"late"),
                     refused(f.mkd, f"{p.clipped}/late")):
            assert text.startswith("550") and "archived" in text, text
        assert refused(f.size, f"{p.clipped}/w-seed.jpg").startswith("550")
    if who == "alice":  # the job's own user is gone with it (a failed login takes a second to answer)
        with pytest.raises(ftplib.error_perm, match=r"^530"):
            ftp_connect(world.gw.ftp_port, *job_login(world.jobs["a1"]))
    job_dir = world.gw.job_dir(world.jobs["a1"], "ORIGINAL").parent
    assert tree(job_dir) == {"ORIGINAL": None, "CLIPPED": None}


async def test_an_archived_job_alone_in_its_day_answers_job_archived(ftp_gw: Gateway) -> None:
    pat, job, p = await submitted_job(ftp_gw)
    with ftp_as(ftp_gw, "pat") as f:
        stor(f, f"{p.clipped}/photo.png", b"clipped")
    assert (await ftp_gw.call("POST", f"/jobs/{job['id']}/finish", session=pat)).status == 200
    assert await ftp_gw.write(jobs.archive_job, ftp_gw.app[STORAGE], job["id"]) is True
    with ftp_as(ftp_gw, "alice") as f:
        assert names(f, "/") == []
        text = refused(f.cwd, p.original)
    assert text.startswith("550") and "archived" in text, text


async def test_retention_archives_finished_jobs_and_ftp_follows(gateway_factory: GatewayFactory) -> None:
    """[jobs] retention_days past: the sweeper archives the job, its files go, FTP answers 'job archived'."""
    gw = await gateway_factory({"jobs.retention_days": 1e-5}, ftp=True)  # 0.86 s
    alice, pat = await gw.session("alice"), await gw.session("pat")
    done, other = await gw.create_job(alice), await gw.create_job(alice)
    p = JobPaths.of(done)
    with ftp_as(gw, "alice") as f:
        stor(f, f"{p.original}/photo.jpg", b"photo")
    assert (await gw.call("POST", f"/jobs/{done['id']}/submit", session=alice)).status == 200
    with ftp_as(gw, "pat") as f:
        stor(f, f"{p.clipped}/photo.png", b"clipped")
    assert (await gw.call("POST", f"/jobs/{done['id']}/finish", session=pat)).status == 200
    await async_wait_until(lambda: gw.query("select status from jobs where id = ?", [done["id"]])[0]["status"]
                           == jobs.ARCHIVED, timeout=10, what="the sweeper to archive the job")
    assert tree(gw.job_dir(done, "ORIGINAL").parent) == {"ORIGINAL": None, "CLIPPED": None}  # the files went
    for login in ("alice", "pat"):
        with ftp_as(gw, login) as f:
            assert names(f, p.day_dir) == [str(other["id"])]
            text = refused(retr, f, f"{p.clipped}/photo.png")
            assert text.startswith("550") and "archived" in text, text


async def test_the_ftp_threads_job_rows_follow_a_change_behind_the_gateways_back_within_the_ttl(
        world: World) -> None:
    job_id = world.jobs["a1"]["id"]
    db = open_db(world.gw.db_path)
    try:
        cache = jobs.JobCache(ttl=0.2)
        assert cache.get(db, job_id)["status"] == jobs.PREPROCESS  # type: ignore[index]
        with sqlite3.connect(world.gw.db_path) as conn:  # nobody tells the gateway
            conn.execute("update jobs set status = ? where id = ?", [jobs.WORK_PROGRESS, job_id])
        time.sleep(0.25)
        assert cache.get(db, job_id)["status"] == jobs.WORK_PROGRESS  # type: ignore[index]
        assert cache.get(db, 10**12) is None
    finally:
        db.close()


async def test_the_ftp_threads_partial_lookups_follow_saves_at_once_and_others_within_the_ttl(
        world: World) -> None:
    """PartialFinder keeps 'this login has no partial in this job': a partial saved through the writer
    is seen at the next lookup; one inserted behind the gateway's back within the ttl."""
    job_id = world.jobs["a1"]["id"]
    db = open_db(world.gw.db_path)
    try:
        finder = jobs.PartialFinder(ttl=0.2)
        assert finder.find(db, job_id, "ORIGINAL", "a.jpg", "alice") is None
        # outside the writer its after-commit hook runs at once
        jobs.save_partial(db, job_id, "ORIGINAL", "a.jpg", "alice", ".gwtmp-" + "a" * 24, 10)
        assert finder.find(db, job_id, "ORIGINAL", "a.jpg", "alice")["size"] == 10  # type: ignore[index]
        assert finder.find(db, job_id, "ORIGINAL", "a.jpg", "bob") is None  # another login's: none
        assert finder.find(db, job_id, "ORIGINAL", "b.jpg", "bob") is None
        with sqlite3.connect(world.gw.db_path) as conn:  # nobody tells the gateway
            conn.execute("insert into partials (job_id, kind, path, login, temp_name, size, updated_at) "
                         "values (?, 'ORIGINAL', 'b.jpg', 'bob', ?, 7, 0)", [job_id, ".gwtmp-" + "b" * 24])
        assert finder.find(db, job_id, "ORIGINAL", "b.jpg", "bob") is None  # still the kept answer
        time.sleep(0.25)
        assert finder.find(db, job_id, "ORIGINAL", "b.jpg", "bob")["size"] == 7  # type: ignore[index]
    finally:
        db.close()
