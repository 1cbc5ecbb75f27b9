"""Datasets, the stratified train/val split, transforms and the data loaders.

Every image becomes a float tensor (C, H, W): converted to ``in_channels``, resized to a
square (squashed, or as the pretrained weights were: :func:`resize_rule`), augmented (train
only), normalised. The training order of epoch ``e`` is a pure
function of ``(seed, e)`` (see :func:`set_epoch`), so a resumed run sees the same batches.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torchvision
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from torchvision.transforms import v2

from recipec.errors import DatasetError, UnreadableImageError

__all__ = ["DATASETS", "LAST_BATCH_POLICY", "Data", "build_data", "drops_single_last", "resize_rule", "set_epoch"]

Stats = tuple[tuple[float, ...], tuple[float, ...]]

DATASETS = ("imagefolder", "digits", "fake", "cifar10", "cifar100", "mnist", "fashionmnist")
AUGMENTS = ("hflip", "vflip", "random_crop", "random_resized_crop", "color_jitter", "rotate")
INTERPOLATIONS = ("bilinear", "bicubic", "nearest")
IMAGENET: Stats = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
FAKE_PER_CLASS = 32
FAKE_MAX_CLASSES = 4096
_EPOCH_STRIDE = 1_000_003
# In-memory datasets (digits, fake) are resized once up front unless that would take more than this.
_PRECOMPUTE_BYTES = 256 * 2**20
_TORCHVISION = {"cifar10": ("CIFAR10", "cifar-10-batches-py"), "cifar100": ("CIFAR100", "cifar-100-python"),
                "mnist": ("MNIST", "MNIST/raw"), "fashionmnist": ("FashionMNIST", "FashionMNIST/raw")}


@dataclass
class Data:
    """What :func:`build_data` returns.

    ``normalization`` is the (mean, std) actually applied, ``None`` for none; ``info`` is a
    JSON-serialisable description for provenance.
    """

    train: DataLoader
    val: DataLoader | None
    classes: list[str]
    normalization: Stats | None
    info: dict[str, Any]
    seed: int = 0
    epoch_seed: bool = True


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

    Call it at the start of every epoch. With ``num_workers > 0`` the workers' RNG seeds come
    from the same generator, so their augmentations repeat too. A no-op when
    ``build_data(epoch_seed=False)``.
    """
    sampler = data.train.sampler
    if isinstance(sampler, DistributedSampler):  # one shard per rank; the sampler orders each epoch
        sampler.set_epoch(epoch)
    elif data.epoch_seed and data.train.generator is not None:
        data.train.generator.manual_seed(data.seed * _EPOCH_STRIDE + epoch)


