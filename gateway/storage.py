"""storage_root layout, safe names and paths, atomic spooled writes with hashing, scans."""

from __future__ import annotations

import ctypes
import errno
import functools
import hashlib
import os
import queue
import re
import secrets
import shutil
import stat
import threading
import unicodedata

try:  # ISA-L's crc32 gives zlib's result at many times the speed
    from isal.isal_zlib import crc32 as crc32  # re-exported: the bench hashes with the same function
except ImportError:  # pragma: no cover - isal has wheels for the usual platforms
    from zlib import crc32 as crc32
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from gateway.errors import InsufficientStorage, InvalidParameter, NotFound, PayloadTooLarge
from gateway.threads import name_this_thread

KINDS = ("ORIGINAL", "CLIPPED")
TEMP_PREFIX = ".gwtmp-"
TEMP_RE = re.compile(r"^\.gwtmp-[0-9a-f]{24}$")
MAX_NAME_BYTES = 255
MAX_DEPTH = 16
CHUNK = 1 << 20
HASH_STEP = 1 << 20  # the hasher wakes for at least this many new bytes (or the end)
_WINDOWS_RESERVED = {"CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$",
                     *(f"COM{i}" for i in range(10)), *(f"LPT{i}" for i in range(10))}
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# characters Windows' best-fit code pages turn into / or \ (NFKC leaves these alone)
_SLASH_LOOKALIKES = re.compile("[\u2044\u2215\u2216\u29f5\u29f8\u29f9\ufe68\uff0f\uff3c]")


# ----------------------------------------------------------------------------- names

# the checks below are pure functions of the name and run for every segment of every path a command
# names (an mput's folder, each time): the answers for recent names are kept (1,024 of them: at most
# ~2 MiB even for names as long as a command line may be)
@functools.lru_cache(maxsize=1024)
def name_problem(name: str) -> str | None:
    """Why one path segment cannot be stored safely, or None when it can."""
    if name in ("", ".", ".."):
        return "empty, '.' or '..' is not a file name"
    if "/" in name or "\\" in name or _SLASH_LOOKALIKES.search(name):
        return "a name must not contain '/' or '\\' (or a character that looks like one)"
    if _CONTROL.search(name):
        return "a name must not contain control characters"
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        return "a name must be valid UTF-8"
    if size > MAX_NAME_BYTES:
        return f"a name must not be longer than {MAX_NAME_BYTES} bytes"
    if name[-1] in ". ":
        return "a name must not end with a dot or a space"
    if name.split(".")[0].strip().upper() in _WINDOWS_RESERVED:
        return "reserved device names (CON, NUL, COM1, ...) are not allowed"
    if name.startswith(TEMP_PREFIX):
        return "names starting with .gwtmp- are reserved"
    return None


def check_name(name: str, param: str = "fileName") -> None:
    """Refuse a segment that is unsafe as written, as NFKC-folded or as percent-decoded."""
    why = _name_refusal(name)
    if why:
        raise InvalidParameter(param, f"{why}: {name!r}")


@functools.lru_cache(maxsize=1024)
def _name_refusal(name: str) -> str | None:
    seen = set()
    for candidate in (name, unquote(name)):
        for form in (candidate, unicodedata.normalize("NFKC", candidate)):
            if form in seen:
                continue
            seen.add(form)
            why = name_problem(form)
            if why:
                return why
    return None


def split_relpath(relpath: str, param: str = "fileName") -> list[str]:
    """A relative path below a kind folder as checked segments ('a/b.jpg' -> ['a', 'b.jpg'])."""
    parts = relpath.split("/")
    if len(parts) > MAX_DEPTH:
        raise InvalidParameter(param, f"at most {MAX_DEPTH} folder levels")
    for p in parts:
        check_name(p, param)
    return parts


def is_temp_name(name: str) -> bool:
    return name.startswith(TEMP_PREFIX)


# ----------------------------------------------------------------------------- layout

def _check_day(day: str) -> None:
    if not (len(day) == 8 and day.isdigit()):
        raise ValueError(f"bad day {day!r}")


