"""Authorization matrix: every route, download URL and FTP command class x every kind of caller.

HTTP columns (who calls):
  none             no token headers at all (Accept only)
  unknown-client   a random X-Client-Token with the owner's live session
  unknown-session  the web client with a random session token
  expired          the owner's session past its expiry (moved there through the writer)
  logged-out       the owner's session after DELETE /sessions
  other-client     the owner's live session, opened through the mobile client, sent with the web client's token
  other-account    bob, a customer of globex (the job belongs to acme)
  processor        pat
  colleague        carol, another customer of acme
  owner            alice, who created the job

For the capability URLs the credential is in the URL, so the columns say whose it is: the postUrl
works for anyone holding it whatever headers come along; a download token (getUrl `sessionID`,
DownloadBin `sessionid`) is derived from that column's session (`unknown-client`: a session of an
API client revoked since; `other-account`: bob's session, derived with the server secret since
the API never hands bob one for this job).

FTP columns (who logs in): account (alice), colleague (carol), this-job (job A's own user),
other-job (the own user of job B, alice's other job), other-account (bob), processor (pat).
Every cell is exactly one status and error code (HTTP) or reply code (FTP), and its effect on disk
and in the database is checked both ways.
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pytest
from conftest import JSON, Gateway, GatewayFactory, Reply, assert_error
from helpers_authz import (
    Ftp,
    expire_session,
    job_vdir,
    logout,
    multipart,
    post_files,
    query_param,
    reply_code,
    target_of,
    upload_clipped,
    upload_original,
)
from helpers_proc import cli

from gateway import accounts

COLUMNS = ("none", "unknown-client", "unknown-session", "expired", "logged-out", "other-client",
           "other-account", "processor", "colleague", "owner")
USERS = {"other-account": "bob", "processor": "pat", "colleague": "carol", "owner": "alice"}
AUTH_FAILS: dict[str, tuple[int, str]] = {
    "none": (400, "missing_header"), "unknown-client": (401, "unauthorized"),
    "unknown-session": (401, "unauthorized"), "expired": (401, "unauthorized"),
    "logged-out": (401, "unauthorized"), "other-client": (401, "unauthorized")}
ORIGINAL_BYTES = b"an original photo " * 100
CLIPPED_BYTES = b"a clipped photo " * 100


# ----------------------------------------------------------------------------- the world of one cell


@dataclass
class Cell:
    """What one cell of the matrix acts on: job A of alice with one original and one clipped file."""

    gw: Gateway
    job: dict[str, Any]
    original: dict[str, Any]
    clipped: dict[str, Any]
    pat: str


async def fresh_cell(gw: Gateway, state: str = "preprocess") -> Cell:
    alice, pat = await gw.session("alice"), await gw.session("pat")
    job = await gw.create_job(alice)
    original = await upload_original(gw, job, "photo.jpg", ORIGINAL_BYTES)
    clipped = await upload_clipped(gw, pat, job, "photo.png", CLIPPED_BYTES)
    if state == "submitted":
        r = await gw.call("POST", f"/jobs/{job['id']}/submit", session=alice)
        assert r.status == 200, r
    return Cell(gw, job, original, clipped, pat)


async def caller_headers(gw: Gateway, column: str) -> dict[str, str]:
    """The headers of one HTTP column (a fresh session each time: some cells end theirs)."""
    if column == "none":
        return {"Accept": JSON}
    if column == "unknown-client":
        return {**gw.headers(await gw.session("alice")), "X-Client-Token": accounts.new_token()}
    if column == "unknown-session":
        return gw.headers(accounts.new_token())
    if column == "other-client":
        return gw.headers(await gw.session("alice", client="mobile"))  # the web client's token
    s = await gw.session(USERS.get(column, "alice"))
    if column == "expired":
        await expire_session(gw, s)
    elif column == "logged-out":
        await logout(gw, s)
    return gw.headers(s)


async def send(gw: Gateway, method: str, path: str, headers: dict[str, str], *, json_body: Any = None,
               files: list[tuple[str, bytes]] | None = None) -> Reply:
    h = dict(headers)
    data = None
    if json_body is not None:
        data = json.dumps(json_body).encode()
        h["Content-Type"] = JSON
    elif files is not None:
        data, h["Content-Type"] = multipart(files)
    skip = [n for n in ("Accept", "Content-Type") if n not in h]
    async with gw.client.request(method, path, headers=h, data=data, skip_auto_headers=skip,
                                 allow_redirects=False) as resp:
        return Reply(resp.status, resp.headers, await resp.read())


# ----------------------------------------------------------------------------- HTTP routes with session headers

Check = Callable[[Cell, str, Reply], None]


@dataclass(frozen=True)
class Route:
    id: str
    method: str
    path: str  # {A}: the job's id
    users: dict[str, tuple[int, str | None]]  # other-account, processor, colleague, owner
    state: str = "preprocess"
    body: str | None = None  # "job" (a create-job JSON body), "clipped" (a multipart file), "login"
    auth: str = "session"  # session: both headers; client: X-Client-Token only; open: none
    check: Check | None = None  # more checks on a 2xx reply
    mutates: bool = False  # each cell gets a job of its own


def ok(status: int = 200) -> tuple[int, None]:
    return (status, None)


NOT_FOUND = (404, "job_not_found")
FORBIDDEN = (403, "forbidden")


def sees_job(cell: Cell, column: str, r: Reply) -> None:
    ids = [j["id"] for j in r.json()["jobs"]]
    assert (cell.job["id"] in ids) == (column != "other-account"), (column, ids)


def is_the_job(cell: Cell, column: str, r: Reply) -> None:
    assert r.json()["id"] == cell.job["id"], r


def lists_the_files(cell: Cell, column: str, r: Reply) -> None:
    assert {f["fileName"] for f in r.json()["files"]} == {"photo.jpg", "photo.png"}, r


def job_status(status: str) -> Check:
    def check(cell: Cell, column: str, r: Reply) -> None:
        assert r.json()["status"] == status, r
    return check


ROUTES = [
    Route("login", "POST", "/sessions", {c: ok(201) for c in USERS}, body="login", auth="client"),
    Route("logout", "DELETE", "/sessions", {c: ok(204) for c in USERS}, mutates=True),
    Route("create-job", "POST", "/jobs", {"other-account": ok(201), "processor": FORBIDDEN,
                                          "colleague": ok(201), "owner": ok(201)}, body="job", mutates=True),
    Route("list-jobs", "GET", "/jobs", {c: ok() for c in USERS}, check=sees_job),
    Route("get-job", "GET", "/jobs/{A}", {"other-account": NOT_FOUND, "processor": ok(), "colleague": ok(),
                                          "owner": ok()}, check=is_the_job),
    Route("submit", "POST", "/jobs/{A}/submit", {"other-account": NOT_FOUND, "processor": FORBIDDEN,
                                                 "colleague": ok(), "owner": ok()},
          check=job_status("CJ_WORK_PROGRESS"), mutates=True),
    Route("finish", "POST", "/jobs/{A}/finish", {"other-account": NOT_FOUND, "processor": ok(),
                                                 "colleague": FORBIDDEN, "owner": FORBIDDEN},
          state="submitted", check=job_status("CJ_FINISHED"), mutates=True),
    Route("list-files", "GET", "/jobs/{A}/files", {"other-account": NOT_FOUND, "processor": ok(), "colleague": ok(),
                                                   "owner": ok()}, check=lists_the_files),
    Route("deliver-clipped", "POST", "/jobs/{A}/clipped", {"other-account": NOT_FOUND, "processor": ok(201),
                                                           "colleague": FORBIDDEN, "owner": FORBIDDEN},
          body="clipped", mutates=True),
    Route("deadlines", "GET", "/deadlines", {c: ok() for c in USERS}),
    Route("specifications", "GET", "/specifications", {c: ok() for c in USERS}),
    Route("statuses", "GET", "/config/statuses", {c: ok() for c in USERS}),
    Route("health", "GET", "/health", {c: ok() for c in USERS}, auth="open"),
    Route("openapi", "GET", "/openapi.json", {c: ok() for c in USERS}, auth="open"),
    Route("docs", "GET", "/docs", {c: ok() for c in USERS}, auth="open"),
]


def expected(route: Route, column: str) -> tuple[int, str | None]:
    if route.auth == "open":
        return ok()
    if route.auth == "client" and column not in ("none", "unknown-client"):
        return route.users["owner"]  # the session headers mean nothing to a login
    if column in AUTH_FAILS:
        return AUTH_FAILS[column]
    return route.users[column]


async def run_route_cell(gw: Gateway, route: Route, column: str, shared: Cell) -> str | None:
    """One cell; None when it gave exactly what is expected, else what it gave."""
    cell = await fresh_cell(gw, route.state) if route.mutates else shared
    headers = await caller_headers(gw, column)
    if route.auth == "open":
        headers.pop("Accept")
    json_body: Any = None
    if route.body == "job":
        json_body = {"name": "matrix job", "description": "made by the matrix"}
    elif route.body == "login":
        user = USERS.get(column, "alice")
        json_body = {"login": user, "password": gw.world.passwords[user]}
    files = [("delivered.png", b"delivered")] if route.body == "clipped" else None
    r = await send(gw, route.method, route.path.format(A=cell.job["id"]), headers, json_body=json_body, files=files)
    status, code = expected(route, column)
    try:
        if status >= 400:
            assert_error(r, status, code)
        else:
            assert r.status == status, r
            if route.check is not None:
                route.check(cell, column, r)
    except AssertionError as e:
        return f"{route.id} x {column}: expected {status} {code or ''}, got {r!r} ({e})"
    return None


@pytest.mark.parametrize("route", [pytest.param(r, id=r.id) for r in ROUTES])
async def test_route_matrix(gw: Gateway, route: Route) -> None:
    shared = await fresh_cell(gw, route.state)
    problems = [p for column in COLUMNS if (p := await run_route_cell(gw, route, column, shared))]
    assert not problems, "\n".join(problems)


def test_the_matrix_covers_every_route_of_the_router(gw: Gateway) -> None:
    """A route added later without a row here fails this test (storage URLs are rows of their own below)."""
    covered = {(r.method, re.sub(r"\{A\}", "{id}", r.path)) for r in ROUTES}
    covered |= {("POST", "/upload/UploadFile.ashx"), ("OPTIONS", "/upload/UploadFile.ashx"),
                ("GET", "/ajax/DownloadZip.ashx"), ("GET", "/ajax/DownloadBin.ashx")}
    routes = set()
    for route in gw.app.router.routes():
        if route.method in ("HEAD", "*") or route.resource is None:
            continue
        routes.add((route.method, re.sub(r"\{(\w+):[^}]*\}", r"{\1}", route.resource.canonical)))
    assert routes - covered == set(), "routes without a row in the authorization matrix"


# ----------------------------------------------------------------------------- capability URLs


async def test_post_url_matrix(gw: Gateway) -> None:
    """The postUrl is the capability: whatever headers come with it, it uploads; without its key, 404."""
    problems = []
    for column in COLUMNS:
        cell = await fresh_cell(gw)
        headers = await caller_headers(gw, column)
        headers.pop("Accept")
        body, ctype = multipart([(f"by-{column}.jpg", b"posted")])
        url = cell.job["upload"]["postUrl"]
        async with gw.client.post(target_of(url), data=body, headers={**headers, "Content-Type": ctype}) as resp:
            r = Reply(resp.status, resp.headers, await resp.read())
        if r.status != 201 or [f["fileName"] for f in r.json()["files"]] != [f"by-{column}.jpg"]:
            problems.append(f"postUrl x {column}: {r!r}")
    assert not problems, "\n".join(problems)


async def test_post_url_without_the_right_key_is_404_and_stores_nothing(gw: Gateway) -> None:
    a, b = await fresh_cell(gw), await fresh_cell(gw)
    key_a = query_param(a.job["upload"]["postUrl"], "accountID")
    key_b = query_param(b.job["upload"]["postUrl"], "accountID")
    before = gw.query("select count(*) as n from files")[0]["n"]
    for query in (f"jobID={a.job['id']}", f"jobID={a.job['id']}&accountID=", f"jobID={a.job['id']}&accountID={key_b}",
                  f"jobID={a.job['id']}&accountID={key_a[:-1]}", f"jobID={b.job['id']}&accountID={key_a}",
                  f"jobID={a.job['id']}&accountID={key_a.upper()}", f"accountID={key_a}"):
        r = await post_files(gw, f"/upload/UploadFile.ashx?{query}", [("x.jpg", b"x")])
        assert_error(r, 404, "upload_link_not_found")
    assert gw.query("select count(*) as n from files")[0]["n"] == before


async def test_upload_preflight_answers_only_allowed_origins(gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory({"http.cors_origins": ["https://app.example"]})
    cell = await fresh_cell(gw)
    target = target_of(cell.job["upload"]["postUrl"])
    for column in COLUMNS:
        headers = await caller_headers(gw, column)
        for origin, status in (("https://app.example", 204), ("https://evil.example", 403), (None, 403)):
            h = {**headers, "Access-Control-Request-Method": "POST", **({"Origin": origin} if origin else {})}
            async with gw.client.options(target, headers=h) as resp:
                assert resp.status == status, (column, origin, resp.status)
                allowed = resp.headers.get("Access-Control-Allow-Origin")
                assert allowed == (origin if status == 204 else None), (column, origin, allowed)


async def link_token(gw: Gateway, column: str, cell: Cell, which: str) -> str | None:
    """The download token of a column: taken from the getUrl or the file link the API gave that session."""
    if column == "none":
        return None
    if column == "unknown-session":
        return f"1-{accounts.new_token()}"
    if column == "other-account":  # the API never gives bob a link to acme's job: derive one as an attacker can't
        s = await gw.session("bob")

        def principal(db: Any) -> accounts.Principal:
            return accounts.authenticate(db, gw.world.clients["web"], s)
        return accounts.download_token(gw.secret, cell.job["id"], gw.read(principal))
    client = "web"
    if column == "unknown-client":
        client = f"kiosk-{accounts.new_token()[:8]}"
        gw.world.clients[client] = (await gw.write(accounts.create_client, client))["token"]
    elif column == "other-client":
        client = "mobile"
    s = await gw.session(USERS.get(column, "alice"), client=client)
    if which == "zip":
        r = await gw.call("GET", f"/jobs/{cell.job['id']}", session=s, client=client)
        token = query_param(r.json()["download"]["getUrl"], "sessionID")
    else:
        r = await gw.call("GET", f"/jobs/{cell.job['id']}/files?kind=original", session=s, client=client)
        token = query_param(r.json()["files"][0]["downloadUrl"], "sessionid")
    if column == "unknown-client":
        await gw.write(accounts.revoke_client, client)
    elif column == "expired":
        await expire_session(gw, s)
    elif column == "logged-out":
        await logout(gw, s)
    return token


LINK_EXPECT: dict[str, tuple[int, str | None]] = {
    "none": (404, "download_not_found"), "unknown-client": (401, "unauthorized"),
    "unknown-session": (401, "unauthorized"), "expired": (401, "unauthorized"), "logged-out": (401, "unauthorized"),
    "other-client": ok(), "other-account": (404, "download_not_found"), "processor": ok(), "colleague": ok(),
    "owner": ok()}


def zip_names(body: bytes) -> list[str]:
    with zipfile.ZipFile(io.BytesIO(body)) as z:
        assert z.testzip() is None
        return z.namelist()


@pytest.mark.parametrize("which", ["zip", "file"])
async def test_download_link_matrix(gw: Gateway, which: str) -> None:
    problems = []
    cell = await fresh_cell(gw)
    for column in COLUMNS:
        token = await link_token(gw, column, cell, which)
        if which == "zip":
            url = f"/ajax/DownloadZip.ashx?centraljobid={cell.job['id']}"
            tparam = "sessionID"
        else:
            url = f"/ajax/DownloadBin.ashx?fileID={cell.original['id']}"
            tparam = "sessionid"
        if token is not None:
            url += f"&{tparam}={token}"
        r = await gw.call("GET", url, client=None, accept=None)
        status, code = LINK_EXPECT[column]
        try:
            if status >= 400:
                assert_error(r, status, code)
            else:
                assert r.status == 200, r
                if which == "zip":
                    assert zip_names(r.body) == ["photo.png"]
                else:
                    assert r.body == ORIGINAL_BYTES
        except (AssertionError, zipfile.BadZipFile) as e:
            problems.append(f"{which} x {column}: expected {status} {code or ''}, got {r!r} ({e})")
    assert not problems, "\n".join(problems)


async def test_download_links_ignore_token_headers(gw: Gateway) -> None:
    """A link is its own credential: a bad header neither helps a bad link nor hurts a good one."""
    cell = await fresh_cell(gw)
    alice = await gw.session("alice")
    get_url = (await gw.call("GET", f"/jobs/{cell.job['id']}", session=alice)).json()["download"]["getUrl"]
    for headers in ({"X-Client-Token": "nonsense", "X-Session-Token": "nonsense"}, gw.headers(alice)):
        async with gw.client.get(target_of(get_url), headers=headers) as resp:
            assert resp.status == 200
            await resp.read()
        async with gw.client.get(f"/ajax/DownloadZip.ashx?centraljobid={cell.job['id']}", headers=headers) as resp:
            assert resp.status == 404


# ----------------------------------------------------------------------------- download tokens


async def links_of(gw: Gateway, session: str, cell: Cell) -> tuple[str, str]:
    get_url = (await gw.call("GET", f"/jobs/{cell.job['id']}", session=session)).json()["download"]["getUrl"]
    files = (await gw.call("GET", f"/jobs/{cell.job['id']}/files?kind=original", session=session)).json()["files"]
    return target_of(get_url), target_of(files[0]["downloadUrl"])


async def test_download_tokens_stop_working_at_logout(gw: Gateway) -> None:
    cell = await fresh_cell(gw)
    s = await gw.login("alice")
    zip_link, file_link = await links_of(gw, s, cell)
    for link in (zip_link, file_link):
        assert (await gw.call("GET", link, client=None, accept=None)).status == 200
    await logout(gw, s)
    for link in (zip_link, file_link):
        assert_error(await gw.call("GET", link, client=None, accept=None), 401, "unauthorized")


async def test_download_tokens_are_not_sessions(gw: Gateway) -> None:
    """Neither as X-Session-Token nor as X-Client-Token does a download token open the API."""
    cell = await fresh_cell(gw)
    s = await gw.session("alice")
    zip_link, file_link = await links_of(gw, s, cell)
    for token in (query_param(zip_link, "sessionID"), query_param(file_link, "sessionid"),
                  query_param(cell.job["upload"]["postUrl"], "accountID")):
        for path in ("/jobs", f"/jobs/{cell.job['id']}", f"/jobs/{cell.job['id']}/files"):
            assert_error(await gw.call("GET", path, session=token), 401, "unauthorized")
            assert_error(await gw.call("GET", path, session=s, client=token), 401, "unauthorized")
        assert_error(await gw.call("DELETE", "/sessions", session=token), 401, "unauthorized")
    assert (await gw.call("GET", "/jobs", session=s)).status == 200  # the session itself is untouched


async def test_a_download_token_of_job_a_does_not_open_job_b(gw: Gateway) -> None:
    """Both jobs are alice's: the token is still bound to the job it was made for."""
    a, b = await fresh_cell(gw), await fresh_cell(gw)
    s = await gw.session("alice")
    zip_a, file_a = await links_of(gw, s, a)
    token_zip, token_file = query_param(zip_a, "sessionID"), query_param(file_a, "sessionid")
    r = await gw.call("GET", f"/ajax/DownloadZip.ashx?centraljobid={b.job['id']}&sessionID={token_zip}",
                      client=None, accept=None)
    assert_error(r, 401, "unauthorized")
    for fid in (b.original["id"], b.clipped["id"]):
        r = await gw.call("GET", f"/ajax/DownloadBin.ashx?fileID={fid}&sessionid={token_file}", client=None,
                          accept=None)
        assert_error(r, 401, "unauthorized")
    r = await gw.call("GET", f"/ajax/DownloadZip.ashx?centraljobid={b.job['id']}&sessionID={token_zip}&kind=original",
                      client=None, accept=None)
    assert_error(r, 401, "unauthorized")


