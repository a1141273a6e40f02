"""Uploads over HTTP: originals to a job's postUrl (curl, the aiohttp client, raw sockets) and clipped files
delivered by processors with POST /jobs/{id}/clipped. Every rejection of the issue, with what the user sees:
the status and error body, the bytes on disk, the records, and never a temp file left behind."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
import time
import zlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from conftest import JSON, Gateway, GatewayFactory, assert_error
from http_helpers import (
    BOUNDARY,
    Part,
    Raw,
    blob,
    clip,
    deliver,
    disk,
    fetch,
    files_api,
    md5,
    multipart,
    need,
    part_head,
    path_of,
    post_files,
    post_multipart,
    records,
    run,
    tail,
    temps,
    upload,
    wait_for,
)

from gateway import jobs
from gateway.api.keys import STORAGE

ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"
ORIGIN = "https://app.example.com"


async def new_job(gw: Gateway, login: str = "alice") -> tuple[dict[str, Any], str]:
    s = await gw.session(login)
    return await gw.create_job(s), s


def check_file_body(entry: dict[str, Any], name: str, data: bytes, *, original: bool = True) -> None:
    """One entry of an UploadFilesResponseBody / GetFilesResponseBody describes exactly these bytes."""
    assert entry["fileName"] == name.rsplit("/", 1)[-1]
    assert entry["path"] == name
    assert entry["size"] == len(data)
    assert entry["mD5"] == md5(data)
    assert re.fullmatch(r"[0-9a-f]{32}", entry["mD5"])
    assert entry["crc32"] == f"{zlib.crc32(data):08x}"
    assert entry["isOriginal"] is original
    assert isinstance(entry["id"], int) and entry["id"] > 0
    assert ISO.match(entry["createdDate"]), entry


def check_stored(gw: Gateway, job: dict[str, Any], files: dict[str, bytes], kind: str = "ORIGINAL",
                 login: str = "postUrl") -> None:
    """Disk and database hold exactly these files of this kind, and no temp file is left."""
    assert disk(gw, job, kind) == {n: md5(d) for n, d in files.items()}
    recs = records(gw, job["id"], kind)
    assert set(recs) == set(files)
    for name, data in files.items():
        r = recs[name]
        assert (r["size"], r["md5"], r["crc32"]) == (len(data), md5(data), zlib.crc32(data)), name
        assert r["protocol"] == "http" and r["login"] == login
        assert r["mtime_ns"] == (gw.job_dir(job, kind) / name).stat().st_mtime_ns
    assert temps(gw, job) == []


def key_of(url: str) -> str:
    return parse_qs(urlsplit(url).query)["accountID"][0]


# ----------------------------------------------------------------------------- successful uploads

async def test_curl_uploads_several_files_to_the_post_url(gw: Gateway, tmp_path: Path) -> None:
    curl, md5sum = need("curl"), need("md5sum")
    job, s = await new_job(gw)
    files = {"apple.jpg": blob("apple", 70_000), "banana.jpg": blob("banana", 2_500_000),
             "Äpfel grün.jpg": blob("gruen", 12)}
    photos = tmp_path / "photos"
    photos.mkdir()
    args = []
    for name, data in files.items():
        (photos / name).write_bytes(data)
        args += ["-F", f"file=@{name}"]
    out = tmp_path / "reply.json"
    done = await run(curl, "-sS", *args, "-o", str(out), "-w", "%{http_code}", job["upload"]["postUrl"], cwd=photos)
    assert done.rc == 0, done
    assert done.out == b"201"
    body = json.loads(out.read_bytes())
    assert body["_type"] == "UploadFilesResponseBody"
    assert [f["fileName"] for f in body["files"]] == list(files)
    sums = await run(md5sum, *files, cwd=photos)
    printed = {name: digest for digest, name in (line.split("  ", 1) for line in sums.out.decode().splitlines())}
    for entry, (name, data) in zip(body["files"], files.items(), strict=True):
        check_file_body(entry, name, data)
        assert entry["mD5"] == printed[name]  # exactly what md5sum prints
    check_stored(gw, job, files)
    assert disk(gw, job, "CLIPPED") == {}
    listed = await files_api(gw, job["id"], s)
    assert {f["fileName"]: f["mD5"] for f in listed} == {n: md5(d) for n, d in files.items()}


async def test_aiohttp_client_uploads_one_file(gw: Gateway) -> None:
    job, _ = await new_job(gw)
    data = blob("one", 123_457)
    r = await post_files(job["upload"]["postUrl"], [("apple.jpg", data)])
    assert r.status == 201, r
    assert r.content_type == JSON
    body = r.json()
    assert body["_type"] == "UploadFilesResponseBody" and len(body["files"]) == 1
    check_file_body(body["files"][0], "apple.jpg", data)
    check_stored(gw, job, {"apple.jpg": data})


async def test_aiohttp_client_uploads_many_files_of_every_size(gw: Gateway) -> None:
    """Empty, tiny, exactly one read chunk, and several MiB (streamed in chunks, hashed on the side)."""
    job, s = await new_job(gw)
    files = {"empty.jpg": b"", "tiny.jpg": b"x", "chunk.jpg": blob("chunk", 1 << 20),
             "large.jpg": blob("large", 5 * (1 << 20) + 3), "photo-1.jpg": blob("p1", 4096)}
    r = await post_files(job["upload"]["postUrl"], list(files.items()))
    assert r.status == 201, r
    body = r.json()
    for entry, (name, data) in zip(body["files"], files.items(), strict=True):
        check_file_body(entry, name, data)
    check_stored(gw, job, files)
    got = await gw.call("GET", f"/jobs/{job['id']}", session=s)
    assert got.json()["originalCount"] == len(files)


async def test_chunked_upload_without_content_length(gw: Gateway) -> None:
    job, _ = await new_job(gw)
    files = {"a.jpg": blob("a", 300_000), "b.jpg": blob("b", 10)}
    body, ctype = multipart([Part(n, d) for n, d in files.items()])

    async def pieces() -> AsyncIterator[bytes]:
        for i in range(0, len(body), 7_001):
            yield body[i:i + 7_001]

    r = await fetch("POST", job["upload"]["postUrl"], data=pieces(), headers={"Content-Type": ctype})
    assert r.status == 201, r
    assert [f["fileName"] for f in r.json()["files"]] == list(files)
    check_stored(gw, job, files)


async def test_form_fields_beside_the_files_are_ignored(gw: Gateway) -> None:
    job, _ = await new_job(gw)
    r = await post_multipart(job["upload"]["postUrl"], [
        Part(None, b"a comment", name="comment"), Part("a.jpg", b"AAA"), Part(None, b"x", name="other"),
        Part("b.jpg", b"BBB", name="photos[]")])  # any part with a filename is a file, whatever its field
    assert r.status == 201, r
    assert [f["fileName"] for f in r.json()["files"]] == ["a.jpg", "b.jpg"]
    check_stored(gw, job, {"a.jpg": b"AAA", "b.jpg": b"BBB"})


async def test_concurrent_uploads_to_one_job_are_all_stored(gw: Gateway) -> None:
    job, _ = await new_job(gw)
    files = {f"img-{i}.jpg": blob(f"c{i}", 200_000 + i) for i in range(6)}
    replies = await asyncio.gather(*(post_files(job["upload"]["postUrl"], [(n, d)]) for n, d in files.items()))
    assert [r.status for r in replies] == [201] * len(files), replies
    check_stored(gw, job, files)


@pytest.mark.parametrize("name", ["photo (1).jpg", "..hidden.jpg", ".profile", "CONFIG.jpg", "über.png",
                                  "x" * 251 + ".jpg", "é" * 126 + ".j", "日本語の写真.jpeg", "a%b.jpg"])
async def test_unusual_but_safe_names_are_stored_as_given(gw: Gateway, name: str) -> None:
    job, _ = await new_job(gw)
    r = await post_multipart(job["upload"]["postUrl"], [Part(name, b"data", star=True)])
    assert r.status == 201, r
    assert r.json()["files"][0]["fileName"] == name
    check_stored(gw, job, {name: b"data"})


async def test_same_name_uploaded_twice_the_later_upload_replaces_the_earlier(gw: Gateway) -> None:
    job, s = await new_job(gw)
    first, second = blob("first", 50_000), blob("second", 20_000)
    [a] = await upload(gw, job, [("a.jpg", first)])
    await upload(gw, job, [("b.jpg", b"bee")])
    [a2] = await upload(gw, job, [("a.jpg", second)])
    check_file_body(a2, "a.jpg", second)
    assert a2["id"] == a["id"]  # the same record, updated
    assert a2["createdDate"] >= a["createdDate"]
    check_stored(gw, job, {"a.jpg": second, "b.jpg": b"bee"})
    listed = {f["fileName"]: f for f in await files_api(gw, job["id"], s)}
    assert sorted(listed) == ["a.jpg", "b.jpg"]
    assert listed["a.jpg"]["mD5"] == md5(second) and listed["a.jpg"]["size"] == len(second)
    got = await fetch("GET", listed["a.jpg"]["downloadUrl"])
    assert got.status == 200 and got.body == second


async def test_a_failed_reupload_leaves_the_earlier_file_intact(gw: Gateway) -> None:
    job, _ = await new_job(gw)
    first = blob("first", 30_000)
    await upload(gw, job, [("a.jpg", first)])
    bad_md5 = base64.b64encode(hashlib.md5(b"something else").digest()).decode()
    r = await post_multipart(job["upload"]["postUrl"], [Part("a.jpg", blob("second", 40_000),
                                                             headers={"Content-MD5": bad_md5})])
    assert_error(r, 400, "checksum_mismatch")
    check_stored(gw, job, {"a.jpg": first})


# ----------------------------------------------------------------------------- the URL is the capability

async def test_wrong_job_or_wrong_key_is_404_with_the_same_body(gw: Gateway) -> None:
    job, _ = await new_job(gw)
    other, _ = await new_job(gw)
    bobs, _ = await new_job(gw, "bob")
    key, other_key = key_of(job["upload"]["postUrl"]), key_of(other["upload"]["postUrl"])
    base = f"{gw.public_url}/upload/UploadFile.ashx"
    flipped = key[:-1] + ("A" if key[-1] != "A" else "B")
    urls = {
        "another job's key": f"{base}?jobID={job['id']}&accountID={other_key}",
        "this key, another job": f"{base}?jobID={other['id']}&accountID={key}",
        "this key, another account's job": f"{base}?jobID={bobs['id']}&accountID={key}",
        "missing job": f"{base}?jobID=99999&accountID={key}",
        "one character changed": f"{base}?jobID={job['id']}&accountID={flipped}",
        "truncated key": f"{base}?jobID={job['id']}&accountID={key[:-1]}",
        "empty key": f"{base}?jobID={job['id']}&accountID=",
        "no key": f"{base}?jobID={job['id']}",
        "no job": f"{base}?accountID={key}",
        "job id not a number": f"{base}?jobID=1x&accountID={key}",
        "huge job id": f"{base}?jobID={'9' * 30}&accountID={key}",
        "nothing": base,
    }
    bodies = {}
    for what, url in urls.items():
        r = await post_files(url, [("a.jpg", b"AAA")])
        bodies[what] = assert_error(r, 404, "upload_link_not_found")
    assert len({repr(sorted(b.items())) for b in bodies.values()}) == 1, bodies  # never says which was wrong
    # the capability check comes first: a wrong link is 404 whatever the body
    r = await fetch("POST", urls["another job's key"], data=b"{}", headers={"Content-Type": JSON})
    assert assert_error(r, 404) == bodies["nothing"]
    for j in (job, other, bobs):
        assert disk(gw, j, "ORIGINAL") == {} and records(gw, j["id"]) == {}
    assert temps(gw) == []
    # and the right link still works
    assert (await post_files(job["upload"]["postUrl"], [("a.jpg", b"AAA")])).status == 201


async def test_submitted_job_refuses_uploads_409(gw: Gateway) -> None:
    job, s = await new_job(gw)
    await upload(gw, job, [("a.jpg", b"AAA")])
    assert (await gw.call("POST", f"/jobs/{job['id']}/submit", session=s)).status == 200
    r = await post_files(job["upload"]["postUrl"], [("b.jpg", b"BBB"), ("a.jpg", b"changed")])
    assert assert_error(r, 409, "job_not_accepting_uploads")["status"] == "CJ_WORK_PROGRESS"
    check_stored(gw, job, {"a.jpg": b"AAA"})


async def test_archived_job_refuses_uploads_410(gw: Gateway) -> None:
    job, s = await new_job(gw)
    p = await gw.session("pat")
    await upload(gw, job, [("a.jpg", b"AAA")])
    assert (await gw.call("POST", f"/jobs/{job['id']}/submit", session=s)).status == 200
    await deliver(gw, job["id"], p, [("a.png", b"PNG")])
    assert (await gw.call("POST", f"/jobs/{job['id']}/finish", session=p)).status == 200
    assert await gw.write(jobs.archive_job, gw.app[STORAGE], job["id"]) is True  # what the sweep does
    r = await post_files(job["upload"]["postUrl"], [("b.jpg", b"BBB")])
    assert_error(r, 410, "job_archived")
    assert_error(await clip(gw, job["id"], p, [("b.png", b"x")]), 410, "job_archived")
    assert disk(gw, job, "ORIGINAL") == {} and disk(gw, job, "CLIPPED") == {}
    assert temps(gw, job) == []


# ----------------------------------------------------------------------------- malformed requests

@pytest.mark.parametrize(("content_type", "data"), [
    (None, b"raw bytes"), ("application/json", b'{"file": "a.jpg"}'), ("application/octet-stream", b"\xff\xd8"),
    ("text/plain", b"hello"), ("application/x-www-form-urlencoded", b"file=a.jpg"),
    ("multipart/mixed; boundary=x", b"--x\r\n\r\nhi\r\n--x--\r\n")])
async def test_not_multipart_is_415(gw: Gateway, content_type: str | None, data: bytes) -> None:
    job, _ = await new_job(gw)
    r = await gw.call("POST", path_of(job["upload"]["postUrl"]), data=data, content_type=content_type,
                      accept=None, client=None)
    assert_error(r, 415, "unsupported_media_type")
    assert records(gw, job["id"]) == {} and temps(gw, job) == []


@pytest.mark.parametrize("parts", [[], [Part(None, b"just a field", name="comment")],
                                   [Part(None, b"a", name="file"), Part(None, b"b", name="files")]],
                         ids=["empty", "a field", "fields named file"])
async def test_no_file_part_is_400_missing_parameter(gw: Gateway, parts: list[Part]) -> None:
    job, _ = await new_job(gw)
    r = await post_multipart(job["upload"]["postUrl"], parts)
    assert_error(r, 400, "missing_parameter", parameterName="file")
    assert records(gw, job["id"]) == {} and disk(gw, job, "ORIGINAL") == {}


async def test_an_empty_file_input_is_no_file_part(gw: Gateway) -> None:
    job, _ = await new_job(gw)
    r = await post_multipart(job["upload"]["postUrl"], [Part("", b"")])
    assert_error(r, 400, "missing_parameter", parameterName="file")
    r = await post_multipart(job["upload"]["postUrl"], [Part("a.jpg", b"AAA"), Part("", b"")])
    assert r.status == 201, r
    check_stored(gw, job, {"a.jpg": b"AAA"})


async def test_garbage_multipart_body_is_400(gw: Gateway) -> None:
    job, _ = await new_job(gw)
    r = await fetch("POST", job["upload"]["postUrl"], data=b"this is not a multipart body at all\r\n",
                    headers={"Content-Type": MULTIPART})
    assert_error(r, 400)
    assert records(gw, job["id"]) == {} and temps(gw, job) == []


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_a_part_cut_off_before_its_boundary_is_not_stored(gw: Gateway, framing: str) -> None:
    """The HTTP body is complete, the multipart body is not: the last part may be truncated."""
    job, _ = await new_job(gw)
    first = Part("first.jpg", blob("first", 10_000))
    body = part_head(first) + first.data + b"\r\n" + part_head(Part("cut.jpg")) + blob("cut", 100_000)
    if framing == "chunked":
        async def pieces() -> AsyncIterator[bytes]:
            yield body
        r = await fetch("POST", job["upload"]["postUrl"], data=pieces(), headers={"Content-Type": MULTIPART})
    else:
        r = await fetch("POST", job["upload"]["postUrl"], data=body, headers={"Content-Type": MULTIPART})
    body_json = assert_error(r, 400, "invalid_multipart")
    assert [f["fileName"] for f in body_json["stored"]] == ["first.jpg"]
    assert body_json["failedPart"]["fileName"] == "cut.jpg"
    check_stored(gw, job, {"first.jpg": first.data})


async def test_a_body_ending_after_a_delimiter_is_400_naming_the_stored_parts(gw: Gateway) -> None:
    job, _ = await new_job(gw)
    first = Part("first.jpg", blob("first", 10_000))
    body = part_head(first) + first.data + f"\r\n--{BOUNDARY}\r\n".encode()
    r = await fetch("POST", job["upload"]["postUrl"], data=body, headers={"Content-Type": MULTIPART})
    body_json = assert_error(r, 400, "invalid_multipart")
    assert [f["fileName"] for f in body_json["stored"]] == ["first.jpg"]
    check_stored(gw, job, {"first.jpg": first.data})


async def test_neither_content_length_nor_chunked_is_411(gw: Gateway) -> None:
    job, _ = await new_job(gw)
    raw = await Raw.open(gw)
    try:
        await raw.head("POST", job["upload"]["postUrl"], [("Content-Type", MULTIPART)])
        r = await raw.response()
    finally:
        await raw.close()
    assert_error(r, 411, "length_required")
    assert records(gw, job["id"]) == {} and temps(gw, job) == []


async def test_part_over_max_file_size_is_413_and_nothing_of_it_remains(
        gateway_factory: GatewayFactory, tmp_path: Path) -> None:
    gw = await gateway_factory({"storage.max_file_size": 100_000})
    job, _ = await new_job(gw)
    small, exact, big = blob("small", 10_000), blob("exact", 100_000), blob("big", 100_001)
    r = await post_multipart(job["upload"]["postUrl"], [
        Part("small.jpg", small), Part("exact.jpg", exact), Part("big.jpg", big), Part("after.jpg", b"later")])
    body = assert_error(r, 413, "file_too_large", failedPart={"name": "file", "fileName": "big.jpg"})
    assert [f["fileName"] for f in body["stored"]] == ["small.jpg", "exact.jpg"]
    check_file_body(body["stored"][1], "exact.jpg", exact)
    check_stored(gw, job, {"small.jpg": small, "exact.jpg": exact})
    # what a curl user sees
    curl = need("curl")
    (tmp_path / "huge.jpg").write_bytes(blob("huge", 1_000_000))
    done = await run(curl, "-sS", "-F", "file=@huge.jpg", "-w", "\n%{http_code}", job["upload"]["postUrl"],
                     cwd=tmp_path)
    text, _, code = done.out.decode().rpartition("\n")
    assert code == "413", done
    assert '"file_too_large"' in text
    check_stored(gw, job, {"small.jpg": small, "exact.jpg": exact})


@pytest.mark.parametrize("where", ["before the first part", "inside a part", "inside the second part"])
async def test_body_stalling_past_body_timeout_is_408(gateway_factory: GatewayFactory, where: str) -> None:
    gw = await gateway_factory({"http.body_timeout": 1})
    job, _ = await new_job(gw)
    first = Part("first.jpg", blob("first", 5_000))
    raw = await Raw.open(gw)
    try:
        await raw.head("POST", job["upload"]["postUrl"],
                       [("Content-Type", MULTIPART), ("Content-Length", "10000000")])
        if where == "inside a part":
            await raw.feed(part_head(Part("slow.jpg")) + blob("slow", 1_000_000), lambda: temps(gw, job))
        elif where == "inside the second part":
            await raw.feed(part_head(first) + first.data + b"\r\n" + part_head(Part("slow.jpg"))
                           + blob("slow", 1_000_000), lambda: "first.jpg" in records(gw, job["id"]))
        started = time.monotonic()  # from here on nothing more arrives
        r = await raw.response(timeout=10)
        waited = time.monotonic() - started
    finally:
        await raw.close()
    body = assert_error(r, 408, "request_timeout")
    assert waited < 5, waited
    if where == "inside the second part":
        assert [f["fileName"] for f in body["stored"]] == ["first.jpg"]
        assert body["failedPart"]["fileName"] == "slow.jpg"
        check_stored(gw, job, {"first.jpg": first.data})
    else:
        assert waited >= 0.8, waited
        check_stored(gw, job, {})


async def test_body_stalling_inside_a_form_field_is_408(gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory({"http.body_timeout": 1})
    job, _ = await new_job(gw)
    raw = await Raw.open(gw)
    try:
        await raw.head("POST", job["upload"]["postUrl"], [("Content-Type", MULTIPART), ("Content-Length", "100000")])
        await raw.send(part_head(Part(None, name="comment")) + b"x" * 1_000)
        try:
            r = await raw.response(timeout=3)
        except TimeoutError:
            pytest.fail("no answer 2 s after body_timeout passed")
    finally:
        await raw.close()
    assert_error(r, 408, "request_timeout")
    check_stored(gw, job, {})


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
@pytest.mark.parametrize("stored_before", [False, True], ids=["first part", "second part"])
async def test_client_disconnecting_mid_part_leaves_no_file_record_or_temp(
        gw: Gateway, framing: str, stored_before: bool) -> None:
    job, _ = await new_job(gw)
    first = Part("first.jpg", blob("first", 20_000))
    sent = (part_head(first) + first.data + b"\r\n" if stored_before else b"") + part_head(Part("cut.jpg"))
    sent += blob("cut", 2_000_000)
    chunked = framing == "chunked"
    raw = await Raw.open(gw)
    try:
        await raw.head("POST", job["upload"]["postUrl"], [("Content-Type", MULTIPART), (
            ("Transfer-Encoding", "chunked") if chunked else ("Content-Length", str(len(sent) + 1_000_000)))])
        # the part is streaming into its hidden temp file...
        await raw.feed(sent, lambda: any(p.stat().st_size > 0 for p in temps(gw, job)), chunked=chunked)
        if stored_before:
            assert "first.jpg" in records(gw, job["id"])
    finally:
        await raw.close()  # ...when the client goes away
    await wait_for(lambda: temps(gw, job) == [], what="the temp file to be removed")
    await asyncio.sleep(0.1)
    check_stored(gw, job, {"first.jpg": first.data} if stored_before else {})
    # the job is unharmed: the next upload works
    await upload(gw, job, [("cut.jpg", b"complete now")])
    check_stored(gw, job, {"cut.jpg": b"complete now", **({"first.jpg": first.data} if stored_before else {})})


async def test_a_name_taken_by_a_folder_is_409_and_leaves_no_temp(gw: Gateway) -> None:
    """A folder made by FTP (MKD) holds the name: the part is refused at its end, its bytes thrown away."""
    job, _ = await new_job(gw)
    (gw.job_dir(job, "ORIGINAL") / "photos").mkdir()
    r = await post_multipart(job["upload"]["postUrl"], [Part("a.jpg", b"AAA"), Part("photos", blob("p", 300_000))])
    body = assert_error(r, 409, "name_conflict", failedPart={"name": "file", "fileName": "photos"})
    assert [f["fileName"] for f in body["stored"]] == ["a.jpg"]
    check_stored(gw, job, {"a.jpg": b"AAA"})
    assert (gw.job_dir(job, "ORIGINAL") / "photos").is_dir()


async def test_low_disk_space_refuses_uploads_507(gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory({"storage.min_free_bytes": 1 << 62})  # more than any disk has free
    job, _ = await new_job(gw)
    assert_error(await post_files(job["upload"]["postUrl"], [("a.jpg", b"AAA")]), 507, "insufficient_storage")
    assert_error(await clip(gw, job["id"], await gw.session("pat"), [("a.png", b"P")]), 507, "insufficient_storage")
    assert records(gw, job["id"]) == {} and temps(gw, job) == []


# ----------------------------------------------------------------------------- names

BAD_NAMES = [
    "a/b.jpg", "../evil.jpg", "../../etc/passwd", "..", ".", "x/../y.jpg", "/abs.jpg", "a\\b.jpg",
    "..\\evil.jpg", "C:\\Users\\me\\pic.jpg",
    "bell\x07.jpg", "new\nline.jpg", "cr\r.jpg", "tab\t.jpg", "del\x7f.jpg", "c1\x85.jpg", "nul\x00.jpg",
    "photo.jpg.", "photo.jpg ", "dots...",
    "CON", "con.jpg", "NUL.txt", "AUX", "PRN.png", "COM1", "lpt9.png", "CONIN$", "con .jpg",
    "x" * 252 + ".jpg", "é" * 128, "名" * 86,
    ".gwtmp-0123456789abcdef01234567", ".gwtmp-anything.jpg",
    "%2e%2e", "a%2Fb.jpg", "a%5Cb.jpg", "%00.jpg",
    "a\uff0fb.jpg", "\uff0e\uff0e", "\u2024\u2024",
]


@pytest.mark.parametrize("name", BAD_NAMES, ids=[repr(n)[:40] for n in BAD_NAMES])
async def test_unsafe_names_are_400_invalid_parameter(gw: Gateway, name: str) -> None:
    job, _ = await new_job(gw)
    r = await post_multipart(job["upload"]["postUrl"],
                             [Part("ok.jpg", b"fine"), Part(name, b"evil", star=True), Part("z.jpg", b"z")])
    body = assert_error(r, 400, "invalid_parameter", parameterName="fileName")
    assert body["failedPart"] == {"name": "file", "fileName": name}
    assert [f["fileName"] for f in body["stored"]] == ["ok.jpg"]
    check_stored(gw, job, {"ok.jpg": b"fine"})
    stray = [p for p in gw.storage_root.rglob("*") if p.is_file() and p.name != "ok.jpg"]
    assert stray == []


# backslashes as curl and browsers send them: raw in filename="..." (aiohttp would read them as escapes)
@pytest.mark.parametrize("name", ["../evil.jpg", "a/b.jpg", "..", "CON", "trailing.", ".gwtmp-x",
                                  "a\\b.jpg", "C:\\Users\\me\\pic.jpg"])
async def test_unsafe_names_sent_by_curl_are_400(gw: Gateway, tmp_path: Path, name: str) -> None:
    curl = need("curl")
    job, _ = await new_job(gw)
    (tmp_path / "x.jpg").write_bytes(b"evil")
    done = await run(curl, "-sS", "-F", f"file=@x.jpg;filename={name}", "-w", "\n%{http_code}",
                     job["upload"]["postUrl"], cwd=tmp_path)
    text, _, code = done.out.decode().rpartition("\n")
    assert code == "400", done
    assert '"invalid_parameter"' in text
    check_stored(gw, job, {})
    assert [p for p in gw.storage_root.rglob("*") if p.is_file()] == []


async def test_a_quote_in_a_name_sent_by_curl_is_stored_as_a_quote(gw: Gateway, tmp_path: Path) -> None:
    curl = need("curl")
    job, _ = await new_job(gw)
    (tmp_path / "x.jpg").write_bytes(b"cheese")
    done = await run(curl, "-sS", "-F", 'file=@x.jpg;filename=say "cheese".jpg', job["upload"]["postUrl"],
                     cwd=tmp_path)
    assert json.loads(done.out)["files"][0]["fileName"] == 'say "cheese".jpg'
    check_stored(gw, job, {'say "cheese".jpg': b"cheese"})


async def test_a_percent_encoded_name_from_the_aiohttp_client_is_stored_decoded(gw: Gateway) -> None:
    job, _ = await new_job(gw)
    r = await post_files(job["upload"]["postUrl"], [("Äpfel grün.jpg", b"apple")])
    assert r.status == 201, r
    assert r.json()["files"][0]["fileName"] == "Äpfel grün.jpg"
    check_stored(gw, job, {"Äpfel grün.jpg": b"apple"})


# ----------------------------------------------------------------------------- Content-MD5

async def test_content_md5_matching_is_stored_and_mismatching_is_400(gw: Gateway) -> None:
    job, _ = await new_job(gw)
    a, b, c = blob("a", 10_000), blob("b", 3 * (1 << 20) + 5), blob("c", 777)
    b64 = base64.b64encode(hashlib.md5(a).digest()).decode()
    r = await post_multipart(job["upload"]["postUrl"], [
        Part("a.jpg", a, headers={"Content-MD5": b64}),
        Part("b.jpg", b, headers={"Content-MD5": md5(b)}),  # a hex digest is accepted too
        Part("c.jpg", c, headers={"Content-MD5": base64.b64encode(hashlib.md5(b"not c").digest()).decode()}),
        Part("d.jpg", b"never read"),
    ])
    body = assert_error(r, 400, "checksum_mismatch", failedPart={"name": "file", "fileName": "c.jpg"})
    assert [f["fileName"] for f in body["stored"]] == ["a.jpg", "b.jpg"]
    check_stored(gw, job, {"a.jpg": a, "b.jpg": b})


@pytest.mark.parametrize("header", ["not base64!", "", "AAAA", "0" * 32])
async def test_content_md5_mismatch_alone_stores_nothing(gw: Gateway, header: str) -> None:
    job, _ = await new_job(gw)
    data = blob("big", 2 * (1 << 20))
    r = await post_multipart(job["upload"]["postUrl"], [Part("a.jpg", data, headers={"Content-MD5": header})])
    assert_error(r, 400, "checksum_mismatch")
    check_stored(gw, job, {})


# ----------------------------------------------------------------------------- submit during a running upload

async def test_submit_during_a_running_upload_refuses_it_at_its_end(gw: Gateway) -> None:
    job, s = await new_job(gw)
    first = Part("first.jpg", blob("first", 30_000))
    slow = blob("slow", 2_000_000)
    raw = await Raw.open(gw)
    try:
        await raw.head("POST", job["upload"]["postUrl"],
                       [("Content-Type", MULTIPART), ("Transfer-Encoding", "chunked")])
        head = part_head(first) + first.data + b"\r\n" + part_head(Part("slow.jpg"))
        fed = await raw.feed(head + slow, lambda: "first.jpg" in records(gw, job["id"]) and any(
            p.stat().st_size > 0 for p in temps(gw, job)), chunked=True)
        submitted = await gw.call("POST", f"/jobs/{job['id']}/submit", session=s)
        assert submitted.status == 200, submitted
        assert submitted.json()["status"] == "CJ_WORK_PROGRESS"
        await raw.chunk((head + slow)[fed:] + tail())
        await raw.end_chunks()
        r = await raw.response()
    finally:
        await raw.close()
    body = assert_error(r, 409, "job_not_accepting_uploads", failedPart={"name": "file", "fileName": "slow.jpg"})
    assert [f["fileName"] for f in body["stored"]] == ["first.jpg"]
    check_stored(gw, job, {"first.jpg": first.data})
    got = await gw.call("GET", f"/jobs/{job['id']}", session=s)
    assert got.json()["originalCount"] == 1 and got.json()["status"] == "CJ_WORK_PROGRESS"


# ----------------------------------------------------------------------------- CORS

async def cors_gw(gateway_factory: GatewayFactory) -> Gateway:
    return await gateway_factory({"http.cors_origins": [ORIGIN]})


async def test_cors_preflight_from_an_allowed_origin(gateway_factory: GatewayFactory) -> None:
    gw = await cors_gw(gateway_factory)
    job, _ = await new_job(gw)
    r = await fetch("OPTIONS", job["upload"]["postUrl"], headers={
        "Origin": ORIGIN, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type, content-md5"})
    assert r.status == 204, r
    assert r.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert "POST" in [m.strip() for m in r.headers["Access-Control-Allow-Methods"].split(",")]
    allowed = {h.strip().lower() for h in r.headers["Access-Control-Allow-Headers"].split(",")}
    assert {"content-type", "content-md5"} <= allowed
    assert "Origin" in r.headers.get("Vary", "")
    assert r.body == b""


async def test_cors_answers_carry_the_origin_errors_included(gateway_factory: GatewayFactory) -> None:
    gw = await cors_gw(gateway_factory)
    job, _ = await new_job(gw)
    h = {"Origin": ORIGIN}
    ok = await post_files(job["upload"]["postUrl"], [("a.jpg", b"AAA")], headers=h)
    assert ok.status == 201 and ok.headers["Access-Control-Allow-Origin"] == ORIGIN
    wrong_key = job["upload"]["postUrl"].replace("accountID=", "accountID=x")
    errors = [
        (await post_files(wrong_key, [("a.jpg", b"A")], headers=h), 404),
        (await fetch("POST", job["upload"]["postUrl"], data=b"{}", headers={**h, "Content-Type": JSON}), 415),
        (await post_multipart(job["upload"]["postUrl"], [Part("..", b"x")], headers=h), 400),
    ]
    for r, status in errors:
        assert_error(r, status)
        assert r.headers.get("Access-Control-Allow-Origin") == ORIGIN, r
    check_stored(gw, job, {"a.jpg": b"AAA"})


@pytest.mark.parametrize("origin", ["https://evil.example.com", "http://app.example.com",
                                    "https://app.example.com:8443", "null"])
async def test_cors_foreign_origin_gets_no_allow_header(gateway_factory: GatewayFactory, origin: str) -> None:
    gw = await cors_gw(gateway_factory)
    job, _ = await new_job(gw)
    pre = await fetch("OPTIONS", job["upload"]["postUrl"], headers={
        "Origin": origin, "Access-Control-Request-Method": "POST"})
    assert_error(pre, 403)
    assert "Access-Control-Allow-Origin" not in pre.headers
    r = await post_files(job["upload"]["postUrl"], [("a.jpg", b"AAA")], headers={"Origin": origin})
    assert "Access-Control-Allow-Origin" not in r.headers, r
    bad = await post_files(job["upload"]["postUrl"] + "x", [("a.jpg", b"AAA")], headers={"Origin": origin})
    assert bad.status == 404 and "Access-Control-Allow-Origin" not in bad.headers


async def test_without_cors_origins_every_preflight_is_403(gw: Gateway) -> None:
    job, _ = await new_job(gw)
    for origin in (ORIGIN, None):
        r = await fetch("OPTIONS", job["upload"]["postUrl"], headers={"Origin": origin} if origin else {})
        assert_error(r, 403)
        assert "Access-Control-Allow-Origin" not in r.headers


# ----------------------------------------------------------------------------- processors deliver over HTTP

async def test_processor_delivers_clipped_files_over_http(gw: Gateway, tmp_path: Path) -> None:
    curl = need("curl")
    job, s = await new_job(gw)
    p = await gw.session("pat")
    files = {"apple.png": blob("apple-png", 80_000), "banana.png": blob("banana-png", 1_200_000)}
    # by curl, as the README shows
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    done = await run(curl, "-sS", "-F", "file=@apple.png", "-F", "file=@banana.png",
                     "-H", "Accept: application/json", "-H", f"X-Client-Token: {gw.world.clients['web']}",
                     "-H", f"X-Session-Token: {p}", "-w", "\n%{http_code}",
                     f"{gw.public_url}/jobs/{job['id']}/clipped", cwd=tmp_path)
    text, _, code = done.out.decode().rpartition("\n")
    assert code == "201", done
    body = json.loads(text)
    assert body["_type"] == "UploadFilesResponseBody"
    for entry, (name, data) in zip(body["files"], files.items(), strict=True):
        check_file_body(entry, name, data, original=False)
    # and by the aiohttp client
    more = {"cherry.png": blob("cherry", 5)}
    [entry] = await deliver(gw, job["id"], p, list(more.items()))
    check_file_body(entry, "cherry.png", more["cherry.png"], original=False)
    check_stored(gw, job, {**files, **more}, kind="CLIPPED", login="pat")
    assert disk(gw, job, "ORIGINAL") == {}
    listed = await files_api(gw, job["id"], s, "clipped")
    assert {f["fileName"] for f in listed} == {*files, *more}


async def test_only_processors_deliver_clipped_files(gw: Gateway) -> None:
    job, _s = await new_job(gw)
    for login in ("alice", "carol"):
        r = await clip(gw, job["id"], await gw.session(login), [("a.png", b"x")])
        assert_error(r, 403, "forbidden")
    assert_error(await clip(gw, job["id"], await gw.session("bob"), [("a.png", b"x")]), 404, "job_not_found")
    assert_error(await clip(gw, 99999, await gw.session("pat"), [("a.png", b"x")]), 404, "job_not_found")
    body, ctype = multipart([Part("a.png", b"x")])
    r = await gw.call("POST", f"/jobs/{job['id']}/clipped", data=body, content_type=ctype)
    assert_error(r, 400, "missing_header", headerName="X-Session-Token")
    r = await gw.call("POST", f"/jobs/{job['id']}/clipped", session="not-a-session", data=body, content_type=ctype)
    assert_error(r, 401)
    r = await gw.call("POST", f"/jobs/{job['id']}/clipped", session=await gw.session("pat"), data=body,
                      content_type=ctype, accept="*/*")
    assert_error(r, 406)
    assert records(gw, job["id"]) == {} and disk(gw, job, "CLIPPED") == {} and temps(gw, job) == []


async def test_clipped_upload_rejections_follow_the_same_rules(gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory({"storage.max_file_size": 1000})
    job, _ = await new_job(gw)
    p = await gw.session("pat")
    r = await clip(gw, job["id"], p, [("ok.png", b"fine"), ("big.png", blob("big", 1001))])
    body = assert_error(r, 413, "file_too_large", failedPart={"name": "file", "fileName": "big.png"})
    assert [f["fileName"] for f in body["stored"]] == ["ok.png"]
    assert_error(await clip(gw, job["id"], p, [("../x.png", b"x")]), 400, "invalid_parameter")
    r = await gw.call("POST", f"/jobs/{job['id']}/clipped", session=p, data=b"{}", content_type=JSON)
    assert_error(r, 415)
    r = await gw.call("POST", f"/jobs/{job['id']}/clipped", session=p, data=multipart([])[0], content_type=MULTIPART)
    assert_error(r, 400, "missing_parameter")
    check_stored(gw, job, {"ok.png": b"fine"}, kind="CLIPPED", login="pat")


# ----------------------------------------------------------------------------- the documentation

async def test_openapi_documents_the_upload_routes(gw: Gateway) -> None:
    r = await gw.call("GET", "/openapi.json", client=None)
    assert r.status == 200
    paths = r.json()["paths"]
    post = paths["/upload/UploadFile.ashx"]["post"]
    assert {"201", "400", "404", "408", "409", "410", "411", "413", "415"} <= set(post["responses"])
    assert "multipart/form-data" in post["requestBody"]["content"]
    assert "204" in paths["/upload/UploadFile.ashx"]["options"]["responses"]
    assert {"201", "403", "409", "413"} <= set(paths["/jobs/{id}/clipped"]["post"]["responses"])
