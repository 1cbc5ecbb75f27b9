"""The splits (train, val, test), transforms and the data loaders: the one place data is built.

The datasets themselves are read in :mod:`recipec.train.datasets`. Every image becomes a
float tensor (C, H, W): converted to ``in_channels``, resized to a square (squashed, or as
the pretrained weights were: :func:`resize_rule`), augmented (train only), normalised. The
training order of epoch ``e`` is a pure function of ``(seed, e)`` (see :func:`set_epoch`), so
a resumed run sees the same batches. :func:`build_split` gives one split for evaluation,
exactly as the run split it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from torchvision.transforms import v2

from recipec.errors import DatasetError
from recipec.train.speed import EpochSeeded, auto_workers, epoch_seeded
from recipec.train.augment import augment_problems, build_augmentations, describe, describe_augment
from recipec.train.sampler import Repeats, balanced_sampler
from recipec.train.datasets import (
    DATASETS,
    SPLITS,
    Examples,
    FileImages,
    TensorImages,
    count_per_class,
    fingerprint,
    override_examples,
    without_bad_images,
)
from recipec.train.splits import EPOCH_STRIDE, partition

__all__ = ["DATASETS", "LAST_BATCH_POLICY", "Data", "SplitData", "build_data", "build_split", "drops_single_last",
           "resize_rule", "set_epoch"]

Stats = tuple[tuple[float, ...], tuple[float, ...]]

INTERPOLATIONS = ("bilinear", "bicubic", "nearest")
IMAGENET: Stats = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
# In-memory datasets (digits, fake) are resized once up front unless that would take more than this.
_PRECOMPUTE_BYTES = 256 * 2**20


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


@dataclass
class SplitData:
    """What :func:`build_split` returns: ``n`` examples of one split in ``loader`` (eval transforms,
    dataset order), labelled by ``classes`` (the model's); ``info``: ``split``, ``source`` (where the
    examples came from), ``per_class`` counts, ``skipped_images``."""

    loader: DataLoader
    classes: list[str]
    n: int
    info: dict[str, Any]


LAST_BATCH_POLICY = "a last batch of one example is skipped in its epoch (BatchNorm cannot train on one; order reshuffled)"


def drops_single_last(examples: int, batch_size: int) -> bool:
    """The loader's ``drop_last``: True exactly when the last batch would hold one example of several.

    BatchNorm in training mode cannot normalise a batch of one ("Expected more than 1 value per
    channel"), so that one example waits for the next epoch's order (:data:`LAST_BATCH_POLICY`).
    Every other last partial batch trains. A split of one example keeps it.
    """
    return examples > 1 and examples % batch_size == 1


def resize_rule(image_size: int | str, resize: str, preprocessing: dict[str, Any] | None,
                weights: str | None) -> dict[str, Any]:
    """How a run resizes its images: ``data.image_size`` and ``data.resize`` against the weights' preprocessing.

    With ``resize: from_weights`` and weights that define a resize (``preprocessing`` from
    :func:`recipec.model.pretrained.weights_preprocessing`), the shorter side goes to
    ``floor(image_size / crop_pct)`` (torchvision weights: ``image_size * resize_size // crop_size``)
    with the weights' interpolation and the centre ``image_size`` square is kept, as timm's
    ``transforms_imagenet_eval`` does (``Resize(256) + CenterCrop(224)`` for ImageNet weights at
    224). Otherwise the image is squashed to ``image_size`` squared, bilinear.

    Returns:
        ``image_size``, ``rule`` (``shorter_side`` or ``square``), ``resize_size``,
        ``interpolation``, ``crop_pct``, ``crop_mode``, ``from`` and a one-line ``summary``.

    Raises:
        DatasetError: ``image_size: from_weights`` without weights that define an input size.
    """
    import math

    source = f"the preprocessing of weights {weights}"
    if image_size == "from_weights":
        if preprocessing is None:
            why = f"weights {weights} define no input size" if weights else "there are no pretrained weights (model.weights: null)"
            raise DatasetError([(("data", "image_size"), f"from_weights, but {why}; set a number, e.g. 224")])
        image_size = int(preprocessing["input_size"])
    size = int(image_size)
    if resize == "square" or preprocessing is None:
        origin = "data.resize: square" if resize == "square" else (
            f"weights {weights} define no resize" if weights else "no pretrained weights")
        return {"image_size": size, "rule": "square", "resize_size": size, "interpolation": "bilinear",
                "crop_pct": 1.0, "crop_mode": None, "from": origin,
                "summary": f"{size}x{size} square resize (bilinear); {origin}"}
    crop_pct = float(preprocessing["crop_pct"])
    if preprocessing.get("resize_size"):  # torchvision: exact integers, 224 -> 256
        resized = size * int(preprocessing["resize_size"]) // int(preprocessing["input_size"])
    else:
        resized = math.floor(size / crop_pct)  # timm's own arithmetic
    mode = str(preprocessing.get("crop_mode") or "center")
    note = "" if mode in ("center", "squash") else f" (crop_mode {mode} applied as center)"
    mode = mode if mode in ("center", "squash") else "center"
    side = "both sides" if mode == "squash" else "shorter side"
    interpolation = str(preprocessing["interpolation"])
    return {"image_size": size, "rule": "shorter_side", "resize_size": resized, "interpolation": interpolation,
            "crop_pct": crop_pct, "crop_mode": mode, "from": source + note,
            "summary": f"{side} to {resized} ({interpolation}), centre crop {size}x{size} (crop_pct {crop_pct:g}); "
                       f"from {source}{note}"}


def set_epoch(data: Data, epoch: int) -> None:
    """Make the training order of ``epoch`` depend on nothing but ``(seed, epoch)``.

    Call it at the start of every epoch. Random transforms are seeded per example from
    ``(seed, epoch)`` too (:class:`recipec.train.speed.EpochSeeded`), in the main process or a
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
               sampler: str = "random", device: str = "cpu", task: str = "multiclass", threshold: float = 0.5) -> Data:
    """Load a dataset, split it by class and wrap both parts in data loaders.

    Args:
        dataset: one of :data:`DATASETS`. ``digits`` (scikit-learn's 8x8 digits, values scaled to
            [0, 1]) and ``fake`` (``num_classes`` classes of 32 noisy copies of a random per-class
            pattern, drawn from ``seed``) need no files; the others read ``root`` and never download.
        root: the dataset directory, already resolved against the recipe's directory.
        classes: subset and order of classes; label ``i`` is ``classes[i]``.
        per_class: cap on training examples per class, applied after the split (val is untouched).
        val_fraction: share of each class held out (at least one when > 0 and the class has two).
        image_size: side of the square images.
        resize_size: None: every image is resized to ``image_size`` squared (bilinear). A number
            (:func:`resize_rule`): the shorter side is resized to it with ``interpolation`` (both
            sides with ``crop_mode`` ``squash``), then the centre ``image_size`` square is cut
            out, as timm's eval transform does; train and val alike, before the augmentations.
        interpolation: ``bilinear``, ``bicubic`` or ``nearest``; with ``resize_size`` only (and
            ``random_resized_crop``).
        crop_mode: ``center`` or ``squash`` (timm's ``pretrained_cfg.crop_mode``).
        normalize: ``from_weights`` (``weights_normalization``, or none without one), ``imagenet``, ``none``.
        augment: training augmentations, applied in the order given.
        batch_size: examples per batch.
        num_workers: data loader worker processes, or ``auto`` (:func:`recipec.train.speed.auto_workers`);
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
        from recipec.train.multilabel_data import build_multilabel_data

        return build_multilabel_data(**{k: v for k, v in locals().items() if k not in ("dataset", "task")})
    _check_args(dataset, normalize, augment, val_fraction, image_size, in_channels, resize_size, interpolation,
                crop_mode)
    if sampler not in ("random", "balanced"):
        raise DatasetError([(("data", "sampler"), f"unknown sampler {sampler!r}; choose random or balanced")])
    parts = partition(dataset, root, classes, val_fraction, per_class, seed, num_classes, on_bad_image)
    labels, class_names, (train_idx, val_idx, test_idx) = parts.labels, parts.classes, parts.indices
    stats = _stats(normalize, weights_normalization, in_channels)
    # data.augment (recipec.train.augment): `augs` before normalisation in the order given, `after` it random_erasing
    augmentations = build_augmentations(augment, image_size, in_channels, interpolation if resize_size else "bilinear")
    augs, after, skipped = augmentations.before, augmentations.after, augmentations.skipped
    pipeline = _Pipeline(image_size, resize_size, interpolation, crop_mode, in_channels, stats)

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
        "resize": resize_info(image_size, resize_size, interpolation, crop_mode),
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


def build_split(*, split: str, override: str | None = None, classes: Sequence[str], batch_size: int | None = None,
                **kwargs: Any) -> SplitData:
    """One split of a run's data (or of other data), for evaluation: eval transforms, dataset order.

    Args:
        split: ``train``, ``val`` or ``test``. Without ``override`` these are exactly the run's
            examples (the same split function and seed: a random ``val`` is the run's val).
        override: other data instead of the run's: a directory of ``<class>/<image>``, or one with
            ``train``/``val``/``test`` folders (``split`` picks the folder), or a manifest file
            (its ``split`` rows, or every row when it has no split column).
        classes: the model's classes; label ``i`` is ``classes[i]``.
        batch_size: examples per batch (default: the run's ``batch_size``).
        **kwargs: :func:`recipec.compiler.data_kwargs` of the run's recipe (its ``classes`` and
            ``batch_size`` are replaced by the arguments above; augmentation is never applied).

    Returns:
        The loader, the classes, the number of examples and ``info`` (``split``, ``source``,
        ``per_class``, ``skipped_images``; without ``override`` also ``left_out``: examples of
        classes the model lacks, which ``data.classes`` left out of the run).

    Raises:
        DatasetError: a split the data does not have (saying which exist), a class of ``override``
            the model lacks, a malformed manifest, a missing file.

    Example:
        >>> kwargs = data_kwargs(recipe) | {"classes": model_classes}
        >>> test = build_split(split="test", **kwargs)
        >>> for images, labels in test.loader: ...
    """
    if kwargs.get("task") == "multilabel":  # multi-hot targets from a manifest
        from recipec.train.multilabel_data import build_multilabel_split

        return build_multilabel_split(split=split, override=override, classes=classes, batch_size=batch_size, **kwargs)
    model_classes = [str(c) for c in classes]
    get = kwargs.get
    image_size, in_channels = get("image_size", 224), get("in_channels", 3)
    resize_size, interpolation, crop_mode = get("resize_size"), get("interpolation", "bilinear"), get("crop_mode", "center")
    dataset, val_fraction, on_bad_image = get("dataset", "digits"), get("val_fraction", 0.2), get("on_bad_image", "error")
    if split not in SPLITS:
        raise DatasetError(f"split {split!r}: choose one of {', '.join(SPLITS)}")
    _check_args(dataset, get("normalize", "from_weights"), (), val_fraction, image_size, in_channels, resize_size,
                interpolation, crop_mode)
    left_out: dict[str, int] = {}
    if override is None:
        parts = partition(dataset, get("root"), None, val_fraction, get("per_class"), get("seed", 0),
                           get("num_classes"), on_bad_image, model_classes=model_classes)
        if not (parts.has_val if split == "val" else split == "train" or parts.examples.has("test")):
            have = "; ".join(f"{k}: {v}" for k, v in parts.origins.items() if not v.startswith("none"))
            raise DatasetError(f"the run's data has no {split} split ({parts.origins[split]}; it has {have}); add one "
                               f"(root/{split}/<class>/<image>, or {split} rows in the manifest) or give the data "
                               f"to evaluate with --data DIR_OR_MANIFEST")
        examples, labels, bad, source = parts.examples, parts.labels, parts.bad, parts.origins[split]
        idx = parts.indices[SPLITS.index(split)]
        split_of = examples.splits or ["train"] * len(labels)
        for i, (t, s) in enumerate(zip(examples.targets, split_of)):
            if labels[i] < 0 and (s == split or (examples.splits is None and split != "test")):
                left_out[examples.names[t]] = left_out.get(examples.names[t], 0) + 1
    else:
        examples = override_examples(override, split, model_classes)
        bad = []
        if on_bad_image == "skip":
            examples, bad = without_bad_images(examples)
        labels, idx, source = examples.targets, list(range(len(examples.targets))), examples.origins[split]
    stats = _stats(get("normalize", "from_weights"), get("weights_normalization"), in_channels)
    pipeline = _Pipeline(image_size, resize_size, interpolation, crop_mode, in_channels, stats)
    loader = _eval_loader(pipeline.dataset(examples, idx, [labels[i] for i in idx], []),
                          batch_size or get("batch_size", 32),
                          auto_workers(get("num_workers", 0), dataset, get("device", "cpu")), get("device") == "cuda")
    info = {"split": split, "source": source, "n": len(idx), "per_class": count_per_class(idx, labels, model_classes),
            "skipped_images": bad, "left_out": left_out}
    return SplitData(loader, model_classes, len(idx), info)


# --------------------------------------------------------------------------- transforms


def resize_info(image_size: int, resize_size: int | None, interpolation: str, crop_mode: str) -> dict[str, Any]:
    """``data.info["resize"]``: the resize a loader applies (see :func:`build_data`'s ``resize_size``)."""
    square = resize_size is None
    return {"image_size": image_size, "rule": "square" if square else "shorter_side",
            "resize_size": image_size if resize_size is None else resize_size,
            "interpolation": "bilinear" if square else interpolation,
            "crop_pct": 1.0 if resize_size is None else image_size / resize_size,
            "crop_mode": None if square else crop_mode}


class _Channels:
    """(..., C, H, W) -> (..., n, H, W): luminance for RGB -> 1, else repeat/truncate cyclically."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[-3]
        if c == self.n:
            return x
        if c == 3 and self.n == 1:
            weights = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype).view(3, 1, 1)
            return (x * weights).sum(-3, keepdim=True)
        return x[..., [i % c for i in range(self.n)], :, :]

    def __repr__(self) -> str:
        return f"Channels({self.n})"


Channels = _Channels  # public: the predictor (recipec.usage) converts channels by the same rule


def _adapt(stats: Stats, n: int) -> Stats:
    mean, std = stats
    if len(mean) == n:
        return tuple(mean), tuple(std)
    if n == 1:
        return (sum(mean) / len(mean),), (sum(std) / len(std),)
    return tuple(mean[i % len(mean)] for i in range(n)), tuple(std[i % len(std)] for i in range(n))


def _stats(normalize: str, weights_normalization: Stats | None, in_channels: int) -> Stats | None:
    if normalize == "from_weights":
        return _adapt(weights_normalization, in_channels) if weights_normalization else None
    return _adapt(IMAGENET, in_channels) if normalize == "imagenet" else None


class _Pipeline:
    """The steps every image takes, train and eval alike: channels, resize, normalise (around the
    train-only ``extra`` augmentations)."""

    def __init__(self, image_size: int, resize_size: int | None, interpolation: str, crop_mode: str,
                 in_channels: int, stats: Stats | None) -> None:
        self.image_size, self.channels, self.resize_first = image_size, _Channels(in_channels), resize_size is not None
        self.norm: list[Callable[[torch.Tensor], torch.Tensor]] = [v2.Normalize(*stats)] if stats else []
        self.resize: Callable[[Any], Any] = v2.Resize((image_size, image_size), antialias=True)
        if resize_size is not None:  # the weights' eval rule, timm's transforms_imagenet_eval: resize, then centre crop
            shorter: int | list[int] = [resize_size, resize_size] if crop_mode == "squash" else resize_size
            self.resize = v2.Compose([v2.Resize(shorter, interpolation=v2.InterpolationMode(interpolation),
                                                antialias=True), v2.CenterCrop(image_size)])

    def dataset(self, examples: Examples, idx: list[int], labels: Sequence[Any], extra: list[Any],
                after: Sequence[Any] = ()) -> Dataset:
        resize, norm = self.resize, self.norm
        if examples.images is None:  # files: every step per item
            steps = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), self.channels]
            # the weights' rule resizes the decoded image itself, as the pretraining transforms did (PIL)
            steps = [resize, *steps] if self.resize_first else [*steps, resize]
            return FileImages(examples.source, idx, labels, v2.Compose(steps + extra + norm + list(after)))
        x = self.channels(examples.images[idx])  # (n, in_channels, h, w)
        if x.shape[0] * x.shape[1] * self.image_size**2 * 4 > _PRECOMPUTE_BYTES:
            return TensorImages(x, labels, v2.Compose([resize, *extra, *norm, *after]))
        x = resize(x)
        if not extra and not after:  # nothing random: normalise once too
            return TensorImages(v2.Compose(norm)(x) if norm else x, labels, None)
        return TensorImages(x, labels, v2.Compose(extra + norm + list(after)))


def _eval_loader(dataset: Dataset, batch_size: int, num_workers: int, pin: bool = False) -> DataLoader:
    """val, test and :func:`build_split`: dataset order, every example. Nothing random, so workers may persist."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers, drop_last=False,
                      persistent_workers=num_workers > 0, pin_memory=pin, prefetch_factor=4 if num_workers else None)


def _check_args(dataset: str, normalize: str, augment: Sequence[Any], val_fraction: float, image_size: int,
                in_channels: int, resize_size: int | None, interpolation: str, crop_mode: str) -> None:
    if resize_size is not None and (interpolation not in INTERPOLATIONS or crop_mode not in ("center", "squash")
                                    or resize_size < 1):
        raise DatasetError([(("data", "resize"), f"cannot resize to {resize_size} with {interpolation!r} "
                             f"interpolation and crop_mode {crop_mode!r} (interpolation: {', '.join(INTERPOLATIONS)}; "
                             "crop_mode: center or squash); set data.resize: square")])
    problems: list[Any] = []
    if dataset not in DATASETS:
        problems.append((("data", "dataset"), f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}"))
    if normalize not in ("from_weights", "imagenet", "none"):
        problems.append((("data", "normalize"), f"unknown {normalize!r}; choose from_weights, imagenet or none"))
    problems += augment_problems(augment, in_channels)
    if not 0 <= val_fraction < 1:
        problems.append((("data", "val_fraction"), f"must be in [0, 1), got {val_fraction}"))
    if image_size < 1 or in_channels < 1:
        problems.append((("data", "image_size"), f"image_size and in_channels must be >= 1, got {image_size}, {in_channels}"))
    if problems:
        raise DatasetError(problems)
