"""A run's adapters at export time: PEFT's own files (``export.adapters: separate | both``), then merged
into the weights, so every other export, ``predict`` and ``eval`` see a plain model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from recipec.convert import adapters as adapter_files
from recipec.errors import ModelError
from recipec.model.adapters import merge_adapters
from recipec.provenance import file_digest
from recipec.recipe.load import dump_recipe
from recipec.recipe.spec import Recipe

__all__ = ["adapter_provenance", "check_adapter_world", "finish_adapters"]


def check_adapter_world(recipe: Recipe, *, distributed: bool) -> None:
    """Adapters under ``--nproc`` (DDP) are refused until a test covers them.

    Raises:
        ModelError: at ``adapters``.
    """
    if recipe.adapters is not None and distributed:
        raise ModelError((("adapters",), "is not supported with several processes (--nproc / torchrun) yet: DDP "
                                         "with adapters is untested; run in one process"))


def adapter_provenance(recipe: Recipe, plan: dict[str, Any]) -> dict[str, Any]:
    """What the exports and the card record of the adapters (empty without them)."""
    if recipe.adapters is None or "adapters" not in plan:
        return {}
    a = plan["adapters"]
    trainable = max(a["trainable"], default=0)
    return {"adapters": {"method": a["method"], "r": a["r"], "alpha": a["alpha"], "dropout": a["dropout"],
                         "target": a["target"], "modules": [m for g in a["groups"].values() for m in g["modules"]],
                         "adapter_params": a["adapter_params"], "trainable_params": trainable,
                         "total_params": a["total"], "trainable_share": trainable / a["total"] if a["total"] else 0.0,
                         "export": recipe.export.adapters, "merged": True}}


def finish_adapters(recipe: Recipe, compiled: Any, run: Path, provenance: dict[str, Any]) -> list[Path]:
    """Write ``RUN/adapters/`` when ``export.adapters`` asks for it, then merge the adapters into
    ``compiled.model`` (in place). Returns the files written."""
    if recipe.adapters is None:
        return []
    written: list[Path] = []
    if recipe.export.adapters in ("separate", "both"):
        weights = compiled.weights_info
        path = Path(weights.path) if weights is not None and getattr(weights, "path", None) else None
        base = {"arch": recipe.model.arch, "kwargs": recipe.model.kwargs,
                "weights": weights.name if weights is not None else None,
                "sha256": file_digest(path) if path is not None and path.is_file() else None,
                "head": compiled.head_prefix.rstrip("."),
                "note": "PeftModel.from_pretrained(base, this folder): base is model.arch with model.weights "
                        "(random init: seed) and a new head of num_classes; the head's weights are in this folder"}
        written = adapter_files.save(compiled.model, run / "adapters", head=compiled.head_prefix.rstrip("."),
                                     recipe_yaml=dump_recipe(recipe, relative_to=run / "adapters"),
                                     provenance={"base": base, "name": recipe.name, "seed": recipe.seed,
                                                 "classes": provenance.get("classes"),
                                                 **adapter_provenance(recipe, compiled.plan.data)})
    merge_adapters(compiled.model)
    return written
