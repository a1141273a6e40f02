"""Traversal corpus: hostile names and paths over FTP and HTTP never reach outside a login's scope.

Every test runs against a real gateway (HTTP + FTP thread) whose tmp tree holds storage_root, the
database folder and a sibling `outside/` folder with a secret file. Each vector is tried over FTP
(CWD, STOR, APPE, RETR, RNTO, MKD, MLST, NLST, SIZE, DELE, HASH from the job's ORIGINAL folder)
and as a multipart filename over HTTP (the postUrl and POST /jobs/{id}/clipped). It must be
refused with the documented answer (FTP 553 for a name that cannot be stored, 550 for a path that
resolves to nothing the login may touch; HTTP 400 invalid_parameter or 404), and afterwards:

* the tmp tree (storage_root and everything beside it but the SQLite files, which live where they
  do by default: storage_root/.gateway/) is byte-for-byte what it was, and no file record changed;
* nothing in `outside/` was created, written, listed or read (mtimes and relatime atimes);
* the secret's bytes (and /etc/passwd's) appear in no reply.

Vectors that only move inside the login's own tree (`..` from ORIGINAL is the job folder, `../..`
the day) may CWD/MLST/NLST there, like any chrooted server; they never reach further.
"""

from __future__ import annotations

import os
import posixpath
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from conftest import Gateway, GatewayFactory, assert_error
from helpers_authz import (
    Ftp,
    Untouchable,
    job_day,
    job_vdir,
    multipart,
    post_files,
    query_param,
    raw_http,
    reply_code,
    snapshot,
    snapshot_diff,
    target_of,
    upload_clipped,
    upload_original,
)

VICTIM = b"victim original bytes " * 64
PASSWD_MARK = b"root:x:0:0"
SKIPPED = ("outside", "storage_root/.gateway")  # outside/ is checked on its own; the database changes


# ----------------------------------------------------------------------------- the arena


@dataclass
class Arena:
    """A gateway with jobs A (alice, acme) and B (bob, globex), a secret outside storage_root."""

    gw: Gateway
    tmp: Path
    outside: Untouchable
    job_a: dict[str, Any]
    job_b: dict[str, Any]
    alice: str
    pat: str
    victim_id: int
    marker: str = field(default_factory=lambda: f"gw-traversal-{secrets.token_hex(6)}")
    tree_before: dict[str, Any] = field(default_factory=dict)
    files_before: list[dict[str, Any]] = field(default_factory=list)
    replies: list[str | bytes] = field(default_factory=list)

    @property
    def day(self) -> str:
        return job_day(self.job_a)

    def fmt(self, template: str) -> str:
        return template.format(outside=self.outside.folder, root=self.gw.storage_root, day=self.day,
                               A=self.job_a["id"], B=self.job_b["id"], marker=self.marker, db=self.gw.db_path)

    def scope(self) -> set[str]:
        """Virtual folders alice may stand in: the root, the day, job A and its two kind folders."""
        a = job_vdir(self.job_a)
        return {"/", f"/{self.day}", a, f"{a}/ORIGINAL", f"{a}/CLIPPED"}

    def seen(self, reply: Any) -> Any:
        self.replies.append(reply if isinstance(reply, (str, bytes)) else repr(reply))
        return reply

    def arm(self) -> None:
        """Take the 'before' pictures, once the scenario is set up."""
        self.replies = []
        self.tree_before = snapshot(self.tmp, skip=SKIPPED)
        self.files_before = self.gw.query("select * from files order by id")
        self.outside.arm()

    def problems_after(self) -> list[str]:
        out = snapshot_diff(self.tree_before, snapshot(self.tmp, skip=SKIPPED))
        out += self.outside.problems()
        files_after = self.gw.query("select * from files order by id")
        if files_after != self.files_before:
            out.append(f"file records changed: {self.files_before} -> {files_after}")
        for reply in self.replies:
            raw = reply.encode("utf-8", "replace") if isinstance(reply, str) else reply
            if self.outside.secret in raw or PASSWD_MARK in raw:
                out.append(f"a reply carried the secret or /etc/passwd: {raw[:200]!r}")
        for p in (Path("/tmp") / f"{self.marker}.jpg", Path("/etc") / self.marker):
            if p.exists():
                p.unlink()
                out.append(f"created outside: {p}")
        return out


@pytest.fixture
async def arena(gateway_factory: GatewayFactory, tmp_path: Path) -> Arena:
    gw = await gateway_factory({"database.path": None}, ftp=True)  # the default: storage_root/.gateway/
    assert gw.db_path.parent == gw.storage_root / ".gateway"
    outside = Untouchable(tmp_path / "outside", b"TOP-SECRET-" + secrets.token_hex(16).encode())
    alice, bob, pat = await gw.session("alice"), await gw.session("bob"), await gw.session("pat")
    job_a, job_b = await gw.create_job(alice), await gw.create_job(bob)
    victim = await upload_original(gw, job_a, "victim.jpg", VICTIM)
    await upload_original(gw, job_b, "bobfile.jpg", b"bob's original")
    await upload_clipped(gw, pat, job_a, "clipped.png", b"clipped bytes")
    return Arena(gw, tmp_path, outside, job_a, job_b, alice, pat, int(victim["id"]))


