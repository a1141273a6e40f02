"""Streamable, range-addressable STORED zip archives of a job's files.

The bytes of the archive are fully determined by the recorded entries (name, size,
mtime, crc32), so the total size and any byte range are known before reading a file.
:meth:`StoredZip.segments` describes a range as small ``bytes`` headers interleaved with
:class:`FileSlice` objects that the caller sends zero-copy (``os.sendfile``).
:func:`iter_bytes` is the pure-Python fallback (pread, for TLS).

Layout: for each entry a local header (no data descriptor) followed by the raw file
data; then one central directory record per entry; then, when needed, the ZIP64 end of
central directory record and locator; then the end of central directory record.
"""

from __future__ import annotations

import bisect
import calendar
import functools
import hashlib
import os
import stat
import struct
import time
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["FileSlice", "StoredZip", "ZipEntry", "ZipSourceChanged", "check_sources", "iter_bytes"]

_U32 = 0xFFFFFFFF
_U16 = 0xFFFF
_FLAGS = 0x0800  # bit 11: names are UTF-8
_MADE_BY_UNIX = 3 << 8
_EXT_ATTR = (stat.S_IFREG | 0o644) << 16
_LOCAL = struct.Struct("<IHHHHHIIIHH")  # 30 bytes
_CENTRAL = struct.Struct("<IHHHHHHIIIHHHHHII")  # 46 bytes
_EOCD64 = struct.Struct("<IQHHIIQQQQ")  # 56 bytes
_LOCATOR = struct.Struct("<IIQI")  # 20 bytes
_EOCD = struct.Struct("<IHHHHIIH")  # 22 bytes
_UT_LEN = 9  # extended timestamp extra field 0x5455: id, size, flags, mtime
_DOS_MIN = calendar.timegm((1980, 1, 1, 0, 0, 0))
_DOS_MAX = calendar.timegm((2107, 12, 31, 23, 59, 58))
_COALESCE = 1 << 16  # adjacent header bytes are merged up to this size


class ZipSourceChanged(Exception):
    """A source file vanished or no longer matches its recorded size/crc32."""


@dataclass(frozen=True, slots=True)
class ZipEntry:
    name: str  # path relative to the job folder, posix separators
    path: Path  # file on disk
    size: int
    mtime: float  # seconds since the epoch (UTC)
    crc32: int


@dataclass(frozen=True, slots=True)
class FileSlice:
    """``length`` bytes of ``path`` starting at ``offset`` (send with os.sendfile)."""

    path: Path
    offset: int
    length: int


def _check_name(name: str) -> bytes:
    if not name or name.startswith("/") or "\\" in name or "\x00" in name:
        raise ValueError(f"invalid zip entry name: {name!r}")
    if any(part in ("", ".", "..") for part in name.split("/")):
        raise ValueError(f"invalid zip entry name: {name!r}")
    try:
        raw = name.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"zip entry name is not valid UTF-8: {name!r}") from exc
    if len(raw) > _U16:
        raise ValueError(f"zip entry name too long: {name[:50]!r}...")
    return raw


