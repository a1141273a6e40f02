"""Hostile input on the wire: malformed HTTP (multipart, headers, UTF-8, sizes, slowness, idle crowds), absurd
FTP commands, files changed under a zip download, an upload overtaken by the job's submission.

Each is answered with a proper status (never a 5xx, never a hang), stores nothing it should not, and
the server goes on serving other clients. Most run against the in-process server; what depends on
`gateway serve` itself (the header timeout is aiohttp's keep-alive timer set up in gateway.server._run)
runs against the real process.
"""

from __future__ import annotations

import asyncio
import ftplib
import io
import json
import os
import socket
import threading
import time
import zipfile
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

import pytest
from conftest import VALID_JOB, ConfigFactory, Gateway, GatewayFactory, Reply, assert_error
from helpers_proc import payload, prepare, serving
from multidict import CIMultiDict, CIMultiDictProxy

MiB = 1 << 20
BOUNDARY = "malformed-7d1f"
MP = f"multipart/form-data; boundary={BOUNDARY}"


# ----------------------------------------------------------------------------- raw HTTP over asyncio streams

@dataclass
class Raw:
    """What came back on a raw connection: the status (None: closed without an answer), headers, body."""

    status: int | None
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "").split(";")[0].strip().lower()

    def json(self) -> Any:
        return json.loads(self.body)

    def __repr__(self) -> str:
        return f"<Raw {self.status} {self.body[:300]!r}>"


async def _read_response(reader: asyncio.StreamReader) -> Raw:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return Raw(None)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        k, sep, v = line.partition(":")
        if sep:
            headers[k.strip().lower()] = v.strip()
    try:
        if "content-length" in headers:
            body = await reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            body = b""
            while size := int((await reader.readline()).strip() or b"0", 16):
                body += await reader.readexactly(size + 2)
                body = body[:-2]
        else:
            body = await reader.read()
    except (asyncio.IncompleteReadError, ConnectionError):
        body = b""
    return Raw(status, headers, body)


