"""The driver: `python -m bench [--smoke | --large]`.

Starts the gateway and the references on 127.0.0.1 with their storage on one filesystem (tmpfs by
default: CPU cost is what is compared, not the disk), measures every figure, prints the table and
writes it to bench/results/ (latest.md for a full run). Every process it started is stopped and its
work folder removed at the end, whatever happened.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from types import FrameType
from typing import Any

from bench import figures
from bench.context import FULL, SMOKE, Ctx, GiB, MiB, Sizes, slice_file, write_random
from bench.proc import BenchError, PeakRss, Procs, Skipped, have
from bench.report import Row, Series, machine, markdown_table, text_table
from bench.servers import Gateway, start_bare_ftp, start_bare_http, start_nginx, start_vsftpd

RESULTS = Path(__file__).resolve().parent / "results"
TMPFS = Path("/dev/shm")


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0] if __doc__ else None)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--smoke", action="store_true", help="tiny sizes, one run each: checks the harness (seconds)")
    mode.add_argument("--large", action="store_true", help="only the 5 GiB zip job (ZIP64, flat memory)")
    p.add_argument("--runs", type=int, help="runs per figure (default 5; smoke 1)")
    p.add_argument("--fs", choices=("tmpfs", "disk"), default="tmpfs",
                   help="where every server stores files: tmpfs (/dev/shm, default) or disk (the system temp folder)")
    p.add_argument("--budget", type=float, default=1500.0, help="seconds; later runs are skipped past it")
    p.add_argument("--out", type=Path, help="markdown result file (default: bench/results/latest.md, "
                   "smoke.md or large.md)")
    p.add_argument("--only", help="comma-separated figures: http-upload,zip,ftp-big,ftp-parallel,ftp-small,"
                   "post-jobs,interference")
    p.add_argument("--strict", action="store_true", help="exit 1 when a target fails")
    return p.parse_args(argv)


def mem_available() -> int:
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def work_root(fs: str, need: int) -> tuple[Path, str]:
    """tmpfs when it (and the memory behind it) has room for what this mode stores, else the disk."""
    if fs == "tmpfs" and TMPFS.is_dir():
        free, avail = shutil.disk_usage(TMPFS).free, mem_available()
        if free > need and avail > need + 3 * GiB:
            return TMPFS, "tmpfs (/dev/shm)"
        print(f"bench: /dev/shm has {free / GiB:.1f} GiB free and {avail / GiB:.1f} GiB of memory is available, "
              f"{need / GiB:.1f} GiB needed: using the disk", flush=True)
    base = Path(tempfile.gettempdir())
    return base, f"disk ({base})"


def prepare_inputs(ctx: Ctx) -> None:
    s = ctx.sizes
    t0 = time.monotonic()
    big = write_random(ctx.files / "big.bin", s.big)
    slice_file(big, ctx.files / "client.bin", s.client_size)
    slice_file(big, ctx.files / "interference.bin", min(s.interference_size, s.big))
    small = ctx.files / "small"
    small.mkdir()
    for i in range(s.small_count):
        slice_file(big, small / f"small-{i:04d}.bin", s.small_size, (i * s.small_size) % (s.big - s.small_size))
    print(f"inputs: {s.big / MiB:,.0f} MiB of random bytes and {s.small_count} small files in "
          f"{time.monotonic() - t0:.1f} s", flush=True)


def start_servers(ctx: Ctx, want_ftp_refs: bool) -> None:
    gw = Gateway(ctx.procs, ctx.work / "gateway")
    gw.start()
    ctx.gateway = gw
    time.sleep(0.2)
    with PeakRss(gw.pid) as idle:
        pass
    ctx.row(Row("gateway RSS after start-up and one login (context)", "MiB", Series([idle.peak_mib]),
                ratio_row=False, fmt="{:,.1f}"))
    if want_ftp_refs:
        ctx.ftp.append(start_bare_ftp(ctx.procs, ctx.work / "pyftpdlib"))
        _optional(ctx, "vsftpd", lambda: ctx.ftp.append(start_vsftpd(ctx.procs, ctx.work / "vsftpd")))
        ctx.bare_http = start_bare_http(ctx.procs, ctx.work / "aiohttp")
    _optional(ctx, "nginx", lambda: setattr(ctx, "nginx", start_nginx(ctx.procs, ctx.work / "nginx")))


def _optional(ctx: Ctx, name: str, start: Callable[[], Any]) -> None:
    if not have(name):
        ctx.skipped[name] = "not installed (`make bench` installs it)"
        ctx.note(f"reference {name} skipped: not installed")
        return
    try:
        start()
    except (BenchError, OSError, subprocess.SubprocessError) as e:
        ctx.skipped[name] = str(e)
        ctx.note(f"reference {name} skipped: {e}")


FIGURES = ("http-upload", "zip", "ftp-big", "ftp-parallel", "ftp-small", "post-jobs", "interference")


def measure(ctx: Ctx, only: set[str]) -> None:
    gw = ctx.gateway
    assert gw is not None
    s = ctx.sizes

    def new_target() -> Any:
        return gw.ftp_target(gw.new_job("bench ftp"))

    steps: dict[str, Callable[[], None]] = {  # the HTTP figures first: their RSS is the upload's own
        "http-upload": lambda: figures.http_upload(ctx),
        "zip": lambda: figures.zip_download(ctx, [s.zip_size] * s.zip_count, ctx.files / "big.bin", s.runs,
                                            verify_dir=ctx.work if ctx.mode == "smoke" else None),
        "ftp-big": lambda: figures.ftp_big(ctx, new_target()),
        "ftp-parallel": lambda: figures.ftp_parallel(ctx, new_target()),
        "ftp-small": lambda: figures.ftp_small(ctx, new_target),
        "post-jobs": lambda: figures.post_jobs(ctx),
        "interference": lambda: figures.interference(ctx, new_target()),
    }
    trail = [f"start {rss_mib(gw.pid):.0f}"]
    for name, step in steps.items():
        if name not in only:
            continue
        t0 = time.monotonic()
        print(f"[{name}] ...", flush=True)
        first_row = len(ctx.rows)
        try:
            step()
        except Skipped as e:
            _failed(ctx, name, first_row, str(e), status=f"skipped: {e}")
        except BenchError as e:
            _failed(ctx, name, first_row, str(e))
        except Exception as e:  # a harness bug: report it in the table, keep the other figures
            traceback.print_exc()
            _failed(ctx, name, first_row, f"{type(e).__name__}: {e}")
        print(f"[{name}] {time.monotonic() - t0:.1f} s", flush=True)
        trail.append(f"{name} {rss_mib(gw.pid):.0f}")
        for row in ctx.rows[first_row:]:
            print("   " + " | ".join(row.cells()), flush=True)
    ctx.note("gateway RSS (MiB) after each figure: " + ", ".join(trail))


def rss_mib(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as fh:
            return next(int(ln.split()[1]) for ln in fh if ln.startswith("VmRSS:")) / 1024
    except (OSError, StopIteration):
        return float("nan")


def _failed(ctx: Ctx, name: str, first_row: int, why: str, status: str = "ERROR (see notes)") -> None:
    ctx.note(f"{name}: {'ERROR ' if status.startswith('ERROR') else 'skipped: '}{why}")
    rows = ctx.rows[first_row:]
    if not rows:
        rows = [ctx.row(Row(name, "-"))]
    for row in rows:
        if not row.status:
            row.status = status


def large(ctx: Ctx, runs: int) -> None:
    """One job of 5 GiB: a clipped file of 4.5 GiB (ZIP64 sizes) and two after it (ZIP64 offsets). The zip
    is checked once with zipfile from a copy in the system temp folder, when it has room."""
    src = write_random(ctx.files / "big.bin", GiB)
    sizes = [4 * GiB + 512 * MiB, 256 * MiB, 256 * MiB]
    disk = Path(tempfile.gettempdir())
    verify_dir = None
    if shutil.disk_usage(disk).free > sum(sizes) + 2 * GiB:
        verify_dir = Path(tempfile.mkdtemp(prefix="gwbench-zip-", dir=disk))
    else:
        ctx.note(f"5 GiB job: not verified with zipfile, {disk} has less than {sum(sizes) / GiB + 2:.0f} GiB free")
    try:
        figures.zip_download(ctx, sizes, src, runs, verify_dir, with_nginx=False, rows_prefix="5 GiB job: ")
    finally:
        if verify_dir is not None:
            shutil.rmtree(verify_dir, ignore_errors=True)


def report(ctx: Ctx, started: float, out: Path) -> str:
    info = machine()
    lines = [
        f"# Gateway benchmark ({ctx.mode})",
        "",
        f"Date: {info.pop('date')}. Run took {time.monotonic() - started:.0f} s. "
        f"Storage of the gateway and of every reference: {ctx.fs}.",
        f"Machine: {info.pop('cores')} cores, {info.pop('memory')} memory, kernel {info.pop('kernel')}.",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in info.items()) + ".",
        "",
        f"Each cell: median (min-max) of {ctx.sizes.runs} run(s); ratio = gateway median / reference median. "
        "Client and servers share the machine's cores (loopback).",
        "",
        markdown_table(ctx.rows),
        "",
    ]
    if ctx.notes:
        lines += ["Notes:", "", *[f"- {n}" for n in ctx.notes], ""]
    text = "\n".join(lines)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    return text


def busy_cpu_seconds() -> float:
    """CPU seconds the whole machine spent busy since boot (user, nice, system, irq, softirq)."""
    with open("/proc/stat") as fh:
        f = [int(x) for x in fh.readline().split()[1:8]]
    return (f[0] + f[1] + f[2] + f[5] + f[6]) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    """This process and every child it has reaped (clients, and the servers once stopped)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    mode = "smoke" if args.smoke else "large" if args.large else "full"
    sizes: Sizes = SMOKE if args.smoke else FULL
    if args.runs:
        sizes = replace(sizes, runs=args.runs)
    if args.large:
        sizes = replace(sizes, runs=args.runs or 3)
    only = set(FIGURES) if not args.only else {x.strip() for x in args.only.split(",")}
    unknown = only - set(FIGURES)
    if unknown:
        print(f"bench: unknown figures {sorted(unknown)}; known: {', '.join(FIGURES)}", file=sys.stderr)
        return 2
    need = (7 if args.large else 5) * GiB if not args.smoke else 64 * MiB
    root, fs = work_root(args.fs, need)
    out = args.out or RESULTS / {"full": "latest.md", "smoke": "smoke.md", "large": "large.md"}[mode]
    started = time.monotonic()
    busy0, own0, load0 = busy_cpu_seconds(), own_cpu_seconds(), os.getloadavg()[0]
    signal.signal(signal.SIGTERM, _raise_interrupt)
    work = Path(tempfile.mkdtemp(prefix="gwbench-", dir=root))
    os.chmod(work, 0o755)  # vsftpd's user and nginx's worker reach their folders below it
    (work / "logs").mkdir()
    procs = Procs(work / "logs")
    ctx = Ctx(mode, sizes, work, procs, fs, started + args.budget)
    print(f"bench ({mode}): work folder {work} on {fs}", flush=True)
    try:
        if args.large:
            start_servers(ctx, want_ftp_refs=False)
            large(ctx, sizes.runs)
        else:
            prepare_inputs(ctx)
            start_servers(ctx, want_ftp_refs=True)
            measure(ctx, only)
    except BenchError as e:
        ctx.note(f"ERROR: {e}")
        for name in ("gateway", "pyftpdlib", "aiohttp", "vsftpd", "nginx"):
            tail = procs.log_tail(name, 8)
            if tail:
                print(f"--- {name} log (tail)\n{tail}", file=sys.stderr)
    finally:
        procs.close()
        shutil.rmtree(work, ignore_errors=True)
    elapsed = time.monotonic() - started
    foreign = max(0.0, (busy_cpu_seconds() - busy0) - (own_cpu_seconds() - own0))
    ctx.note(f"machine load: other processes used {foreign:,.0f} CPU-s during the run "
             f"({foreign / elapsed / (os.cpu_count() or 1):.0%} of the machine); load average at the start "
             f"{load0:.2f}. Figures drift with that load; the ratios are taken side by side, runs interleaved")
    report(ctx, started, out)
    print()
    print(text_table(ctx.rows))
    if ctx.notes:
        print("\nNotes:\n" + "\n".join(f"- {n}" for n in ctx.notes))
    print(f"\nwritten to {out} ({time.monotonic() - started:.0f} s)")
    if any(r.result.startswith("ERROR") for r in ctx.rows) or any("ERROR" in n for n in ctx.notes):
        return 1
    if args.strict and any(r.result == "FAIL" for r in ctx.rows):
        return 1
    return 0
