"""Recipe -> Compiled: the model with its weights, the layer groups, the freezing schedule,
the optimizer and the scheduler, and the Plan that shows all of it before any training.

Order matters and is fixed: build the architecture, replace the head, load
``model.weights`` (the replaced head excluded), adapt the input convolution, apply
``source``; nothing loaded is re-initialised afterwards. Then groups, schedule and
optimizer, with every group in the optimizer from the start.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from recipec.compiler.adapters import adapters_plan, apply_adapters, check_adapter_export
from recipec.compiler.fit_config import FREEZE_FIELDS, lr_shape
from recipec.compiler.plan import Plan, Planned, build_plan
from recipec.data.transforms import resize_rule
from recipec.device import resolve_device
from recipec.errors import CheckpointError, ModelError, Problem, RecipecError, TransferError, relabeled
from recipec.model import families, heads, pretrained, zoo
from recipec.model.families import weights_normalization
from recipec.model.groups import LayerGroup, assign_groups
from recipec.model.hf import hub_layout_problem
from recipec.model.heads import HeadInfo
from recipec.model.pretrained import WeightsInfo
from recipec.model.timm_weights import timm_filtered
from recipec.provenance import read_export_metadata
from recipec.recipe.spec import Recipe
from recipec.train.freezing import FreezeSchedule, apply_trainable, compile_schedule, fixed_parameters, keep_fixed
from recipec.train.optim import build_optimizer, build_param_groups
from recipec.train.schedule import build_scheduler
from recipec.weights import formats, raw
from recipec.weights.transfer import LoadReport, TransferRules, apply_transfer

__all__ = ["Compiled", "compile_recipe", "resolve_normalization", "resolve_preprocessing", "transfer_rules"]


@dataclass
class Compiled:
    """Everything a fit loop needs, built from one recipe."""

    recipe: Recipe
    model: nn.Module
    device: torch.device
    groups: list[LayerGroup]     # earliest first, head last
    schedule: FreezeSchedule
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    plan: Plan
    reports: dict[str, LoadReport] = field(default_factory=dict)   # stage ("model.weights", "source") -> its report
    head: HeadInfo | None = None   # the new head, or None when the architecture's own is kept
    head_prefix: str = ""        # state-dict prefix of the head ("fc.")
    normalization: tuple[tuple[float, ...], tuple[float, ...]] | None = None   # mean/std of the pretraining
    weights_info: WeightsInfo | None = None   # model.weights, or None

    @property
    def load_report(self) -> Any:
        """The report of the last stage that loaded weights (source, else model.weights), or None."""
        return self.reports.get("source") or self.reports.get("model.weights")


def compile_recipe(recipe: Recipe, *, device: str | None = None, steps_per_epoch: int = 1) -> Compiled:
    """Compile a recipe into a model and optimizer on the recipe's device.

    Args:
        recipe: a validated recipe (see :func:`recipec.load_recipe`).
        device: overrides ``recipe.device``.
        steps_per_epoch: optimizer steps per epoch, for the per-step scheduler; the plan's
            per-epoch table does not depend on it.

    Returns:
        The compiled model, groups, schedule, optimizer, scheduler and plan.

    Raises:
        RecipecError: any problem with the architecture, weights, source checkpoint, groups,
            schedule or device; problems caused by a recipe value carry its recipe path.

    Example:
        >>> compiled = compile_recipe(load_recipe("recipes/quickstart.yaml"))
        >>> print(compiled.plan.text())
    """
    spec = recipe.model
    target = resolve_device(device or recipe.device)
    torch.manual_seed(recipe.seed)

    with _cwd_importable():
        model = families.build_architecture(spec.arch, spec.kwargs, pretrained=spec.weights is not None,
                                            weights=spec.weights)
    fixed = keep_fixed(model)  # what the architecture freezes itself stays frozen (a replaced head is new)
    head_info = None
    if spec.head is not None:
        head_info = families.replace_head(
            model, spec.arch, num_classes=spec.head.num_classes, type=spec.head.type, hidden=spec.head.hidden,
            dropout=spec.head.dropout, activation=spec.head.activation, at=spec.head.at)
        head_prefix = head_info.param_prefix
    else:
        head_prefix = families.default_head_path(model, spec.arch) + "."
    new_prefixes = [head_prefix, *head_info.aux_prefixes] if head_info is not None else []
    hub_why = hub_layout_problem(model) if "hub" in recipe.export.formats else None  # an hf/ tower: known before training
    if hub_why:
        raise ModelError((("export", "formats"), hub_why))
    # a non-default value, not merely a written one: a dumped recipe.yaml writes every field, defaults included
    default_aux = type(spec).model_fields["aux_loss_weight"].default
    if spec.aux_loss_weight != default_aux and not heads.aux_classifiers(model):
        raise ModelError((("model", "aux_loss_weight"), (
            f"{spec.arch} has no auxiliary classifiers; it applies to googlenet and inception_v3 built with "
            "model.kwargs.aux_logits: true (remove it, or set aux_logits)")))

    reports: dict[str, Any] = {}
    weights_info = None
    normalization = None
    if spec.weights is not None:
        state_dict, weights_info = families.load_pretrained_weights(spec.arch, spec.weights)
        # the replaced head and the replaced layers of auxiliary classifiers, as far as the weights hold them
        # (a backbone's weights, facebook/dinov2-small's, have no classifier)
        exclude = [f"^{_escape(prefix)}" for prefix in new_prefixes if any(key.startswith(prefix) for key in state_dict)]
        reports["model.weights"] = _transfer(
            apply_transfer, ("model", "weights"), model, state_dict, TransferRules(
                exclude=exclude, adapt=pretrained.position_embedding_adapts(model, state_dict)),  # a ViT at another image size
            new_keys_prefixes=new_prefixes, source=weights_info.name)
        normalization = weights_info.normalization
    if spec.in_channels != 3:
        conv = zoo.first_conv_path(model)
        before = list(_weight(model, conv).shape)
        zoo.set_input_channels(model, spec.in_channels)
        keep_fixed(model, fixed)  # a fixed first convolution stays fixed when rebuilt
        if "model.weights" in reports:  # the pretrained filters were adapted, not re-initialised
            reports["model.weights"].adapted.append({
                "key": f"{conv}.weight", "rule": "input_channels",
                "source_shape": before, "model_shape": list(_weight(model, conv).shape)})

    if recipe.source is not None:
        reports["source"] = _apply_source(recipe, model, new_prefixes)

    group_specs = ([(g.name, list(g.match)) for g in recipe.groups] if recipe.groups is not None
                   else families.preset_groups(spec.arch, model, head_prefix, fine=spec.group_matcher == "fine"))
    groups = assign_groups(model, group_specs, head_prefix=head_prefix, from_recipe=recipe.groups is not None)
    if recipe.adapters is not None:  # after every weight is loaded: injection renames the adapted weights
        groups = apply_adapters(recipe, model, groups, new_prefixes=new_prefixes)
    names = [g.name for g in groups]
    freeze = recipe.freeze
    with relabeled(FREEZE_FIELDS):  # compile_schedule names its arguments; the recipe's paths are freeze.*
        schedule = compile_schedule(
            names, epochs=recipe.train.epochs, trainable=freeze.trainable, unfreeze=freeze.unfreeze,
            gradual_every=freeze.gradual.every if freeze.gradual else None,
            gradual_start=freeze.gradual.start if freeze.gradual else 1)
    apply_trainable(model, groups, schedule.trainable_at(0))
    model.to(target)

    opt = recipe.optimizer
    with relabeled(prefix=("optimizer",)):  # their arguments are optimizer.*: group_lr, no_weight_decay, name
        param_groups = build_param_groups(
            model, groups, lr=opt.lr, lr_decay=opt.lr_decay, group_lr=opt.group_lr,
            weight_decay=opt.weight_decay, no_weight_decay=opt.no_weight_decay)
        optimizer = build_optimizer(param_groups, name=opt.name, lr=opt.lr, momentum=opt.momentum,
                                    nesterov=opt.nesterov, betas=opt.betas)
    # onecycle's shape carries total_steps too (the plan's table needs them): the same number
    shape = lr_shape(opt.scheduler, recipe.train.epochs, steps_per_epoch=max(1, steps_per_epoch))
    scheduler = build_scheduler(optimizer, shape, total_steps=recipe.train.epochs * max(1, steps_per_epoch))

    plan = build_plan(recipe, Planned(model=model, device=target, groups=groups, schedule=schedule, optimizer=optimizer,
                                      reports=reports, head=head_info, head_prefix=head_prefix, lr_shape=shape,
                                      weights_info=weights_info, normalization=normalization,
                                      fixed=fixed_parameters(model)))
    if recipe.adapters is not None:
        check_adapter_export(recipe, groups, schedule)
        plan.data["adapters"] = adapters_plan(recipe, model, groups, schedule, fixed_parameters(model))
        plan.data["parameters"]["trainable"] = plan.data["adapters"]["trainable"]
    stats, origin = resolve_normalization(recipe)
    plan.data["data_preprocessing"] = resolve_preprocessing(recipe)  # the resize the data will get
    plan.data["data_normalization"] = {"mean": None if stats is None else list(stats[0]),
                                       "std": None if stats is None else list(stats[1]), "from": origin}
    return Compiled(recipe=recipe, model=model, device=target, groups=groups, schedule=schedule,
                    optimizer=optimizer, scheduler=scheduler, plan=plan, reports=reports, head=head_info,
                    head_prefix=head_prefix, normalization=normalization, weights_info=weights_info)


NOT_NORMALISED = ("inputs are NOT normalised: source.checkpoint {source} records no normalisation{weights} "
                  "(data.normalize: from_weights); set data.normalize: imagenet, or none to say so")


def resolve_normalization(recipe: Recipe) -> tuple[tuple[tuple[float, ...], tuple[float, ...]] | None, str]:
    """The (mean, std) the data will be normalised with (before channel adaptation), and where it comes from.

    ``data.normalize: from_weights`` follows the weights the model ends up with: a recipec
    export in ``source.checkpoint`` (``source.recipe`` resolves to one) records the
    normalisation it was trained with, and that wins; otherwise ``model.weights``' transforms.
    A foreign source checkpoint without ``model.weights`` records nothing: no normalisation,
    and the origin says so loudly (:data:`NOT_NORMALISED`).
    """
    normalize = recipe.data.normalize
    if normalize == "imagenet":
        return ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)), "ImageNet statistics (data.normalize: imagenet)"
    if normalize == "none":
        return None, "none (data.normalize: none)"
    source = recipe.source.checkpoint if recipe.source is not None else None
    if source:
        try:
            _, provenance = read_export_metadata(formats.read_metadata(source))
        except (RecipecError, OSError):
            provenance = {}  # unreadable here: the source stage reports it
        if "normalization" in provenance:
            recorded = provenance["normalization"]
            if isinstance(recorded, dict) and recorded.get("mean") and recorded.get("std"):
                return ((tuple(float(v) for v in recorded["mean"]), tuple(float(v) for v in recorded["std"])),
                        f"the metadata of source.checkpoint {source} (data.normalize: from_weights)")
            return None, f"none: source.checkpoint {source} was trained without normalisation (its metadata says so)"
    if recipe.model.weights is not None:
        stats = weights_normalization(recipe.model.arch, recipe.model.weights)
        if stats is not None:
            return stats, f"the transforms of {recipe.model.weights} (data.normalize: from_weights)"
    if source:
        weights = "" if recipe.model.weights is None else f" (nor do the transforms of {recipe.model.weights})"
        return None, NOT_NORMALISED.format(source=source, weights=weights)
    return None, "none (no pretrained weights; data.normalize: from_weights)"


def resolve_preprocessing(recipe: Recipe) -> dict[str, Any]:
    """How the data will be resized: :func:`recipec.data.transforms.resize_rule` for ``data.image_size``,
    ``data.resize`` and the preprocessing of ``model.weights`` (timm ``pretrained_cfg``,
    torchvision ``transforms()``); custom factories and ``weights: null`` have none.

    Raises:
        DatasetError: ``data.image_size: from_weights`` without such weights.
    """
    spec = recipe.model
    preprocessing = None
    if spec.weights is not None:  # None for a custom factory: its family has no pretrained weights
        preprocessing = families.weights_preprocessing(spec.arch, spec.weights)
    with relabeled({"image_size": ("data", "image_size")}):  # resize_rule names its own argument
        return resize_rule(recipe.data.image_size, recipe.data.resize, preprocessing, spec.weights)


@contextlib.contextmanager
def _cwd_importable() -> Iterator[None]:
    """Let "package.module:factory" find modules in the working directory, as ``python -m`` does."""
    cwd = os.getcwd()
    added = cwd not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        yield
    finally:
        if added and cwd in sys.path:
            sys.path.remove(cwd)


def _weight(model: nn.Module, path: str) -> torch.Tensor:
    weight = model.get_submodule(path).weight
    assert isinstance(weight, torch.Tensor)
    return weight


def _escape(prefix: str) -> str:
    return re.escape(prefix)


def _attributed(exc: RecipecError, at: tuple[str, ...]) -> RecipecError:
    """The same error, its problems without a recipe path attributed to ``at``."""
    problems: list[Problem] = []
    for path, text in zip(exc.paths, exc.problems):
        problems.append((path, text.split(": ", 1)[1]) if path else (at, text))
    return type(exc)(problems)


def _transfer(fn: Any, at: tuple[str, ...], *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)``; a TransferError's rule fields become ``source.*``, path-less problems ``at``."""
    try:
        return fn(*args, **kwargs)
    except TransferError as exc:
        raise exc.relabeled(prefix=("source",), default=at) from exc


