"""Benchmark: `tunewise data check` against Together's `check_file` on a 100 MB JSONL, in one run.

The file is banking77's train set repeated, each repetition's user text made unique with a suffix, so every
example is unique but every repetition is a near-duplicate of the others (a scraped, templated dataset).

Prints wall times, the ratios, and tunewise's peak RSS (main process plus its workers, sampled every 20 ms).
Targets: the full default check within 3x Together's time with peak RSS under 500 MB; the
structural checks alone (`--structure-only`: what `check_file` checks) faster than Together.
Each side runs twice and keeps its best time, so a neighbour's burst of load on a shared machine does not
decide the comparison; the load average is printed before each.

    .venv/bin/python bench/data_check.py [--size-mb 100]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from make_big_jsonl import build  # noqa: E402

SHARED = HERE.parent.parent / "shared" / "datasets" / "banking77" / "train.jsonl"


def tree_rss(pid: int) -> int:
    """Resident memory of a process and all its descendants, in bytes."""
    total = 0
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/statm") as f:
                total += int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
            with open(f"/proc/{p}/task/{p}/children") as f:
                todo.extend(int(c) for c in f.read().split())
        except (FileNotFoundError, ProcessLookupError, ValueError):
            continue
    return total


def run_tunewise(path: Path, *flags: str) -> tuple[float, int, int]:
    exe = Path(sys.executable).parent / "tunewise"
    started = time.perf_counter()
    proc = subprocess.Popen(
        [str(exe), "data", "check", str(path), *flags],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    peak = 0
    while proc.poll() is None:
        peak = max(peak, tree_rss(proc.pid))
        time.sleep(0.02)
    elapsed = time.perf_counter() - started
    out = proc.stdout.read()
    if proc.returncode not in (0, 1):
        raise SystemExit(f"tunewise failed: {proc.stderr.read()}")
    last = [line for line in out.splitlines() if "error(s)" in line]
    print(f"    tunewise says: {last[-1] if last else out[-300:]}")
    return elapsed, peak, proc.returncode


def run_together(path: Path) -> float:
    from together.lib.utils import check_file

    started = time.perf_counter()
    report = check_file(path)
    elapsed = time.perf_counter() - started
    assert report["is_check_passed"], report
    return elapsed


def best(run, times: int = 2) -> tuple[float, int]:
    """The best wall time of a few runs, and the highest peak RSS seen."""
    results = []
    for _ in range(times):
        print(f"    load average {os.getloadavg()[0]:.2f}")
        elapsed, peak, _ = run()
        results.append((elapsed, peak))
    return min(r[0] for r in results), max(r[1] for r in results)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mb", type=float, default=100)
    parser.add_argument("--out", type=Path, default=HERE / "out" / "big.jsonl")
    args = parser.parse_args()
    if not SHARED.is_file():
        raise SystemExit(f"needs {SHARED} (../shared/datasets beside the repository)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if not args.out.is_file() or abs(args.out.stat().st_size - args.size_mb * 1e6) > 1e6:
        n = build(SHARED, args.out, int(args.size_mb * 1e6))
        print(f"built {args.out} ({n:,} examples)")
    size = args.out.stat().st_size
    print(
        f"file: {args.out} ({size / 1e6:.0f} MB); cores: {os.cpu_count()}; load average {os.getloadavg()[0]:.2f}"
    )

    run_together(args.out)  # warm the page cache so neither side pays for the disk
    together = min(run_together(args.out) for _ in range(2))
    print(f"together check_file (structure only):       {together:6.2f} s")
    structural, rss_s = best(lambda: run_tunewise(args.out, "--structure-only"))
    print(
        f"tunewise data check --structure-only:       {structural:6.2f} s   peak RSS {rss_s / 2**20:6.0f} MB"
    )
    full, rss_f = best(lambda: run_tunewise(args.out))
    print(f"tunewise data check (full default):         {full:6.2f} s   peak RSS {rss_f / 2**20:6.0f} MB")
    print()
    print(
        f"structural / together = {structural / together:.2f}   (target < 1.00) {'PASS' if structural < together else 'MISS'}"
    )
    print(
        f"full / together       = {full / together:.2f}   (target <= 3.00) {'PASS' if full <= 3 * together else 'MISS'}"
    )
    print(
        f"full peak RSS         = {rss_f / 2**20:.0f} MB (target < 500) {'PASS' if rss_f < 500 * 2**20 else 'MISS'}"
    )


if __name__ == "__main__":
    main()