@dataclass(frozen=True)
class Storage:
    """The tree storage_root/<yyyymmdd>/<jobId>/{ORIGINAL,CLIPPED}; every path goes through here."""

    root: Path  # absolute, symlinks resolved: every path below it is compared with its realpath
    min_free_bytes: int = 0
    _root: str = field(init=False, repr=False, compare=False, default="")  # str(root), for hot paths

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(os.path.realpath(self.root)))
        object.__setattr__(self, "_root", str(self.root))
        object.__setattr__(self, "_kind_dirs", {})  # (day, job, kind) -> Path: built once, not per command

    def job_dir(self, day: str, job_id: int) -> Path:
        _check_day(day)
        return self.root / day / str(int(job_id))

    def kind_dir(self, day: str, job_id: int, kind: str) -> Path:
        cache: dict[tuple[str, int, str], Path] = self._kind_dirs  # type: ignore[attr-defined]
        path = cache.get((day, job_id, kind))
        if path is None:
            if kind not in KINDS:
                raise ValueError(f"bad kind {kind!r}")
            if len(cache) >= 4096:
                cache.clear()
            path = cache[(day, job_id, kind)] = self.job_dir(day, job_id) / kind
        return path

    def make_job_dirs(self, day: str, job_id: int) -> None:
        """A new job's folder with its ORIGINAL/ and CLIPPED/. Plain strings, no Path: this runs on the
        database writer for every POST /jobs, whose per-job time bounds the request rate."""
        _check_day(day)
        job = f"{self._root}/{day}/{int(job_id)}"
        try:
            os.mkdir(job)  # the day's folder is there but for the first job of a day
        except FileNotFoundError:
            os.makedirs(job, exist_ok=True)
        except FileExistsError:
            pass
        for kind in KINDS:
            try:
                os.mkdir(f"{job}/{kind}")
            except FileExistsError:
                pass

    def remove_job(self, day: str, job_id: int) -> None:
        """Remove every file of a job (archiving); the empty kind folders stay."""
        for kind in KINDS:
            d = self.kind_dir(day, job_id, kind)
            if d.is_dir() and not d.is_symlink():
                shutil.rmtree(d)
            d.mkdir(parents=True, exist_ok=True)

    def path(self, day: str, job_id: int, kind: str, relpath: str) -> Path:
        """The real path of a checked relative path below a kind folder."""
        target = self.kind_dir(day, job_id, kind).joinpath(*split_relpath(relpath))
        self.refuse_links(target)
        return target

    def refuse_links(self, target: Path) -> None:
        """NotFound when any part of target below the root is a symlink (a link planted on disk)."""
        path, root = str(target), self._root
        if not path.startswith(root + "/"):
            if os.path.realpath(path) != path:
                raise NotFound("No such file or directory.")
            return
        names = path[len(root) + 1:].split("/")
        if "" in names or "." in names or ".." in names:
            raise NotFound("No such file or directory.")
        # the root itself is a resolved path: what lies below it is checked by the kernel in one path
        # walk (openat2 RESOLVE_NO_SYMLINKS), or else by an lstat per name (what os.path.realpath would
        # do for them, without its bookkeeping); either way a missing name ends the check
        linked = _kernel_finds_link(path)
        if linked is not None:
            if linked:
                raise NotFound("No such file or directory.")
            return
        current = root
        for name in names:
            current = f"{current}/{name}"
            try:
                mode = os.lstat(current).st_mode
            except (FileNotFoundError, NotADirectoryError):
                return
            if stat.S_ISLNK(mode):
                raise NotFound("No such file or directory.")

    def temp_path(self, directory: Path) -> Path:
        return directory / f"{TEMP_PREFIX}{secrets.token_hex(12)}"

    def free_bytes(self) -> int:
        st = os.statvfs(self.root)
        return st.f_bavail * st.f_frsize

    def check_free(self, incoming: int = 0) -> None:
        """Refuse new uploads when free space is below the floor (or would fall under it)."""
        if self.free_bytes() - incoming < self.min_free_bytes:
            raise InsufficientStorage("Not enough free space to store the file.")

    def scan(self, day: str, job_id: int, kind: str) -> Iterator[tuple[str, os.stat_result]]:
        """Regular finished files below a kind folder: (relative path, stat); temp names and links skipped."""
        base = self.kind_dir(day, job_id, kind)
        stack = [("", base)]
        while stack:
            prefix, d = stack.pop()
            try:
                entries = list(os.scandir(d))
            except OSError:
                continue
            for e in entries:
                rel = f"{prefix}{e.name}"
                if e.is_symlink() or is_temp_name(e.name) or name_problem(e.name):
                    continue
                if e.is_dir(follow_symlinks=False):
                    stack.append((rel + "/", Path(e.path)))
                elif e.is_file(follow_symlinks=False):
                    yield rel, e.stat(follow_symlinks=False)

    def temp_files(self, day: str, job_id: int, kind: str) -> Iterator[Path]:
        base = self.kind_dir(day, job_id, kind)
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = [d for d in dirnames if not os.path.islink(os.path.join(dirpath, d))]
            for n in filenames:
                if is_temp_name(n):
                    yield Path(dirpath) / n


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