def build_data(*, dataset: str, root: str | None = None, classes: Sequence[str] | None = None,
               per_class: int | None = None, val_fraction: float = 0.2, image_size: int = 224,
               normalize: str = "from_weights", augment: Sequence[str] = (), batch_size: int = 32,
               num_workers: int = 0, seed: int = 0, in_channels: int = 3, weights_normalization: Stats | None = None,
               num_classes: int | None = None, epoch_seed: bool = True, on_bad_image: str = "error",
               resize_size: int | None = None, interpolation: str = "bilinear", crop_mode: str = "center") -> Data:
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
        num_workers: data loader worker processes.
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
    _check_args(dataset, normalize, augment, val_fraction, image_size, in_channels)
    if resize_size is not None and (interpolation not in INTERPOLATIONS or crop_mode not in ("center", "squash")
                                    or resize_size < 1):
        raise DatasetError([(("data", "resize"), f"cannot resize to {resize_size} with {interpolation!r} "
                             f"interpolation and crop_mode {crop_mode!r} (interpolation: {', '.join(INTERPOLATIONS)}; "
                             "crop_mode: center or squash); set data.resize: square")])
    images, targets, names, source = _load(dataset, root, num_classes, seed)
    bad: list[str] = []
    if on_bad_image == "skip" and source is not None and hasattr(source, "samples"):
        source, targets, bad = _without_bad_images(source, targets)
    labels, chosen = _select(targets, names, classes)
    present = set(labels)
    empty = [names[c] for i, c in enumerate(chosen) if i not in present]
    if empty:
        raise DatasetError([(("data", "root"), f"class {name!r} has no images under {root}; add some, or leave it "
                                               "out with data.classes") for name in empty])
    if num_classes is not None and len(chosen) > num_classes:
        raise DatasetError([(("model", "head", "num_classes"), f"is {num_classes} but the data has {len(chosen)} "
                             f"classes; raise it or pick classes with data.classes")])
    train_idx, val_idx = _split(labels, chosen, val_fraction, per_class, seed)

    if normalize == "from_weights":
        stats = _adapt(weights_normalization, in_channels) if weights_normalization else None
    else:
        stats = _adapt(IMAGENET, in_channels) if normalize == "imagenet" else None
    norm: list[Callable[[torch.Tensor], torch.Tensor]] = [v2.Normalize(*stats)] if stats else []
    augs, skipped = _augmentations(augment, image_size, in_channels, interpolation if resize_size else "bilinear")
    resize: Callable[[Any], Any] = v2.Resize((image_size, image_size), antialias=True)
    if resize_size is not None:  # the weights' eval rule, timm's transforms_imagenet_eval: resize, then centre crop
        shorter: int | list[int] = [resize_size, resize_size] if crop_mode == "squash" else resize_size
        resize = v2.Compose([v2.Resize(shorter, interpolation=v2.InterpolationMode(interpolation), antialias=True),
                             v2.CenterCrop(image_size)])

    def loaded(idx: list[int], extra: list[Any]) -> Dataset:
        lab = [labels[i] for i in idx]
        if images is None:  # files: every step per item
            steps = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), _Channels(in_channels)]
            # the weights' rule resizes the decoded image itself, as the pretraining transforms did (PIL)
            steps = [resize, *steps] if resize_size is not None else [*steps, resize]
            return _FileImages(source, idx, lab, v2.Compose(steps + extra + norm))
        x = _Channels(in_channels)(images[idx])  # (n, in_channels, h, w)
        if x.shape[0] * x.shape[1] * image_size**2 * 4 > _PRECOMPUTE_BYTES:
            return _TensorImages(x, lab, v2.Compose([resize, *extra, *norm]))
        x = resize(x)
        if not extra:  # nothing random: normalise once too
            return _TensorImages(v2.Compose(norm)(x) if norm else x, lab, None)
        return _TensorImages(x, lab, v2.Compose(extra + norm))

    generator = torch.Generator().manual_seed(seed * _EPOCH_STRIDE if epoch_seed else seed)
    # Augmentations draw from the global torch RNG (in workers: seeds drawn from `generator`),
    # which the training state saves and restores.
    train = DataLoader(loaded(train_idx, augs), batch_size=batch_size, shuffle=True, generator=generator,
                       num_workers=num_workers, drop_last=drops_single_last(len(train_idx), batch_size),
                       persistent_workers=False)
    val = None
    if val_fraction > 0:
        val = DataLoader(loaded(val_idx, []), batch_size=batch_size, shuffle=False, num_workers=num_workers,
                         drop_last=False, persistent_workers=False)

    class_names = [names[c] for c in chosen]
    applied: Any = {"mean": list(stats[0]), "std": list(stats[1])} if stats else "none"
    if normalize == "from_weights" and not weights_normalization:
        applied = "none (no pretrained weights)"
    info = {
        "dataset": dataset, "root": root, "classes": class_names,
        "sizes": {"train": len(train_idx), "val": len(val_idx)},
        "train_per_class": _counts(train_idx, labels, class_names),
        "val_per_class": _counts(val_idx, labels, class_names),
        "image_size": image_size, "in_channels": in_channels,
        "resize": {"image_size": image_size, "rule": "square" if resize_size is None else "shorter_side",
                   "resize_size": image_size if resize_size is None else resize_size,
                   "interpolation": "bilinear" if resize_size is None else interpolation,
                   "crop_pct": 1.0 if resize_size is None else image_size / resize_size,
                   "crop_mode": None if resize_size is None else crop_mode},
        "normalize": {"requested": normalize, "applied": applied},
        "augment": [a for a in augment if a not in skipped], "augment_skipped": skipped,
        "val_fraction": val_fraction, "per_class": per_class, "seed": seed,
        "fingerprint": _fingerprint(source, root, labels, train_idx, val_idx),
        "on_bad_image": on_bad_image, "skipped_images": bad,
        "batches": {"batch_size": batch_size, "per_epoch": len(train),
                    "dropped_per_epoch": 1 if train.drop_last else 0, "last_batch": LAST_BATCH_POLICY},
    }
    return Data(train, val, class_names, stats, info, seed=seed, epoch_seed=epoch_seed)


# --------------------------------------------------------------------------- datasets


class _TensorImages(Dataset):
    def __init__(self, images: torch.Tensor, labels: list[int], transform: Callable | None) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x = self.images[i]
        return (self.transform(x) if self.transform else x), self.labels[i]


