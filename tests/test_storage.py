"""gateway.storage.Spool: the md5 and crc32 of every byte, however the writes fall."""

from __future__ import annotations

import hashlib
import os
import random
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.storage import HASH_STEP, HASHER_NICE, HashPool, Spool


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
