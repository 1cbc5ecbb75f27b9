"""Images/s of recipec's fit against a hand-written loop with the same settings, on whatever device is here.

Both train the same ResNet-18 (new head, every group trainable) with AdamW on the same
in-memory batches (the `fake` dataset, resized once), with the same amp, channels_last and
torch.compile settings; the first epoch is a warm-up (compilation, allocator, cuDNN autotuning),
the next ones are timed, interleaved. On CUDA the defaults are bf16, channels_last and
compile; on a CPU, fp32, no compile and a small input, so it runs in a minute.

    python benchmarks/bench_gpu.py [--device auto] [--amp bf16] [--channels-last] [--compile]
                                   [--image-size 64] [--batch-size 128] [--epochs 3]
    python benchmarks/bench_gpu.py --quick   # one timed epoch of 64 images at 16x16, once: a check that it runs
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from recipec.compiler.compile import compile_recipe
from recipec.recipe.load import load_recipe
from recipec.compiler.data_config import build_data
from recipec.data.loaders import set_epoch
from recipec.compiler.fit_config import training_of
from recipec.train.loop import FitConfig, fit

RECIPE = """\
    name: bench-gpu
    device: {device}
    model: {{arch: resnet18, head: {{num_classes: {classes}}}}}
    optimizer: {{name: adamw, lr: 1.0e-3, weight_decay: 0.01, scheduler: {{name: none}}}}
    data: {{dataset: fake, image_size: {size}, normalize: none, batch_size: {batch}, val_fraction: 0.0}}
    train: {{epochs: {epochs}, amp: {amp}, channels_last: {cl}, compile: {compile}}}
"""


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _recipec(recipe: Any, data: Any, epochs: int) -> list[float]:
    """Seconds of each epoch after the first, as fit reports them (it reads the losses once per epoch: a sync)."""
    compiled = compile_recipe(recipe, steps_per_epoch=len(data.train))
    history = fit(training_of(compiled), data, FitConfig(epochs=epochs + 1, amp=recipe.train.amp,
                                                         compile_mode=recipe.train.compile,
                                                         channels_last=recipe.train.channels_last))
    return [m["seconds"] for m in history[1:]]


def _plain(recipe: Any, data: Any, epochs: int) -> list[float]:
    """The loop a practitioner writes by hand with the same settings."""
    compiled = compile_recipe(recipe)
    model, device = compiled.model, compiled.device
    fmt = torch.channels_last if recipe.train.channels_last else torch.contiguous_format
    model = model.to(device, memory_format=fmt)
    step_model = torch.compile(model) if recipe.train.compile else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(recipe.train.amp)
    scaler = torch.amp.GradScaler("cuda") if recipe.train.amp == "fp16" and device.type == "cuda" else None
    model.train()
    seconds = []
    for epoch in range(epochs + 1):
        set_epoch(data, epoch)
        _sync(device)
        start = time.perf_counter()
        total = torch.zeros((), device=device)
        for x, y in data.train:
            x = x.to(device, non_blocking=True).contiguous(memory_format=fmt)
            y = y.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext():
                loss = F.cross_entropy(step_model(x), y)
            total += loss.detach()
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                optimizer.step()
        total.item()  # one sync per epoch, as recipec's
        seconds.append(time.perf_counter() - start)
    return seconds[1:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--amp", choices=["none", "bf16", "fp16"], default=None, help="default: bf16 on CUDA, else none")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                        help="default: on for CUDA")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None, help="default: on for CUDA")
    parser.add_argument("--image-size", type=int, default=None, help="default: 64 on CUDA, 32 on a CPU")
    parser.add_argument("--batch-size", type=int, default=None, help="default: 256 on CUDA, 64 on a CPU")
    parser.add_argument("--classes", type=int, default=None, help="fake classes of 32 images; default: 100 on CUDA, 10")
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs, after one warm-up each")
    parser.add_argument("--quick", action="store_true", help="2 classes, 16x16, one timed epoch, once")
    args = parser.parse_args()
    if args.quick:
        args.epochs, args.classes, args.image_size, args.batch_size = 1, 2, 16, 32
    from recipec.device import resolve_device

    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    amp = args.amp or ("bf16" if cuda else "none")
    channels_last = cuda if args.channels_last is None else args.channels_last
    compile_on = cuda if args.compile is None else args.compile
    size, batch = args.image_size or (64 if cuda else 32), args.batch_size or (256 if cuda else 64)
    classes = args.classes or (100 if cuda else 10)
    text = RECIPE.format(device=str(device), epochs=args.epochs + 1, classes=classes, size=size, batch=batch, amp=amp,
                         cl=str(channels_last).lower(), compile=str(compile_on).lower())
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.yaml"
        path.write_text(textwrap.dedent(text))
        recipe = load_recipe(path)
    data = build_data(dataset="fake", image_size=size, normalize="none", batch_size=batch, val_fraction=0.0,
                      num_classes=classes, device=device.type)
    images = len(data.train.dataset)  # type: ignore[arg-type]
    name = torch.cuda.get_device_name(device) if cuda else f"cpu ({torch.get_num_threads()} threads)"
    print(f"device {name}; resnet18 {size}x{size}, batch {batch}, {images} images per epoch; amp {amp}, "
          f"channels_last {channels_last}, compile {compile_on}")
    plains, ours = [], []
    for r in range(1 if args.quick else 2):  # interleaved, alternating which goes first
        runs = [(_plain, plains), (_recipec, ours)]
        for fn, out in runs if r % 2 == 0 else runs[::-1]:
            out += fn(recipe, data, args.epochs)
    plain, mine = images / statistics.median(plains), images / statistics.median(ours)
    print(f"{'loop':<28}{'images/s':>10}{'ratio':>8}")
    print(f"{'hand-written PyTorch':<28}{plain:>10.1f}{1.0:>8.2f}")
    print(f"{'recipec fit':<28}{mine:>10.1f}{mine / plain:>8.2f}")


if __name__ == "__main__":
    main()
