"""Throughput settings that leave the numbers alone: loader workers, per-item augmentation seeds,
channels_last and torch.compile.

Each one states where it refuses or what it costs, as :mod:`recipec.train.cache` does:

- ``data.num_workers: auto`` is 0 for data held in memory (``digits``, ``fake``: a worker would
  only add inter-process copies) and for files ``min(8, cores - 1)`` on CUDA, ``min(4, cores - 1)``
  elsewhere, counting the cores this process may run on (``os.sched_getaffinity``).
- Random training transforms draw from a generator seeded by (seed, epoch, example) in whichever
  process loads the example (:class:`EpochSeeded`), so epoch ``e`` sees the same augmented tensors
  with any number of workers and after a resume; the global RNG (dropout) is untouched by them.
- ``train.compile`` wraps the training forward in :func:`torch.compile`; the module itself (its
  ``state_dict``, checkpoints, exports) is never the wrapper, so no ``_orig_mod.`` keys. Unfreezing
  changes ``requires_grad`` and BatchNorm modes, which recompiles: once per phase of the freezing
  schedule (counted per epoch in ``metrics.jsonl`` as ``compiles``).
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from recipec.recipe.catalog import IN_MEMORY

__all__ = ["EpochSeeded", "auto_workers", "compile_forward", "compiles_so_far", "epoch_seeded", "speed_plan",
           "to_channels_last", "usable_cores"]

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


def to_channels_last(model: nn.Module) -> None:
    """Store the model's 4-d weights as NHWC (``torch.channels_last``), in place; values unchanged."""
    model.to(memory_format=torch.channels_last)  # type: ignore[call-arg]


def compile_forward(model: nn.Module, mode: bool | str, phases: int) -> Any:
    """``model`` wrapped in :func:`torch.compile` for the training forward, or ``model`` when ``mode`` is False.

    ``mode``: True or ``"default"``, ``"reduce-overhead"``, ``"max-autotune"``. The backend is
    inductor; ``RECIPEC_COMPILE_BACKEND`` (``eager``, ``aot_eager``) replaces it for tests on
    machines without a C++ compiler. Dynamo's per-function cache is raised to hold one graph per
    phase of the freezing schedule (each phase changes ``requires_grad``), plus the last partial batch.
    """
    if mode is False:
        return model
    import torch._dynamo  # noqa: PLC0415 (dynamo takes seconds to import: only with train.compile)

    limit = max(8, 2 * phases + 2)
    config = torch._dynamo.config
    if hasattr(config, "recompile_limit"):
        config.recompile_limit = max(config.recompile_limit, limit)
    else:  # torch < 2.6
        config.cache_size_limit = max(config.cache_size_limit, limit)
    backend = os.environ.get("RECIPEC_COMPILE_BACKEND", "inductor")
    kwargs: dict[str, Any] = {"backend": backend}
    if mode not in (True, "default") and backend == "inductor":
        kwargs["mode"] = mode
    return torch.compile(model, **kwargs)


def compiles_so_far() -> int:
    """Frames torch.compile has compiled in this process (first compiles and recompiles)."""
    from torch._dynamo.utils import counters  # noqa: PLC0415 (as in compile_forward)

    return int(counters["frames"]["ok"])


def speed_plan(train: Any, data: Any, phases: int) -> dict[str, Any]:
    """The plan's ``speed`` entry: ``train.compile``/``channels_last``, ``data.num_workers`` as written, and a summary.

    ``phases``: distinct sets of trainable groups over the epochs; torch.compile compiles once for each.
    """
    mode = train.compile
    compiled = None if mode is False else ("default" if mode is True else mode)
    parts = [f"num_workers {data.num_workers}"]
    if compiled:
        parts.append(f"torch.compile mode {compiled}: compiles once per phase of the freezing schedule, "
                     f"{phases} phase{'s' if phases != 1 else ''} (counted per epoch in metrics.jsonl: compiles)")
    if train.channels_last:
        parts.append("channels_last")
    if train.amp != "none":
        parts.append(f"amp {train.amp}")
    return {"compile": compiled, "compile_phases": phases if compiled else 0, "channels_last": train.channels_last,
            "num_workers": data.num_workers, "summary": "; ".join(parts)}
