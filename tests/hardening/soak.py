#!/usr/bin/env python3
"""Soak: minutes of mixed load on loopback against a real `gateway serve`, with its RSS sampled.

Not collected by pytest (run by `make soak`, or `.venv/bin/python tests/hardening/soak.py --minutes 0.5`).

What runs at once, for --minutes (default 10):
  * 200 FTP sessions (--ftp-sessions) held open from 127.0.0.11-14, half per-job users and half the
    customer's login, mostly idle, each sending NOOP or LIST every 5-20 s;
  * job creation by the customer over HTTP;
  * originals uploaded by FTP (STOR, account and per-job logins, checked by HASH) and by HTTP
    (multipart to the postUrl, checked by the md5s in the answer);
  * jobs submitted by the customer, clipped files delivered by the processor (FTP and HTTP), jobs
    finished;
  * zip downloads (getUrl) and single-file downloads of finished jobs, every entry's md5 checked.
Every transfer that fails or returns wrong bytes counts as a failure. At the end every upload that
was answered complete is looked up in the files API (size and md5). The server's RSS, threads and
open descriptors are sampled every few seconds; after the warm-up (the first 20 % of the run, at
least 20 s) the RSS must stay flat: last <= first + max(16 MiB, 10 %).

Exit status 0 when there were no failures and the RSS was flat; the summary is printed either way.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ftplib
import hashlib
import io
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

JSON = "application/json"
IDLE_SOURCES = ("127.0.0.11", "127.0.0.12", "127.0.0.13", "127.0.0.14")
MiB = 1 << 20


# ----------------------------------------------------------------------------- set-up


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}


def write_config(folder: Path, http_port: int, ftp_port: int) -> Path:
    base = random.randrange(40000, 58000, 1000)
    text = f"""bootstrap_demo = false

[http]
host = "127.0.0.1"
port = {http_port}

[ftp]
host = "127.0.0.1"
port = {ftp_port}
passive_ports = "{base}-{base + 999}"
max_cons = 1024
idle_timeout = 120

[storage]
root = "{folder / 'storage_root'}"
min_free_bytes = {256 * MiB}

[database]
path = "{folder / 'db' / 'gateway.db'}"

[security]
login_failures = 1000

