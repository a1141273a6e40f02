"""What every figure shares: sizes of the mode, the work folder, the servers, the input files, the rows."""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from bench.proc import BenchError, Procs
from bench.report import Row
from bench.servers import BareHttp, FtpTarget, Gateway, Nginx

MiB = 1 << 20
GiB = 1 << 30


@dataclass(frozen=True)
class Sizes:
    runs: int
    big: int  # the big-file figures: FTP STOR/RETR, HTTP upload
    clients: int  # concurrent FTP uploads ...
    client_size: int  # ... of this size each
    small_count: int  # files in one lftp mput ...
    small_size: int  # ... of this size each
    zip_count: int  # clipped files in the zip job ...
    zip_size: int  # ... of this size each
    load_seconds: float  # one POST /jobs load run
    connections: int
    interference_uploads: int
    interference_rate: str  # curl --limit-rate of each background upload
    interference_size: int
    client_timeout: float  # one client command at most


FULL = Sizes(runs=5, big=GiB, clients=50, client_size=20 * MiB, small_count=1000, small_size=100 * 1024,
             zip_count=200, zip_size=5 * MiB, load_seconds=3, connections=64, interference_uploads=20,
             interference_rate="10M", interference_size=64 * MiB, client_timeout=300)
SMOKE = Sizes(runs=1, big=4 * MiB, clients=4, client_size=MiB, small_count=10, small_size=100 * 1024,
              zip_count=4, zip_size=256 * 1024, load_seconds=1, connections=8, interference_uploads=3,
              interference_rate="4M", interference_size=4 * MiB, client_timeout=60)


@dataclass
class Ctx:
    mode: str
    sizes: Sizes
    work: Path
    procs: Procs
    fs: str
    deadline: float  # monotonic: later figures are skipped past it
    gateway: Gateway | None = None
    ftp: list[FtpTarget] = field(default_factory=list)  # pyftpdlib, vsftpd (when available)
    bare_http: BareHttp | None = None
    nginx: Nginx | None = None
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # reference -> why
    hash_rate: object = None  # the md5 + crc32 Series, measured once (figures.hash_ceiling)

    def row(self, row: Row) -> Row:
        self.rows.append(row)
        return row

    def note(self, text: str) -> None:
        self.notes.append(text)
        print(f"  note: {text}", flush=True)

    @property
    def files(self) -> Path:
        return self.work / "input"

    def time_left(self) -> float:
        return self.deadline - time.monotonic()

    def ftp_ref(self, name: str) -> FtpTarget | None:
        return next((t for t in self.ftp if t.name == name), None)


def write_random(path: Path, size: int) -> Path:
    """size random bytes (nothing compresses), written in 1 MiB blocks."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        left = size
        while left:
            n = min(MiB, left)
            fh.write(os.urandom(n))
            left -= n
    return path


def slice_file(src: Path, dst: Path, size: int, offset: int = 0) -> Path:
    """The bytes src[offset:offset+size] as a file of its own (copy_file_range: no Python loop)."""
    with open(src, "rb") as fi, open(dst, "wb") as fo:
        left, off_in = size, offset
        while left:
            n = os.copy_file_range(fi.fileno(), fo.fileno(), left, off_in)
            if n == 0:
                raise BenchError(f"{src} is shorter than {offset + size} bytes")
            left -= n
            off_in += n
    return dst


def server_cpu(pid: int) -> float:
    """CPU seconds used so far by a server and all its descendants (vsftpd's sessions call setsid, so
    the process group is not enough): live and zombie ones by their own counters, reaped ones through
    their parents' cutime and cstime."""
    tick = os.sysconf("SC_CLK_TCK")
    stats: dict[int, tuple[int, float]] = {}  # pid -> (ppid, seconds)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            # fields[0] is field 3 (state): ppid is field 4, utime..cstime are fields 14..17
            stats[int(entry)] = (int(fields[1]), sum(int(x) for x in fields[11:15]) / tick)
    children: dict[int, list[int]] = {}
    for p, (ppid, _) in stats.items():
        children.setdefault(ppid, []).append(p)
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        if p in stats:
            total += stats[p][1]
            todo.extend(children.get(p, []))
    return total


@contextlib.contextmanager
def cpu_of(pid: int) -> Iterator[list[float]]:
    box = [0.0]
    before = server_cpu(pid)
    try:
        yield box
    finally:
        box[0] = server_cpu(pid) - before


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds of each thread of one process, summed by role: the main thread is 'loop', numbered
    siblings share a name ('hasher-0' and 'hasher-1' are 'hasher'), unnamed threads are 'other'."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                with open(f"/proc/{pid}/task/{tid}/stat") as fh:
                    raw = fh.read()
                comm = raw[raw.index("(") + 1:raw.rindex(")")]
                fields = raw[raw.rindex(")") + 2:].split()
                seconds = (int(fields[11]) + int(fields[12])) / tick
                role = "loop" if int(tid) == pid else re.sub(r"[-_]\d+$", "", comm)
                if int(tid) != pid and role == comm and not re.search(r"[-_]", comm):
                    role = "other"  # a thread that never named itself carries the process name
                out[role] = out.get(role, 0.0) + seconds
    return out


@contextlib.contextmanager
def threads_of(pid: int) -> Iterator[dict[str, float]]:
    """Each thread role's busy share of the wall time of the block (a role of two threads can pass 1)."""
    box: dict[str, float] = {}
    before, t0 = thread_cpu(pid), time.perf_counter()
    try:
        yield box
    finally:
        wall = max(time.perf_counter() - t0, 1e-9)
        after = thread_cpu(pid)
        for role, seconds in after.items():
            box[role] = (seconds - before.get(role, 0.0)) / wall


class ThreadLog:
    """Per figure, the gateway threads' busy shares over its runs: which one is the bottleneck."""

    def __init__(self) -> None:
        self.data: dict[str, list[dict[str, float]]] = {}

    def add(self, figure: str, shares: dict[str, float]) -> None:
        self.data.setdefault(figure, []).append(shares)

    def notes(self) -> list[str]:
        out = []
        for figure, runs in self.data.items():
            roles = {r for shares in runs for r in shares}
            med = {r: sorted(s.get(r, 0.0) for s in runs)[len(runs) // 2] for r in roles}
            busy = [f"{r} {v:.0%}" for r, v in sorted(med.items(), key=lambda kv: -kv[1]) if v >= 0.02]
            out.append(f"{figure}: gateway threads busy (share of the wall time, median of {len(runs)}): "
                       + ", ".join(busy))
        return out


@contextlib.contextmanager
def machine_busy() -> Iterator[list[float]]:
    """Busy CPU of the whole machine during the block, in cores (2.0: both cores of a 2-core machine)."""
    def busy() -> float:
        with open("/proc/stat") as fh:
            f = [int(x) for x in fh.readline().split()[1:]]
        return (sum(f) - f[3] - f[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait
    box = [0.0]
    before, t0 = busy(), time.perf_counter()
    try:
        yield box
    finally:
        box[0] = (busy() - before) / max(time.perf_counter() - t0, 1e-9)