_SYS_OPENAT2 = 437  # the same number on every Linux architecture (since 5.6)
_RESOLVE_NO_SYMLINKS = 0x04
_AT_FDCWD = -100
_openat2: Any = None  # libc's syscall(), while the kernel answers openat2; None: not tried yet; False: never
_how = _OpenHow(os.O_PATH | os.O_CLOEXEC, 0, _RESOLVE_NO_SYMLINKS)
_how_ref, _how_size = ctypes.byref(_how), ctypes.sizeof(_how)


def _kernel_finds_link(path: str) -> bool | None:
    """Whether resolving path meets a symlink, asked of the kernel in one walk: True, False (a missing
    name ends the walk, as for a name to create), or None where openat2 is unavailable (an old
    kernel, a seccomp filter): the caller walks the names itself. Measured on tmpfs, cold (as once per
    upload, 2 to 3 times per file): ~30 us for the lstat walk, ~14 us for this."""
    global _openat2
    if _openat2 is None:
        try:
            fn = ctypes.CDLL(None, use_errno=True).syscall
            fn.restype = ctypes.c_long
            # declared, so that every integer travels as a full register (syscall() is variadic, and
            # an undeclared int may leave the upper half of its register undefined)
            fn.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_char_p, ctypes.POINTER(_OpenHow), ctypes.c_size_t]
            _openat2 = fn
        except (OSError, AttributeError):  # pragma: no cover - no libc to call through
            _openat2 = False
    if _openat2 is False:
        return None
    fd = _openat2(_SYS_OPENAT2, _AT_FDCWD, os.fsencode(path), _how_ref, _how_size)
    if fd >= 0:
        os.close(fd)
        return False
    err = ctypes.get_errno()
    if err == errno.ELOOP:
        return True
    if err in (errno.ENOENT, errno.ENOTDIR):
        return False
    if err in (errno.ENOSYS, errno.EPERM, errno.EINVAL, errno.E2BIG):  # not here: walk from now on
        _openat2 = False
        return None
    raise OSError(err, os.strerror(err), path)


# ----------------------------------------------------------------------------- spooled writes

@dataclass(frozen=True)
class Digest:
    size: int
    md5: str
    crc32: int


def hash_file(path: Path) -> Digest:
    md5, crc, size = hashlib.md5(usedforsecurity=False), 0, 0
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            md5.update(chunk)
            crc = crc32(chunk, crc)
            size += len(chunk)
    return Digest(size, md5.hexdigest(), crc)


# added to the process's nice for hasher threads. POST /jobs p99 while 20 FTP uploads run (make bench):
# 64-71 ms with the hashers at the same nice, 45-54 ms at +10; STOR and HTTP upload speeds unchanged
HASHER_NICE = 10