async def test_a_download_token_with_another_session_id_is_refused(gw: Gateway) -> None:
    """The session id in a token is covered by its MAC: pointing it at another live session fails."""
    cell = await fresh_cell(gw)
    s1, s2 = await gw.session("alice"), await gw.session("alice")
    zip1, _ = await links_of(gw, s1, cell)
    zip2, _ = await links_of(gw, s2, cell)
    sid1, mac1 = query_param(zip1, "sessionID").split("-", 1)
    sid2, _ = query_param(zip2, "sessionID").split("-", 1)
    assert sid1 != sid2
    forged = f"/ajax/DownloadZip.ashx?centraljobid={cell.job['id']}&sessionID={sid2}-{mac1}"
    assert_error(await gw.call("GET", forged, client=None, accept=None), 401, "unauthorized")


async def test_download_tokens_die_when_the_user_is_disabled(gw: Gateway) -> None:
    cell = await fresh_cell(gw)
    s = await gw.session("carol")
    zip_link, file_link = await links_of(gw, s, cell)
    await gw.write(accounts.set_disabled, "carol", True)
    for link in (zip_link, file_link):
        assert_error(await gw.call("GET", link, client=None, accept=None), 401, "unauthorized")


# ----------------------------------------------------------------------------- FTP


FTP_LOGINS = ("account", "colleague", "this-job", "other-job", "other-account", "processor")
CUSTOMER_OK = {"account", "colleague", "this-job"}
READERS = CUSTOMER_OK | {"processor"}


