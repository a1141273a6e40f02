"""The clients: curl and lftp for FTP, curl for single big HTTP transfers, wrk (or an aiohttp client
harness when wrk is missing) for request load. Every call is bounded in time; each returns seconds."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.proc import BenchError, have, run
from bench.servers import FtpTarget

LFTP_SETTINGS = ("set cmd:fail-exit yes; set net:max-retries 1; set net:timeout 30; set net:reconnect-interval-base 1;"
                 " set ftp:passive-mode yes; set xfer:clobber on; set cmd:interactive no;")


@dataclass
class Timing:
    seconds: float
    client_cpu: float  # user + system seconds of the client process


def timed_run(argv: Sequence[str], timeout: float) -> Timing:
    """Run one client to completion; wall time and the client's own CPU time (wait4)."""
    t0 = time.perf_counter()
    p = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         start_new_session=True)
    timer = threading.Timer(timeout, lambda: _kill(p.pid))
    timer.start()
    try:
        _, status, usage = os.wait4(p.pid, 0)
    finally:
        timer.cancel()
    elapsed = time.perf_counter() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    err = p.stderr.read().decode(errors="replace") if p.stderr else ""
    if p.stderr:
        p.stderr.close()
    if p.returncode != 0:
        why = "timed out" if elapsed >= timeout else f"failed ({p.returncode})"
        raise BenchError(f"{Path(argv[0]).name} {why}: {err.strip()[-300:]}")
    return Timing(elapsed, usage.ru_utime + usage.ru_stime)


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


# ----------------------------------------------------------------------------- FTP

def curl_stor(t: FtpTarget, src: Path, name: str, timeout: float, rate: str = "") -> list[str]:
    argv = ["curl", "-sS", "--fail", "--connect-timeout", "10", "-u", f"{t.user}:{t.password}", "-T", str(src),
            t.url(name)]
    if rate:
        argv[1:1] = ["--limit-rate", rate]
    return argv


def curl_retr(t: FtpTarget, name: str) -> list[str]:
    return ["curl", "-sS", "--fail", "--connect-timeout", "10", "-u", f"{t.user}:{t.password}", "-o", "/dev/null",
            t.url(name)]


def lftp(t: FtpTarget, script: str, settings: str = "") -> list[str]:
    cd = f"cd {t.remote_dir};" if t.remote_dir else ""
    return ["lftp", "-u", f"{t.user},{t.password}", "-e", f"{LFTP_SETTINGS} {settings} {cd} {script}; bye",
            f"ftp://127.0.0.1:{t.port}"]


def lftp_stor(t: FtpTarget, src: Path, name: str, settings: str = "") -> list[str]:
    return lftp(t, f"put {src} -o {name}", settings)


def lftp_retr(t: FtpTarget, name: str, settings: str = "") -> list[str]:
    return lftp(t, f"get {name} -o /dev/null", settings)


def lftp_mput(t: FtpTarget, folder: Path, pattern: str) -> list[str]:
    return lftp(t, f"lcd {folder}; mput {pattern}")


def parallel_stor(t: FtpTarget, src: Path, names: list[str], timeout: float) -> tuple[float, int]:
    """One curl per name, all started at once: (seconds until the last one ended, failures)."""
    t0 = time.perf_counter()
    procs = [subprocess.Popen(curl_stor(t, src, n, timeout), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True) for n in names]
    failures = 0
    deadline = t0 + timeout
    for p in procs:
        try:
            p.wait(max(0.1, deadline - time.perf_counter()))
        except subprocess.TimeoutExpired:
            _kill(p.pid)
            p.wait()
        failures += p.returncode != 0
    return time.perf_counter() - t0, failures


