"""Finish callbacks: POST the finished job to its callbackUrl, signed, with retries and backoff."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time

import aiohttp
from aiohttp import web

from gateway import accounts, jobs
from gateway.api.jobs import job_body
from gateway.api.keys import DB, SECRET, WRITER

log = logging.getLogger("gateway.callbacks")
POLL_EVERY = 0.5
TIMEOUT = 10.0


def signature(secret: str, body: bytes) -> str:
    """X-Gateway-Signature: sha256=<hex HMAC-SHA256 of the raw body, keyed by the account's callback secret>."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


async def deliver_once(app: web.Application, http: aiohttp.ClientSession, cb: dict[str, object]) -> str:
    db = app[DB]
    job = jobs.get_job(db, int(str(cb["job_id"])))
    error: str | None = None
    if job is None:
        error = "job gone"
    else:
        account = accounts.get_account(db, job["account_id"])
        body = json.dumps(job_body(app, job, None, "JobFinishedCallbackBody")).encode()
        headers = {"Content-Type": "application/json", "X-Gateway-Event": "job.finished",
                   "X-Gateway-Delivery": str(cb["id"]),
                   "X-Gateway-Signature": signature(accounts.callback_secret(app[SECRET], account), body)}
        try:
            async with http.post(str(cb["url"]), data=body, headers=headers, allow_redirects=False) as resp:
                if not 200 <= resp.status < 300:
                    error = f"HTTP {resp.status}"
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            error = f"{type(e).__name__}: {e}"
    state = await app[WRITER].run(jobs.callback_attempted, int(str(cb["id"])), error)
    if state == "delivered":
        log.info("callback for job %s delivered to %s", cb["job_id"], cb["url"])
    elif state == "failed":
        log.warning("callback for job %s to %s gave up after %s attempts: %s", cb["job_id"], cb["url"],
                    jobs.CALLBACK_MAX_ATTEMPTS, error)
    else:
        log.info("callback for job %s to %s failed (%s); will retry", cb["job_id"], cb["url"], error)
    return state


async def deliver_callbacks(app: web.Application) -> None:
    """Runs for the app's lifetime: deliver what is due, twice a second."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as http:
        while True:
            await asyncio.sleep(POLL_EVERY)
            try:
                for cb in jobs.due_callbacks(app[DB], time.time()):
                    await deliver_once(app, http, cb)
            except Exception:
                log.exception("callback delivery failed")
