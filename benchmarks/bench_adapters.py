"""LoRA vs full fine-tuning of a timm ViT-S (random init, 64x64, CPU): trainable parameters, optimizer-state bytes,
peak RSS and time per training step, in one run.

Run: .venv/bin/python benchmarks/bench_adapters.py      (--quick: a 2-block ViT at 32x32, 2 steps: a check
                                                          that it runs)

Each configuration runs in its own fresh process (so peak RSS is its own), compiled by recipec from one recipe:
``timm/vit_small_patch16_224`` with ``img_size: 64`` (16 patches), a new 10-class head, AdamW, batch 32 of random
images. full: ``freeze`` absent, every parameter trains. lora: ``freeze: {trainable: [head]}`` and ``adapters:
{r: 8, alpha: 16, target: attention}`` (qkv and proj of every block). Optimizer state is the bytes of the tensors
AdamW holds after the timed steps; the step time is the median of ``--steps`` steps after 2 warm-up steps
(forward, cross-entropy, backward, optimizer step, zero_grad). Goal (issue 21): optimizer state <= 5% of full
fine-tuning, step time <= 1.0x.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from recipec.compiler.compile import compile_recipe
from recipec.recipe.spec import Recipe


def _measure(mode: str, quick: bool, steps: int, threads: int) -> dict[str, float]:
    torch.set_num_threads(threads)
    size = 32 if quick else 64
    kwargs = {"img_size": size, **({"depth": 2} if quick else {})}
    recipe: dict[str, object] = {
        "name": f"bench-{mode}", "device": "cpu", "seed": 0,
        "model": {"arch": "timm/vit_small_patch16_224", "weights": None, "kwargs": kwargs, "head": {"num_classes": 10}},
        "optimizer": {"name": "adamw", "lr": 1e-3, "weight_decay": 0.05}, "train": {"epochs": 1},
        "data": {"dataset": "fake", "image_size": size},
    }
    if mode == "lora":
        recipe |= {"freeze": {"trainable": ["head"]}, "adapters": {"r": 8, "alpha": 16, "target": "attention"}}
    compiled = compile_recipe(Recipe.model_validate(recipe))
    model, optimizer = compiled.model, compiled.optimizer
    model.train()
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(32, 3, size, size, generator=g), torch.randint(0, 10, (32,), generator=g)
    times = []
    for i in range(2 + steps):
        start = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if i >= 2:
            times.append(time.perf_counter() - start)
    state = sum(t.numel() * t.element_size() for s in optimizer.state.values() for t in s.values()
                if isinstance(t, torch.Tensor))
    return {"trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "total": sum(p.numel() for p in model.parameters()), "optimizer_state_bytes": state,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "step_s": statistics.median(times)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 blocks, 32x32, 2 steps")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", choices=["full", "lora"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    steps = 2 if args.quick else args.steps
    if args.child:
        print(json.dumps(_measure(args.child, args.quick, steps, args.threads)))
        return
    results = {}
    for mode in ("full", "lora"):
        argv = [sys.executable, __file__, "--child", mode, "--steps", str(steps), "--threads", str(args.threads)]
        done = subprocess.run(argv + (["--quick"] if args.quick else []), capture_output=True, text=True, check=True)
        results[mode] = json.loads(done.stdout.strip().splitlines()[-1])
    full, lora = results["full"], results["lora"]
    for mode, r in results.items():
        print(f"{mode:<5} trainable {r['trainable']:>11,} of {r['total']:,}  optimizer state "
              f"{r['optimizer_state_bytes'] / 2**20:9.2f} MiB  peak RSS {r['peak_rss_mib']:7.0f} MiB  "
              f"step {r['step_s'] * 1000:8.1f} ms")
    print(f"lora/full: trainable {lora['trainable'] / full['trainable']:.2%}, optimizer state "
          f"{lora['optimizer_state_bytes'] / full['optimizer_state_bytes']:.2%}, peak RSS "
          f"{lora['peak_rss_mib'] / full['peak_rss_mib']:.2f}x, step time {lora['step_s'] / full['step_s']:.2f}x")


if __name__ == "__main__":
    main()
