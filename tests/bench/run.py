"""Run every benchmark (tests/bench/bench_*.py) and record them in docs/benchmarks.md.

Each bench module exposes ``run() -> str``: it measures, prints as it goes and
returns a Markdown section (starting with a ``## `` heading).  Benchmarks are
measurements, never pass/fail tests; targets are printed next to the numbers.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import os
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
OUTPUT = ROOT / "docs" / "benchmarks.md"
PROBE_RUNS = 20  # timings of one fixed loop before the benches, and as many after


def cpu_probe(runs=PROBE_RUNS):
    """Seconds of one fixed pure-Python loop, `runs` times in a row: how steady this machine's CPU is.

    On a shared VM the same work can take twice as long from one second to the next; every
    wall-clock ratio between runs made seconds apart carries that noise.
    """
    took = []
    for _run in range(runs):
        start = time.perf_counter()
        sum(range(5_000_000))
        took.append(time.perf_counter() - start)
    return took


def machine_summary(probe=()) -> str:
    with open("/proc/meminfo", encoding="ascii") as fh:
        mem_kib = int(fh.readline().split()[1])
    steadiness = ""
    if probe:
        low, high = min(probe), max(probe)
        steadiness = (
            f"- CPU steadiness: one fixed Python loop timed {len(probe)} times (half before the benches, half "
            f"after) took {low:.3f}-{high:.3f} s, median {statistics.median(probe):.3f} s: the slowest run was "
            f"{high / low:.1f}x the fastest. Wall-clock ratios between runs made seconds apart carry this noise.\n"
        )
    return (
        f"- date: {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ')}\n"
        f"- kernel: {platform.release()}\n"
        f"- python: {platform.python_version()}\n"
        f"- cpus: {os.cpu_count()}, memory: {mem_kib // 1024 // 1024} GiB\n"
        f"{steadiness}"
    )


def load(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("only", nargs="*", help="bench names to run (default: all), e.g. collect fleet_report")
    parser.add_argument("--no-write", action="store_true", help="print only, do not update docs/benchmarks.md")
    args = parser.parse_args(argv)

    sys.path[:0] = [str(ROOT / ".build" / "collections"), str(ROOT / "tests" / "lab"), str(HERE)]
    benches = sorted(HERE.glob("bench_*.py"))
    if args.only:
        benches = [b for b in benches if b.stem[len("bench_") :] in args.only]
    sections, failed = [], []
    probe = cpu_probe()
    for path in benches:
        print(f"== {path.stem}", flush=True)
        try:
            sections.append(load(path).run().rstrip() + "\n")
        except Exception:  # one broken bench must not hide the others' numbers
            traceback.print_exc()
            failed.append(path.stem)
            sections.append(f"## {path.stem}\n\nFailed in this run; see the bench output.\n")
    probe += cpu_probe()
    text = (
        "# Benchmarks\n\n"
        "Written by `make bench` (tests/bench/run.py); numbers come from one run on the machine below.\n"
        "Ratios compare tools measured in the same run on the same sockets.\n\n"
        + machine_summary(probe)
        + "\n"
        + "\n".join(sections)
    )
    print(text)
    if not args.no_write and not args.only:
        OUTPUT.write_text(text, encoding="utf-8")
        print(f"written: {OUTPUT.relative_to(ROOT)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
