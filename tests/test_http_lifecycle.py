"""The job lifecycle over HTTP: CJ_PREPROCESS -> CJ_WORK_PROGRESS (the customer submits) -> CJ_FINISHED (a
processor finishes) -> CJ_ARCHIVED (the sweep, retention_days after finishing), who may move a job, what each
status allows, the history with time and actor, and what is left of a job once it is archived."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from conftest import Gateway, GatewayFactory, assert_error
from http_helpers import (
    blob,
    clip,
    deliver,
    disk,
    fetch,
    files_api,
    md5,
    need,
    post_files,
    records,
    run,
    temps,
    upload,
    wait_for,
    zip_entries,
)

ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
ARCHIVE_FAST = {"jobs.retention_days": 1e-5}  # 0.86 s; the sweep then runs every 0.25 s


async def job_of(gw: Gateway, job_id: int, session: str) -> dict[str, Any]:
    r = await gw.call("GET", f"/jobs/{job_id}", session=session)
    assert r.status == 200, r
    body: dict[str, Any] = r.json()
    assert body["_type"] == "GetJobResponseBody"
    return body


def history(job: dict[str, Any]) -> list[tuple[str, str]]:
    for event in job["statusHistory"]:
        assert ISO.match(event["at"]), event
    ats = [e["at"] for e in job["statusHistory"]]
    assert ats == sorted(ats)
    return [(e["status"], e["actor"]) for e in job["statusHistory"]]


async def move(gw: Gateway, job_id: int, action: str, session: str) -> Any:
    return await gw.call("POST", f"/jobs/{job_id}/{action}", session=session)


async def test_the_whole_lifecycle_from_creation_to_archive(gateway_factory: GatewayFactory, tmp_path: Path) -> None:
    curl = need("curl")
    gw = await gateway_factory(ARCHIVE_FAST)
    s, p = await gw.session("alice"), await gw.session("pat")
    job = await gw.create_job(s)
    jid = job["id"]
    assert job["status"] == "CJ_PREPROCESS"
    j = await job_of(gw, jid, s)
    assert history(j) == [("CJ_PREPROCESS", "alice")]
    assert (j["originalCount"], j["clippedCount"]) == (0, 0)

    # a job is submitted with at least one original
    assert_error(await move(gw, jid, "submit", s), 409, "no_original_files")
    originals = {"apple.jpg": blob("apple", 120_000), "banana.jpg": blob("banana", 40_000)}
    for name, data in originals.items():
        (tmp_path / name).write_bytes(data)
    done = await run(curl, "-sS", "-F", "file=@apple.jpg", "-F", "file=@banana.jpg", "-o", "/dev/null",
                     "-w", "%{http_code}", job["upload"]["postUrl"], cwd=tmp_path)
    assert done.out == b"201", done
    assert (await job_of(gw, jid, s))["originalCount"] == 2

    # customers submit, processors finish; nobody else moves the job
    assert_error(await move(gw, jid, "submit", p), 403)
    assert_error(await move(gw, jid, "submit", await gw.session("bob")), 404, "job_not_found")
    assert_error(await move(gw, jid, "finish", s), 403)
    assert_error(await move(gw, jid, "finish", p), 409, "invalid_status")
    # processors may deliver from creation on
    await deliver(gw, jid, p, [("apple.png", blob("apple-png", 90_000))])

    r = await move(gw, jid, "submit", s)
    assert r.status == 200, r
    assert r.json()["status"] == "CJ_WORK_PROGRESS" and r.json()["_type"] == "GetJobResponseBody"
    # originals are frozen from now on
    assert_error(await post_files(job["upload"]["postUrl"], [("late.jpg", b"late")]), 409,
                 "job_not_accepting_uploads")
    assert_error(await move(gw, jid, "submit", s), 409, "invalid_status")
    assert_error(await move(gw, jid, "finish", await gw.session("carol")), 403)
    await deliver(gw, jid, p, [("banana.png", blob("banana-png", 30_000))])
    z = await fetch("GET", job["download"]["getUrl"])
    assert z.status == 200 and set(zip_entries(z.body)) == {"apple.png", "banana.png"}

    r = await move(gw, jid, "finish", p)
    assert r.status == 200, r
    finished = r.json()
    assert finished["status"] == "CJ_FINISHED"
    assert (finished["originalCount"], finished["clippedCount"]) == (2, 2)
    assert history(finished) == [("CJ_PREPROCESS", "alice"), ("CJ_WORK_PROGRESS", "alice"), ("CJ_FINISHED", "pat")]

    # retention_days after finishing the sweep archives the job
    async def archived() -> dict[str, Any] | None:
        j = await job_of(gw, jid, s)
        return j if j["status"] == "CJ_ARCHIVED" else None
    j = await wait_for(archived, timeout=10, every=0.1, what="the job to be archived")
    assert history(j) == [("CJ_PREPROCESS", "alice"), ("CJ_WORK_PROGRESS", "alice"), ("CJ_FINISHED", "pat"),
                          ("CJ_ARCHIVED", "retention")]
    # the record stays, the files are gone (from disk and from the file records)
    assert (j["id"], j["name"], j["description"]) == (jid, job["name"], job["description"])
    assert gw.query("select archived_at from jobs where id = ?", [jid])[0]["archived_at"]
    for kind in ("ORIGINAL", "CLIPPED"):
        assert gw.job_dir(job, kind).is_dir()
        assert list(gw.job_dir(job, kind).iterdir()) == []
    # the file records stay (old download links answer 410, not 404), but nothing is listed or counted
    assert set(records(gw, jid)) == {"apple.jpg", "banana.jpg", "apple.png", "banana.png"}
    assert (j["originalCount"], j["clippedCount"]) == (0, 0)
    assert await files_api(gw, jid, s) == []
    listed = await gw.call("GET", "/jobs?status=CJ_ARCHIVED", session=s)
    assert [x["id"] for x in listed.json()["jobs"]] == [jid]
    # and every way in answers 410
    assert_error(await post_files(job["upload"]["postUrl"], [("late.jpg", b"late")]), 410, "job_archived")
    assert_error(await fetch("GET", job["download"]["getUrl"]), 410, "job_archived")
    assert_error(await fetch("GET", job["download"]["getUrl"] + "&kind=original"), 410, "job_archived")
    assert_error(await clip(gw, jid, p, [("late.png", b"late")]), 410, "job_archived")
    assert_error(await move(gw, jid, "submit", s), 410, "job_archived")
    assert_error(await move(gw, jid, "finish", p), 410, "job_archived")
    assert temps(gw, job) == []


async def test_transitions_and_what_each_status_allows(gw: Gateway) -> None:
    s, p = await gw.session("alice"), await gw.session("pat")
    job = await gw.create_job(s)
    jid = job["id"]
    await upload(gw, job, [("a.jpg", b"AAA")])
    assert assert_error(await move(gw, jid, "finish", p), 409, "invalid_status")["status"] == "CJ_PREPROCESS"
    assert (await move(gw, jid, "submit", s)).status == 200
    assert_error(await move(gw, jid, "finish", p), 409, "no_clipped_files")
    assert (await job_of(gw, jid, s))["status"] == "CJ_WORK_PROGRESS"  # the refused finish changed nothing
    await deliver(gw, jid, p, [("a.png", b"PNG")])
    r = await move(gw, jid, "finish", p)
    assert r.status == 200 and r.json()["status"] == "CJ_FINISHED"
    # CLIPPED is frozen, and a finished job moves no further by hand
    assert_error(await clip(gw, jid, p, [("b.png", b"late")]), 409, "job_not_accepting_uploads")
    assert_error(await clip(gw, jid, p, [("a.png", b"replaced")]), 409, "job_not_accepting_uploads")
    assert assert_error(await move(gw, jid, "finish", p), 409, "invalid_status")["status"] == "CJ_FINISHED"
    assert assert_error(await move(gw, jid, "submit", s), 409, "invalid_status")["status"] == "CJ_FINISHED"
    assert_error(await post_files(job["upload"]["postUrl"], [("b.jpg", b"late")]), 409, "job_not_accepting_uploads")
    j = await job_of(gw, jid, s)
    assert history(j) == [("CJ_PREPROCESS", "alice"), ("CJ_WORK_PROGRESS", "alice"), ("CJ_FINISHED", "pat")]
    assert disk(gw, job, "ORIGINAL") == {"a.jpg": md5(b"AAA")} and disk(gw, job, "CLIPPED") == {"a.png": md5(b"PNG")}
    # the finished job's files stay downloadable until it is archived
    z = await fetch("GET", job["download"]["getUrl"])
    assert z.status == 200 and zip_entries(z.body)["a.png"][1] == md5(b"PNG")
    # processors see the job, but get no upload link for originals
    as_pat = await job_of(gw, jid, p)
    assert as_pat["upload"]["postUrl"] is None and as_pat["download"]["getUrl"]
    assert_error(await move(gw, 99999, "submit", s), 404, "job_not_found")


async def test_submit_and_finish_need_their_tokens(gw: Gateway) -> None:
    s = await gw.session("alice")
    job = await gw.create_job(s)
    await upload(gw, job, [("a.jpg", b"A")])
    assert_error(await gw.call("POST", f"/jobs/{job['id']}/submit"), 400, "missing_header")
    assert_error(await gw.call("POST", f"/jobs/{job['id']}/submit", session="stale"), 401)
    assert_error(await gw.call("POST", f"/jobs/{job['id']}/submit", session=s, data=b"<x/>",
                               content_type="application/xml"), 415)
    assert (await job_of(gw, job["id"], s))["status"] == "CJ_PREPROCESS"


async def test_a_file_link_of_an_archived_job_answers_410(gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory(ARCHIVE_FAST)
    s, p = await gw.session("alice"), await gw.session("pat")
    job = await gw.create_job(s)
    await upload(gw, job, [("a.jpg", b"A")])
    assert (await move(gw, job["id"], "submit", s)).status == 200
    await deliver(gw, job["id"], p, [("a.png", b"P")])
    links = [f["downloadUrl"] for f in await files_api(gw, job["id"], s)]
    assert (await move(gw, job["id"], "finish", p)).status == 200

    async def archived() -> bool:
        return bool((await job_of(gw, job["id"], s))["status"] == "CJ_ARCHIVED")
    await wait_for(archived, timeout=10, every=0.1)
    for url in links:
        assert_error(await fetch("GET", url), 410, "job_archived")