# ----------------------------------------------------------------------------- the corpus


@dataclass(frozen=True)
class Vector:
    id: str
    group: str
    arg: str  # a template: {outside} {root} {day} {A} {B} {marker} {db}
    kind: str  # name: the last segment cannot be stored (553); path: leads outside the scope (550/553)


LOOKALIKE_BUG = ("BUG: slash look-alikes (U+2215 DIVISION SLASH, U+2044 FRACTION SLASH) are accepted in names; "
                 "Windows best-fit code pages turn them into '/' ('WorstFit')")

NAMES = [
    Vector("dot", "dots", ".", "name"),
    Vector("dotdot", "dots", "..", "name"),
    Vector("dotdot-slash", "dots", "../", "name"),
    Vector("pct-dotdot", "percent", "%2e%2e", "name"),
    Vector("pct-dotdot-upper", "percent", "%2E%2E", "name"),
    Vector("dot-pct-dot", "percent", ".%2e", "name"),
    Vector("pct-dotdot-pct-slash", "percent", "%2e%2e%2f", "name"),
    Vector("dotdot-pct-slash", "percent", "..%2f..%2fsecret.txt", "name"),
    Vector("pct-traversal", "percent", "%2e%2e%2f%2e%2e%2f%2e%2e%2f%2e%2e%2foutside%2fsecret.txt", "name"),
    Vector("pct-backslash", "backslash", "..%5c..%5csecret.txt", "name"),
    Vector("backslash", "backslash", "\\", "name"),
    Vector("backslash-traversal", "backslash", "..\\..\\..\\..\\outside\\secret.txt", "name"),
    Vector("backslash-in-name", "backslash", "sub\\photo.jpg", "name"),
    Vector("windows-drive", "backslash", "C:\\Windows\\win.ini", "name"),
    Vector("unc", "backslash", "\\\\server\\share\\photo.jpg", "name"),
    Vector("nul", "control", "photo\x00.jpg", "name"),
    Vector("nul-dotdot", "control", "..\x00.jpg", "name"),
    Vector("control", "control", "pho\x01to.jpg", "name"),
    Vector("tab", "control", "pho\tto.jpg", "name"),
    Vector("del", "control", "pho\x7fto.jpg", "name"),
    Vector("c1-nel", "control", "pho\x85to.jpg", "name"),
    Vector("long-name", "long", "a" * 252 + ".jpg", "name"),
    Vector("long-utf8-name", "long", "\u00e9" * 126 + ".jpg", "name"),
    Vector("one-dot-leader", "unicode", "\u2024\u2024", "name"),
    Vector("two-dot-leader", "unicode", "\u2025", "name"),
    Vector("fullwidth-dots", "unicode", "\uff0e\uff0e", "name"),
    Vector("fullwidth-solidus", "unicode", "..\uff0f..\uff0fsecret.txt", "name"),
    Vector("fullwidth-reverse-solidus", "unicode", "..\uff3c..\uff3csecret.txt", "name"),
    Vector("division-slash", "slash-lookalikes", "..\u2215..\u2215outside\u2215secret.txt", "name"),
    Vector("fraction-slash", "slash-lookalikes", "..\u2044..\u2044secret.txt", "name"),
    Vector("con", "reserved", "CON", "name"),
    Vector("con-ext", "reserved", "con.txt", "name"),
    Vector("nul-device", "reserved", "NUL.jpg", "name"),
    Vector("com1", "reserved", "COM1.jpg", "name"),
    Vector("lpt1", "reserved", "LPT1.tar.gz", "name"),
    Vector("aux-space", "reserved", "AUX .jpg", "name"),
    Vector("conin", "reserved", "CONIN$", "name"),
    Vector("com-superscript", "unicode", "COM\u00b9.jpg", "name"),
    Vector("trailing-dot", "trailing", "photo.jpg.", "name"),
    Vector("trailing-space", "trailing", "photo.jpg ", "name"),
    Vector("trailing-dots", "trailing", "photo...", "name"),
    Vector("trailing-dot-space", "trailing", "photo. .", "name"),
    Vector("temp-name", "temp", ".gwtmp-0123456789abcdef01234567", "name"),
    Vector("temp-like", "temp", ".gwtmp-photo.jpg", "name"),
    Vector("temp-pct", "percent", "%2egwtmp-0123456789abcdef01234567", "name"),
    Vector("temp-fullwidth", "unicode", "\uff0egwtmp-0123456789abcdef01234567", "name"),
]

