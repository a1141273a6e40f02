"""bench/ imports, and its smoke mode (tiny sizes, one run each) runs to the end without an error.

The benchmarks themselves never run here (`make bench`); this only keeps the harness working.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def test_bench_modules_import() -> None:
    for name in ("bench", "bench.run", "bench.figures", "bench.clients", "bench.servers", "bench.report",
                 "bench.refs.bare_ftp", "bench.refs.bare_http"):
        importlib.import_module(name)


def test_bench_table_marks_pass_and_fail() -> None:
    from bench.report import Row, Series, at_least, markdown_table

    ok = Row("a", "MiB/s", Series([10.0, 12.0, 11.0]), Series([10.0]), "ref", ">= 0.75x", at_least(0.75))
    bad = Row("b", "MiB/s", Series([5.0]), Series([10.0]), "ref", ">= 0.75x", at_least(0.75))
    na = Row("c", "MiB/s", status="not available yet (404)")
    assert (ok.result, bad.result, na.result) == ("PASS", "FAIL", "not available yet (404)")
    assert ok.cells()[1] == "11 (10-12)" and ok.cells()[3] == "1.10x"
    assert "| c [MiB/s] | - |" in markdown_table([ok, bad, na])


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_bench_smoke_runs(tmp_path: Path) -> None:
    out = tmp_path / "smoke.md"
    r = subprocess.run([sys.executable, "-m", "bench", "--smoke", "--out", str(out)], cwd=REPO,
                       capture_output=True, text=True, timeout=140)
    assert r.returncode == 0, f"stdout:\n{r.stdout[-4000:]}\nstderr:\n{r.stderr[-4000:]}"
    text = out.read_text()
    assert "| figure | gateway | reference | ratio | target | result |" in text
    assert "FTP STOR" in text or "lftp is not installed" in text or "curl is not installed" in text
    assert "ERROR" not in text