def ftp_expect(ok_logins: set[str], ok_code: int) -> dict[str, int]:
    return {login: ok_code if login in ok_logins else 550 for login in FTP_LOGINS}


@dataclass
class FtpCell:
    gw: Gateway
    job_a: dict[str, Any]
    job_b: dict[str, Any]
    pat: str

    def orig(self, name: str = "") -> str:
        return f"{job_vdir(self.job_a, 'ORIGINAL')}/{name}".rstrip("/")

    def clip(self, name: str = "") -> str:
        return f"{job_vdir(self.job_a, 'CLIPPED')}/{name}".rstrip("/")

    def credentials(self, login: str) -> tuple[str, str]:
        if login in ("this-job", "other-job"):
            job = self.job_a if login == "this-job" else self.job_b
            return job["upload"]["ftpUsername"], job["upload"]["ftpPassword"]
        user = {"account": "alice", "colleague": "carol", "other-account": "bob", "processor": "pat"}[login]
        return user, self.gw.world.passwords[user]

    def recorded(self, kind: str, path: str) -> bool:
        return bool(self.gw.query("select 1 from files where job_id = ? and kind = ? and path = ?",
                                  [self.job_a["id"], kind, path]))

    def on_disk(self, kind: str, path: str) -> bool:
        return (self.gw.job_dir(self.job_a, kind) / path).exists()

    def content(self, kind: str, path: str) -> bytes:
        return (self.gw.job_dir(self.job_a, kind) / path).read_bytes()


