"""``recipec.load``: a ready model from any recipec export, with nothing but the file.

Exports carry the resolved recipe in their metadata, so the architecture, the head and
the input channels are rebuilt from it (no pretrained weights are fetched: every tensor
comes from the file) and the weights are loaded strictly.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from torch import nn

from recipec.errors import CheckpointError

__all__ = ["build_model", "load", "model_from", "read_export"]


def read_export(path: str | os.PathLike[str]) -> tuple[Any, dict[str, Any], Any]:
    """The recipe, provenance and checkpoint of a recipec export.

    Raises:
        CheckpointError: the file is unreadable, or carries no recipec recipe (a foreign file).
    """
    from recipec.card.provenance import read_export_metadata
    from recipec.recipe.spec import Recipe
    from recipec.weights import formats

    checkpoint = formats.load(path)
    meta = {k: v for k, v in checkpoint.metadata.items() if isinstance(v, str)}
    recipe_yaml, provenance = read_export_metadata(meta)
    if recipe_yaml is None:
        raise CheckpointError(f"{path}: has no recipec recipe in its metadata, so the architecture is unknown; "
                              "load its state dict with recipec.weights.load_state_dict instead")
    try:
        recipe = Recipe.model_validate(yaml.safe_load(recipe_yaml))
    except Exception as exc:  # pydantic or YAML: the embedded recipe is damaged
        raise CheckpointError(f"{path}: the embedded recipe is not valid: {exc}") from exc
    return recipe, provenance, checkpoint


def build_model(recipe: Any) -> nn.Module:
    """The architecture a recipe describes, head and input channels included, with no weights loaded.

    Nothing is fetched: ``pretrained=...`` only sets what the weights imply (e.g. googlenet's
    ``transform_input``), since every tensor comes from the checkpoint loaded next.
    """
    from recipec.model import heads, zoo

    spec = recipe.model
    model = zoo.build_architecture(spec.arch, spec.kwargs, pretrained=spec.weights is not None)
    if spec.head is not None:
        heads.replace_head(model, spec.arch, num_classes=spec.head.num_classes, type=spec.head.type,
                           hidden=spec.head.hidden, dropout=spec.head.dropout, activation=spec.head.activation,
                           at=spec.head.at)
    if spec.in_channels != 3:
        zoo.set_input_channels(model, spec.in_channels)
    return model


def load(path: str | os.PathLike[str]) -> nn.Module:
    """Rebuild the fine-tuned model of an export (``model.safetensors``, ``model.pt``), in eval mode.

    Example:
        >>> model = recipec.load("runs/quickstart/model.safetensors")
        >>> logits = model(images)
    """
    recipe, _, checkpoint = read_export(Path(path))
    return model_from(recipe, checkpoint, path)


def model_from(recipe: Any, checkpoint: Any, path: str | os.PathLike[str]) -> nn.Module:
    """The model of an already read export (see :func:`read_export`), weights loaded, in eval mode."""
    model = build_model(recipe)
    state = checkpoint.state_dict
    try:
        dtype = next(v.dtype for v in state.values() if v.is_floating_point())
        model.to(dtype)
        model.load_state_dict(state, strict=True)
    except (RuntimeError, StopIteration) as exc:
        raise CheckpointError(f"{path}: its tensors do not fit the model its recipe describes: {exc}") from exc
    return model.eval()
