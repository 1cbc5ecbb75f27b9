"""``task: multilabel``: any number of classes per image, from a manifest; a sigmoid per class.

Data (:mod:`recipec.data.multilabel`): the manifest's ``label`` holds an image's labels
separated by ``;``; targets are multi-hot float vectors (C,), batched (N, C).

Loss: ``BCEWithLogits`` averaged over the N x C entries (the head stays a Linear giving logits;
sigmoid at prediction). ``loss.label_smoothing`` eps makes the targets ``t (1 - eps) + eps / 2``
(each class is its own two-way problem). ``val_loss`` is the plain BCE.

Metrics (each as scikit-learn computes it), at ``multilabel.threshold`` t (a class is predicted
when sigmoid(logit) >= t):

- ``map``: the mean over the classes with at least one positive of the average precision
  ``AP = sum_n (R_n - R_{n-1}) P_n`` over the distinct scores taken as thresholds, highest first
  (``sklearn.metrics.average_precision_score``; tied scores are one threshold).
- ``f1_micro``: ``2 TP / (2 TP + FP + FN)`` over every (image, class) entry; ``f1_macro``: the
  mean over all classes of each class's F1 (0 where it is undefined, ``zero_division=0``).
- ``acc``: exact match (subset accuracy): the share of images whose predicted label set is exactly
  their true set.

``multilabel.tune_thresholds``: after training, each class's threshold is the val score that
maximises its F1 (:func:`tuned_thresholds`), recorded in the exports (:func:`threshold_provenance`).

A constant predictor has AP = the class's positive rate, so the mean positive rate is the mAP a model
without any signal gets (:func:`baseline_map`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from recipec.errors import DatasetError, ModelError
from recipec.train.loop import autocast_for

__all__ = ["METRICS", "average_precision", "baseline_map", "bce_criterion", "eval_results", "format_eval", "loss_plan",
           "multilabel_metrics", "threshold_provenance", "tuned_thresholds", "validation_metrics"]

METRICS = ("val_loss", "val_acc", "val_map", "val_f1_micro", "val_f1_macro")


# --------------------------------------------------------------------------- loss


def bce_criterion(label_smoothing: float = 0.0) -> Any:
    """``(logits (N, C), multi-hot targets (N, C)) -> mean BCE``, targets smoothed to ``t (1 - eps) + eps / 2``."""
    def bce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if logits.shape != target.shape:
            raise ModelError([(("model", "head"), f"the model gives {logits.shape[-1]} outputs per image but the data "
                                                  f"has {target.shape[-1]} classes; set model.head.num_classes: "
                                                  f"{target.shape[-1]}")])
        target = target.to(logits.dtype)
        if label_smoothing:
            target = target * (1 - label_smoothing) + label_smoothing / 2
        return F.binary_cross_entropy_with_logits(logits.float(), target.float())
    return bce


def loss_plan(label_smoothing: float, threshold: float) -> dict[str, Any]:
    """What plan.json records of a multi-label run's loss."""
    return {"name": "bce", "label_smoothing": label_smoothing, "focal_gamma": None,
            "class_weights": None, "class_weights_from": None,
            "targets": "multi-hot; smoothed to t (1 - eps) + eps / 2" if label_smoothing else "multi-hot",
            "validation": "plain binary cross-entropy", "threshold": threshold}


# --------------------------------------------------------------------------- metrics


def average_precision(scores: torch.Tensor, target: torch.Tensor) -> float | None:
    """AP of one class: ``sum_n (R_n - R_{n-1}) P_n`` over the distinct scores, highest first (as
    ``sklearn.metrics.average_precision_score``); None without a positive.

    Args:
        scores: (N,) scores (logits or probabilities: only their order counts).
        target: (N,) 0/1.
    """
    positives = float(target.sum())
    if positives == 0:
        return None
    order = torch.argsort(scores.double(), descending=True, stable=True)
    s, t = scores.double()[order], target.double()[order]
    tp = torch.cumsum(t, 0)
    last = torch.ones(len(s), dtype=torch.bool)  # the last of each run of tied scores: one threshold each
    last[:-1] = s[1:] != s[:-1]
    tp = tp[last]
    predicted = torch.arange(1, len(s) + 1, dtype=torch.float64)[last]
    recall = tp / positives
    steps = torch.diff(recall, prepend=torch.zeros(1, dtype=torch.float64))
    return float((steps * tp / predicted).sum())