async def ftp_world(gw: Gateway, victims: str = "") -> FtpCell:
    """Jobs A and B of alice; A holds photo.jpg and photo.png, and one victim per login in the
    folder a destructive class works on ("ORIGINAL" or "CLIPPED")."""
    alice, pat = await gw.session("alice"), await gw.session("pat")
    job_a, job_b = await gw.create_job(alice), await gw.create_job(alice)
    cell = FtpCell(gw, job_a, job_b, pat)
    await upload_original(gw, job_a, "photo.jpg", ORIGINAL_BYTES)
    await upload_clipped(gw, pat, job_a, "photo.png", CLIPPED_BYTES)
    for login in FTP_LOGINS:
        if victims == "ORIGINAL":
            await upload_original(gw, job_a, f"victim-{login}.jpg", b"victim")
        elif victims == "CLIPPED":
            await upload_clipped(gw, pat, job_a, f"victim-{login}.png", b"victim")
    return cell


@dataclass(frozen=True)
class FtpClass:
    id: str
    expect: dict[str, int]
    run: Callable[[FtpCell, Ftp, str], str]  # -> the decisive reply
    effect: Callable[[FtpCell, str], bool]  # did it take effect?


def ftp_list(c: FtpCell, ftp: Ftp, login: str) -> str:
    reply, lines = ftp.lines("LIST", c.orig())
    if reply_code(reply) == 226:
        assert any("photo.jpg" in line for line in lines), lines
    return reply