async def exchange(port: int, parts: Sequence[bytes | float], timeout: float = 15) -> Raw:
    """Send parts (bytes, or a float: pause that long) while reading the answer; the first answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)

    async def send() -> None:
        with suppress(ConnectionError):
            for p in parts:
                if isinstance(p, float):
                    await asyncio.sleep(p)
                else:
                    writer.write(p)
                    await writer.drain()

    sender = asyncio.create_task(send())
    try:
        return await asyncio.wait_for(_read_response(reader), timeout)
    finally:
        sender.cancel()
        with suppress(asyncio.CancelledError, ConnectionError):
            await sender
        writer.close()
        with suppress(ConnectionError):
            await writer.wait_closed()


def request(method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None,
            length: bool = True) -> bytes:
    h = {"Host": "127.0.0.1", "Connection": "close", **(headers or {})}
    if length and "Transfer-Encoding" not in h:
        h.setdefault("Content-Length", str(len(body)))
    return (f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in h.items()) + "\r\n").encode(
        "latin-1") + body


def api_headers(gw: Gateway, session: str | None = None, content_type: str = "application/json") -> dict[str, str]:
    h = {"Accept": "application/json", "X-Client-Token": gw.world.clients["web"], "Content-Type": content_type}
    if session:
        h["X-Session-Token"] = session
    return h


def post_path(gw: Gateway, job: dict[str, Any]) -> str:
    return str(job["upload"]["postUrl"]).split(gw.public_url, 1)[1]


def assert_clean(gw: Gateway, job: dict[str, Any], names: set[str] | None = None) -> None:
    """The job holds exactly `names` (default none): recorded and on disk, no temp files left."""
    names = names or set()
    assert {r["path"] for r in gw.query("select path from files where job_id = ?", [job["id"]])} == names
    assert {p.name for p in gw.job_dir(job, "ORIGINAL").iterdir()} == names


async def assert_serving(gw: Gateway) -> None:
    start = time.monotonic()
    r = await gw.call("GET", "/health")
    assert r.status == 200, r
    assert time.monotonic() - start < 2.0


def part(name: str | bytes, data: bytes, disposition: bytes | None = None) -> bytes:
    fn = name if isinstance(name, bytes) else name.encode()
    cd = disposition if disposition is not None else b'form-data; name="file"; filename="' + fn + b'"'
    return (f"--{BOUNDARY}\r\n".encode() + b"Content-Disposition: " + cd + b"\r\n"
            b"Content-Type: application/octet-stream\r\n\r\n" + data + b"\r\n")


END = f"--{BOUNDARY}--\r\n".encode()


@pytest.fixture
async def job_gw(gateway_factory: GatewayFactory) -> tuple[Gateway, dict[str, Any]]:
    gw = await gateway_factory({"http.body_timeout": 1.0}, ftp=True)
    job = await gw.create_job(await gw.session("alice"))
    return gw, job


# ----------------------------------------------------------------------------- multipart

BROKEN_MULTIPART: dict[str, tuple[str, bytes]] = {
    "boundary-mismatch": (MP, part("a.jpg", b"x" * 100).replace(BOUNDARY.encode(), b"other") + END),
    "boundary-too-long": (f"multipart/form-data; boundary={'b' * 100}", part("a.jpg", b"x" * 100) + END),
    "no-boundary-parameter": ("multipart/form-data", part("a.jpg", b"x" * 100) + END),
    "empty-boundary": ("multipart/form-data; boundary=", part("a.jpg", b"x" * 100) + END),
    "garbage-body": (MP, payload(5, 3000)),
    "empty-body": (MP, b""),
    "only-the-end": (MP, END),
    "nested-multipart": (MP, f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"\r\n"
                             f"Content-Type: multipart/mixed; boundary=inner\r\n\r\n--inner\r\n"
                             f"Content-Disposition: attachment; filename=\"n.jpg\"\r\n\r\nnnn\r\n--inner--\r\n"
                             .encode() + END),
}


BAD_PART_HEADERS: list[pytest.MarkDecorator] = []
BROKEN_MULTIPART_BUGS = {
    "no-blank-line-after-part-headers": (MP, f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; "
                                             f"filename=\"a.jpg\"\r\n".encode() + b"x" * 100 + b"\r\n" + END),
    "control-bytes-in-part-header": (MP, part("", b"x" * 100, b"\x01\x02 == ;; filename==") + END),
}


@pytest.mark.parametrize("case", [*BROKEN_MULTIPART, *(pytest.param(c, marks=BAD_PART_HEADERS)
                                                       for c in BROKEN_MULTIPART_BUGS)])
async def test_broken_multipart_bodies_get_400_and_store_nothing(job_gw: tuple[Gateway, dict[str, Any]],
                                                                 case: str) -> None:
    gw, job = job_gw
    ctype, body = {**BROKEN_MULTIPART, **BROKEN_MULTIPART_BUGS}[case]
    r = await exchange(gw.client.port, [request("POST", post_path(gw, job), body, {"Content-Type": ctype})])
    assert r.status == 400, r
    assert r.content_type == "application/json", r
    assert r.json()["code"] in ("invalid_multipart", "missing_parameter"), r
    assert_clean(gw, job)
    await assert_serving(gw)


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
@pytest.mark.parametrize("cut", ["mid-data", "before-the-closing-boundary"])
async def test_a_multipart_body_ending_inside_a_file_stores_nothing_of_that_file(
        job_gw: tuple[Gateway, dict[str, Any]], framing: str, cut: str) -> None:
    """The HTTP message is complete (its length or its last chunk says so) but the multipart body is not:
    the file it breaks off in is not stored, not even the bytes that came (the earlier part may be)."""
    gw, job = job_gw
    whole = part("first.jpg", b"1" * 3000) + part("cut.jpg", b"x" * 5000) + END
    end = whole.index(b"x" * 5000) + (2000 if cut == "mid-data" else 5000)
    body = whole[:end]
    if framing == "chunked":
        parts: list[bytes | float] = [request("POST", post_path(gw, job), headers={
            "Content-Type": MP, "Transfer-Encoding": "chunked"}),
            f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n"]
    else:
        parts = [request("POST", post_path(gw, job), body, {"Content-Type": MP})]
    r = await exchange(gw.client.port, parts)
    assert r.status == 400, r
    stored = {(row["path"], row["size"]) for row in gw.query("select path, size from files")}
    assert not any(p == "cut.jpg" for p, _ in stored), "a file the body broke off in was stored"
    assert stored <= {("first.jpg", 3000)}
    assert {p.name for p in gw.job_dir(job, "ORIGINAL").iterdir()} == {p for p, _ in stored}


async def test_a_part_without_filename_is_a_form_field_not_a_file(job_gw: tuple[Gateway, dict[str, Any]]) -> None:
    gw, job = job_gw
    body = part("", b"field value", b'form-data; name="file"') + END
    r = await exchange(gw.client.port, [request("POST", post_path(gw, job), body, {"Content-Type": MP})])
    assert r.status == 400 and r.json()["code"] == "missing_parameter" and r.json()["parameterName"] == "file", r
    assert_clean(gw, job)




def aiohttp_warnings_only(fn: Any) -> Any:
    """aiohttp warns about a Content-Disposition it cannot read (BadContentDispositionHeader/Param) and goes on
    without it. The suite turns warnings into errors (a 500 here); `gateway serve` only logs them."""
    fn = pytest.mark.filterwarnings("ignore::aiohttp.BadContentDispositionHeader")(fn)
    return pytest.mark.filterwarnings("ignore::aiohttp.BadContentDispositionParam")(fn)


BAD_DISPOSITIONS = {
    "unterminated-quote": b'form-data; name="file"; filename="a.jpg',
    "no-value": b'form-data; name="file"; filename',
    "only-semicolons": b";;;;",
    "garbage": b"== ;; filename== ;",
    "empty-filename": b'form-data; name="file"; filename=""',
    "dot-dot-filename": b'form-data; name="file"; filename=".."',
    "slash-filename": b'form-data; name="file"; filename="a/b.jpg"',
    "two-filenames": b'form-data; name="file"; filename="a.jpg"; filename="b.jpg"',
}


@aiohttp_warnings_only
@pytest.mark.parametrize("case", list(BAD_DISPOSITIONS))
async def test_a_part_with_a_bad_content_disposition_is_refused_and_stores_nothing(
        job_gw: tuple[Gateway, dict[str, Any]], case: str) -> None:
    gw, job = job_gw
    body = part("", b"x" * 100, BAD_DISPOSITIONS[case]) + END
    r = await exchange(gw.client.port, [request("POST", post_path(gw, job), body, {"Content-Type": MP})])
    assert r.status == 400, r
    assert r.content_type == "application/json", r
    assert r.json()["code"] in ("missing_parameter", "invalid_parameter", "invalid_multipart"), r
    assert {p.name for p in gw.job_dir(job, "ORIGINAL").iterdir()} == set()
    await assert_serving(gw)


INVALID_UTF8_NAMES = {
    "raw-bytes": b'form-data; name="file"; filename="\xff\xfe-photo.jpg"',
    "truncated-sequence": b'form-data; name="file"; filename="caf\xc3.jpg"',
    "overlong-slash": b'form-data; name="file"; filename="\xc0\xafetc.jpg"',
    "surrogate-encoded": b'form-data; name="file"; filename="\xed\xa0\x80.jpg"',
    "rfc5987-percent": b"form-data; name=\"file\"; filename*=UTF-8''%FF%FE-photo.jpg",
}


@aiohttp_warnings_only
@pytest.mark.parametrize("case", list(INVALID_UTF8_NAMES))
async def test_invalid_utf8_in_a_multipart_filename_gets_400(job_gw: tuple[Gateway, dict[str, Any]],
                                                            case: str) -> None:
    gw, job = job_gw
    body = part("", b"x" * 100, INVALID_UTF8_NAMES[case]) + END
    r = await exchange(gw.client.port, [request("POST", post_path(gw, job), body, {"Content-Type": MP})])
    assert r.status == 400, r
    assert r.content_type == "application/json", r
    assert r.json()["code"] in ("invalid_parameter", "missing_parameter", "invalid_multipart"), r
    assert_clean(gw, job)


# ----------------------------------------------------------------------------- headers, UTF-8, sizes

OVERSIZED = {
    "long-header-value": request("GET", "/health", headers={"X-Long": "a" * 10_000}),
    "long-header-name": request("GET", "/health", headers={"X-" + "n" * 10_000: "1"}),
    "long-request-line": request("GET", "/health?" + "q" * 10_000),
    "many-headers": request("GET", "/health", headers={f"X-H{i}": "v" * 50 for i in range(300)}),
}


@pytest.mark.parametrize("case", list(OVERSIZED))
async def test_headers_over_the_limits_get_4xx_not_5xx(gw: Gateway, case: str) -> None:
    r = await exchange(gw.client.port, [OVERSIZED[case]])
    assert r.status in (400, 413, 414, 431), r
    await assert_serving(gw)


@pytest.mark.parametrize("path,body", [
    ("/jobs", b'{"name": "\xff\xfe", "description": "x"}'),
    ("/jobs", b'{"name": "caf\xc3", "description": "x"}'),
    ("/sessions", b'{"login": "alice", "password": "\xed\xa0\x80"}'),
], ids=["jobs-raw", "jobs-truncated", "sessions-surrogate"])
async def test_invalid_utf8_in_a_json_body_gets_400(gw: Gateway, path: str, body: bytes) -> None:
    session = await gw.session("alice")
    r = await exchange(gw.client.port, [request("POST", path, body, api_headers(gw, session))])
    assert_error(_as_reply(r), 400, "invalid_json")


async def test_invalid_utf8_in_a_form_body_gets_400(gw: Gateway) -> None:
    session = await gw.session("alice")
    for body in (b"name=%FF%FE&description=x", b"name=\xff&description=x"):
        r = await exchange(gw.client.port, [request("POST", "/jobs", body, api_headers(
            gw, session, "application/x-www-form-urlencoded"))])
        assert_error(_as_reply(r), 400, "invalid_json")
    assert gw.query("select count(*) as n from jobs") == [{"n": 0}]


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
@pytest.mark.parametrize("path", ["/jobs", "/sessions"])
async def test_a_giant_json_body_gets_413_as_json(gw: Gateway, path: str, chunked: bool) -> None:
    session = await gw.session("alice")
    body = json.dumps({**VALID_JOB, "login": "alice", "password": "x", "padding": "p" * (3 * MiB)}).encode()
    headers = api_headers(gw, session)
    if chunked:
        headers["Transfer-Encoding"] = "chunked"
        chunks: list[bytes | float] = [request("POST", path, headers=headers)]
        for i in range(0, len(body), 64 << 10):
            piece = body[i:i + (64 << 10)]
            chunks.append(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
        chunks.append(b"0\r\n\r\n")
    else:
        chunks = [request("POST", path, body, headers)]
    r = await exchange(gw.client.port, chunks)
    assert_error(_as_reply(r), 413, "request_too_large")
    assert gw.query("select count(*) as n from jobs") == [{"n": 0}]
    await assert_serving(gw)


def _as_reply(r: Raw) -> Reply:
    assert r.status is not None, "the connection was closed without an answer"
    return Reply(r.status, CIMultiDictProxy(CIMultiDict(r.headers)), r.body)


# ----------------------------------------------------------------------------- slowness and crowds

async def test_a_stalled_json_body_gets_408_within_the_body_timeout(job_gw: tuple[Gateway, dict[str, Any]]) -> None:
    gw, _job = job_gw  # http.body_timeout = 1
    session = await gw.session("alice")
    body = json.dumps(VALID_JOB).encode()
    head = request("POST", "/jobs", headers={**api_headers(gw, session), "Content-Length": str(len(body))})
    start = time.monotonic()
    r = await exchange(gw.client.port, [head + body[:10], 10.0])
    assert_error(_as_reply(r), 408, "request_timeout")
    assert 0.8 <= time.monotonic() - start < 4
    assert gw.query("select count(*) as n from jobs") == [{"n": 1}]


async def test_a_stalled_upload_gets_408_and_leaves_no_temp_file(job_gw: tuple[Gateway, dict[str, Any]]) -> None:
    gw, job = job_gw
    body = part("slow.jpg", b"s" * 200_000) + END
    head = request("POST", post_path(gw, job), headers={"Content-Type": MP, "Content-Length": str(len(body))})
    start = time.monotonic()
    r = await exchange(gw.client.port, [head + body[:100_000], 10.0])
    assert_error(_as_reply(r), 408, "request_timeout")
    assert 0.8 <= time.monotonic() - start < 4
    assert_clean(gw, job)
    await assert_serving(gw)


async def test_hundreds_of_idle_connections_do_not_stop_another_client(gw: Gateway) -> None:
    conns: list[asyncio.StreamWriter] = []
    try:
        for i in range(300):
            _reader, writer = await asyncio.open_connection("127.0.0.1", gw.client.port)
            if i % 3 == 1:
                writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # headers never finished
            elif i % 3 == 2:
                writer.write(request("POST", "/jobs", headers={"Content-Length": "1000"}) + b"{")  # body stalls
            conns.append(writer)
        await asyncio.sleep(0.2)
        start = time.monotonic()
        r = await gw.call("GET", "/health")
        assert r.status == 200
        job = await gw.create_job(await gw.session("alice"))
        assert job["id"] == 1
        assert time.monotonic() - start < 2.0
    finally:
        for w in conns:
            w.close()
        for w in conns:
            with suppress(ConnectionError):
                await w.wait_closed()


def _trickle_until_closed(sock: socket.socket, limit: float) -> float | None:
    """Send one byte of a header line every 0.25 s (slowloris); seconds until the server closed (None: never)."""
    start = time.monotonic()
    while time.monotonic() - start < limit:
        try:
            sock.sendall(b"a")
            sock.settimeout(0.25)
            if sock.recv(4096) == b"":
                return time.monotonic() - start
        except TimeoutError:
            continue
        except OSError:
            return time.monotonic() - start
    return None


def _closed_after(sock: socket.socket, limit: float) -> float | None:
    """Seconds until the server closed this connection (None: still open after `limit`)."""
    start = time.monotonic()
    sock.settimeout(limit)
    try:
        while sock.recv(4096):
            pass
    except TimeoutError:
        return None
    except ConnectionError:
        pass
    return time.monotonic() - start


@pytest.mark.slow
def test_slow_absent_or_trickled_headers_are_cut_after_the_header_timeout_while_others_are_served(
        config_factory: ConfigFactory, tmp_path_factory: pytest.TempPathFactory) -> None:
    setup = prepare(config_factory, tmp_path_factory, {"http.header_timeout": 1.0})
    with serving(setup, "headers") as s:
        port = s.http_port
        socks = []
        trickled: list[float | None] = []
        trickler = None
        try:
            opened = time.monotonic()
            silent = socket.create_connection(("127.0.0.1", port))
            partial = socket.create_connection(("127.0.0.1", port))
            partial.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            trickle = socket.create_connection(("127.0.0.1", port))
            trickle.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Trickle: ")
            socks += [silent, partial, trickle]
            trickler = threading.Thread(target=lambda: trickled.append(_trickle_until_closed(trickle, 5.0)),
                                        name="trickler")
            trickler.start()
            crowd = []
            for _ in range(300):
                c = socket.create_connection(("127.0.0.1", port))
                c.sendall(b"GET /he")
                crowd.append(c)
            socks += crowd
            # another client is served promptly meanwhile
            start = time.monotonic()
            session = s.login("alice")
            s.create_job(session)
            assert time.monotonic() - start < 2.0
            for name, sock in (("silent", silent), ("partial headers", partial)):
                assert _closed_after(sock, 5.0) is not None, f"{name}: still open 5 s after a 1 s header timeout"
                took = time.monotonic() - opened
                assert took < 3.0, f"{name}: closed only {took:.1f} s after it opened"
            assert _closed_after(crowd[-1], 5.0) is not None
            trickler.join(10)
            assert trickled[0] is not None and trickled[0] < 3.0, f"trickled headers: still open ({trickled})"
        finally:
            if trickler is not None:
                trickler.join(10)
            for c in socks:
                c.close()


# ----------------------------------------------------------------------------- FTP with absurd arguments

class RawFtp:
    """A control connection driven line by line (ftplib would refuse to send most of this)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buf = b""
        assert self.reply().startswith("220")

    def reply(self) -> str:
        """One whole reply (multi-line replies joined), as text."""
        first = self._line()
        if first[3:4] != "-":
            return first
        lines = [first]
        while not (lines[-1][:3] == first[:3] and lines[-1][3:4] == " "):
            lines.append(self._line())
        return "\n".join(lines)

    def _line(self) -> str:
        while b"\r\n" not in self.buf:
            data = self.sock.recv(4096)
            if not data:
                raise ConnectionError("closed")
            self.buf += data
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line.decode("utf-8", "replace")

    def cmd(self, line: bytes | str) -> str:
        self.sock.sendall((line.encode() if isinstance(line, str) else line) + b"\r\n")
        return self.reply()

    def pending(self, wait: float = 0.3) -> bytes:
        """Bytes the server sent without being asked (an extra reply would desynchronise clients)."""
        self.sock.settimeout(wait)
        try:
            self.buf += self.sock.recv(4096)
        except TimeoutError:
            pass
        finally:
            self.sock.settimeout(10)
        return self.buf

    def close(self) -> None:
        self.sock.close()


