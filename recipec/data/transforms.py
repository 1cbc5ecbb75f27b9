"""How every image becomes a tensor: channels, resize, normalisation, train and eval alike.

:func:`resize_rule` decides the resize (squashed to a square, or the pretrained weights' rule);
:class:`_Pipeline` turns a split of :class:`recipec.data.datasets.Examples` into a dataset of
float tensors (C, H, W): converted to ``in_channels``, resized, augmented (train only: the
``extra`` steps), normalised. :mod:`recipec.data.loaders` builds the splits and loaders around it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.utils.data import Dataset
from torchvision.transforms import v2

from recipec.errors import DatasetError
from recipec.data.augment import augment_problems
from recipec.data.crops import CROP_MODES, crop_rule, crop_words, eval_resize
from recipec.data.datasets import DATASETS, Examples, FileImages, TensorImages

__all__ = ["IMAGENET", "INTERPOLATIONS", "Channels", "Stats", "resize_info", "resize_rule"]

Stats = tuple[tuple[float, ...], tuple[float, ...]]

INTERPOLATIONS = ("bilinear", "bicubic", "nearest")
IMAGENET: Stats = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
# In-memory datasets (digits, fake) are resized once up front unless that would take more than this.
_PRECOMPUTE_BYTES = 256 * 2**20


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
    mode, note, fill = crop_rule(preprocessing)  # timm's crop_mode: center | squash | border (fill: its pad colour)
    interpolation = str(preprocessing["interpolation"])
    return {"image_size": size, "rule": "shorter_side", "resize_size": resized, "interpolation": interpolation,
            "crop_pct": crop_pct, "crop_mode": mode, **({"fill": fill} if fill else {}), "from": source + note,
            "summary": f"{crop_words(mode, resized, interpolation, size, fill)} (crop_pct {crop_pct:g}); "
                       f"from {source}{note}"}


def resize_info(image_size: int, resize_size: int | None, interpolation: str, crop_mode: str,
                crop_fill: Sequence[int] | None = None) -> dict[str, Any]:
    """``data.info["resize"]``: the resize a loader applies (see :func:`build_data`'s ``resize_size``)."""
    square = resize_size is None
    return {"image_size": image_size, "rule": "square" if square else "shorter_side",
            "resize_size": image_size if resize_size is None else resize_size,
            "interpolation": "bilinear" if square else interpolation,
            "crop_pct": 1.0 if resize_size is None else image_size / resize_size,
            "crop_mode": None if square else crop_mode,
            **({"fill": list(crop_fill)} if crop_fill and not square and crop_mode == "border" else {})}


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


Channels = _Channels  # public: the predictor (recipec.inference.predictor) converts channels by the same rule


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
                 in_channels: int, stats: Stats | None, crop_fill: Sequence[int] | None = None) -> None:
        self.image_size, self.channels, self.resize_first = image_size, _Channels(in_channels), resize_size is not None
        self.norm: list[Callable[[torch.Tensor], torch.Tensor]] = [v2.Normalize(*stats)] if stats else []
        self.resize: Callable[[Any], Any] = v2.Resize((image_size, image_size), antialias=True)
        if resize_size is not None:  # the weights' eval rule, timm's transforms_imagenet_eval (recipec.data.crops)
            self.resize = eval_resize(image_size, resize_size, interpolation, crop_mode, crop_fill)

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


def _check_args(dataset: str, normalize: str, augment: Sequence[Any], val_fraction: float, image_size: int,
                in_channels: int, resize_size: int | None, interpolation: str, crop_mode: str) -> None:
    if resize_size is not None and (interpolation not in INTERPOLATIONS or crop_mode not in CROP_MODES
                                    or resize_size < 1):
        raise DatasetError([(("data", "resize"), f"cannot resize to {resize_size} with {interpolation!r} "
                             f"interpolation and crop_mode {crop_mode!r} (interpolation: {', '.join(INTERPOLATIONS)}; "
                             f"crop_mode: {', '.join(CROP_MODES)}); set data.resize: square")])
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