def ftp_see(c: FtpCell, ftp: Ftp, login: str) -> str:
    """The job is listed in its day folder (a login that may not see it finds the day without it)."""
    day = job_vdir(c.job_a).rsplit("/", 1)[0]
    reply, names = ftp.lines("NLST", day)
    if reply_code(reply) == 226 and not any(n.rstrip("/").endswith(str(c.job_a["id"])) for n in names):
        return f"550 (listed without the job: {names})"
    return reply


def ftp_read(c: FtpCell, ftp: Ftp, login: str) -> str:
    r1, d1 = ftp.retr(c.orig("photo.jpg"))
    r2, d2 = ftp.retr(c.clip("photo.png"))
    if reply_code(r1) == 226:
        assert d1 == ORIGINAL_BYTES and reply_code(r2) == 226 and d2 == CLIPPED_BYTES, (r1, r2)
    else:
        assert reply_code(r2) == reply_code(r1) and not d1 and not d2, (r1, r2)
    return r1


def ftp_meta(c: FtpCell, ftp: Ftp, login: str) -> str:
    """SIZE, MLST and HASH answer together: all or none."""
    replies = [ftp.cmd(f"{cmd} {c.orig('photo.jpg')}") for cmd in ("SIZE", "MLST", "HASH")]
    ok = [reply_code(r) in (213, 250) for r in replies]
    assert all(ok) or not any(ok), replies
    return replies[0]