PATHS = [
    Vector("dotdot-2", "dots", "../..", "path"),
    Vector("dotdot-3", "dots", "../../..", "path"),
    Vector("dotdot-to-outside", "dots", "../../../../outside/secret.txt", "path"),
    Vector("dotdot-deep-etc", "dots", "../../../../../../../../../etc/passwd", "path"),
    Vector("dotdot-deep-tmp", "dots", "../../../../../../../../../tmp/{marker}.jpg", "path"),
    Vector("dot-dotdot", "dots", "./../../../..", "path"),
    Vector("double-slash-dotdot", "dots", "..//..//..//..//outside", "path"),
    Vector("absolute-etc", "absolute", "/etc/passwd", "path"),
    Vector("absolute-etc-new", "absolute", "/etc/{marker}", "path"),
    Vector("absolute-tmp", "absolute", "/tmp/{marker}.jpg", "path"),
    Vector("absolute-outside", "absolute", "{outside}/secret.txt", "path"),
    Vector("absolute-real-path", "absolute", "{root}/{day}/{A}/ORIGINAL/victim.jpg", "path"),
    Vector("double-slash-absolute", "absolute", "//etc/passwd", "path"),
    Vector("database", "scope", "../../../.gateway/gateway.db", "path"),
    Vector("database-virtual-absolute", "scope", "/.gateway/gateway.db", "path"),
    Vector("database-real-absolute", "scope", "{db}", "path"),
    Vector("other-account-job", "scope", "../../{B}/ORIGINAL/bobfile.jpg", "path"),
    Vector("other-account-job-absolute", "scope", "/{day}/{B}/ORIGINAL/bobfile.jpg", "path"),
    Vector("one-dot-leader-path", "unicode", "\u2024\u2024/" * 4 + "outside/secret.txt", "path"),
    Vector("fullwidth-dots-path", "unicode", "\uff0e\uff0e/" * 4 + "outside/secret.txt", "path"),
    Vector("deep-path", "long", "d/" * 20 + "x.jpg", "path"),
    Vector("long-path", "long", "x/" * 900 + "y.jpg", "path"),
    Vector("tilde", "absolute", "~/secret.txt", "path"),
]
CORPUS = NAMES + PATHS


GROUPS = list(dict.fromkeys(v.group for v in CORPUS))
GROUP_BUGS: dict[str, str] = {}


def test_the_corpus_is_big_enough() -> None:
    assert len(CORPUS) >= 40
    assert len({v.id for v in CORPUS}) == len(CORPUS)
    assert {v.kind for v in CORPUS} == {"name", "path"}


# ----------------------------------------------------------------------------- FTP


def ftp_problems(a: Arena, ftp: Ftp, v: Vector, rename_from: str = "victim.jpg") -> list[str]:
    """Every FTP command class with the vector, from the job's ORIGINAL folder; what went wrong."""
    cwd = job_vdir(a.job_a, "ORIGINAL")
    arg = a.fmt(v.arg)
    norm = None if "\x00" in arg else "/" + posixpath.normpath(posixpath.join(cwd, arg)).lstrip("/")
    in_scope = norm in a.scope()
    naming = {553} if v.kind == "name" else {550, 553}
    problems: list[str] = []

    def expect(what: str, reply: str, allowed: set[int]) -> None:
        a.seen(reply)
        if reply_code(reply) not in allowed:
            problems.append(f"{what} {arg!r}: {reply!r} (expected {sorted(allowed)})")

    def reset() -> None:
        assert reply_code(ftp.cmd(f"CWD {cwd}")) == 250

    reset()
    reply = a.seen(ftp.cmd(f"CWD {arg}"))
    if reply_code(reply) == 250:
        pwd = a.seen(ftp.cmd("PWD"))
        if not in_scope or f'"{norm}"' not in pwd:
            problems.append(f"CWD {arg!r} went to {pwd!r}, outside {sorted(a.scope())}")
    elif reply_code(reply) != 550:
        problems.append(f"CWD {arg!r}: {reply!r}")
    reset()
    expect("MLST", ftp.cmd(f"MLST {arg}"), {550, 250} if in_scope else {550})
    reply, lines = ftp.lines("NLST", arg)
    a.seen("\n".join(lines))
    expect("NLST", reply, {550, 226} if in_scope else {550})
    expect("SIZE", ftp.cmd(f"SIZE {arg}"), {550})
    expect("HASH", ftp.cmd(f"HASH {arg}"), {550})
    reply, data = ftp.retr(arg)
    a.seen(data)
    expect("RETR", reply, {550})
    if data:
        problems.append(f"RETR {arg!r} sent {len(data)} bytes")
    expect("DELE", ftp.cmd(f"DELE {arg}"), {550})
    expect("STOR", ftp.stor(arg), naming)
    expect("APPE", ftp.stor(arg, cmd="APPE"), naming)
    expect("MKD", ftp.cmd(f"MKD {arg}"), naming)
    first, second = ftp.rename(rename_from, arg)
    if reply_code(first) != 350:
        problems.append(f"RNFR {rename_from}: {first!r}")
    else:
        expect("RNTO", second, naming)
    reset()
    return problems