def _ftp_session(gw: Gateway) -> RawFtp:
    f = RawFtp(gw.ftp_port)
    assert f.cmd("USER alice").startswith("331")
    assert f.cmd(f"PASS {gw.world.passwords['alice']}").startswith("230")
    return f


ABSURD_FTP: list[Any] = [
    ("unknown-command", b"XYZZY plugh", ("500",)),
    ("unknown-long-verb", b"A" * 1000, ("500",)),
    ("port-to-another-host", b"PORT 10,1,2,3,4,5", ("501",)),
    ("port-privileged", b"PORT 127,0,0,1,0,22", ("501",)),
    ("port-garbage", b"PORT 999,999,999,999,999,999", ("501",)),
    ("eprt-to-another-host", b"EPRT |1|192.0.2.1|4000|", ("501", "522")),
    ("eprt-garbage", b"EPRT ||||||", ("501", "522")),
    ("rest-negative", b"REST -5", ("501",)),
    ("rest-not-a-number", b"REST 12abc", ("501",)),
    ("rest-huge", b"REST " + b"9" * 400, ("350", "501")),
    ("mfmt-garbage", b"MFMT garbage /x.jpg", ("501",)),
    ("mfmt-bad-date", b"MFMT 20261399256199 /x.jpg", ("501",)),
    ("mfmt-no-path", b"MFMT 20260101000000", ("501",)),
    ("binary-junk", bytes(range(1, 10)) + b"\xff\xfe\xfd junk \x80\x81", ("500", "501")),
    ("telnet-iac", b"\xff\xf4\xff\xf2NOOP", ("500", "501", "200")),
    ("nul-in-path", b"CWD /\x00etc", ("550", "501")),
    ("stor-without-name", b"STOR", ("501",)),
    ("size-of-nothing", b"SIZE /nonexistent/x", ("550",)),
    ("type-garbage", b"TYPE Q", ("504", "501")),
    ("mode-garbage", b"MODE Z", ("504", "501")),
    ("site-garbage", b"SITE DESTROY everything", ("500", "501", "502")),
    ("opts-garbage", b"OPTS " + b"\xff" * 50, ("501",)),
    ("deep-cwd", b"CWD " + b"a/" * 900, ("550", "500")),
]