FTP_CLASSES = [
    FtpClass("list", ftp_expect(READERS, 226), ftp_list, lambda c, login: False),
    FtpClass("see-the-job", ftp_expect(READERS, 226), ftp_see, lambda c, login: False),
    FtpClass("read", ftp_expect(READERS, 226), ftp_read, lambda c, login: False),
    FtpClass("metadata", ftp_expect(READERS, 213), ftp_meta, lambda c, login: False),
    FtpClass("write-original", ftp_expect(CUSTOMER_OK, 226),
             lambda c, ftp, login: ftp.stor(c.orig(f"new-{login}.jpg"), b"new original"),
             lambda c, login: c.recorded("ORIGINAL", f"new-{login}.jpg") or c.on_disk("ORIGINAL", f"new-{login}.jpg")),
    FtpClass("write-clipped", ftp_expect({"processor"}, 226),
             lambda c, ftp, login: ftp.stor(c.clip(f"new-{login}.png"), b"new clipped"),
             lambda c, login: c.recorded("CLIPPED", f"new-{login}.png") or c.on_disk("CLIPPED", f"new-{login}.png")),
    FtpClass("overwrite-original", ftp_expect(CUSTOMER_OK, 226),
             lambda c, ftp, login: ftp.stor(c.orig(f"victim-{login}.jpg"), b"overwritten"),
             lambda c, login: c.content("ORIGINAL", f"victim-{login}.jpg") == b"overwritten"),
    FtpClass("append-original", ftp_expect(CUSTOMER_OK, 226),
             lambda c, ftp, login: ftp.stor(c.orig(f"victim-{login}.jpg"), b"+tail", cmd="APPE"),
             lambda c, login: c.content("ORIGINAL", f"victim-{login}.jpg") == b"victim+tail"),
    FtpClass("delete-original", ftp_expect(CUSTOMER_OK, 250),
             lambda c, ftp, login: ftp.cmd(f"DELE {c.orig(f'victim-{login}.jpg')}"),
             lambda c, login: not c.recorded("ORIGINAL", f"victim-{login}.jpg")
             and not c.on_disk("ORIGINAL", f"victim-{login}.jpg")),
    FtpClass("delete-clipped", ftp_expect({"processor"}, 250),
             lambda c, ftp, login: ftp.cmd(f"DELE {c.clip(f'victim-{login}.png')}"),
             lambda c, login: not c.recorded("CLIPPED", f"victim-{login}.png")
             and not c.on_disk("CLIPPED", f"victim-{login}.png")),
    FtpClass("rename-original", ftp_expect(CUSTOMER_OK, 250),
             lambda c, ftp, login: (lambda r: r[1] or r[0])(
                 ftp.rename(c.orig(f"victim-{login}.jpg"), c.orig(f"renamed-{login}.jpg"))),
             lambda c, login: c.recorded("ORIGINAL", f"renamed-{login}.jpg")
             and not c.recorded("ORIGINAL", f"victim-{login}.jpg")),
    FtpClass("rename-clipped", ftp_expect({"processor"}, 250),
             lambda c, ftp, login: (lambda r: r[1] or r[0])(
                 ftp.rename(c.clip(f"victim-{login}.png"), c.clip(f"renamed-{login}.png"))),
             lambda c, login: c.recorded("CLIPPED", f"renamed-{login}.png")
             and not c.recorded("CLIPPED", f"victim-{login}.png")),
    FtpClass("mkdir-original", ftp_expect(CUSTOMER_OK, 257),
             lambda c, ftp, login: ftp.cmd(f"MKD {c.orig(f'dir-{login}')}"),
             lambda c, login: c.on_disk("ORIGINAL", f"dir-{login}")),
    FtpClass("mkdir-clipped", ftp_expect({"processor"}, 257),
             lambda c, ftp, login: ftp.cmd(f"MKD {c.clip(f'dir-{login}')}"),
             lambda c, login: c.on_disk("CLIPPED", f"dir-{login}")),
]


