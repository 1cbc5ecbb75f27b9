"""Cold start of `recipec validate` against `python -c "import torch"`, in the same run.

validate never imports torch, so checking a recipe costs a fraction of merely importing
torch. Each command runs N times in a fresh interpreter (the OS file cache is warm after
the first, untimed, run of each); the table shows the median wall time and the ratio.

    python benchmarks/bench_coldstart.py [--runs 7]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _median_seconds(cmd: list[str], runs: int) -> float:
    subprocess.run(cmd, check=True, capture_output=True, cwd=ROOT)  # warm the file cache
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True, cwd=ROOT)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    py = sys.executable
    cases = {
        "python -c pass (interpreter only)": [py, "-c", "pass"],
        "python -c 'import torch' (baseline)": [py, "-c", "import torch"],
        "recipec validate recipes/quickstart.yaml": [py, "-m", "recipec", "validate", "recipes/quickstart.yaml"],
        "recipec --help": [py, "-m", "recipec", "--help"],
    }
    results = {name: _median_seconds(cmd, args.runs) for name, cmd in cases.items()}
    baseline = results["python -c 'import torch' (baseline)"]
    print(f"{'command':<45}{'median s':>10}{'vs import torch':>18}")
    for name, seconds in results.items():
        print(f"{name:<45}{seconds:>10.3f}{seconds / baseline:>17.2f}x")


if __name__ == "__main__":
    main()
