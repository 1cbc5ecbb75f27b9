"""The data loaders: what a run's data is (:class:`Data`, :class:`SplitData`), the training loader
and its per-epoch order (:func:`set_epoch`), and the loaders of held-out splits.

Every image reaches a loader as a float tensor (C, H, W) (:mod:`recipec.data.transforms`). The
training order of epoch ``e`` is a pure function of ``(seed, e)`` (see :func:`set_epoch`), so a
resumed run sees the same batches. :func:`recipec.data.build.build_data` builds a run's loaders,
:func:`recipec.data.heldout.build_split` one split for evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from recipec.data.config import Loading, Stats
from recipec.data.speed import EpochSeeded, epoch_seeded
from recipec.data.splits import EPOCH_STRIDE

__all__ = ["LAST_BATCH_POLICY", "Data", "SplitData", "drops_single_last", "eval_loader", "set_epoch", "train_loader"]


@dataclass
class Data:
    """What :func:`recipec.data.build.build_data` returns.

    ``normalization`` is the (mean, std) actually applied, ``None`` for none; ``info`` is a
    JSON-serialisable description for provenance. ``test`` is None when the data has no test
    split (``root/test``, a manifest's ``test`` rows); nothing in a build reads it.
    """

    train: DataLoader
    val: DataLoader | None
    classes: list[str]
    normalization: Stats | None
    info: dict[str, Any]
    seed: int = 0
    epoch_seed: bool = True
    test: DataLoader | None = None
    task: str = "multiclass"  # multilabel: targets are multi-hot (N, C) (recipec.train.multilabel)
    threshold: float = 0.5  # multilabel: a class is predicted at sigmoid >= threshold


LAST_BATCH_POLICY = "a last batch of one example is skipped in its epoch (BatchNorm cannot train on one; order reshuffled)"


def drops_single_last(examples: int, batch_size: int) -> bool:
    """The loader's ``drop_last``: True exactly when the last batch would hold one example of several.

    BatchNorm in training mode cannot normalise a batch of one ("Expected more than 1 value per
    channel"), so that one example waits for the next epoch's order (:data:`LAST_BATCH_POLICY`).
    Every other last partial batch trains. A split of one example keeps it.
    """
    return examples > 1 and examples % batch_size == 1


def set_epoch(data: Data, epoch: int) -> None:
    """Make the training order of ``epoch`` depend on nothing but ``(seed, epoch)``.

    Call it at the start of every epoch. Random transforms are seeded per example from
    ``(seed, epoch)`` too (:class:`recipec.data.speed.EpochSeeded`), in the main process or a
    worker alike. With ``Loading(epoch_seed=False)`` the order continues from one generator.
    """
    seeded = epoch_seeded(data.train.dataset)
    if seeded is not None:
        seeded.epoch_seed = data.seed * EPOCH_STRIDE + epoch
    sampler = data.train.sampler
    if isinstance(sampler, DistributedSampler):  # one shard per rank; the sampler orders each epoch
        sampler.set_epoch(epoch)
    elif data.epoch_seed and data.train.generator is not None:
        data.train.generator.manual_seed(data.seed * EPOCH_STRIDE + epoch)


@dataclass
class SplitData:
    """What :func:`recipec.data.heldout.build_split` returns: ``n`` examples of one split in ``loader``
    (eval transforms, dataset order), labelled by ``classes`` (the model's); ``info``: ``split``,
    ``source`` (where the examples came from), ``per_class`` counts, ``skipped_images``."""

    loader: DataLoader
    classes: list[str]
    n: int
    info: dict[str, Any]


def train_loader(dataset: Dataset, n: int, generator: torch.Generator, *, loading: Loading, workers: int,
                 sampler: Sampler[int] | None = None, seeded: bool = False) -> DataLoader:
    """The training loader of ``n`` examples: shuffled by ``generator`` (or drawn by ``sampler``),
    ``dataset`` wrapped in :class:`EpochSeeded` when ``seeded`` (it has random transforms).

    Random transforms draw from the CPU RNG seeded per example from (seed, epoch, index) (set by
    :func:`set_epoch`), so any number of workers gives the same tensors. Workers are not persistent: a
    reused iterator would skip the draw its creation takes from ``generator`` (the order would differ
    after a resume) and its workers would keep their RNG across epochs.
    """
    return DataLoader(EpochSeeded(dataset) if seeded else dataset, batch_size=loading.batch_size,
                      shuffle=sampler is None, sampler=sampler, generator=generator, num_workers=workers,
                      drop_last=drops_single_last(n, loading.batch_size), persistent_workers=False,
                      pin_memory=loading.device == "cuda", prefetch_factor=4 if workers else None)


def eval_loader(dataset: Dataset, batch_size: int, num_workers: int, pin: bool = False) -> DataLoader:
    """val, test and :func:`recipec.data.heldout.build_split`: dataset order, every example. Nothing
    random, so workers may persist."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers, drop_last=False,
                      persistent_workers=num_workers > 0, pin_memory=pin, prefetch_factor=4 if num_workers else None)
