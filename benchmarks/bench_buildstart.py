"""A build's fixed cost: the time to the first training step of ``recipec build``, whole process, against
``import torch`` and the same model built by hand, in the same run.

The recipe: a few-shot ResNet-18 (3 digits, 10 images each, 32x32) that starts from another recipe's
run (``source.recipe``, built once beforehand, untimed) with the head's rows of its 3 classes kept
(``class_subset``). recipec's side is ``recipec build few-shot.yaml`` in a fresh process, run through
its own command line, with ``recipec.train.loop.fit`` replaced by a stub that reports the time it is
entered (everything before the first step: imports, checking the upstream run, the data, the
model, the plan; its picture, plan.png, is drawn in a thread meanwhile) and ends the process. The baseline is a script that does what the
recipe needs by hand: import torch and torchvision, read the digits, build the ResNet-18, load the
upstream weights with the head's rows picked, freeze, make the optimizer. A third row is ``python
-c "import torch"``. Each round runs the three in a fresh process, in an order that rotates; the
table gives the median of N rounds, the range, and recipec's excess over the baseline: between the
medians, and per round (a burst of other load hits one run of a round, so the median of the rounds'
excesses is the steadier figure), and the median CPU seconds each process used (user and system),
which the machine's load moves less than wall time.

    python benchmarks/bench_buildstart.py [--repeats 7]
    python benchmarks/bench_buildstart.py --quick   # one round, smaller upstream: seconds
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

UPSTREAM = """\
    name: upstream
    seed: 0
    device: cpu
    model: {arch: resnet18, weights: null, head: {num_classes: 10}}
    data: {dataset: digits, image_size: %(size)d, per_class: %(per_class)d, normalize: imagenet}
    train: {epochs: 1}
    export: {formats: [safetensors]}
"""

FEW_SHOT = """\
    name: few-shot
    seed: 0
    device: cpu
    model: {arch: resnet18, weights: null, head: {num_classes: 3}}
    source:
      recipe: up.yaml
      adapt: [{match: '^fc\\.', rule: class_subset, indices: [1, 7, 9]}]
    freeze: {trainable: [head], unfreeze: {1: [layer4]}}
    optimizer: {name: adamw, lr: 1.0e-3, lr_decay: 2.6, weight_decay: 0.01}
    data: {dataset: digits, classes: ['1', '7', '9'], per_class: 10, image_size: 32, normalize: imagenet}
    train: {epochs: 3}
"""

# recipec's command line, stopped where the first training step would start
RECIPEC = """
import os, sys, time
import recipec.train.loop

def first_step(**kwargs):
    print(time.monotonic(), flush=True)
    os._exit(0)

recipec.train.loop.fit = first_step
from recipec.cli import main
main(["build", sys.argv[1], "--out", sys.argv[2]])
raise SystemExit("the build ended without training")
"""

# the same by hand: the model, the upstream weights with the 3 classes' head rows, the frozen body, the optimizer
BY_HAND = """
import importlib.util, sys, time
from pathlib import Path
import numpy as np
import torch, torchvision
from safetensors.torch import load_file

folder = importlib.util.find_spec("sklearn").submodule_search_locations[0]
data = np.loadtxt(Path(folder, "datasets", "data", "digits.csv.gz"), delimiter=",")
keep = np.isin(data[:, -1], [1, 7, 9])
images = torch.as_tensor(data[keep, :-1], dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0
images = torch.nn.functional.interpolate(images, size=32, mode="bilinear").expand(-1, 3, -1, -1)
model = torchvision.models.resnet18(num_classes=3)
weights = load_file(sys.argv[1])
weights["fc.weight"], weights["fc.bias"] = weights["fc.weight"][[1, 7, 9]], weights["fc.bias"][[1, 7, 9]]
model.load_state_dict(weights)
for name, p in model.named_parameters():
    p.requires_grad = name.startswith("fc.")
optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3, weight_decay=0.01)
print(time.monotonic(), flush=True)
"""


def _until_first_step(cmd: list[str], cwd: Path) -> tuple[float, float]:
    """Seconds from starting ``cmd`` to the moment it prints (a CLOCK_MONOTONIC reading, shared by processes),
    and the CPU seconds the process used in all (user and system)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.monotonic()
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600)
    if done.returncode:
        raise SystemExit(f"{cmd[:3]} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return float(done.stdout.split()[-1]) - start, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="one round, a smaller upstream: a check that it runs")
    args = parser.parse_args()
    repeats = 1 if args.quick else args.repeats
    py = sys.executable
    with tempfile.TemporaryDirectory(prefix="bench_buildstart.") as name:
        tmp = Path(name)
        size, per_class = (16, 4) if args.quick else (32, 10)
        (tmp / "up.yaml").write_text(textwrap.dedent(UPSTREAM % {"size": size, "per_class": per_class}))
        (tmp / "few-shot.yaml").write_text(textwrap.dedent(FEW_SHOT))
        subprocess.run([py, "-m", "recipec", "build", "up.yaml", "--quiet"], cwd=tmp, check=True,
                       capture_output=True)
        upstream = tmp / "runs" / "upstream" / "model.safetensors"
        commands = {
            "recipec build (to the first step)": lambda i: [py, "-c", RECIPEC, "few-shot.yaml", f"runs/few-shot-{i}"],
            "by hand: torch + the same model": lambda i: [py, "-c", BY_HAND, str(upstream)],
            "python -c 'import torch'": lambda i: [py, "-c", "import time, torch; print(time.monotonic())"],
        }
        names = list(commands)
        if not args.quick:  # the files into the page cache
            for name_ in names:
                _until_first_step(commands[name_](-1), tmp)
        seconds: dict[str, list[float]] = {n: [] for n in names}
        cpu: dict[str, list[float]] = {n: [] for n in names}
        for round_ in range(repeats):
            for name_ in names[round_ % len(names):] + names[:round_ % len(names)]:
                wall, used = _until_first_step(commands[name_](round_), tmp)
                seconds[name_].append(wall)
                cpu[name_].append(used)
    median = {n: statistics.median(seconds[n]) for n in names}
    ours, hand = names[0], names[1]
    excess = [a - b for a, b in zip(seconds[ours], seconds[hand])]
    print(f"time to the first training step, whole process, median of {repeats} (interleaved rounds; range min-max)")
    print(f"{'command':<38}{'median s':>9}{'range s':>13}{'CPU s':>8}")
    for n in names:
        print(f"{n:<38}{median[n]:>9.2f}{min(seconds[n]):>6.2f}-{max(seconds[n]):<6.2f}{statistics.median(cpu[n]):>8.2f}")
    print(f"recipec's fixed cost over the hand-written script: {median[ours] - median[hand]:.2f} s between the "
          f"medians; per round: median {statistics.median(excess):.2f} s, range {min(excess):.2f} to {max(excess):.2f} s; "
          f"ratio of medians {median[ours] / median[hand]:.2f}x; CPU seconds (median): "
          f"{statistics.median(cpu[ours]) - statistics.median(cpu[hand]):.2f} s more")


if __name__ == "__main__":
    main()
