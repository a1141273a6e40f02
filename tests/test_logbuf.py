"""The buffered line log shared by the HTTP access log and the FTP transfer lines."""

from __future__ import annotations

import io
import re
import threading

from gateway.logbuf import LineLog

LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO (gateway\.ftp|aiohttp\.access): (\S+) (\d+)$")


def test_lines_from_two_threads_all_arrive_whole_in_the_log_format() -> None:
    out = io.StringIO()
    log = LineLog(out, limit=50)

    def emit(logger: str, who: str) -> None:
        for i in range(1000):
            log.info(logger, f"{who} {i}")

    threads = [threading.Thread(target=emit, args=args) for args in (("gateway.ftp", "ftp"),
                                                                     ("aiohttp.access", "http"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    log.flush()
    lines = out.getvalue().splitlines()
    assert len(lines) == 2000
    seen: dict[str, list[int]] = {"ftp": [], "http": []}
    for line in lines:
        m = LINE.match(line)
        assert m, line
        seen[m.group(2)].append(int(m.group(3)))
    assert seen == {"ftp": list(range(1000)), "http": list(range(1000))}  # each thread's lines in order


def test_nothing_is_written_before_a_flush_or_the_limit_and_a_broken_stream_is_survived() -> None:
    out = io.StringIO()
    log = LineLog(out, limit=3)
    log.info("gateway.ftp", "one")
    log.info("gateway.ftp", "two")
    assert out.getvalue() == ""
    log.info("gateway.ftp", "three")  # the limit: written at once
    assert len(out.getvalue().splitlines()) == 3
    out.close()
    log.info("gateway.ftp", "after close")
    log.flush()  # a closed stream (stderr gone) must not raise into a request or a transfer