def _dos_datetime(mtime: float) -> tuple[int, int]:
    t = time.gmtime(min(max(int(mtime), _DOS_MIN), _DOS_MAX))
    dos_time = (t.tm_hour << 11) | (t.tm_min << 5) | (t.tm_sec // 2)
    dos_date = ((t.tm_year - 1980) << 9) | (t.tm_mon << 5) | t.tm_mday
    return dos_time, dos_date


def _unix_time(mtime: float) -> int | None:
    """Seconds for the 0x5455 extra field, or None if it does not fit in int32."""
    t = int(mtime)
    return t if -(1 << 31) <= t < (1 << 31) else None


class StoredZip:
    """A STORED zip of ``entries`` whose bytes are addressable without reading files."""

    def __init__(self, entries: Sequence[ZipEntry], force_zip64: bool = False) -> None:
        self.entries: tuple[ZipEntry, ...] = tuple(entries)
        self.force_zip64 = force_zip64
        n = len(self.entries)
        self._names: list[bytes] = []
        self._offsets: list[int] = []  # local header offset of each entry
        seen: set[str] = set()
        # part k: 2i = local header of entry i, 2i+1 = its data, 2n+i = its central
        # record, 3n = the end records; _starts[k] is where part k begins.
        starts: list[int] = []
        pos = 0
        for i, e in enumerate(self.entries):
            if e.name in seen:
                raise ValueError(f"duplicate zip entry name: {e.name!r}")
            seen.add(e.name)
            if e.size < 0 or not 0 <= e.crc32 <= _U32:
                raise ValueError(f"invalid size or crc32 for zip entry {e.name!r}")
            raw = _check_name(e.name)
            self._names.append(raw)
            self._offsets.append(pos)
            starts.append(pos)
            pos += self._local_len(i)
            starts.append(pos)
            pos += e.size
        self._cd_offset = pos
        for i in range(n):
            starts.append(pos)
            pos += self._central_len(i)
        self._cd_size = pos - self._cd_offset
        self._zip64_end = force_zip64 or n >= _U16 or self._cd_offset >= _U32 or self._cd_size >= _U32
        starts.append(pos)
        pos += (_EOCD64.size + _LOCATOR.size if self._zip64_end else 0) + _EOCD.size
        starts.append(pos)
        self._starts = starts
        self.size: int = pos

    # -- per-entry header layout -------------------------------------------------
    def _zip64_sizes(self, i: int) -> bool:
        return self.force_zip64 or self.entries[i].size >= _U32

    def _zip64_offset(self, i: int) -> bool:
        return self.force_zip64 or self._offsets[i] >= _U32

    def _ut_len(self, i: int) -> int:
        return _UT_LEN if _unix_time(self.entries[i].mtime) is not None else 0

    def _local_len(self, i: int) -> int:
        return _LOCAL.size + len(self._names[i]) + (20 if self._zip64_sizes(i) else 0) + self._ut_len(i)

    def _central_len(self, i: int) -> int:
        z64 = 16 * self._zip64_sizes(i) + 8 * self._zip64_offset(i)
        return _CENTRAL.size + len(self._names[i]) + (4 + z64 if z64 else 0) + self._ut_len(i)

    def _common(self, i: int) -> tuple[int, int, int, bytes]:
        """(version needed, dos time, dos date, extended timestamp extra field)."""
        e = self.entries[i]
        version = 45 if self._zip64_sizes(i) or self._zip64_offset(i) else 20
        unix = _unix_time(e.mtime)
        ut = b"" if unix is None else struct.pack("<HHBi", 0x5455, 5, 1, unix)
        return (version, *_dos_datetime(e.mtime), ut)

    def _local_header(self, i: int) -> bytes:
        e, name = self.entries[i], self._names[i]
        version, dtime, ddate, ut = self._common(i)
        extra, size = ut, e.size
        if self._zip64_sizes(i):
            extra, size = struct.pack("<HHQQ", 1, 16, e.size, e.size) + ut, _U32
        head = _LOCAL.pack(
            0x04034B50, version, _FLAGS, 0, dtime, ddate, e.crc32, size, size, len(name), len(extra)
        )
        return head + name + extra

    def _central_record(self, i: int) -> bytes:
        e, name, offset = self.entries[i], self._names[i], self._offsets[i]
        version, dtime, ddate, ut = self._common(i)
        size, z64 = e.size, b""
        if self._zip64_sizes(i):
            size, z64 = _U32, struct.pack("<QQ", e.size, e.size)
        if self._zip64_offset(i):
            offset, z64 = _U32, z64 + struct.pack("<Q", self._offsets[i])
        extra = (struct.pack("<HH", 1, len(z64)) + z64 if z64 else b"") + ut
        head = _CENTRAL.pack(
            0x02014B50, _MADE_BY_UNIX | version, version, _FLAGS, 0, dtime, ddate, e.crc32,
            size, size, len(name), len(extra), 0, 0, 0, _EXT_ATTR, offset,
        )  # fmt: skip
        return head + name + extra

    def _end_records(self) -> bytes:
        n, cd_size, cd_offset = len(self.entries), self._cd_size, self._cd_offset
        out = b""
        if self._zip64_end:
            eocd64_offset = cd_offset + cd_size
            out = _EOCD64.pack(
                0x06064B50, _EOCD64.size - 12, _MADE_BY_UNIX | 45, 45, 0, 0, n, n, cd_size, cd_offset
            ) + _LOCATOR.pack(0x07064B50, 0, eocd64_offset, 1)
            if self.force_zip64:
                n, cd_size, cd_offset = _U16, _U32, _U32
        n, cd_size, cd_offset = min(n, _U16), min(cd_size, _U32), min(cd_offset, _U32)
        return out + _EOCD.pack(0x06054B50, 0, 0, n, n, cd_size, cd_offset, 0)

    # -- public ------------------------------------------------------------------
    @functools.cached_property
    def etag(self) -> str:
        """Strong ETag: a hash of the layout version and every name, size, mtime, crc32."""
        h = hashlib.sha256(b"stored-zip/1" + (b"z64" if self.force_zip64 else b""))
        for e, raw in zip(self.entries, self._names, strict=True):
            h.update(struct.pack("<IQdI", len(raw), e.size, e.mtime, e.crc32) + raw)
        return f'"{h.hexdigest()[:32]}"'

    def _parts(self, start: int, end: int | None) -> Iterator[bytes | tuple[int, int, int]]:
        """Bytes [start, end) as coalesced ``bytes`` and (entry index, offset, length)."""
        end = self.size if end is None else end
        if not 0 <= start <= end <= self.size:
            raise ValueError(f"invalid range [{start}, {end}) for zip of {self.size} bytes")
        n, starts = len(self.entries), self._starts
        buf: list[bytes] = []
        buffered = 0
        k = bisect.bisect_right(starts, start) - 1
        while start < end and starts[k] < end:
            lo, hi = max(start, starts[k]) - starts[k], min(end, starts[k + 1]) - starts[k]
            if hi > lo:
                if k < 2 * n and k % 2:
                    if buf:
                        yield b"".join(buf)
                        buf, buffered = [], 0
                    yield (k // 2, lo, hi - lo)
                else:
                    if k < 2 * n:
                        data = self._local_header(k // 2)
                    elif k < 3 * n:
                        data = self._central_record(k - 2 * n)
                    else:
                        data = self._end_records()
                    buf.append(data[lo:hi] if (lo, hi) != (0, len(data)) else data)
                    buffered += hi - lo
                    if buffered >= _COALESCE:
                        yield b"".join(buf)
                        buf, buffered = [], 0
            k += 1
        if buf:
            yield b"".join(buf)

    def segments(self, start: int = 0, end: int | None = None) -> Iterator[bytes | FileSlice]:
        """Yield non-empty segments covering exactly bytes [start, end) in order."""
        for part in self._parts(start, end):
            if isinstance(part, bytes):
                yield part
            else:
                i, offset, length = part
                yield FileSlice(self.entries[i].path, offset, length)


def _open_checked(entry: ZipEntry) -> int:
    try:
        fd = os.open(entry.path, os.O_RDONLY)
    except OSError as exc:
        raise ZipSourceChanged(f"{entry.name}: cannot open {entry.path}: {exc}") from exc
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_size != entry.size:
        os.close(fd)
        raise ZipSourceChanged(f"{entry.name}: size is {st.st_size}, recorded {entry.size}")
    return fd


def iter_bytes(
    zip: StoredZip, start: int = 0, end: int | None = None, chunk: int = 1 << 20, verify_crc: bool = True
) -> Iterator[bytes]:
    """Yield bytes [start, end) of ``zip``, reading files with pread in ``chunk`` pieces.

    Raises ZipSourceChanged when a file vanished or its size differs from the recorded
    one; when a whole entry is read and ``verify_crc`` is set, its crc32 is checked too
    and the entry's last chunk is held back until it matches.
    """
    for part in zip._parts(start, end):
        if isinstance(part, bytes):
            yield part
            continue
        i, pos, length = part
        entry, stop = zip.entries[i], pos + length
        whole = verify_crc and length == entry.size
        fd = _open_checked(entry)
        try:
            crc, pending = 0, b""
            while pos < stop:
                data = os.pread(fd, min(chunk, stop - pos), pos)
                if not data:
                    raise ZipSourceChanged(f"{entry.name}: file shrank while reading")
                pos += len(data)
                if whole:
                    crc = zlib.crc32(data, crc)
                if pending:
                    yield pending
                pending = data
            if whole and crc != entry.crc32:
                raise ZipSourceChanged(f"{entry.name}: crc32 {crc:08x}, recorded {entry.crc32:08x}")
            yield pending
        finally:
            os.close(fd)


def check_sources(zip: StoredZip) -> None:
    """Raise ZipSourceChanged if any entry's file is missing, not regular, or resized."""
    for entry in zip.entries:
        try:
            st = os.stat(entry.path)
        except OSError as exc:
            raise ZipSourceChanged(f"{entry.name}: {entry.path} is gone: {exc}") from exc
        if not stat.S_ISREG(st.st_mode):
            raise ZipSourceChanged(f"{entry.name}: {entry.path} is not a regular file")
        if st.st_size != entry.size:
            raise ZipSourceChanged(f"{entry.name}: size is {st.st_size}, recorded {entry.size}")
