"""Data throughput settings that leave the numbers alone: loader workers and per-item augmentation seeds
(channels_last and torch.compile: :mod:`recipec.train.speed`).

Each one states where it refuses or what it costs, as :mod:`recipec.train.cache` does:

- ``data.num_workers: auto`` is 0 for data held in memory (``digits``, ``fake``: a worker would
  only add inter-process copies) and for files ``min(8, cores - 1)`` on CUDA, ``min(4, cores - 1)``
  elsewhere, counting the cores this process may run on (``os.sched_getaffinity``).
- Random training transforms draw from a generator seeded by (seed, epoch, example) in whichever
  process loads the example (:class:`EpochSeeded`), so epoch ``e`` sees the same augmented tensors
  with any number of workers and after a resume; the global RNG (dropout) is untouched by them.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch.utils.data import Dataset

from recipec.recipe.catalog import IN_MEMORY

__all__ = ["EpochSeeded", "auto_workers", "epoch_seeded", "usable_cores"]

_GOLDEN = 0x9E3779B97F4A7C15  # 2**64 / golden ratio: spreads (epoch seed, index) over the 64-bit seed space


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask, e.g. a container's or taskset's share)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def auto_workers(num_workers: int | str, dataset: str, device: str) -> int:
    """``data.num_workers`` resolved: a number stays; ``auto`` as the module docstring says."""
    if num_workers != "auto":
        return int(num_workers)
    if dataset in IN_MEMORY:
        return 0
    cores = usable_cores() // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))  # shared by the local ranks
    return max(0, min(8 if device == "cuda" else 4, cores - 1))


class EpochSeeded(Dataset):
    """``dataset`` whose item ``i`` is loaded with the CPU RNG seeded from (``epoch_seed``, ``i``).

    The RNG state around the call is restored, so loading an example never moves the global
    stream, in the main process or a worker. :func:`recipec.data.loaders.set_epoch` sets ``epoch_seed``
    before the epoch's iterator (and so its workers, which copy the dataset) is created.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset
        self.epoch_seed = 0

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> Any:
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed((self.epoch_seed * _GOLDEN + i) % 2**64)
            return self.dataset[i]


def epoch_seeded(dataset: Any) -> EpochSeeded | None:
    """The :class:`EpochSeeded` under ``dataset`` (through ``Subset`` s), or None."""
    while dataset is not None and not isinstance(dataset, EpochSeeded):
        dataset = getattr(dataset, "dataset", None)
    return dataset
