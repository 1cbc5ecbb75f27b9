"""``task: multilabel``: any number of classes per image, from a manifest; a sigmoid per class.

Data: the manifest's ``label`` holds the image's labels separated by ``;`` (a JSON line may give a
list), an empty label means none. The classes are the sorted union of the training rows' labels
(or ``data.classes``: then other labels are ignored); a val/test label outside them is an error.
Targets are multi-hot float vectors (C,), batched (N, C). Val is the manifest's ``val`` rows,
else a random ``data.val_fraction`` of the training rows (seeded, not stratified: an image has
several classes).

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

A constant predictor has AP = the class's positive rate, so the mean positive rate is the mAP a model
without any signal gets (:func:`baseline_map`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from recipec.errors import DatasetError

__all__ = ["METRICS", "average_precision", "baseline_map", "bce_criterion", "build_multilabel_data",
           "build_multilabel_split", "eval_results", "format_eval", "loss_plan", "manifest_classes", "multi_hot", "multilabel_metrics",
           "validation_metrics"]

METRICS = ("val_loss", "val_acc", "val_map", "val_f1_micro", "val_f1_macro")
_SHOWN = 20


# --------------------------------------------------------------------------- data


def manifest_classes(path: str, classes: Sequence[str] | None = None) -> list[str]:
    """The classes of a multi-label manifest: ``classes`` (checked) or the sorted union of the training rows' labels.

    Raises:
        DatasetError: as :func:`recipec.train.datasets.read_manifest`; a class of ``classes`` on no training row.
    """
    from recipec.train.datasets import read_manifest

    return _classes(read_manifest(path), classes, os.path.basename(path))


def _classes(rows: Sequence[Any], classes: Sequence[str] | None, name: str) -> list[str]:
    found = sorted({label for r in rows if r.split in (None, "train") for label in r.labels})
    if classes is None:
        if not found:
            raise DatasetError([(("data", "root"), f"{name}: no training row has a label; label the images (labels "
                                                   "separated by ';')")])
        return found
    problems = [(("data", "classes", i), f"class {c!r} is on no training row of {name} ({_listed(found)})")
                for i, c in enumerate(classes) if c not in found]
    problems += [(("data", "classes", i), f"class {c!r} is listed twice") for i, c in enumerate(classes)
                 if list(classes).index(c) != i]
    if problems:
        raise DatasetError(problems)
    return list(classes)


def multi_hot(labels: Sequence[str], index: Mapping[str, int]) -> torch.Tensor:
    """(C,) float32: 1 for each of ``labels`` that ``index`` holds, else 0."""
    target = torch.zeros(len(index))
    for label in labels:
        if label in index:
            target[index[label]] = 1.0
    return target


def _split(rows: Sequence[Any], val_fraction: float, seed: int) -> tuple[list[int], list[int], list[int], bool]:
    """(train, val, test indices, has_val): the manifest's split column, else a seeded random share for val."""
    from recipec.train.splits import EPOCH_STRIDE

    split_of = [r.split or "train" for r in rows]
    test = [i for i, s in enumerate(split_of) if s == "test"]
    if "val" in split_of:
        return ([i for i, s in enumerate(split_of) if s == "train"], [i for i, s in enumerate(split_of) if s == "val"],
                test, True)
    pool = [i for i, s in enumerate(split_of) if s == "train"]
    order = [pool[j] for j in torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed * EPOCH_STRIDE))]
    n_val = int(len(pool) * val_fraction + 0.5)
    if val_fraction > 0 and len(pool) >= 2:
        n_val = min(max(n_val, 1), len(pool) - 1)
    return sorted(order[n_val:]), sorted(order[:n_val]), test, val_fraction > 0


def _rows(path: str, on_bad_image: str, at: tuple[str | int, ...] = ("data", "root")) -> tuple[list[Any], list[str]]:
    from recipec.train.datasets import read_manifest

    rows = read_manifest(path, at=at)
    if on_bad_image != "skip":
        return rows, []
    from recipec.checks import decodes

    bad = [r.path for r in rows if decodes(r.path) is not None]
    return [r for r in rows if r.path not in set(bad)], bad


def _examples(rows: Sequence[Any], names: Sequence[str], path: str) -> Any:
    from recipec.train.datasets import Examples, FileSamples

    # the class index of a sample is unused: its multi-hot target travels beside it
    source = FileSamples([(r.path, 0) for r in rows], list(names))
    return Examples(None, [0] * len(rows), list(names), source, None, {}, base=os.path.dirname(os.path.abspath(path)))


def _positives(idx: Sequence[int], targets: Sequence[torch.Tensor], names: Sequence[str]) -> dict[str, int]:
    total = torch.stack([targets[i] for i in idx]).sum(0) if idx else torch.zeros(len(names))
    return {name: int(total[c]) for c, name in enumerate(names)}


