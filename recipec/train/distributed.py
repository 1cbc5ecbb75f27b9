"""Data-parallel glue: `--nproc N` processes (or torchrun's), gradients averaged by all-reduce.

recipec averages gradients itself after each backward instead of wrapping the model in
DistributedDataParallel: DDP registers only the parameters that require grad when it is
built, so a group unfrozen later would never be synchronised, and it may hand frozen
parameters zero gradients (which AdamW then decays). Here a frozen parameter keeps
``grad=None`` on every rank. BatchNorm buffers are broadcast from rank 0 before each
validation and checkpoint, so every rank holds the same model. Only rank 0 writes files.
"""

from __future__ import annotations

import datetime
import os
import socket
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from recipec.data.loaders import drops_single_last

__all__ = ["World", "average_gradients", "broadcast_buffers", "launch", "setup", "shard_loader", "teardown"]


@dataclass(frozen=True)
class World:
    """This process's place among the training processes."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Whether this process writes files and prints progress."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def setup(device: torch.device) -> tuple[World, torch.device]:
    """Join the process group torchrun or ``launch`` described in the environment (if any).

    Returns the world and the device this rank uses (``cuda:LOCAL_RANK`` on CUDA).
    """
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World(), device
    world = World(rank=int(os.environ["RANK"]), size=size, local_rank=int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=datetime.timedelta(minutes=10))
    return world, device


def teardown(world: World) -> None:
    """Leave the process group."""
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()


def shard_loader(loader: DataLoader, world: World, seed: int) -> DataLoader:
    """The same loader over this rank's share of the data; ``sampler.set_epoch`` orders each epoch."""
    sampler: DistributedSampler[int] = DistributedSampler(loader.dataset, num_replicas=world.size, rank=world.rank, shuffle=True, seed=seed)
    return DataLoader(loader.dataset, batch_size=loader.batch_size, sampler=sampler, num_workers=loader.num_workers,
                      drop_last=drops_single_last(len(sampler), loader.batch_size or 1), persistent_workers=False,
                      pin_memory=loader.pin_memory, prefetch_factor=loader.prefetch_factor)


def average_gradients(model: nn.Module, world: World) -> None:
    """Average the gradients that exist across ranks, in one flat all-reduce (frozen: grad None)."""
    if not world.distributed:
        return
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world.size
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def broadcast_buffers(model: nn.Module, world: World) -> None:
    """Give every rank rank 0's buffers (BatchNorm running statistics)."""
    if world.distributed:
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


def all_sum(values: Sequence[float], world: World) -> list[float]:
    """Sum numbers over ranks."""
    if not world.distributed:
        return list(values)
    tensor = torch.tensor(list(values), dtype=torch.float64)
    dist.all_reduce(tensor)
    return tensor.tolist()


def launch(argv: Sequence[str], nproc: int) -> int:
    """Run ``python -m recipec <argv>`` in ``nproc`` local processes; return the worst exit code.

    Ranks above 0 run with ``RECIPEC_QUIET_RANK=1`` so each problem is printed once.
    """
    with socket.socket() as s:  # a free port for the rendezvous, on loopback only
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for rank in range(nproc):
        env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(nproc),
                   LOCAL_WORLD_SIZE=str(nproc), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        if rank:
            env["RECIPEC_QUIET_RANK"] = "1"
        procs.append(subprocess.Popen([sys.executable, "-m", "recipec", *argv], env=env))
    try:
        codes = [p.wait() for p in procs]
    except KeyboardInterrupt:
        for p in procs:
            p.terminate()
        raise
    failed = [c for c in codes if c != 0]
    return max(failed, key=lambda c: (c != 2, c)) if failed else 0
