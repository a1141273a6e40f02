"""Threads named for the operating system too: `top -H`, `ps -L` and /proc/<pid>/task/*/comm then
tell the loop, the FTP thread, the writer and the hashers apart (the benchmark reads them)."""

from __future__ import annotations

import ctypes
import threading
from typing import Any

_PR_SET_NAME = 15
_prctl: Any
try:
    _prctl = ctypes.CDLL("libc.so.6", use_errno=True).prctl
except (OSError, AttributeError):  # not glibc Linux: names stay Python-only
    _prctl = None


def name_this_thread() -> None:
    """Give the calling thread its Python name at the OS level (at most 15 bytes are kept)."""
    if _prctl is not None:
        _prctl(_PR_SET_NAME, ctypes.c_char_p(threading.current_thread().name.encode()[:15]), 0, 0, 0)