[server]
shutdown_grace = 5
"""
    path = folder / "config.toml"
    path.write_text(text, encoding="utf-8")
    return path


def admin(config: Path, *args: str, stdin: str | None = None) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-m", "gateway", "--config", str(config), *args], input=stdin,
                         capture_output=True, text=True, env=clean_env(), timeout=60, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"gateway {' '.join(args)}: {out.stderr}")
    return dict(json.loads(out.stdout))


# ----------------------------------------------------------------------------- shared state


@dataclass
class Job:
    id: int
    day: str
    ftp_user: str
    ftp_password: str
    post_url: str
    get_url: str
    originals: dict[str, str] = field(default_factory=dict)  # name -> md5 of uploads answered complete
    clipped: dict[str, str] = field(default_factory=dict)
    state: str = "open"  # open -> closing -> submitted -> finished
    busy: int = 0  # uploads running into it

    def vdir(self, kind: str) -> str:
        return f"/{self.day}/{self.id}/{kind}"


class Stats:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.ok: Counter[str] = Counter()
        self.failed: Counter[str] = Counter()
        self.bytes_up = 0
        self.bytes_down = 0
        self.errors: list[str] = []

    def success(self, what: str, up: int = 0, down: int = 0) -> None:
        with self.lock:
            self.ok[what] += 1
            self.bytes_up += up
            self.bytes_down += down

    def failure(self, what: str, detail: str) -> None:
        with self.lock:
            self.failed[what] += 1
            if len(self.errors) < 20:
                self.errors.append(f"{time.strftime('%H:%M:%S')} {what}: {detail}")


class World:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.jobs: list[Job] = []
        self.stop = threading.Event()

    def pick(self, state: str, claim: bool = False) -> Job | None:
        with self.lock:
            choices = [j for j in self.jobs[-40:] if j.state == state]
            if not choices:
                return None
            job = random.choice(choices)
            if claim:
                job.busy += 1
            return job

    def release(self, job: Job) -> None:
        with self.lock:
            job.busy -= 1


def payload(min_size: int = 8 << 10, max_size: int = 768 << 10) -> tuple[bytes, str]:
    data = os.urandom(random.randint(min_size, max_size))
    return data, hashlib.md5(data, usedforsecurity=False).hexdigest()


def unique(ext: str) -> str:
    return f"p-{os.urandom(6).hex()}.{ext}"


# ----------------------------------------------------------------------------- the server's footprint


@dataclass
class Sample:
    t: float
    rss_kib: int
    threads: int
    fds: int


def sample(pid: int, t0: float) -> Sample | None:
    try:
        fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                      if ":" in line)
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except (OSError, ValueError):
        return None
    return Sample(time.monotonic() - t0, int(fields["VmRSS"].split()[0]), int(fields["Threads"]), fds)


# ----------------------------------------------------------------------------- FTP workers (threads)


def ftp_connect(port: int, user: str, password: str, source: str | None = None) -> ftplib.FTP:
    f = ftplib.FTP(timeout=30)
    try:
        f.connect("127.0.0.1", port, timeout=30, source_address=(source, 0) if source else None)
        f.login(user, password)
        f.sendcmd("TYPE I")
    except BaseException:
        f.close()
        raise
    return f


def ftp_close(f: ftplib.FTP) -> None:
    with contextlib.suppress(OSError, EOFError, ftplib.Error):
        f.quit()
    f.close()


def idle_sessions(port: int, world: World, stats: Stats, creds: list[tuple[str, str, str, str]],
                  held: list[int]) -> None:
    """Hold a group of sessions open; each wakes every 5-20 s for a NOOP (4 in 5) or a LIST."""
    sessions: list[tuple[ftplib.FTP | None, float, tuple[str, str, str, str]]] = []
    for c in creds:
        try:
            sessions.append((ftp_connect(port, c[0], c[1], c[2]), time.monotonic() + random.uniform(1, 20), c))
        except (OSError, EOFError, ftplib.Error) as e:
            stats.failure("ftp idle login", f"{c[0]} from {c[2]}: {e}")
            sessions.append((None, 0.0, c))
    with world.lock:
        held[0] += sum(1 for s in sessions if s[0] is not None)
    try:
        while not world.stop.wait(0.2):
            now = time.monotonic()
            for i, (f, due, c) in enumerate(sessions):
                if f is None or due > now or world.stop.is_set():
                    continue
                try:
                    if random.random() < 0.8:
                        f.voidcmd("NOOP")
                        stats.success("ftp NOOP")
                    else:
                        lines: list[str] = []
                        f.retrlines(f"LIST {c[3]}", lines.append)
                        stats.success("ftp LIST")
                except (OSError, EOFError, ftplib.Error) as e:
                    stats.failure("ftp idle session", f"{c[0]}: {e!r}")
                    ftp_close(f)
                    try:
                        f = ftp_connect(port, c[0], c[1], c[2])
                    except (OSError, EOFError, ftplib.Error):
                        f = None
                sessions[i] = (f, now + random.uniform(5, 20), c)
    finally:
        for f, _, _ in sessions:
            if f is not None:
                ftp_close(f)


def ftp_uploader(port: int, world: World, stats: Stats, alice_password: str, pat_password: str,
                 role: str) -> None:
    """STOR originals (customer or per-job login) or clipped files (processor), each checked by HASH."""
    while not world.stop.is_set():
        job = world.pick("open" if role != "processor" else "submitted", claim=True)
        if job is None:
            world.stop.wait(0.5)
            continue
        kind = "CLIPPED" if role == "processor" else "ORIGINAL"
        if role == "processor":
            user, password = "pat", pat_password
        elif role == "job":
            user, password = job.ftp_user, job.ftp_password
        else:
            user, password = "alice", alice_password
        name = unique("png" if kind == "CLIPPED" else "jpg")
        data, md5 = payload()
        try:
            f = ftp_connect(port, user, password)
            try:
                reply = f.storbinary(f"STOR {job.vdir(kind)}/{name}", io.BytesIO(data))
                hashed = f.sendcmd(f"HASH {job.vdir(kind)}/{name}")
            finally:
                ftp_close(f)
            if not reply.startswith("226") or md5 not in hashed:
                raise RuntimeError(f"{reply!r} / {hashed!r} (md5 {md5})")
            with world.lock:
                (job.clipped if kind == "CLIPPED" else job.originals)[name] = md5
            stats.success(f"ftp STOR {kind.lower()}", up=len(data))
        except (OSError, EOFError, ftplib.Error, RuntimeError) as e:
            stats.failure(f"ftp STOR {kind.lower()}", f"job {job.id} {name} as {user}: {e!r}")
        finally:
            world.release(job)
        world.stop.wait(random.uniform(0.1, 0.6))


# ----------------------------------------------------------------------------- HTTP workers (tasks)


class Api:
    def __init__(self, session: aiohttp.ClientSession, base: str, client_token: str) -> None:
        self.s, self.base, self.client = session, base, client_token

    async def call(self, method: str, path: str, token: str, **kw: Any) -> tuple[int, Any]:
        headers = {"Accept": JSON, "X-Client-Token": self.client, "X-Session-Token": token, **kw.pop("headers", {})}
        async with self.s.request(method, self.base + path, headers=headers, **kw) as r:
            body = await r.read()
            return r.status, (json.loads(body) if r.content_type == JSON else body)


def multipart(files: list[tuple[str, bytes]]) -> aiohttp.FormData:
    form = aiohttp.FormData()
    for name, data in files:
        form.add_field("file", data, filename=name, content_type="application/octet-stream")
    return form


async def job_creator(api: Api, alice: str, world: World, stats: Stats, every: float) -> None:
    n = 0
    while not world.stop.is_set():
        n += 1
        status, body = await api.call("POST", "/jobs", alice, json={"name": f"soak {n}", "description": "soak"})
        if status != 201:
            stats.failure("create job", f"{status} {body!r:.200}")
        else:
            stats.success("create job")
            with world.lock:
                world.jobs.append(Job(body["id"], body["createdDate"][:10].replace("-", ""),
                                      body["upload"]["ftpUsername"], body["upload"]["ftpPassword"],
                                      body["upload"]["postUrl"], body["download"]["getUrl"]))
        await asyncio.sleep(every)


async def http_uploader(api: Api, world: World, stats: Stats, pat: str, role: str) -> None:
    while not world.stop.is_set():
        job = world.pick("open" if role == "customer" else "submitted", claim=True)
        if job is None:
            await asyncio.sleep(0.5)
            continue
        files = [(unique("jpg" if role == "customer" else "png"), *payload()) for _ in range(random.randint(1, 3))]
        what = "http POST original" if role == "customer" else "http POST clipped"
        try:
            form = multipart([(n, d) for n, d, _ in files])
            if role == "customer":
                async with api.s.post(job.post_url, data=form) as r:
                    status, body = r.status, await r.json(content_type=None)
            else:
                status, body = await api.call("POST", f"/jobs/{job.id}/clipped", pat, data=form)
            got = {f["fileName"]: f["mD5"] for f in body.get("files", [])} if isinstance(body, dict) else {}
            want = {n: m for n, _, m in files}
            if status != 201 or got != want:
                stats.failure(what, f"job {job.id}: {status} {body!r:.300}")
            else:
                with world.lock:
                    (job.originals if role == "customer" else job.clipped).update(want)
                stats.success(what, up=sum(len(d) for _, d, _ in files))
        except (aiohttp.ClientError, TimeoutError, ValueError) as e:
            stats.failure(what, f"job {job.id}: {e!r}")
        finally:
            world.release(job)
        await asyncio.sleep(random.uniform(0.1, 0.6))


async def lifecycle(api: Api, alice: str, pat: str, world: World, stats: Stats) -> None:
    """Submit open jobs with a few originals (once no upload runs into them); finish delivered ones."""
    while not world.stop.is_set():
        await asyncio.sleep(1.0)
        with world.lock:
            open_jobs = [j for j in world.jobs if j.state == "open"]
            ready = [j for j in open_jobs[:-6] if len(j.originals) >= 2 and j.busy == 0]
            to_submit = ready[0] if ready else None
            if to_submit is not None:
                to_submit.state = "closing"
            delivered = [j for j in world.jobs if j.state == "submitted" and len(j.clipped) >= 3 and j.busy == 0]
            to_finish = delivered[0] if delivered else None
            if to_finish is not None:
                to_finish.state = "finishing"
        if to_submit is not None:
            status, body = await api.call("POST", f"/jobs/{to_submit.id}/submit", alice)
            if status == 200:
                stats.success("submit")
            else:
                stats.failure("submit", f"job {to_submit.id}: {status} {body!r:.200}")
            to_submit.state = "submitted"
        if to_finish is not None:
            status, body = await api.call("POST", f"/jobs/{to_finish.id}/finish", pat)
            if status == 200:
                stats.success("finish")
            else:
                stats.failure("finish", f"job {to_finish.id}: {status} {body!r:.200}")
            to_finish.state = "finished"


async def downloader(api: Api, alice: str, world: World, stats: Stats) -> None:
    """Zip of a finished job (every entry's md5), and now and then one file by its DownloadBin link."""
    while not world.stop.is_set():
        job = world.pick("finished")
        if job is None:
            await asyncio.sleep(0.5)
            continue
        try:
            async with api.s.get(job.get_url) as r:
                body = await r.read()
                length = r.content_length
            if r.status != 200 or length != len(body):
                raise RuntimeError(f"{r.status}, {len(body)} bytes of {length}")
            with zipfile.ZipFile(io.BytesIO(body)) as z:
                got = {i.filename: hashlib.md5(z.read(i), usedforsecurity=False).hexdigest() for i in z.infolist()}
            if got != job.clipped:
                raise RuntimeError(f"zip entries differ: {sorted(got)} vs {sorted(job.clipped)}")
            stats.success("zip download", down=len(body))
        except (aiohttp.ClientError, TimeoutError, RuntimeError, zipfile.BadZipFile, KeyError) as e:
            stats.failure("zip download", f"job {job.id}: {e!r}")
        if random.random() < 0.3:
            try:
                _, body = await api.call("GET", f"/jobs/{job.id}/files?kind=original", alice)
                f = random.choice(body["files"])
                async with api.s.get(f["downloadUrl"]) as r:
                    data = await r.read()
                md5 = hashlib.md5(data, usedforsecurity=False).hexdigest()
                if r.status != 200 or md5 != job.originals[f["fileName"]]:
                    raise RuntimeError(f"{r.status}, md5 differs for {f['fileName']}")
                stats.success("file download", down=len(data))
            except (aiohttp.ClientError, TimeoutError, RuntimeError, KeyError, IndexError, TypeError) as e:
                stats.failure("file download", f"job {job.id}: {e!r}")
        await asyncio.sleep(random.uniform(0.2, 1.0))


async def verify_everything(api: Api, alice: str, world: World, stats: Stats) -> int:
    """Every upload answered complete is in the files API with its md5; returns how many were checked."""
    checked = 0
    for job in list(world.jobs):
        status, body = await api.call("GET", f"/jobs/{job.id}/files", alice)
        if status != 200:
            stats.failure("final check", f"job {job.id}: {status}")
            continue
        recorded = {(f["isOriginal"], f["fileName"]): f["mD5"] for f in body["files"]}
        for original, files in ((True, job.originals), (False, job.clipped)):
            for name, md5 in files.items():
                checked += 1
                if recorded.get((original, name)) != md5:
                    stats.failure("final check", f"job {job.id} {name}: recorded {recorded.get((original, name))}")
    return checked


# ----------------------------------------------------------------------------- the run


def rss_verdict(samples: list[Sample], warmup: float) -> tuple[str, dict[str, float]]:
    after = [s for s in samples if s.t >= warmup]
    if len(after) < 3:
        return "UNKNOWN (too few samples after warm-up)", {}
    first, last = after[0].rss_kib / 1024, after[-1].rss_kib / 1024
    peak = max(s.rss_kib for s in after) / 1024
    ts = [s.t / 60 for s in after]
    rs = [s.rss_kib / 1024 for s in after]
    slope = statistics.linear_regression(ts, rs).slope if len(set(ts)) > 1 else 0.0
    allowed = max(16.0, first * 0.10)
    verdict = "FLAT" if last <= first + allowed else "GROWING"
    return verdict, {"first": first, "last": last, "max": peak, "slope": slope, "allowed": allowed}


async def run(args: argparse.Namespace, folder: Path) -> int:
    http_port, ftp_port = free_port(), free_port()
    config = write_config(folder, http_port, ftp_port)
    alice_pw, pat_pw = f"alice-{os.urandom(8).hex()}", f"pat-{os.urandom(8).hex()}"
    admin(config, "account", "create", "acme")
    admin(config, "user", "create", "--login", "alice", "--password-stdin", "--account", "acme", stdin=alice_pw)
    admin(config, "user", "create", "--login", "pat", "--password-stdin", "--processor", stdin=pat_pw)
    client = admin(config, "client", "create", "soak")["token"]

    out, err = open(folder / "serve.stdout", "wb"), open(folder / "serve.stderr", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "--config", str(config), "serve"],
                            stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=clean_env(), start_new_session=True)
    world, stats = World(), Stats()
    samples: list[Sample] = []
    threads: list[threading.Thread] = []
    duration = args.minutes * 60
    warmup = max(20.0, duration * 0.2)
    held = [0]
    t0 = time.monotonic()
    try:
        base = f"http://127.0.0.1:{http_port}"
        connector = aiohttp.TCPConnector(limit=64)
        timeout = aiohttp.ClientTimeout(total=120)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as s:
            for _ in range(300):
                with contextlib.suppress(aiohttp.ClientError):
                    async with s.get(base + "/health") as r:
                        if r.status == 200:
                            break
                if proc.poll() is not None:
                    raise RuntimeError(f"serve exited: {(folder / 'serve.stderr').read_text()[-2000:]}")
                await asyncio.sleep(0.1)
            else:
                raise RuntimeError("serve never answered /health")
            api = Api(s, base, client)
            sessions = {}
            for login, pw in (("alice", alice_pw), ("pat", pat_pw)):
                async with s.post(base + "/sessions", json={"login": login, "password": pw},
                                  headers={"Accept": JSON, "X-Client-Token": client}) as r:
                    sessions[login] = (await r.json())["token"]
            alice, pat = sessions["alice"], sessions["pat"]

            # jobs for the per-job idle logins, then the idle sessions (in 8 threads of 25)
            first_jobs = []
            for i in range(20):
                status, body = await api.call("POST", "/jobs", alice, json={"name": f"idle {i}", "description": "x"})
                if status != 201:
                    raise RuntimeError(f"create job: {status} {body!r}")
                first_jobs.append(body)
            creds = []
            for i in range(args.ftp_sessions):
                job = first_jobs[i % len(first_jobs)]
                vdir = job["upload"]["ftpUrl"].split(f":{ftp_port}", 1)[1]
                source = IDLE_SOURCES[i % len(IDLE_SOURCES)]
                if i % 2:
                    creds.append((job["upload"]["ftpUsername"], job["upload"]["ftpPassword"], source, vdir))
                else:
                    creds.append(("alice", alice_pw, source, vdir))
            per = max(1, len(creds) // 8)
            for k in range(0, len(creds), per):
                threads.append(threading.Thread(target=idle_sessions, name=f"idle-{k}",
                                                args=(ftp_port, world, stats, creds[k:k + per], held), daemon=True))
            for role in ("account", "job", "account", "processor"):
                threads.append(threading.Thread(target=ftp_uploader, name=f"ftp-{role}",
                                                args=(ftp_port, world, stats, alice_pw, pat_pw, role), daemon=True))
            for t in threads:
                t.start()

            tasks = [asyncio.create_task(job_creator(api, alice, world, stats, 2.0)),
                     asyncio.create_task(http_uploader(api, world, stats, pat, "customer")),
                     asyncio.create_task(http_uploader(api, world, stats, pat, "customer")),
                     asyncio.create_task(http_uploader(api, world, stats, pat, "processor")),
                     asyncio.create_task(lifecycle(api, alice, pat, world, stats)),
                     asyncio.create_task(downloader(api, alice, world, stats)),
                     asyncio.create_task(downloader(api, alice, world, stats))]
            every = 2.0 if duration <= 120 else 5.0
            next_report = 30.0
            while time.monotonic() - t0 < duration:
                await asyncio.sleep(every)
                if proc.poll() is not None:
                    stats.failure("server", f"exited with {proc.returncode}")
                    break
                smp = sample(proc.pid, t0)
                if smp is not None:
                    samples.append(smp)
                if smp is not None and smp.t >= next_report:
                    next_report += 30.0
                    with stats.lock:
                        done, bad = sum(stats.ok.values()), sum(stats.failed.values())
                    print(f"[{smp.t:6.0f} s] ops {done}, failures {bad}, jobs {len(world.jobs)}, "
                          f"idle FTP sessions {held[0]}, RSS {smp.rss_kib / 1024:.1f} MiB, threads {smp.threads}, "
                          f"fds {smp.fds}", flush=True)
            world.stop.set()  # workers end after their current transfer (a cancelled one would count as lost)
            _, pending = await asyncio.wait(tasks, timeout=120)
            for t in pending:
                t.cancel()
            for t in tasks:
                if not t.cancelled() and t.exception() is not None:
                    stats.failure("worker", repr(t.exception()))
            await asyncio.get_running_loop().run_in_executor(None, lambda: [t.join(60) for t in threads])
            checked = await verify_everything(api, alice, world, stats)
        elapsed = time.monotonic() - t0
    finally:
        world.stop.set()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                rc = proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
                rc = None
        else:
            rc = proc.returncode
        out.close()
        err.close()

    logs = (folder / "serve.stdout").read_text(errors="replace") + (folder / "serve.stderr").read_text(errors="replace")
    verdict, rss = rss_verdict(samples, warmup)
    failures = sum(stats.failed.values())
    print()
    print("=" * 78)
    print(f"soak summary: {elapsed / 60:.1f} min on loopback (warm-up {warmup:.0f} s), server pid {proc.pid}")
    print("=" * 78)
    with stats.lock:
        for what in sorted(set(stats.ok) | set(stats.failed)):
            print(f"  {what:<24} {stats.ok[what]:>7} ok  {stats.failed[what]:>4} failed")
    print(f"  {'uploaded':<24} {stats.bytes_up / MiB:>9.1f} MiB   downloaded {stats.bytes_down / MiB:.1f} MiB")
    finished = sum(j.state == "finished" for j in world.jobs)
    print(f"  {'jobs created':<24} {len(world.jobs) + 20:>7}   finished {finished}")
    print(f"  {'idle FTP sessions held':<24} {held[0]:>7} of {args.ftp_sessions}")
    print(f"  {'uploads re-checked':<24} {checked:>7} (files API: name and md5)")
    print(f"  {'server log':<24} {logs.count('Traceback'):>7} tracebacks, {logs.count(' ERROR '):d} ERROR lines,"
          f" exit code after SIGTERM {rc}")
    if samples:
        all_rss = [s.rss_kib / 1024 for s in samples]
        print(f"  {'RSS samples':<24} {len(samples):>7} (every {every:.0f} s); whole run: start {all_rss[0]:.1f} MiB,"
              f" max {max(all_rss):.1f} MiB")
        print(f"  {'threads / fds':<24} start {samples[0].threads}/{samples[0].fds}, end {samples[-1].threads}/"
              f"{samples[-1].fds}, max {max(s.threads for s in samples)}/{max(s.fds for s in samples)}")
    if rss:
        print(f"  {'RSS after warm-up':<24} first {rss['first']:.1f} MiB, last {rss['last']:.1f} MiB,"
              f" max {rss['max']:.1f} MiB, slope {rss['slope']:+.2f} MiB/min (allowed growth {rss['allowed']:.0f} MiB)")
    print(f"  {'RSS verdict':<24} {verdict}")
    print(f"  {'failed transfers':<24} {failures}")
    for line in stats.errors:
        print(f"    ! {line}")
    ok = failures == 0 and verdict == "FLAT" and rc == 0 and "Traceback" not in logs
    print(f"  {'result':<24} {'PASS' if ok else 'FAIL'}")
    print("=" * 78)
    return 0 if ok else 1


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=10.0, help="how long the load runs (default 10)")
    p.add_argument("--ftp-sessions", type=int, default=200, help="FTP sessions held open (default 200)")
    p.add_argument("--keep", action="store_true", help="keep the temp folder (config, database, logs)")
    args = p.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="gw-soak-"))
    rc = 1
    try:
        rc = asyncio.run(run(args, folder))
    except Exception:
        traceback.print_exc()
    finally:
        if args.keep or rc != 0:
            print(f"soak files kept in {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