def http_problems_for_name(a: Arena, name: str, replies: list[tuple[str, Any]]) -> list[str]:
    problems = []
    for what, r in replies:
        a.seen(r.text)
        try:
            body = assert_error(r, 400, "invalid_parameter", parameterName="fileName")
        except AssertionError:
            problems.append(f"{what} filename {name!r}: {r!r} (expected 400 invalid_parameter)")
            continue
        if body.get("stored") != []:
            problems.append(f"{what} filename {name!r}: stored {body.get('stored')}")
    return problems


async def http_filename_problems(a: Arena, v: Vector) -> list[str]:
    name = a.fmt(v.arg)
    replies = [("postUrl", await post_files(a.gw, a.job_a["upload"]["postUrl"], [(name, b"x")])),
               ("clipped", await post_files(a.gw, f"/jobs/{a.job_a['id']}/clipped", [(name, b"x")], session=a.pat))]
    if name.isprintable() and name.isascii() and '"' not in name and "\\" not in name:
        replies.append(("postUrl (plain filename=)",
                        await post_files(a.gw, a.job_a["upload"]["postUrl"], [(name, b"x")], extended=False)))
    return http_problems_for_name(a, name, replies)


@pytest.mark.parametrize("group", [pytest.param(g, marks=[pytest.mark.xfail(reason=GROUP_BUGS[g], strict=True)]
                                                 if g in GROUP_BUGS else []) for g in GROUPS])
async def test_vectors_are_refused_over_ftp_and_http(arena: Arena, group: str) -> None:
    """Each vector of the group over FTP (alice) and HTTP; the tree and outside/ checked after each."""
    problems: list[str] = []
    with Ftp(arena.gw.ftp_port, "alice", arena.gw.world.passwords["alice"]) as ftp:
        for v in (v for v in CORPUS if v.group == group):
            arena.arm()
            found = ftp_problems(arena, ftp, v)
            found += await http_filename_problems(arena, v)
            found += arena.problems_after()
            problems += [f"[{v.id}] {p}" for p in found]
    assert not problems, "\n".join(problems)


OTHER_LOGIN_VECTORS = {
    "job": ["dotdot-to-outside", "absolute-outside", "absolute-real-path", "database", "deep-path",
            "other-account-job", "other-account-job-absolute"],
    "pat": ["dotdot-to-outside", "absolute-outside", "absolute-real-path", "database", "deep-path", "dotdot-deep-tmp"],
}


@pytest.mark.parametrize("login", list(OTHER_LOGIN_VECTORS))
def test_path_vectors_are_refused_for_job_and_processor_logins(arena: Arena, login: str) -> None:
    """The per-job login sees one job, the processor every account's: the same vectors still lead nowhere.
    (A processor may not rename originals: it renames its clipped file instead.)"""
    rename_from = "../CLIPPED/clipped.png" if login == "pat" else "victim.jpg"
    problems: list[str] = []
    with Ftp(arena.gw.ftp_port, *login_args(arena, login)) as ftp:
        for v in (v for v in PATHS if v.id in OTHER_LOGIN_VECTORS[login]):
            arena.arm()
            found = ftp_problems(arena, ftp, v, rename_from) + arena.problems_after()
            problems += [f"[{v.id}] {p}" for p in found]
    assert not problems, "\n".join(problems)


# ----------------------------------------------------------------------------- HTTP: ids in paths, query parameters


@dataclass(frozen=True)
class HttpVector:
    id: str
    method: str
    target: str  # a template: {A} {B} {Ad} (A in Arabic-Indic digits) {Af} (fullwidth) {tokA} {keyA} {fileA} {fileB}
    status: int
    code: str | None
    auth: bool = True  # send alice's token headers
    bug: str | None = None


UNICODE_DIGIT_BUG = ("BUG: the routes' \\d{1,19} matches any Unicode digit and int() accepts it, "
                     "so /jobs/<non-ASCII digits> is an alias of a job")

