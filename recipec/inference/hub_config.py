"""A hub folder's ``config.json`` read as data: its family, classes and preprocessing. Torch-free.

Three layouts are read (:mod:`recipec.convert.hub` writes them):

- timm's (``pretrained_cfg`` present): ``architecture`` is a timm model name, ``num_classes``,
  ``label_names``, ``model_args`` (keyword arguments of ``timm.create_model``) and the preprocessing in
  ``pretrained_cfg`` (``input_size``, ``crop_pct``, ``crop_mode``, ``interpolation``, ``mean``, ``std``);
- transformers' (``model_type``, ``id2label``): an ``hf/`` run's, whose preprocessing is in
  ``preprocessor_config.json`` (and the export's provenance), not here;
- recipec's torchvision one (``library_name: torchvision``): ``architecture``, ``num_classes``,
  ``label_names``, ``model_args`` and ``preprocessing`` as :func:`recipec.inference.preprocessing.preprocessing_of`
  returns it.

Nothing in the file is ever imported or called: an architecture is a name looked up in a registry.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Literal

from recipec._files import read_regular
from recipec.errors import CheckpointError, RecipecError
from recipec.inference.preprocessing import Preprocessing

__all__ = ["MAX_CONFIG_BYTES", "config_classes", "config_preprocessing", "hub_family", "is_hub_folder",
           "read_hub_config"]

MAX_CONFIG_BYTES = 4 << 20  # a config.json is a page of JSON (ImageNet-21k label names: ~0.5 MB)


def is_hub_folder(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a directory with a ``config.json`` (a Hugging Face model folder)."""
    return Path(path).is_dir() and (Path(path) / "config.json").exists()


def read_hub_config(folder: str | os.PathLike[str], *, error: type[RecipecError] = CheckpointError) -> dict[str, Any]:
    """``folder/config.json`` as plain data.

    Raises:
        error: not a regular file, too large, not JSON, or not an object.
    """
    path = Path(folder) / "config.json"
    raw = read_regular(path, what="hub config", error=error, max_bytes=MAX_CONFIG_BYTES)
    try:
        config = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise error(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(config, dict):
        raise error(f"{path}: expected a JSON object, got {type(config).__name__}")
    return config


def hub_family(config: dict[str, Any]) -> Literal["timm", "torchvision", "transformers"] | None:
    """``timm`` (timm's layout), ``torchvision`` (recipec's torchvision layout), ``transformers``
    (``save_pretrained``'s: ``model_type`` and ``id2label``), or None (another library's)."""
    if isinstance(config.get("pretrained_cfg"), dict):
        return "timm"
    if config.get("library_name") == "torchvision":
        return "torchvision"
    if isinstance(config.get("model_type"), str) and isinstance(config.get("id2label"), dict):
        return "transformers"
    return None


def config_classes(config: dict[str, Any], origin: str = "config.json") -> list[str]:
    """The class names in output order: ``label_names`` (a list, or timm's ``{index: name}``), else ``0..N-1``.

    Raises:
        CheckpointError: ``num_classes`` is not a positive integer, or the names do not match it.
    """
    if hub_family(config) == "transformers":  # id2label: {"0": name, ...}
        config = {"num_classes": len(config["id2label"]), "label_names": config["id2label"]}
    n = config.get("num_classes", (config.get("pretrained_cfg") or {}).get("num_classes"))
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise CheckpointError(f"{origin}: num_classes must be a positive integer, got {n!r}")
    names = config.get("label_names")
    if names is None:
        return [str(i) for i in range(n)]
    if isinstance(names, dict):
        try:
            names = [names[k] for k in sorted(names, key=int)]
        except (TypeError, ValueError):
            raise CheckpointError(f"{origin}: label_names keys must be class indices") from None
    if not isinstance(names, list) or len(names) != n:
        raise CheckpointError(f"{origin}: label_names must list the {n} class names, got {str(names)[:80]}")
    return [str(name) for name in names]


def config_preprocessing(config: dict[str, Any], origin: str = "config.json") -> Preprocessing:
    """The eval preprocessing a hub config records, as :func:`recipec.inference.preprocessing.preprocessing_of` gives it.

    timm's ``pretrained_cfg`` becomes the ``shorter_side`` rule of timm's eval transform: the shorter side
    (``squash``: both, ``border``: the longer) to ``floor(image_size / crop_pct)``, then the centre crop.

    Raises:
        CheckpointError: the preprocessing is missing or malformed.
    """
    try:
        if hub_family(config) == "torchvision":
            prep = dict(config["preprocessing"])
            return _checked(prep)
        cfg = config["pretrained_cfg"]
        channels, height, width = (int(v) for v in cfg.get("input_size", (3, 224, 224)))
        if height != width:
            raise ValueError(f"input_size {cfg['input_size']}: recipec predicts on square inputs")
        crop_pct = float(cfg.get("crop_pct") or 0.875)
        mean, std = cfg.get("mean"), cfg.get("std")
        mode = str(cfg.get("crop_mode") or "center")
        prep = {"image_size": height, "rule": "shorter_side", "resize_size": math.floor(height / crop_pct),
                "interpolation": str(cfg.get("interpolation") or "bilinear"), "crop_mode": mode,
                **({"fill": [round(255 * float(v)) for v in (mean or (0, 0, 0))]} if mode == "border" else {}),
                "in_channels": channels,
                "normalization": None if mean is None or std is None else
                {"mean": [float(v) for v in mean], "std": [float(v) for v in std]}}
        return _checked(prep)
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{origin}: its preprocessing cannot be read ({exc})") from None


def _checked(prep: dict[str, Any]) -> Preprocessing:
    if prep.get("rule") not in ("square", "shorter_side") or prep.get("crop_mode") not in ("center", "squash", "border"):
        raise ValueError(f"rule {prep.get('rule')!r} / crop_mode {prep.get('crop_mode')!r}")
    if prep.get("interpolation") not in ("bilinear", "bicubic", "nearest"):
        raise ValueError(f"interpolation {prep.get('interpolation')!r}")
    for key in ("image_size", "resize_size", "in_channels"):
        if not isinstance(prep.get(key), int) or not 1 <= prep[key] <= 1 << 16:
            raise ValueError(f"{key} {prep.get(key)!r}")
    return prep  # type: ignore[return-value]