@pytest.mark.parametrize("cls", [pytest.param(c, id=c.id) for c in FTP_CLASSES])
async def test_ftp_matrix(ftp_gw: Gateway, cls: FtpClass) -> None:
    victims = "ORIGINAL" if cls.id.endswith("original") else "CLIPPED" if cls.id.endswith("clipped") else ""
    c = await ftp_world(ftp_gw, "" if cls.id.startswith(("write", "mkdir")) else victims)
    problems = []
    for login in FTP_LOGINS:
        with Ftp(ftp_gw.ftp_port, *c.credentials(login)) as ftp:
            reply = cls.run(c, ftp, login)
            took_effect = cls.effect(c, login)
            alive = reply_code(ftp.cmd("NOOP")) == 200
        want = cls.expect[login]
        changes = cls.id.startswith(("write", "overwrite", "append", "delete", "rename", "mkdir"))
        if reply_code(reply) != want or (changes and took_effect != (want < 400)) or not alive:
            problems.append(f"{cls.id} x {login}: {reply!r} (expected {want}); took effect: {took_effect}; "
                            f"session alive: {alive}")
    assert not problems, "\n".join(problems)


async def test_ftp_writes_follow_the_job_status(ftp_gw: Gateway) -> None:
    """Submitted: originals frozen for every customer login; clipped still open to processors.
    Finished: everything frozen (550 with the reason)."""
    c = await ftp_world(ftp_gw)
    alice = await ftp_gw.session("alice")
    assert (await ftp_gw.call("POST", f"/jobs/{c.job_a['id']}/submit", session=alice)).status == 200
    for login in ("account", "this-job", "processor"):
        with Ftp(ftp_gw.ftp_port, *c.credentials(login)) as ftp:
            reply = ftp.stor(c.orig(f"late-{login}.jpg"), b"late")
            assert reply_code(reply) == 550, (login, reply)
    with Ftp(ftp_gw.ftp_port, *c.credentials("processor")) as ftp:
        assert reply_code(ftp.stor(c.clip("late.png"), b"late")) == 226
    assert (await ftp_gw.call("POST", f"/jobs/{c.job_a['id']}/finish", session=c.pat)).status == 200
    with Ftp(ftp_gw.ftp_port, *c.credentials("processor")) as ftp:
        reply = ftp.stor(c.clip("too-late.png"), b"late")
        assert reply_code(reply) == 550 and "CJ_FINISHED" in reply, reply
        assert reply_code(ftp.cmd(f"DELE {c.clip('late.png')}")) == 550
    with Ftp(ftp_gw.ftp_port, *c.credentials("this-job")) as ftp:
        reply, data = ftp.retr(c.clip("late.png"))
        assert reply_code(reply) == 226 and data == b"late"