HTTP_VECTORS = [
    HttpVector("jobs-dotdot", "GET", "/jobs/../", 404, "not_found"),
    HttpVector("jobs-dotdot-pct", "GET", "/jobs/..%2f", 404, "not_found"),
    HttpVector("jobs-pct-slash", "GET", "/jobs/{A}%2f..%2f{B}", 404, "not_found"),
    HttpVector("jobs-dotdot-other", "GET", "/jobs/{A}/../{B}", 404, None),
    HttpVector("jobs-pct-dotdot", "GET", "/jobs/%2e%2e/{B}", 404, "not_found"),
    HttpVector("jobs-semicolon", "GET", "/jobs/{A};/../{B}", 404, None),
    HttpVector("jobs-minus-one", "GET", "/jobs/-1", 404, "not_found"),
    HttpVector("jobs-exponent", "GET", "/jobs/1e3", 404, "not_found"),
    HttpVector("jobs-hex", "GET", "/jobs/0x{A}", 404, "not_found"),
    HttpVector("jobs-plus", "GET", "/jobs/+{A}", 404, "not_found"),
    HttpVector("jobs-space", "GET", "/jobs/%20{A}", 404, "not_found"),
    HttpVector("jobs-nul", "GET", "/jobs/{A}%00", 404, "not_found"),
    HttpVector("jobs-21-digits", "GET", "/jobs/999999999999999999999", 404, "not_found"),
    HttpVector("jobs-int64-overflow", "GET", "/jobs/9223372036854775808", 404, "job_not_found"),
    HttpVector("jobs-arabic-indic-digits", "GET", "/jobs/{Ad}", 404, None, bug=UNICODE_DIGIT_BUG),
    HttpVector("jobs-fullwidth-digits", "GET", "/jobs/{Af}/files", 404, None, bug=UNICODE_DIGIT_BUG),
    HttpVector("files-kind-traversal", "GET", "/jobs/{A}/files?kind=../../x", 400, "invalid_parameter"),
    HttpVector("files-kind-pct", "GET", "/jobs/{A}/files?kind=original%2f..%2f..%2f", 400, "invalid_parameter"),
    HttpVector("files-dotdot-etc", "GET", "/jobs/{A}/files/../../../etc/passwd", 404, "not_found"),
    HttpVector("root-pct-etc", "GET", "/..%2f..%2f..%2fetc%2fpasswd", 404, "not_found"),
    HttpVector("docs-dotdot-etc", "GET", "/docs/../../../etc/passwd", 404, "not_found"),
    HttpVector("double-slash-etc", "GET", "//etc/passwd", 404, "not_found"),
    HttpVector("openapi-dotdot", "GET", "/openapi.json/../../../etc/passwd", 404, "not_found"),
    HttpVector("bin-file-minus-one", "GET", "/ajax/DownloadBin.ashx?fileID=-1&sessionid={tokA}", 404,
               "download_not_found", auth=False),
    HttpVector("bin-file-exponent", "GET", "/ajax/DownloadBin.ashx?fileID=1e3&sessionid={tokA}", 404,
               "download_not_found", auth=False),
    HttpVector("bin-file-traversal", "GET", "/ajax/DownloadBin.ashx?fileID=../../etc/passwd&sessionid={tokA}",
               404, "download_not_found", auth=False),
    HttpVector("bin-file-pct-dotdot", "GET", "/ajax/DownloadBin.ashx?fileID={fileA}%2f..%2f{fileB}&sessionid={tokA}",
               404, "download_not_found", auth=False),
    HttpVector("bin-file-arabic-digit", "GET", "/ajax/DownloadBin.ashx?fileID=%D9%A1&sessionid={tokA}", 404,
               "download_not_found", auth=False),
    HttpVector("bin-file-huge", "GET", "/ajax/DownloadBin.ashx?fileID=999999999999999999999&sessionid={tokA}",
               404, "download_not_found", auth=False),
    HttpVector("bin-other-job-file", "GET", "/ajax/DownloadBin.ashx?fileID={fileB}&sessionid={tokA}", 401,
               "unauthorized", auth=False),
    HttpVector("bin-token-traversal", "GET", "/ajax/DownloadBin.ashx?fileID={fileA}&sessionid=../../etc/passwd",
               401, "unauthorized", auth=False),
    HttpVector("zip-huge-id", "GET", "/ajax/DownloadZip.ashx?centraljobid=999999999999999999999&sessionID={tokA}",
               404, "download_not_found", auth=False),
    HttpVector("zip-minus-one", "GET", "/ajax/DownloadZip.ashx?centraljobid=-1&sessionID={tokA}", 404,
               "download_not_found", auth=False),
    HttpVector("zip-dotdot-id", "GET", "/ajax/DownloadZip.ashx?centraljobid=..%2f{A}&sessionID={tokA}", 404,
               "download_not_found", auth=False),
    HttpVector("zip-kind-traversal", "GET", "/ajax/DownloadZip.ashx?centraljobid={A}&sessionID={tokA}&kind=../../x",
               400, "invalid_parameter", auth=False),
    HttpVector("zip-other-job", "GET", "/ajax/DownloadZip.ashx?centraljobid={B}&sessionID={tokA}", 401,
               "unauthorized", auth=False),
    HttpVector("upload-dotdot-job", "POST", "/upload/UploadFile.ashx?jobID=../{A}&accountID={keyA}", 404,
               "upload_link_not_found", auth=False),
    HttpVector("upload-pct-job", "POST", "/upload/UploadFile.ashx?jobID={A}%2f..%2f{B}&accountID={keyA}", 404,
               "upload_link_not_found", auth=False),
    HttpVector("upload-minus-one", "POST", "/upload/UploadFile.ashx?jobID=-1&accountID={keyA}", 404,
               "upload_link_not_found", auth=False),
    HttpVector("upload-key-of-other-job", "POST", "/upload/UploadFile.ashx?jobID={B}&accountID={keyA}", 404,
               "upload_link_not_found", auth=False),
    HttpVector("upload-path-suffix", "POST", "/upload/UploadFile.ashx/../../etc/passwd?jobID={A}&accountID={keyA}",
               404, "not_found", auth=False),
]


