"""The ONNX target of ``recipec convert`` (and of a build's exports): the architecture a recipe
describes, rebuilt with a checkpoint's tensors loaded strictly, exported and verified.

The architecture comes from ``--recipe`` or from the recipe the checkpoint carries
(:func:`embedded_recipe`); a file never names code that runs, so a custom factory goes through
:func:`recipec.inference.restore.build_model` and its ``trust_factories``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from recipec._atomic import atomic_path
from recipec.compiler.compile import resolve_preprocessing, transfer_rules
from recipec.errors import CheckpointError, ExportError, TransferError
from recipec.inference.restore import build_model
from recipec.model.heads import renamed_legacy_heads
from recipec.provenance import read_export_metadata
from recipec.recipe._yaml import read_embedded
from recipec.recipe.load import recipe_location
from recipec.recipe.spec import Recipe
from recipec.weights._keys import prefix_fix
from recipec.weights.onnx import export_onnx, verify_onnx
from recipec.weights.transfer import map_state_dict

__all__ = ["embedded_recipe", "rebuild", "to_onnx"]


def embedded_recipe(metadata: Mapping[str, str], source: Path) -> Recipe:
    recipe_yaml, _ = read_export_metadata(metadata)
    if recipe_yaml is None:
        raise CheckpointError(f"{source}: the checkpoint carries no recipe, so the architecture is unknown; pass --recipe")
    try:
        return Recipe.model_validate(read_embedded(recipe_yaml, str(source)))
    except Exception as exc:  # pydantic or YAML: the embedded recipe is damaged
        raise CheckpointError(f"{source}: the embedded recipe is not valid ({_first_line(exc)}); pass --recipe") from exc


def rebuild(recipe: Recipe, state: Mapping[str, torch.Tensor], source: Path, trust_factories: bool | tuple[str, ...],
            metadata: Mapping[str, str] | None = None, *, mapped: bool = False,
            ) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """The architecture the recipe describes (as ``recipec.load`` builds it), with ``state`` loaded strictly,
    and the tensors it was loaded from; ``metadata``: the source's, whose provenance an ``hf/`` model is
    rebuilt from (its recorded config). ``mapped``: ``state`` is first mapped onto the model's keys by the
    recipe's ``source:`` section, as ``recipec build`` maps it."""
    spec = recipe.model
    _, provenance = read_export_metadata(metadata or {})
    model = build_model(recipe, trust_factories=trust_factories, origin=str(source), provenance=provenance)
    # mapped: as recipec build maps it; else only fc.1.weight of earlier recipec versions -> fc.weight
    state = _mapped(recipe, model, state, source) if mapped else renamed_legacy_heads(state, model)
    expected = model.state_dict()
    lacking, extra = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    problems = [f"{source}: lacks {k!r}, which {spec.arch} has" for k in lacking[:10]]
    problems += [f"{source}: has {k!r}, which {spec.arch} lacks" for k in extra[:10]]
    problems += [f"{source}: {k!r} has shape {list(state[k].shape)}, but {spec.arch} has {list(v.shape)}"
                 for k, v in expected.items() if k in state and state[k].shape != v.shape][:10]
    if problems:
        fix = prefix_fix(extra, lacking)
        advice = (f"the source's keys are {spec.arch}'s with {fix.describe()}: pass "
                  + (f"--strip-prefix {fix.strip}" if fix.strip else f"--rename '^' '{fix.add}'")) if fix else \
            "pass the recipe the checkpoint was trained with (--recipe)"
        raise CheckpointError([*problems, f"the tensors do not fit the architecture the recipe describes; {advice}"])
    model.load_state_dict(state, strict=True)  # copies into the model's float32 parameters
    return model.eval(), dict(state)


def _mapped(recipe: Recipe, model: nn.Module, state: Mapping[str, torch.Tensor], source: Path) -> dict[str, torch.Tensor]:
    """``state`` under the model's keys, through the recipe's source: section; errors located in the recipe."""
    try:
        mapped, report = map_state_dict(model, state, transfer_rules(recipe))
    except TransferError as exc:
        located = exc.relabeled(prefix=("source",), default=("source",))
        raise TransferError([f"{where}: {problem}" if (where := recipe_location(recipe, path or ())) else problem
                             for path, problem in zip(located.paths, located.problems)]) from exc
    if report.unexpected:  # apply_transfer leaves them behind; a conversion that fits must not
        shown = ", ".join(repr(report.unexpected_sources.get(k, k)) for k in report.unexpected[:10])
        raise CheckpointError(f"{source}: {len(report.unexpected)} tensors that {recipe.model.arch} lacks after the "
                              f"recipe's source: mapping: {shown}; exclude them (source.exclude)")
    own = model.state_dict()
    return mapped | {k: own[k] for k in report.defaulted}  # num_batches_tracked the source lacks: the model's


def to_onnx(model: nn.Module, recipe: Recipe, target: Path, metadata: dict[str, str]) -> Path:
    """Export ``model`` to ONNX as ``recipe.export.onnx`` says, verified before it appears at ``target``."""
    options = recipe.export.onnx
    side = recipe.data.image_size
    if not isinstance(side, int):  # data.image_size: from_weights
        side = resolve_preprocessing(recipe)["image_size"]
    shape = (1, recipe.model.in_channels, side, side)
    # Export and verify under a temporary name: a file that fails verification never appears as dst.
    with atomic_path(target) as tmp:
        try:
            export_onnx(model, tmp, input_shape=shape, opset=options.opset, dynamic_batch=options.dynamic_batch,
                        metadata=metadata, arch=recipe.model.arch)
            if options.verify:
                verify_onnx(model, tmp, input_shape=shape, atol=options.atol)
        except ExportError as exc:
            raise ExportError([p.replace(str(tmp), str(target)) for p in exc.problems]) from exc
    return target


def _first_line(exc: BaseException) -> str:
    return next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