@pytest.mark.parametrize("name,line,codes", [c if hasattr(c, "marks") else pytest.param(*c, id=c[0])
                                              for c in ABSURD_FTP])
def test_absurd_ftp_commands_get_proper_replies_and_the_session_goes_on(
        ftp_gw: Gateway, name: str, line: bytes, codes: tuple[str, ...]) -> None:
    f = _ftp_session(ftp_gw)
    try:
        reply = f.cmd(line)
        assert reply[:3] in codes, f"{name}: {reply!r}"
        assert f.pending(0.15) == b"", f"{name}: an extra reply would desynchronise the client"
        assert f.cmd("NOOP").startswith("200")
    finally:
        f.close()


def test_an_over_long_ftp_line_gets_one_500_command_too_long_and_the_session_goes_on(ftp_gw: Gateway) -> None:
    f = _ftp_session(ftp_gw)
    try:
        for tail in (4096, 6000, 70_000):
            reply = f.cmd(b"NOOP " + b"A" * tail)
            assert reply.startswith("500") and "too long" in reply.lower(), reply
            assert f.pending(0.3) == b"", "a second reply came for one command (the client would lose track)"
        assert f.cmd("NOOP").startswith("200")
        assert f.cmd("PWD").startswith("257")
    finally:
        f.close()


