"""Processes, ports and memory: every server the bench starts runs in its own process group and is
stopped by Procs.close(); ports come from the kernel; peak RSS is read from /proc."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

LOCAL = "127.0.0.1"


class BenchError(Exception):
    """A measurement could not be made (a server did not start, a client failed)."""


class Skipped(BenchError):
    """A figure cannot be measured on this machine (an optional tool is missing): noted, not an error."""


def free_port() -> int:
    """A port nobody listens on right now (the server binds it itself a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOCAL, 0))
        return int(s.getsockname()[1])


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((LOCAL, port))
        except OSError:
            return False
    return True


_taken_ranges: list[tuple[int, int]] = []


def free_range(count: int) -> tuple[int, int]:
    """count consecutive free ports (passive data ports), not overlapping earlier ranges of this run."""
    lo = 40000 + (os.getpid() * 7) % 10000
    for _ in range(200):
        hi = lo + count - 1
        clash = any(not (hi < a or lo > b) for a, b in _taken_ranges)
        if not clash and all(_bindable(p) for p in range(lo, hi + 1)):
            _taken_ranges.append((lo, hi))
            return lo, hi
        lo = hi + 1 if hi + count < 60000 else 30000
    raise BenchError(f"no range of {count} free ports")


def wait_port(port: int, proc: subprocess.Popen[Any] | None, timeout: float = 15.0, what: str = "server") -> None:
    """Wait until 127.0.0.1:port accepts connections (or the process died, or time ran out)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise BenchError(f"{what} exited with code {proc.returncode} before listening on {port}")
        with contextlib.suppress(OSError), socket.create_connection((LOCAL, port), timeout=0.5):
            return
        time.sleep(0.05)
    raise BenchError(f"{what} did not listen on port {port} within {timeout:.0f} s")


@dataclass
class Procs:
    """The processes and users this run started; close() stops every one (TERM, then KILL)."""

    logdir: Path
    procs: list[tuple[str, subprocess.Popen[Any]]] = field(default_factory=list)
    cleanups: list[Any] = field(default_factory=list)

    def start(self, name: str, argv: Sequence[str], **kw: Any) -> subprocess.Popen[Any]:
        log: IO[bytes] = open(self.logdir / f"{name}.log", "ab")  # closed below: the child keeps its copy
        try:
            p = subprocess.Popen(list(argv), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 start_new_session=True, **kw)
        finally:
            log.close()
        self.procs.append((name, p))
        return p

    def log_tail(self, name: str, lines: int = 15) -> str:
        try:
            text = (self.logdir / f"{name}.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, p: subprocess.Popen[Any], grace: float = 10.0) -> None:
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
            try:
                p.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        with contextlib.suppress(ProcessLookupError):  # stragglers of the group (workers, children)
            os.killpg(p.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(5)
        self.procs = [(n, q) for n, q in self.procs if q is not p]

    def on_close(self, fn: Any) -> None:
        self.cleanups.append(fn)

    def close(self) -> None:
        for _, p in reversed(self.procs):
            self.stop(p)
        for fn in reversed(self.cleanups):
            with contextlib.suppress(Exception):
                fn()
        self.cleanups.clear()


def run(argv: Sequence[str], timeout: float, check: bool = True, input: str | None = None,
        **kw: Any) -> subprocess.CompletedProcess[str]:
    """A client command bounded in time; its own process group, killed whole on time-out."""
    stdin = subprocess.DEVNULL if input is None else subprocess.PIPE
    p = subprocess.Popen(list(argv), stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True, **kw)
    try:
        out, err = p.communicate(input=input, timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)
        p.communicate()
        raise BenchError(f"{Path(argv[0]).name} timed out after {timeout:.0f} s") from None
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        raise
    if check and p.returncode != 0:
        raise BenchError(f"{Path(argv[0]).name} failed ({p.returncode}): {(err or out).strip()[-400:]}")
    return subprocess.CompletedProcess(list(argv), p.returncode, out, err)


def have(tool: str) -> bool:
    return shutil.which(tool) is not None or Path("/usr/sbin", tool).exists()


def tool_path(tool: str) -> str:
    found = shutil.which(tool) or (str(Path("/usr/sbin", tool)) if Path("/usr/sbin", tool).exists() else None)
    if found is None:
        raise BenchError(f"{tool} is not installed")
    return found


# ----------------------------------------------------------------------------- memory

def _status_kib(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


class PeakRss:
    """Peak resident memory of a process during a block: VmHWM reset through clear_refs, plus sampling."""

    def __init__(self, pid: int, every: float = 0.02) -> None:
        self.pid, self.every = pid, every
        self.peak_kib = 0
        self.start_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True, name="rss-sampler")

    def _sample(self) -> None:
        while not self._stop.wait(self.every):
            with contextlib.suppress(OSError, ValueError):
                self.peak_kib = max(self.peak_kib, _status_kib(self.pid, "VmRSS"))

    def __enter__(self) -> PeakRss:
        with contextlib.suppress(OSError):
            Path(f"/proc/{self.pid}/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        with contextlib.suppress(OSError, ValueError):
            self.start_kib = self.peak_kib = _status_kib(self.pid, "VmRSS")
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        with contextlib.suppress(OSError, ValueError):
            self.peak_kib = max(self.peak_kib, _status_kib(self.pid, "VmHWM"), _status_kib(self.pid, "VmRSS"))

    @property
    def peak_mib(self) -> float:
        return self.peak_kib / 1024

    @property
    def growth_mib(self) -> float:
        return (self.peak_kib - self.start_kib) / 1024


@contextlib.contextmanager
def timed() -> Iterator[list[float]]:
    """with timed() as t: ...; t[0] is the elapsed wall time in seconds."""
    box = [0.0]
    t0 = time.perf_counter()
    try:
        yield box
    finally:
        box[0] = time.perf_counter() - t0