class HashPool:
    """A few threads hash every spool's bytes shortly after they land. md5 and crc32 release the GIL on
    large buffers; a fixed pool, not a thread per upload, keeps 50 uploads from crowding the GIL that
    the event loop and the FTP thread need too."""

    BURST = 16 << 20  # bytes of one spool hashed before the next spool gets a turn

    def __init__(self, threads: int = 2) -> None:
        self._queue: queue.SimpleQueue[Spool | None] = queue.SimpleQueue()
        self._threads = [threading.Thread(target=self._work, name=f"hasher-{i}", daemon=True)
                         for i in range(threads)]
        for t in self._threads:
            t.start()

    def schedule(self, spool: Spool) -> None:
        self._queue.put(spool)

    def close(self) -> None:
        for _ in self._threads:
            self._queue.put(None)
        for t in self._threads:
            t.join()

    def _work(self) -> None:
        name_this_thread()
        try:  # bulk work: under CPU contention the API's loop and the FTP thread go first
            tid = threading.get_native_id()
            os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + HASHER_NICE))
        except OSError:
            pass
        while (spool := self._queue.get()) is not None:
            spool._hash_turn(self)


class Spool:
    """A hidden temp file beside its final name; md5 and crc32 follow the writes on a HashPool thread.

    The pool reads back what was written (from the page cache), so the writer never waits for it and
    memory stays flat; `digest()` waits until it has caught up. Writes are blocking: the FTP thread
    calls them directly (page-cache writes), the HTTP loop through an executor. At most one pool
    thread works on a spool at a time (md5 is sequential).
    """

    INLINE_LIMIT = 1 << 20  # up to this many unhashed bytes at the end are hashed by digest() itself
    HASH_AS_WRITTEN = 256 << 10  # a file's first bytes up to this are hashed from memory as they come

    def __init__(self, path: Path, max_size: int, pool: HashPool, start: int = 0, existing: bool = False) -> None:
        self.path = path
        self.max_size = max_size
        self._pool = pool
        flags = os.O_WRONLY | os.O_CLOEXEC | (0 if existing else os.O_CREAT | os.O_EXCL)
        self._fd = os.open(path, flags, 0o644)
        self._rfd = -1
        if existing:
            os.ftruncate(self._fd, start)
        self.size = start
        self._hashed = 0
        self._md5 = hashlib.md5(usedforsecurity=False)
        self._crc = 0
        self._cond = threading.Condition()
        self._ended = False
        self._cancelled = False
        self._failed: BaseException | None = None
        self._scheduled = False  # queued in, or being hashed by, the pool
        self._done_callbacks: list[Callable[[Spool], None]] = []
        self.name = str(path)  # pyftpdlib logs file_obj.name
        self.closed = False

    def fileno(self) -> int:
        return self._fd

    # -- writing
    def write(self, data: bytes | bytearray | memoryview) -> int:
        n = len(data)
        if self.size + n > self.max_size:
            raise PayloadTooLarge(f"The file is larger than the limit of {self.max_size} bytes.",
                                  code="file_too_large")
        view = memoryview(data)
        # a small file (most of a photo shoot's originals) is hashed from the bytes in hand: no second
        # descriptor, no read back. Only while nothing was handed to the pool (it never is below HASH_STEP).
        inline = self._hashed == self.size and self.size + n <= self.HASH_AS_WRITTEN and not self._scheduled
        try:
            while view:
                w = os.pwrite(self._fd, view, self.size)
                if inline:
                    self._md5.update(view[:w])
                    self._crc = crc32(view[:w], self._crc)
                    self._hashed += w
                self.size += w
                view = view[w:]
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise InsufficientStorage("The disk is full: the file could not be stored.") from e
            raise
        if not self._scheduled and self.size - self._hashed >= HASH_STEP:
            with self._cond:  # a turn in the pool only for a full step: few hand-offs per byte
                if not self._scheduled:
                    self._scheduled = True
                    self._pool.schedule(self)
        return n

    def prefill(self, source: Path, length: int) -> None:
        """Start from the first length bytes of a finished file (APPE or REST onto it)."""
        copy_prefix(source, self._fd, length)
        self.size = length

    def close(self) -> None:
        """End of the bytes (pyftpdlib closes its file object when the data connection ends)."""
        self.closed = True
        with self._cond:
            self._ended = True

    # -- hashing
    def _hash_upto(self, end: int) -> None:
        if self._hashed >= end:
            return  # all hashed already (a small file, from the bytes in hand): no descriptor to open
        if self._rfd < 0:
            self._rfd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        buf = bytearray(min(CHUNK, max(end - self._hashed, 1)))
        view = memoryview(buf)
        while self._hashed < end and not self._cancelled:
            n = os.preadv(self._rfd, [view[:min(len(buf), end - self._hashed)]], self._hashed)
            if not n:
                raise OSError(errno.EIO, "spool shrank while hashing")
            self._md5.update(view[:n])
            self._crc = crc32(view[:n], self._crc)
            self._hashed += n

    def _hash_turn(self, pool: HashPool) -> None:
        """One turn on a pool thread: hash a burst, then queue again, or finish."""
        try:
            if not self._cancelled and self._failed is None:
                self._hash_upto(min(self.size, self._hashed + pool.BURST))
        except BaseException as e:  # reported by digest()
            self._failed = e
        callbacks: list[Callable[[Spool], None]] = []
        with self._cond:
            more = self.size - self._hashed
            if not (self._cancelled or self._failed) and (more >= HASH_STEP or (self._ended and more > 0)):
                pool.schedule(self)  # another turn (other spools go first)
                return
            self._scheduled = False
            if self._ended or self._cancelled or self._failed:
                callbacks, self._done_callbacks = self._done_callbacks, []
            self._cond.notify_all()
        for cb in callbacks:
            cb(self)

    def when_hashed(self, callback: Callable[[Spool], None]) -> bool:
        """End the bytes. More than INLINE_LIMIT left to hash: callback(spool) runs on a pool thread once
        all are hashed, and this returns True. Less: this returns False, callback is not called, and
        digest() in the caller hashes the rest."""
        with self._cond:
            self.closed = self._ended = True
            if not self._scheduled and self.size - self._hashed > self.INLINE_LIMIT:
                self._scheduled = True
                self._pool.schedule(self)
            if self._scheduled:
                self._done_callbacks.append(callback)
                return True
        return False

    def _wait_idle(self) -> None:
        with self._cond:
            while self._scheduled:
                self._cond.wait()

    def digest(self) -> Digest:
        """The size, md5 and crc32 of every byte written (waits until the pool caught up)."""
        self.close()
        self._wait_idle()
        if self._failed is not None:
            raise self._failed
        self._hash_upto(self.size)
        return Digest(self.size, self._md5.hexdigest(), self._crc)

    # -- ending
    def _close_fds(self) -> None:
        for attr in ("_fd", "_rfd"):
            fd = getattr(self, attr)
            if fd >= 0:
                os.close(fd)
                setattr(self, attr, -1)

    def release(self) -> None:
        """Close the descriptors, keeping the temp file (a partial kept for resume)."""
        self.close()
        self._wait_idle()
        self._close_fds()

    def discard(self) -> None:
        """Throw the bytes away (the pool stops hashing them at once)."""
        self._cancelled = True
        self.release()
        unlink_quiet(self.path)

    def __del__(self) -> None:  # last resort: never leak descriptors
        try:
            self._close_fds()
        except Exception:  # noqa: S110 - interpreter shutdown
            pass


def unlink_quiet(path: Path) -> None:
    """Remove a file that may already be gone."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def finished_stat(path: Path) -> os.stat_result:
    """lstat of a finished file; a link or non-regular file is treated as missing."""
    st = os.lstat(path)
    if not stat.S_ISREG(st.st_mode):
        raise FileNotFoundError(errno.ENOENT, "not a regular file", str(path))
    return st


def copy_prefix(src: Path, dst_fd: int, length: int) -> None:
    """Copy the first length bytes of src into dst_fd (resuming onto a finished file)."""
    with open(src, "rb") as fh:
        remaining, offset = length, 0
        while remaining:
            n = os.copy_file_range(fh.fileno(), dst_fd, remaining, offset, offset)
            if n == 0:
                break
            remaining -= n
            offset += n
