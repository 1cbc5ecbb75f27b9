"""recipec: declarative transfer-learning recipes for PyTorch, and a checkpoint converter.

Only the public API lives here; importing ``recipec`` does not import torch.

Example:
    >>> import recipec
    >>> recipe = recipec.load_recipe("recipes/quickstart.yaml", ["train.epochs=1"])
    >>> compiled = recipec.compile_recipe(recipe)      # model, optimizer, scheduler, plan
    >>> print(compiled.plan.text())
    >>> run = recipec.build(recipe)                    # fine-tune and export into runs/<name>/ (prints each epoch)
    >>> model = recipec.load(run / "model.safetensors")
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from recipec._version import __version__ as __version__
from recipec.errors import RecipecError

if TYPE_CHECKING:
    from recipec.pipeline.build import build
    from recipec.compiler.compile import Compiled, compile_recipe
    from recipec.inference.predictor import load_predictor
    from recipec.inference.restore import load
    from recipec.recipe.load import load_recipe
    from recipec.recipe.spec import Recipe

__all__ = ["Compiled", "Recipe", "RecipecError", "build", "compile_recipe", "load", "load_predictor", "load_recipe"]

_LAZY = {
    "build": "recipec.pipeline.build",
    "load": "recipec.inference.restore",
    "load_predictor": "recipec.inference.predictor",
    "Compiled": "recipec.compiler.compile",
    "compile_recipe": "recipec.compiler.compile",
    "load_recipe": "recipec.recipe.load",
    "Recipe": "recipec.recipe.spec",
}


def __getattr__(name: str) -> Any:
    # Lazy so that `import recipec` stays cheap and torch-free until a model is needed.
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'recipec' has no attribute {name!r}")

