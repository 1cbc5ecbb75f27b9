"""The pretrained weights of an ``hf/`` model and the preprocessing its image processor config describes.

Weights are read by recipec's own reader (:mod:`recipec.weights.formats`: safetensors, and a
``.bin``-only repository's pickles with ``weights_only``), never by transformers' loader; transformers
then maps the tensors onto its model (``from_pretrained(None, config=..., state_dict=...)``: legacy
key names, a base model's weights under a classifier), so the keys are transformers' own.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor

from recipec.errors import CheckpointError, ModelError
from recipec.model.hf import hf_config, model_class, quiet
from recipec.model.hf_files import CONFIG, PROCESSOR, locate, read_json, weights_file
from recipec.model.pretrained import Normalization, WeightsInfo
from recipec.weights import formats

__all__ = ["hf_normalization", "hf_preprocessing", "load_hf_weights", "processor_preprocessing"]

# PIL's resampling filters as image processor configs number them; recipec resizes with three
_RESAMPLE = {0: "nearest", 1: "bicubic", 2: "bilinear", 3: "bicubic", 4: "bilinear", 5: "bilinear"}
_RESAMPLE_NAMES = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


def load_hf_weights(arch: str, weights: str) -> tuple[dict[str, Tensor], WeightsInfo]:
    """The weights of ``arch`` at revision ``weights`` (``DEFAULT``: ``main``; a folder's own), from the local cache.

    Returns:
        The state dict under the names of :class:`recipec.model.hf.HFClassifier` (``hf.<name>``), what
        the model has and the file lacks left out (the load report lists it as missing), and where it
        came from, with the image processor's preprocessing.

    Raises:
        WeightsUnavailableError: not cached and downloads not allowed.
        ModelError: at ``model.weights``: no weights file, one that cannot be read, or tensors that do not
            fit the repository's own config.
    """
    files = locate(arch, weights, with_weights=True)
    path = weights_file(files.folder)
    if path is None:
        raise ModelError((("model", "weights"), (
            f"{arch}: {files.folder} has no weights (model.safetensors, model.safetensors.index.json or "
            "pytorch_model.bin); set model.weights: null for random initialisation")))
    try:
        tensors = dict(formats.load(path).state_dict)
    except CheckpointError as exc:
        raise ModelError((("model", "weights"), (
            f"{arch}: {path} cannot be read ({'; '.join(exc.problems)})"))) from exc
    config = hf_config(read_json(files.folder, CONFIG, required=True) or {}, {}, where=str(files.folder / CONFIG))
    _, cls = model_class(config)
    try:
        with quiet():
            hf, info = cls.from_pretrained(None, config=config, state_dict=tensors, output_loading_info=True)
    except Exception as exc:  # a file that does not fit its own config.json: transformers says how
        raise ModelError((("model", "weights"), (
            f"{arch}: transformers could not put {path} into {cls.__name__} built from its config.json: "
            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"))) from exc
    missing = set(info.get("missing_keys") or ())
    state = {f"hf.{k}": v for k, v in hf.state_dict().items() if k not in missing}
    processor = read_json(files.folder, PROCESSOR, required=False)
    pretraining = _pretraining(processor)
    labels = getattr(config, "num_labels", None) if any(
        str(a).endswith("ForImageClassification") for a in getattr(config, "architectures", None) or ()) else None
    return state, WeightsInfo(
        name=files.name if files.repo else arch, url=files.url, path=path, sha256_prefix=None, num_params=None,
        num_categories=labels, normalization=processor_normalization(processor), recipe=None, license=None,
        preprocessing=pretraining)


def hf_normalization(arch: str, weights: str) -> Normalization | None:
    """``(mean, std)`` of ``arch``'s image processor config at revision ``weights``, for images in [0, 1].

    Raises:
        WeightsUnavailableError: not cached and downloads not allowed.
    """
    files = locate(arch, weights, with_weights=False)
    return processor_normalization(read_json(files.folder, PROCESSOR, required=False))


def hf_preprocessing(arch: str, weights: str) -> dict[str, Any] | None:
    """How ``arch``'s image processor config resizes, as :func:`recipec.data.transforms.resize_rule` reads it;
    None without a ``preprocessor_config.json`` (or one that does not resize).

    Raises:
        WeightsUnavailableError: not cached and downloads not allowed.
    """
    files = locate(arch, weights, with_weights=False)
    return processor_preprocessing(read_json(files.folder, PROCESSOR, required=False))


def processor_normalization(processor: Mapping[str, Any] | None) -> Normalization | None:
    """``(mean, std)`` for images in [0, 1] equivalent to the processor's rescale and normalise.

    transformers computes ``(pixel * rescale_factor - mean) / std`` on 0..255 pixels; recipec's
    ``(pixel / 255 - m) / s`` is the same with ``m = mean / (255 rescale_factor)``, ``s = std / (255
    rescale_factor)``. None when that is the identity (no normalisation, rescale by 1/255).
    """
    if not processor:
        return None
    scale = float(processor.get("rescale_factor", 1 / 255)) * 255 if processor.get("do_rescale", True) else 255.0
    normalize = processor.get("do_normalize", True)
    mean = [float(m) for m in processor.get("image_mean") or ()] if normalize else [0.0, 0.0, 0.0]
    std = [float(s) for s in processor.get("image_std") or ()] if normalize else [1.0, 1.0, 1.0]
    if not mean or not std:
        return None
    if abs(scale - 1) < 1e-6 and not any(mean) and all(abs(s - 1) < 1e-9 for s in std):
        return None
    return tuple(m / scale for m in mean), tuple(s / scale for s in std)


def processor_preprocessing(processor: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The resize of an image processor config as recipec's rule reads it (``input_size``, ``interpolation``,
    ``crop_pct``, ``crop_mode``, ``resize_size``, ``mean``), or None when it does not resize.

    ``size: {height, width}`` squashes both sides (``crop_mode: squash``); ``size: {shortest_edge}``
    resizes the shorter side and crops the centre (``crop_size``), or, with ConvNeXt's ``crop_pct``,
    resizes to ``shortest_edge / crop_pct`` and crops ``shortest_edge`` (from 384 on: squashes).
    """
    if not processor or not processor.get("do_resize", True) or "size" not in processor:
        return None
    size, crop = _size(processor.get("size"), square=not processor.get("do_center_crop")), _size(processor.get("crop_size"), square=True)
    resample = processor.get("resample", 2)
    interpolation = _RESAMPLE.get(resample, "bilinear") if isinstance(resample, int) else str(resample).lower()
    interpolation = interpolation if interpolation in ("nearest", "bilinear", "bicubic") else "bilinear"
    mean = [float(m) for m in processor.get("image_mean") or (0.0, 0.0, 0.0)]
    if "height" in size:  # squash to height x width (recipec's images are square: the height)
        return {"input_size": int(size["height"]), "interpolation": interpolation, "crop_pct": 1.0,
                "crop_mode": "squash", "resize_size": None, "mean": mean}
    edge = int(size.get("shortest_edge") or 0)
    if not edge:
        return None
    if processor.get("do_center_crop") and crop.get("height"):
        side = int(crop["height"])
        return {"input_size": side, "interpolation": interpolation, "crop_pct": side / edge, "crop_mode": "center",
                "resize_size": edge, "mean": mean}
    crop_pct = processor.get("crop_pct")
    if isinstance(crop_pct, (int, float)) and crop_pct > 0 and edge < 384:  # ConvNeXt's processor
        return {"input_size": edge, "interpolation": interpolation, "crop_pct": float(crop_pct), "crop_mode": "center",
                "resize_size": None, "mean": mean}
    mode = "squash" if crop_pct else "center"  # ConvNeXt from 384: warped; else the shorter side, centre crop
    return {"input_size": edge, "interpolation": interpolation, "crop_pct": 1.0, "crop_mode": mode,
            "resize_size": None, "mean": mean}


def _size(value: Any, *, square: bool) -> dict[str, Any]:
    """An image processor's ``size``/``crop_size``: a dict, or a legacy int (a square, or a shorter side)."""
    if isinstance(value, dict):
        return value
    if isinstance(value, int):
        return {"height": value, "width": value} if square else {"shortest_edge": value}
    return {}


def _pretraining(processor: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """What the weights were trained on, as the plan and the card show it (``input_size`` C x H x W)."""
    rule = processor_preprocessing(processor)
    norm = processor_normalization(processor)
    if rule is None or processor is None:
        return None
    resample = processor.get("resample", 2)
    return {"input_size": [3, rule["input_size"], rule["input_size"]], "interpolation": rule["interpolation"],
            "crop_pct": round(rule["crop_pct"], 4), "crop_mode": rule["crop_mode"],
            "mean": list(norm[0]) if norm else None, "std": list(norm[1]) if norm else None,
            "image_processor": str(processor.get("image_processor_type") or "")} | (
        {"resample": _RESAMPLE_NAMES[resample]} if isinstance(resample, int) and resample in (1, 4, 5) else {})
