"""gateway.storage.Spool: the md5 and crc32 of every byte, however the writes fall."""

from __future__ import annotations

import hashlib
import os
import platform
import random
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

import gateway.storage as storage_module
from gateway.errors import NotFound
from gateway.storage import HASH_STEP, HASHER_NICE, HashPool, Spool, Storage


@pytest.fixture
def pool() -> Iterator[HashPool]:
    p = HashPool(2)
    yield p
    p.close()


def expected(data: bytes) -> tuple[int, str, int]:
    return len(data), hashlib.md5(data).hexdigest(), zlib.crc32(data)


@pytest.mark.parametrize("sizes", [
    [100 * 1024],  # a small photo: hashed from memory as it is written
    [1, 7, 4096, 65536],
    [Spool.HASH_AS_WRITTEN],  # exactly the limit
    [Spool.HASH_AS_WRITTEN - 10, 20, 100],  # crosses it: the pool goes on from where memory stopped
    [200 * 1024, HASH_STEP, HASH_STEP + 3, 5],  # past HASH_STEP: the pool hashes while writes go on
    [3 * HASH_STEP],
], ids=["100k", "tiny-writes", "at-limit", "across-limit", "pool", "one-big-write"])
def test_the_digest_covers_every_byte_whatever_the_write_sizes(tmp_path: Path, pool: HashPool,
                                                             sizes: list[int]) -> None:
    rnd = random.Random(len(sizes))
    chunks = [rnd.randbytes(n) for n in sizes]
    spool = Spool(tmp_path / ".gwtmp-test", 1 << 40, pool)
    for c in chunks:
        assert spool.write(memoryview(c)) == len(c)
    d = spool.digest()
    spool.release()
    data = b"".join(chunks)
    assert (d.size, d.md5, d.crc32) == expected(data)
    assert (tmp_path / ".gwtmp-test").read_bytes() == data


def test_a_resumed_spool_hashes_its_prefix_from_disk(tmp_path: Path, pool: HashPool) -> None:
    first, rest = random.Random(1).randbytes(50_000), random.Random(2).randbytes(30_000)
    done = tmp_path / "photo.jpg"
    done.write_bytes(first + b"tail that is cut off")
    spool = Spool(tmp_path / ".gwtmp-resume", 1 << 40, pool)
    spool.prefill(done, len(first))  # APPE/REST onto a finished file: these bytes were never in memory
    spool.write(rest)
    d = spool.digest()
    spool.release()
    assert (d.size, d.md5, d.crc32) == expected(first + rest)


def test_hashers_run_at_a_lower_priority_than_the_servers_threads(pool: HashPool) -> None:
    """Under CPU contention the API's loop and the FTP thread go before bulk hashing (POST /jobs p99
    under 20 FTP uploads: see HASHER_NICE)."""
    mine = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    wanted = ({mine + HASHER_NICE}, {19})
    deadline = time.monotonic() + 5
    while True:  # each thread lowers its own priority as it starts: give them that moment
        nices = {os.getpriority(os.PRIO_PROCESS, t.native_id) for t in pool._threads if t.native_id is not None}
        if nices in wanted or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    assert nices == {mine + HASHER_NICE} or nices == {19}, nices


@pytest.fixture(params=["kernel", "walk"])
def link_check(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """refuse_links asks the kernel (openat2) where it can, and walks the names itself where not:
    both must refuse the same paths."""
    if request.param == "walk":
        monkeypatch.setattr(storage_module, "_openat2", False)
    return str(request.param)


def test_refuse_links_refuses_a_link_at_any_depth_and_nothing_else(tmp_path: Path, link_check: str) -> None:
    st = Storage(tmp_path / "root")
    outside = tmp_path / "outside"
    (outside / "sub").mkdir(parents=True)
    (outside / "sub" / "x.jpg").write_bytes(b"secret")
    kind = st.kind_dir("20261129", 7, "ORIGINAL")
    (kind / "album").mkdir(parents=True)
    (kind / "album" / "a.jpg").write_bytes(b"a")
    os.symlink(outside / "sub" / "x.jpg", kind / "album" / "link.jpg")
    os.symlink(outside, kind / "linkdir")
    os.symlink(outside, st.root / "20261130")  # a planted day folder
    os.mkfifo(kind / "album" / "pipe")

    for fine in (kind / "album" / "a.jpg", kind / "album" / "new.jpg", kind / "missing" / "deeper" / "x.jpg",
                 kind / "album" / "a.jpg" / "under-a-file", kind / "album" / "pipe", kind):
        st.refuse_links(fine)  # no link on the way: nothing raised
    for linked in (kind / "album" / "link.jpg", kind / "linkdir", kind / "linkdir" / "sub" / "x.jpg",
                   kind / "linkdir" / "new.jpg", st.root / "20261130" / "7" / "ORIGINAL" / "x.jpg"):
        with pytest.raises(NotFound):
            st.refuse_links(linked)
    # names that pathlib would never produce, handed over as strings: refused before any lookup
    for sneaky in (f"{kind}/../../../../outside/sub/x.jpg", f"{kind}/./album/a.jpg", f"{kind}//album/a.jpg"):
        with pytest.raises(NotFound):
            st.refuse_links(sneaky)  # type: ignore[arg-type]
    assert (storage_module._openat2 is False) == (link_check == "walk")


@pytest.mark.skipif(tuple(int(x) for x in platform.release().split(".")[:2]) < (5, 6),
                    reason="openat2 came with Linux 5.6")
def test_the_kernel_answers_the_link_check_here(tmp_path: Path) -> None:
    assert storage_module._kernel_finds_link(str(tmp_path)) is False
    os.symlink(tmp_path, tmp_path / "l")
    assert storage_module._kernel_finds_link(str(tmp_path / "l" / "x")) is True
