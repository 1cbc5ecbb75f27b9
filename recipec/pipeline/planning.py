"""What a build settles before it trains, and ``recipec plan`` shows: the data against the recipe, and the plan."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from recipec.compiler.compile import NOT_NORMALISED, compile_recipe, resolve_normalization, resolve_preprocessing
from recipec.compiler.data_config import build_data, data_config, data_plan
from recipec.compiler.fit_config import craft_plan
from recipec.errors import RecipeError, warn
from recipec.recipe.spec import Recipe

__all__ = ["check_classes", "note_data", "plan_recipe", "steps_per_epoch"]


def plan_recipe(recipe: Recipe, *, device: str | None = None) -> tuple[Any, dict[str, Any]]:
    """What ``recipec plan`` shows: the compiled recipe and the plan.json a one-process build would write.

    The data is built (listed and split, not trained on) so that the lr table is tabulated at
    the real optimizer steps per epoch: a per-step schedule (onecycle, warmup) is at a different
    point at the start of each epoch with 10 steps per epoch than with 1.

    Raises:
        RecipecError: the data does not fit the recipe, or the recipe does not compile.
    """
    data = build_data(data_config(recipe))
    note_data(recipe, data, lambda line: None, lambda text: None)  # the plan itself says it
    check_classes(recipe, data)
    steps = steps_per_epoch(recipe, data)
    compiled = compile_recipe(recipe, device=device, steps_per_epoch=steps)
    compiled.plan.data.update(craft_plan(recipe, data))  # loss (class weights resolved), ema, select
    compiled.plan.data.update(data_plan(recipe, data))  # transforms in order, mixup/cutmix, sampler
    return compiled, compiled.plan.to_dict() | {"data": data.info, "steps_per_epoch": steps, "world_size": 1}


def check_classes(recipe: Recipe, data: Any) -> None:
    """The head's ``num_classes`` against the classes the data has (a located RecipeError)."""
    if recipe.model.head is not None and recipe.model.head.num_classes != len(data.classes):
        raise RecipeError([(("model", "head", "num_classes"),
                            f"is {recipe.model.head.num_classes} but the data has {len(data.classes)} classes "
                            f"({', '.join(data.classes[:10])}{', ...' if len(data.classes) > 10 else ''})")])


def steps_per_epoch(recipe: Recipe, data: Any) -> int:
    """Optimizer steps per epoch: batches (the single last one dropped, see data) over accumulation."""
    return math.ceil(len(data.train) / recipe.train.accumulate)


def note_data(recipe: Recipe, data: Any, say: Callable[[str], None], alert: Callable[[str], None] = warn) -> None:
    """Record where the normalisation came from; say what the user must not miss (no normalisation, skipped files)."""
    stats, origin = resolve_normalization(recipe)
    data.info["normalize"] = {**data.info.get("normalize", {}), "from": origin}
    if "resize" in data.info:  # what was applied, with the weights' crop_pct and where the rule came from
        rule = resolve_preprocessing(recipe)
        data.info["resize"] |= {k: rule[k] for k in ("crop_pct", "from", "summary")}
    if stats is None and recipe.data.normalize == "from_weights":
        data.info["normalize"]["applied"] = f"none ({origin})"
        if origin.startswith(NOT_NORMALISED[:20]):
            alert(origin)
    skipped = data.info.get("skipped_images") or []
    if skipped:
        say(f"skipped {len(skipped)} unreadable image(s) (data.on_bad_image: skip), listed in skipped_images.txt: "
            + ", ".join(skipped[:3]) + (", ..." if len(skipped) > 3 else ""))
