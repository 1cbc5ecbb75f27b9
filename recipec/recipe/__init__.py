"""The recipe language: Pydantic models of a recipe and the loader that reads, resolves and locates them.

Imports no torch.
"""

from recipec.recipe.load import dump_recipe, load_recipe, recipe_location
from recipec.recipe.spec import Recipe

__all__ = ["Recipe", "dump_recipe", "load_recipe", "recipe_location"]