async def test_rest_with_a_huge_position_is_refused_by_the_transfer_and_stores_nothing(ftp_gw: Gateway) -> None:
    gw = ftp_gw
    job = await gw.create_job(await gw.session("alice"))
    folder = f"/{job['createdDate'][:10].replace('-', '')}/{job['id']}/ORIGINAL"
    f = ftplib.FTP()
    try:
        f.connect("127.0.0.1", gw.ftp_port, timeout=10)
        f.login("alice", gw.world.passwords["alice"])
        f.storbinary(f"STOR {folder}/a.jpg", io.BytesIO(b"a" * 1000))
        huge = "9" * 40
        for verb in ("STOR", "RETR"):
            assert f.sendcmd(f"REST {huge}").startswith("350")
            with pytest.raises(ftplib.error_perm, match=r"^55[04]"):
                if verb == "STOR":
                    f.storbinary(f"STOR {folder}/b.jpg", io.BytesIO(b"b" * 10))
                else:
                    f.retrbinary(f"RETR {folder}/a.jpg", lambda _: None)
        assert f.voidcmd("NOOP").startswith("200")
        f.quit()
    finally:
        f.close()
    assert_clean(gw, job, {"a.jpg"})


def test_a_crowd_of_idle_ftp_connections_from_one_address_does_not_lock_out_another(ftp_gw: Gateway) -> None:
    """100 idle control connections from 127.0.0.2 (over [ftp] max_cons_per_ip, 64): the surplus is refused
    with 421, and a client from 127.0.0.1 still logs in and works promptly."""
    crowd: list[socket.socket] = []
    refused = 0
    try:
        for _ in range(100):
            c = socket.create_connection(("127.0.0.1", ftp_gw.ftp_port), timeout=10, source_address=("127.0.0.2", 0))
            crowd.append(c)
            greeting = c.recv(4096)
            refused += greeting.startswith(b"421")
            assert greeting[:3] in (b"220", b"421"), greeting
        assert refused == 100 - 64, refused
        start = time.monotonic()
        f = ftplib.FTP()
        try:
            f.connect("127.0.0.1", ftp_gw.ftp_port, timeout=10)
            f.login("alice", ftp_gw.world.passwords["alice"])
            assert f.nlst("/") == []
            f.quit()
        finally:
            f.close()
        assert time.monotonic() - start < 2.0
    finally:
        for c in crowd:
            c.close()


