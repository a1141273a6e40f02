"""The figures of issue 5, each measured against its references in the same run, runs interleaved
(the order of the servers rotates from run to run so drift does not favour one of them)."""

from __future__ import annotations

import contextlib
import ftplib
import os
import resource
import statistics
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from bench import clients
from bench.context import Ctx, MiB, ThreadLog, cpu_of, machine_busy, slice_file, threads_of
from bench.proc import BenchError, PeakRss, Skipped, have, run
from bench.report import Row, Series, above, at_least, at_most, below
from bench.servers import FtpTarget, GatewayFtpTarget

NOT_FOUND = (404, 405, 501)


def size_label(n: int) -> str:
    for unit, div in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= div and n % (div // 16) == 0:
            return f"{n / div:g} {unit}"
    return f"{n} B"


def rotate(items: list[Any], k: int) -> list[Any]:
    k %= max(1, len(items))
    return items[k:] + items[:k]


def enough_time(ctx: Ctx, need: float, what: str) -> bool:
    if ctx.time_left() > need:
        return True
    ctx.note(f"{what}: stopped early, the run's time budget is used up")
    return False


class CostLog:
    """Server CPU per GiB and client busy fraction per (server, client), for the notes."""

    def __init__(self) -> None:
        self.data: dict[tuple[str, str], list[tuple[float, float, float, float]]] = defaultdict(list)

    def add(self, server: str, client: str, nbytes: int, seconds: float, server_cpu: float, client_cpu: float) -> None:
        self.data[(server, client)].append((nbytes, seconds, server_cpu, client_cpu))

    def summary(self) -> str:
        parts = []
        for (server, client), vals in self.data.items():
            per_gib = statistics.median(c / (n / (1 << 30)) for n, _, c, _ in vals)
            busy = statistics.median(cc / s for _, s, _, cc in vals)
            parts.append(f"{server}/{client}: server {per_gib:.2f} CPU-s/GiB, client busy {busy:.0%}")
        return "; ".join(parts)


def _check_size(t: FtpTarget, name: str, size: int) -> None:
    path = t.local_dir / name
    try:
        got = path.stat().st_size
    except FileNotFoundError:
        raise BenchError(f"{t.name}: {name} was not stored") from None
    if got != size:
        raise BenchError(f"{t.name}: {name} has {got} bytes, expected {size}")


# ----------------------------------------------------------------------------- 1. one big file

def hash_ceiling(ctx: Ctx) -> Series:
    """md5 + crc32 of the input in 1 MiB chunks, one thread of this process, with the gateway's own crc32
    (ISA-L's when installed). Measured once per run."""
    if isinstance(ctx.hash_rate, Series):
        return ctx.hash_rate
    import hashlib

    from gateway.storage import crc32

    series = Series()
    size = min(ctx.sizes.big, 256 * MiB)
    for _ in range(max(3, ctx.sizes.runs) if ctx.mode != "smoke" else 1):
        md5, crc = hashlib.md5(usedforsecurity=False), 0
        t0 = time.perf_counter()
        with open(ctx.files / "big.bin", "rb", buffering=0) as fh:
            left = size
            while left and (chunk := fh.read(min(MiB, left))):
                md5.update(chunk)
                crc = crc32(chunk, crc)
                left -= len(chunk)
        series.add(size / MiB / (time.perf_counter() - t0))
    ctx.row(Row("md5 + crc32 in one CPython thread, 1 MiB chunks (context)", "MiB/s", series, ratio_row=False))
    ctx.hash_rate = series
    return series


def cpu_ceiling(ctx: Ctx, what: str, ref: Series, ref_cores: list[float], client_cpu: list[float],
                target: float, single_stream: bool) -> None:
    """What hashing every byte allows, from this run's measurements. One stream is hashed by one thread:
    never faster than the hash rate. On the machine's cores, the clients' own CPU per GiB plus md5 +
    crc32 per GiB is work no hashing server avoids: a hard bound. With the reference's whole cost per
    GiB (clients, kernel, server) instead of the clients' alone: an estimate."""
    hashing = hash_ceiling(ctx)
    if not (ref.values and hashing.values):
        return
    cores, rate = os.cpu_count() or 1, ref.median
    hash_cpu = 1024 / hashing.median  # CPU-s per GiB
    parts = [f"md5 + crc32 cost {hash_cpu:.2f} CPU-s/GiB ({hashing.median:,.0f} MiB/s in one thread)"]
    if single_stream:
        parts.append(f"one stream is hashed by one thread, so no hashing server passes {hashing.median:,.0f} MiB/s "
                     f"= {hashing.median / rate:.2f}x of the reference (target {target}x)")
    if client_cpu:
        bound = cores / (statistics.median(client_cpu) + hash_cpu) * 1024
        parts.append(f"the clients alone used {statistics.median(client_cpu):.2f} CPU-s/GiB, so on {cores} cores no "
                     f"hashing server passes {bound:,.0f} MiB/s = {bound / rate:.2f}x")
    if ref_cores:
        ref_cpu = statistics.median(ref_cores) / (rate / 1024)
        est = cores / (ref_cpu + hash_cpu) * 1024
        parts.append(f"doing what the reference does ({ref_cpu:.2f} CPU-s/GiB machine-wide: clients, kernel and "
                     f"server) plus hashing fits about {est:,.0f} MiB/s = {est / rate:.2f}x")
    ctx.note(f"{what}: what hashing allows: " + "; ".join(parts))


def ftp_big(ctx: Ctx, gw: FtpTarget) -> None:
    s = ctx.sizes
    src = ctx.files / "big.bin"
    label = size_label(s.big)
    targets = [gw, *ctx.ftp]
    tools = [c for c in ("curl", "lftp") if have(c)]
    for c in ("curl", "lftp"):
        if c not in tools:
            ctx.note(f"FTP {c} figures skipped: {c} is not installed")
    stor: dict[str, dict[str, Series]] = {c: defaultdict(Series) for c in tools}
    retr: dict[str, dict[str, Series]] = {c: defaultdict(Series) for c in tools}
    for c in tools:
        for kind, series, ref_target, ref_check, vs_target, vs_check in (
                ("STOR", stor[c], ">= 0.75x", at_least(0.75), "> 1.0x", above(1.0)),
                ("RETR", retr[c], ">= 0.95x", at_least(0.95), "", None)):
            ctx.row(Row(f"FTP {kind} {label} ({c})", "MiB/s", series["gateway"], series["pyftpdlib"], "pyftpdlib",
                        ref_target, ref_check))
            if ctx.ftp_ref("vsftpd"):
                ctx.row(Row(f"FTP {kind} {label} ({c}) vs vsftpd", "MiB/s", series["gateway"], series["vsftpd"],
                            "vsftpd", vs_target, vs_check))
    costs = {"STOR": CostLog(), "RETR": CostLog()}
    threads = ThreadLog()
    kept: dict[str, str] = {}
    for r in range(s.runs):
        if not enough_time(ctx, 120, "FTP STOR"):
            break
        for c in tools:
            for t in rotate(targets, r):
                name = f"big-{c}-{r}.bin"
                argv = clients.curl_stor(t, src, name, s.client_timeout) if c == "curl" else \
                    clients.lftp_stor(t, src, name)
                with cpu_of(t.pid) as cpu, threads_of(t.pid) as busy:
                    tm = clients.timed_run(argv, s.client_timeout)
                if t is gw:
                    threads.add(f"FTP STOR {label} ({c})", busy)
                _check_size(t, name, s.big)
                stor[c][t.name].add(s.big / MiB / tm.seconds)
                costs["STOR"].add(t.name, c, s.big, tm.seconds, cpu[0], tm.client_cpu)
                if t.name in kept:
                    t.remove([kept[t.name]])
                kept[t.name] = name
    for r in range(s.runs):
        if not kept or not enough_time(ctx, 60, "FTP RETR"):
            break
        for c in tools:
            for t in rotate(targets, r):
                argv = clients.curl_retr(t, kept[t.name]) if c == "curl" else clients.lftp_retr(t, kept[t.name])
                with cpu_of(t.pid) as cpu:
                    tm = clients.timed_run(argv, s.client_timeout)
                retr[c][t.name].add(s.big / MiB / tm.seconds)
                costs["RETR"].add(t.name, c, s.big, tm.seconds, cpu[0], tm.client_cpu)
    for t in targets:
        if t.name in kept:
            t.remove([kept[t.name]])
    for kind, log in costs.items():
        if log.data and s.big >= 256 * MiB:  # CPU ticks are 10 ms: meaningless for tiny files
            ctx.note(f"FTP {kind} {label}: {log.summary()}")
    for line in threads.notes() if s.big >= 256 * MiB else []:
        ctx.note(line)
    hashing = hash_ceiling(ctx)
    for c in tools if s.big >= 256 * MiB else []:
        bare = stor[c]["pyftpdlib"]
        if bare.values and hashing.values:
            ctx.note(f"FTP STOR ({c}): the 226 waits for md5 + crc32, which run at {hashing.median:,.0f} MiB/s on "
                     f"one core here, so the gateway's STOR cannot pass that rate; against bare pyftpdlib's "
                     f"{bare.median:,.0f} MiB/s the best ratio reachable is about "
                     f"{min(1.0, hashing.median / bare.median):.2f}x (with a free core for the hasher)")


# ----------------------------------------------------------------------------- 2. many clients at once

def ftp_parallel(ctx: Ctx, gw: FtpTarget) -> None:
    s = ctx.sizes
    if not have("curl"):
        raise Skipped("curl is not installed")
    src = ctx.files / "client.bin"
    title = f"{s.clients} clients x {size_label(s.client_size)} STOR at once (curl)"
    series: dict[str, Series] = defaultdict(Series)
    fails: dict[str, Series] = defaultdict(Series)
    ctx.row(Row(title, "MiB/s", series["gateway"], series["pyftpdlib"], "pyftpdlib", ">= 0.9x", at_least(0.9)))
    if ctx.ftp_ref("vsftpd"):
        ctx.row(Row(title + " vs vsftpd", "MiB/s", series["gateway"], series["vsftpd"], "vsftpd"))
    ctx.row(Row(title + ": failed uploads", "count", fails["gateway"], fails["pyftpdlib"], "pyftpdlib", "0",
                at_most(0), ratio_row=False))
    threads = ThreadLog()
    ref_cores: list[float] = []
    ref_clients: list[float] = []
    for r in range(s.runs):
        if not enough_time(ctx, 60, title):
            break
        for t in rotate([gw, *ctx.ftp], r):
            names = [f"par-{r}-{i:02d}.bin" for i in range(s.clients)]
            children0 = resource.getrusage(resource.RUSAGE_CHILDREN)
            with threads_of(t.pid) as busy, machine_busy() as machine:
                seconds, failed = clients.parallel_stor(t, src, names, s.client_timeout)
            children1 = resource.getrusage(resource.RUSAGE_CHILDREN)  # the curls, reaped by parallel_stor
            if t is gw:
                threads.add(title, busy)
            elif t.name == "pyftpdlib":
                gib = s.clients * s.client_size / (1 << 30)
                ref_cores.append(machine[0])
                ref_clients.append((children1.ru_utime + children1.ru_stime
                                    - children0.ru_utime - children0.ru_stime) / gib)
            for n in names:
                try:
                    _check_size(t, n, s.client_size)
                except BenchError:
                    failed += 1
            failed = min(failed, s.clients)
            series[t.name].add(s.clients * s.client_size / MiB / seconds)
            fails[t.name].add(failed)
            t.remove(names)
    for line in threads.notes() if ctx.mode != "smoke" else []:
        ctx.note(line)
    if ctx.mode != "smoke":
        cpu_ceiling(ctx, title, series["pyftpdlib"], ref_cores, ref_clients, 0.9, single_stream=False)
    bad = {k: max(v.values) for k, v in fails.items() if v.values and max(v.values) > 0}
    if bad:
        ctx.note(f"{title}: failed uploads (worst run) {bad}")


# ----------------------------------------------------------------------------- 3. many small files

def ftp_small(ctx: Ctx, new_gw_target: Any) -> None:
    s = ctx.sizes
    if not have("lftp"):
        raise Skipped("lftp is not installed")
    folder = ctx.files / "small"
    names = sorted(p.name for p in folder.iterdir())
    title = f"{s.small_count} files x {size_label(s.small_size)} in one lftp session (mput)"
    series: dict[str, Series] = defaultdict(Series)
    ctx.row(Row(title, "files/s", series["gateway"], series["pyftpdlib"], "pyftpdlib", ">= 0.7x", at_least(0.7)))
    if ctx.ftp_ref("vsftpd"):
        ctx.row(Row(title + " vs vsftpd", "files/s", series["gateway"], series["vsftpd"], "vsftpd"))
    threads = ThreadLog()
    per_file: dict[str, list[float]] = defaultdict(list)  # server CPU seconds per file
    for r in range(s.runs):
        if not enough_time(ctx, 60, title):
            break
        for t in rotate(["gateway", *ctx.ftp], r):
            target: FtpTarget = new_gw_target() if t == "gateway" else t
            with threads_of(target.pid) as busy, cpu_of(target.pid) as cpu:
                tm = clients.timed_run(clients.lftp_mput(target, folder, "*.bin"), s.client_timeout)
            if t == "gateway":
                threads.add(title, busy)
            stored = sum(1 for n in names if (target.local_dir / n).is_file())
            if stored != len(names):
                raise BenchError(f"{target.name}: {stored} of {len(names)} files stored by mput")
            series[target.name].add(len(names) / tm.seconds)
            per_file[target.name].append(cpu[0] / len(names))
            if not isinstance(target, GatewayFtpTarget):
                target.remove(names)  # the gateway's files stay in their own job (a new one each run)
    if ctx.mode != "smoke":
        for line in threads.notes():
            ctx.note(line)
        small_files_costs(ctx, title, series, per_file)


def small_files_costs(ctx: Ctx, title: str, series: dict[str, Series], per_file: dict[str, list[float]]) -> None:
    """Where a file's time goes: each server's CPU per file, and what the gateway's one unavoidable extra
    (md5 + crc32 of every byte before the 226, in sequence with the reply) leaves of the target."""
    cpu = ", ".join(f"{name} {statistics.median(v) * 1e6:,.0f} us" for name, v in per_file.items() if v)
    note = f"{title}: server CPU per file (median): {cpu}"
    hashing, bare = hash_ceiling(ctx), series.get("pyftpdlib")
    if bare is not None and bare.values and hashing.values:
        hash_us = ctx.sizes.small_size / MiB / hashing.median * 1e6
        wall_us = 1e6 / bare.median
        bound = 1e6 / (wall_us + hash_us)
        note += (f"; md5 + crc32 of one file take {hash_us:,.0f} us at this run's hash rate. pyftpdlib spends "
                 f"{wall_us:,.0f} us of wall time per file; the same plus the hashing in sequence (the 226 waits "
                 f"for it) is {bound:,.0f} files/s = {bound / bare.median:.2f}x, the most a hashing server as "
                 f"lean as pyftpdlib reaches: below that, the gap is the gateway's own work per file")
    ctx.note(note)


# ----------------------------------------------------------------------------- 4. HTTP upload

def http_upload(ctx: Ctx) -> None:
    s, gw, bare = ctx.sizes, ctx.gateway, ctx.bare_http
    assert gw is not None and bare is not None
    if not have("curl"):
        raise Skipped("curl is not installed")
    src = ctx.files / "big.bin"
    label = size_label(s.big)
    speed = ctx.row(Row(f"HTTP multipart upload {label} (curl -F)", "MiB/s", ref_name="aiohttp 1 MiB read_chunk",
                        target=">= 0.8x", check=at_least(0.8)))
    rss = ctx.row(Row(f"HTTP upload {label}: server peak RSS", "MiB", ref_name="aiohttp", target="< 100 MiB",
                      check=below(100), ratio_row=False, fmt="{:,.1f}"))
    growth = ctx.row(Row(f"HTTP upload {label}: server RSS growth during the upload", "MiB", ref_name="aiohttp",
                         ratio_row=False, fmt="{:,.1f}"))
    job = gw.new_job("bench http upload")
    post_url = job["upload"]["postUrl"]
    if not post_url:
        speed.status = rss.status = growth.status = "not available yet (the job has no postUrl)"
        return
    probe = ctx.files / "probe.bin"
    probe.write_bytes(b"probe")
    status, body = clients.http_status(post_url, "POST", probe)
    if status in NOT_FOUND or status == 0:
        speed.status = rss.status = growth.status = f"not available yet (postUrl answered {status or 'nothing'})"
        return
    if not 200 <= status < 300:
        raise BenchError(f"the probe upload to postUrl answered {status}: {body}")
    target = Path(src.name)
    ftp_view = gw.ftp_target(job)
    threads = ThreadLog()
    ref_cores: list[float] = []
    ref_clients: list[float] = []
    for r in range(s.runs):
        if not enough_time(ctx, 60, "HTTP upload"):
            break
        for who in rotate(["gateway", "aiohttp"], r):
            pid = gw.pid if who == "gateway" else bare.pid
            url = post_url if who == "gateway" else f"{bare.base}/upload"
            with PeakRss(pid) as peak, threads_of(pid) as busy, machine_busy() as machine:
                tm = clients.timed_run(clients.curl_post_file(url, src, s.client_timeout), s.client_timeout)
            if who == "gateway":
                threads.add(speed.figure, busy)
            else:
                ref_cores.append(machine[0])
                ref_clients.append(tm.client_cpu / (s.big / (1 << 30)))
            (speed.gateway if who == "gateway" else speed.reference).add(s.big / MiB / tm.seconds)
            (rss.gateway if who == "gateway" else rss.reference).add(peak.peak_mib)
            (growth.gateway if who == "gateway" else growth.reference).add(peak.growth_mib)
            if who == "gateway":
                _check_size(ftp_view, target.name, s.big)
                ftp_view.remove([target.name])
            else:
                (bare.root / "uploads" / target.name).unlink(missing_ok=True)
    for line in threads.notes() if s.big >= 256 * MiB else []:
        ctx.note(line)
    if s.big >= 256 * MiB:
        cpu_ceiling(ctx, speed.figure, speed.reference, ref_cores, ref_clients, 0.8, single_stream=True)


# ----------------------------------------------------------------------------- 5. zip download

class _Window:
    """size bytes of a file read from offset on, wrapping to its start (a clipped file larger than the input)."""

    def __init__(self, fh: Any, file_size: int, offset: int, size: int) -> None:
        self.fh, self.file_size, self.left = fh, file_size, size
        fh.seek(offset % file_size)

    def read(self, n: int = -1, /) -> bytes:
        want = self.left if n < 0 else min(n, self.left)
        data: bytes = self.fh.read(want)
        if not data and want:
            self.fh.seek(0)
            data = self.fh.read(want)
        self.left -= len(data)
        return data


def upload_clipped(t: FtpTarget, src: Path, sizes: list[int], first: int = 0) -> list[str]:
    """The processor delivers clipped files clip-NNNN.bin, each a different window of src; their names."""
    src_size = src.stat().st_size
    names = []
    ftp = t.ftplib()
    try:
        with open(src, "rb") as fh:
            for i, size in enumerate(sizes, start=first):
                name = f"clip-{i:04d}.bin"
                ftp.storbinary(f"STOR {t.remote_dir}/{name}", _Window(fh, src_size, i * 5 * MiB + i, size),
                               blocksize=MiB)
                names.append(name)
    finally:
        with contextlib.suppress(Exception):
            ftp.quit()
    return names


def sizes_label(sizes: list[int]) -> str:
    if len(set(sizes)) == 1:
        return f"{len(sizes)} x {size_label(sizes[0])}"
    return " + ".join(size_label(n) for n in sizes)


def zip_download(ctx: Ctx, sizes: list[int], src: Path, runs: int, verify_dir: Path | None,
                 with_nginx: bool = True, rows_prefix: str = "") -> None:
    gw = ctx.gateway
    assert gw is not None
    if not have("curl"):
        raise Skipped("curl is not installed")
    title = f"{rows_prefix}zip download of {sizes_label(sizes)} (curl)"
    speed = ctx.row(Row(title, "MiB/s", ref_name="nginx, one file of the same size", target=">= 0.8x",
                        check=at_least(0.8)))
    rss = ctx.row(Row(f"{rows_prefix}zip download: gateway peak RSS", "MiB", ratio_row=False, fmt="{:,.1f}"))
    growth = ctx.row(Row(f"{rows_prefix}zip download: gateway RSS growth during the download", "MiB",
                         target="< 32 MiB (flat)", check=below(32), ratio_row=False, fmt="{:,.1f}"))
    nginx = ctx.nginx if with_nginx else None
    if nginx is None:
        speed.ref_name, speed.ratio_row, speed.check = "", False, None
        speed.target = "no reference in this mode" if not with_nginx else "nginx missing: no ratio"
    job = gw.new_job("bench zip")
    clipped = gw.processor_target(job)
    url = job["download"]["getUrl"]
    probe = upload_clipped(clipped, src, [64 * 1024], first=len(sizes))
    status, _ = clients.http_status(url)
    if status in NOT_FOUND or status == 0:
        speed.status = rss.status = growth.status = f"not available yet (getUrl answered {status or 'nothing'})"
        return
    clipped.remove(probe)
    t0 = time.monotonic()
    names = upload_clipped(clipped, src, sizes)
    ctx.note(f"{title}: the processor's FTP upload of the {len(sizes)} files took {time.monotonic() - t0:.1f} s")
    timeout = max(120.0, sum(sizes) / MiB / 20)  # at least 20 MiB/s
    zip_len = 0
    if verify_dir is not None:
        out = verify_dir / "check.zip"
        r = run(["curl", "-sS", "--fail", "-o", str(out), "-w", "%{size_download}", url], timeout=timeout * 2)
        zip_len = int(r.stdout.strip())
        t0 = time.monotonic()
        try:
            ctx.note(f"{title}: verified, {check_zip(out, dict(zip(names, sizes, strict=True)))} "
                     f"({time.monotonic() - t0:.0f} s)")
        finally:
            out.unlink(missing_ok=True)
    else:
        r = run(["curl", "-sS", "--fail", "-o", "/dev/null", "-w", "%{size_download}", url], timeout=timeout)
        zip_len = int(r.stdout.strip())
    if zip_len < sum(sizes):
        raise BenchError(f"the zip has {zip_len} bytes, less than its files' {sum(sizes)}")
    ref_file = None
    if nginx is not None:
        ref_file = nginx.root / "one.bin"
        if zip_len <= src.stat().st_size:
            slice_file(src, ref_file, zip_len)
        else:
            with open(src, "rb") as fi, open(ref_file, "wb") as fo:
                window = _Window(fi, src.stat().st_size, 0, zip_len)
                while chunk := window.read(64 * MiB):
                    fo.write(chunk)
        ref_file.chmod(0o644)
    for r_ in range(runs):
        if not enough_time(ctx, 30, title):
            break
        for who in rotate(["gateway", "nginx"] if ref_file else ["gateway"], r_):
            if who == "gateway":
                with PeakRss(gw.pid) as peak:
                    tm = clients.timed_run(clients.curl_get(url, timeout), timeout)
                speed.gateway.add(zip_len / MiB / tm.seconds)
                rss.gateway.add(peak.peak_mib)
                growth.gateway.add(peak.growth_mib)
            else:
                assert nginx is not None
                tm = clients.timed_run(clients.curl_get(nginx.url("one.bin"), timeout), timeout)
                speed.reference.add(zip_len / MiB / tm.seconds)
    if ref_file is not None:
        ref_file.unlink(missing_ok=True)
    clipped.remove(names)


def check_zip(path: Path, expected: dict[str, int]) -> str:
    """Every entry is there with its size and a good CRC (zipfile reads ZIP64 records where present)."""
    import zipfile

    with open(path, "rb") as fh:
        fh.seek(0, 2)
        total = fh.tell()
        fh.seek(max(0, total - (1 << 16)))
        tail = fh.read()
    zip64 = b"PK\x06\x06" in tail and b"PK\x06\x07" in tail
    with zipfile.ZipFile(path) as z:
        got = {i.filename.rsplit("/", 1)[-1]: i.file_size for i in z.infolist() if not i.is_dir()}
        if got != expected:
            raise BenchError(f"the zip holds {sorted(got.items())[:5]}..., expected {sorted(expected.items())[:5]}...")
        bad = z.testzip()
        if bad is not None:
            raise BenchError(f"the zip entry {bad} has a bad CRC")
    if total > 0xFFFFFFFF and not zip64:
        raise BenchError("the zip is larger than 4 GiB but has no ZIP64 end of central directory")
    return f"{len(expected)} entries, sizes and CRCs good, {total / (1 << 30):.2f} GiB, ZIP64 records: {zip64}"


# ----------------------------------------------------------------------------- 6 and 7. POST /jobs

def post_jobs(ctx: Ctx) -> None:
    s, gw, bare = ctx.sizes, ctx.gateway, ctx.bare_http
    assert gw is not None and bare is not None
    c = s.connections
    tool = "wrk" if have("wrk") else "aiohttp client"
    rps = ctx.row(Row(f"POST /jobs, {c} connections ({tool})", "req/s", ref_name="aiohttp insert+2 mkdirs",
                      target=">= 0.6x", check=at_least(0.6)))
    p99 = ctx.row(Row(f"POST /jobs p99, {c} connections", "ms", ref_name="aiohttp insert+2 mkdirs",
                      target="< 25 ms", check=below(25), ratio_row=False, fmt="{:,.1f}"))
    p50 = ctx.row(Row(f"POST /jobs p50, {c} connections", "ms", ref_name="aiohttp insert+2 mkdirs",
                      ratio_row=False, fmt="{:,.1f}"))
    js = ctx.row(Row(f"bare aiohttp JSON handler, {c} connections (context)", "req/s", ref_name="aiohttp JSON",
                     ratio_row=False))
    headers = gw.headers()
    urls = {"gateway": f"{gw.base}/jobs", "insert": f"{bare.base}/jobs", "json": f"{bare.base}/json"}
    if ctx.mode != "smoke":
        for u in urls.values():  # warm-up: connections, caches, the first jobs
            clients.post_load(u, headers, c, 1, ctx.work)
    errors: dict[str, int] = defaultdict(int)
    threads = ThreadLog()
    per_request: dict[str, list[float]] = defaultdict(list)  # server CPU seconds per request
    for r in range(s.runs):
        if not enough_time(ctx, 30, "POST /jobs"):
            break
        for who in rotate(list(urls), r):
            server = gw.pid if who == "gateway" else bare.pid
            with threads_of(gw.pid) as busy, machine_busy() as machine, cpu_of(server) as cpu:
                load = clients.post_load(urls[who], headers, c, s.load_seconds, ctx.work)
            if who == "gateway":
                threads.add(rps.figure, {**busy, "whole machine (of 2 cores)": machine[0]})
            if load.requests:
                per_request[who].append(cpu[0] / load.requests)
            errors[who] += load.errors
            if who == "gateway":
                rps.gateway.add(load.rps)
                p99.gateway.add(load.p99_ms)
                p50.gateway.add(load.p50_ms)
            elif who == "insert":
                rps.reference.add(load.rps)
                p99.reference.add(load.p99_ms)
                p50.reference.add(load.p50_ms)
            else:
                js.reference.add(load.rps)
    if ctx.mode != "smoke":
        for line in threads.notes():
            ctx.note(line)
        names = {"gateway": "gateway", "insert": rps.ref_name, "json": js.ref_name}
        costs = ", ".join(f"{names[w]} {statistics.median(v) * 1e6:,.0f} us" for w, v in per_request.items() if v)
        ctx.note(f"{rps.figure}: server CPU per request (median; every thread, SQLite and the kernel's share "
                 f"included): {costs}")
    if any(errors.values()):
        ctx.note(f"POST /jobs: failed or non-2xx requests {dict(errors)}")
        if errors["gateway"]:
            rps.status = p99.status = f"FAIL: {errors['gateway']} failed requests"


def interference(ctx: Ctx, job_target: FtpTarget) -> None:
    s, gw = ctx.sizes, ctx.gateway
    assert gw is not None
    if not have("curl"):
        raise Skipped("curl is not installed")
    c, n, rate = s.connections, s.interference_uploads, s.interference_rate
    src = ctx.files / "interference.bin"
    pace = f"{rate[:-1]} MiB/s" if rate.endswith("M") else f"{rate} B/s"
    p99 = ctx.row(Row(f"POST /jobs p99 while {n} FTP uploads run ({pace} each), {c} conns", "ms",
                      ref_name="idle", target="<= 2.0x idle", check=at_most(2.0), fmt="{:,.1f}"))
    rps = ctx.row(Row(f"POST /jobs while {n} FTP uploads run (context)", "req/s", ref_name="idle"))
    url, headers = f"{gw.base}/jobs", gw.headers()
    done = failed = 0
    threads = ThreadLog()
    for r in range(s.runs):
        if not enough_time(ctx, 40, "interference"):
            break
        for loaded in rotate([False, True], r):
            if not loaded:
                load = clients.post_load(url, headers, c, s.load_seconds, ctx.work)
                p99.reference.add(load.p99_ms)
                rps.reference.add(load.rps)
                continue
            with clients.UploadLoad(job_target, src, n, rate) as up:
                time.sleep(min(1.0, s.load_seconds))  # the uploads are running
                with threads_of(gw.pid) as busy, machine_busy() as machine:
                    load = clients.post_load(url, headers, c, s.load_seconds, ctx.work)
            threads.add(p99.figure, {**busy, "whole machine (of 2 cores)": machine[0]})
            done, failed = done + up.done, failed + up.failed
            p99.gateway.add(load.p99_ms)
            rps.gateway.add(load.rps)
    for line in threads.notes() if ctx.mode != "smoke" else []:
        ctx.note(line)
    with contextlib.suppress(BenchError, ftplib.Error, OSError):
        job_target.remove([f"load-{i:02d}.bin" for i in range(n)])
    if failed:
        ctx.note(f"interference: {failed} background uploads failed ({done} completed)")
