"""An export's preprocessing as plain data, and in words: torch-free, so the card can state it.

The preprocessing is read from the export's provenance (``data.resize``, ``data.in_channels``,
``normalization``), never re-derived from the weights, so it is the one the run applied;
:mod:`recipec.inference.predictor` turns it into the transform.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal, TypedDict, cast

from recipec.errors import CheckpointError

__all__ = ["Normalization", "Preprocessing", "describe_preprocessing", "preprocessing_of"]


class Normalization(TypedDict):
    mean: list[float]
    std: list[float]


class _Fill(TypedDict, total=False):
    fill: list[int]   # crop_mode border: the RGB colour it pads with


class Preprocessing(_Fill):
    """An export's input pipeline as plain data: what the predictor applies and the card states.

    A TypedDict, not a class: it is also what ``eval/<split>.json`` and the card record, as is.
    """

    image_size: int
    rule: Literal["square", "shorter_side"]
    resize_size: int
    interpolation: str
    crop_mode: str
    in_channels: int
    normalization: Normalization | None


def preprocessing_of(provenance: dict[str, Any], *, fallback: Callable[[], dict[str, Any]] | None = None,
                     in_channels: int = 3) -> Preprocessing:
    """What an export records of its input pipeline, as plain data.

    Args:
        provenance: the export's provenance.
        fallback: for an export from before the resize was recorded: the rule its recipe gives
            (:func:`recipec.compiler.compile.resolve_preprocessing`); None: there is none.
        in_channels: the model's input channels when the provenance does not record them.

    Returns:
        ``image_size``, ``rule`` (``square`` | ``shorter_side``), ``resize_size``, ``interpolation``,
        ``crop_mode``, ``in_channels`` and ``normalization`` (``{"mean", "std"}`` or None); with
        ``crop_mode`` ``border`` also ``fill``, the RGB colour it pads with.

    Raises:
        CheckpointError: the export records no resize and its recipe cannot say one either.
    """
    data: dict[str, Any] = provenance["data"] if isinstance(provenance.get("data"), dict) else {}
    resize: dict[str, Any] | None = data["resize"] if isinstance(data.get("resize"), dict) else None
    if resize is None and fallback is None:
        raise CheckpointError("the export records no resize rule (data.resize in its provenance)")
    if resize is None:  # an export from before the resize was recorded: its recipe's rule
        assert fallback is not None
        try:
            resize = fallback()
        except Exception as exc:  # any failure means: unknown
            raise CheckpointError(f"the export records no resize rule and its recipe gives none ({exc})") from exc
    norm = provenance.get("normalization") if "normalization" in provenance else None
    if norm is not None and not (isinstance(norm, dict) and norm.get("mean") and norm.get("std")):
        raise CheckpointError(f"provenance 'normalization': expected {{mean, std}} or null, got {norm!r}")
    channels = data.get("in_channels") or in_channels
    return cast(Preprocessing, {  # in this key order: records of it (eval/<split>.json) keep it
        "image_size": int(resize["image_size"]),
        "rule": resize.get("rule", "square"),
        "resize_size": int(resize.get("resize_size") or resize["image_size"]),
        "interpolation": resize.get("interpolation") or "bilinear",
        "crop_mode": resize.get("crop_mode") or "center",
        **({"fill": resize["fill"]} if resize.get("fill") else {}),  # crop_mode border: the RGB colour it pads with
        "in_channels": int(channels),
        "normalization": None if norm is None else {"mean": [float(v) for v in norm["mean"]],
                                                    "std": [float(v) for v in norm["std"]]},
    })


def describe_preprocessing(prep: Preprocessing) -> str:
    """The preprocessing in words, as the card and ``predict --help`` state it."""
    size = prep["image_size"]
    if prep["rule"] == "shorter_side":
        if prep["crop_mode"] == "border":
            fill = prep.get("fill") or [0, 0, 0]
            resize = (f"the longer side resized to {prep['resize_size']} ({prep['interpolation']}, aspect ratio kept), "
                      f"padded to {size}x{size} with RGB ({', '.join(map(str, fill))}), then the centre {size}x{size} "
                      "cut out")
        else:
            side = "both sides" if prep["crop_mode"] == "squash" else "the shorter side"
            resize = (f"{side} resized to {prep['resize_size']} ({prep['interpolation']}), "
                      f"then the centre {size}x{size} cut out")
    else:
        resize = f"resized to {size}x{size} (bilinear, antialiased; aspect ratio not kept)"
    channels = {1: "converted to one channel (luminance 0.299 R + 0.587 G + 0.114 B)", 3: "RGB"}.get(
        prep["in_channels"], f"{prep['in_channels']} channels (RGB repeated cyclically)")
    norm = prep["normalization"]
    normalised = ("normalised with mean " + _floats(norm["mean"]) + " and std " + _floats(norm["std"])
                  if norm else "not normalised")
    return f"{channels}; {resize}; values scaled to [0, 1]; {normalised}"


def _floats(values: Sequence[float]) -> str:
    return "[" + ", ".join(f"{v:.4g}" for v in values) + "]"
