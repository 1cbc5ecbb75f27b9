"""``source.recipe``: start from the export of another recipe's run, built first when it is missing.

Part of the build layer: :func:`resolve_upstream` runs the build it is given
(:func:`recipec.pipeline.build.build`, which calls it) for the upstream recipe, and reuses its run only while that run's ``recipe.yaml`` is the upstream
recipe as resolved now.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from recipec._files import read_regular
from recipec.errors import RecipecError, RecipeError, RunDirectoryError
from recipec.pipeline.runs import run_directory
from recipec.pipeline.smoke import smoke_recipe
from recipec.recipe._yaml import MAX_RECIPE_BYTES, read_embedded
from recipec.recipe.load import dump_recipe, load_recipe, resolve_paths
from recipec.recipe.spec import Recipe
from recipec.train.state import checkpoint_files

__all__ = ["resolve_upstream", "same_recipe"]


def resolve_upstream(recipe: Recipe, *, build_missing: bool, build: Callable[..., Any] | None = None,
                     log: Callable[[str], None] | None = None, _chain: tuple[str, ...] = (),
                     smoke_into: Path | None = None) -> Recipe:
    """Turn ``source.recipe`` into ``source.checkpoint``: the export of the upstream run.

    The upstream run is ``runs/<upstream name>`` (relative to the working directory). It is
    reused when its ``recipe.yaml`` is the upstream recipe as resolved now (a cache keyed by
    the whole recipe), built first with ``build`` (:func:`recipec.pipeline.build.build`) when absent
    and ``build_missing``, and an error otherwise.

    Raises:
        RecipeError: the upstream recipe is invalid, circular, or built from another recipe.
        RunDirectoryError: it is not built and ``build_missing`` is false.
    """
    if recipe.source is None or recipe.source.recipe is None:
        return recipe
    path = recipe.source.recipe
    at = ("source", "recipe")
    if str(Path(path).resolve()) in _chain:
        raise RecipeError([(at, f"recipes build each other in a circle: {' -> '.join((*_chain, path))}")])
    try:
        upstream = load_recipe(path)
    except RecipeError as exc:
        raise RecipeError([(at, f"upstream recipe {path}: {p}") for p in exc.problems]) from exc
    run = run_directory(upstream)
    expected = upstream
    if smoke_into is not None and not run.exists():  # a smoke run smoke-builds its upstream beside itself
        run, expected = smoke_into / f"upstream-{upstream.name}", smoke_recipe(upstream)
    built = run / "recipe.yaml"
    if built.exists() and not same_recipe(built, expected):
        raise RecipeError([(at, f"the upstream run {run} was built from another version of {path}; "
                                "remove it (or build it again elsewhere) so it can be rebuilt")])
    export = next((run / n for n in ("model.safetensors", "model.pt") if (run / n).exists()), None)
    if export is None:
        if not build_missing or build is None:
            raise RunDirectoryError([(at, f"the upstream run {run} is not built yet; run `recipec build {path}` "
                                          "(recipec build does it for you)")])
        # an upstream build that was interrupted continues from its checkpoints (its recipe.yaml is the same)
        again = smoke_into is None and bool(checkpoint_files(run / "checkpoints"))
        if log is not None:
            log(f"{'resuming' if again else 'building'} upstream recipe {path} into {run}")
        build(upstream, log=log, _chain=(*_chain, str(Path(path).resolve())), out=run if smoke_into else None,
              smoke=2 if smoke_into else None, resume=again)
        export = next((run / n for n in ("model.safetensors", "model.pt") if (run / n).exists()), None)
        if export is None:
            raise RecipeError([(at, f"the upstream recipe {path} exports neither safetensors nor torch; "
                                    "add one of them to its export.formats")])
    source = recipe.source.model_copy(update={"recipe": None, "checkpoint": str(export.resolve())})
    return recipe.model_copy(update={"source": source})


def same_recipe(built: Path, recipe: Recipe) -> bool:
    """Whether a run's ``recipe.yaml`` (paths relative to its directory, or absolute) is ``recipe``."""
    try:  # regular files only (a FIFO must not hang the build), bounded as a recipe is
        text = read_regular(built, what="recipe", error=RunDirectoryError, max_bytes=MAX_RECIPE_BYTES)
        saved = resolve_paths(read_embedded(text.decode("utf-8"), str(built)), built.parent)
    except (OSError, UnicodeDecodeError, RecipecError):
        return False
    return bool(saved == yaml.safe_load(dump_recipe(recipe)))