def arabic(n: int) -> str:
    """n in Arabic-Indic digits, percent-encoded."""
    return quote("".join(chr(0x660 + int(d)) for d in str(n)))


def fullwidth(n: int) -> str:
    """n in fullwidth digits, percent-encoded."""
    return quote("".join(chr(0xFF10 + int(d)) for d in str(n)))


async def http_vector_problems(a: Arena, vectors: list[HttpVector]) -> list[str]:
    file_b = a.gw.query("select id from files where job_id = ?", [a.job_b["id"]])[0]["id"]
    problems: list[str] = []
    for v in vectors:
        target = v.target.format(
            A=a.job_a["id"], B=a.job_b["id"], Ad=arabic(a.job_a["id"]), Af=fullwidth(a.job_a["id"]),
            tokA=query_param(a.job_a["download"]["getUrl"], "sessionID"),
            keyA=query_param(a.job_a["upload"]["postUrl"], "accountID"), fileA=a.victim_id, fileB=file_b)
        a.arm()
        headers = a.gw.headers(a.alice) if v.auth else {}
        body = b""
        if v.method == "POST":
            body, headers["Content-Type"] = multipart([("innocent.jpg", b"x")])
        r = await raw_http(a.gw.client.port, v.method, target, headers, body)
        a.seen(r.body)
        code = r.json().get("code") if r.headers.get("content-type", "").startswith("application/json") else None
        if r.status != v.status or (v.code is not None and code != v.code):
            problems.append(f"[{v.id}] {v.method} {target}: {r!r} (expected {v.status} {v.code or ''})")
        problems += [f"[{v.id}] {p}" for p in a.problems_after()]
    return problems


async def test_http_ids_and_query_vectors(arena: Arena) -> None:
    problems = await http_vector_problems(arena, [v for v in HTTP_VECTORS if not v.bug])
    assert not problems, "\n".join(problems)


async def test_job_ids_in_non_ascii_digits_are_404(arena: Arena) -> None:
    problems = await http_vector_problems(arena, [v for v in HTTP_VECTORS if v.bug])
    assert not problems, "\n".join(problems)


def test_vectors_cover_the_unicode_digit_helpers() -> None:
    assert arabic(12) == "%D9%A1%D9%A2"
    assert fullwidth(3) == "%EF%BC%93"


# ----------------------------------------------------------------------------- planted symlinks


def plant_links(a: Arena) -> dict[str, Path]:
    """Links inside job A's folders pointing outside storage_root (as an intruder or a bad restore might)."""
    orig, clip = a.gw.job_dir(a.job_a, "ORIGINAL"), a.gw.job_dir(a.job_a, "CLIPPED")
    (orig / "sub").mkdir()
    links = {
        "dirlink": orig / "dirlink",
        "filelink.jpg": orig / "filelink.jpg",
        "clink.png": clip / "clink.png",
        "sub/inner": orig / "sub" / "inner",
    }
    os.symlink(a.outside.folder, links["dirlink"])
    os.symlink(a.outside.secret_path, links["filelink.jpg"])
    os.symlink(a.outside.secret_path, links["clink.png"])
    os.symlink(a.outside.folder, links["sub/inner"])
    return links


LINK_LOGINS = ["alice", "job", "pat"]


def login_args(a: Arena, login: str) -> tuple[str, str]:
    if login == "job":
        return a.job_a["upload"]["ftpUsername"], a.job_a["upload"]["ftpPassword"]
    return login, a.gw.world.passwords[login]


