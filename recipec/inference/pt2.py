"""A ``.pt2`` export (``torch.export``) as a model: its recipe and provenance from the archive's extra
files, its graph from :func:`recipec.weights.pt2.load` (checked first: no Python from the file runs).

The graph was traced in eval mode and cannot be switched back to training (``.eval()``/``.train()``
are torch's to refuse); it runs on the CPU, in float32, at any batch size when exported with
``export.pt2.dynamic_batch``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch import nn

from recipec.recipe.embedded import recipe_from_metadata
from recipec.weights import pt2

__all__ = ["is_pt2", "read_pt2_export"]


def is_pt2(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` names a ``.pt2`` file (by its suffix, as the other exports are told apart)."""
    return Path(path).suffix == pt2.SUFFIX and not Path(path).is_dir()


def read_pt2_export(path: str | os.PathLike[str]) -> tuple[Any, dict[str, Any], nn.Module]:
    """The recipe, provenance and runnable module of a recipec ``.pt2`` export.

    Raises:
        CheckpointError: the file is refused (see :mod:`recipec.weights.pt2`), unreadable, or carries
            no recipec recipe.
    """
    program, metadata = pt2.load(path)
    recipe, provenance = recipe_from_metadata(metadata, path)
    return recipe, provenance, program.module()
