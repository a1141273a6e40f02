"""Tests for gateway.zips: STORED zip streaming with ranges, ZIP64 and source checks."""

from __future__ import annotations

import calendar
import hashlib
import io
import os
import random
import shutil
import struct
import subprocess
import time
import zipfile
import zlib
from collections.abc import Iterable
from pathlib import Path

import pytest

from gateway.zips import FileSlice, StoredZip, ZipEntry, ZipSourceChanged, check_sources, iter_bytes

UNZIP = shutil.which("unzip")
needs_unzip = pytest.mark.skipif(UNZIP is None, reason="unzip not installed (apt-get install unzip)")
UTF8_ENV = {**os.environ, "LC_ALL": "C.UTF-8"}
T2001 = calendar.timegm((2001, 2, 3, 4, 5, 7))  # odd second: DOS time rounds it down

# relative name -> size; includes sub-folders, UTF-8 names and an empty file
FILES = {
    "a.jpg": 70_000,
    "empty.txt": 0,
    "café/ünï.jpg": 12_345,
    "sub/dir/deep.png": 1,
    "sub/b.tif": 150_000,
    "日本語/写真.jpg": 333,
}


def make_entries(root: Path, files: dict[str, int], seed: int = 1) -> list[ZipEntry]:
    rng = random.Random(seed)
    entries = []
    for i, (name, size) in enumerate(files.items()):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        data = rng.randbytes(size)
        path.write_bytes(data)
        mtime = T2001 + i * 86_400 * 37 + i
        os.utime(path, (mtime, mtime))
        entries.append(ZipEntry(name, path, size, path.stat().st_mtime, zlib.crc32(data)))
    return entries


def entry(name: str, path: Path, data: bytes, mtime: float = T2001) -> ZipEntry:
    return ZipEntry(name, path, len(data), mtime, zlib.crc32(data))


def join_segments(segments: Iterable[bytes | FileSlice]) -> bytes:
    out = bytearray()
    cache: dict[Path, bytes] = {}
    for seg in segments:
        if isinstance(seg, bytes):
            assert seg, "empty bytes segment"
            out += seg
        else:
            assert seg.length > 0 and seg.offset >= 0
            data = cache.setdefault(seg.path, seg.path.read_bytes())
            assert seg.offset + seg.length <= len(data)
            out += data[seg.offset : seg.offset + seg.length]
    return bytes(out)


def materialise(z: StoredZip, start: int = 0, end: int | None = None) -> bytes:
    return join_segments(z.segments(start, end))


def unzip(*args: str | Path) -> subprocess.CompletedProcess[str]:
    assert UNZIP is not None
    return subprocess.run([UNZIP, *map(str, args)], capture_output=True, text=True, env=UTF8_ENV)


@pytest.fixture
def job(tmp_path: Path) -> list[ZipEntry]:
    return make_entries(tmp_path / "job", FILES)


