"""Overhead of recipec's fit loop against a hand-written PyTorch loop, in the same run.

Both train the same ResNet-18 (new 10-class head, every group trainable) on the same
digits batches at 32x32 for one epoch with AdamW; recipec adds the freezing schedule,
BatchNorm policy, per-group lr schedule and metrics. The table shows seconds per epoch
(median of N, interleaved, alternating which goes first) and the ratio.

    python benchmarks/bench_fit.py [--repeats 5] [--threads 1 --clock cpu]
"""

from __future__ import annotations

import argparse
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


def _recipec_epoch(recipe, data) -> float:
    compiled = compile_recipe(recipe, steps_per_epoch=len(data.train))
    start = _clock()
    fit(model=compiled.model, optimizer=compiled.optimizer, scheduler=compiled.scheduler, groups=compiled.groups,
        schedule=compiled.schedule, data=data, device=compiled.device, epochs=1)
    return _clock() - start


def _plain_epoch(recipe, data) -> float:
    model = compile_recipe(recipe).model  # same architecture and head; the loop below is all PyTorch
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    start = _clock()
    model.train()
    set_epoch(data, 0)
    for x, y in data.train:
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return _clock() - start


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
    plains, ours_all = [], []
    for r in range(args.repeats):  # interleaved, in alternating order, so load on the machine hits both alike
        if r % 2:
            ours_all.append(_recipec_epoch(recipe, data))
            plains.append(_plain_epoch(recipe, data))
        else:
            plains.append(_plain_epoch(recipe, data))
            ours_all.append(_recipec_epoch(recipe, data))
    plain, ours = statistics.median(plains), statistics.median(ours_all)
    print(f"{'loop':<28}{'s/epoch':>10}{'ratio':>8}")
    print(f"{'hand-written PyTorch':<28}{plain:>10.2f}{1.0:>8.2f}")
    print(f"{'recipec fit':<28}{ours:>10.2f}{ours / plain:>8.2f}")


if __name__ == "__main__":
    main()