def test_ftp_still_serves_after_junk_and_a_flood_of_commands(ftp_gw: Gateway) -> None:
    f = _ftp_session(ftp_gw)
    try:
        f.sock.sendall(payload(11, 20_000).replace(b"\r\n", b"") + b"\r\n")  # 20 KB of junk, one line
        with suppress(ConnectionError, TimeoutError):
            f.pending(0.5)
    finally:
        f.close()
    g = ftplib.FTP()
    try:
        g.connect("127.0.0.1", ftp_gw.ftp_port, timeout=10)
        g.login("alice", ftp_gw.world.passwords["alice"])
        for _ in range(200):
            g.voidcmd("NOOP")
        assert g.pwd() == "/"
        g.quit()
    finally:
        g.close()


# ----------------------------------------------------------------------------- zips under changing files

async def _zip_job(gw: Gateway, sizes: Sequence[int]) -> tuple[dict[str, Any], dict[str, bytes], str]:
    session = await gw.session("alice")
    job = await gw.create_job(session)
    files = {f"f{i}.bin": payload(100 + i, size) for i, size in enumerate(sizes)}
    body = b"".join(part(n, d) for n, d in files.items()) + END
    r = await gw.call("POST", post_path(gw, job), data=body, content_type=MP, accept=None, client=None)
    assert r.status == 201, r
    url = (await gw.call("GET", f"/jobs/{job['id']}", session=session)).json()["download"]["getUrl"]
    return job, files, url.split(gw.public_url, 1)[1] + "&kind=original"