async def test_ftp_logins_with_wrong_or_crossed_passwords_fail(ftp_gw: Gateway) -> None:
    """A job user with another job's password, with the account's password, or a login that is a job
    user of a missing job: 530."""
    c = await ftp_world(ftp_gw)
    user_a, pw_a = c.credentials("this-job")
    pw_b = c.credentials("other-job")[1]
    attempts = [(user_a, pw_b), (user_a, ftp_gw.world.passwords["alice"]), ("job-999999", pw_a), ("alice", pw_a)]

    def attempt(user: str, pw: str) -> str:
        with Ftp(ftp_gw.ftp_port) as ftp:
            return ftp.login(user, pw)
    with ThreadPoolExecutor(len(attempts)) as pool:  # each failure is answered after a deliberate second
        replies = list(pool.map(lambda a: attempt(*a), attempts))
    assert [reply_code(r) for r in replies] == [530] * len(attempts), replies


async def test_a_disabled_user_cannot_log_in_over_ftp(ftp_gw: Gateway) -> None:
    await ftp_gw.write(accounts.set_disabled, "carol", True)
    with Ftp(ftp_gw.ftp_port) as ftp:
        assert reply_code(ftp.login("carol", ftp_gw.world.passwords["carol"])) == 530


async def test_disabling_a_user_with_the_cli_process_ends_its_ftp_session_at_the_next_command(
        ftp_gw: Gateway) -> None:
    c = await ftp_world(ftp_gw)
    with Ftp(ftp_gw.ftp_port, *c.credentials("colleague")) as ftp:
        assert reply_code(ftp.stor(c.orig("before.jpg"), b"before")) == 226
        assert reply_code(ftp.lines("NLST", c.orig())[0]) == 226  # the login was checked just now
        cli(ftp_gw.config_path, "user", "disable", "--login", "carol")
        try:
            reply = ftp.lines("NLST", c.orig())[0]
        except (OSError, EOFError) as e:
            reply = f"421 connection closed ({type(e).__name__})"
    assert reply_code(reply) == 421, reply


async def test_disabling_a_user_ends_its_open_ftp_session(ftp_gw: Gateway) -> None:
    c = await ftp_world(ftp_gw)
    with Ftp(ftp_gw.ftp_port, *c.credentials("colleague")) as ftp:
        assert reply_code(ftp.stor(c.orig("before.jpg"), b"before")) == 226
        await ftp_gw.write(accounts.set_disabled, "carol", True)
        reply = ftp.stor(c.orig("after.jpg"), b"after")
        try:  # 421 closes the session: what follows gets 421 again or finds the connection gone
            listing = ftp.lines("NLST", c.orig())[0]
        except (OSError, EOFError) as e:
            listing = f"421 connection closed ({type(e).__name__})"
    assert reply_code(reply) in (421, 530, 550), reply
    assert reply_code(listing) in (421, 530, 550), listing
    assert not c.recorded("ORIGINAL", "after.jpg") and not c.on_disk("ORIGINAL", "after.jpg")
