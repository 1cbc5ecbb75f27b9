"""The splits (train, val, test) and the data loaders: the one place data is built.

The datasets themselves are read in :mod:`recipec.data.datasets`, and the transforms are
:mod:`recipec.data.transforms`'s. Every image becomes a float tensor (C, H, W): converted to
``in_channels``, resized to a square (squashed, or as the pretrained weights were:
:func:`resize_rule`), augmented (train only), normalised. The
training order of epoch ``e`` is a pure function of ``(seed, e)`` (see :func:`set_epoch`), so
a resumed run sees the same batches. :func:`build_split` (:mod:`recipec.data.heldout`, imported
here) gives one split for evaluation, exactly as the run split it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from recipec.errors import DatasetError
from recipec.data.speed import EpochSeeded, auto_workers, epoch_seeded
from recipec.data.augment import build_augmentations, describe, describe_augment
from recipec.data.sampler import Repeats, balanced_sampler
from recipec.data.datasets import (
    DATASETS,
    count_per_class,
    fingerprint,
)
from recipec.data.heldout import SplitData, _eval_loader, build_split
from recipec.data.splits import EPOCH_STRIDE, partition
from recipec.data.transforms import (  # noqa: F401  (re-exported: data was built here before the split)
    _PRECOMPUTE_BYTES,
    IMAGENET,
    INTERPOLATIONS,
    Channels,
    Stats,
    _adapt,
    _Channels,
    _check_args,
    _Pipeline,
    _stats,
    resize_info,
    resize_rule,
)

__all__ = ["DATASETS", "LAST_BATCH_POLICY", "Data", "SplitData", "build_data", "build_split", "drops_single_last",
           "resize_rule", "set_epoch"]


@dataclass
class Data:
    """What :func:`build_data` returns.

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
    worker alike. With ``build_data(epoch_seed=False)`` the order continues from one generator.
    """
    seeded = epoch_seeded(data.train.dataset)
    if seeded is not None:
        seeded.epoch_seed = data.seed * EPOCH_STRIDE + epoch
    sampler = data.train.sampler
    if isinstance(sampler, DistributedSampler):  # one shard per rank; the sampler orders each epoch
        sampler.set_epoch(epoch)
    elif data.epoch_seed and data.train.generator is not None:
        data.train.generator.manual_seed(data.seed * EPOCH_STRIDE + epoch)


def build_data(*, dataset: str, root: str | None = None, classes: Sequence[str] | None = None,
               per_class: int | None = None, val_fraction: float = 0.2, image_size: int = 224,
               normalize: str = "from_weights", augment: Sequence[Any] = (), batch_size: int = 32,
               num_workers: int = 0, seed: int = 0, in_channels: int = 3, weights_normalization: Stats | None = None,
               num_classes: int | None = None, epoch_seed: bool = True, on_bad_image: str = "error",
               resize_size: int | None = None, interpolation: str = "bilinear", crop_mode: str = "center",
               sampler: str = "random", device: str = "cpu", task: str = "multiclass", threshold: float = 0.5,
               crop_fill: Sequence[int] | None = None, test_split: bool = True) -> Data:
    """Load a dataset, split it by class and wrap both parts in data loaders.

    Args:
        dataset: one of :data:`DATASETS`. ``digits`` (scikit-learn's 8x8 digits, values scaled to
            [0, 1]) and ``fake`` (``num_classes`` classes of 32 noisy copies of a random per-class
            pattern, drawn from ``seed``) need no files; the others read ``root`` and never download.
        root: the dataset directory, already resolved against the recipe's directory.
        classes: subset and order of classes; label ``i`` is ``classes[i]``.
        per_class: cap on training examples per class, applied after the split (val is untouched).
        val_fraction: share of each class held out (at least one when > 0 and the class has two).
        test_split: the data's own test split (``root/test``, a manifest's ``test`` rows, a torchvision
            dataset's official test set) becomes ``Data.test``; False: there is none.
        image_size: side of the square images.
        resize_size: None: every image is resized to ``image_size`` squared (bilinear). A number
            (:func:`resize_rule`): the shorter side is resized to it with ``interpolation`` (both
            sides with ``crop_mode`` ``squash``), then the centre ``image_size`` square is cut
            out, as timm's eval transform does; train and val alike, before the augmentations.
        interpolation: ``bilinear``, ``bicubic`` or ``nearest``; with ``resize_size`` only (and
            ``random_resized_crop``).
        crop_mode: ``center``, ``squash`` or ``border`` (timm's ``pretrained_cfg.crop_mode``; see
            :mod:`recipec.data.crops`); ``crop_fill``: the RGB colour ``border`` pads with (0..255).
        normalize: ``from_weights`` (``weights_normalization``, or none without one), ``imagenet``, ``none``.
        augment: training augmentations, applied in the order given.
        batch_size: examples per batch.
        num_workers: data loader worker processes, or ``auto`` (:func:`recipec.data.speed.auto_workers`);
            ``info["num_workers"]`` is the number used.
        device: the device type the batches go to (``cuda``: pinned memory, more workers for ``auto``).
        seed: seeds the split, the ``fake`` images and the training order.
        in_channels: channels the model expects. 1 from RGB is luminance; from 1 the channel is
            repeated; other counts repeat channels cyclically or drop the extra ones.
        weights_normalization: (mean, std) of the pretrained weights' transforms.
        num_classes: the model's output count; required by ``fake``, otherwise checked against the classes.
        on_bad_image: ``error``: an image file that cannot be decoded stops the run with a
            :class:`DatasetError` naming it; ``skip``: every file is decoded once up front and the
            unreadable ones are left out before the split (``info["skipped_images"]`` lists them).
        epoch_seed: reseed the training order every epoch with :func:`set_epoch`; when False the
            order continues from one generator seeded at build time.

    Returns:
        The loaders (``val`` is None when ``val_fraction`` is 0), class names, normalisation and info.

    Raises:
        DatasetError: a missing root or dataset file, an unknown class, a bad argument.

    Example:
        >>> data = build_data(dataset="digits", image_size=32, normalize="imagenet")
        >>> for epoch in range(3):
        ...     set_epoch(data, epoch)
        ...     for images, labels in data.train: ...
    """
    if task == "multilabel":  # multi-hot targets from a manifest
        from recipec.data.multilabel import build_multilabel_data

        return build_multilabel_data(**{k: v for k, v in locals().items() if k not in ("dataset", "task")})
    _check_args(dataset, normalize, augment, val_fraction, image_size, in_channels, resize_size, interpolation,
                crop_mode)
    if sampler not in ("random", "balanced"):
        raise DatasetError([(("data", "sampler"), f"unknown sampler {sampler!r}; choose random or balanced")])
    parts = partition(dataset, root, classes, val_fraction, per_class, seed, num_classes, on_bad_image,
                      test_split=test_split)
    labels, class_names, (train_idx, val_idx, test_idx) = parts.labels, parts.classes, parts.indices
    stats = _stats(normalize, weights_normalization, in_channels)
    # data.augment (recipec.data.augment): `augs` before normalisation in the order given, `after` it random_erasing
    augmentations = build_augmentations(augment, image_size, in_channels, interpolation if resize_size else "bilinear")
    augs, after, skipped = augmentations.before, augmentations.after, augmentations.skipped
    pipeline = _Pipeline(image_size, resize_size, interpolation, crop_mode, in_channels, stats, crop_fill)

    def loaded(idx: list[int], extra: list[Any], after: Sequence[Any] = ()) -> Dataset:
        return pipeline.dataset(parts.examples, idx, [labels[i] for i in idx], extra, after)

    generator = torch.Generator().manual_seed(seed * EPOCH_STRIDE if epoch_seed else seed)
    # Random transforms draw from the CPU RNG seeded per example from (seed, epoch, index) (EpochSeeded, set by
    # set_epoch), so any number of workers gives the same tensors. Workers are not persistent for training:
    # a reused iterator would skip the draw its creation takes from `generator` (the order would differ after
    # a resume) and its workers would keep their RNG across epochs.
    workers = auto_workers(num_workers, dataset, device)
    pin = device == "cuda"
    # data.sampler: balanced draws from the same generator, reseeded from (seed, epoch) by set_epoch
    order = balanced_sampler([labels[i] for i in train_idx], generator) if sampler == "balanced" else None
    train_set = loaded(train_idx, augs, after) if order is None else Repeats(loaded(train_idx, augs, after))
    train = DataLoader(EpochSeeded(train_set) if augs or after else train_set, batch_size=batch_size,
                       shuffle=order is None, sampler=order, generator=generator,
                       num_workers=workers, drop_last=drops_single_last(len(train_idx), batch_size),
                       persistent_workers=False, pin_memory=pin, prefetch_factor=4 if workers else None)
    val = _eval_loader(loaded(val_idx, []), batch_size, workers, pin) if parts.has_val else None
    test = _eval_loader(loaded(test_idx, []), batch_size, workers, pin) if test_idx else None

    applied: Any = {"mean": list(stats[0]), "std": list(stats[1])} if stats else "none"
    if normalize == "from_weights" and not weights_normalization:
        applied = "none (no pretrained weights)"
    info = {
        "dataset": dataset, "root": root, "classes": class_names,
        "sizes": {"train": len(train_idx), "val": len(val_idx), "test": len(test_idx)}, "splits": parts.origins,
        "train_per_class": count_per_class(train_idx, labels, class_names),
        "val_per_class": count_per_class(val_idx, labels, class_names),
        "test_per_class": count_per_class(test_idx, labels, class_names),
        "image_size": image_size, "in_channels": in_channels,
        "resize": resize_info(image_size, resize_size, interpolation, crop_mode, crop_fill),
        "normalize": {"requested": normalize, "applied": applied},
        "augment": [d for d in map(describe_augment, augment) if d not in skipped], "augment_skipped": skipped,
        "sampler": sampler,
        "transforms": {"train": describe([pipeline.resize, *augs, *pipeline.norm, *after]),
                       "eval": describe([pipeline.resize, *pipeline.norm])},
        "val_fraction": val_fraction, "per_class": per_class, "seed": seed,
        "fingerprint": fingerprint(parts.examples, labels, {"train": train_idx, "val": val_idx, "test": test_idx}),
        "on_bad_image": on_bad_image, "skipped_images": parts.bad,
        "num_workers": workers,
        "batches": {"batch_size": batch_size, "per_epoch": len(train),
                    "dropped_per_epoch": 1 if train.drop_last else 0, "last_batch": LAST_BATCH_POLICY},
    }
    return Data(train, val, class_names, stats, info, seed=seed, epoch_seed=epoch_seed, test=test)
