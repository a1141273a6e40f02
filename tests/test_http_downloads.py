"""Files of a job over HTTP: the files API, one file (DownloadBin.ashx) and the job's zip at getUrl
(DownloadZip.ashx): the bytes checked by zipfile, `unzip -t` and curl, Content-Length, ETag, Range and
resume, tokens that must not work, and files that change on disk before or during a download."""

from __future__ import annotations

import asyncio
import ftplib
import io
import math
import os
import random
import time
import zipfile
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
from conftest import Gateway, GatewayFactory, Reply, assert_error
from http_helpers import (
    Raw,
    blob,
    deliver,
    fetch,
    files_api,
    is_zip,
    md5,
    need,
    records,
    run,
    upload,
    zip_entries,
)

from gateway import accounts

FILE_FIELDS = {"id", "fileName", "path", "isOriginal", "size", "mD5", "crc32", "createdDate", "downloadUrl"}


async def setup_job(gw: Gateway, originals: dict[str, bytes] | None = None,
                    clipped: dict[str, bytes] | None = None) -> tuple[dict[str, Any], str, str]:
    """alice's job with these originals (postUrl) and clipped files (pat, POST /jobs/{id}/clipped)."""
    s, p = await gw.session("alice"), await gw.session("pat")
    job = await gw.create_job(s)
    if originals:
        await upload(gw, job, list(originals.items()))
    if clipped:
        await deliver(gw, job["id"], p, list(clipped.items()))
    return job, s, p


