"""A run's data, built from a :class:`recipec.data.config.DataConfig`: :func:`build_data`.

Read the dataset (:mod:`recipec.data.datasets`), split it (:mod:`recipec.data.splits`), turn each
image into a tensor (:mod:`recipec.data.transforms`, :mod:`recipec.data.augment`) and wrap the
splits in loaders (:mod:`recipec.data.loaders`). ``task: multilabel`` goes to
:mod:`recipec.data.multilabel`.
"""

from __future__ import annotations

from typing import Any

import torch

from recipec.errors import DatasetError
from recipec.data.augment import build_augmentations
from recipec.data.config import DataConfig
from recipec.data.datasets import count_per_class, fingerprint
from recipec.data.loaders import LAST_BATCH_POLICY, Data, eval_loader, train_loader
from recipec.data.multilabel import build_multilabel_data
from recipec.data.sampler import Repeats, balanced_sampler
from recipec.data.speed import auto_workers
from recipec.data.splits import EPOCH_STRIDE, partition
from recipec.data.transforms import ImagePipeline, check_config, preprocessing_info

__all__ = ["build_data"]


def build_data(config: DataConfig) -> Data:
    """Load a dataset, split it by class and wrap the splits in data loaders.

    ``digits`` (scikit-learn's 8x8 digits, values scaled to [0, 1]) and ``fake`` (``num_classes``
    classes of 32 noisy copies of a random per-class pattern, drawn from ``seed``) need no files;
    the others read ``root`` (already absolute) and never download. Each class keeps
    ``val_fraction`` of its examples for val (at least one when > 0 and the class has two), and at
    most ``per_class`` for training; the data's own test split becomes ``Data.test`` when
    ``test_split``. With ``on_bad_image: skip`` every file is decoded once up front and the
    unreadable ones are left out before the split (``info["skipped_images"]`` lists them); with
    ``error`` the first one stops the run. ``num_workers: auto`` is resolved
    (:func:`recipec.data.speed.auto_workers`; ``info["num_workers"]`` is the number used).

    Returns:
        The loaders (``val`` is None without a val split), class names, normalisation and ``info``
        (a JSON-serialisable description for provenance).

    Raises:
        DatasetError: a missing root or dataset file, an unknown class, a bad option; each at its
            field of the config (``("root",)``, ``("classes", 1)``...), which the compiler relabels.

    Example:
        >>> data = build_data(DataConfig.of(dataset="digits", image_size=32, normalize="imagenet"))
        >>> for epoch in range(3):
        ...     set_epoch(data, epoch)
        ...     for images, labels in data.train: ...
    """
    if config.reading.task == "multilabel":  # multi-hot targets from a manifest
        return build_multilabel_data(config)
    check_config(config)
    reading, splitting, p, loading = config.reading, config.splitting, config.transforming, config.loading
    if loading.sampler not in ("random", "balanced"):
        raise DatasetError([(("sampler",), f"unknown sampler {loading.sampler!r}; choose random or balanced")])
    parts = partition(reading, splitting)
    labels, class_names, (train_idx, val_idx, test_idx) = parts.labels, parts.classes, parts.indices
    # augment (recipec.data.augment): `before` normalisation in the order given, `after` it random_erasing
    augmentations = build_augmentations(loading.augment, p.image_size, p.in_channels,
                                        p.interpolation if p.resize_size else "bilinear")
    augs, after = augmentations.before, augmentations.after
    pipeline = ImagePipeline(p)

    def loaded(idx: list[int], extra: list[Any], after: list[Any] | None = None) -> Any:
        return pipeline.dataset(parts.examples, idx, [labels[i] for i in idx], extra, after or ())

    seed = splitting.seed
    generator = torch.Generator().manual_seed(seed * EPOCH_STRIDE if loading.epoch_seed else seed)
    workers = auto_workers(loading.num_workers, reading.dataset, loading.device)
    pin = loading.device == "cuda"
    # sampler balanced draws from the same generator, reseeded from (seed, epoch) by set_epoch
    order = balanced_sampler([labels[i] for i in train_idx], generator) if loading.sampler == "balanced" else None
    train_set = loaded(train_idx, augs, after) if order is None else Repeats(loaded(train_idx, augs, after))
    train = train_loader(train_set, len(train_idx), generator, loading=loading, workers=workers, sampler=order,
                         seeded=bool(augs or after))
    val = eval_loader(loaded(val_idx, []), loading.batch_size, workers, pin) if parts.has_val else None
    test = eval_loader(loaded(test_idx, []), loading.batch_size, workers, pin) if test_idx else None

    stats = pipeline.stats
    info = {
        "dataset": reading.dataset, "root": reading.root, "classes": class_names,
        "sizes": {"train": len(train_idx), "val": len(val_idx), "test": len(test_idx)}, "splits": parts.origins,
        "train_per_class": count_per_class(train_idx, labels, class_names),
        "val_per_class": count_per_class(val_idx, labels, class_names),
        "test_per_class": count_per_class(test_idx, labels, class_names),
        **preprocessing_info(p, loading.augment, loading.sampler, pipeline, augmentations),
        "val_fraction": splitting.val_fraction, "per_class": splitting.per_class, "seed": seed,
        "fingerprint": fingerprint(parts.examples, labels, {"train": train_idx, "val": val_idx, "test": test_idx}),
        "on_bad_image": reading.on_bad_image, "skipped_images": parts.bad,
        "num_workers": workers,
        "batches": {"batch_size": loading.batch_size, "per_epoch": len(train),
                    "dropped_per_epoch": 1 if train.drop_last else 0, "last_batch": LAST_BATCH_POLICY},
    }
    return Data(train, val, class_names, stats, info, seed=seed, epoch_seed=loading.epoch_seed, test=test)
