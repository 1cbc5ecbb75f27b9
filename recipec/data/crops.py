"""The pretrained weights' eval resize, in timm's three crop modes: ``center``, ``squash``, ``border``.

timm's ``transforms_imagenet_eval`` (``create_transform(is_training=False)``) with
``scale = floor(image_size / crop_pct)``, per ``pretrained_cfg.crop_mode``:

- ``center``: the shorter side to ``scale`` (aspect ratio kept), then the centre ``image_size``
  square (``Resize(scale) + CenterCrop``; torchvision weights' ``transforms()`` too);
- ``squash``: both sides to ``scale`` (aspect ratio not kept), then the centre square;
- ``border``: the longer side to ``scale`` (timm's ``ResizeKeepRatio(longest=1)``: each side to
  ``round(side / ratio)``, ``ratio = max(h, w) / scale``), then ``CenterCropOrPad``: a side
  shorter than ``image_size`` is padded on both sides (the extra pixel right/bottom) with the
  weights' mean colour, ``round(255 * mean)``, and the centre square is cut out; nothing of the
  image is lost at ``crop_pct`` 1.

The same callable serves a PIL image (files: resized before decoding to floats, as timm does)
and a float tensor in [0, 1] (in-memory datasets; the fill is then ``round(255 * mean) / 255``).
Importing this module imports no torch (the card words the rule from here).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["CROP_MODES", "border_fill", "crop_rule", "crop_words", "eval_resize"]

CROP_MODES = ("center", "squash", "border")


def border_fill(mean: Sequence[float]) -> list[int]:
    """timm's padding colour for ``border``: the mean in 0..255 (``[round(255 * v) for v in mean]``)."""
    return [round(255 * float(v)) for v in mean]


def crop_rule(preprocessing: dict[str, Any]) -> tuple[str, str, list[int] | None]:
    """The crop mode of the weights' preprocessing, a note when it is not one recipec applies, and the fill.

    Returns:
        (mode, note, fill): mode ``center``, ``squash`` or ``border`` (an unknown mode is applied as
        ``center``, and ``note`` says so); ``fill`` for ``border`` (from the weights' ``mean``;
        timm's default black without one), else None.
    """
    mode = str(preprocessing.get("crop_mode") or "center")
    if mode not in CROP_MODES:
        return "center", f" (crop_mode {mode} applied as center)", None
    if mode != "border":
        return mode, "", None
    mean = preprocessing.get("mean")
    return mode, "", border_fill(mean) if mean else [0, 0, 0]


def crop_words(mode: str, resize_size: int, interpolation: str, image_size: int,
               fill: Sequence[int] | None = None) -> str:
    """The rule in one line: ``shorter side to 36 (bicubic), centre crop 32x32``."""
    if mode == "border":
        colour = f"RGB {tuple(fill)}" if fill else "black"
        return (f"longer side to {resize_size} ({interpolation}), padded with {colour} and centre crop "
                f"{image_size}x{image_size}")
    side = "both sides" if mode == "squash" else "shorter side"
    return f"{side} to {resize_size} ({interpolation}), centre crop {image_size}x{image_size}"


def eval_resize(image_size: int, resize_size: int, interpolation: str, crop_mode: str,
                fill: Sequence[int] | None = None) -> Any:
    """The resize-and-crop transform of a crop mode (PIL image or float tensor (..., C, H, W) in, same out).

    Raises:
        ValueError: an unknown crop mode or interpolation (callers check both first).
    """
    from torchvision.transforms import v2  # noqa: PLC0415 (the card imports this module torch-free)

    mode = v2.InterpolationMode(interpolation)
    if crop_mode == "border":
        return BorderResize(image_size, resize_size, interpolation, fill)
    if crop_mode not in CROP_MODES:
        raise ValueError(f"unknown crop_mode {crop_mode!r}; choose {', '.join(CROP_MODES)}")
    shorter: int | list[int] = [resize_size, resize_size] if crop_mode == "squash" else resize_size
    return v2.Compose([v2.Resize(shorter, interpolation=mode, antialias=True), v2.CenterCrop(image_size)])


class BorderResize:
    """timm's ``ResizeKeepRatio(scale, longest=1) + CenterCropOrPad(image_size, fill)``."""

    def __init__(self, image_size: int, resize_size: int, interpolation: str, fill: Sequence[int] | None) -> None:
        self.image_size, self.resize_size, self.interpolation = image_size, resize_size, interpolation
        self.fill = [int(v) for v in fill] if fill else [0, 0, 0]

    def __call__(self, image: Any) -> Any:
        import torch  # noqa: PLC0415 (torch-free module, as above)
        from torchvision.transforms.v2 import InterpolationMode  # noqa: PLC0415 (as above)
        from torchvision.transforms.v2 import functional as F  # noqa: PLC0415 (as above)

        h, w = F.get_size(image)
        ratio = max(h / self.resize_size, w / self.resize_size)
        image = F.resize(image, [round(h / ratio), round(w / ratio)],
                         interpolation=InterpolationMode(self.interpolation), antialias=True)
        h, w = F.get_size(image)
        c = self.image_size
        if c > h or c > w:
            pad_w, pad_h = max(c - w, 0), max(c - h, 0)
            fill: Any = self.fill
            if isinstance(image, torch.Tensor):  # floats in [0, 1]: the colour timm pads a PIL image with
                channels = image.shape[-3]
                values = [v / 255 for v in self.fill]
                if channels != len(values):  # the run's channel rule (train.transforms.Channels) on the colour
                    values = ([0.299 * values[0] + 0.587 * values[1] + 0.114 * values[2]] if channels == 1
                              else [values[i % 3] for i in range(channels)])
                fill = values if channels > 1 else values[0]
            image = F.pad(image, [pad_w // 2, pad_h // 2, (pad_w + 1) // 2, (pad_h + 1) // 2], fill=fill)
            h, w = F.get_size(image)
            if h == c and w == c:
                return image
        return F.crop(image, round((h - c) / 2.0), round((w - c) / 2.0), c, c)  # timm: int(round(...))

    def extra_repr(self) -> str:  # the plan's transform line: BorderResize(longest 36, bicubic, 32, fill=(124, 116, 104))
        return f"longest {self.resize_size}, {self.interpolation}, {self.image_size}, fill={tuple(self.fill)}"

    def __repr__(self) -> str:
        return f"BorderResize({self.extra_repr()})"