class UploadLoad:
    """count FTP clients uploading src again and again (same name each: storage stays bounded) until
    stopped; each at most `rate` (curl --limit-rate) and at most max_rounds uploads."""

    def __init__(self, t: FtpTarget, src: Path, count: int, rate: str, max_rounds: int = 50) -> None:
        self.t, self.src, self.count, self.rate, self.max_rounds = t, src, count, rate, max_rounds
        self._stop = threading.Event()
        self._procs: dict[int, subprocess.Popen[bytes]] = {}
        self._lock = threading.Lock()
        self.done = self.failed = 0
        self.names = [f"load-{i:02d}.bin" for i in range(count)]
        self._threads = [threading.Thread(target=self._loop, args=(n,), daemon=True) for n in self.names]

    def _loop(self, name: str) -> None:
        for _ in range(self.max_rounds):
            if self._stop.is_set():
                return
            p = subprocess.Popen(curl_stor(self.t, self.src, name, 120, self.rate), stdin=subprocess.DEVNULL,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
            with self._lock:
                self._procs[p.pid] = p
            try:
                p.wait(120)
            except subprocess.TimeoutExpired:
                _kill(p.pid)
                p.wait()
            with self._lock:
                self._procs.pop(p.pid, None)
                if self._stop.is_set():
                    return
                self.done += p.returncode == 0
                self.failed += p.returncode != 0

    def __enter__(self) -> UploadLoad:
        for th in self._threads:
            th.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        with self._lock:
            for pid in list(self._procs):
                _kill(pid)
        for th in self._threads:
            th.join(10)


# ----------------------------------------------------------------------------- HTTP transfers

def curl_post_file(url: str, src: Path, timeout: float) -> list[str]:
    return ["curl", "-sS", "--fail", "--connect-timeout", "10", "-m", str(int(timeout)), "-H", "Expect:",
            "-F", f"file=@{src};type=application/octet-stream", "-o", "/dev/null", url]


def curl_get(url: str, timeout: float, out: str = "/dev/null") -> list[str]:
    return ["curl", "-sS", "--fail", "--connect-timeout", "10", "-m", str(int(timeout)), "-o", out, url]


def http_status(url: str, method: str = "GET", form_file: Path | None = None) -> tuple[int, str]:
    """(status, start of body) of one small request (0 when nothing answered): is a route there yet?"""
    headers: dict[str, str] = {}
    data = None
    if form_file is not None:
        boundary = "benchprobe7d3f"
        data = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{form_file.name}\"\r\n"
                "Content-Type: application/octet-stream\r\n\r\n").encode() + form_file.read_bytes() + \
            f"\r\n--{boundary}--\r\n".encode()
        headers["Content-Type"] = f"multipart/form-data; boundary={boundary}"
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read(300).decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read(300).decode(errors="replace")
    except OSError:
        return 0, ""


# ----------------------------------------------------------------------------- request load

@dataclass
class Load:
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    requests: int
    tool: str


WRK_LUA = """\
wrk.method = "POST"
wrk.body = '{{"name": "bench job", "description": "load test"}}'
{headers}
"""


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip())
    if not m:
        raise BenchError(f"wrk latency {text!r} not understood")
    value, unit = float(m.group(1)), m.group(2)
    return value * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def wrk_post(url: str, headers: dict[str, str], connections: int, seconds: float, workdir: Path) -> Load:
    """wrk POSTing a JSON body with these headers; latency percentiles from --latency."""
    lua = workdir / f"post-{abs(hash(url)) % 10**8}.lua"
    lua.write_text(WRK_LUA.format(headers="\n".join(f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items())))
    threads = min(2, connections)
    r = run(["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{max(1, round(seconds))}s", "--timeout", "5s",
             "--latency", "-s", str(lua), url], timeout=seconds + 30)
    out = r.stdout
    pct = dict(re.findall(r"^\s+(50|99)(?:\.0+)?%\s+(\S+)", out, re.M))
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    total = re.search(r"(\d+) requests in", out)
    if not (rps and total and "50" in pct and "99" in pct):
        raise BenchError(f"wrk output not understood: {out[-400:]}")
    errors = sum(int(x) for x in re.findall(r"Non-2xx or 3xx responses: (\d+)", out))
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if sock:
        errors += sum(int(x) for x in sock.groups())
    return Load(float(rps.group(1)), _ms(pct["50"]), _ms(pct["99"]), errors, int(total.group(1)), "wrk")


def aiohttp_post(url: str, headers: dict[str, str], connections: int, seconds: float) -> Load:
    """The fallback load generator (no wrk): `connections` keep-alive clients in one asyncio loop."""
    import aiohttp  # the gateway's own dependency

    async def main() -> Load:
        latencies: list[float] = []
        errors = 0
        body = b'{"name": "bench job", "description": "load test"}'
        deadline = time.perf_counter() + seconds
        conn = aiohttp.TCPConnector(limit=connections)
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(connector=conn, timeout=timeout) as s:
            async def worker() -> None:
                nonlocal errors
                while time.perf_counter() < deadline:
                    t0 = time.perf_counter()
                    try:
                        async with s.post(url, data=body, headers=headers) as r:
                            await r.read()
                            ok = 200 <= r.status < 400
                    except (TimeoutError, aiohttp.ClientError):
                        ok = False
                    latencies.append((time.perf_counter() - t0) * 1000)
                    errors += not ok
            t_start = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(connections)))
            elapsed = time.perf_counter() - t_start
        latencies.sort()
        n = len(latencies)
        if n == 0:
            raise BenchError("no request completed")
        return Load(n / elapsed, latencies[n // 2], latencies[min(n - 1, int(n * 0.99))], errors, n, "aiohttp client")

    return asyncio.run(main())


def post_load(url: str, headers: dict[str, str], connections: int, seconds: float, workdir: Path) -> Load:
    if have("wrk"):
        return wrk_post(url, headers, connections, seconds, workdir)
    return aiohttp_post(url, headers, connections, seconds)
