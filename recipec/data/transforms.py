"""How every image becomes a tensor: channels, resize, normalisation, train and eval alike.

:func:`resize_rule` decides the resize (squashed to a square, or the pretrained weights' rule);
:class:`ImagePipeline` turns a split of :class:`recipec.data.examples.Examples` into a dataset of
float tensors (C, H, W): converted to ``in_channels``, resized, augmented (train only: the
``extra`` steps), normalised. :mod:`recipec.data.build` builds the splits and loaders around it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.utils.data import Dataset
from torchvision.transforms import v2

from recipec.errors import DatasetError
from recipec.data.augment import Augmentations, augment_problems, describe, describe_augment
from recipec.data.config import DataConfig, Transforming, Stats
from recipec.data.crops import CROP_MODES, crop_rule, crop_words, eval_resize
from recipec.data.examples import Examples, FileImages, TensorImages
from recipec.recipe.catalog import DATASETS

__all__ = [
    "IMAGENET",
    "INTERPOLATIONS",
    "Channels",
    "ImagePipeline",
    "check_config",
    "normalization_stats",
    "preprocessing_info",
    "resize_info",
    "resize_rule",
]

INTERPOLATIONS = ("bilinear", "bicubic", "nearest")
IMAGENET: Stats = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
# In-memory datasets (digits, fake) are resized once up front unless that would take more than this.
_PRECOMPUTE_BYTES = 256 * 2**20


def resize_rule(image_size: int | str, resize: str, preprocessing: dict[str, Any] | None,
                weights: str | None) -> dict[str, Any]:
    """How a run resizes its images: ``data.image_size`` and ``data.resize`` against the weights' preprocessing.

    With ``resize: from_weights`` and weights that define a resize (``preprocessing`` from
    :func:`recipec.model.families.weights_preprocessing`), the shorter side goes to
    ``floor(image_size / crop_pct)`` (torchvision weights: ``image_size * resize_size // crop_size``)
    with the weights' interpolation and the centre ``image_size`` square is kept, as timm's
    ``transforms_imagenet_eval`` does (``Resize(256) + CenterCrop(224)`` for ImageNet weights at
    224). Otherwise the image is squashed to ``image_size`` squared, bilinear.

    Returns:
        ``image_size``, ``rule`` (``shorter_side`` or ``square``), ``resize_size``,
        ``interpolation``, ``crop_pct``, ``crop_mode``, ``from`` and a one-line ``summary``.

    Raises:
        DatasetError: ``image_size: from_weights`` without weights that define an input size (at ``("image_size",)``).
    """
    source = f"the preprocessing of weights {weights}"
    if image_size == "from_weights":
        if preprocessing is None:
            why = f"weights {weights} define no input size" if weights else "there are no pretrained weights (model.weights: null)"
            raise DatasetError([(("image_size",), f"from_weights, but {why}; set a number, e.g. 224")])
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
    mode, note, fill = crop_rule(preprocessing)  # timm's crop_mode: center | squash | border (fill: its pad colour)
    interpolation = str(preprocessing["interpolation"])
    return {"image_size": size, "rule": "shorter_side", "resize_size": resized, "interpolation": interpolation,
            "crop_pct": crop_pct, "crop_mode": mode, **({"fill": fill} if fill else {}), "from": source + note,
            "summary": f"{crop_words(mode, resized, interpolation, size, fill)} (crop_pct {crop_pct:g}); "
                       f"from {source}{note}"}


def resize_info(p: Transforming) -> dict[str, Any]:
    """``data.info["resize"]``: the resize a loader applies (see :class:`recipec.data.config.Transforming`)."""
    square = p.resize_size is None
    return {"image_size": p.image_size, "rule": "square" if square else "shorter_side",
            "resize_size": p.image_size if p.resize_size is None else p.resize_size,
            "interpolation": "bilinear" if square else p.interpolation,
            "crop_pct": 1.0 if p.resize_size is None else p.image_size / p.resize_size,
            "crop_mode": None if square else p.crop_mode,
            **({"fill": list(p.crop_fill)} if p.crop_fill and not square and p.crop_mode == "border" else {})}


class Channels:
    """(..., C, H, W) -> (..., n, H, W): luminance for RGB -> 1, else repeat/truncate cyclically.

    The predictor (:mod:`recipec.inference.predictor`) converts channels by the same rule.
    """

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


def _adapt(stats: Stats, n: int) -> Stats:
    mean, std = stats
    if len(mean) == n:
        return tuple(mean), tuple(std)
    if n == 1:
        return (sum(mean) / len(mean),), (sum(std) / len(std),)
    return tuple(mean[i % len(mean)] for i in range(n)), tuple(std[i % len(std)] for i in range(n))


def normalization_stats(p: Transforming) -> Stats | None:
    """The (mean, std) ``p.normalize`` applies, per channel of ``p.in_channels``; None for none."""
    if p.normalize == "from_weights":
        return _adapt(p.weights_normalization, p.in_channels) if p.weights_normalization else None
    return _adapt(IMAGENET, p.in_channels) if p.normalize == "imagenet" else None


class ImagePipeline:
    """The steps every image takes, train and eval alike: channels, resize, normalise (around the
    train-only ``extra`` augmentations). ``stats``: the normalisation applied, or None."""

    def __init__(self, p: Transforming) -> None:
        self.image_size, self.channels, self.resize_first = p.image_size, Channels(p.in_channels), p.resize_size is not None
        self.stats = normalization_stats(p)
        self.norm: list[Callable[[torch.Tensor], torch.Tensor]] = [v2.Normalize(*self.stats)] if self.stats else []
        self.resize: Callable[[Any], Any] = v2.Resize((p.image_size, p.image_size), antialias=True)
        if p.resize_size is not None:  # the weights' eval rule, timm's transforms_imagenet_eval (recipec.data.crops)
            self.resize = eval_resize(p.image_size, p.resize_size, p.interpolation, p.crop_mode, p.crop_fill)

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


def check_config(config: DataConfig) -> None:
    """Refuse what no loader can build, every problem at once, each at its field (``("normalize",)``,
    ``("augment", 1)``...).

    Raises:
        DatasetError: an unknown dataset, normalisation, augmentation or resize; a val_fraction
            outside [0, 1); an image size or channel count below 1.
    """
    p = config.transforming
    if p.resize_size is not None and (p.interpolation not in INTERPOLATIONS or p.crop_mode not in CROP_MODES
                                      or p.resize_size < 1):
        raise DatasetError([(("resize_size",), f"cannot resize to {p.resize_size} with {p.interpolation!r} "
                             f"interpolation and crop_mode {p.crop_mode!r} (interpolation: {', '.join(INTERPOLATIONS)}; "
                             f"crop_mode: {', '.join(CROP_MODES)}); set data.resize: square")])
    problems: list[Any] = []
    dataset = config.reading.dataset
    if dataset not in DATASETS:
        problems.append((("dataset",), f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}"))
    if p.normalize not in ("from_weights", "imagenet", "none"):
        problems.append((("normalize",), f"unknown {p.normalize!r}; choose from_weights, imagenet or none"))
    problems += augment_problems(config.loading.augment, p.in_channels)
    val_fraction = config.splitting.val_fraction
    if not 0 <= val_fraction < 1:
        problems.append((("val_fraction",), f"must be in [0, 1), got {val_fraction}"))
    if p.image_size < 1 or p.in_channels < 1:
        problems.append((("image_size",), f"image_size and in_channels must be >= 1, got {p.image_size}, {p.in_channels}"))
    if problems:
        raise DatasetError(problems)


def preprocessing_info(p: Transforming, augment: Sequence[Any], sampler: str, pipeline: ImagePipeline,
                       augmentations: Augmentations) -> dict[str, Any]:
    """The preprocessing part of ``Data.info`` (multiclass and multilabel alike), in plan.json's key order:
    size, channels, resize, the normalisation asked for and applied, augmentations, sampler, transforms."""
    stats = pipeline.stats
    applied: Any = {"mean": list(stats[0]), "std": list(stats[1])} if stats else "none"
    if p.normalize == "from_weights" and not p.weights_normalization:
        applied = "none (no pretrained weights)"
    augs, after, skipped = augmentations.before, augmentations.after, augmentations.skipped
    return {
        "image_size": p.image_size, "in_channels": p.in_channels,
        "resize": resize_info(p),
        "normalize": {"requested": p.normalize, "applied": applied},
        "augment": [d for d in map(describe_augment, augment) if d not in skipped],
        "augment_skipped": skipped,
        "sampler": sampler,
        "transforms": {"train": describe([pipeline.resize, *augs, *pipeline.norm, *after]),
                       "eval": describe([pipeline.resize, *pipeline.norm])},
    }
