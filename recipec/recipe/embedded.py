"""The recipe an export carries in its metadata, read back without torch.

Every recipec export (safetensors ``__metadata__``, a torch file's plain data, ONNX
``metadata_props``) holds the resolved recipe as YAML text beside its provenance; paths in it
are relative to the run directory the export was written into.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from recipec.errors import CheckpointError
from recipec.provenance import read_export_metadata
from recipec.recipe._yaml import read_embedded
from recipec.recipe.load import resolve_paths
from recipec.recipe.spec import Recipe

__all__ = ["recipe_from_metadata"]


def recipe_from_metadata(metadata: Mapping[str, Any], path: str | os.PathLike[str]) -> tuple[Recipe, dict[str, Any]]:
    """The recipe and provenance in an export's str -> str metadata (safetensors, torch or ONNX).

    Raises:
        CheckpointError: no recipec recipe (a foreign file), or a damaged one.
    """
    meta = {k: v for k, v in metadata.items() if isinstance(v, str)}
    recipe_yaml, provenance = read_export_metadata(meta)
    if recipe_yaml is None:
        raise CheckpointError(f"{path}: has no recipec recipe in its metadata, so the architecture is unknown; "
                              "load its state dict with recipec.weights.load_state_dict instead")
    try:
        # paths in the embedded recipe are relative to the run directory the export was written into
        recipe = Recipe.model_validate(resolve_paths(read_embedded(recipe_yaml, str(path)), Path(path).parent))
    except Exception as exc:  # pydantic or YAML: the embedded recipe is damaged
        raise CheckpointError(f"{path}: the embedded recipe is not valid: {exc}") from exc
    return recipe, provenance
