"""Figures, their targets and the table: median with min and max, ratios, pass/fail, markdown."""

from __future__ import annotations

import os
import platform
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata

from bench.proc import have


@dataclass
class Series:
    """The values of one side of a figure over the runs."""

    values: list[float] = field(default_factory=list)

    def add(self, v: float) -> None:
        self.values.append(v)

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    def cell(self, fmt: str) -> str:
        if not self.values:
            return "-"
        med = fmt.format(self.median)
        if len(self.values) == 1:
            return med
        return f"{med} ({fmt.format(min(self.values))}-{fmt.format(max(self.values))})"


@dataclass
class Row:
    """One line of the table. A ratio row compares gateway and reference; an absolute row checks the
    gateway's value alone (reference stays empty)."""

    figure: str
    unit: str
    gateway: Series = field(default_factory=Series)
    reference: Series = field(default_factory=Series)
    ref_name: str = ""
    target: str = ""
    check: Callable[[float], bool] | None = None  # applied to the ratio, or to the gateway median
    ratio_row: bool = True
    fmt: str = "{:,.0f}"
    status: str = ""  # "", "not available yet: ...", "skipped: ...", "error: ..."

    @property
    def measured(self) -> bool:
        return not self.status and bool(self.gateway.values) and (not self.ratio_row or bool(self.reference.values))

    @property
    def context_only(self) -> bool:
        """A reference figure shown for context (no gateway side)."""
        return not self.ratio_row and self.check is None and not self.gateway.values and bool(self.reference.values)

    @property
    def ratio(self) -> float | None:
        if not self.measured or not self.ratio_row or self.reference.median == 0:
            return None
        return self.gateway.median / self.reference.median

    @property
    def result(self) -> str:
        if self.status:
            return self.status
        if self.context_only:
            return "info"
        if not self.measured:
            return "not measured"
        if self.check is None:
            return "info"
        value = self.ratio if self.ratio_row else self.gateway.median
        return "PASS" if value is not None and self.check(value) else "FAIL"

    def cells(self) -> list[str]:
        ref = self.reference.cell(self.fmt) if self.reference.values else "-"
        if self.ref_name and self.reference.values:
            ref = f"{self.ref_name}: {ref}"
        elif self.ref_name and self.ratio_row:
            ref = f"{self.ref_name}: -"
        ratio = f"{self.ratio:.2f}x" if self.ratio is not None else "-"
        gw = self.gateway.cell(self.fmt) if self.gateway.values else "-"
        return [f"{self.figure} [{self.unit}]", gw, ref, ratio, self.target or "-", self.result]


HEADERS = ["figure", "gateway", "reference", "ratio", "target", "result"]


def at_least(x: float) -> Callable[[float], bool]:
    return lambda v: v >= x


def above(x: float) -> Callable[[float], bool]:
    return lambda v: v > x


def at_most(x: float) -> Callable[[float], bool]:
    return lambda v: v <= x


def below(x: float) -> Callable[[float], bool]:
    return lambda v: v < x


def markdown_table(rows: list[Row]) -> str:
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in r.cells()) + " |" for r in rows]
    return "\n".join(lines)


def text_table(rows: list[Row]) -> str:
    table = [HEADERS, *[r.cells() for r in rows]]
    widths = [max(len(r[i]) for r in table) for i in range(len(HEADERS))]
    out = []
    for n, r in enumerate(table):
        out.append("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


# ----------------------------------------------------------------------------- the machine

def _version(argv: list[str], pattern: str) -> str:
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "missing"
    m = re.search(pattern, r.stdout + r.stderr)
    return m.group(1) if m else "?"


def _deb(package: str) -> str:
    r = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", package], capture_output=True, text=True,
                       timeout=10, check=False) if have("dpkg-query") else None
    return r.stdout.strip() if r is not None and r.returncode == 0 and r.stdout.strip() else "missing"


def machine() -> dict[str, str]:
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), "?")
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "cores": f"{os.cpu_count()} ({cpu})",
        "memory": f"{mem:.1f} GiB",
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "pyftpdlib": metadata.version("pyftpdlib"),
        "aiohttp": metadata.version("aiohttp"),
        "vsftpd": _deb("vsftpd"),
        "nginx": _version(["nginx", "-v"], r"nginx/(\S+)") if have("nginx") else "missing",
        "curl": _version(["curl", "--version"], r"curl (\S+)") if have("curl") else "missing",
        "lftp": _version(["lftp", "--version"], r"Version (\S+)") if have("lftp") else "missing",
        "wrk": _deb("wrk") if have("wrk") else "missing (aiohttp client harness used)",
    }
