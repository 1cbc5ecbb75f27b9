"""recipec: declarative transfer-learning recipes for PyTorch, and a checkpoint converter.

Only the public API lives here; importing ``recipec`` does not import torch.

Example:
    >>> import recipec
    >>> recipe = recipec.load_recipe("recipes/quickstart.yaml", ["train.epochs=1"])
    >>> compiled = recipec.compile_recipe(recipe)      # model, optimizer, scheduler, plan
    >>> print(compiled.plan.text())
    >>> run = recipec.build(recipe)                    # fine-tune and export into runs/<name>/
    >>> model = recipec.load(run / "model.safetensors")
"""

from __future__ import annotations

import sys
import types
from typing import TYPE_CHECKING, Any

from recipec.errors import RecipecError

if TYPE_CHECKING:
    from recipec.build import build
    from recipec.compiler import Compiled, compile_recipe
    from recipec.restore import load, load_predictor
    from recipec.recipe.load import load_recipe
    from recipec.recipe.spec import Recipe

__all__ = ["Compiled", "Recipe", "RecipecError", "build", "compile_recipe", "load", "load_predictor", "load_recipe"]
__version__ = "0.1.0"

_LAZY = {
    "build": "recipec.build",
    "load": "recipec.restore",
    "load_predictor": "recipec.restore",
    "Compiled": "recipec.compiler",
    "compile_recipe": "recipec.compiler",
    "load_recipe": "recipec.recipe.load",
    "Recipe": "recipec.recipe.spec",
}


def __getattr__(name: str) -> Any:
    # Lazy so that `import recipec` stays cheap and torch-free until a model is needed.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'recipec' has no attribute {name!r}")


class _Package(types.ModuleType):
    """The ``recipec`` package, whose public names win over its submodules of the same name.

    Importing ``recipec.build`` (the module) binds it on the package, which would turn
    ``recipec.build`` (the function) into a module after its first call; the submodule stays
    reachable as ``sys.modules["recipec.build"]`` and through ``from recipec.build import ...``.
    """

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _LAZY and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
