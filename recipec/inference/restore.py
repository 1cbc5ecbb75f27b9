"""``recipec.load``: a ready model from any recipec export, with nothing but the file.

Exports carry the resolved recipe in their metadata, so the architecture, the head and
the input channels are rebuilt from it (no pretrained weights are fetched: every tensor
comes from the file) and the weights are loaded strictly.

A file must never name code that runs: torchvision architectures are looked up by name, and
a custom factory (``model.arch: "package.module:factory"``) in a file's recipe is refused,
before its module is imported, unless the caller trusts that exact factory
(``trust_factories``, ``--trust-factory`` on the command line).
"""

from __future__ import annotations

import os
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from torch import nn

from recipec.inference.adapters import adapters_folder, model_from_adapters
from recipec.errors import ModelError, UntrustedFactoryError
from recipec.inference.hub import read_hub, timm_hub_model
from recipec.inference.pt2 import is_pt2, read_pt2_export
from recipec.model import families, zoo
from recipec.model.factory import factory_names
from recipec.model.heads import renamed_legacy_heads
from recipec.provenance import read_export_metadata
from recipec.recipe.embedded import recipe_from_metadata
from recipec.weights import formats
from recipec.weights.onnx import read_onnx
from recipec.weights.transfer import load_exported

__all__ = ["build_model", "load", "model_from", "read_export", "read_onnx_export"]


def read_export(path: str | os.PathLike[str]) -> tuple[Any, dict[str, Any], Any]:
    """The recipe, provenance and checkpoint of a recipec export.

    Raises:
        CheckpointError: the file is unreadable, or carries no recipec recipe (a foreign file).
    """
    checkpoint = formats.load(path)
    recipe, provenance = recipe_from_metadata(checkpoint.metadata, path)
    return recipe, provenance, checkpoint


def read_onnx_export(path: str | os.PathLike[str]) -> tuple[Any, dict[str, Any]]:
    """The recipe and provenance a recipec ONNX export carries in its ``metadata_props``.

    Raises:
        CheckpointError: not ONNX, or no recipec recipe in its metadata.
    """
    proto = read_onnx(path)
    return recipe_from_metadata({p.key: p.value for p in proto.metadata_props}, path)


def build_model(recipe: Any, *, trust_factories: bool | Collection[str] = (), origin: str = "",
                provenance: Mapping[str, Any] | None = None) -> nn.Module:
    """The architecture a recipe describes, head and input channels included, with no weights loaded.

    Nothing is fetched: ``pretrained=...`` only sets what the weights imply (e.g. googlenet's
    ``transform_input``), since every tensor comes from the checkpoint loaded next.

    Args:
        recipe: the recipe, typically read from a file.
        trust_factories: the ``"package.module:factory"`` names that may be imported and called;
            by default none (a recipe from a file); ``True`` only for a recipe the caller wrote.
        origin: the file the recipe came from, named in a refusal.
        provenance: the export's provenance: an ``hf/`` model is rebuilt from the config it records
            (data, checked as a repository's would be), so the repository need not be there.

    Raises:
        UntrustedFactoryError: the recipe names a custom factory not in ``trust_factories``.
        ModelError: the architecture cannot be built.
    """
    spec = recipe.model
    try:
        model = families.build_architecture(spec.arch, spec.kwargs, pretrained=spec.weights is not None,
                                            weights=spec.weights, trust_factories=trust_factories, origin=origin,
                                            recorded=provenance)
    except ModelError as exc:
        if not origin or isinstance(exc, UntrustedFactoryError):  # a refusal names the file already
            raise
        # the recipe at fault is the file's, which has no lines to point at: name the file
        raise type(exc)([f"{origin}: {problem}" for problem in exc.problems]) from exc
    if spec.head is not None:
        families.replace_head(model, spec.arch, num_classes=spec.head.num_classes, type=spec.head.type,
                              hidden=spec.head.hidden, dropout=spec.head.dropout, activation=spec.head.activation,
                              at=spec.head.at)
    if spec.in_channels != 3:
        zoo.set_input_channels(model, spec.in_channels)
    return model


def load(path: str | os.PathLike[str], *, trust_factories: Collection[str] = ()) -> nn.Module:
    """Rebuild the fine-tuned model of an export (``model.safetensors``, ``model.pt``), in eval mode; a ``model.pt2``
    is its exported graph as a module (traced in eval mode; checked first, no Python from the file runs).

    Args:
        path: the export (a sharded ``*.safetensors.index.json``, a run directory, or a hub folder too:
            ``RUN/hub``, or any timm hub folder, see :mod:`recipec.inference.hub`).
        trust_factories: custom factories (``"package.module:factory"``, exact names) that the
            export's recipe may import and call; torchvision architectures need none.

    Raises:
        UntrustedFactoryError: the export's recipe names a custom factory you did not trust;
            nothing was imported.
        CheckpointError: the file is unreadable, foreign, or its tensors do not fit its recipe.

    Example:
        >>> model = recipec.load("runs/quickstart/model.safetensors")
        >>> logits = model(images)
        >>> mine = recipec.load("runs/mine/model.safetensors", trust_factories=["mynets:small_cnn"])

    The class names and the preprocessing come with :func:`recipec.load_predictor`.
    """
    found = read_hub(path)
    if found is not None:
        if found.recipe is None:  # a timm hub folder from elsewhere: its config.json describes the model
            return timm_hub_model(found)
        return model_from(found.recipe, found.checkpoint, found.file, trust_factories=trust_factories)
    if is_pt2(path):  # a torch.export graph: weights and architecture in the file, nothing rebuilt
        return read_pt2_export(path)[2]
    adapters = adapters_folder(path)
    if adapters is not None:  # RUN/adapters (export.adapters: separate): its base rebuilt, the adapters merged
        return model_from_adapters(adapters, trust_factories=trust_factories)
    recipe, _, checkpoint = read_export(Path(path))
    return model_from(recipe, checkpoint, path, trust_factories=trust_factories)


def model_from(recipe: Any, checkpoint: Any, path: str | os.PathLike[str], *,
               trust_factories: Collection[str] = ()) -> nn.Module:
    """The model of an already read export (see :func:`read_export`), weights loaded, in eval mode.

    ``trust_factories`` as for :func:`load`: the export's recipe came from the file.
    """
    _, provenance = read_export_metadata({k: v for k, v in checkpoint.metadata.items() if isinstance(v, str)})
    model = build_model(recipe, trust_factories=factory_names(trust_factories), origin=str(path), provenance=provenance)
    state = renamed_legacy_heads(checkpoint.state_dict, model)  # fc.1.weight of earlier versions -> fc.weight
    return load_exported(model, state, misfit=f"{path}: its tensors do not fit the model its recipe describes")
