"""Data parallelism: gradients averaged over ranks, frozen parameters untouched, one writer."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from recipec.train.distributed import World, average_gradients, broadcast_buffers

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    world = World(rank=rank, size=2)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    model[0].weight.requires_grad_(False)  # a frozen parameter
    x = torch.full((5, 3), float(rank + 1))  # each rank sees other data
    model(x).pow(2).sum().backward()
    own = model[2].weight.grad.clone()
    average_gradients(model, world)
    broadcast_buffers(model, world)
    torch.save({"own": own, "avg": model[2].weight.grad, "frozen_grad": model[0].weight.grad,
                "running_mean": model[1].running_mean}, Path(out) / f"rank{rank}.pt")
    dist.destroy_process_group()


def test_gradients_are_averaged_and_frozen_ones_stay_none(tmp_path):
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert not torch.equal(r0["own"], r1["own"])
    assert torch.allclose(r0["avg"], (r0["own"] + r1["own"]) / 2) and torch.equal(r0["avg"], r1["avg"])
    assert r0["frozen_grad"] is None and r1["frozen_grad"] is None
    assert torch.equal(r0["running_mean"], r1["running_mean"])  # rank 0's statistics everywhere


def test_build_with_two_processes(tmp_path):
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(textwrap.dedent("""\
        name: tiny
        device: cpu
        model: {arch: "tests.tinynets:tiny_cnn", kwargs: {width: 4}, head: {num_classes: 10}}
        freeze: {trainable: [head], unfreeze: {1: [body]}}
        groups:
          - {name: body, match: ['^[0134]\\.']}
          - {name: head, match: ['^8\\.']}
        data: {dataset: digits, image_size: 8, per_class: 20}
        train: {epochs: 2}
    """))
    out = tmp_path / "run"
    result = subprocess.run([sys.executable, "-m", "recipec", "build", str(recipe), "--out", str(out), "--nproc", "2"],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("done:") == 1 and result.stdout.count("epoch 1 (2 of 2)") == 1
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 2 and metrics[1]["trainable_groups"] == ["body", "head"]
    assert json.loads((out / "plan.json").read_text())["world_size"] == 2
    # a mistake is reported once, by rank 0, with exit 2
    bad = subprocess.run([sys.executable, "-m", "recipec", "build", str(recipe), "--out", str(out), "--nproc", "2"],
                         capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 2 and bad.stderr.count("--resume") == 1, bad.stderr