@pytest.mark.parametrize("login", LINK_LOGINS)
def test_planted_links_are_invisible_and_unreachable_over_ftp(arena: Arena, login: str) -> None:
    a = arena
    plant_links(a)
    a.arm()
    orig, clip = job_vdir(a.job_a, "ORIGINAL"), job_vdir(a.job_a, "CLIPPED")
    problems: list[str] = []

    def refused(what: str, reply: str, allowed: tuple[int, ...] = (550,)) -> None:
        a.seen(reply)
        if reply_code(reply) not in allowed:
            problems.append(f"{what}: {reply!r}")

    with Ftp(a.gw.ftp_port, *login_args(a, login)) as ftp:
        for folder in (orig, f"{orig}/sub", clip):
            for cmd in ("LIST", "NLST", "MLSD"):
                reply, lines = ftp.lines(cmd, folder)
                a.seen("\n".join(lines))
                if reply_code(reply) != 226 or any(n in " ".join(lines) for n in
                                                   ("dirlink", "filelink", "clink", "inner", "secret")):
                    problems.append(f"{cmd} {folder}: {reply!r} {lines}")
        for path in (f"{orig}/dirlink", f"{orig}/sub/inner", f"{orig}/dirlink/secret.txt"):
            refused(f"CWD {path}", ftp.cmd(f"CWD {path}"))
            reply, lines = ftp.lines("LIST", path)
            a.seen("\n".join(lines))
            refused(f"LIST {path}", reply)
            refused(f"MKD {path}/new", ftp.cmd(f"MKD {path}/new"))
            refused(f"STOR {path}/new.jpg", ftp.stor(f"{path}/new.jpg"))
        for path in (f"{orig}/filelink.jpg", f"{clip}/clink.png", f"{orig}/dirlink/secret.txt",
                     f"{orig}/sub/inner/secret.txt"):
            for cmd in ("MLST", "SIZE", "MDTM", "HASH", "XMD5", "DELE", "RNFR"):
                refused(f"{cmd} {path}", ftp.cmd(f"{cmd} {path}"))
            reply, data = ftp.retr(path)
            a.seen(data)
            refused(f"RETR {path}", reply)
        ftp.cmd("CWD /")
    assert not problems, "\n".join(problems)
    assert not a.problems_after()


PREFILL_BUG = ("BUG: APPE and REST+STOR onto a planted file link copy the link's target into the spool "
               "(gateway/ftp/handler.py _open_spool follows it: node.real.is_file()/stat() and spool.prefill)")


@pytest.mark.parametrize("cmd", ["STOR", "APPE", "REST+STOR"])
def test_writes_onto_a_planted_file_link_neither_read_nor_change_its_target(arena: Arena, cmd: str) -> None:
    a = arena
    plant_links(a)
    a.arm()
    path = f"{job_vdir(a.job_a, 'ORIGINAL')}/filelink.jpg"
    with Ftp(a.gw.ftp_port, "alice", a.gw.world.passwords["alice"]) as ftp:
        if cmd == "REST+STOR":
            reply = ftp.stor(path, b"tail", rest=4)
        else:
            reply = ftp.stor(path, b"tail", cmd=cmd)
        a.seen(reply)
        assert reply_code(reply) == 550, reply
    assert not a.problems_after()


async def test_http_upload_onto_a_planted_file_link_is_refused(arena: Arena) -> None:
    a = arena
    plant_links(a)
    a.arm()
    r = await post_files(a.gw, a.job_a["upload"]["postUrl"], [("filelink.jpg", b"overwrite the secret")])
    a.seen(r.text)
    assert_error(r, 404)
    r = await post_files(a.gw, f"/jobs/{a.job_a['id']}/clipped", [("clink.png", b"overwrite")], session=a.pat)
    a.seen(r.text)
    assert_error(r, 404)
    assert not a.problems_after()


async def test_recorded_file_replaced_by_a_link_is_not_served(arena: Arena) -> None:
    """A recorded file swapped for a link to the secret on disk: DownloadBin, the zip and FTP refuse it."""
    a = arena
    victim = a.gw.job_dir(a.job_a, "ORIGINAL") / "victim.jpg"
    victim.unlink()
    os.symlink(a.outside.secret_path, victim)
    a.arm()
    files = await a.gw.call("GET", f"/jobs/{a.job_a['id']}/files?kind=original", session=a.alice)
    link = next(f["downloadUrl"] for f in files.json()["files"] if f["fileName"] == "victim.jpg")
    r = await raw_http(a.gw.client.port, "GET", target_of(link))
    a.seen(r.body)
    assert r.status == 404, r
    zip_url = a.job_a["download"]["getUrl"] + "&kind=original"
    r = await raw_http(a.gw.client.port, "GET", target_of(zip_url))
    a.seen(r.body)
    assert r.status in (404, 409), r
    with Ftp(a.gw.ftp_port, "alice", a.gw.world.passwords["alice"]) as ftp:
        reply, data = ftp.retr(f"{job_vdir(a.job_a, 'ORIGINAL')}/victim.jpg")
        a.seen(data)
        assert reply_code(reply) == 550, reply
    assert not a.problems_after()


