"""Hub folders as exports: ``recipec.load`` and ``load_predictor`` on ``RUN/hub`` or on any timm hub folder.

A folder recipec wrote carries the recipe and provenance in its ``model.safetensors`` like every
export, and is read as one (:func:`read_hub` returns them; an ``hf/`` run's folder has transformers'
tensor names, which become recipec's ``hf.<name>`` again). A timm hub folder from elsewhere
(``timm.models.push_to_hf_hub``, a ``snapshot_download`` of ``timm/...``) has no recipe: its model is
``timm.create_model(config["architecture"], num_classes=..., **config["model_args"])`` with its
tensors loaded strictly (:func:`timm_hub_model`), its classes are ``label_names`` and its preprocessing
timm's eval transform of ``pretrained_cfg``.

``config.json`` is data: the architecture must be a timm model name (``timm.models.is_model``), and an
architecture that names code (``package.module:factory``, a dotted path) is refused before anything
is imported, as a file's own factory is (:class:`~recipec.errors.UntrustedFactoryError`). Weights are
read by :mod:`recipec.weights.formats` (safetensors, or a torch file with ``weights_only=True``).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from torch import nn

from recipec.errors import CheckpointError, ModelError, UntrustedFactoryError
from recipec.inference.hub_config import config_classes, config_preprocessing, hub_family, is_hub_folder, read_hub_config
from recipec.model.timm import build_timm
from recipec.provenance import read_export_metadata
from recipec.recipe.archs import TIMM_PREFIX
from recipec.recipe.embedded import recipe_from_metadata
from recipec.weights import formats
from recipec.weights.transfer import load_exported

__all__ = ["HubExport", "read_hub", "timm_hub_model"]

_WEIGHTS = ("model.safetensors", "pytorch_model.bin")  # what timm's hub loader reads, in its order
_NAME = re.compile(r"[A-Za-z0-9_]+")  # timm model names: no dots, colons or slashes


@dataclass
class HubExport:
    """What :func:`read_hub` found in a hub folder.

    Attributes:
        folder: the folder; file: its weights file.
        config: its ``config.json``.
        checkpoint: the weights (:class:`recipec.weights.formats.Checkpoint`).
        recipe: the embedded recipe of a folder recipec wrote; None for a foreign timm folder.
        provenance: recipec's provenance, or for a foreign folder what ``config.json`` says of the classes
            and the preprocessing, in the same keys (``classes``, ``normalization``, ``data.resize``).
    """

    folder: Path
    file: Path
    config: dict[str, Any]
    checkpoint: Any
    recipe: Any = None
    provenance: dict[str, Any] = field(default_factory=dict)


def read_hub(path: str | os.PathLike[str]) -> HubExport | None:
    """The export in a hub folder (a directory with ``config.json``), or None when ``path`` is not one.

    Raises:
        CheckpointError: the folder has no weights, a damaged ``config.json`` or recipe, or is neither
            recipec's nor timm's.
    """
    if not is_hub_folder(path):
        return None
    folder = Path(path)
    config = read_hub_config(folder)
    file = next((folder / name for name in _WEIGHTS if (folder / name).is_file()), None)
    if file is None:
        raise CheckpointError(f"{folder}: a hub folder without weights (neither {' nor '.join(_WEIGHTS)})")
    checkpoint = formats.load(file)
    if read_export_metadata({k: v for k, v in checkpoint.metadata.items() if isinstance(v, str)})[0] is not None:
        recipe, provenance = recipe_from_metadata(checkpoint.metadata, file)
        if hub_family(config) == "transformers":  # an hf/ run's: transformers' names, recipec's model holds it at hf
            checkpoint = replace(checkpoint, state_dict={f"hf.{k}": v for k, v in checkpoint.state_dict.items()})
        return HubExport(folder, file, config, checkpoint, recipe, provenance)
    origin = str(folder / "config.json")
    if hub_family(config) != "timm":
        raise CheckpointError(f"{folder}: not a timm hub folder (config.json has no pretrained_cfg) and {file.name} "
                              "carries no recipec recipe; recipec loads timm's hub folders and its own")
    prep = config_preprocessing(config, origin)
    resize = {k: prep[k] for k in ("image_size", "rule", "resize_size", "interpolation", "crop_mode")}  # type: ignore[literal-required]
    provenance = {"classes": config_classes(config, origin), "normalization": prep["normalization"],
                  "data": {"resize": resize | ({"fill": prep["fill"]} if "fill" in prep else {}),
                           "in_channels": prep["in_channels"]},
                  "base_model": {"arch": f"{TIMM_PREFIX}{config.get('architecture')}"}}
    return HubExport(folder, file, config, checkpoint, None, provenance)


def timm_hub_model(found: HubExport) -> nn.Module:
    """The model of a foreign timm hub folder, its tensors loaded strictly, in eval mode.

    Raises:
        UntrustedFactoryError: ``architecture`` names code rather than a timm model; nothing was imported.
        ModelError: timm is not installed, or does not know the architecture or its arguments.
        CheckpointError: the tensors do not fit the model.
    """
    origin = str(found.folder / "config.json")
    arch, args = found.config.get("architecture"), found.config.get("model_args") or {}
    if not isinstance(arch, str) or not _NAME.fullmatch(arch):
        raise UntrustedFactoryError(
            f"{origin}: architecture {arch!r} is not a timm model name; a hub folder's config.json is data, and "
            "code it names is never imported (give a folder whose architecture timm knows)")
    if not isinstance(args, dict):
        raise CheckpointError(f"{origin}: model_args must be an object, got {type(args).__name__}")
    num_classes = len(found.provenance["classes"])
    try:
        model = build_timm(TIMM_PREFIX + arch, {**args, "num_classes": num_classes})
    except ModelError as exc:  # located at model.arch / model.kwargs of a recipe that is not there: name the file
        raise type(exc)([f"{origin}: {problem}" for problem in exc.problems]) from exc
    return load_exported(model, found.checkpoint.state_dict,
                         misfit=f"{found.file}: its tensors do not fit {arch} as config.json describes it")