def baseline_map(target: torch.Tensor) -> float:
    """The mAP of a constant predictor: the mean positive rate over the classes with a positive."""
    rates = target.double().mean(0)
    return float(rates[target.sum(0) > 0].mean())


def multilabel_metrics(logits: torch.Tensor, target: torch.Tensor, classes: Sequence[str],
                       threshold: float | Sequence[float] = 0.5) -> dict[str, Any]:
    """``loss``, ``map``, ``f1_micro``, ``f1_macro``, ``acc`` (exact match) and ``per_class`` (``ap``,
    ``precision``, ``recall``, ``f1``, ``support``) of logits (N, C) against multi-hot targets (N, C)
    (definitions: the module docstring); ``threshold``: one for every class, or one per class."""
    logits, target = logits.double(), target.double()
    if logits.shape[0] == 0:
        raise DatasetError("the split holds no examples to evaluate")
    cut = torch.as_tensor(threshold, dtype=torch.float64)  # () or (C,)
    predicted = (torch.sigmoid(logits) >= cut).double()
    tp, fp = (predicted * target).sum(0), (predicted * (1 - target)).sum(0)
    fn = ((1 - predicted) * target).sum(0)
    precision = torch.where(tp + fp > 0, tp / (tp + fp).clamp(min=1), 0.0)
    recall = torch.where(tp + fn > 0, tp / (tp + fn).clamp(min=1), 0.0)
    f1 = torch.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn).clamp(min=1), 0.0)
    aps = [average_precision(logits[:, c], target[:, c]) for c in range(logits.shape[1])]
    defined = [a for a in aps if a is not None]
    micro = 2 * tp.sum() + fp.sum() + fn.sum()
    return {
        "n": int(logits.shape[0]),
        "loss": float(F.binary_cross_entropy_with_logits(logits, target)),
        "map": sum(defined) / len(defined) if defined else None,
        "f1_micro": float(2 * tp.sum() / micro) if micro > 0 else 0.0,
        "f1_macro": float(f1.mean()),
        "acc": float((predicted == target).all(1).double().mean()),
        "per_class": {name: {"ap": aps[c], "precision": float(precision[c]), "recall": float(recall[c]),
                             "f1": float(f1[c]), "support": int(target[:, c].sum())} for c, name in enumerate(classes)},
    }


@torch.no_grad()
def _outputs(model: nn.Module, loader: Any, device: torch.device, amp: str) -> tuple[torch.Tensor, torch.Tensor]:
    model.eval()
    logits, targets = [], []
    for x, y in loader:
        with autocast_for(device, amp):
            out = model(x.to(device))
        logits.append(out.float().cpu())
        targets.append(y)
    return torch.cat(logits), torch.cat(targets)


def validation_metrics(model: nn.Module, ema: Any, data: Any, device: torch.device, amp: str,
                       threshold: float) -> dict[str, Any]:
    """One epoch's validation of a multi-label run: :data:`METRICS` (``val_acc`` is exact match) and
    ``val_per_class_ap``; with ``ema`` (a :class:`recipec.train.ema.Ema`) each metric again with ``_ema``."""
    out: dict[str, Any] = {}
    models = [("", model)]
    if ema is not None:
        ema.copy_buffers(model)  # the broadcast ones: every rank validates the same EMA
        models.append(("_ema", ema.module(model)))
    for suffix, m in models:
        logits, target = _outputs(m, data.val, device, amp)
        result = multilabel_metrics(logits, target, data.classes, threshold)
        out |= {f"val_loss{suffix}": result["loss"], f"val_acc{suffix}": result["acc"],
                f"val_map{suffix}": result["map"], f"val_f1_micro{suffix}": result["f1_micro"],
                f"val_f1_macro{suffix}": result["f1_macro"]}
        if not suffix:
            out["val_per_class_ap"] = {c: v["ap"] for c, v in result["per_class"].items()}
    return out


