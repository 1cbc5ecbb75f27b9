"""The Plan: what was loaded and how the fine-tuning will go, as text and as JSON.

``recipec plan`` prints it and a run directory keeps it as ``plan.json``. The JSON carries
DESIGN.md's contract (``load_report``, ``groups`` with per-epoch ``trainable`` and ``lr``,
``epochs``) and more: every load stage's report, parameter counts, the head, the
BatchNorm mode of each group per epoch and the normalisation of the pretrained weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from recipec.compiler.adapters import adapter_lines
from recipec.data.loaders import LAST_BATCH_POLICY
from recipec.model.groups import LayerGroup
from recipec.model.heads import HeadInfo
from recipec.model.pretrained import Normalization, WeightsInfo
from recipec.recipe.spec import Recipe
from recipec.model.families import family_of
from recipec.train.freezing import FreezeSchedule, batchnorm_modes
from recipec.train.modes import random_layer_modes
from recipec.train.optim import TINY_LR_RATIO, group_learning_rates, tiny_learning_rates
from recipec.train.schedule import LrShape, lr_table
from recipec.weights.transfer import LoadReport
from recipec.train.select import craft_lines

__all__ = ["Plan", "Planned", "build_plan", "data_lines"]


@dataclass
class Plan:
    """A compiled recipe, before training, as data."""

    data: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """The plan.json document (JSON-serialisable)."""
        return self.data

    def text(self) -> str:
        """A compact, human-readable rendering."""
        return _render(self.data)


@dataclass(frozen=True)
class Planned:
    """What a plan describes: the parts :func:`recipec.compile_recipe` built, before any training."""

    model: nn.Module
    device: torch.device
    groups: list[LayerGroup]              # earliest first, head last
    schedule: FreezeSchedule
    optimizer: torch.optim.Optimizer | None
    reports: dict[str, LoadReport]        # stage ("model.weights", "source") -> its load report
    head: HeadInfo | None                 # the new head, or None when the architecture's own is kept
    head_prefix: str                      # state-dict prefix of the head ("fc.")
    lr_shape: LrShape                     # the scheduler's shape over the epochs
    weights_info: WeightsInfo | None      # model.weights, or None
    normalization: Normalization | None   # mean/std of the pretraining
    fixed: Sequence[str] = ()             # parameters the architecture keeps frozen itself: they never train


def build_plan(recipe: Recipe, parts: Planned) -> Plan:
    """Collect the plan of a compiled recipe (see :func:`recipec.compile_recipe`)."""
    model, device, groups, schedule, reports, optimizer = (parts.model, parts.device, parts.groups, parts.schedule,
                                                           parts.reports, parts.optimizer)
    head, head_prefix, lr_shape, weights_info, normalization, fixed = (
        parts.head, parts.head_prefix, parts.lr_shape, parts.weights_info, parts.normalization, parts.fixed)
    opt = recipe.optimizer
    names = [g.name for g in groups]
    epochs = recipe.train.epochs
    base_lrs = group_learning_rates(names, lr=opt.lr, lr_decay=opt.lr_decay, group_lr=opt.group_lr)
    lrs = lr_table(names, base_lrs, epochs=epochs, shape=lr_shape)
    bn_by_epoch = [batchnorm_modes(model, groups, schedule.trainable_at(e), batchnorm=recipe.freeze.batchnorm)
                   for e in range(epochs)]
    random_by_epoch = [random_layer_modes(model, groups, schedule.trainable_at(e), dropout=recipe.freeze.dropout)
                       for e in range(epochs)]
    no_decay: dict[str, int] = {}
    for pg in optimizer.param_groups if optimizer is not None else []:
        if pg.get("no_decay"):
            no_decay[pg["name"]] = no_decay.get(pg["name"], 0) + sum(p.numel() for p in pg["params"])
    rows: list[dict[str, Any]] = []
    for i, group in enumerate(groups):
        rows.append({
            "name": group.name,
            "params": group.numel,
            "tensors": len(group.params),
            "trainable": [group.name in schedule.trainable_at(e) for e in range(epochs)],
            "lr": [float(v) for v in lrs[i]],
            "peak_lr": float(base_lrs[group.name]),  # the group's lr, which the schedule's factor peaks at (1)
            # what the optimizer applies: a frozen group has no gradients, so no decay either
            "weight_decay": [opt.weight_decay if t else 0.0 for t in (group.name in schedule.trainable_at(e)
                                                                      for e in range(epochs))],
            "no_decay_params": no_decay.get(group.name, 0),
            "batchnorm": [modes.get(group.name, "-") for modes in bn_by_epoch],
            # dropout, stochastic depth and other modules that compute differently in training mode
            "dropout": [modes.get(group.name, "-") for modes in random_by_epoch],
        })
    total = sum(p.numel() for p in model.parameters())
    named = dict(model.named_parameters())
    fixed_by_group: dict[str, int] = {}
    for group in groups:
        fixed_by_group[group.name] = sum(named[n].numel() for n in group.params if n in fixed)
    trainable_per_epoch = [sum(r["params"] - fixed_by_group[r["name"]] for r in rows if r["trainable"][e])
                           for e in range(epochs)]
    last = reports.get("source") or reports.get("model.weights")
    data: dict[str, Any] = {
        "name": recipe.name,
        "arch": recipe.model.arch,
        "device": str(device),
        "epochs": epochs,
        "task": _task(recipe),
        "parameters": {"total": total, "trainable": trainable_per_epoch},
        # requires_grad=False in the architecture itself: never trained, whatever the groups say
        "fixed_parameters": {"tensors": list(fixed), "params": sum(named[n].numel() for n in fixed)},
        "head": _head_dict(head, head_prefix) | (
            {"aux_loss_weight": recipe.model.aux_loss_weight} if head is not None and head.aux_prefixes
            and not family_of(recipe.model.arch).averages_extra_heads else {}),  # timm's head_dist: no extra loss
        "weights": None if weights_info is None else {
            "name": weights_info.name, "url": weights_info.url, "path": str(weights_info.path)} | (
            {"preprocessing": weights_info.preprocessing} if getattr(weights_info, "preprocessing", None) else {}),
        # a custom factory's model may come with weights of its own (pretrained: true): recipec cannot tell
        **({"factory_weights": _factory_weights(recipe.model.arch, recipe.model.kwargs)}
           if weights_info is None and family_of(recipe.model.arch).runs_named_code else {}),
        "normalization": None if normalization is None else {
            "mean": list(normalization[0]), "std": list(normalization[1])},
        # nothing loaded (random initialisation): the same shape, empty, so readers need no special case
        "load_report": last.to_dict() if last is not None else _EMPTY_REPORT | {"renamed": {}},
        "reports": {stage: report.to_dict() for stage, report in reports.items()},
        "optimizer": {"name": opt.name, "lr": opt.lr, "lr_decay": opt.lr_decay,
                      "weight_decay": opt.weight_decay, "scheduler": opt.scheduler.model_dump()},
        "batchnorm_policy": recipe.freeze.batchnorm,
        "dropout_policy": recipe.freeze.dropout,
        "batches": {"batch_size": recipe.data.batch_size, "accumulate": recipe.train.accumulate,
                    "last_batch": LAST_BATCH_POLICY},
        "speed": speed_plan(recipe.train, recipe.data, len({tuple(schedule.trainable_at(e)) for e in range(epochs)})),
        "groups": rows,
        "notes": _lr_notes(tiny_learning_rates(base_lrs, lr=opt.lr, trainable=[r["name"] for r in rows
                                                                              if any(r["trainable"])]),
                           opt.lr, TINY_LR_RATIO),
    }
    return Plan(data)


def _lr_notes(tiny: dict[str, float], lr: float, ratio: float) -> list[dict[str, Any]]:
    """A note (not an error) on the groups that train at an lr too small to move them (lr_decay, group_lr)."""
    if not tiny:
        return []
    shown = ", ".join(f"{name} {rate:.2e}" for name, rate in list(tiny.items())[:5])
    more = f" and {len(tiny) - 5} more" if len(tiny) > 5 else ""
    return [{"kind": "tiny_lr", "groups": tiny, "threshold": lr * ratio,
             "text": f"{len(tiny)} trainable group(s) get an lr below optimizer.lr x {ratio:g} ({lr * ratio:.2e}), "
                     f"frozen in all but name: {shown}{more}; lower optimizer.lr_decay, set optimizer.group_lr, "
                     "or leave them out of freeze.trainable"}]


_EMPTY_REPORT: dict[str, Any] = {
    key: [] for key in ("loaded", "missing", "unexpected", "mismatched", "excluded", "adapted", "new", "defaulted")
} | {"source": None, "state_dict_key": None}


def _head_dict(head: Any, head_prefix: str) -> dict[str, Any]:
    if head is None:
        return {"path": head_prefix.rstrip("."), "replaced": False}
    return {"path": head.path, "replaced": True, "in_features": head.in_features, "old": head.old,
            "new": head.new, "params": head.num_params, "notes": list(head.notes),
            "aux": [prefix.rstrip(".") for prefix in head.aux_prefixes]}


def _task(recipe: Any) -> dict[str, Any]:
    if recipe.task == "multilabel":
        tuned = recipe.multilabel.tune_thresholds
        return {"name": "multilabel", "threshold": recipe.multilabel.threshold, "tune_thresholds": tuned,
                "summary": f"multilabel: a sigmoid per class, labels at score >= {recipe.multilabel.threshold:g}"
                           f"{' (then tuned per class on val for the exports)' if tuned else ''}; "
                           "val_map, val_f1_micro, val_f1_macro, val_acc (exact match)"}
    return {"name": "multiclass", "summary": "multiclass: one class per image (softmax)"}


def _lr(value: float) -> str:
    return f"{value:.2e}"


def _render(d: dict[str, Any]) -> str:
    lines = [f"plan: {d['name']}  ({d['arch']} on {d['device']}, {d['epochs']} epochs)", ""]
    if d.get("task", {}).get("name") == "multilabel":
        lines.append(f"task      {d['task']['summary']}")
    head = d["head"]
    if head["replaced"]:
        lines.append(f"head      {head['path']}: {head['old']}  ->  {head['new']}  ({head['params']:,} new parameters)")
    else:
        lines.append(f"head      {head['path']} (the architecture's own, kept)")
    for note in head.get("notes", []):
        lines.append(f"          {note}")
    if head.get("aux") and "aux_loss_weight" in head:
        lines.append(f"aux loss  {head['aux_loss_weight']:g} x the cross-entropy of each auxiliary classifier, "
                     "in the epochs its group trains (evaluation and exports use the main output only)")
    weights = d["weights"]
    lines.append(f"weights   {weights['name'] if weights else d.get('factory_weights') or 'none (random initialisation)'}")
    if weights and weights.get("preprocessing"):  # timm's pretrained_cfg: what the weights were trained on
        pre = weights["preprocessing"]
        lines.append(f"pretrain  input {'x'.join(map(str, pre['input_size']))}, {pre['interpolation']} resize, "
                     f"crop_pct {pre['crop_pct']} ({pre['crop_mode']})")
    if d.get("data_preprocessing"):  # data.image_size and data.resize against the weights' preprocessing
        lines.append(f"resize    {d['data_preprocessing']['summary']}")
    applied = d.get("data_normalization")
    if applied and applied["mean"]:
        lines.append(f"normalize mean {[round(m, 3) for m in applied['mean']]}, "
                     f"std {[round(s, 3) for s in applied['std']]}, from {applied['from']}")
    elif applied:
        lines.append(f"normalize {applied['from']}")
    elif d["normalization"]:
        mean, std = d["normalization"]["mean"], d["normalization"]["std"]
        lines.append(f"normalize mean {[round(m, 3) for m in mean]}, std {[round(s, 3) for s in std]} "
                     "(from the pretrained weights)")
    transforms = d.get("data_transforms")  # data.augment, in order (recipec.data.augment)
    if transforms:
        lines.append(f"train     {' -> '.join(transforms['train']) or 'as loaded'}")
        lines.append(f"eval      {' -> '.join(transforms['eval']) or 'as loaded'}")
    if d.get("data_mix"):
        lines.append(f"mix       {d['data_mix']['summary']}; soft targets, accuracy on hard labels")
    if (d.get("data_sampler") or {}).get("name", "random") != "random":
        lines.append(f"sampler   {d['data_sampler']['summary']}")
    params = d["parameters"]
    lines.append(f"params    {params['total']:,} total; trainable at epoch 0: {params['trainable'][0]:,}")
    lines += adapter_lines(d)  # adapters: method, modules, adapter parameters per group, optimizer state
    if d.get("batches"):
        per_step = f" x {d['batches']['accumulate']} per step" if d["batches"]["accumulate"] > 1 else ""
        lines.append(f"batches   {d['batches']['batch_size']}{per_step}; {d['batches']['last_batch']}")
    if d.get("speed") and (d["speed"]["compile"] or d["speed"]["channels_last"]):
        lines.append(f"speed     {d['speed']['summary']}")
    lines += craft_lines(d)  # loss, EMA, best-epoch selection (when the plan has data: plan_recipe, build)
    fixed = d.get("fixed_parameters") or {"tensors": []}
    if fixed["tensors"]:
        shown = ", ".join(fixed["tensors"][:5]) + (", ..." if len(fixed["tensors"]) > 5 else "")
        lines.append(f"fixed     {fixed['params']:,} parameters in {len(fixed['tensors'])} tensors the architecture "
                     f"keeps frozen (requires_grad=False), never trained: {shown}")
    for stage, report in d["reports"].items():
        where = f", state dict at '{report['state_dict_key']}'" if report.get("state_dict_key") else ""
        where += f", then {report['filter']}" if report.get("filter") else ""  # source.timm_filter
        lines += ["", f"load report ({stage}: {report.get('source') or '-'}{where})"]
        lines += ["  " + line for line in _report_lines(report)]
    lines += ["", f"groups (earliest first; batchnorm: {d['batchnorm_policy']}; dropout: {d['dropout_policy']})"]
    header = (f"  {'group':<14}{'params':>12}  {'trainable from':<15}{'lr at epoch 0':>14}"
              f"{'weight decay':>14}{'no decay':>10}  {'batchnorm':<16}dropout")
    lines.append(header)
    for row in d["groups"]:
        start = next((e for e, t in enumerate(row["trainable"]) if t), None)
        bn = list(dict.fromkeys(m for m in row["batchnorm"] if m != "-"))
        drop = list(dict.fromkeys(m for m in row["dropout"] if m != "-"))
        lines.append(f"  {row['name']:<14}{row['params']:>12,}  {'never' if start is None else f'epoch {start}':<15}"
                     f"{_lr(row['lr'][0]):>14}{d['optimizer']['weight_decay']:>14g}{row['no_decay_params']:>10,}  "
                     f"{' -> '.join(bn) or '-':<16}{' -> '.join(drop) or '-'}")
    lines += ["", "schedule (lr at the start of each epoch; '.' = frozen)"]
    names = [r["name"] for r in d["groups"]]
    # a cell stays apart from its neighbour even at lrs like 1.89e-313 (a steep lr_decay over many groups)
    width = max(9, *(len(n) + 1 for n in names), *(len(_lr(v)) + 1 for r in d["groups"] for v in r["lr"]))
    lines.append("  epoch " + "".join(f"{n:>{width}}" for n in names) + f"{'trainable':>13}")
    for e in range(d["epochs"]):
        cells = "".join(f"{(_lr(r['lr'][e]) if r['trainable'][e] else '.'):>{width}}" for r in d["groups"])
        lines.append(f"  {e:>5} {cells}{params['trainable'][e]:>13,}")
    notes = d.get("notes") or []
    if notes:
        lines += [""] + [f"note      {note['text']}" for note in notes]
    return "\n".join(lines)


def _report_lines(report: dict[str, Any]) -> list[str]:
    counts = {fate: len(report.get(fate) or []) for fate in
              ("loaded", "adapted", "excluded", "mismatched", "missing", "unexpected", "new", "defaulted")}
    lines = ["  ".join(f"{fate} {n}" for fate, n in counts.items() if n or fate == "loaded")]
    for item in report.get("adapted") or []:
        grid = f", grid {item['grid']}" if item.get("grid") else ""
        shapes = (" + ".join(map(str, item["source_shapes"])) if item.get("source_keys") else item.get("source_shape"))
        parts = (f" along dim {item['dim']} from {' + '.join(item['source_keys'])}" if item.get("source_keys") else "")
        lines.append(f"adapted     {item['key']}: {item['rule']} {shapes} -> {item.get('model_shape')}{grid}{parts}")
    for item in report.get("mismatched") or []:
        lines.append(f"mismatched  {item['key']}: source {item['source_shape']} vs model {item['model_shape']} (skipped)")
    for item in report.get("excluded") or []:
        alias = f" (as {item['renamed']})" if item.get("renamed") not in (None, item["key"]) else ""
        why = f"by {item.get('by', 'exclude')} '{item['pattern']}'" if item.get("pattern") else "matched no include pattern"
        lines.append(f"excluded    {item['key']}{alias}: {why}")
    for key in report.get("missing") or []:
        lines.append(f"missing     {key}: not in source (kept as initialised)")
    for key in report.get("unexpected") or []:
        lines.append(f"unexpected  {key}: not in the model")
    for key in report.get("new") or []:
        lines.append(f"new         {key}: new head, initialised fresh")
    defaulted = report.get("defaulted") or []
    if len(defaulted) > 3:
        lines.append(f"defaulted   {len(defaulted)} keys not in the source kept their defaults, e.g. {defaulted[0]}")
    else:
        lines += [f"defaulted   {key}: not in source, default kept" for key in defaulted]
    renamed = report.get("renamed") or {}
    if renamed:
        example = next(iter(renamed.items()))
        lines.append(f"renamed     {len(renamed)} keys, e.g. {example[1]} -> {example[0]}")
    return lines


def data_lines(info: dict[str, Any], steps_per_epoch: int) -> list[str]:
    """The data part of ``recipec plan``: each split's size and where it came from (``info`` is
    :func:`recipec.data.loaders.build_data`'s ``info``)."""
    sizes, origins = info["sizes"], info.get("splits") or {}
    lines = [f"data: {sizes['train']} training / {sizes['val']} validation / {sizes.get('test', 0)} test examples, "
             f"{steps_per_epoch} optimizer step(s) per epoch"]
    lines += [f"  {split:<5} {sizes.get(split, 0):>8,}  {origins[split]}" for split in ("train", "val", "test")
              if split in origins]
    return lines