# ----------------------------------------------------------------------------- symlinked job folders


def link_folder(a: Arena, real: Path, name: str) -> Path:
    """Replace a folder of storage_root by a link to outside/<name> (which holds a file of its own)."""
    target = a.outside.folder / name
    target.mkdir(parents=True)
    (target / "hidden.txt").write_bytes(a.outside.secret)
    real.rename(a.tmp / f"moved-{name}")
    os.symlink(target, real)
    return target


def kind_folder_link(a: Arena) -> str:
    link_folder(a, a.gw.job_dir(a.job_a, "ORIGINAL"), "kind")
    return job_vdir(a.job_a, "ORIGINAL")


def job_folder_link(a: Arena) -> str:
    target = link_folder(a, a.gw.job_dir(a.job_a, "ORIGINAL").parent, "job")
    for kind in ("ORIGINAL", "CLIPPED"):
        (target / kind).mkdir()
        (target / kind / "hidden.txt").write_bytes(a.outside.secret)
    return job_vdir(a.job_a, "ORIGINAL")


def day_folder_link(a: Arena) -> str:
    target = link_folder(a, a.gw.storage_root / a.day, "day")
    for job in (a.job_a, a.job_b):
        for kind in ("ORIGINAL", "CLIPPED"):
            (target / str(job["id"]) / kind).mkdir(parents=True)
            (target / str(job["id"]) / kind / "hidden.txt").write_bytes(a.outside.secret)
    return job_vdir(a.job_a, "ORIGINAL")


LINKED_FOLDERS = {"kind-folder": kind_folder_link, "job-folder": job_folder_link, "day-folder": day_folder_link}
FOLDER_LINK_BUG = ("BUG: gateway/ftp/filesystem.py resolve() checks links only below a kind folder, so a linked "
                   "day/job/kind folder is written through (MKD creates a folder outside, STOR spools its temp file "
                   "outside) and listed through (NLST names outside files)")


@pytest.mark.parametrize("how", list(LINKED_FOLDERS))
def test_a_linked_folder_is_not_read_over_ftp(arena: Arena, how: str) -> None:
    a = arena
    folder = LINKED_FOLDERS[how](a)
    a.arm()
    problems = []
    with Ftp(a.gw.ftp_port, "alice", a.gw.world.passwords["alice"]) as ftp:
        for cmd in ("MLST", "SIZE", "HASH"):
            reply = a.seen(ftp.cmd(f"{cmd} {folder}/hidden.txt"))
            if reply_code(reply) != 550:
                problems.append(f"{cmd}: {reply!r}")
        reply, data = ftp.retr(f"{folder}/hidden.txt")
        a.seen(data)
        if reply_code(reply) != 550:
            problems.append(f"RETR: {reply!r}")
    assert not problems, problems
    assert not a.problems_after()


@pytest.mark.parametrize("how", ["kind-folder", "job-folder", "day-folder"])
def test_a_linked_folder_is_not_listed_over_ftp(arena: Arena, how: str) -> None:
    a = arena
    folder = LINKED_FOLDERS[how](a)
    a.arm()
    with Ftp(a.gw.ftp_port, "alice", a.gw.world.passwords["alice"]) as ftp:
        got = {cmd: ftp.lines(cmd, folder) for cmd in ("LIST", "NLST", "MLSD")}
    for cmd, (reply, lines) in got.items():
        a.seen("\n".join(lines))
        assert "hidden.txt" not in " ".join(lines), (cmd, reply, lines)
        assert reply_code(reply) in (550, 501), (cmd, reply, lines)  # 501: pyftpdlib's MLSD of a non-folder
    assert not a.problems_after()


@pytest.mark.parametrize("how", list(LINKED_FOLDERS))
@pytest.mark.parametrize("cmd", ["MKD", "STOR"])
def test_nothing_is_written_through_a_linked_folder_over_ftp(arena: Arena, how: str, cmd: str) -> None:
    a = arena
    folder = LINKED_FOLDERS[how](a)
    a.arm()
    with Ftp(a.gw.ftp_port, "alice", a.gw.world.passwords["alice"]) as ftp:
        reply = ftp.cmd(f"MKD {folder}/newdir") if cmd == "MKD" else ftp.stor(f"{folder}/new.jpg")
        a.seen(reply)
        assert reply_code(reply) == 550, reply
    assert not a.problems_after()


@pytest.mark.parametrize("how", list(LINKED_FOLDERS))
async def test_nothing_is_written_through_a_linked_folder_over_http(arena: Arena, how: str) -> None:
    a = arena
    LINKED_FOLDERS[how](a)
    a.arm()
    r = await post_files(a.gw, a.job_a["upload"]["postUrl"], [("new.jpg", b"new bytes")])
    a.seen(r.text)
    assert_error(r, 404)
    assert not a.problems_after()
