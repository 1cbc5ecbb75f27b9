"""Overhead of recipec's fit loop against a hand-written PyTorch loop, in the same run.

Both train the same ResNet-18 (new 10-class head, every group trainable) on the same
digits batches at 32x32 for one epoch with AdamW; recipec adds the freezing schedule,
BatchNorm policy, per-group lr schedule and metrics. The table shows seconds per epoch
(median of N, interleaved, alternating which goes first) and the ratio of the medians; the last
lines give the median and range of the N paired ratios of whole epochs and of each epoch's
median training step (which a burst of other load on the machine moves least), so the
machine's noise is visible.

    python benchmarks/bench_fit.py [--repeats 5] [--threads 1 --clock cpu]
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import tempfile
import textwrap
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from recipec.compiler import compile_recipe
from recipec.recipe.load import load_recipe
from recipec.train.data import build_data, set_epoch
from recipec.train.loop import fit

_clock = time.perf_counter

RECIPE = """\
    name: bench
    device: cpu
    model: {arch: resnet18, head: {num_classes: 10}}
    optimizer: {name: adamw, lr: 1.0e-3, lr_decay: 2.6, weight_decay: 0.01, scheduler: {name: cosine}}
    data: {dataset: digits, image_size: 32, normalize: imagenet, batch_size: 64, val_fraction: 0.0}
    train: {epochs: 1}
"""


def _recipec_epoch(recipe, data) -> tuple[float, float]:
    """(seconds for the epoch, median seconds of one training step in it)."""
    compiled = compile_recipe(recipe, steps_per_epoch=len(data.train))
    stamps = [_clock()]
    fit(model=compiled.model, optimizer=compiled.optimizer, scheduler=compiled.scheduler, groups=compiled.groups,
        schedule=compiled.schedule, data=data, device=compiled.device, epochs=1,
        on_batch=lambda i, n, loss: stamps.append(_clock()))  # after the step: where the plain loop stamps
    return _clock() - stamps[0], _median_step(stamps)


def _plain_epoch(recipe, data) -> tuple[float, float]:
    model = compile_recipe(recipe).model  # same architecture and head; the loop below is all PyTorch
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    stamps = [_clock()]
    model.train()
    set_epoch(data, 0)
    for x, y in data.train:
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        stamps.append(_clock())
    return _clock() - stamps[0], _median_step(stamps)


def _median_step(stamps: list[float]) -> float:
    # the first step also pays for the epoch's setup; the median of the rest shrugs off a burst of other load
    return statistics.median(b - a for a, b in itertools.pairwise(stamps[1:]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="cpu: this process's CPU time, for a machine shared with other work (use --threads 1)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.clock == "cpu":
        global _clock
        _clock = time.process_time
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.yaml"
        path.write_text(textwrap.dedent(RECIPE))
        recipe = load_recipe(path)
    data = build_data(dataset="digits", image_size=32, normalize="imagenet", batch_size=64, val_fraction=0.0)
    _plain_epoch(recipe, data)  # warm-up: allocator, kernels, page cache
    plain_runs, our_runs = [], []
    for r in range(args.repeats):  # interleaved, in alternating order, so load on the machine hits both alike
        if r % 2:
            our_runs.append(_recipec_epoch(recipe, data))
            plain_runs.append(_plain_epoch(recipe, data))
        else:
            plain_runs.append(_plain_epoch(recipe, data))
            our_runs.append(_recipec_epoch(recipe, data))
    plains, ours_all = [e for e, _ in plain_runs], [e for e, _ in our_runs]
    plain, ours = statistics.median(plains), statistics.median(ours_all)
    print(f"{'loop':<28}{'s/epoch':>10}{'ratio':>8}")
    print(f"{'hand-written PyTorch':<28}{plain:>10.2f}{1.0:>8.2f}")
    print(f"{'recipec fit':<28}{ours:>10.2f}{ours / plain:>8.2f}")
    pairs = sorted(o / p for o, p in zip(ours_all, plains))
    print(f"paired ratios: median {statistics.median(pairs):.3f}, range {pairs[0]:.3f}-{pairs[-1]:.3f} "
          f"({args.repeats} pairs, torch threads {torch.get_num_threads()})")
    steps = sorted(o / p for (_, o), (_, p) in zip(our_runs, plain_runs))
    print(f"median training step, paired ratios: median {statistics.median(steps):.3f}, "
          f"range {steps[0]:.3f}-{steps[-1]:.3f}")


if __name__ == "__main__":
    main()
