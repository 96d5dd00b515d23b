"""What every bench shares: the CPU flags its figures depend on, and where its results go."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"
_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")


def cpu_flags() -> list[str]:
    """The vector-instruction flags of this CPU that int8 and tokenizer speed depend on."""
    return sorted({f for f in Path("/proc/cpuinfo").read_text().split() if f in _FLAGS})


def write_results(name: str, results: dict) -> Path:
    """Write ``bench/results/NAME.json`` (sorted keys, one trailing newline); returns its path."""
    out = ROOT / "bench" / "results" / f"{name}.json"
    out.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return out


def print_table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    """Print ``rows`` (cells already formatted) under ``header``: the first column left-aligned,
    the others right-aligned, each as wide as its widest cell."""
    table = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in table if i < len(row)) for i in range(len(header))]
    for row in table:
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))


def peak_rss_mb() -> float:
    """This process's own peak resident memory (VmHWM), in MB.

    Not ``ru_maxrss``: Linux carries the parent's peak into a child started by fork or vfork and
    exec, so a child's ru_maxrss is at least its parent's peak (measured: 514 MB for a 13 MB
    child of a 500 MB parent).
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("/proc/self/status has no VmHWM line (the benches measure memory on Linux only)")
