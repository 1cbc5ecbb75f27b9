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

from recipec.errors import CheckpointError, ModelError, UntrustedFactoryError

__all__ = ["build_model", "load", "load_predictor", "model_from", "read_export", "recipe_from_metadata"]


def read_export(path: str | os.PathLike[str]) -> tuple[Any, dict[str, Any], Any]:
    """The recipe, provenance and checkpoint of a recipec export.

    Raises:
        CheckpointError: the file is unreadable, or carries no recipec recipe (a foreign file).
    """
    from recipec.weights import formats

    checkpoint = formats.load(path)
    recipe, provenance = recipe_from_metadata(checkpoint.metadata, path)
    return recipe, provenance, checkpoint


def recipe_from_metadata(metadata: Mapping[str, Any], path: str | os.PathLike[str]) -> tuple[Any, dict[str, Any]]:
    """The recipe and provenance in an export's str -> str metadata (safetensors, torch or ONNX).

    Raises:
        CheckpointError: no recipec recipe (a foreign file), or a damaged one.
    """
    from recipec.provenance import read_export_metadata
    from recipec.recipe.spec import Recipe

    meta = {k: v for k, v in metadata.items() if isinstance(v, str)}
    recipe_yaml, provenance = read_export_metadata(meta)
    if recipe_yaml is None:
        raise CheckpointError(f"{path}: has no recipec recipe in its metadata, so the architecture is unknown; "
                              "load its state dict with recipec.weights.load_state_dict instead")
    try:
        from recipec.recipe._yaml import read_embedded
        from recipec.recipe.load import resolve_paths

        # paths in the embedded recipe are relative to the run directory the export was written into
        recipe = Recipe.model_validate(resolve_paths(read_embedded(recipe_yaml, str(path)), Path(path).parent))
    except Exception as exc:  # pydantic or YAML: the embedded recipe is damaged
        raise CheckpointError(f"{path}: the embedded recipe is not valid: {exc}") from exc
    return recipe, provenance


def build_model(recipe: Any, *, trust_factories: bool | Collection[str] = (), origin: str = "") -> nn.Module:
    """The architecture a recipe describes, head and input channels included, with no weights loaded.

    Nothing is fetched: ``pretrained=...`` only sets what the weights imply (e.g. googlenet's
    ``transform_input``), since every tensor comes from the checkpoint loaded next.

    Args:
        recipe: the recipe, typically read from a file.
        trust_factories: the ``"package.module:factory"`` names that may be imported and called;
            by default none (a recipe from a file); ``True`` only for a recipe the caller wrote.
        origin: the file the recipe came from, named in a refusal.

    Raises:
        UntrustedFactoryError: the recipe names a custom factory not in ``trust_factories``.
        ModelError: the architecture cannot be built.
    """
    from recipec.model import heads, zoo

    spec = recipe.model
    try:
        model = zoo.build_architecture(spec.arch, spec.kwargs, pretrained=spec.weights is not None, weights=spec.weights,
                                       trust_factories=trust_factories, origin=origin)
    except ModelError as exc:
        if not origin or isinstance(exc, UntrustedFactoryError):  # a refusal names the file already
            raise
        # the recipe at fault is the file's, which has no lines to point at: name the file
        raise type(exc)([f"{origin}: {problem}" for problem in exc.problems]) from exc
    if spec.head is not None:
        heads.replace_head(model, spec.arch, num_classes=spec.head.num_classes, type=spec.head.type,
                           hidden=spec.head.hidden, dropout=spec.head.dropout, activation=spec.head.activation,
                           at=spec.head.at)
    if spec.in_channels != 3:
        zoo.set_input_channels(model, spec.in_channels)
    return model


def load(path: str | os.PathLike[str], *, trust_factories: Collection[str] = ()) -> nn.Module:
    """Rebuild the fine-tuned model of an export (``model.safetensors``, ``model.pt``), in eval mode.

    Args:
        path: the export (a sharded ``*.safetensors.index.json`` or a run directory too).
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

    The class names and the preprocessing come with :func:`load_predictor`.
    """
    recipe, _, checkpoint = read_export(Path(path))
    return model_from(recipe, checkpoint, path, trust_factories=trust_factories)


def load_predictor(path: str | os.PathLike[str], *, trust_factories: Collection[str] = (),
                   device: str | None = None) -> Any:
    """The model of an export with its class names and exact preprocessing: a :class:`recipec.inference.predictor.Predictor`.

    :func:`load` gives the bare ``nn.Module``; this gives ``model``, ``classes``, ``transform``
    (PIL image -> the normalised tensor training used) and ``predict(images, top_k=...)``. It also
    reads ``model.onnx`` (run with onnxruntime; no factory is built).

    Example:
        >>> predictor = recipec.load_predictor("runs/quickstart/model.safetensors")
        >>> predictor.predict(Image.open("digit.png"), top_k=3)
        [{'class': '7', 'score': 0.98}, {'class': '1', 'score': 0.01}, {'class': '9', 'score': 0.004}]
    """
    from recipec.inference.predictor import load_predictor as load_usable

    return load_usable(path, trust_factories=trust_factories, device=device)


def model_from(recipe: Any, checkpoint: Any, path: str | os.PathLike[str], *,
               trust_factories: Collection[str] = ()) -> nn.Module:
    """The model of an already read export (see :func:`read_export`), weights loaded, in eval mode.

    ``trust_factories`` as for :func:`load`: the export's recipe came from the file.
    """
    from recipec.model.zoo import factory_names

    model = build_model(recipe, trust_factories=factory_names(trust_factories), origin=str(path))
    state = checkpoint.state_dict
    try:
        dtype = next(v.dtype for v in state.values() if v.is_floating_point())
        model.to(dtype)
        model.load_state_dict(state, strict=True)
    except (RuntimeError, StopIteration) as exc:
        raise CheckpointError(f"{path}: its tensors do not fit the model its recipe describes: {exc}") from exc
    return model.eval()