class _FileImages(Dataset):
    def __init__(self, source: Any, indices: list[int], labels: list[int], transform: Callable) -> None:
        self.source, self.indices, self.labels, self.transform = source, indices, labels, transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        index = self.indices[i]
        try:
            image = self.source[index][0]
        except (OSError, ValueError, SyntaxError) as exc:  # what PIL raises for a file it cannot decode
            path = self.source.samples[index][0] if hasattr(self.source, "samples") else f"example {index}"
            raise UnreadableImageError(f"unreadable image {path}: {exc} (fix or remove it, or set data.on_bad_image: "
                                       "skip; `recipec plan` lists every unreadable image)") from exc
        return self.transform(image), self.labels[i]


def _load(dataset: str, root: str | None, num_classes: int | None,
          seed: int) -> tuple[torch.Tensor | None, list[int], list[str], Any]:
    """(images (n, c, h, w) in [0, 1] or None, targets, class names, indexable source of (PIL, target))."""
    if dataset == "digits":
        from sklearn.datasets import load_digits  # imported here: sklearn takes a second to import

        digits = load_digits()
        images = torch.as_tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
        return images, [int(t) for t in digits.target], [str(i) for i in range(10)], None
    if dataset == "fake":
        if num_classes is None:
            raise DatasetError([(("data", "dataset"), "fake needs a class count: set model.head.num_classes")])
        if num_classes > FAKE_MAX_CLASSES:  # it is held in memory: 384 KiB of images per class
            raise DatasetError([(("model", "head", "num_classes"), (
                f"the fake dataset makes {FAKE_PER_CLASS} images of 3x32x32 per class in memory, at most "
                f"{FAKE_MAX_CLASSES} classes (about {FAKE_MAX_CLASSES * FAKE_PER_CLASS * 3 * 32 * 32 * 4 >> 30} GiB); "
                f"got {num_classes}"))])
        g = torch.Generator().manual_seed(seed)
        patterns = torch.rand(num_classes, 1, 3, 32, 32, generator=g)
        noise = 0.25 * torch.randn(num_classes, FAKE_PER_CLASS, 3, 32, 32, generator=g)
        images = (patterns + noise).clamp(0, 1).flatten(0, 1)  # class-major: (classes * 32, 3, 32, 32)
        targets = [c for c in range(num_classes) for _ in range(FAKE_PER_CLASS)]
        return images, targets, [f"class_{c}" for c in range(num_classes)], None

    if not root:
        raise DatasetError([(("data", "root"), f"dataset {dataset} needs root: the directory that holds it")])
    if not os.path.isdir(root):
        layout = "root/<class>/<image>" if dataset == "imagefolder" else f"root/{_TORCHVISION[dataset][1]}"
        raise DatasetError([(("data", "root"), f"{root} does not exist (dataset {dataset} needs {layout})")])
    if dataset == "imagefolder":
        try:
            # empty class folders are judged below, after data.classes chose which classes count
            source: Any = torchvision.datasets.ImageFolder(root, allow_empty=True)
        except (FileNotFoundError, OSError) as e:
            raise DatasetError([(("data", "root"), f"{e} (dataset imagefolder needs root/<class>/<image>)")]) from e
    else:
        name, folder = _TORCHVISION[dataset]
        try:
            source = getattr(torchvision.datasets, name)(root, train=True, download=False)
        except (RuntimeError, OSError) as e:
            raise DatasetError([(("data", "root"), f"no {dataset} files under {root} (expected {root}/{folder}; "
                                 f"fetch them once with torchvision.datasets.{name}({root!r}, download=True))")]) from e
    targets = source.targets.tolist() if isinstance(source.targets, torch.Tensor) else list(source.targets)
    return None, [int(t) for t in targets], list(source.classes), source


def _select(targets: list[int], names: list[str], classes: Sequence[str] | None) -> tuple[list[int], list[int]]:
    """(new label per example, -1 when not selected; the original class index of each new label)."""
    if classes is None:
        return list(targets), list(range(len(names)))
    index = {n: i for i, n in enumerate(names)}
    problems: list[Any] = []
    for i, name in enumerate(classes):
        if name not in index:
            problems.append((("data", "classes", i), f"unknown class {name!r}; available: {', '.join(names)}"))
        elif list(classes).index(name) != i:
            problems.append((("data", "classes", i), f"class {name!r} is listed twice"))
    if problems:
        raise DatasetError(problems)
    chosen = [index[n] for n in classes]
    relabel = {c: i for i, c in enumerate(chosen)}
    return [relabel.get(t, -1) for t in targets], chosen