@pytest.mark.parametrize("force", [False, True])
def test_zipfile_reads_everything(job: list[ZipEntry], force: bool) -> None:
    z = StoredZip(job, force_zip64=force)
    data = materialise(z)
    assert len(data) == z.size
    assert b"".join(iter_bytes(z)) == data
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        assert zf.testzip() is None
        infos = zf.infolist()
        assert [i.filename for i in infos] == [e.name for e in job]
        for info, e in zip(infos, job, strict=True):
            assert info.file_size == info.compress_size == e.size
            assert info.compress_type == zipfile.ZIP_STORED
            assert info.flag_bits & 0x0800
            assert info.CRC == e.crc32
            t = time.gmtime(e.mtime)
            assert info.date_time == (*t[:5], t.tm_sec // 2 * 2)
            src = hashlib.md5(e.path.read_bytes()).hexdigest()
            assert hashlib.md5(zf.read(info)).hexdigest() == src
            assert (info.external_attr >> 16) & 0o777 == 0o644
            assert (0x0001 in _extra_ids(info.extra)) == force
            assert 0x5455 in _extra_ids(info.extra)


def _extra_ids(extra: bytes) -> list[int]:
    ids = []
    while len(extra) >= 4:
        tp, ln = struct.unpack("<HH", extra[:4])
        ids.append(tp)
        extra = extra[4 + ln :]
    return ids


@needs_unzip
@pytest.mark.parametrize("force", [False, True])
def test_unzip_accepts_and_restores_times(job: list[ZipEntry], tmp_path: Path, force: bool) -> None:
    zpath = tmp_path / "out.zip"
    zpath.write_bytes(materialise(StoredZip(job, force_zip64=force)))
    res = unzip("-t", zpath)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "No errors detected" in res.stdout
    listing = unzip("-l", zpath).stdout
    for e in job:
        assert e.name in listing
    res = unzip("-q", zpath, "-d", tmp_path / "x")
    assert res.returncode == 0, res.stdout + res.stderr
    for e in job:
        out = tmp_path / "x" / e.name
        assert out.read_bytes() == e.path.read_bytes()
        assert out.stat().st_mtime == int(e.mtime)  # exact, from the 0x5455 extra field


def _boundaries(z: StoredZip) -> list[int]:
    pos, marks = 0, [0]
    for seg in z.segments():
        pos += len(seg) if isinstance(seg, bytes) else seg.length
        marks.append(pos)
    return marks


@pytest.mark.parametrize("force", [False, True])
def test_every_range_matches(job: list[ZipEntry], force: bool) -> None:
    z = StoredZip(job, force_zip64=force)
    full = materialise(z)
    size = z.size
    pairs = {(0, 0), (0, 1), (size - 1, size), (0, size), (size, size), (size - 22, size)}
    for b in _boundaries(z):
        for s in (b - 1, b, b + 1):
            for e in (s, s + 1, b + 1, b + 30, size):
                if 0 <= s <= e <= size:
                    pairs.add((s, e))
    rng = random.Random(7)
    for _ in range(400):
        s, e = sorted((rng.randrange(size + 1), rng.randrange(size + 1)))
        pairs.add((s, e))
        pairs.add((s, min(size, s + rng.randrange(100))))
    for s, e in sorted(pairs):
        assert materialise(z, s, e) == full[s:e], (s, e)
        assert b"".join(iter_bytes(z, s, e, chunk=4096)) == full[s:e], (s, e)
    assert materialise(z, 5) == full[5:]


def test_range_inside_entry_is_one_file_slice(job: list[ZipEntry]) -> None:
    z = StoredZip(job)
    full = materialise(z)
    big = job[0]
    at = full.index(big.path.read_bytes()[:64])
    assert list(z.segments(at + 10, at + 1000)) == [FileSlice(big.path, 10, 990)]


def test_invalid_ranges(job: list[ZipEntry]) -> None:
    z = StoredZip(job)
    for s, e in [(-1, 5), (5, 4), (0, z.size + 1), (z.size + 1, None)]:
        with pytest.raises(ValueError):
            list(z.segments(s, e))
        with pytest.raises(ValueError):
            list(iter_bytes(z, s, e))


def test_headers_are_coalesced(tmp_path: Path) -> None:
    path = tmp_path / "empty"
    path.touch()
    z = StoredZip([entry(f"f{i:05}", path, b"") for i in range(3000)])
    segs = list(z.segments())
    assert all(isinstance(s, bytes) for s in segs)
    assert len(segs) <= z.size // (1 << 16) + 2
    with zipfile.ZipFile(io.BytesIO(join_segments(segs))) as zf:
        assert len(zf.infolist()) == 3000


def test_empty_zip() -> None:
    for force in (False, True):
        z = StoredZip([], force_zip64=force)
        data = materialise(z)
        assert len(data) == z.size == (22 if not force else 22 + 56 + 20)
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            assert zf.infolist() == []
            assert zf.testzip() is None
    assert materialise(StoredZip([])) == b"PK\x05\x06" + bytes(18)


def _zip64_end(data: bytes) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(zip64 end record fields, end record fields) parsed from the archive's tail."""
    eocd = struct.unpack("<IHHHHIIH", data[-22:])
    sig, _disk, offset, disks = struct.unpack("<IIQI", data[-42:-22])
    assert (sig, disks) == (0x07064B50, 1)
    assert offset == len(data) - 42 - 56
    return struct.unpack("<IQHHIIQQQQ", data[offset : offset + 56]), eocd


def test_forced_zip64_end_records(job: list[ZipEntry]) -> None:
    data = materialise(StoredZip(job, force_zip64=True))
    rec, eocd = _zip64_end(data)
    sig, rec_size, _made_by, needed, _disk, _cd_disk, n_disk, n, cd_size, cd_offset = rec
    assert (sig, rec_size, needed, n_disk, n) == (0x06064B50, 44, 45, len(job), len(job))
    assert cd_offset + cd_size == len(data) - 42 - 56
    assert data[cd_offset : cd_offset + 4] == b"PK\x01\x02"
    assert eocd[3:7] == (0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF)
    plain = materialise(StoredZip(job))
    assert plain[-22:-18] == b"PK\x05\x06" and b"PK\x06\x06" not in plain[-100:]


def test_more_than_65535_entries(tmp_path: Path) -> None:
    path = tmp_path / "tiny.txt"
    path.write_bytes(b"x")
    n = 70_000
    t0 = time.perf_counter()
    z = StoredZip([entry(f"d{i // 1000}/f{i}.txt", path, b"x") for i in range(n)])
    data = materialise(z)
    assert time.perf_counter() - t0 < 10
    assert len(data) == z.size
    rec, eocd = _zip64_end(data)
    assert rec[6:8] == (n, n)
    assert eocd[3:5] == (0xFFFF, 0xFFFF)
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        infos = zf.infolist()
        assert len(infos) == n
        assert infos[-1].filename == f"d69/f{n - 1}.txt"
        assert zf.read(infos[-1]) == b"x"
    if UNZIP is not None:
        zpath = tmp_path / "many.zip"
        zpath.write_bytes(data)
        res = unzip("-tq", zpath)
        assert res.returncode == 0, res.stdout + res.stderr


def test_segments_cheap_for_10000_entries(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"0123456789" * 100)
    t0 = time.perf_counter()
    z = StoredZip([entry(f"dir/file{i}.jpg", path, b"0123456789" * 100) for i in range(10_000)])
    built = time.perf_counter() - t0
    rng = random.Random(3)
    t0 = time.perf_counter()
    for _ in range(2000):
        s = rng.randrange(z.size)
        list(z.segments(s, min(z.size, s + 5000)))
    ranged = time.perf_counter() - t0
    assert built < 2 and ranged < 2, (built, ranged)


@pytest.mark.parametrize(
    "name",
    ["/abs.jpg", "../x", "a/../b", "a/..", "a\\b.jpg", "a\x00b", "", "a//b", "a/", "./a", "bad\udcff"],
)
def test_bad_names_rejected(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError):
        StoredZip([entry(name, tmp_path / "x", b"")])


def test_duplicates_and_bad_numbers_rejected(tmp_path: Path) -> None:
    p = tmp_path / "x"
    with pytest.raises(ValueError, match="duplicate"):
        StoredZip([entry("a/b", p, b"1"), entry("c", p, b""), entry("a/b", p, b"22")])
    with pytest.raises(ValueError):
        StoredZip([ZipEntry("a", p, -1, T2001, 0)])
    with pytest.raises(ValueError):
        StoredZip([ZipEntry("a", p, 1, T2001, 1 << 32)])


def test_dos_time_clamped(tmp_path: Path) -> None:
    p = tmp_path / "x"
    p.write_bytes(b"abc")
    far = calendar.timegm((2300, 1, 1, 0, 0, 0))
    z = StoredZip(
        [entry("old", p, b"abc", 0.0), entry("future", p, b"abc", far), entry("y2k", p, b"abc", 946684799.9)]
    )
    with zipfile.ZipFile(io.BytesIO(materialise(z))) as zf:
        old, future, y2k = zf.infolist()
        assert old.date_time == (1980, 1, 1, 0, 0, 0)
        assert future.date_time == (2107, 12, 31, 23, 59, 58)
        assert y2k.date_time == (1999, 12, 31, 23, 59, 58)
        assert 0x5455 in _extra_ids(old.extra) and 0x5455 not in _extra_ids(future.extra)
        assert zf.testzip() is None


def test_etag(tmp_path: Path) -> None:
    p = tmp_path / "x"
    base = [entry("a.jpg", p, b"abc"), entry("b/c.jpg", p, b"defg", T2001 + 10)]
    etag = StoredZip(base).etag
    assert etag.startswith('"') and etag.endswith('"') and len(etag) > 10
    assert StoredZip(list(base)).etag == etag
    assert (
        StoredZip([*base[:1], ZipEntry("b/c.jpg", tmp_path / "elsewhere", 4, T2001 + 10, base[1].crc32)]).etag
        == etag
    )
    variants = [
        ZipEntry("b/d.jpg", p, 4, T2001 + 10, base[1].crc32),
        ZipEntry("b/c.jpg", p, 5, T2001 + 10, base[1].crc32),
        ZipEntry("b/c.jpg", p, 4, T2001 + 11, base[1].crc32),
        ZipEntry("b/c.jpg", p, 4, T2001 + 10, base[1].crc32 ^ 1),
    ]
    tags = {StoredZip([base[0], v]).etag for v in variants}
    assert len(tags) == len(variants) and etag not in tags
    assert StoredZip(base[::-1]).etag != etag
    assert StoredZip(base, force_zip64=True).etag != etag


@pytest.mark.parametrize("change", ["truncate", "grow", "delete", "directory"])
def test_changed_sources_detected(job: list[ZipEntry], change: str) -> None:
    z = StoredZip(job)
    check_sources(z)
    target = job[4]  # sub/b.tif
    if change == "truncate":
        os.truncate(target.path, target.size - 1)
    elif change == "grow":
        target.path.write_bytes(b"y" * (target.size + 10))
    elif change == "delete":
        target.path.unlink()
    else:
        target.path.unlink()
        target.path.mkdir()
    with pytest.raises(ZipSourceChanged):
        check_sources(z)
    with pytest.raises(ZipSourceChanged):
        b"".join(iter_bytes(z))
    # other entries still stream (the check is per file slice)
    first = job[0]
    at = materialise(z, 0, 2000).index(first.path.read_bytes()[:64])
    assert b"".join(iter_bytes(z, at, at + 100)) == first.path.read_bytes()[:100]


def test_partial_range_of_changed_entry_refused(job: list[ZipEntry]) -> None:
    z = StoredZip(job)
    target = job[4]
    full = materialise(z)
    at = full.index(target.path.read_bytes()[:64])
    os.truncate(target.path, target.size + 1)
    with pytest.raises(ZipSourceChanged):
        b"".join(iter_bytes(z, at + 5, at + 50))


def test_same_size_different_content_caught_by_crc(job: list[ZipEntry]) -> None:
    z = StoredZip(job)
    full = materialise(z)
    target = job[4]
    at = full.index(target.path.read_bytes()[:64])
    target.path.write_bytes(bytes(target.size))
    check_sources(z)  # size matches: only the crc check while streaming can notice
    got = bytearray()
    with pytest.raises(ZipSourceChanged, match="crc32"):
        for chunk in iter_bytes(z, chunk=1000):
            got += chunk
    assert len(got) < at + target.size  # the entry's last chunk was held back
    assert len(b"".join(iter_bytes(z, verify_crc=False))) == z.size


def test_file_shrinking_while_streaming(job: list[ZipEntry]) -> None:
    z = StoredZip(job)
    target = job[4]
    at = materialise(z).index(target.path.read_bytes()[:64])
    it = iter_bytes(z, at, at + target.size, chunk=1000)
    assert len(next(it)) == 1000
    os.truncate(target.path, 2000)
    with pytest.raises(ZipSourceChanged, match="shrank"):
        list(it)


def _crc32_zeros(n: int) -> int:
    block, crc = bytes(1 << 20), 0
    while n:
        step = min(n, len(block))
        crc = zlib.crc32(memoryview(block)[:step], crc)
        n -= step
    return crc


@pytest.mark.slow
def test_real_zip64_with_sparse_4_5_gib_entry(tmp_path: Path) -> None:
    src = tmp_path / "job"
    src.mkdir()
    big_size = 4 * (1 << 30) + (1 << 29)
    big = src / "big.raw"
    with open(big, "wb"):
        pass
    os.truncate(big, big_size)
    before, after = src / "before.txt", src / "after.txt"
    before.write_bytes(b"before")
    after.write_bytes(b"after!")
    entries = [
        entry("before.txt", before, b"before"),
        ZipEntry("big.raw", big, big_size, T2001, _crc32_zeros(big_size)),
        entry("after.txt", after, b"after!"),
    ]
    z = StoredZip(entries)
    check_sources(z)
    zpath = tmp_path / "big.zip"
    with open(zpath, "wb") as f:  # the big entry is all zeros: leave a hole instead of writing it
        for seg in z.segments():
            if isinstance(seg, bytes):
                f.write(seg)
            elif seg.path == big:
                f.seek(seg.length, os.SEEK_CUR)
            else:
                f.write(seg.path.read_bytes()[seg.offset : seg.offset + seg.length])
    assert zpath.stat().st_size == z.size > big_size
    with zipfile.ZipFile(zpath) as zf:
        b, g, a = zf.infolist()
        assert g.file_size == g.compress_size == big_size
        assert g.header_offset == b.header_offset + 30 + len("before.txt") + 9 + 6
        assert a.header_offset > 0xFFFFFFFF
        assert 0x0001 in _extra_ids(g.extra) and 0x0001 in _extra_ids(a.extra)
        assert 0x0001 not in _extra_ids(b.extra)
        assert zf.read("after.txt") == b"after!" and zf.read("before.txt") == b"before"
        assert g.CRC == entries[1].crc32
    # a range straddling the end of the big entry and the next header
    start = a.header_offset - 100
    segs = list(z.segments(start, a.header_offset + 10))
    assert segs[0] == FileSlice(big, big_size - 100, 100)
    with open(zpath, "rb") as f:
        f.seek(start)
        expected = f.read(110)
    assert expected[:100] == bytes(100) and segs[1:] == [expected[100:]]
    assert b"".join(iter_bytes(z, start, a.header_offset + 10)) == expected
    if UNZIP is not None:
        res = unzip("-t", zpath, "after.txt", "before.txt")
        assert res.returncode == 0, res.stdout + res.stderr
        assert "big.raw" in unzip("-l", zpath).stdout