def build_multilabel_data(*, root: str | None, classes: Sequence[str] | None = None, per_class: int | None = None,
                          val_fraction: float = 0.2, image_size: int = 224, normalize: str = "from_weights",
                          augment: Sequence[Any] = (), batch_size: int = 32, num_workers: int = 0, seed: int = 0,
                          in_channels: int = 3, weights_normalization: Any = None, epoch_seed: bool = True,
                          on_bad_image: str = "error", resize_size: int | None = None, interpolation: str = "bilinear",
                          crop_mode: str = "center", sampler: str = "random", device: str = "cpu",
                          threshold: float = 0.5, **_: Any) -> Any:
    """:func:`recipec.train.data.build_data` for ``task: multilabel``: the same transforms, loaders and
    epoch seeding, with multi-hot targets (N, C) from a manifest. ``info`` counts, per class, the
    images that have it (``train_per_class`` ...), and the mean labels per image (``labels_per_image``).

    Raises:
        DatasetError: no manifest, a malformed one, ``data.per_class`` (a cap per class does not apply
            when an image has several), a val/test label outside the classes.
    """
    from torch.utils.data import DataLoader

    from recipec.train import data as d
    from recipec.train.augment import build_augmentations, describe, describe_augment
    from recipec.train.datasets import fingerprint
    from recipec.train.speed import EpochSeeded, auto_workers

    if not root:
        raise DatasetError([(("data", "root"), "task: multilabel needs root: the manifest file (.csv or .jsonl)")])
    if per_class is not None:
        raise DatasetError([(("data", "per_class"), f"{per_class}: a cap per class does not apply to task: multilabel "
                                                    "(an image has several classes); remove it")])
    d._check_args("manifest", normalize, augment, val_fraction, image_size, in_channels, resize_size, interpolation,
                  crop_mode)
    rows, bad = _rows(root, on_bad_image)
    name = os.path.basename(root)
    names = _classes(rows, classes, name)
    index = {n: i for i, n in enumerate(names)}
    if classes is None:
        unknown = [f"{name} line {r.line}: label {label!r} (split {r.split}) is on no training row ({_listed(names)}); "
                   "the training rows fix the classes" for r in rows if r.split in ("val", "test")
                   for label in r.labels if label not in index]
        if unknown:
            raise DatasetError([(("data", "root"), p) for p in unknown[:_SHOWN]])
    targets = [multi_hot(r.labels, index) for r in rows]
    train_idx, val_idx, test_idx, has_val = _split(rows, val_fraction, seed)
    examples = _examples(rows, names, root)
    stats = d._stats(normalize, weights_normalization, in_channels)
    augmentations = build_augmentations(augment, image_size, in_channels, interpolation if resize_size else "bilinear")
    augs, after, skipped = augmentations.before, augmentations.after, augmentations.skipped
    pipeline = d._Pipeline(image_size, resize_size, interpolation, crop_mode, in_channels, stats)
    workers = auto_workers(num_workers, "manifest", device)
    pin = device == "cuda"
    generator = torch.Generator().manual_seed(seed * d.EPOCH_STRIDE if epoch_seed else seed)
    train_set = pipeline.dataset(examples, train_idx, [targets[i] for i in train_idx], augs, after)
    train = DataLoader(EpochSeeded(train_set) if augs or after else train_set, batch_size=batch_size, shuffle=True,
                       generator=generator, num_workers=workers,
                       drop_last=d.drops_single_last(len(train_idx), batch_size), persistent_workers=False,
                       pin_memory=pin, prefetch_factor=4 if workers else None)

    def held_out(idx: list[int]) -> Any:
        return d._eval_loader(pipeline.dataset(examples, idx, [targets[i] for i in idx], []), batch_size, workers, pin)

    val = held_out(val_idx) if has_val else None
    test = held_out(test_idx) if test_idx else None
    with_split = any(r.split is not None for r in rows)
    origins = {"train": f"manifest {root}" + (", split column" if with_split else ""),
               "val": f"manifest {root}, split column" if any(r.split == "val" for r in rows) else
               f"random {100 * val_fraction:g}% of the training rows (seed {seed})" if val_fraction > 0 else
               "none (data.val_fraction is 0)",
               "test": f"manifest {root}, split column" if test_idx else "none (the data has no test split)"}
    applied: Any = {"mean": list(stats[0]), "std": list(stats[1])} if stats else "none"
    if normalize == "from_weights" and not weights_normalization:
        applied = "none (no pretrained weights)"
    label_lists = [sorted(index[label] for label in r.labels if label in index) for r in rows]
    info = {
        "dataset": "manifest", "task": "multilabel", "root": root, "classes": names,
        "sizes": {"train": len(train_idx), "val": len(val_idx), "test": len(test_idx)}, "splits": origins,
        "train_per_class": _positives(train_idx, targets, names), "val_per_class": _positives(val_idx, targets, names),
        "test_per_class": _positives(test_idx, targets, names),
        "per_class_counts": "images that have the class (task: multilabel)",
        "labels_per_image": sum(len(label_lists[i]) for i in train_idx) / max(len(train_idx), 1),
        "image_size": image_size, "in_channels": in_channels,
        "resize": {"image_size": image_size, "rule": "square" if resize_size is None else "shorter_side",
                   "resize_size": image_size if resize_size is None else resize_size,
                   "interpolation": "bilinear" if resize_size is None else interpolation,
                   "crop_pct": 1.0 if resize_size is None else image_size / resize_size,
                   "crop_mode": None if resize_size is None else crop_mode},
        "normalize": {"requested": normalize, "applied": applied},
        "augment": [x for x in map(describe_augment, augment) if x not in skipped], "augment_skipped": skipped,
        "sampler": sampler,
        "transforms": {"train": describe([pipeline.resize, *augs, *pipeline.norm, *after]),
                       "eval": describe([pipeline.resize, *pipeline.norm])},
        "val_fraction": val_fraction, "per_class": None, "seed": seed,
        "fingerprint": fingerprint(examples, label_lists, {"train": train_idx, "val": val_idx, "test": test_idx}),
        "on_bad_image": on_bad_image, "skipped_images": bad, "num_workers": workers,
        "batches": {"batch_size": batch_size, "per_epoch": len(train),
                    "dropped_per_epoch": 1 if train.drop_last else 0, "last_batch": d.LAST_BATCH_POLICY},
    }
    return d.Data(train, val, names, stats, info, seed=seed, epoch_seed=epoch_seed, test=test, task="multilabel",
                  threshold=threshold)


