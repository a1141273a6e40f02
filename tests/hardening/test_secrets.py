"""Secrets: stored hashed, never logged, compared exactly and in constant time.

The main test runs a realistic day against a real `gateway serve` process (stdout and stderr
captured): users and an API client made with the admin CLI, logins over HTTP (JSON and form) and
FTP (account and per-job users), job creation, uploads by FTP and by postUrl, deliveries by a
processor, the files list, single-file and zip downloads, submit, finish, logout, and failed
logins with wrong passwords. Then every password, client token, session token, per-job FTP
password, upload key, download token and attempted password is looked for, byte for byte, in the
SQLite files (-wal and -shm too, while serving and after the stop), in every other file of the
tmp tree and in the server's logs: none may be there. The stored forms are checked to be the
hashes (scrypt for passwords, SHA-256 for tokens).
"""

from __future__ import annotations

import hmac
import inspect
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from conftest import ConfigFactory, Gateway, GatewayFactory, assert_error, free_port
from helpers_authz import (
    Ftp,
    ServeProcess,
    admin,
    multipart,
    query_param,
    reply_code,
    target_of,
    upload_original,
)

from gateway import accounts
from gateway.api import uploads
from gateway.ftp import authorizer

JSON = "application/json"


def secret_files(root: Path) -> dict[str, bytes]:
    """Every regular file below root: relative path -> bytes."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
            and not p.is_symlink()}


def leaks(needles: dict[str, str], haystacks: dict[str, bytes]) -> list[str]:
    found = []
    for what, value in needles.items():
        raw = value.encode()
        for where, data in haystacks.items():
            if raw in data:
                found.append(f"{what} ({value[:12]}...) found in clear in {where}")
    return found


class Http:
    """An aiohttp session against the served process."""

    def __init__(self, session: aiohttp.ClientSession, port: int, client_token: str) -> None:
        self.s, self.base, self.client_token = session, f"http://127.0.0.1:{port}", client_token

    async def call(self, method: str, path: str, session: str | None = None, *, expect: int,
                   json_body: Any = None, form: dict[str, str] | None = None, data: bytes | None = None,
                   content_type: str | None = None, headers: dict[str, str] | None = None) -> Any:
        h = {"Accept": JSON, "X-Client-Token": self.client_token, **({"X-Session-Token": session} if session else {}),
             **(headers or {})}
        if content_type:
            h["Content-Type"] = content_type
        url = path if path.startswith("http") else self.base + path
        async with self.s.request(method, url, headers=h, json=json_body, data=form if form is not None else data) as r:
            body = await r.read()
            assert r.status == expect, (method, path, r.status, body[:300])
            return (await r.json()) if r.content_type == JSON else body


async def realistic_day(tmp_path: Path, config: Path, http_port: int, ftp_port: int,
                        server: ServeProcess) -> dict[str, str]:
    """The scenario against the served process; returns every secret it saw or made."""
    pw = {login: f"{login}-pw-{accounts.new_token()[:16]}" for login in ("alice", "pat")}
    needles: dict[str, str] = {f"password of {k}": v for k, v in pw.items()}
    account = admin(config, "account", "create", "acme")
    needles["callback secret"] = account["callbackSecret"]
    admin(config, "user", "create", "--login", "alice", "--password-stdin", "--account", "acme", stdin=pw["alice"])
    admin(config, "user", "create", "--login", "pat", "--password-stdin", "--processor", stdin=pw["pat"] + "\n")
    client = admin(config, "client", "create", "web")["token"]
    needles["client token"] = client

    async with aiohttp.ClientSession() as s:
        http = Http(s, http_port, client)
        alice = (await http.call("POST", "/sessions", expect=201,
                                 json_body={"login": "alice", "password": pw["alice"]}))["token"]
        pat = (await http.call("POST", "/sessions", expect=201, form={"login": "pat", "password": pw["pat"]},
                               content_type="application/x-www-form-urlencoded"))["token"]
        needles |= {"session of alice": alice, "session of pat": pat}
        wrong = f"wrong-pw-{accounts.new_token()[:16]}"
        needles["attempted password"] = wrong
        await http.call("POST", "/sessions", expect=401, json_body={"login": "alice", "password": wrong})
        await http.call("POST", "/sessions", expect=401, json_body={"login": "mallory", "password": wrong})
        bogus = accounts.new_token()
        needles["attempted session token"] = bogus
        await http.call("GET", "/jobs", bogus, expect=401)

        jobs = [await http.call("POST", "/jobs", alice, expect=201, json_body={"name": f"job {i}",
                                "description": "secrets scenario"}) for i in range(2)]
        for i, job in enumerate(jobs):
            needles[f"ftp password of job {i}"] = job["upload"]["ftpPassword"]
            needles[f"upload key of job {i}"] = query_param(job["upload"]["postUrl"], "accountID")
            needles[f"zip token of job {i} (alice)"] = query_param(job["download"]["getUrl"], "sessionID")
        job = jobs[0]
        day = job["createdDate"][:10].replace("-", "")

        with Ftp(ftp_port, "alice", pw["alice"]) as ftp:
            assert reply_code(ftp.stor(f"/{day}/{job['id']}/ORIGINAL/by-account.jpg", b"account upload")) == 226
        with Ftp(ftp_port, job["upload"]["ftpUsername"], job["upload"]["ftpPassword"]) as ftp:
            assert reply_code(ftp.stor(f"/{day}/{job['id']}/ORIGINAL/by-job-user.jpg", b"job upload")) == 226
            assert reply_code(ftp.cmd(f"HASH /{day}/{job['id']}/ORIGINAL/by-job-user.jpg")) == 213
        ftp_wrong = f"ftp-wrong-{accounts.new_token()[:16]}"
        needles["attempted FTP password"] = ftp_wrong

        def ftp_fail(user: str) -> str:
            with Ftp(ftp_port) as ftp:
                return ftp.login(user, ftp_wrong)
        with ThreadPoolExecutor(2) as pool:  # each failure is answered after a deliberate second
            replies = list(pool.map(ftp_fail, ["alice", jobs[1]["upload"]["ftpUsername"]]))
        assert [reply_code(r) for r in replies] == [530, 530], replies

        body, ctype = multipart([("by-post.jpg", b"post upload")])
        async with s.post(job["upload"]["postUrl"], data=body, headers={"Content-Type": ctype}) as r:
            assert r.status == 201, await r.text()
        with Ftp(ftp_port, "pat", pw["pat"]) as ftp:
            assert reply_code(ftp.stor(f"/{day}/{job['id']}/CLIPPED/by-ftp.png", b"clipped by ftp")) == 226
        body, ctype = multipart([("by-http.png", b"clipped by http")])
        await http.call("POST", f"/jobs/{job['id']}/clipped", pat, expect=201, data=body, content_type=ctype)

        files = (await http.call("GET", f"/jobs/{job['id']}/files", alice, expect=200))["files"]
        needles["file token (alice)"] = query_param(files[0]["downloadUrl"], "sessionid")
        for f in files:
            async with s.get(f["downloadUrl"]) as r:
                assert r.status == 200
                await r.read()
        pat_job = await http.call("GET", f"/jobs/{job['id']}", pat, expect=200)
        needles["zip token (pat)"] = query_param(pat_job["download"]["getUrl"], "sessionID")
        for url in (job["download"]["getUrl"], pat_job["download"]["getUrl"] + "&kind=original"):
            async with s.get(url) as r:
                assert r.status == 200
                await r.read()
        await http.call("POST", f"/jobs/{job['id']}/submit", alice, expect=200)
        await http.call("POST", f"/jobs/{job['id']}/finish", pat, expect=200)
        await http.call("DELETE", "/sessions", alice, expect=204)
        async with s.get(job["download"]["getUrl"]) as r:
            assert r.status == 401
            await r.read()
    return needles


async def test_no_secret_in_clear_in_the_database_files_or_logs(config_factory: ConfigFactory,
                                                                 tmp_path: Path) -> None:
    http_port, ftp_port = free_port(), free_port()
    config = config_factory.write({"http.port": http_port, "ftp.port": ftp_port, "security.login_failures": 50})
    server = ServeProcess(config, tmp_path, http_port)
    try:
        server.wait_ready()
        needles = await realistic_day(tmp_path, config, http_port, ftp_port, server)
        while_serving = secret_files(tmp_path)
        rc = server.stop()
    finally:
        server.kill()
    assert rc == 0, server.logs[-2000:]
    after = secret_files(tmp_path)
    db_files = [k for k in after if k.startswith("db/gateway.db")]
    assert db_files, sorted(after)
    logs = server.logs
    assert b"FTP login failed for 'alice'" in logs and b"/ajax/DownloadZip.ashx" in logs, logs[-3000:]
    assert b"Traceback" not in logs, logs[-3000:]
    problems = leaks(needles, {f"{k} (while serving)": v for k, v in while_serving.items()})
    problems += leaks(needles, {f"{k} (after the stop)": v for k, v in after.items()})
    problems += leaks(needles, {"the server's stdout+stderr": logs})
    assert not problems, "\n".join(problems)

    # what is stored instead: the hashes
    from gateway.db import open_db

    db = open_db(tmp_path / "db" / "gateway.db")
    try:
        users = {r["login"]: r["password_hash"] for r in db.query("select login, password_hash from users")}
        sessions = {r["token_hash"] for r in db.query("select token_hash from sessions")}
        clients = {r["token_hash"] for r in db.query("select token_hash from clients")}
        job_hashes = {r["ftp_password_hash"] for r in db.query("select ftp_password_hash from jobs")}
    finally:
        db.close()
    for login in ("alice", "pat"):
        assert users[login].startswith("scrypt$16384$8$1$"), users[login]
        assert accounts.verify_password(needles[f"password of {login}"], users[login])
    assert {accounts.token_hash(needles[f"session of {login}"]) for login in ("alice", "pat")} <= sessions
    assert clients == {accounts.token_hash(needles["client token"])}
    assert job_hashes == {accounts.token_hash(needles[f"ftp password of job {i}"]) for i in range(2)}


# ----------------------------------------------------------------------------- exact, constant-time comparisons


def mutations(secret: str, *, padded: bool = True) -> list[str]:
    """Near misses: the last character changed, a prefix, an extension, case swapped, half, empty, and
    padded with a space (not for headers: HTTP strips a field value's surrounding whitespace)."""
    last = "A" if secret[-1] != "A" else "B"
    out = [secret[:-1] + last, secret[:-1], secret + "x", secret.swapcase(), secret[: len(secret) // 2], ""]
    return out + ([f" {secret}", f"{secret} "] if padded else [])


async def test_near_misses_of_every_secret_are_refused(gateway_factory: GatewayFactory) -> None:
    """Only the exact secret opens anything: no prefix, case-insensitive or trimmed match."""
    gw = await gateway_factory({"security.login_failures": 1000}, ftp=True)
    s = await gw.session("alice")
    job = await gw.create_job(s)
    await upload_original(gw, job, "photo.jpg", b"photo")
    token = query_param(job["download"]["getUrl"], "sessionID")
    key = query_param(job["upload"]["postUrl"], "accountID")
    for wrong in mutations(s, padded=False):
        if wrong:
            assert_error(await gw.call("GET", "/jobs", session=wrong), 401)
    for wrong in mutations(gw.world.clients["web"], padded=False):
        if wrong:
            assert_error(await gw.call("GET", "/jobs", session=s, client=wrong), 401)
    for wrong in mutations(token):
        r = await gw.call("GET", f"/ajax/DownloadZip.ashx?centraljobid={job['id']}&sessionID={wrong}&kind=original",
                          client=None, accept=None)
        assert r.status in (401, 404), (wrong, r)
    for wrong in mutations(key):
        body, ctype = multipart([("x.jpg", b"x")])
        r = await gw.call("POST", f"/upload/UploadFile.ashx?jobID={job['id']}&accountID={wrong}", client=None,
                          accept=None, data=body, content_type=ctype)
        assert_error(r, 404, "upload_link_not_found")
    for wrong in mutations(gw.world.passwords["carol"])[:3]:
        assert_error(await gw.login_reply("carol", wrong), 401)
    def ftp_login(password: str) -> str:
        with Ftp(gw.ftp_port) as ftp:
            return ftp.login(job["upload"]["ftpUsername"], password)
    wrong_ftp = mutations(job["upload"]["ftpPassword"])[:4]
    with ThreadPoolExecutor(len(wrong_ftp)) as pool:  # each failure is answered after a deliberate second
        replies = list(pool.map(ftp_login, wrong_ftp))
    assert [reply_code(r) for r in replies] == [530] * len(wrong_ftp), replies
    assert (await gw.call("GET", "/jobs", session=s)).status == 200


async def test_an_unknown_login_costs_as_much_as_a_wrong_password(gateway_factory: GatewayFactory) -> None:
    """A login that does not exist is checked against a dummy scrypt hash: its failure takes as long as
    a wrong password's, so timing does not tell which logins exist."""
    gw = await gateway_factory({"security.login_failures": 1000})
    known, unknown = [], []
    for i in range(6):
        for login, times in (("alice", known), (f"nobody{i}", unknown)) if i % 2 else (
                (f"nobody{i}", unknown), ("alice", known)):
            start = time.perf_counter()
            r = await gw.call("POST", "/sessions", json_body={"login": login, "password": "not-the-password"})
            times.append(time.perf_counter() - start)
            assert_error(r, 401)
    k, u = statistics.median(known), statistics.median(unknown)
    assert u >= 0.3 * k, f"unknown login answered in {u * 1000:.1f} ms, known in {k * 1000:.1f} ms"
    assert min(known) > 0.005, "a wrong password is checked with a real, slow hash"


MAX_NON_ASCII_MD5 = "\u00e9" * 32


async def test_a_non_ascii_content_md5_is_a_mismatch_not_a_crash(gw: Gateway) -> None:
    s = await gw.session("alice")
    job = await gw.create_job(s)
    b = "gwboundary"
    body = (f'--{b}\r\nContent-Disposition: form-data; name="file"; filename="a.jpg"\r\n'
            f"Content-MD5: {MAX_NON_ASCII_MD5}\r\n\r\nxyz\r\n--{b}--\r\n").encode()
    r = await gw.call("POST", target_of(job["upload"]["postUrl"]), client=None, accept=None, data=body,
                      content_type=f"multipart/form-data; boundary={b}")
    assert_error(r, 400, "checksum_mismatch", stored=[])


@pytest.mark.parametrize("fn", [accounts.verify_password, accounts.find_client, accounts._session_row,
                                accounts.check_download_token, authorizer.check_job_password,
                                uploads.upload_original, uploads._md5_matches],
                         ids=lambda f: f.__qualname__)
def test_secret_comparisons_use_compare_digest(fn: Any) -> None:
    """A supplement to the behaviour above: each place that compares a secret uses hmac.compare_digest."""
    source = inspect.getsource(fn)
    assert "hmac.compare_digest(" in source, fn.__qualname__
    assert hmac.compare_digest  # the module really is the standard one
