"""Busy log lines (HTTP access, FTP transfers) gathered in memory and written a few times a second.

A logging record per request or per file costs about as much as a small request itself (the record,
the caller lookup, the formatting, a write and a flush); these lines are formatted directly in the
format of the process's log and written out in one piece. Other messages keep going through logging.
"""

from __future__ import annotations

import threading
import time
from typing import TextIO


class LineLog:
    """Lines appended from any thread (the loop, the FTP thread), written out by flush()."""

    def __init__(self, stream: TextIO, limit: int = 1024) -> None:
        self.stream = stream
        self.limit = limit
        self._lines: list[str] = []
        self._lock = threading.Lock()
        self._second = -1
        self._stamp = ""

    def info(self, logger: str, message: str) -> None:
        """One line as `logging` would format it: '<date> <time>,<ms> INFO <logger>: <message>'."""
        now = time.time()
        second = int(now)
        if second != self._second:  # a racing thread at worst formats the same second twice
            self._stamp, self._second = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second)), second
        self.add(f"{self._stamp},{int(now % 1 * 1000):03d} INFO {logger}: {message}\n")

    def add(self, line: str) -> None:
        with self._lock:
            self._lines.append(line)
            full = len(self._lines) >= self.limit
        if full:
            self.flush()

    def flush(self) -> None:
        with self._lock:
            lines, self._lines = self._lines, []
        if lines:
            try:
                self.stream.write("".join(lines))
                self.stream.flush()
            except (OSError, ValueError):
                pass  # a closed or broken stderr must not break requests or transfers