def build_multilabel_split(*, split: str, override: str | None, classes: Sequence[str], batch_size: int | None,
                           **kwargs: Any) -> Any:
    """:func:`recipec.train.data.build_split` for ``task: multilabel``: one split of the run's manifest
    (exactly as the run split it), or of another manifest (``override``: its ``split`` rows, or all rows
    without a split column), labelled multi-hot by the model's ``classes``.

    Raises:
        DatasetError: no such split, a label the model lacks, no rows.
    """
    from recipec.train import data as d
    from recipec.train.datasets import SPLITS

    get = kwargs.get
    model_classes = [str(c) for c in classes]
    index = {n: i for i, n in enumerate(model_classes)}
    if split not in SPLITS:
        raise DatasetError(f"split {split!r}: choose one of {', '.join(SPLITS)}")
    path = override if override is not None else get("root")
    if not path or os.path.isdir(path) or not os.path.exists(path):
        raise DatasetError(f"{path}: a multi-label model is evaluated on a manifest file (.csv or .jsonl, labels "
                           "separated by ';'); give one with --data")
    rows, bad = _rows(path, get("on_bad_image", "error"), at=())
    name = os.path.basename(path)
    if override is None:
        train_idx, val_idx, test_idx, has_val = _split(rows, get("val_fraction", 0.2), get("seed", 0))
        if (split == "val" and not has_val) or (split == "test" and not test_idx):
            raise DatasetError(f"the run's data has no {split} split ({path}); add {split} rows to the manifest or "
                               "give the data to evaluate with --data MANIFEST")
        idx = {"train": train_idx, "val": val_idx, "test": test_idx}[split]
        source = f"manifest {path}, {split} rows" + ("" if any(rows[i].split for i in idx) else " (random, as the run)")
    else:
        with_split = any(r.split is not None for r in rows)
        idx = [i for i, r in enumerate(rows) if not with_split or (r.split or "train") == split]
        if not idx:
            raise DatasetError(f"{path}: no rows of split {split}; choose a split its rows have")
        source = f"manifest {path}, " + (f"{split} rows" if with_split else "all rows (no split column)")
    unknown = [f"{name} line {rows[i].line}: label {label!r} is not one of the model's classes "
               f"({_listed(model_classes)})" for i in idx for label in rows[i].labels if label not in index]
    if unknown:
        raise DatasetError(unknown[:_SHOWN])
    targets = [multi_hot(r.labels, index) for r in rows]
    stats = d._stats(get("normalize", "from_weights"), get("weights_normalization"), get("in_channels", 3))
    pipeline = d._Pipeline(get("image_size", 224), get("resize_size"), get("interpolation", "bilinear"),
                           get("crop_mode", "center"), get("in_channels", 3), stats)
    from recipec.train.speed import auto_workers

    loader = d._eval_loader(pipeline.dataset(_examples(rows, model_classes, path), idx, [targets[i] for i in idx], []),
                            batch_size or get("batch_size", 32),
                            auto_workers(get("num_workers", 0), "manifest", get("device", "cpu")), get("device") == "cuda")
    info = {"split": split, "source": source, "n": len(idx), "per_class": _positives(idx, targets, model_classes),
            "skipped_images": bad, "left_out": {}}
    return d.SplitData(loader, model_classes, len(idx), info)