def speed_plan(train: Any, data: Any, phases: int) -> dict[str, Any]:
    """The plan's ``speed`` entry: ``train.compile``/``channels_last``, ``data.num_workers`` as written, and a summary.

    ``phases``: distinct sets of trainable groups over the epochs; torch.compile compiles once for each.
    """
    mode = train.compile
    compiled = None if mode is False else ("default" if mode is True else mode)
    parts = [f"num_workers {data.num_workers}"]
    if compiled:
        parts.append(f"torch.compile mode {compiled}: compiles once per phase of the freezing schedule, "
                     f"{phases} phase{'s' if phases != 1 else ''} (counted per epoch in metrics.jsonl: compiles)")
    if train.channels_last:
        parts.append("channels_last")
    if train.amp != "none":
        parts.append(f"amp {train.amp}")
    return {"compile": compiled, "compile_phases": phases if compiled else 0, "channels_last": train.channels_last,
            "num_workers": data.num_workers, "summary": "; ".join(parts)}


def _factory_weights(arch: str, kwargs: dict[str, Any]) -> str:
    """What the plan says of the weights of a custom factory's model, which recipec did not load."""
    asked = [f"{k}: {v!r}" for k, v in kwargs.items() if k in ("pretrained", "weights", "checkpoint_path") and v]
    if asked:
        return f"loaded by the factory {arch} ({', '.join(asked)}), not by recipec (model.weights: null)"
    return f"whatever the factory {arch} gives (recipec loaded none: model.weights: null)"
