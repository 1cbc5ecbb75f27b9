"""The recipe's ``adapters:`` section, compiled: inject the adapters, put their parameters in
their module's layer group, mark what trains, and describe it in the plan.

Compiled like freezing: an adapted module's base weights never train; its adapter parameters
train from epoch 0 (as the new head does) in the module's group, so they take that group's
learning rate (``lr_decay``, ``group_lr``) and weight-decay rules; ``freeze`` keeps governing
every other weight.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from recipec.errors import ModelError, relabeled
from recipec.model.adapters import ADAPTER_KEY, adapted_module, inject_adapters, injection_root, resolve_targets
from recipec.model.groups import LayerGroup, param_to_group
from recipec.recipe.spec import Recipe
from recipec.train.freezing import FreezeSchedule, adapter_parameters, mark_adapters

__all__ = ["adapter_lines", "adapters_plan", "apply_adapters", "check_adapter_export"]

_STATES_PER_PARAM = {"adam": 2, "adamw": 2}  # exp_avg, exp_avg_sq; sgd: its momentum buffer, if any


def apply_adapters(recipe: Recipe, model: nn.Module, groups: list[LayerGroup], *,
                   new_prefixes: list[str]) -> list[LayerGroup]:
    """Inject ``recipe.adapters`` into ``model`` (in place); return the layer groups with the renamed base
    weights and the adapter parameters in their module's group.

    Raises:
        ModelError: at ``adapters.*``: a target that adapts no module, a group without an adapted module,
            peft not installed.
    """
    spec = recipe.adapters
    assert spec is not None
    by_name = {g.name: g for g in groups}
    within = None
    if spec.groups is not None:
        unknown = [(("adapters", "groups", i), f"unknown group {name!r} (groups are {', '.join(by_name)})")
                   for i, name in enumerate(spec.groups) if name not in by_name]
        if unknown:
            raise ModelError(unknown)
        within = {p for name in spec.groups for p in by_name[name].params}
    with relabeled(prefix=("adapters",)):
        modules = resolve_targets(model, spec.target, exclude=[p.rstrip(".") for p in new_prefixes], within=within)
    owner = param_to_group(groups)
    module_group = {m: owner[f"{m}.{p}"] for m in modules for p, _ in model.get_submodule(m).named_parameters()}
    empty = [(("adapters", "groups", i), f"group {name!r} has no module that adapters.target adapts; remove it "
                                         "or widen adapters.target")
             for i, name in enumerate(spec.groups or []) if name not in module_group.values()]
    if empty:
        raise ModelError(empty)
    if recipe.export.adapters != "merged" and injection_root(model, modules)[1]:
        raise ModelError((("export", "adapters"), f"{recipe.export.adapters} is not supported yet for "
                                                  f"{recipe.model.arch} (PEFT's files of a wrapped transformers model); "
                                                  "export merged"))
    with relabeled(prefix=("adapters",)):
        inject_adapters(model, modules, method=spec.method, r=spec.r, alpha=spec.alpha, dropout=spec.dropout)

    members: dict[str, list[tuple[str, int]]] = {g.name: [] for g in groups}
    adapters: list[str] = []
    bases: list[str] = []
    for name, param in model.named_parameters():
        module = adapted_module(name)
        if module is None:
            group = owner[name]
        else:
            group = module_group[module]
            (bases if ".base_layer." in name else adapters).append(name)
        members[group].append((name, param.numel()))
    mark_adapters(model, adapters, bases, [n for n, _ in model.named_modules() if ADAPTER_KEY.search(n + ".")])
    return [LayerGroup(g.name, tuple(n for n, _ in members[g.name]), sum(k for _, k in members[g.name]))
            for g in groups]


def adapters_plan(recipe: Recipe, model: nn.Module, groups: list[LayerGroup], schedule: FreezeSchedule,
                  fixed: list[str]) -> dict[str, Any]:
    """The plan's ``adapters`` section, and the exact trainable parameters per epoch (adapters included).

    Returns:
        ``{"method", "r", "alpha", "dropout", "target", "modules", "groups": {name: {"modules",
        "adapter_params"}}, "adapter_params", "trainable": [per epoch], "total", "optimizer_state_bytes"}``.
    """
    spec = recipe.adapters
    assert spec is not None
    adapters, bases = adapter_parameters(model)
    named = dict(model.named_parameters())
    per_group: dict[str, dict[str, Any]] = {}
    for group in groups:
        mods = sorted({m for n in group.params if n in adapters and (m := adapted_module(n)) is not None})
        if mods:
            per_group[group.name] = {"modules": mods,
                                     "adapter_params": sum(named[n].numel() for n in group.params if n in adapters)}
    never = set(fixed) | set(bases)
    trainable = []
    for epoch in range(recipe.train.epochs):
        on = set(schedule.trainable_at(epoch))
        trainable.append(sum(named[n].numel() for g in groups for n in g.params
                             if n not in never and (g.name in on or n in adapters)))
    opt = recipe.optimizer
    states = _STATES_PER_PARAM.get(opt.name, 1 if opt.momentum else 0)
    itemsize = next(iter(named.values())).element_size() if named else 4
    return {"method": spec.method, "r": spec.r, "alpha": spec.alpha, "dropout": spec.dropout,
            "target": spec.target, "modules": sum(len(g["modules"]) for g in per_group.values()),
            "groups": per_group, "adapter_params": sum(named[n].numel() for n in adapters),
            "trainable": trainable, "total": sum(p.numel() for p in named.values()),
            "optimizer_state_bytes": max(trainable, default=0) * states * itemsize}


def adapter_lines(d: dict[str, Any]) -> list[str]:
    """The plan text's adapter lines (none without adapters)."""
    a = d.get("adapters")
    if not a:
        return []
    target = a["target"] if isinstance(a["target"], str) else ", ".join(a["target"])
    share = a["trainable"][0] / a["total"] if a["total"] else 0.0
    lines = [f"adapters  {a['method']} r={a['r']} alpha={a['alpha']:g} dropout={a['dropout']:g} on {a['modules']} "
             f"module(s) ({target}): {a['adapter_params']:,} adapter parameters; base weights of adapted modules "
             "never train",
             f"          trainable {a['trainable'][0]:,} of {a['total']:,} ({share:.2%}) at epoch 0; optimizer state "
             f"{a['optimizer_state_bytes'] / 2**20:,.2f} MiB at most"]
    for name, g in a["groups"].items():
        shown = ", ".join(g["modules"][:3]) + (", ..." if len(g["modules"]) > 3 else "")
        lines.append(f"          {name}: {len(g['modules'])} adapted ({shown}), {g['adapter_params']:,} adapter params")
    return lines


def check_adapter_export(recipe: Recipe, groups: list[LayerGroup], schedule: FreezeSchedule) -> None:
    """``export.adapters: separate | both`` holds the adapters and the head only: every other group must stay frozen.

    Raises:
        ModelError: at ``export.adapters``, naming the groups the schedule trains.
    """
    if recipe.export.adapters == "merged":
        return
    trained = sorted({g for e in range(recipe.train.epochs) for g in schedule.trainable_at(e)} - {groups[-1].name})
    if trained:
        raise ModelError((("export", "adapters"), (
            f"{recipe.export.adapters} writes the adapters and the head only, but freeze trains whole groups too "
            f"({', '.join(trained)}); freeze only what is not the head (freeze: {{trainable: [{groups[-1].name}]}}, no "
            "unfreeze), or export merged")))
