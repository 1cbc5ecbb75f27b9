"""Cold start of `recipec validate` against `python -c "import torch"`, in the same run.

validate never imports torch, so checking a recipe costs a fraction of merely importing
torch. Each command runs N times in a fresh interpreter, in rounds that run every command
once in an order that rotates (the OS file cache is warm after a first, untimed, run of
each); the table shows the median wall time, the range, and the ratio of medians.

    python benchmarks/bench_coldstart.py [--runs 7]
    python benchmarks/bench_coldstart.py --quick   # one run each, no warm-up: a check that it runs
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _seconds(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, cwd=ROOT)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="one run of each, no warm-up: a check that it runs")
    args = parser.parse_args()
    py = sys.executable
    cases = {
        "python -c pass (interpreter only)": [py, "-c", "pass"],
        "python -c 'import torch' (baseline)": [py, "-c", "import torch"],
        "recipec validate recipes/quickstart.yaml": [py, "-m", "recipec", "validate", "recipes/quickstart.yaml"],
        "recipec --help": [py, "-m", "recipec", "--help"],
    }
    names = list(cases)
    if not args.quick:
        for name in names:  # warm the file cache
            _seconds(cases[name])
    runs = 1 if args.quick else args.runs
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(runs):  # interleaved: a burst of load on the machine hits every command alike
        for name in names[r % len(names):] + names[:r % len(names)]:
            times[name].append(_seconds(cases[name]))
    baseline = statistics.median(times[names[1]])
    print(f"median of {runs} fresh processes each, interleaved")
    print(f"{'command':<45}{'median s':>10}{'range s':>14}{'vs import torch':>18}")
    for name in names:
        median = statistics.median(times[name])
        print(f"{name:<45}{median:>10.3f}{min(times[name]):>7.2f}-{max(times[name]):<6.2f}{median / baseline:>17.2f}x")


if __name__ == "__main__":
    main()
