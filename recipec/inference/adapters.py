"""``recipec.load(RUN/adapters)``: a run's separate adapter files (``export.adapters: separate | both``) on their base.

The folder holds PEFT's own ``adapter_config.json`` + ``adapter_model.safetensors`` (which also
carries the run's recipe and provenance, as every export does). The base is rebuilt as the run
compiled it before training: ``model.arch`` with ``model.weights`` (a pretrained file from the
local cache, whose sha256 must be the one recorded; random weights come from the recipe's seed),
the new head and the adapters; then the adapters' and the head's trained tensors are loaded and
the adapters merged, so the result is the plain model the merged exports hold.
"""

from __future__ import annotations

import os
from pathlib import Path

from torch import nn

from recipec.compiler.compile import compile_recipe
from recipec.errors import CheckpointError
from recipec.model.adapters import import_peft, injection_root, merge_adapters
from recipec.model.factory import check_factory_trust, factory_names
from recipec.recipe.archs import family_name
from recipec.provenance import file_digest
from recipec.recipe.embedded import recipe_from_metadata
from recipec.weights import formats

__all__ = ["adapters_folder", "model_from_adapters"]

_FILES = ("adapter_config.json", "adapter_model.safetensors")
_PREFIX = "base_model.model."  # PeftModel's key prefix in adapter_model.safetensors


def adapters_folder(path: str | os.PathLike[str]) -> Path | None:
    """The adapter folder ``path`` names (the folder, or its ``adapter_model.safetensors``), or None."""
    path = Path(path)
    folder = path.parent if path.name == _FILES[1] else path
    return folder if all((folder / name).is_file() for name in _FILES) else None


def model_from_adapters(folder: Path, *, trust_factories: object = ()) -> nn.Module:
    """The run's model from its adapter folder: base + adapters + head, merged, in eval mode.

    Raises:
        CheckpointError: the folder's recipe is missing (written before recipec stored it), the base
            weights are not the recorded ones, or the tensors do not fit.
        UntrustedFactoryError: the recipe names a custom factory you did not trust; nothing was imported.
    """
    file = folder / _FILES[1]
    checkpoint = formats.load(file)
    if not any(isinstance(k, str) and k.startswith("recipec.") for k in checkpoint.metadata):
        raise CheckpointError(f"{file}: carries no recipec recipe (written by an earlier recipec, or by PEFT): load it "
                              "with peft.PeftModel.from_pretrained(base, folder) on the base its provenance.json names")
    recipe, provenance = recipe_from_metadata(checkpoint.metadata, file)
    if family_name(recipe.model.arch) == "factory":  # a recipe from a file: its factory runs only if trusted
        check_factory_trust(recipe.model.arch, factory_names(trust_factories), origin=str(file))  # type: ignore[arg-type]
    compiled = compile_recipe(recipe, device="cpu")  # the base as the run compiled it: weights, head, adapters
    recorded = (provenance.get("base") or {}).get("sha256")
    weights = getattr(compiled.weights_info, "path", None)
    if recorded and weights and Path(weights).is_file() and file_digest(Path(weights)) != recorded:
        raise CheckpointError(f"{file}: its base weights {weights} are not the ones the adapters were trained on "
                              f"(sha256 {recorded} recorded)")
    model = compiled.model
    head = compiled.head_prefix.rstrip(".")
    state = {k.removeprefix(_PREFIX): v for k, v in checkpoint.state_dict.items()}
    head_state = {k[len(head) + 1:]: v for k, v in state.items() if k.startswith(head + ".")}
    adapter_state = {k: v for k, v in state.items() if not k.startswith(head + ".")}
    root, _ = injection_root(model)
    try:
        model.get_submodule(head).load_state_dict(head_state, strict=True)
        result = import_peft().set_peft_model_state_dict(root, adapter_state)
    except RuntimeError as exc:
        raise CheckpointError(f"{file}: its tensors do not fit the model its recipe describes: {exc}") from exc
    unexpected = list(getattr(result, "unexpected_keys", []) or [])
    if unexpected:
        raise CheckpointError(f"{file}: holds tensors the adapted model lacks: {', '.join(unexpected[:5])}")
    merge_adapters(model)
    return model.eval()