def _split(labels: list[int], chosen: list[int], val_fraction: float, per_class: int | None,
           seed: int) -> tuple[list[int], list[int]]:
    by_class: list[list[int]] = [[] for _ in chosen]
    for i, label in enumerate(labels):
        if label >= 0:
            by_class[label].append(i)
    train: list[int] = []
    val: list[int] = []
    for label, members in enumerate(by_class):
        # Seeded per original class, so a class keeps its split whatever else is selected.
        g = torch.Generator().manual_seed(seed * _EPOCH_STRIDE + chosen[label])
        order = [members[j] for j in torch.randperm(len(members), generator=g).tolist()]
        n_val = int(len(order) * val_fraction + 0.5)
        if val_fraction > 0 and len(order) >= 2:
            n_val = min(max(n_val, 1), len(order) - 1)
        val += order[:n_val]
        train += order[n_val:][:per_class]
    return sorted(train), sorted(val)


def _without_bad_images(source: Any, targets: list[int]) -> tuple[Any, list[int], list[str]]:
    """An ImageFolder without the files that cannot be decoded, its targets, and those files (sorted)."""
    from recipec.checks import decodes

    keep = [decodes(path) is None for path, _ in source.samples]
    bad = [path for (path, _), ok in zip(source.samples, keep) if not ok]
    if bad:
        source.samples = [s for s, ok in zip(source.samples, keep) if ok]
        source.imgs = source.samples
        source.targets = [t for _, t in source.samples]
        targets = [t for t, ok in zip(targets, keep) if ok]
    return source, targets, bad


def _fingerprint(source: Any, root: str | None, labels: list[int], train_idx: list[int], val_idx: list[int]) -> str:
    """sha256 of what each split holds: per example its label and its file (path relative to the root, size)
    or, for data held in memory (digits, fake, torchvision arrays), its index. A resume checks it."""
    import hashlib
    import json

    samples = getattr(source, "samples", None)  # ImageFolder: (path, class index), sorted

    def item(i: int) -> list[Any]:
        if samples is None:
            return [i, labels[i]]
        path = samples[i][0]
        return [os.path.relpath(path, root or "."), os.path.getsize(path), labels[i]]

    split = {"train": [item(i) for i in train_idx], "val": [item(i) for i in val_idx]}
    return hashlib.sha256(json.dumps(split, separators=(",", ":")).encode()).hexdigest()


def _counts(indices: list[int], labels: list[int], names: list[str]) -> dict[str, int]:
    counts = dict.fromkeys(names, 0)
    for i in indices:
        counts[names[labels[i]]] += 1
    return counts


# --------------------------------------------------------------------------- transforms


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


def _adapt(stats: Stats, n: int) -> Stats:
    mean, std = stats
    if len(mean) == n:
        return tuple(mean), tuple(std)
    if n == 1:
        return (sum(mean) / len(mean),), (sum(std) / len(std),)
    return tuple(mean[i % len(mean)] for i in range(n)), tuple(std[i % len(std)] for i in range(n))


def _augmentations(augment: Sequence[str], size: int, channels: int,
                   interpolation: str = "bilinear") -> tuple[list[Any], list[str]]:
    """The train-only transforms, and the names skipped because they do not apply to `channels`."""
    make = {
        "hflip": lambda: v2.RandomHorizontalFlip(),
        "vflip": lambda: v2.RandomVerticalFlip(),
        "random_crop": lambda: v2.RandomCrop(size, padding=max(1, round(4 * size / 32))),
        "random_resized_crop": lambda: v2.RandomResizedCrop(size, scale=(0.6, 1.0), antialias=True,
                                                            interpolation=v2.InterpolationMode(interpolation)),
        # brightness/contrast are defined for 1 and 3 channels only (torchvision's contrast needs a grey level)
        "color_jitter": lambda: v2.ColorJitter(brightness=0.2, contrast=0.2),
        "rotate": lambda: v2.RandomRotation(15, interpolation=v2.InterpolationMode.BILINEAR),
    }
    skipped = [a for a in augment if a == "color_jitter" and channels not in (1, 3)]
    return [make[a]() for a in augment if a not in skipped], skipped


def _check_args(dataset: str, normalize: str, augment: Sequence[str], val_fraction: float, image_size: int,
                in_channels: int) -> None:
    problems: list[Any] = []
    if dataset not in DATASETS:
        problems.append((("data", "dataset"), f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}"))
    if normalize not in ("from_weights", "imagenet", "none"):
        problems.append((("data", "normalize"), f"unknown {normalize!r}; choose from_weights, imagenet or none"))
    problems += [(("data", "augment", i), f"unknown augmentation {a!r}; choose from {', '.join(AUGMENTS)}")
                 for i, a in enumerate(augment) if a not in AUGMENTS]
    if not 0 <= val_fraction < 1:
        problems.append((("data", "val_fraction"), f"must be in [0, 1), got {val_fraction}"))
    if image_size < 1 or in_channels < 1:
        problems.append((("data", "image_size"), f"image_size and in_channels must be >= 1, got {image_size}, {in_channels}"))
    if problems:
        raise DatasetError(problems)
