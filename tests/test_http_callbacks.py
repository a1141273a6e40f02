"""Finish callbacks: a job created with a callbackUrl is POSTed to it when a processor finishes it, signed
with the account's callback secret (printed by `gateway account create`, replaced by `account rotate-secret`),
retried with backoff after a failure and given up after a bound. The receiver is a real aiohttp server."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from conftest import Gateway, assert_error, free_port
from http_helpers import deliver, run, upload, wait_for

from gateway import accounts, jobs

AiohttpServer = Callable[..., Awaitable[TestServer]]


@dataclass
class Call:
    at: float
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    """A callback endpoint answering the given statuses in turn (then 200), recording every call."""

    statuses: list[int]
    url: str = ""
    calls: list[Call] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        self.calls.append(Call(time.monotonic(), request.method, request.path, dict(request.headers),
                               await request.read()))
        return web.Response(status=self.statuses.pop(0) if self.statuses else 200, text="ok")


async def receiver(aiohttp_server: AiohttpServer, *statuses: int) -> Receiver:
    rec = Receiver(list(statuses))
    app = web.Application()
    app.router.add_post("/hooks/job-finished", rec.handle)
    server = await aiohttp_server(app, host="127.0.0.1")
    rec.url = str(server.make_url("/hooks/job-finished"))
    return rec


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def secret_of(gw: Gateway, account: str) -> str:
    row = gw.query("select * from accounts where name = ?", [account])[0]
    return accounts.callback_secret(gw.secret, row)


def deliveries(gw: Gateway, job_id: int) -> list[dict[str, Any]]:
    return gw.query("select * from callbacks where job_id = ? order by id", [job_id])


async def finish(gw: Gateway, customer: str, job: dict[str, Any]) -> dict[str, Any]:
    """Upload an original, submit, deliver a clipped file and finish: the job body of the finish answer."""
    s, p = await gw.session(customer), await gw.session("pat")
    await upload(gw, job, [("a.jpg", b"original")])
    assert (await gw.call("POST", f"/jobs/{job['id']}/submit", session=s)).status == 200
    await deliver(gw, job["id"], p, [("a.png", b"clipped")])
    r = await gw.call("POST", f"/jobs/{job['id']}/finish", session=p)
    assert r.status == 200, r
    body: dict[str, Any] = r.json()
    return body


async def cli(gw: Gateway, *args: str, stdin: bytes | None = None) -> dict[str, Any]:
    done = await run(sys.executable, "-m", "gateway", "--config", str(gw.config_path), *args, stdin=stdin)
    assert done.rc == 0, done
    out: dict[str, Any] = json.loads(done.out)
    return out


async def test_signed_callback_is_retried_after_a_failure(gw: Gateway, aiohttp_server: AiohttpServer) -> None:
    rec = await receiver(aiohttp_server, 500)
    s = await gw.session("alice")
    job = await gw.create_job(s, callbackUrl=rec.url)
    assert job["callbackUrl"] == rec.url
    finished = await finish(gw, "alice", job)
    await wait_for(lambda: len(rec.calls) >= 2 and deliveries(gw, job["id"])[0]["state"] == "delivered",
                   timeout=10, every=0.05, what="the second delivery")
    [row] = deliveries(gw, job["id"])
    assert (row["state"], row["attempts"], row["url"], row["last_error"]) == ("delivered", 2, rec.url, None)
    secret = secret_of(gw, "acme")
    assert secret != secret_of(gw, "globex")
    for call in rec.calls:
        assert (call.method, call.path) == ("POST", "/hooks/job-finished")
        assert call.headers["Content-Type"] == "application/json"
        assert call.headers["X-Gateway-Event"] == "job.finished"
        assert call.headers["X-Gateway-Delivery"] == str(row["id"])
        assert call.headers["X-Gateway-Signature"] == sign(secret, call.body)
        assert call.headers["X-Gateway-Signature"] != sign(secret_of(gw, "globex"), call.body)
        body = call.json()
        assert body["_type"] == "JobFinishedCallbackBody"
        assert (body["id"], body["status"], body["name"]) == (job["id"], "CJ_FINISHED", job["name"])
        assert body["statusHistory"] == finished["statusHistory"]
        assert (body["originalCount"], body["clippedCount"]) == (1, 1)
        assert body["callbackUrl"] == rec.url
        # a callback carries no capability: no upload key, no download token
        assert body["upload"]["postUrl"] is None and body["download"]["getUrl"] is None
        assert "accountID=" not in call.body.decode() and "sessionID=" not in call.body.decode()
    assert rec.calls[1].at - rec.calls[0].at >= 0.9  # backoff before the retry
    quiet_until = time.monotonic() + 0.7
    while time.monotonic() < quiet_until:  # delivered: never sent again
        assert len(rec.calls) == 2
        await asyncio.sleep(0.1)


async def test_account_create_prints_the_signing_secret_and_rotate_replaces_it(
        gw: Gateway, aiohttp_server: AiohttpServer) -> None:
    rec = await receiver(aiohttp_server)
    created = await cli(gw, "account", "create", "zeta")
    first_secret = created["callbackSecret"]
    assert first_secret == secret_of(gw, "zeta")
    await cli(gw, "user", "create", "--login", "zed", "--password-stdin", "--account", "zeta",
              stdin=b"zed-password-123\n")
    s = await gw.session("zed")
    job1 = await gw.create_job(s, callbackUrl=rec.url)
    await finish(gw, "zed", job1)
    await wait_for(lambda: len(rec.calls) == 1, timeout=10, what="the first callback")
    assert rec.calls[0].headers["X-Gateway-Signature"] == sign(first_secret, rec.calls[0].body)

    rotated = await cli(gw, "account", "rotate-secret", "zeta")
    second_secret = rotated["callbackSecret"]
    assert (rotated["id"], rotated["name"]) == (created["id"], "zeta")
    assert second_secret != first_secret and second_secret == secret_of(gw, "zeta")
    job2 = await gw.create_job(s, callbackUrl=rec.url)
    await finish(gw, "zed", job2)
    await wait_for(lambda: len(rec.calls) == 2, timeout=10, what="the second callback")
    call = rec.calls[1]
    assert call.json()["id"] == job2["id"]
    assert call.headers["X-Gateway-Signature"] == sign(second_secret, call.body)
    assert call.headers["X-Gateway-Signature"] != sign(first_secret, call.body)


async def test_an_unreachable_receiver_is_retried_then_given_up(gw: Gateway) -> None:
    url = f"http://127.0.0.1:{free_port()}/nobody-listens"
    s = await gw.session("alice")
    job = await gw.create_job(s, callbackUrl=url)
    await finish(gw, "alice", job)
    await wait_for(lambda: deliveries(gw, job["id"])[0]["attempts"] == 1, timeout=10, what="the first attempt")
    [row] = deliveries(gw, job["id"])
    assert row["state"] == "pending" and row["last_error"]
    assert row["next_at"] > time.time()  # a retry is planned, later
    # the backoff doubles up to minutes: skip the waiting, as if the last but one attempt failed just now
    await gw.write(lambda db: db.execute("update callbacks set attempts = ?, next_at = 0 where id = ?",
                                         [jobs.CALLBACK_MAX_ATTEMPTS - 1, row["id"]]))
    await wait_for(lambda: deliveries(gw, job["id"])[0]["state"] == "failed", timeout=10, what="giving up")
    [row] = deliveries(gw, job["id"])
    assert row["attempts"] == jobs.CALLBACK_MAX_ATTEMPTS and row["last_error"]
    j = await gw.call("GET", f"/jobs/{job['id']}", session=s)
    assert j.json()["status"] == "CJ_FINISHED"  # a failing receiver never changes the job


async def test_no_callback_without_a_url_or_without_a_finish(gw: Gateway, aiohttp_server: AiohttpServer) -> None:
    rec = await receiver(aiohttp_server)
    s, p = await gw.session("alice"), await gw.session("pat")
    plain = await gw.create_job(s)
    assert plain["callbackUrl"] is None
    await finish(gw, "alice", plain)
    refused = await gw.create_job(s, callbackUrl=rec.url)
    await upload(gw, refused, [("a.jpg", b"A")])
    assert (await gw.call("POST", f"/jobs/{refused['id']}/submit", session=s)).status == 200
    assert_error(await gw.call("POST", f"/jobs/{refused['id']}/finish", session=p), 409, "no_clipped_files")
    await asyncio.sleep(1.1)  # more than two polls of the delivery loop
    assert gw.query("select * from callbacks") == []
    assert rec.calls == []


BAD_URLS = ["ftp://example.com/hook", "example.com/hook", "/relative/hook", "http://", "https:///path",
            "javascript:alert(1)", "file:///etc/passwd", "http://exa mple.com/", "http://example.com:99999/",
            "http://example.com:-1/", "http://ex\u00e4mple.com/", "http://example.com/\x00", "http://example.com/\n",
            "http://" + "a" * 2000 + ".com/", 42, True, ["http://example.com/"], {"url": "http://example.com/"}]


@pytest.mark.parametrize("url", BAD_URLS, ids=[repr(u)[:30] for u in BAD_URLS])
async def test_an_invalid_callback_url_is_400(gw: Gateway, url: Any) -> None:
    s = await gw.session("alice")
    r = await gw.post_job(s, {"name": "n", "description": "d", "callbackUrl": url})
    assert_error(r, 400, "invalid_parameter", parameterName="callbackUrl")
    assert gw.query("select count(*) as n from jobs")[0]["n"] == 0


@pytest.mark.parametrize("url", ["http://127.0.0.1:9/hook", "https://hooks.example.com/jobs?token=abc",
                                 "HTTPS://Example.COM", "http://[::1]:8080/x"])
async def test_a_valid_callback_url_is_kept(gw: Gateway, url: str) -> None:
    s = await gw.session("alice")
    job = await gw.create_job(s, callbackUrl=url)
    assert job["callbackUrl"] == url
    got = await gw.call("GET", f"/jobs/{job['id']}", session=s)
    assert got.json()["callbackUrl"] == url