# --------------------------------------------------------------------------- loss


def bce_criterion(label_smoothing: float = 0.0) -> Any:
    """``(logits (N, C), multi-hot targets (N, C)) -> mean BCE``, targets smoothed to ``t (1 - eps) + eps / 2``."""
    def bce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if logits.shape != target.shape:
            from recipec.errors import ModelError

            raise ModelError([(("model", "head"), f"the model gives {logits.shape[-1]} outputs per image but the data "
                                                  f"has {target.shape[-1]} classes; set model.head.num_classes: "
                                                  f"{target.shape[-1]}")])
        target = target.to(logits.dtype)
        if label_smoothing:
            target = target * (1 - label_smoothing) + label_smoothing / 2
        return F.binary_cross_entropy_with_logits(logits.float(), target.float())
    return bce


def loss_plan(recipe: Any) -> dict[str, Any]:
    """What plan.json records of a multi-label run's loss."""
    return {"name": "bce", "label_smoothing": recipe.loss.label_smoothing, "focal_gamma": None,
            "class_weights": None, "class_weights_from": None,
            "targets": "multi-hot; smoothed to t (1 - eps) + eps / 2" if recipe.loss.label_smoothing else "multi-hot",
            "validation": "plain binary cross-entropy", "threshold": recipe.multilabel.threshold}


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
                       threshold: float = 0.5) -> dict[str, Any]:
    """``loss``, ``map``, ``f1_micro``, ``f1_macro``, ``acc`` (exact match) and ``per_class`` (``ap``,
    ``precision``, ``recall``, ``f1``, ``support``) of logits (N, C) against multi-hot targets (N, C)
    (definitions: the module docstring)."""
    logits, target = logits.double(), target.double()
    if logits.shape[0] == 0:
        raise DatasetError("the split holds no examples to evaluate")
    predicted = (torch.sigmoid(logits) >= threshold).double()
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
    from recipec.train.loop import _autocast

    model.eval()
    logits, targets = [], []
    for x, y in loader:
        with _autocast(device, amp):
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


def eval_results(logits: torch.Tensor, target: torch.Tensor, classes: Sequence[str], threshold: float) -> dict[str, Any]:
    """``recipec eval`` of a multi-label model: :func:`multilabel_metrics` plus ``accuracy`` (exact match, as
    ``acc``), ``macro`` precision/recall/F1 over every class, ``classes``, ``threshold`` and ``task``."""
    result = multilabel_metrics(logits, target, classes, threshold)
    per_class = result["per_class"].values()
    macro = {k: sum(m[k] for m in per_class) / max(len(per_class), 1) for k in ("precision", "recall", "f1")}
    return {"task": "multilabel", "n": result["n"], "loss": result["loss"], "map": result["map"],
            "f1_micro": result["f1_micro"], "f1_macro": result["f1_macro"], "accuracy": result["acc"],
            "threshold": threshold, "macro": macro, "per_class": result["per_class"], "classes": list(classes)}


def format_eval(results: Mapping[str, Any], *, rows: int = 50) -> str:
    """:func:`eval_results` as text: the summary, then one row per class (the first ``rows``)."""
    mean_ap = "n/a (no positives)" if results["map"] is None else f"{results['map']:.4f}"
    lines = [f"{results['split']}: {results['n']:,} images, loss {results['loss']:.4f}, mAP {mean_ap}, "
             f"f1_micro {results['f1_micro']:.4f}, f1_macro {results['f1_macro']:.4f}, exact match "
             f"{results['accuracy']:.4f} at threshold {results['threshold']:g} ({results['export']})"]
    per_class = list(results["per_class"].items())
    width = max([5, *(len(name) for name, _ in per_class[:rows])])
    lines.append(f"{'class':<{width}}      ap  precision  recall      f1  support")
    lines += [f"{name:<{width}}  {'-' if m['ap'] is None else format(m['ap'], '6.4f'):>6}  {m['precision']:9.4f}  "
              f"{m['recall']:6.4f}  {m['f1']:6.4f}  {m['support']:7,}" for name, m in per_class[:rows]]
    if len(per_class) > rows:
        lines.append(f"... and {len(per_class) - rows} more classes (--json, or eval/{results['split']}.json)")
    return "\n".join(lines)


def _listed(names: Sequence[str], most: int = 10) -> str:
    return ", ".join(names[:most]) + (", ..." if len(names) > most else "")
