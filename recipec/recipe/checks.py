"""What ``recipec validate`` checks beyond the schema, torch-free and fast: :func:`recipe_problems`.

A name no model family knows (``arch: resnet181``) and a path that is not there (``data.root``,
``source.checkpoint``, ``source.recipe``, ``card.template``) are found here, before anything is
built; ``recipec plan`` finds them too (it builds the model and reads the data), and more.
"""

from __future__ import annotations

from recipec.errors import RecipePath
from recipec.recipe.archs import arch_problem
from recipec.recipe.paths import path_problems
from recipec.recipe.spec import Recipe

__all__ = ["recipe_problems"]


def recipe_problems(recipe: Recipe) -> list[tuple[RecipePath, str]]:
    """Every unknown architecture name and missing path of a loaded recipe, as ``(recipe path, message)``.

    Args:
        recipe: as :func:`recipec.recipe.load.load_recipe` returns it (paths absolute).

    Returns:
        The problems, architecture first; empty when there are none.

    Example:
        >>> recipe_problems(load_recipe("r.yaml"))
        [(('model', 'arch'), "unknown architecture 'resnet181'; did you mean 'resnet18' or ...")]
    """
    problems: list[tuple[RecipePath, str]] = []
    arch = arch_problem(recipe.model.arch)
    if arch is not None:
        problems.append((("model", "arch"), arch))
    return problems + path_problems(recipe.model_dump(mode="python"))