async def _download_while(gw: Gateway, path: str, tamper: Any) -> tuple[int, int, bytes]:
    """GET the zip through a small receive window, call tamper() after the first bytes, then read to the end.

    Returns (Content-Length, bytes received, body)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 << 10)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", gw.client.port))
    reader, writer = await asyncio.open_connection(sock=sock)
    try:
        writer.write(request("GET", path, length=False))
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        status = head.split(b" ", 2)[1]
        assert status == b"200", head
        length = int(next(ln.split(b":", 1)[1] for ln in head.split(b"\r\n") if ln.lower().startswith(
            b"content-length:")))
        body = await reader.readexactly(64 << 10)
        await asyncio.sleep(0.2)  # the server is now blocked on a full socket, mid-file
        tamper()
        while True:
            try:
                chunk = await asyncio.wait_for(reader.read(1 << 20), 10)
            except ConnectionError:
                break
            if not chunk:
                break
            body += chunk
        return length, len(body), body
    finally:
        writer.close()
        with suppress(ConnectionError):
            await writer.wait_closed()


def _zip_is_wrong_or_broken(body: bytes, files: dict[str, bytes]) -> bool:
    try:
        with zipfile.ZipFile(io.BytesIO(body)) as zf:
            return any(zf.read(n) != files[n] for n in zf.namelist()) or zf.testzip() is not None
    except (zipfile.BadZipFile, KeyError, OSError, EOFError):
        return True


@pytest.mark.parametrize("change", ["truncate", "replace"])
async def test_a_file_changed_during_a_zip_download_aborts_the_connection(gw: Gateway, change: str) -> None:
    job, files, path = await _zip_job(gw, [6 * MiB, 6 * MiB, 6 * MiB])
    folder = gw.job_dir(job, "ORIGINAL")

    def tamper() -> None:
        for name, data in files.items():
            if change == "truncate":
                os.truncate(folder / name, len(data) // 2)
            else:  # same size, other bytes, a new inode
                tmp = folder / f"{name}.new"
                tmp.write_bytes(payload(999, len(data)))
                os.replace(tmp, folder / name)

    length, received, body = await _download_while(gw, path, tamper)
    assert received < length, "a complete-looking zip was sent although its files changed"
    assert _zip_is_wrong_or_broken(body, files)
    await assert_serving(gw)
    # a fresh download refuses to start (409) rather than send a zip that cannot be right
    r = await gw.call("GET", path, accept=None, client=None)
    assert_error(r, 409, "files_changed")


# ----------------------------------------------------------------------------- an upload overtaken by submit

async def test_an_http_upload_running_while_its_job_is_submitted_is_refused_at_its_end(
        job_gw: tuple[Gateway, dict[str, Any]]) -> None:
    gw, job = job_gw
    session = await gw.session("alice")
    first = payload(1, 1000)
    r = await gw.call("POST", post_path(gw, job), data=part("first.jpg", first) + END, content_type=MP,
                      accept=None, client=None)
    assert r.status == 201, r
    late = part("late.jpg", payload(2, 300_000)) + END
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.client.port)
    try:
        writer.write(request("POST", post_path(gw, job), headers={"Content-Type": MP,
                                                                   "Content-Length": str(len(late))}))
        writer.write(late[:150_000])
        await writer.drain()
        await asyncio.sleep(0.2)
        submitted = await gw.call("POST", f"/jobs/{job['id']}/submit", session=session)
        assert submitted.status == 200 and submitted.json()["status"] == "CJ_WORK_PROGRESS", submitted
        writer.write(late[150_000:])
        await writer.drain()
        answer = await asyncio.wait_for(_read_response(reader), 10)
    finally:
        writer.close()
        with suppress(ConnectionError):
            await writer.wait_closed()
    assert_error(_as_reply(answer), 409, "job_not_accepting_uploads")
    assert_clean(gw, job, {"first.jpg"})


async def test_an_ftp_upload_running_while_its_job_is_submitted_is_refused_at_its_end(ftp_gw: Gateway) -> None:
    gw = ftp_gw
    session = await gw.session("alice")
    job = await gw.create_job(session)
    folder = f"/{job['createdDate'][:10].replace('-', '')}/{job['id']}/ORIGINAL"
    f = ftplib.FTP()
    f.connect("127.0.0.1", gw.ftp_port, timeout=10)
    try:
        f.login("alice", gw.world.passwords["alice"])
        f.storbinary(f"STOR {folder}/first.jpg", io.BytesIO(b"first"))
        f.voidcmd("TYPE I")
        conn = f.transfercmd(f"STOR {folder}/late.jpg")
        data = payload(3, 300_000)
        conn.sendall(data[:150_000])
        submitted = await gw.call("POST", f"/jobs/{job['id']}/submit", session=session)
        assert submitted.status == 200, submitted
        conn.sendall(data[150_000:])
        conn.close()
        with pytest.raises(ftplib.error_perm, match=r"^550"):
            f.voidresp()
        assert f.voidcmd("NOOP").startswith("200")
        f.quit()
    finally:
        f.close()
    assert_clean(gw, job, {"first.jpg"})
    assert gw.query("select count(*) as n from partials") == [{"n": 0}]