def tuned_thresholds(logits: torch.Tensor, target: torch.Tensor, classes: Sequence[str],
                     default: float) -> dict[str, float]:
    """Per class the sigmoid score that, taken as its threshold (predict at score >= it), maximises the
    class's F1 on (logits, target) (ties: the highest such score); ``default`` for a class without a positive.

    Over the distinct scores, highest first, predicting the top k gives ``F1_k = 2 TP_k / (k + P)``.
    """
    scores = torch.sigmoid(logits.double())
    chosen: dict[str, float] = {}
    for c, name in enumerate(classes):
        positives = float(target[:, c].sum())
        if positives == 0:
            chosen[name] = default
            continue
        order = torch.argsort(scores[:, c], descending=True, stable=True)
        s, t = scores[order, c], target[order, c].double()
        last = torch.ones(len(s), dtype=torch.bool)  # the last of each run of tied scores
        last[:-1] = s[1:] != s[:-1]
        k = torch.arange(1, len(s) + 1, dtype=torch.float64)
        f1 = (2 * torch.cumsum(t, 0) / (k + positives))[last]
        chosen[name] = float(s[last][int(torch.argmax(f1))])  # argmax: the first (highest) of equal F1s
    return chosen


def threshold_provenance(model: nn.Module, data: Any, device: torch.device, *, threshold: float, tune: bool,
                         amp: str = "none") -> dict[str, Any]:
    """What the exports record of a multi-label run's thresholds (``provenance["multilabel"]``): ``threshold``
    and, with ``tune`` (``multilabel.tune_thresholds``) and a val split, each class's tuned one
    (:func:`tuned_thresholds` on ``model``'s val outputs, under ``amp``)."""
    entry: dict[str, Any] = {"threshold": threshold, "thresholds": None}
    if tune and data.val is not None:
        logits, target = _outputs(model, data.val, device, amp)
        entry |= {"thresholds": tuned_thresholds(logits, target, data.classes, threshold),
                  "tuned_on": f"val ({len(target)} images): per class the score maximising its F1"}
    return {"multilabel": entry}


def eval_results(logits: torch.Tensor, target: torch.Tensor, classes: Sequence[str],
                 threshold: float | Sequence[float]) -> dict[str, Any]:
    """``recipec eval`` of a multi-label model: :func:`multilabel_metrics` plus ``accuracy`` (exact match, as
    ``acc``), ``macro`` precision/recall/F1 over every class, ``classes``, ``threshold`` (a number, or
    class -> threshold when tuned per class) and ``task``."""
    result = multilabel_metrics(logits, target, classes, threshold)
    per_class = result["per_class"].values()
    macro = {k: sum(m[k] for m in per_class) / max(len(per_class), 1) for k in ("precision", "recall", "f1")}
    return {"task": "multilabel", "n": result["n"], "loss": result["loss"], "map": result["map"],
            "f1_micro": result["f1_micro"], "f1_macro": result["f1_macro"], "accuracy": result["acc"],
            "threshold": threshold if isinstance(threshold, (int, float)) else dict(zip(classes, threshold)),
            "macro": macro, "per_class": result["per_class"], "classes": list(classes)}


def format_eval(results: Mapping[str, Any], *, rows: int = 50) -> str:
    """:func:`eval_results` as text: the summary, then one row per class (the first ``rows``)."""
    mean_ap = "n/a (no positives)" if results["map"] is None else f"{results['map']:.4f}"
    lines = [f"{results['split']}: {results['n']:,} images, loss {results['loss']:.4f}, mAP {mean_ap}, "
             f"f1_micro {results['f1_micro']:.4f}, f1_macro {results['f1_macro']:.4f}, exact match "
             f"{results['accuracy']:.4f} at threshold "
             f"{results['threshold'] if isinstance(results['threshold'], (int, float)) else 'per class (tuned)'} "
             f"({results['export']})"]
    per_class = list(results["per_class"].items())
    width = max([5, *(len(name) for name, _ in per_class[:rows])])
    lines.append(f"{'class':<{width}}      ap  precision  recall      f1  support")
    lines += [f"{name:<{width}}  {'-' if m['ap'] is None else format(m['ap'], '6.4f'):>6}  {m['precision']:9.4f}  "
              f"{m['recall']:6.4f}  {m['f1']:6.4f}  {m['support']:7,}" for name, m in per_class[:rows]]
    if len(per_class) > rows:
        lines.append(f"... and {len(per_class) - rows} more classes (--json, or eval/{results['split']}.json)")
    return "\n".join(lines)
