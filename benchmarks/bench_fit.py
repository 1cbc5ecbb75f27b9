"""Overhead of recipec's fit loop against a hand-written PyTorch loop, in the same run.

Both train the same ResNet-18 (new 10-class head, every group trainable) on the same
digits batches at 32x32 for one epoch with AdamW; recipec adds the freezing schedule,
BatchNorm policy, per-group lr schedule and metrics. The table shows seconds per epoch
(median of N, interleaved, alternating which goes first) and the ratio of the medians; the last
lines give the median and range of the N paired ratios of whole epochs and of each epoch's
median training step (which a burst of other load on the machine moves least), so the
machine's noise is visible. ``--lockstep`` adds the finest interleaving: both loops step by step,
taking turns, so drift in the machine's speed cancels within a step pair.

    python benchmarks/bench_fit.py [--repeats 5] [--threads 1 --clock cpu] [--lockstep]
    python benchmarks/bench_fit.py --quick   # 1 repeat, 10 images per class at 16x16: a check that it runs
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from recipec.compiler.compile import compile_recipe
from recipec.recipe.load import load_recipe
from recipec.compiler.data_config import build_data
from recipec.data.loaders import set_epoch
from recipec.compiler.fit_config import training_of
from recipec.train.loop import FitConfig, fit

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
    fit(training_of(compiled), data, FitConfig(epochs=1),
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


def _lockstep(recipe, ours_data, plain_data) -> tuple[list[float], list[float]]:
    """One epoch of each loop, step for step (a plain step, then a recipec step, in two threads that take
    turns), so that whatever else the machine does hits both alike. Returns the seconds of every step but
    the first of each: (recipec's, the plain loop's). A recipec step runs from the end of ``on_batch`` to
    the next call of it: fetching the batch, forward, backward, optimizer and scheduler, its bookkeeping."""
    compiled = compile_recipe(recipe, steps_per_epoch=len(ours_data.train))
    model = compile_recipe(recipe).model
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    plain_turn, our_turn = threading.Semaphore(0), threading.Semaphore(0)
    ours, plain = [], []

    def plain_loop() -> None:
        model.train()
        set_epoch(plain_data, 0)
        batches = iter(plain_data.train)
        for _ in range(len(plain_data.train)):
            plain_turn.acquire()
            start = _clock()
            x, y = next(batches)
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            plain.append(_clock() - start)
            our_turn.release()

    resumed: list[float] = []

    def on_batch(i: int, n: int, loss: torch.Tensor) -> None:
        if resumed:
            ours.append(_clock() - resumed[-1])
        plain_turn.release()
        our_turn.acquire()
        resumed.append(_clock())

    thread = threading.Thread(target=plain_loop)
    thread.start()
    fit(training_of(compiled), ours_data, FitConfig(epochs=1), on_batch=on_batch)
    thread.join()
    return ours, plain[1:]


def _median_step(stamps: list[float]) -> float:
    # the first step also pays for the epoch's setup; the median of the rest shrugs off a burst of other load
    return statistics.median(b - a for a, b in itertools.pairwise(stamps[1:]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="cpu: this process's CPU time, for a machine shared with other work (use --threads 1)")
    parser.add_argument("--lockstep", action="store_true",
                        help="also time both loops step for step, taking turns (the finest interleaving)")
    parser.add_argument("--quick", action="store_true", help="1 repeat on 100 images at 16x16: a check that it runs")
    args = parser.parse_args()
    small = {"per_class": 10, "image_size": 16, "batch_size": 32} if args.quick else {}
    if args.quick:
        args.repeats = 1
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.clock == "cpu":
        global _clock
        _clock = time.process_time
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.yaml"
        path.write_text(textwrap.dedent(RECIPE))
        recipe = load_recipe(path)
    data = build_data(**{"dataset": "digits", "image_size": 32, "normalize": "imagenet", "batch_size": 64,
                         "val_fraction": 0.0, **small})
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
    if args.lockstep:
        plain_data = build_data(**{"dataset": "digits", "image_size": 32, "normalize": "imagenet", "batch_size": 64,
                                   "val_fraction": 0.0, **small})  # its own loader: the two loops iterate at once
        ours_steps, plain_steps = [], []
        for _ in range(args.repeats):
            o, p = _lockstep(recipe, data, plain_data)
            ours_steps += o
            plain_steps += p
        ratios = sorted(o / p for o, p in zip(ours_steps, plain_steps))
        print(f"lockstep, {len(ratios)} steps taking turns: total {sum(ours_steps):.2f} s vs {sum(plain_steps):.2f} s "
              f"({sum(ours_steps) / sum(plain_steps):.3f}x); paired step ratios: median "
              f"{statistics.median(ratios):.3f}, middle half {ratios[len(ratios) // 4]:.3f}-"
              f"{ratios[3 * len(ratios) // 4]:.3f}")


if __name__ == "__main__":
    main()