def _apply_source(recipe: Recipe, model: nn.Module, new_prefixes: list[str]) -> Any:
    source = recipe.source
    assert source is not None
    if source.recipe is not None:
        raise CheckpointError([(("source", "recipe"),
                                "an upstream recipe must be built first: recipec build and recipec plan do it "
                                "(recipec.pipeline.upstream.resolve_upstream turns it into source.checkpoint)")])
    path = Path(source.checkpoint or "")
    try:
        if source.sha256 is not None:
            digest = raw.sha256(path)
            if digest.lower() != source.sha256.lower():
                raise CheckpointError([(("source", "sha256"),
                                        f"{path} has sha256 {digest}, the recipe pins {source.sha256}")])
        checkpoint = formats.load(path, state_dict_key=source.state_dict_key, allow_globals=source.allow_globals)
    except CheckpointError as exc:
        raise _attributed(exc, ("source", "checkpoint")) from exc
    state, ran = checkpoint.state_dict, ""
    if not source.rename:  # a head of Sequential(Dropout, Linear), as earlier recipec wrote it: fc.1.weight -> fc.weight
        state = heads.renamed_legacy_heads(state, model)
    if source.timm_filter:  # timm's own checkpoint_filter_fn of model.arch converts an official layout first
        state, ran = timm_filtered(recipe.model.arch, model, dict(state))
    report = _transfer(apply_transfer, ("source",), model, state, transfer_rules(recipe),
                       new_keys_prefixes=new_prefixes, source=str(path), state_dict_key=checkpoint.key)
    report.filter = ran
    return report


def transfer_rules(recipe: Recipe) -> TransferRules:
    """The key mapping of the recipe's ``source:`` section (its problems name ``rename``, ``exclude``...:
    relabel them with the prefix ``source``)."""
    source = recipe.source
    assert source is not None
    return TransferRules(rename=[tuple(r) for r in source.rename], include=source.include, exclude=source.exclude,
                         adapt=[a.model_dump() for a in source.adapt], on_mismatch=source.on_mismatch,
                         require_all=source.require_all, preset=source.preset)