def query(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


def with_query(url: str, **params: Any) -> str:
    q = {**query(url), **{k: str(v) for k, v in params.items()}}
    return f"{url.split('?')[0]}?{urlencode(q)}"


async def get(url: str, **headers: str) -> Reply:
    return await fetch("GET", url, headers=headers)


async def get_url_of(gw: Gateway, job_id: int, session: str) -> str:
    r = await gw.call("GET", f"/jobs/{job_id}", session=session)
    assert r.status == 200, r
    return str(r.json()["download"]["getUrl"])


async def principal_of(gw: Gateway, session: str) -> accounts.Principal:
    def find(db: Any) -> accounts.Principal:
        return accounts.authenticate(db, gw.world.clients["web"], session)
    return gw.read(find)


async def log_out(gw: Gateway, session: str) -> None:
    r = await gw.call("DELETE", "/sessions", session=session)
    assert r.status == 204, r


async def expire(gw: Gateway, session: str) -> None:
    """The session's lifetime passes (its expiry moved into the past through the writer)."""
    sid = (await principal_of(gw, session)).session_id
    await gw.write(lambda db: db.execute("update sessions set expires_at = ? where id = ?", [time.time() - 1, sid]))


# ----------------------------------------------------------------------------- GET /jobs/{id}/files

async def test_files_api_lists_newest_first_with_download_links(gw: Gateway) -> None:
    job, s, p = await setup_job(gw)
    await upload(gw, job, [("a.jpg", b"A" * 10), ("b.jpg", b"B" * 20)])
    await upload(gw, job, [("c.jpg", b"C" * 30)])
    await deliver(gw, job["id"], p, [("x.png", b"X" * 40), ("y.png", b"Y" * 50)])
    everything = await files_api(gw, job["id"], s)
    assert [f["fileName"] for f in everything] == ["y.png", "x.png", "c.jpg", "b.jpg", "a.jpg"]
    for f in everything:
        assert set(f) == FILE_FIELDS, f
        assert f["isOriginal"] is f["fileName"].endswith(".jpg")
        assert f["size"] == {"a": 10, "b": 20, "c": 30, "x": 40, "y": 50}[f["fileName"][0]]
        assert f["mD5"] == md5(f["fileName"][0].upper().encode() * f["size"])
        assert f["downloadUrl"].startswith(f"{gw.public_url}/ajax/DownloadBin.ashx?fileID={f['id']}&sessionid=")
        assert s not in f["downloadUrl"]  # a derived token, never the session itself
        got = await get(f["downloadUrl"])
        assert got.status == 200 and md5(got.body) == f["mD5"]
    assert [f["fileName"] for f in await files_api(gw, job["id"], s, "original")] == ["c.jpg", "b.jpg", "a.jpg"]
    assert [f["fileName"] for f in await files_api(gw, job["id"], s, "clipped")] == ["y.png", "x.png"]
    assert [f["fileName"] for f in await files_api(gw, job["id"], s, "CLIPPED")] == ["y.png", "x.png"]
    assert len(await files_api(gw, job["id"], s, "")) == 5
    for login in ("carol", "pat"):  # same account, processor
        assert [f["id"] for f in await files_api(gw, job["id"], await gw.session(login))] == [
            f["id"] for f in everything]
    assert await files_api(gw, (await gw.create_job(s))["id"], s) == []


async def test_files_api_refusals(gw: Gateway) -> None:
    job, s, _ = await setup_job(gw, {"a.jpg": b"A"})
    assert_error(await gw.call("GET", f"/jobs/{job['id']}/files?kind=thumbs", session=s), 400, "invalid_parameter",
                 parameterName="kind")
    assert_error(await gw.call("GET", f"/jobs/{job['id']}/files", session=await gw.session("bob")), 404,
                 "job_not_found")
    assert_error(await gw.call("GET", "/jobs/99999/files", session=s), 404, "job_not_found")
    assert_error(await gw.call("GET", f"/jobs/{job['id']}/files"), 400, "missing_header")
    assert_error(await gw.call("GET", f"/jobs/{job['id']}/files", session="nope"), 401)
    assert_error(await gw.call("GET", f"/jobs/{job['id']}/files", session=s, accept="text/html"), 406)


async def test_a_replaced_file_is_listed_as_the_newest(gw: Gateway) -> None:
    job, s, _ = await setup_job(gw)
    while time.time() % 1 > 0.3:  # all three uploads within one second: the order must not depend on the clock
        await asyncio.sleep(0.05)
    await upload(gw, job, [("a.jpg", b"first")])
    await upload(gw, job, [("b.jpg", b"bee")])
    await upload(gw, job, [("a.jpg", b"second")])
    assert [f["fileName"] for f in await files_api(gw, job["id"], s)] == ["a.jpg", "b.jpg"]


# ----------------------------------------------------------------------------- DownloadBin.ashx

async def test_download_bin_serves_one_file_with_validators_and_ranges(gw: Gateway) -> None:
    data = blob("photo", 300_001)
    job, s, _ = await setup_job(gw, {"photo.jpg": data})
    [f] = await files_api(gw, job["id"], s)
    url = f["downloadUrl"]
    r = await get(url)
    assert r.status == 200, r
    assert r.body == data
    assert int(r.headers["Content-Length"]) == len(data)
    assert r.headers["Content-Type"] == "application/octet-stream"
    assert r.headers["Content-Disposition"].startswith('attachment; filename="photo.jpg"')
    assert r.headers["Accept-Ranges"] == "bytes"
    etag = r.headers["ETag"]
    assert etag.startswith('"') and etag.endswith('"')
    mtime = (gw.job_dir(job, "ORIGINAL") / "photo.jpg").stat().st_mtime
    assert parsedate_to_datetime(r.headers["Last-Modified"]).timestamp() == math.ceil(mtime)  # aiohttp rounds up

    size = len(data)
    for spec, (start, end) in {"bytes=0-99": (0, 100), "bytes=1000-": (1000, size), "bytes=-500": (size - 500, size),
                               f"bytes={size - 1}-{size + 100}": (size - 1, size),
                               "bytes=150000-150000": (150000, 150001)}.items():
        part = await get(url, Range=spec)
        assert part.status == 206, (spec, part)
        assert part.headers["Content-Range"] == f"bytes {start}-{end - 1}/{size}", spec
        assert int(part.headers["Content-Length"]) == end - start
        assert part.body == data[start:end], spec
    # an interrupted download resumes: the first bytes plus the rest are the file
    head = await get(url, Range="bytes=0-123455")
    rest = await get(url, Range="bytes=123456-", **{"If-Range": etag})
    assert rest.status == 206 and head.body + rest.body == data
    unsatisfiable = await get(url, Range=f"bytes={size}-")
    assert unsatisfiable.status == 416
    assert unsatisfiable.headers["Content-Range"] == f"bytes */{size}"
    assert (await get(url, **{"If-None-Match": etag})).status == 304


async def test_download_bin_resume_of_a_replaced_file_gets_the_whole_new_file(gw: Gateway) -> None:
    old, new = blob("old", 200_000), blob("new", 200_000)
    job, s, _ = await setup_job(gw, {"photo.jpg": old})
    [f] = await files_api(gw, job["id"], s)
    first = await get(f["downloadUrl"], Range="bytes=0-99999")  # the download is interrupted here
    assert first.status == 206 and first.body == old[:100_000]
    await upload(gw, job, [("photo.jpg", new)])  # meanwhile the file is replaced (same name, same size)
    rest = await get(f["downloadUrl"], Range="bytes=100000-", **{"If-Range": first.headers["ETag"]})
    assert first.headers["ETag"] != rest.headers["ETag"]
    assert rest.status == 200 and rest.body == new  # never old[:100000] + new[100000:]


async def test_download_bin_with_curl_resumes(gw: Gateway, tmp_path: Path) -> None:
    curl = need("curl")
    data = blob("curl", 2_000_000)
    job, s, _ = await setup_job(gw, {"big.jpg": data})
    [f] = await files_api(gw, job["id"], s)
    part = await run(curl, "-sS", "-r", "100-199", f["downloadUrl"])
    assert part.rc == 0 and part.out == data[100:200]
    out = tmp_path / "big.jpg"
    out.write_bytes(data[:777_777])  # what an interrupted download left
    done = await run(curl, "-sS", "-C", "-", "-o", str(out), "-w", "%{http_code}", f["downloadUrl"])
    assert done.rc == 0 and done.out == b"206", done
    assert md5(out.read_bytes()) == md5(data)


async def test_download_bin_refuses_bad_foreign_expired_and_ended_tokens(gw: Gateway) -> None:
    job, s, _ = await setup_job(gw, {"a.jpg": b"secret bytes"})
    other, _, _ = await setup_job(gw, {"o.jpg": b"other"})
    [f] = await files_api(gw, job["id"], s)
    [o] = await files_api(gw, other["id"], s)
    token, file_id = query(f["downloadUrl"])["sessionid"], f["id"]
    base = f"{gw.public_url}/ajax/DownloadBin.ashx"

    def link(fid: Any, tok: str | None) -> str:
        return f"{base}?" + urlencode({"fileID": fid, **({"sessionid": tok} if tok is not None else {})})

    assert (await get(link(file_id, token))).body == b"secret bytes"
    for bad in ("garbage", token[:-1], token + "x", "1-" + token.split("-", 1)[1][::-1], "99-abc",
                query(o["downloadUrl"])["sessionid"]):  # the last: a good token of another job
        assert_error(await get(link(file_id, bad)), 401)
    for url in (link(file_id, ""), link(file_id, None), link(99999, token), link("abc", token), link(-1, token),
                base):
        assert_error(await get(url), 404, "download_not_found")
    # another account's customer, even holding a correctly derived token for its own session: 404
    bob = await principal_of(gw, await gw.session("bob"))
    forged = accounts.download_token(gw.secret, job["id"], bob)
    assert_error(await get(link(file_id, forged)), 404, "download_not_found")
    # the same account and processors may
    for login in ("carol", "pat"):
        [mine] = await files_api(gw, job["id"], await gw.session(login))
        assert (await get(mine["downloadUrl"])).body == b"secret bytes"
    # a link dies with its session: expired, or logged out
    s2, s3 = await gw.session("alice"), await gw.session("alice")
    [f2] = await files_api(gw, job["id"], s2)
    [f3] = await files_api(gw, job["id"], s3)
    await expire(gw, s2)
    await log_out(gw, s3)
    for url in (f2["downloadUrl"], f3["downloadUrl"]):
        r = assert_error(await get(url), 401)
        assert "secret" not in r["message"]
    assert (await get(f["downloadUrl"])).status == 200  # the first session still works


async def test_download_bin_never_follows_a_link_planted_on_disk(gw: Gateway, tmp_path: Path) -> None:
    job, s, _ = await setup_job(gw, {"a.jpg": b"AAA"})
    [f] = await files_api(gw, job["id"], s)
    outside = tmp_path / "outside-secret.txt"
    outside.write_bytes(b"must never be served")
    path = gw.job_dir(job, "ORIGINAL") / "a.jpg"
    path.unlink()
    path.symlink_to(outside)
    r = await get(f["downloadUrl"])
    assert_error(r, 404)
    assert b"must never" not in r.body


# ----------------------------------------------------------------------------- the zip at getUrl

def ftp_put(gw: Gateway, login: str, folder: str, files: dict[str, bytes]) -> None:
    """STOR files below folder (MKD of sub-folders on the way) with ftplib, as a processor would."""
    with ftplib.FTP() as ftp:
        ftp.connect("127.0.0.1", gw.ftp_port, timeout=10)
        ftp.login(login, gw.world.passwords[login])
        ftp.cwd(folder)
        for rel, data in files.items():
            if "/" in rel:
                ftp.mkd(rel.rsplit("/", 1)[0])
            ftp.storbinary(f"STOR {rel}", io.BytesIO(data))


async def test_zip_of_clipped_files_checked_by_zipfile_unzip_and_curl(gateway_factory: GatewayFactory,
                                                                      tmp_path: Path) -> None:
    unzip, curl = need("unzip"), need("curl")
    gw = await gateway_factory(ftp=True)
    clipped = {"apple.png": blob("apple", 100_000), "banana.png": blob("banana", 1_500_000), "empty.png": b"",
               "Äpfel grün.png": blob("gruen", 3_000)}
    job, _s, _p = await setup_job(gw, {"original.jpg": blob("orig", 5_000)}, clipped)
    by_ftp = {"sub/cherry.png": blob("cherry", 70_000)}
    # ftplib blocks this loop for a moment: the FTP thread and the writer never need it
    ftp_put(gw, "pat", f"/{job['createdDate'][:10].replace('-', '')}/{job['id']}/CLIPPED", by_ftp)
    assert "sub/cherry.png" in records(gw, job["id"], "CLIPPED")
    expected = {**clipped, **by_ftp}

    r = await get(job["download"]["getUrl"])
    assert r.status == 200, r
    assert r.headers["Content-Type"] == "application/zip"
    assert int(r.headers["Content-Length"]) == len(r.body)
    assert r.headers["Content-Disposition"] == f'attachment; filename="job-{job["id"]}-clipped.zip"'
    assert r.headers["Accept-Ranges"] == "bytes"
    assert r.headers["ETag"].startswith('"')
    newest = max(rec["mtime_ns"] for rec in records(gw, job["id"], "CLIPPED").values())
    assert parsedate_to_datetime(r.headers["Last-Modified"]).timestamp() == math.ceil(newest / 1e9)
    entries = zip_entries(r.body)
    assert entries == {n: (len(d), md5(d), zipfile.ZIP_STORED) for n, d in expected.items()}
    with zipfile.ZipFile(io.BytesIO(r.body)) as z:
        assert [i.filename for i in z.infolist()] == sorted(expected)  # names relative to CLIPPED, by path

    zpath = tmp_path / "job.zip"
    zpath.write_bytes(r.body)
    tested = await run(unzip, "-t", str(zpath))
    assert tested.rc == 0, tested
    assert b"No errors detected" in tested.out
    out = tmp_path / "extracted"
    assert (await run(unzip, "-q", str(zpath), "-d", str(out))).rc == 0
    got = {str(q.relative_to(out)): md5(q.read_bytes()) for q in out.rglob("*") if q.is_file()}
    assert got == {n: md5(d) for n, d in expected.items()}

    # curl sees the same bytes and exactly Content-Length of them
    cpath = tmp_path / "curl.zip"
    done = await run(curl, "-sS", "-D", "-", "-o", str(cpath), "-w", "%{size_download}", job["download"]["getUrl"])
    assert done.rc == 0, done
    head, _, size = done.out.decode("latin-1").rpartition("\r\n\r\n")
    assert f"content-length: {len(r.body)}" in head.lower()
    assert int(size) == len(r.body) and cpath.read_bytes() == r.body


async def test_zip_right_after_mfmt_carries_the_new_time(gateway_factory: GatewayFactory) -> None:
    """An MFMT's record is written with the writer's next batch: a zip asked for at once waits for it
    instead of finding the disk newer than the record (409 files_changed)."""
    gw = await gateway_factory(ftp=True)
    job, _s, _p = await setup_job(gw, {"original.jpg": blob("orig", 5_000)})
    folder = f"/{job['createdDate'][:10].replace('-', '')}/{job['id']}/CLIPPED"
    with ftplib.FTP() as ftp:
        ftp.connect("127.0.0.1", gw.ftp_port, timeout=10)
        ftp.login("pat", gw.world.passwords["pat"])
        ftp.storbinary(f"STOR {folder}/a.png", io.BytesIO(b"clipped"))
        assert ftp.sendcmd(f"MFMT 20200229123456 {folder}/a.png").startswith("213")
        r = await get(job["download"]["getUrl"])
    assert r.status == 200, r
    with zipfile.ZipFile(io.BytesIO(r.body)) as z:
        assert z.getinfo("a.png").date_time == (2020, 2, 29, 12, 34, 56)


async def test_zip_head_tells_the_length_without_a_body(gw: Gateway) -> None:
    job, _, _ = await setup_job(gw, None, {"a.png": blob("a", 5_000)})
    full = await get(job["download"]["getUrl"])
    r = await fetch("HEAD", job["download"]["getUrl"])
    assert r.status == 200 and r.body == b""
    assert int(r.headers["Content-Length"]) == len(full.body)
    assert r.headers["ETag"] == full.headers["ETag"]


async def test_zip_ranges_resume_and_if_range(gw: Gateway, tmp_path: Path) -> None:
    curl = need("curl")
    job, _, _ = await setup_job(gw, None, {"a.png": blob("a", 70_000), "b.png": blob("b", 123_457),
                                           "c.png": blob("c", 10)})
    url = job["download"]["getUrl"]
    full = (await get(url)).body
    size, etag = len(full), (await get(url)).headers["ETag"]
    assert zip_entries(full)
    rng = random.Random(4)
    spans = [(0, 29), (0, 100), (30, 5_000), (69_990, 70_200), (size - 22, size - 1), (size - 1, size - 1)]
    for _ in range(12):
        a, b = sorted((rng.randrange(size), rng.randrange(size)))
        spans.append((a, b))
    for start, last in spans:
        r = await get(url, Range=f"bytes={start}-{last}")
        assert r.status == 206, (start, last, r)
        assert r.headers["Content-Range"] == f"bytes {start}-{last}/{size}"
        assert int(r.headers["Content-Length"]) == last - start + 1 == len(r.body)
        assert r.body == full[start:last + 1], (start, last)
        assert r.headers["ETag"] == etag
    suffix = await get(url, Range="bytes=-22")
    assert suffix.status == 206 and suffix.body == full[-22:]
    beyond = await get(url, Range=f"bytes=100-{size * 2}")
    assert beyond.status == 206 and beyond.body == full[100:]
    # resume: the first part plus the rest is the whole zip
    for cut in (1, 57, 70_100, size - 3):
        first = await get(url, Range=f"bytes=0-{cut - 1}")
        rest = await get(url, Range=f"bytes={cut}-", **{"If-Range": etag})
        assert rest.status == 206 and first.body + rest.body == full
    # If-Range with a stale validator: the whole zip, 200
    stale = await get(url, Range="bytes=100-", **{"If-Range": '"0123456789abcdef"'})
    assert stale.status == 200 and stale.body == full and "Content-Range" not in stale.headers
    several = await get(url, Range="bytes=0-1,5-6")
    assert several.status == 200 and several.body == full
    assert_error(await get(url, Range=f"bytes={size}-"), 416)
    # curl -C - finishes what an interrupted download left
    out = tmp_path / "job.zip"
    out.write_bytes(full[:100_000])
    done = await run(curl, "-sS", "-C", "-", "-o", str(out), "-w", "%{http_code}", url)
    assert done.rc == 0 and done.out == b"206", done
    assert out.read_bytes() == full


async def test_zip_416_names_the_length(gw: Gateway) -> None:
    job, _, _ = await setup_job(gw, None, {"a.png": blob("a", 1_000)})
    size = len((await get(job["download"]["getUrl"])).body)
    r = await get(job["download"]["getUrl"], Range=f"bytes={size}-")
    assert r.status == 416
    assert r.headers.get("Content-Range") == f"bytes */{size}"


async def test_zip_with_nothing_clipped_is_404(gw: Gateway) -> None:
    job, _, _ = await setup_job(gw, {"a.jpg": b"A"})
    r = await get(job["download"]["getUrl"])
    assert_error(r, 404, "no_clipped_files")
    empty, _, _ = await setup_job(gw)
    assert_error(await get(with_query(empty["download"]["getUrl"], kind="original")), 404, "no_original_files")
    assert_error(await get(with_query(job["download"]["getUrl"], kind="thumbs")), 400, "invalid_parameter")


async def test_zip_of_originals_for_the_owner_and_processors(gw: Gateway) -> None:
    originals = {"a.jpg": blob("a", 20_000), "b.jpg": blob("b", 30_000)}
    job, _, p = await setup_job(gw, originals, {"a.png": b"clipped"})
    expected = {n: (len(d), md5(d), zipfile.ZIP_STORED) for n, d in originals.items()}
    urls = {"alice": with_query(job["download"]["getUrl"], kind="original"),
            "carol": with_query(await get_url_of(gw, job["id"], await gw.session("carol")), kind="original"),
            "pat": with_query(await get_url_of(gw, job["id"], p), kind="original")}
    bodies = []
    for login, url in urls.items():
        r = await get(url)
        assert r.status == 200, (login, r)
        assert r.headers["Content-Disposition"] == f'attachment; filename="job-{job["id"]}-original.zip"'
        assert zip_entries(r.body) == expected, login
        bodies.append(r.body)
    assert bodies[0] == bodies[1] == bodies[2]  # the bytes are fixed by the records, whoever asks
    # the processor's own getUrl gives the clipped zip by default
    assert set(zip_entries((await get(await get_url_of(gw, job["id"], p))).body)) == {"a.png"}


async def test_zip_refuses_bad_foreign_expired_and_ended_tokens(gw: Gateway) -> None:
    job, _s, _ = await setup_job(gw, None, {"a.png": b"clipped secret"})
    other, _, _ = await setup_job(gw, None, {"o.png": b"other"})
    url = job["download"]["getUrl"]
    token = query(url)["sessionID"]
    assert (await get(url)).status == 200
    for bad in ("garbage", token[:-1], "1-abc", query(other["download"]["getUrl"])["sessionID"]):
        assert_error(await get(with_query(url, sessionID=bad)), 401)
    for bad_url in (with_query(url, sessionID=""), with_query(url, centraljobid=99999),
                    with_query(url, centraljobid="x"), f"{gw.public_url}/ajax/DownloadZip.ashx"):
        assert_error(await get(bad_url), 404, "download_not_found")
    # a job id swapped into another job's link: that token is not for this job
    assert_error(await get(with_query(other["download"]["getUrl"], centraljobid=job["id"])), 401)
    bob = await principal_of(gw, await gw.session("bob"))
    assert_error(await get(with_query(url, sessionID=accounts.download_token(gw.secret, job["id"], bob))), 404,
                 "download_not_found")
    s2, s3 = await gw.session("alice"), await gw.session("alice")
    u2, u3 = await get_url_of(gw, job["id"], s2), await get_url_of(gw, job["id"], s3)
    assert (await get(u2)).status == 200 and (await get(u3)).status == 200
    await expire(gw, s2)
    await log_out(gw, s3)
    for dead in (u2, u3):
        r = await get(dead)
        assert_error(r, 401)
        assert not is_zip(r.body)


async def test_zip_lists_recorded_files_only(gw: Gateway, tmp_path: Path) -> None:
    """Temp files of running uploads, unrecorded files and links planted on disk are never in the zip."""
    job, _, _ = await setup_job(gw, None, {"a.png": b"recorded"})
    d = gw.job_dir(job, "CLIPPED")
    (d / ".gwtmp-0123456789abcdef01234567").write_bytes(b"half an upload")
    (d / "stray.png").write_bytes(b"put there by hand")
    (tmp_path / "secret").write_bytes(b"outside")
    (d / "link.png").symlink_to(tmp_path / "secret")
    (d / "dir").mkdir()
    (d / "dir" / "deep.png").symlink_to("/etc/hostname")
    r = await get(job["download"]["getUrl"])
    assert r.status == 200, r
    assert zip_entries(r.body) == {"a.png": (8, md5(b"recorded"), zipfile.ZIP_STORED)}


def change(path: Path, how: str) -> None:
    st = path.stat()
    if how == "bigger":
        with open(path, "ab") as fh:
            fh.write(b"+")
    elif how == "smaller":
        os.truncate(path, st.st_size // 2)
    elif how == "same size, other time":
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 5 * 10**9))
    elif how == "same size, other file":
        fresh = path.with_name("fresh")
        fresh.write_bytes(blob("other content", st.st_size))
        os.utime(fresh, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
        os.replace(fresh, path)
    elif how == "vanished":
        path.unlink()
    elif how == "a link":
        target = path.with_name("elsewhere")
        os.replace(path, target)
        path.symlink_to(target)
    else:
        raise AssertionError(how)


@pytest.mark.parametrize("how", ["bigger", "smaller", "same size, other time", "same size, other file", "vanished",
                                 "a link"])
async def test_zip_of_a_file_changed_before_the_download_is_an_error(gw: Gateway, how: str) -> None:
    job, _, _ = await setup_job(gw, None, {"a.png": blob("a", 50_000), "b.png": blob("b", 60_000)})
    assert (await get(job["download"]["getUrl"])).status == 200
    change(gw.job_dir(job, "CLIPPED") / "b.png", how)
    r = await get(job["download"]["getUrl"])
    if how == "a link":
        assert_error(r, 404)
    else:
        assert_error(r, 409, "files_changed")
    assert not is_zip(r.body)
    ranged = await get(job["download"]["getUrl"], Range="bytes=0-99")  # not even the first bytes
    assert ranged.status in (404, 409), ranged


async def read_all(raw: Raw, timeout: float = 20.0) -> bytes:
    """Everything until the server closes the connection (a reset counts as a close)."""
    out = bytearray()

    async def loop() -> None:
        try:
            while chunk := await raw.reader.read(1 << 20):
                out.extend(chunk)
        except (ConnectionResetError, BrokenPipeError):
            pass
    await asyncio.wait_for(loop(), timeout)
    return bytes(out)


@pytest.mark.parametrize(("which", "how"), [("z.bin", "smaller"), ("z.bin", "same size, other file"),
                                            ("z.bin", "vanished"), ("mid.bin", "bigger"),
                                            ("big.bin", "smaller")],
                         ids=["later entry truncated", "later entry replaced", "later entry removed",
                              "next entry grown", "entry being sent truncated"])
async def test_zip_aborts_when_a_file_changes_during_the_download(gw: Gateway, which: str, how: str) -> None:
    clipped = {"big.bin": blob("big", 20 * (1 << 20)), "mid.bin": blob("mid", 1 << 20), "z.bin": blob("z", 2 << 20)}
    job, _, _ = await setup_job(gw, None, clipped)
    raw = await Raw.open(gw)
    try:
        await raw.head("GET", job["download"]["getUrl"], [("Connection", "close")])
        status_line = await raw.reader.readline()
        assert status_line.startswith(b"HTTP/1.1 200"), status_line
        length = None
        while (line := await raw.reader.readline()) not in (b"\r\n", b""):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        assert length is not None and length > sum(len(d) for d in clipped.values())
        first = await raw.reader.readexactly(65_536)  # a slow reader: the server waits on the socket...
        change(gw.job_dir(job, "CLIPPED") / which, how)  # ...while the file changes under it
        rest = await read_all(raw)
    finally:
        await raw.close()
    received = first + rest
    assert len(received) < length, "the connection must be cut before Content-Length bytes"
    assert not is_zip(received)
    assert received[:4] == b"PK\x03\x04"
    # what is asked for next is refused before any byte is sent
    assert_error(await get(job["download"]["getUrl"]), 409, "files_changed")
